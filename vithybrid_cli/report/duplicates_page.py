"""The page of duplicate groups: `vithybrid duplicates ... --report groups.html`.

From the records `search.grouping.group_records` makes (one per group: its paths, the lowest
similarity inside it, whether the files are byte copies, and with --keep the file kept first):
one heading per group, its files side by side, exact copies first and then the most similar
groups; each tile says the file's size and pixel size (read from local files' headers only), in a
near group which files are byte copies of each other ("byte copy A"), and, with --keep, whether
the file is kept or one of the others to review.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from ..search.grouping import image_header
from .gallery import GalleryReport, ThumbnailOptions, pictured, thumbnails_beside
from .page import Page, Tile, View, histogram, write_page
from .thumbnails import Thumbnail


def write_duplicates_page(
    records: list[dict[str, Any]],
    output: str,
    *,
    title: str,
    threshold: float,
    searched: int,
    bases: list[Path] | None = None,
    thumbnails: ThumbnailOptions | None = None,
) -> GalleryReport:
    """Thumbnails of the grouped files beside `output`, then the page itself."""
    started = time.perf_counter()
    paths = [path for record in records for path in record["paths"]]
    thumbs, stats, folder = thumbnails_beside(
        output, paths, thumbnails or ThumbnailOptions(), bases or []
    )
    page = duplicates_page(records, thumbs, Path(output).parent, folder, title=title,
                           threshold=threshold, searched=searched)  # fmt: skip
    write_page(page, output)
    return GalleryReport(output, str(folder), len(paths), 0, 0, 0, stats,
                         time.perf_counter() - started)  # fmt: skip


def by_score(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Exact copies first, then the highest lowest-similarity; ties in their given order."""
    return sorted(records, key=lambda record: (not record["exact"], -record["score"]))


def duplicates_page(
    records: list[dict[str, Any]],
    thumbs: dict[str, Thumbnail],
    page_dir: Path,
    folder: Path,
    *,
    title: str,
    threshold: float,
    searched: int,
) -> Page:
    tiles: list[Tile] = []
    others: list[int] = []
    for number, record in enumerate(by_score(records), 1):
        score = "exact copies" if record["exact"] else f"lowest similarity {record['score']:.3f}"
        marks = copy_marks(record)
        if marks:
            score += f", {len(marks)} byte copies"
        group = f"{number}. {score}"
        for path in record["paths"]:
            thumb = thumbs.get(path)
            local = thumb.original if thumb and thumb.original else path  # found via the bases
            detail = " · ".join(part for part in (file_facts(local), marks.get(path)) if part)
            tile = Tile(path, group=group, detail=detail)
            if "keep" in record:
                kept = path == record["keep"]
                tile.title = "keep" if kept else "other"
                if not kept:
                    others.append(len(tiles))
            tiles.append(pictured(tile, thumb, page_dir, folder))
    views = [
        View("By score", list(range(len(tiles))),
             "Exact copies first, then by the lowest similarity inside the group, highest first."),
    ]  # fmt: skip
    if others:
        views.append(View("To review", others, "The files --keep did not keep, by group."))
    exact = sum(record["exact"] for record in records)
    copies = sum(bool(record.get("copies")) for record in records)
    facts = [
        ("groups", f"{len(records):,}"),
        ("exact", f"{exact:,}"),
        ("with byte copies", f"{copies:,}"),
        ("files in groups", f"{len(tiles):,}"),
        ("images searched", f"{searched:,}"),
        ("threshold", f"{threshold:g}"),
    ]
    if others:
        facts.append(("to review", f"{len(others):,}"))
    near = [record["score"] for record in records if not record["exact"]]
    charts = [score_histogram(near, threshold)] if near and threshold < 1.0 else []
    return Page(title, facts=facts, charts=charts, views=views, tiles=tiles)


def copy_marks(record: dict[str, Any]) -> dict[str, str]:
    """The mark of each file of a near group that is a byte copy of another in it ("byte copy
    A", a letter per set of copies); none in an exact group (all its files are copies)."""
    if record["exact"]:
        return {}
    sets = record.get("copies", [])[:26]
    return {path: f"byte copy {chr(ord('A') + n)}" for n, same in enumerate(sets) for path in same}


def score_histogram(scores: list[float], threshold: float) -> dict:
    """The groups' lowest similarities from a round number below `threshold` up to 1, in bins
    of 0.01: a span of 0.2 keeps the axis' five ticks round (0.80, 0.85, ... 1.00)."""
    low = math.floor(round(threshold * 5, 6)) / 5
    if low >= threshold - 0.05:  # the threshold near the left edge: show a little below it
        low -= 0.2
    bins = round((1.0 - low) * 100)
    return histogram("Lowest similarity per group", scores, bins, low)


def file_facts(path: str) -> str:
    """A local image's size and pixel size ("12.3 kB · 640×480", its header only), else ""."""
    header = image_header(path)
    if header is None:
        return ""
    width, height, size = header
    return f"{human_bytes(size)} · {width}×{height}"


def human_bytes(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")
