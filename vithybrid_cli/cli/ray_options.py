"""`classify|embed --engine ray`: the options, and the commands' Ray branch (check the options
-> the engine plans and runs -> render). The engine, its planning included, is
pipeline/engines/ray_engine.py; the model steps are vithybrid_cli/ray.py.

Nothing here imports torch or ray at module import: commands.py imports this for the options.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any

import typer

from .common import Common, Inputs, run_command
from .options import UserError, parse_image_size
from .render import stderr


class Engine(str, Enum):
    local = "local"
    ray = "ray"


class PartFormat(str, Enum):
    parquet = "parquet"
    jsonl = "jsonl"


EngineOpt = Annotated[
    Engine,
    typer.Option(
        "--engine",
        help="local: this process (or torchrun); ray: a Ray cluster (RAY_ADDRESS, else a local "
        "Ray for the run), -o then names a folder or bucket URL of parts.",
    ),
]
Concurrency = Annotated[
    int, typer.Option("--concurrency", min=1, help="--engine ray: model actors.")
]
NumGpus = Annotated[
    float,
    typer.Option("--num-gpus", min=0.0, help="--engine ray: GPUs per model actor (0: CPU actors)."),
]
EmbedFormat = Annotated[
    PartFormat | None,
    typer.Option(
        "--format", "-f", help="--engine ray: parquet (default) or jsonl parts.", show_default=False
    ),
]


@dataclass
class RayOptions:
    concurrency: int = 1  # model actors
    num_gpus: float = 0.0  # per actor
    format: str | None = None  # of the parts; None: parquet
    resume: bool = False


def part_format(fmt: str | None) -> str:
    fmt = fmt or PartFormat.parquet.value
    if fmt not in {part.value for part in PartFormat}:
        raise UserError(f"--engine ray writes parquet or jsonl parts, not {fmt}")
    return fmt


VERBS = {"records": "labeled", "embeddings": "embedded"}  # the step's kind -> the summary's verb


def model_step(kind: str) -> type:
    """The step of vithybrid_cli/ray.py that writes `kind` rows (imports torch: once Ray is in)."""
    from .. import ray as steps

    return steps.Classifier if kind == "records" else steps.Embedder


def ray_branch(
    kind: str,
    common: Common,
    named: dict[str, Any],
    output: str | None,
    engine: RayOptions,
    task: dict[str, Any],
    debug: bool,
) -> None:
    """classify's and embed's --engine ray (`kind`: "records" or "embeddings"): the step of that
    kind, built with `task`'s options, over the inputs `named` (Inputs' fields, from `paths` to
    `follow_links`) into folder `output`; one-line errors and the exit status as every command's
    (run_command)."""
    run_command(lambda: ray_run(kind, common, named, output, engine, task), debug)


def refuse_file_name(output: str) -> None:
    """-o labels.csv names one file, but the Ray engine writes a folder of parts: refused, unless
    such a folder is already there (a run to resume)."""
    import os

    from ..io.outputs import format_from_path

    fmt = format_from_path(output.rstrip("/"))
    if fmt is None or output.endswith("/") or os.path.isdir(output):
        return
    stem = os.path.splitext(output.rstrip("/"))[0] or "out"
    raise UserError(
        f"--engine ray writes a folder of parts, not one {fmt} file: give -o {stem}/ "
        f"(a folder or bucket URL; -f picks parquet or jsonl parts)"
    )


def ray_run(
    kind: str,
    common: Common,
    named: dict[str, Any],
    output: str | None,
    engine: RayOptions,
    task: dict[str, Any],
) -> int:
    """Check the options, have the engine plan and run, render the outcome; the exit status."""
    from rich.markup import escape

    from ..data.items import display_path
    from ..extras import require
    from .walk import note_lines, own_outputs

    inputs = Inputs(**named, exclude=own_outputs(output))  # no inputs, a missing extra: one line
    if not output or output == "-":
        raise UserError("--engine ray writes a folder of parts: give --output DIR or a bucket URL")
    refuse_file_name(output)
    if common.strict:
        raise UserError("--strict is the local engine's: on Ray a failed input is a row")
    fmt = part_format(engine.format)
    require("ray.data", "ray", "ray[data]")  # before any work: one line, exit 2
    from .. import ray as steps
    from ..data.sources import is_remote
    from ..model.weights import CheckpointError
    from ..pipeline.engines.ray_engine import RayPlan, plan_ray_run, run_ray
    from ..pipeline.lock import Target, holding

    # One run per destination folder, as for the local engine's outputs (a bucket has no lock).
    lock = Target(output, directory=True)
    with contextlib.nullcontext() if is_remote(output) else holding([lock], None):
        options = {
            "model": common.model,
            "revision": common.revision,
            "dtype": common.dtype.value,
            "image_size": parse_image_size(common.image_size),
            "interpolate_pos_encoding": common.interpolate,
            "batch_size": common.batch_size,
            "compile": common.compile,
            "backend": common.backend.value,
        }
        if common.backend.value == "openvino" and engine.num_gpus:
            raise UserError("--backend openvino runs on CPU actors: drop --num-gpus")
        where = RayPlan(
            dest=output, fmt=fmt, resume=engine.resume, concurrency=engine.concurrency,
            num_gpus=engine.num_gpus, progress=not common.quiet,
        )  # fmt: skip
        try:  # here, on CPU: the settings, and every check the actors would fail, before any work
            run = plan_ray_run(model_step(kind), steps.Decoder, options, task, where)
        except (CheckpointError, ValueError) as error:
            raise UserError(str(error)) from error
        outcome = run_ray(inputs(), run)
        for path, error in sorted(outcome.errors):
            line = f"{display_path(path)}: {error}"
            stderr.print(f"[red]error:[/red] {escape(line)}", soft_wrap=True)
        for line in note_lines(inputs.notes, quiet=common.quiet):  # what the walk left out
            stderr.print(escape(line), soft_wrap=True)
        summary = outcome.summary
        if not common.quiet:
            counts = f"{summary.succeeded} {VERBS[kind]}, {summary.failed} failed"
            stderr.print(f"{counts} in {summary.elapsed:.1f} s", soft_wrap=True)
            folder = escape(display_path(output))
            parts = f"{outcome.parts} {fmt} part{'' if outcome.parts == 1 else 's'}"
            stderr.print(f"wrote {parts} to {folder}", soft_wrap=True)
        return 1 if summary.failed else 0
