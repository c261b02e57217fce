"""`vithybrid sort`: a classify run's photos into one folder per label, and `--undo` of a move
(the work is in io/sorting.py)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from .app import app
from .common import run_command
from .options import Debug, Quiet, Root, UserError, root_folder
from .render import counted, stderr

SHOWN = 10  # per-photo lines shown before "... and N more"


@app.command()
def sort(
    results: Annotated[
        str | None,
        typer.Argument(
            help="A classify output: .jsonl, .json, .csv, .parquet or a folder of .parquet parts.",
            show_default=False,
            metavar="RESULTS",
        ),
    ] = None,
    into: Annotated[
        str | None,
        typer.Option(
            "--into",
            help="The folder to sort into: DIR/LABEL/photo, the layout `vithybrid fit` reads.",
            metavar="DIR",
            show_default=False,
        ),
    ] = None,
    link: Annotated[
        bool, typer.Option("--link", help="Symlinks to the photos (the default).")
    ] = False,
    copy: Annotated[bool, typer.Option("--copy", help="Copies of the photos.")] = False,
    move: Annotated[
        bool,
        typer.Option(
            "--move",
            help="Move the photos (same file system only); writes DIR/.vithybrid-sort-TIME.jsonl "
            "for --undo.",
        ),
    ] = False,
    min_score: Annotated[
        float | None,
        typer.Option(
            "--min-score",
            min=0.0,
            max=1.0,
            help="Photos scored below S go to DIR/_unsure/.",
            metavar="S",
        ),
    ] = None,  # fmt: skip
    root: Root = None,
    undo: Annotated[
        str | None,
        typer.Option(
            "--undo",
            help="Move the photos of a `sort --move` back, as its manifest records them.",
            metavar="MANIFEST",
            show_default=False,
        ),
    ] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Sort the photos of a classify run into one folder per label (DIR/LABEL/photo.jpg)."""

    def body() -> int:
        if undo is not None:
            given = results is not None or into is not None or min_score is not None
            if given or root is not None or link or copy or move:
                raise UserError(
                    "--undo MANIFEST takes no RESULTS, --into, mode, --min-score or --root"
                )
            return undo_sort(undo, quiet)
        if results is None or into is None:
            raise UserError("give RESULTS and --into DIR (or --undo MANIFEST)")
        if link + copy + move > 1:
            raise UserError("give one of --link, --copy, --move")
        mode = "copy" if copy else "move" if move else "link"
        return sort_photos(results, into, mode, min_score, root, quiet)

    run_command(body, debug)


def sort_photos(results: str, into: str, mode: str, min_score: float | None, root: str | None,
                quiet: bool) -> int:  # fmt: skip

    from ..io.sorting import sort_results

    root_folder(root)
    done = sort_results(results, into, mode=mode, min_score=min_score, root=root)
    for path, why in done.errors[:SHOWN]:
        stderr.print(f"[red]error:[/red] {escape(path)}: {escape(why)}", soft_wrap=True)
    more(done.errors)
    if done.not_found:
        stderr.print(
            f"[yellow]warning:[/yellow] {counted(len(done.not_found), 'photo')} not found "
            f"(first: {escape(done.not_found[0])}): run sort from the folder classify ran in, "
            "or pass --root DIR",
            soft_wrap=True,
        )
    if not quiet:
        stderr.print(summary_line(done), soft_wrap=True, markup=False)
    return 1 if done.errors else 0


def summary_line(done) -> str:
    """sorted 120 photos into 5 folders (3 below --min-score into _unsure), 2 failures left out"""
    unsure = []
    if done.below:
        unsure.append(f"{done.below} below --min-score")
    if done.abstained:
        unsure.append(f"{done.abstained} abstained")
    folders = counted(len(done.folders), "folder")
    line = f"sorted {counted(done.placed, 'photo')} into {folders}"
    if unsure:
        line += f" ({', '.join(unsure)} into _unsure)"
    extra = [f"{counted(done.failures, 'failure')} left out"] if done.failures else []
    if done.already:
        extra.append(f"{done.already} already linked there")
    if done.repeated:
        extra.append(f"{done.repeated} listed twice")
    verb = {"link": "linked", "copy": "copied", "move": "moved"}[done.mode]
    line += "".join(f", {part}" for part in extra) + f"; {verb} into {done.into}"
    if done.manifest:
        line += f"; undo: vithybrid sort --undo {done.manifest}"
    return line


def undo_sort(manifest: str, quiet: bool) -> int:
    from ..io.sorting import undo_moves

    done = undo_moves(manifest)
    for source in done.blocked[:SHOWN]:
        stderr.print(f"[yellow]warning:[/yellow] {escape(source)}: another file is there now: "
                     "kept in the sorted folder", soft_wrap=True)  # fmt: skip
    more(done.blocked)
    for target in done.missing[:SHOWN]:
        stderr.print(
            f"[yellow]warning:[/yellow] {escape(target)}: gone since the sort", soft_wrap=True
        )
    more(done.missing)
    for path, why in done.errors[:SHOWN]:
        stderr.print(f"[red]error:[/red] {escape(path)}: {escape(why)}", soft_wrap=True)
    more(done.errors)
    if not quiet:
        parts = [f"moved {counted(done.moved_back, 'photo')} back"]
        if done.in_place:
            parts.append(f"{done.in_place} already in place")
        if done.blocked:
            parts.append(f"{len(done.blocked)} kept (another file at the old place)")
        if done.missing:
            parts.append(f"{len(done.missing)} gone since")
        stderr.print(", ".join(parts), soft_wrap=True, markup=False)
    return 1 if done.blocked or done.missing or done.errors else 0


def more(items: list) -> None:
    if len(items) > SHOWN:
        stderr.print(f"  ... and {len(items) - SHOWN} more", soft_wrap=True)
