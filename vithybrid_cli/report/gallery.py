"""The gallery of a classify run: `vithybrid report RESULTS -o report.html`.

RESULTS (any classify output, see results.py) -> thumbnails (thumbnails.py) -> a Page
(page.py): a summary (images per label, top-1 score histogram, failures), the tiles grouped by
label and sorted by score, a review order (least certain first) and the failures.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..io.results import Results, Row, read_results
from .page import Page, Tile, View, bar_chart, histogram, relative_url, table, write_page
from .thumbnails import THUMBNAIL_SIZE, Thumbnail, ThumbnailStats, make_thumbnails

ABSTAINED = "(abstained)"
FAILED = "(failed)"
FAILURES_LISTED = 500  # rows of the failures table; every failure still has its tile


@dataclass
class GalleryReport:
    """What `build_gallery` did, for the command's summary line."""

    output: str
    thumbnails: str
    rows: int
    labels: int
    failed: int
    abstained: int
    stats: ThumbnailStats
    seconds: float


def thumbnail_folder(output: str | os.PathLike[str]) -> Path:
    """report.html's thumbnails go to report_files/ beside it."""
    target = Path(output)
    return target.with_name(f"{target.stem}_files")


@dataclass
class ThumbnailOptions:
    size: int = THUMBNAIL_SIZE
    fmt: str = "webp"
    workers: int | None = None
    progress: Callable[[int, int], None] | None = None  # (made, to make)


def thumbnails_beside(
    output: str, paths: Iterable[str], options: ThumbnailOptions, bases: Iterable[Path] = ()
) -> tuple[dict[str, Thumbnail], ThumbnailStats, Path]:
    """The thumbnails of `paths` in the folder beside page `output` (and that folder)."""
    folder = thumbnail_folder(output)
    thumbs, stats = make_thumbnails(
        paths, folder, bases=bases, size=options.size, fmt=options.fmt, workers=options.workers,
        progress=options.progress,
    )  # fmt: skip
    return thumbs, stats, folder


def build_gallery(
    results_path: str,
    output: str,
    *,
    title: str | None = None,
    thumbnails: ThumbnailOptions | None = None,
    root: str | None = None,
) -> GalleryReport:
    """Read classify output `results_path`, make its thumbnails, write the page `output`.
    Relative paths are looked up from the current folder, then from `root` (the folder
    classify ran in, when given), then from the folder of `results_path`."""
    started = time.perf_counter()
    results = read_results(results_path)
    base = Path(results_path).parent if not Path(results_path).is_dir() else Path(results_path)
    # a failed input is not opened again: its tile shows the error (a dead URL would time out)
    paths = (row.path for row in results.rows if row.ok)
    bases = [Path(root), base] if root else [base]
    thumbs, stats, folder = thumbnails_beside(
        output, paths, thumbnails or ThumbnailOptions(), bases
    )
    page = gallery_page(results, thumbs, Path(output).parent, folder, title or results_path)
    write_page(page, output)
    labels = {row.label for row in results.rows if row.ok and row.label is not None}
    return GalleryReport(
        output=output,
        thumbnails=str(folder),
        rows=len(results.rows),
        labels=len(labels),
        failed=sum(not row.ok for row in results.rows),
        abstained=sum(row.ok and row.label is None for row in results.rows),
        stats=stats,
        seconds=time.perf_counter() - started,
    )


def certainty(row: Row) -> float:
    """How sure a record is: the lower of its top-1 score and its margin over the second."""
    return min(row.score if row.score is not None else 0.0, row.margin or 0.0)


def gallery_page(
    results: Results, thumbs: dict[str, Thumbnail], page_dir: Path, folder: Path, title: str
) -> Page:
    rows = results.rows
    tiles = [_tile(row, thumbs.get(row.path), page_dir, folder) for row in rows]
    good = [i for i, row in enumerate(rows) if row.ok]
    failed = [i for i, row in enumerate(rows) if not row.ok]
    decided = [i for i in good if rows[i].label is not None]
    abstained = [i for i in good if rows[i].label is None]
    counts = Counter(rows[i].label for i in decided)
    rank = {label: n for n, (label, _) in enumerate(sorted(counts.items(), key=_by_count))}

    def best_first(i: int) -> float:
        return -(rows[i].score or 0.0)

    by_label = sorted(decided, key=lambda i: (rank[rows[i].label], best_first(i), i))
    by_label += sorted(abstained, key=lambda i: (best_first(i), i)) + failed
    views = [
        View("By label", by_label, "Grouped by label, most images first; best score first."),
        View("Review", sorted(good, key=lambda i: (certainty(rows[i]), i)),
             "Least certain first: a low top-1 score or a small margin over the second label.",
             grouped=False),
    ]  # fmt: skip
    if failed:
        views.append(View("Failed", failed, "Inputs classify could not label, with the error."))

    bars = sorted(counts.items(), key=_by_count)
    if abstained:
        bars.append((ABSTAINED, len(abstained)))
    scores = [rows[i].top_k[0][1] or 0.0 for i in good if rows[i].top_k]
    charts = [bar_chart("Images per label", bars), histogram("Top-1 score", scores)]
    tables = []
    if failed:
        more = len(failed) - FAILURES_LISTED
        note = f"and {more} more, in the Failed view" if more > 0 else ""
        listed = [[rows[i].path, rows[i].error] for i in failed[:FAILURES_LISTED]]
        tables.append(table(f"Failures ({len(failed)})", ["path", "error"], listed, note))
    facts = [("images", f"{len(rows):,}"), ("labels", f"{len(counts):,}")]
    if results.decision:
        facts.append(("abstained", f"{len(abstained):,}"))
    facts.append(("failed", f"{len(failed):,}"))
    missing = sum(1 for i in good if tiles[i].thumb is None)
    subtitle = f"{missing:,} images could not be shown" if missing else ""
    return Page(title, subtitle, facts, charts, tables, views, tiles)


def _by_count(item: tuple[str, int]) -> tuple[int, str]:
    return -item[1], item[0]


def pictured(tile: Tile, thumb: Thumbnail | None, page_dir: Path, folder: Path) -> Tile:
    """`tile` with its thumbnail and larger image as URLs relative to the page (or why none)."""
    thumb = thumb or Thumbnail(reason="no thumbnail")
    tile.thumb = relative_url(folder / thumb.file, page_dir) if thumb.file else None
    tile.image = relative_url(thumb.original, page_dir) if thumb.original else None
    tile.reason = thumb.reason
    return tile


def _tile(row: Row, thumb: Thumbnail | None, page_dir: Path, folder: Path) -> Tile:
    if not row.ok:  # its error takes the thumbnail's place
        return Tile(row.path, group=FAILED, kind="failed", error=row.error)
    tile = pictured(Tile(row.path, top_k=row.top_k), thumb, page_dir, folder)
    margin = row.margin
    detail = f"{row.score:.3f}" if row.score is not None else ""
    if margin is not None and len(row.top_k) > 1:
        detail += f" · margin {margin:.3f}"
    if row.label is None:
        best = row.top_k[0][0] if row.top_k else "?"
        tile.group, tile.kind, tile.title = ABSTAINED, "abstained", "abstained"
        tile.detail = f"best guess {best} {detail}"
    else:
        tile.group, tile.title, tile.detail = row.label, row.label, detail
    return tile


# ---------------------------------------------------------------------------- an index of images


@dataclass
class IndexItem:
    """One input of a run that wrote pictures: the picture it made, or its error."""

    path: str  # the input, as named
    picture: str | None = None  # the file made for it (an overlay PNG)
    error: str | None = None
    group: str = ""


def write_index(
    items: list[IndexItem],
    output: str,
    *,
    title: str,
    thumbnails: ThumbnailOptions | None = None,
) -> GalleryReport:
    """A page of `items`' pictures (attention-map --index), thumbnails in NAME_files/."""
    started = time.perf_counter()
    pictures = [item.picture for item in items if item.picture]
    thumbs, stats, folder = thumbnails_beside(output, pictures, thumbnails or ThumbnailOptions())
    page_dir = Path(output).parent
    tiles = []
    for item in items:
        tile = Tile(item.path, group=item.group)
        if item.error is not None:  # in its place in the order, not a group of its own
            tile.kind, tile.error = "failed", item.error
        else:
            tile = pictured(tile, thumbs.get(item.picture or ""), page_dir, folder)
        tiles.append(tile)
    failed = [i for i, item in enumerate(items) if item.error is not None]
    views = [View("All", list(range(len(tiles))), "In input order; click for the full picture.")]
    if failed:
        views.append(View("Failed", failed, "Inputs that made no picture, with the error."))
    facts = [("images", f"{len(items) - len(failed):,}"), ("failed", f"{len(failed):,}")]
    write_page(Page(title, facts=facts, views=views, tiles=tiles), output)
    return GalleryReport(output, str(folder), len(items), 0, len(failed), 0, stats,
                         time.perf_counter() - started)  # fmt: skip
