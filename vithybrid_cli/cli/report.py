"""`vithybrid report`: a gallery page of a classify run (the work is in report/gallery.py)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from .app import app
from .common import run_command
from .options import Debug, Quiet, Root, Workers, root_folder
from .pages import page_path, summarize
from .render import ProgressBar


class ThumbFormat(str, Enum):
    webp = "webp"
    jpeg = "jpeg"


@app.command()
def report(
    results: Annotated[
        str,
        typer.Argument(
            help="A classify output: .jsonl, .json, .csv, .parquet or a folder of .parquet parts.",
            show_default=False,
            metavar="RESULTS",
        ),
    ],
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="The page to write (default: RESULTS with .html); thumbnails go to NAME_files/.",
        ),
    ] = None,  # fmt: skip
    title: Annotated[str | None, typer.Option(help="The page's title (default: RESULTS).")] = None,
    thumb_size: Annotated[
        int, typer.Option(min=32, max=1024, help="Longest side of a thumbnail, in pixels.")
    ] = 256,
    thumb_format: Annotated[
        ThumbFormat, typer.Option(help="Thumbnail format.", case_sensitive=False)
    ] = ThumbFormat.webp,
    root: Root = None,
    workers: Workers = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Write a gallery page of a classify run: thumbnails by label, the least certain, failures."""

    def body() -> int:
        from pathlib import Path

        from ..report.gallery import ThumbnailOptions, build_gallery

        target = page_path(output or str(Path(results.rstrip("/")).with_suffix(".html")))
        root_folder(root)
        with ProgressBar("thumbnails", not quiet) as progress:
            options = ThumbnailOptions(thumb_size, thumb_format.value, workers, progress)
            done = build_gallery(results, target, title=title, thumbnails=options, root=root)
        hint = (
            "run report from the folder classify ran in (relative paths start there), "
            "or pass --root DIR"
        )
        summarize(done, "records", quiet, hint)
        return 0

    run_command(body, debug)
