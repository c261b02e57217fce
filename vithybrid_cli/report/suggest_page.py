"""The page of photos to label next: `vithybrid suggest ... --report next.html`.

From suggest's records (path, score, label, why; most useful first): one grid of tiles in the
order picked, each with the head's best guess and why the photo was picked.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .gallery import GalleryReport, ThumbnailOptions, pictured, thumbnails_beside
from .page import Page, Tile, View, histogram, write_page


def write_suggest_page(
    records: list[dict[str, Any]],
    output: str,
    *,
    title: str,
    pool: int,
    bases: list[Path] | None = None,
    thumbnails: ThumbnailOptions | None = None,
) -> GalleryReport:
    """Thumbnails of the picked photos beside `output`, then the page itself."""
    started = time.perf_counter()
    paths = [record["path"] for record in records]
    thumbs, stats, folder = thumbnails_beside(
        output, paths, thumbnails or ThumbnailOptions(), bases or []
    )
    page_dir = Path(output).parent
    tiles = []
    for rank, record in enumerate(records, 1):
        tile = Tile(record["path"], title=f"{rank}. {record['label']}", detail=record["why"])
        tiles.append(pictured(tile, thumbs.get(record["path"]), page_dir, folder))
    views = [
        View("To label next", list(range(len(tiles))),
             "Most useful first: the head's least sure photos, no two alike.", grouped=False),
    ]  # fmt: skip
    facts = [("picked", f"{len(records):,}"), ("pool", f"{pool:,}")]
    scores = [float(record["score"]) for record in records]
    charts = [histogram("Uncertainty of the picks (1 - margin)", scores)] if scores else []
    write_page(Page(title, facts=facts, charts=charts, views=views, tiles=tiles), output)
    return GalleryReport(output, str(folder), len(paths), 0, 0, 0, stats,
                         time.perf_counter() - started)  # fmt: skip
