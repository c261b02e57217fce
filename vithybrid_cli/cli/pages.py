"""The pages the commands write beside their work, shared by several commands: the page path
check, the summary line, and fit --report, duplicates --report, suggest --report and
attention-map --index (the pages themselves are built in vithybrid_cli/report/).
"""

from __future__ import annotations

from typing import Any

from .options import UserError
from .render import ProgressBar, counted, stderr


def page_path(path: str | None, option: str = "--output") -> str | None:
    """`path` when it names an .html file (checked before any work), else UserError."""
    from pathlib import Path

    if path is not None and Path(path).suffix.lower() not in (".html", ".htm"):
        raise UserError(f"{option} {path!r}: the page is an .html file")
    return path


def summarize(done: Any, what: str, quiet: bool, hint: str | None = None) -> None:
    """One stderr line: what the page holds, the thumbnails made and reused, where it is; then,
    when local images were not found and the caller knows why, a warning: how many, and `hint`
    (what to do about it), even with --quiet (the page lacks pictures)."""
    stats = done.stats
    if not quiet:
        missing = f", {stats.missing} missing" if stats.missing else ""
        missing += f", {stats.removed} no longer shown removed" if stats.removed else ""
        labels = f"{counted(done.labels, 'label')}, " if done.labels else ""
        stderr.print(
            f"{done.rows} {what} ({labels}{done.failed} failed); thumbnails: "
            f"{stats.made} made, {stats.reused} reused{missing} in {done.seconds:.1f} s; "
            f"wrote {done.output}",
            soft_wrap=True,
        )
    if stats.not_found and hint:
        stderr.print(
            f"[yellow]warning:[/yellow] {counted(stats.not_found, 'image')} not found: {hint}",
            soft_wrap=True,
        )


def write_fit_report(report: Any, path: str, head_path: str, workers: int | None,
                     quiet: bool) -> None:  # fmt: skip
    """fit --report: the page of the fitted head (report/fit_page.py)."""
    from ..report.fit_page import write_fit_page
    from ..report.gallery import ThumbnailOptions

    with ProgressBar("thumbnails", not quiet) as progress:
        options = ThumbnailOptions(workers=workers, progress=progress)
        done = write_fit_page(report, path, head_path=head_path, thumbnails=options)
    summarize(done, "validation images", quiet)


def write_duplicates_report(records: list[dict[str, Any]], path: str, threshold: float,
                            searched: int, bases: list[str], workers: int | None,
                            quiet: bool) -> None:  # fmt: skip
    """duplicates --report: the page of the groups (report/duplicates_page.py)."""
    from pathlib import Path

    from ..report.duplicates_page import write_duplicates_page
    from ..report.gallery import ThumbnailOptions

    with ProgressBar("thumbnails", not quiet) as progress:
        options = ThumbnailOptions(workers=workers, progress=progress)
        done = write_duplicates_page(
            records, path, title=f"Duplicates among {searched:,} images", threshold=threshold,
            searched=searched, bases=[Path(base) for base in bases], thumbnails=options,
        )  # fmt: skip
    summarize(done, "files in groups", quiet,
              "run duplicates from the folder embed ran in (relative paths start there)"
              if bases else None)  # fmt: skip


class IndexNotes:
    """attention-map's output, noting each input's picture (or error) for --index."""

    def __init__(self, output: Any) -> None:
        self.output = output
        self.saved: dict[int, str] = {}  # input index -> the overlay written
        self.notes: dict[int, tuple[str, str | None]] = {}  # input index -> (path, error)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.output, name)

    def write(self, result: Any) -> None:
        self.notes[result.index] = (result.path, None if result.ok else result.error)
        self.output.write(result)


def write_attention_index(
    notes: IndexNotes, directory: str, workers: int | None, quiet: bool
) -> None:
    """attention-map --index: DIR/index.html, a tile per input (report/gallery.py)."""
    from pathlib import Path

    from ..report.gallery import IndexItem, ThumbnailOptions, write_index

    items = [
        IndexItem(path, notes.saved.get(number), error)
        for number, (path, error) in sorted(notes.notes.items())
    ]
    with ProgressBar("thumbnails", not quiet) as progress:
        options = ThumbnailOptions(workers=workers, progress=progress)
        page = str(Path(directory) / "index.html")
        done = write_index(items, page, title="Attention maps", thumbnails=options)
    summarize(done, "inputs", quiet)


def write_suggest_report(records: list[dict[str, Any]], path: str, pool: int,
                         bases: list[str], workers: int | None, quiet: bool) -> None:  # fmt: skip
    """suggest --report: the page of the photos to label next (report/suggest_page.py)."""
    from pathlib import Path

    from ..report.gallery import ThumbnailOptions
    from ..report.suggest_page import write_suggest_page

    with ProgressBar("thumbnails", not quiet) as progress:
        options = ThumbnailOptions(workers=workers, progress=progress)
        done = write_suggest_page(
            records, path, title=f"To label next: {len(records)} of {pool:,} photos", pool=pool,
            bases=[Path(base) for base in bases], thumbnails=options,
        )  # fmt: skip
    summarize(done, "photos to label", quiet,
              "run suggest from the folder embed ran in (relative paths start there)"
              if bases else None)  # fmt: skip
