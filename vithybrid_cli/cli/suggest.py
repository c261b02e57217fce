"""`vithybrid suggest`: which photos of a pool to label next for a head (the selection is
search/suggest.py's). The pool is embedded by the same run_job as `embed`, with the head's
pooling, or read from an `embed` vectors file made with the head's settings."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

from .app import app
from .common import Common, Inputs, embed_images, ensure_parent, run_command
from .options import (
    BatchSize,
    Debug,
    Device,
    DeviceOpt,
    DType,
    DTypeOpt,
    FilesFrom,
    MaxDownload,
    Quiet,
    UserError,
    Workers,
)
from .render import counted, stderr

Pool = Annotated[
    list[str] | None,
    typer.Argument(
        help="The photos to choose from (files, folders, globs, URLs...) or one vectors file "
        "written by `embed` with the head's --pool (.npy, .npz, .parquet).",
        metavar="POOL",
        show_default=False,
    ),
]
HeadFile = Annotated[
    str, typer.Option("--head", help="The head to improve, made by `vithybrid fit`.")
]
Count = Annotated[int, typer.Option("-n", "--count", help="How many photos to suggest.")]
NextOutput = Annotated[
    str | None,
    typer.Option("--output", "-o", help="The picks as JSON Lines (default: stdout)."),
]
NearCopy = Annotated[
    float,
    typer.Option(
        "--near-copy",
        min=-1.0,
        max=1.0,
        help="Cosine similarity from which two photos are near copies (as duplicates' "
        "--threshold): never both picked.",
    ),
]
PicksPage = Annotated[
    str | None,
    typer.Option(
        help="Also write the picks as a page of thumbnails (PAGE.html; thumbnails in PAGE_files/).",
        metavar="PAGE",
    ),
]
HeadModel = Annotated[
    str | None, typer.Option("--model", "-m", help="Default: the model the head was fitted on.")
]
HeadRevision = Annotated[str | None, typer.Option(help="Default: the head's.")]


@app.command()
def suggest(
    pool: Pool = None,
    head: HeadFile = ...,
    count: Count = 20,
    output: NextOutput = None,
    report: PicksPage = None,
    near_copy: NearCopy = 0.9,
    files_from: FilesFrom = None,
    max_download_mb: MaxDownload = None,
    model: HeadModel = None,
    revision: HeadRevision = None,
    device: DeviceOpt = Device.auto,
    dtype: DTypeOpt = DType.auto,
    batch_size: BatchSize = None,
    workers: Workers = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """What to label next: the photos the head is least sure of, no two alike, most useful first."""

    def body() -> int:
        from ..io.outputs import format_from_path, safe_text
        from ..model.head import load_head
        from ..search.suggest import suggest_for_head, why
        from ..search.vectors import is_vectors_file, read_vectors
        from .pages import page_path

        if count < 1:
            raise UserError(f"-n {count}: suggest at least one photo")
        page_path(report, "--report")
        if output and output != "-" and format_from_path(output) != "jsonl":
            raise UserError(f"--output {output!r}: the picks are JSON Lines (a .jsonl file)")
        fitted = load_head(head)  # before the model: a bad head file fails fast (one line)
        specs = pool or []
        common = Common(
            model=model or fitted.model,
            revision=revision if revision is not None or model else fitted.revision,
            device=device, dtype=dtype, batch_size=batch_size, workers=workers,
            interpolate=fitted.interpolate_pos_encoding,
            image_size="x".join(str(side) for side in fitted.image_size), quiet=quiet,
        )  # fmt: skip
        status, bases = 0, []
        if specs and all(is_vectors_file(spec) for spec in specs):
            if len(specs) > 1 or files_from:
                raise UserError("give one vectors file (or photos), not several")
            vectors = read_vectors(specs[0])  # a bad file fails before the model loads
            check_vectors(vectors, fitted, common, head, model_given=model is not None)
            bases = [os.path.dirname(os.path.normpath(specs[0])) or "."]
        else:
            inputs = Inputs(pool, files_from, max_download_mb)
            vectors, summary = embed_for_head(common, inputs, fitted, head)
            status = 1 if summary.failed else 0
        ensure_parent(output, report)
        if len(vectors) == 0:
            raise UserError("no photo of the pool could be embedded: nothing to suggest")
        picks = suggest_for_head(fitted, vectors.array, count, near_copy=near_copy)
        records = [
            {
                "path": safe_text(vectors.paths[p.row]),
                "score": round(p.score, 6),
                "label": fitted.labels[p.best],
                "why": why(p, fitted.labels),
            }
            for p in picks
        ]
        write_jsonl(records, output)
        if not quiet:
            fewer = len(picks) < min(count, len(vectors))
            near = f" (the rest are near copies at {near_copy:g})" if fewer else ""
            to = f" to {output}" if output and output != "-" else ""
            stderr.print(
                f"suggested {counted(len(picks), 'photo')} of {len(vectors):,}{near}{to}",
                soft_wrap=True,
            )
        if report:
            from .pages import write_suggest_report

            write_suggest_report(records, report, len(vectors), bases, workers, quiet)
        return status

    run_command(body, debug)


def embed_for_head(common: Common, inputs: Inputs, head: Any, source: str) -> tuple[Any, Any]:
    """The pool's pooled embeddings as the head reads them, after checking the model makes
    them (HeadError, one line, naming the head file)."""
    from ..model.identity import model_identity
    from ..pipeline.tasks import embed_task

    def check(loaded: Any, runner: Any) -> None:
        head.check_compatible(model_identity(loaded, runner.options), source=source)

    return embed_images(common, inputs, embed_task(head.pool), "embedded", check)


def check_vectors(
    vectors: Any, head: Any, common: Common, source: str, model_given: bool = False
) -> None:
    """VectorsError (one line) unless `vectors` were made as the head reads embeddings: the
    head's pool, unnormalized, at its image size, by the weights it was fitted on."""
    from ..io.outputs import safe_text
    from ..model.identity import model_identity
    from ..pipeline.job import job_settings
    from ..pipeline.tasks import embed_task
    from ..search.vectors import VectorsError, check_settings

    name = safe_text(vectors.source)
    recorded = vectors.settings
    if recorded is None:
        raise VectorsError(f"{name} records no settings to check against {source}: embed again")
    if vectors.width != head.embedding_size:
        raise VectorsError(
            f"{name}: vectors of width {vectors.width}, but {source} reads "
            f"{head.embedding_size}-d embeddings"
        )
    wanted = {"pool": head.pool, "normalize": False, "image-size": list(head.image_size)}
    for key, value in wanted.items():
        if key in recorded and recorded[key] != value:
            raise VectorsError(
                f"{name} was written with {key} {recorded[key]!r}, but {source} reads "
                f"{key} {value!r}: embed with the head's settings"
            )
    # the weights: the file records the weights files' hash, the head the loaded values';
    # the model the file was written by (or --model) tells both: its files, and its values
    if not model_given and recorded.get("model"):
        common.model, common.revision = recorded["model"], recorded.get("revision")
    loaded = common.load()
    runner = common.runner(loaded)
    check_settings(vectors, {**recorded, **subset(job_settings(runner, embed_task(head.pool)))})
    head.check_compatible(model_identity(loaded, runner.options), source=source)


def subset(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that say which weights made the vectors (the rest was checked above)."""
    return {key: settings[key] for key in ("model", "revision", "weights") if key in settings}


def write_jsonl(records: list[dict[str, Any]], output: str | None) -> None:
    from ..io.outputs import open_writer

    to_file = bool(output) and output != "-"
    writer = open_writer("records", "jsonl", output if to_file else sys.stdout)
    try:
        for record in records:
            writer.write(record)
    except BaseException:
        writer.abort()
        raise
    writer.close()
