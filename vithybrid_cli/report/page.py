"""A static page of image tiles in groups, with charts and tables above them: opens from file://.

This is the page every report shares (classify's gallery, fit's validation report, the index of
attention maps, and any later page of image groups): the caller describes it as a `Page` (facts,
charts, tables, tiles and the views that order them) and `write_page` fills the templates shipped
in report/templates/ with it. The records travel as JSON inside the page and the browser draws
everything from them (templates/page.js): charts as plain SVG, tiles a page at a time with lazy
thumbnails, so a page of 100,000 records holds a few hundred <img> at once. Nothing is fetched
from anywhere but the page's own folder: no CDN, no web font. The same page, served by
`vithybrid review` (review.py) with `Page.edit` set, is in edit mode: its tiles take labels.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import quote

from ..files import atomic_write


@dataclass
class Tile:
    """One image on the page: its thumbnail (or the reason it has none) and its caption."""

    path: str  # the record's path, shown in full on a click and matched by the filter
    group: str = ""  # tiles of one group sit under one heading
    title: str | None = None  # the label shown; None: nothing decided
    detail: str = ""  # a short second line: the score, a margin, a true label
    thumb: str | None = None  # URL relative to the page
    image: str | None = None  # a larger image for the click (else the thumbnail)
    reason: str | None = None  # why there is no thumbnail: the placeholder's text
    error: str | None = None  # the record failed: its error
    top_k: list[tuple[str, float | None]] = field(default_factory=list)
    kind: str = ""  # "failed", "abstained", "wrong": a colour for the tile


@dataclass
class View:
    """An order of the tiles (indices into Page.tiles), shown under a tab."""

    name: str
    order: list[int]
    note: str = ""  # one line under the tabs: what this order is
    grouped: bool = True  # False: one grid, no headings (an order across groups)


@dataclass
class Page:
    title: str
    subtitle: str = ""
    facts: list[tuple[str, str]] = field(default_factory=list)  # ("images", "5,000"), ...
    charts: list[dict[str, Any]] = field(default_factory=list)  # see bar_chart, histogram, ...
    tables: list[dict[str, Any]] = field(default_factory=list)
    views: list[View] = field(default_factory=list)
    tiles: list[Tile] = field(default_factory=list)
    # edit mode (report/review.py serves the page): the label set, the API's token, which tiles
    # were reviewed; page.js then sends each label decision to the server. None: a static page.
    edit: dict[str, Any] | None = None


# A static page loads nothing but its own folder's files; a served page in edit mode also talks
# to its own server (connect-src 'self': the label API).
CSP = ("default-src 'none'; img-src 'self' data: file:; style-src 'unsafe-inline'; "
       "script-src 'unsafe-inline'")  # fmt: skip
EDIT_CSP = CSP + "; connect-src 'self'"


def bar_chart(title: str, items: list[tuple[str, int]], *, filters: bool = True) -> dict:
    """Horizontal bars, one per (name, count); with `filters`, a click filters by the name."""
    return {"kind": "bars", "title": title, "items": items, "filters": filters}


def histogram(title: str, values: list[float], bins: int = 20, low: float = 0.0,
              high: float = 1.0) -> dict:  # fmt: skip
    """Counts of `values` in `bins` equal bins over [low, high]."""
    counts = [0] * bins
    for value in values:
        position = int((value - low) / (high - low) * bins)
        counts[min(max(position, 0), bins - 1)] += 1
    return {"kind": "histogram", "title": title, "counts": counts, "low": low, "high": high}


def heatmap(title: str, rows: list[str], columns: list[str], matrix: list[list[int]],
            row_title: str = "", column_title: str = "") -> dict:  # fmt: skip
    """A matrix of counts as coloured cells (a confusion matrix: true rows, predicted columns)."""
    return {"kind": "heatmap", "title": title, "rows": rows, "columns": columns,
            "matrix": matrix, "row_title": row_title, "column_title": column_title}  # fmt: skip


def table(title: str, columns: list[str], rows: list[list[Any]], note: str = "") -> dict:
    return {"title": title, "columns": columns, "rows": rows, "note": note}


def relative_url(target: str | os.PathLike[str], page_dir: str | os.PathLike[str]) -> str:
    """`target` as a URL relative to a page in `page_dir` (file:// pages resolve it locally);
    a name that is not UTF-8 is quoted as its bytes, as the browser finds the file."""
    relative = os.path.relpath(os.path.abspath(target), os.path.abspath(page_dir))
    return quote(os.fsencode(relative.replace(os.sep, "/")), safe="/")


def template(name: str) -> str:
    return resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8")


def page_json(page: Page) -> str:
    """The page's data as JSON safe inside <script>: no "</script>" can end it early."""
    data = {
        "title": page.title,
        "subtitle": page.subtitle,
        "facts": page.facts,
        "charts": page.charts,
        "tables": page.tables,
        "views": [asdict(view) for view in page.views],
        "tiles": [_tile_json(tile) for tile in page.tiles],
    }
    if page.edit is not None:
        data["edit"] = page.edit
    # ASCII: lone surrogates (undecodable file names) and U+2028 travel as escapes. Scores are
    # finite or None by now (results.py): allow_nan=False only guards that.
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c")


TILE_FIELDS = [name for name in Tile.__dataclass_fields__]


def _tile_json(tile: Tile) -> dict[str, Any]:
    """The tile without its empty fields (a 100,000-tile page is mostly those)."""
    fields = ((key, getattr(tile, key)) for key in TILE_FIELDS)
    return {
        key: value for key, value in fields if value is not None and value != "" and value != []
    }


def render_page(page: Page) -> str:
    """`page` as one HTML document, styles and script inlined."""
    return Template(template("page.html")).substitute(
        title=html.escape(page.title),
        csp=EDIT_CSP if page.edit is not None else CSP,
        style=template("page.css"),
        script=template("page.js"),
        data=page_json(page),
    )


def write_page(page: Page, target: str | os.PathLike[str]) -> None:
    """Write `page` to the HTML file `target` (atomically)."""
    text = render_page(page)
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target, "w", newline="\n") as file:
        file.write(text)
