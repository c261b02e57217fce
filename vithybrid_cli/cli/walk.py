"""What the CLI says about the folder walk: the summary lines of what it left out (inputs'
WalkNotes), the image formats this install decodes (for `info`), and which paths are the
run's own outputs (never taken as inputs)."""

from __future__ import annotations

from typing import Any


def own_outputs(*paths: str | None) -> list[str]:
    """The outputs a command writes (files or folders, '-' and None left out), each with the
    journal folder a file output keeps beside it: the walk never takes them."""
    from ..pipeline.journal import journal_dir

    found: list[str] = []
    for path in paths:
        if path and path != "-":
            found += [path, journal_dir(path)]
    return found


def note_lines(notes: Any, *, quiet: bool = False) -> list[str]:
    """The summary's lines for what the walk left out (`notes`: an inputs.WalkNotes).

    Formats this install cannot decode are said even with --quiet: files were not labeled.
    """
    if notes is None:  # the inputs were never walked
        return []
    lines = notes.undecodable_lines()
    if quiet:
        return lines
    for path in notes.own_outputs:
        lines.append(f"skipped {path}: this run's own output")
    if notes.links_not_followed:
        count = notes.links_not_followed
        plural = "symlinks" if count != 1 else "symlink"
        lines.append(f"did not follow {count} directory {plural} (--follow-links follows them)")
    return lines


def format_rows() -> list[tuple[str, str]]:
    """`info`'s rows: the image formats this install decodes, and how to add the others."""
    from ..data.formats import format_table

    table = format_table()
    decoded = ", ".join(fmt.name for fmt, ok in table if ok)
    rows = [("image formats", decoded)]
    missing = [f"{fmt.name} ({fmt.hint})" for fmt, ok in table if not ok]
    if missing:
        rows.append(("not decoded", "; ".join(missing)))
    return rows
