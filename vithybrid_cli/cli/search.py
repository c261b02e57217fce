"""`vithybrid similar` and `vithybrid duplicates`: search embeddings (the search package) and
render what it finds. Queries and images are embedded by the same run_job as `embed`."""

from __future__ import annotations

import os
import sys
import time
from enum import Enum
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ..model.config import DEFAULT_MODEL_ID
from .against import AgainstRun, Recorded, asked_explicitly, embed_as_recorded, find_against
from .app import app
from .common import Common, Inputs, embed_images, ensure_parent, run_command
from .options import (
    Backend,
    BackendOpt,
    BatchSize,
    Debug,
    Device,
    DeviceOpt,
    DType,
    DTypeOpt,
    FilesFrom,
    ImageSize,
    Interpolate,
    MaxDownload,
    ModelOpt,
    Pool,
    PoolOpt,
    Quiet,
    Revision,
    UserError,
    Workers,
)
from .ray_options import Engine
from .render import counted, stderr, stdout

# The default threshold: imagededup's for CNN embeddings (min_similarity_threshold=0.9), the
# usual cut for cosine similarity of a classifier's pooled features (see the guide).
DEFAULT_THRESHOLD = 0.9


class Keep(str, Enum):
    first = "first"
    largest = "largest"


class IndexChoice(str, Enum):
    auto = "auto"
    exact = "exact"
    approximate = "approximate"
    clustered = "clustered"


class ListFormat(str, Enum):
    table = "table"
    jsonl = "jsonl"
    json = "json"


Sources = Annotated[
    list[str] | None,
    typer.Argument(
        help="Images (files, folders, globs, URLs...) or one vectors file written by `embed` "
        "(.npy with its .paths.txt, .npz, .parquet, or the Ray engine's folder of parts).",
        show_default=False,
    ),
]
Queries = Annotated[
    list[str] | None,
    typer.Argument(help="Query images (files, folders, globs, URLs...).", show_default=False),
]
VectorsIn = Annotated[
    str,
    typer.Option(
        "--in",
        help="The vectors to search: an `embed` output (.npy/.npz/.parquet, "
        "or the Ray engine's folder of parts).",
    ),
]
Neighbours = Annotated[int, typer.Option("--top-k", "-k", min=1, help="Matches per query.")]
Threshold = Annotated[
    float,
    typer.Option(
        "--threshold",
        "-t",
        min=-1.0,
        max=1.0,
        help="Cosine similarity that makes a near-duplicate.",
    ),
]
KeepOpt = Annotated[
    Keep | None,
    typer.Option(
        help="Keep the first file of each group (input order) or the largest (pixels, then "
        "bytes); list the others in OUTPUT.others.txt for review. Nothing is deleted.",
        show_default=False,
    ),
]
IndexOpt = Annotated[
    IndexChoice,
    typer.Option(
        "--index",
        help="exact: blocked products; clustered: exact search inside coarse clusters, its "
        "recall measured on a sample (kept and grown with a vectors file); approximate: a "
        "usearch HNSW index (the search extra); auto: clustered above 50,000 vectors.",
    ),
]
ListFormatOpt = Annotated[
    ListFormat | None,
    typer.Option(
        "--format", "-f", help="Default: table on a terminal, else jsonl.", show_default=False
    ),
]
GroupsPage = Annotated[
    str | None,
    typer.Option(
        help="Also write the groups as a page of thumbnails side by side (PAGE.html; "
        "thumbnails in PAGE_files/).",
        metavar="PAGE",
    ),
]
ListOutput = Annotated[str | None, typer.Option("--output", "-o", help="A .jsonl / .json file.")]
AgainstOpt = Annotated[
    str | None,
    typer.Option(
        "--against",
        help="A collection's vectors (an `embed` output, as `similar` searches): list each of "
        "SOURCES with a near copy there, and the near copies among SOURCES, one match a line; "
        "images are embedded as the collection was.",
        metavar="COLLECTION",
        show_default=False,
    ),
]
SearchEngineOpt = Annotated[
    Engine,
    typer.Option(
        "--engine",
        help="local: this process; ray: the search sharded over Ray actors (RAY_ADDRESS, else "
        "a local Ray for the run), the groups formed here as the local run forms them.",
    ),
]
# similar: None means "as recorded with the vectors"
RecordedModel = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Default: the model recorded with the vectors."),
]
RecordedRevision = Annotated[str | None, typer.Option(help="Default: as recorded.")]
RecordedDType = Annotated[DType | None, typer.Option(help="Default: as recorded.")]
RecordedPool = Annotated[Pool | None, typer.Option(help="Default: as recorded.")]
RecordedBackend = Annotated[Backend | None, typer.Option(help="Default: as recorded.")]
RecordedInterpolate = Annotated[
    bool | None,
    typer.Option(
        "--interpolate-pos-encoding/--no-interpolate-pos-encoding",
        help="Default: as recorded.",
        show_default=False,
    ),
]


def list_format(fmt: ListFormat | None, output: str | None) -> str:
    from ..io.outputs import format_from_path

    to_file = bool(output) and output != "-"
    if to_file:
        chosen = fmt.value if fmt else format_from_path(output)
        if chosen not in ("jsonl", "json"):
            raise UserError(f"--output {output!r}: use a .jsonl or .json file")
        return chosen
    return fmt.value if fmt else ("table" if stdout.is_terminal else "jsonl")


def write_records(records: list[dict[str, Any]], fmt: str, output: str | None) -> None:
    from ..io.outputs import open_writer

    to_file = bool(output) and output != "-"
    writer = open_writer("records", fmt, output if to_file else sys.stdout)
    try:
        for record in records:
            writer.write(record)
    except BaseException:
        writer.abort()
        raise
    writer.close()


# ---------------------------------------------------------------------------- duplicates


@app.command()
def duplicates(
    context: typer.Context,
    sources: Sources = None,
    output: ListOutput = None,
    threshold: Threshold = DEFAULT_THRESHOLD,
    keep: KeepOpt = None,
    index: IndexOpt = IndexChoice.auto,
    format: ListFormatOpt = None,
    files_from: FilesFrom = None,
    max_download_mb: MaxDownload = None,
    pool: PoolOpt = Pool.cls,
    model: ModelOpt = DEFAULT_MODEL_ID,
    revision: Revision = None,
    device: DeviceOpt = Device.auto,
    dtype: DTypeOpt = DType.auto,
    backend: BackendOpt = Backend.torch,
    batch_size: BatchSize = None,
    workers: Workers = None,
    interpolate_pos_encoding: Interpolate = False,
    image_size: ImageSize = None,
    report: GroupsPage = None,
    against: AgainstOpt = None,
    engine: SearchEngineOpt = Engine.local,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Find exact and near-duplicate images: groups whose every pair is >= --threshold."""
    if against is not None:  # cli/against.py
        settings = AgainstRun(
            sources=sources, files_from=files_from, max_download_mb=max_download_mb,
            collection=against, threshold=threshold, index=index, asked=asked_explicitly(context),
            device=device, batch_size=batch_size, workers=workers, quiet=quiet,
        )  # fmt: skip
        refused = [("--keep", keep), ("--report", report), ("--engine ray", engine is Engine.ray)]
        run_command(lambda: against_body(settings, format, output, refused), debug)
        return
    common = Common(
        model=model, revision=revision, device=device, dtype=dtype, backend=backend,
        batch_size=batch_size, workers=workers, interpolate=interpolate_pos_encoding,
        image_size=image_size, quiet=quiet,
    )  # fmt: skip

    def body() -> int:
        from ..pipeline.tasks import embed_task
        from ..search.grouping import find_duplicates, group_records
        from ..search.index import APPROXIMATE_FROM, choose_index
        from ..search.vectors import is_vectors_file, read_vectors
        from .pages import page_path

        fmt = list_format(format, output)
        page_path(report, "--report")
        others = others_path(output) if keep else None
        if keep and not others:
            raise UserError("--keep lists the other files beside --output: give -o GROUPS.jsonl")
        require_index(index)
        status = 0
        specs = sources or []
        bases: list[str] = []  # where a vectors file's relative paths may be (bytes, --keep, page)
        if specs and all(is_vectors_file(spec) for spec in specs):
            if len(specs) > 1 or files_from:
                raise UserError("give one vectors file (or images), not several")
            vectors = read_vectors(specs[0])
            bases = [os.path.dirname(os.path.normpath(specs[0])) or "."]
        else:
            inputs = Inputs(sources, files_from, max_download_mb)
            vectors, summary = embed_images(common, inputs, embed_task(pool.value), "embedded")
            status = 1 if summary.failed else 0
        ensure_parent(output, others, report)
        method = choose_index(index.value, len(vectors))
        if method == "exact" and len(vectors) > APPROXIMATE_FROM and not quiet:
            stderr.print(
                f"note: exact search of {len(vectors):,} vectors grows with their square; "
                "--index clustered searches inside clusters"
            )
        import torch  # noqa: F401 - before the clock starts: the search alone is timed

        # a vectors file's approximate index is kept for the next run (search/index.py)
        kept = method in ("approximate", "clustered")
        name = specs[0] if bases else "images"
        saved = vectors.saved_index(method) if bases and kept else None
        started = time.perf_counter()
        note = None if quiet else lambda line: stderr.print(f"{name}: {line}", soft_wrap=True)
        if engine is Engine.ray:  # search/sharded.py: the pairs from Ray actors
            groups = ray_duplicates(vectors, threshold, method, bases, saved, quiet)
        else:
            groups = find_duplicates(vectors.array, vectors.paths, threshold, index=method,
                                     bases=bases, saved=saved, note=note)  # fmt: skip
        elapsed = time.perf_counter() - started
        records, review = group_records(groups, vectors.paths, keep.value if keep else None, bases)
        if fmt == "table":
            render_groups(records)
        else:
            write_records(records, fmt, output)
        if others:
            from ..files import atomic_write
            from ..io.outputs import path_line

            with atomic_write(others) as file:
                file.writelines(path_line(path) for path in review)
        if not quiet:
            searched = f"among {len(vectors)} images at threshold {threshold:g}"
            summarize_groups(records, f"{searched} ({method} search in {elapsed:.1f} s)")
            if others:
                stderr.print(
                    f"wrote {counted(len(review), 'file')} to review to {others} "
                    "(nothing was deleted)",
                    soft_wrap=True,
                )
        if report:
            from .pages import write_duplicates_report

            write_duplicates_report(records, report, threshold, len(vectors), bases, workers, quiet)
        return status

    run_command(body, debug)


def summarize_groups(records: list[dict[str, Any]], searched: str) -> None:
    """duplicates' summary line: the groups, how many are exact or hold byte copies, the files."""
    files = sum(len(record["paths"]) for record in records)
    exact = sum(record["exact"] for record in records)
    copies = sum(bool(record["copies"]) for record in records)
    stderr.print(
        f"{counted(len(records), 'group')} ({exact} exact, {copies} with byte copies) "
        f"of {counted(files, 'file')} {searched}"
    )


def against_body(
    run: AgainstRun, format: ListFormat | None, output: str | None, refused: list[tuple]
) -> int:
    """`duplicates --against`: refused usage first (`refused`: (option, given) of the options
    that work on groups), then cli/against.py's run, then its output."""
    from .against import render_against

    for option, given in refused:
        if given:
            raise UserError(
                f"{option} works on groups; --against lists matches, one a line (run "
                "`duplicates` without --against for groups)"
            )
    fmt = list_format(format, output)
    records, status = find_against(run)
    ensure_parent(output)
    if fmt == "table":
        render_against(records)
    else:
        write_records(records, fmt, output)
    return status


def ray_duplicates(
    vectors: Any, threshold: float, method: str, bases: list[str], saved: Any, quiet: bool
) -> list[Any]:
    """The groups of `duplicates --engine ray`: the pairs found by Ray actors, each a shard of
    the rows (search/sharded.py), grouped here as find_duplicates groups them."""
    from ..extras import require
    from ..search.grouping import NEIGHBOURS, group_duplicates, same_bytes
    from ..search.sharded import sharded_pairs

    require("ray", "ray")
    if len(vectors) < 2:
        return []
    k = min(NEIGHBOURS, len(vectors) - 1)
    pairs = sharded_pairs(vectors.array, threshold, k, index=method, saved=saved, quiet=quiet)
    return group_duplicates(pairs, threshold, same_bytes(vectors.paths, bases))


def require_index(index: IndexChoice) -> None:
    """The missing-extra line for --index approximate, before any work."""
    if index is IndexChoice.approximate:
        from ..extras import require

        require("usearch", "search")


def others_path(output: str | None) -> str | None:
    """Where --keep lists the other files: GROUPS.others.txt beside -o GROUPS.jsonl."""
    import os

    if not output or output == "-":
        return None
    return os.path.splitext(output)[0] + ".others.txt"


def render_groups(records: list[dict[str, Any]]) -> None:
    from ..data.items import display_path
    from ..report.duplicates_page import copy_marks

    table = Table()
    for column, justify in (("group", "right"), ("score", "right"), ("files", "left")):
        table.add_column(column, justify=justify)
    for number, record in enumerate(records, 1):
        marks = {path: f" ({mark})" for path, mark in copy_marks(record).items()}
        paths = [escape(display_path(path)) + marks.get(path, "") for path in record["paths"]]
        if "keep" in record:
            paths = [f"{paths[0]} [green](keep)[/green]", *paths[1:]]
        score = "exact" if record["exact"] else f"{record['score']:.3f}"
        table.add_row(str(number), score, "\n".join(paths), end_section=True)
    stdout.print(table)


# ---------------------------------------------------------------------------- similar


@app.command()
def similar(
    queries: Queries = None,
    vectors_file: VectorsIn = ...,
    top_k: Neighbours = 10,
    output: ListOutput = None,
    format: ListFormatOpt = None,
    index: IndexOpt = IndexChoice.exact,
    files_from: FilesFrom = None,
    max_download_mb: MaxDownload = None,
    model: RecordedModel = None,
    revision: RecordedRevision = None,
    device: DeviceOpt = Device.auto,
    dtype: RecordedDType = None,
    backend: RecordedBackend = None,
    pool: RecordedPool = None,
    batch_size: BatchSize = None,
    workers: Workers = None,
    interpolate_pos_encoding: RecordedInterpolate = None,
    image_size: Annotated[str | None, typer.Option(help="Default: as recorded.")] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """The images in --in most like each query, by cosine similarity, best first."""

    def body() -> int:
        from ..io.outputs import record_of, safe_text
        from ..search.index import nearest
        from ..search.vectors import read_vectors

        fmt = list_format(format, output)
        require_index(index)
        inputs = Inputs(queries, files_from, max_download_mb)
        vectors = read_vectors(vectors_file)  # a bad file fails before the model loads
        asked = Recorded(
            model=model, revision=revision, dtype=dtype, backend=backend, pool=pool,
            interpolate=interpolate_pos_encoding, image_size=image_size,
        )  # fmt: skip
        collected, summary = embed_as_recorded(
            vectors, inputs, asked, device=device, batch_size=batch_size, workers=workers,
            quiet=quiet,
        )  # fmt: skip
        saved = vectors.saved_index() if index.value == "approximate" else None
        found = nearest(vectors.array, collected.vectors().array, top_k, index.value, saved)
        records, row = [], 0
        for result in collected.results:
            if not result.ok:
                records.append(record_of(result.path, None, result.error))
                continue
            matches = [
                {"path": safe_text(vectors.paths[i]), "score": round(float(s), 6)}
                for s, i in zip(found.scores[row], found.indices[row].tolist(), strict=True)
                if i >= 0
            ]
            records.append(record_of(result.path, {"matches": matches}))
            row += 1
        if fmt == "table":
            render_matches(records)
        else:
            write_records(records, fmt, output)
        return 1 if summary.failed else 0

    run_command(body, debug)


def render_matches(records: list[dict[str, Any]]) -> None:
    from ..data.items import display_path

    for record in records:
        title = escape(display_path(record["path"]))
        if "error" in record:
            stdout.print(f"{title}: [red]{escape(record['error'])}[/red]")
            continue
        table = Table(title=title, title_justify="left")
        for column, justify in (("#", "right"), ("path", "left"), ("score", "right")):
            table.add_column(column, justify=justify)
        for rank, match in enumerate(record["matches"], 1):
            table.add_row(str(rank), escape(display_path(match["path"])), f"{match['score']:.3f}")
        stdout.print(table)
