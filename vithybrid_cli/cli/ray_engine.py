"""`classify|embed --engine ray`: the options, and the commands' Ray branch (parse -> call ->
render). The engine is pipeline/engines/ray_engine.py; the model steps are vithybrid_cli/ray.py.

Nothing here imports torch or ray at module import: commands.py imports this for the options.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any

import typer

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


def concrete_dtype(dtype: str, num_gpus: float) -> str:
    """--dtype auto made concrete once, here, so every actor of the cluster computes alike."""
    import torch

    from ..pipeline.runtime import resolve_dtype

    if dtype != "auto":
        return dtype
    if num_gpus and not torch.cuda.is_available():
        return "bfloat16"  # this machine cannot ask the actors' GPUs: every recent one has it
    device = torch.device("cuda" if num_gpus else "cpu")
    return str(resolve_dtype("auto", device)).removeprefix("torch.")


VERBS = {"Classifier": "labeled", "Embedder": "embedded"}


def run_on_ray(
    common: Any, named: tuple, output: str | None, engine: RayOptions, step: str, task: dict
) -> int:
    """Check everything, then run `step` ("Classifier" or "Embedder", built with `task`'s
    options) on Ray over the inputs `named` (common.Inputs' fields) into folder
    `output`; the exit status."""
    from rich.markup import escape

    from ..data.inputs import display_path
    from ..data.sources import require
    from .common import Inputs
    from .walk import note_lines

    inputs = Inputs(*named)  # no inputs, or a missing cloud extra: one line
    if not output or output == "-":
        raise UserError("--engine ray writes a folder of parts: give --output DIR or a bucket URL")
    if common.strict:
        raise UserError("--strict is the local engine's: on Ray a failed input is a row")
    fmt = part_format(engine.format)
    require("ray.data", "ray", "ray[data]")  # before any work: one line, exit 2
    from .. import ray as steps
    from ..data.sources import is_remote
    from ..io.outputs import json_safe
    from ..io.parquet import SETTINGS_KEY
    from ..model.weights import CheckpointError
    from ..pipeline.engines.ray_engine import RayPlan, rows_per_part
    from ..pipeline.engines.ray_engine import run_on_ray as run
    from ..pipeline.lock import Target, holding

    # One run per destination folder, as for the local engine's outputs (a bucket has no lock).
    lock = Target(output, directory=True)
    with contextlib.nullcontext() if is_remote(output) else holding([lock], None):
        step_class = getattr(steps, step)
        options = {
            "model": common.model,
            "revision": common.revision,
            "dtype": concrete_dtype(common.dtype.value, engine.num_gpus),
            "image_size": parse_image_size(common.image_size),
            "interpolate_pos_encoding": common.interpolate,
            "batch_size": common.batch_size,
            "compile": common.compile,
            "backend": common.backend.value,
        }
        if common.backend.value == "openvino" and engine.num_gpus:
            raise UserError("--backend openvino runs on CPU actors: drop --num-gpus")
        try:  # here, on CPU: the settings, and every check the actors would fail, before any work
            probe = step_class(device="cpu", **options, **task)
        except (CheckpointError, ValueError) as error:
            raise UserError(str(error)) from error
        import torch

        from ..pipeline.runner import auto_batch_size

        device = "cuda" if engine.num_gpus else "cpu"
        batch = common.batch_size or auto_batch_size(torch.device(device), probe.runner.input_size)
        shape = getattr(probe, "row_shape", None)
        metadata = {"vithybrid.top_k": str(probe.task.top_k)} if probe.kind == "records" else {}
        if shape:
            metadata["vithybrid.row_shape"] = ",".join(map(str, shape))
        if probe.kind == "embeddings":  # as the local engine's Parquet: `similar` reads it back
            metadata[SETTINGS_KEY.decode()] = json.dumps(json_safe(probe.settings), sort_keys=True)
        plan = RayPlan(
            dest=output, fmt=fmt, kind=probe.kind, settings=probe.settings, resume=engine.resume,
            concurrency=engine.concurrency, num_gpus=engine.num_gpus,
            batch_size=batch,
            rows_per_part=rows_per_part(probe.kind, shape, batch, engine.concurrency),
            metadata=metadata, progress=not common.quiet,
        )  # fmt: skip
        config, size = probe.model.preprocess_config, options["image_size"]
        decoder = steps.Decoder(config=config, image_size=size)
        if step == "Classifier":
            task = {**task, "head": probe.head}  # the loaded head travels: no file on the nodes
        del probe
        options.update(task, device=device)
        outcome = run(inputs(), decoder, step_class, options, plan)
        for path, error in sorted(outcome.errors):
            line = f"{display_path(path)}: {error}"
            stderr.print(f"[red]error:[/red] {escape(line)}", soft_wrap=True)
        for line in note_lines(inputs.notes, quiet=common.quiet):  # what the walk left out
            stderr.print(escape(line), soft_wrap=True)
        summary = outcome.summary
        if not common.quiet:
            counts = f"{summary.succeeded} {VERBS[step]}, {summary.failed} failed"
            stderr.print(f"{counts} in {summary.elapsed:.1f} s", soft_wrap=True)
            where = escape(display_path(output))
            parts = f"{outcome.parts} {fmt} part{'' if outcome.parts == 1 else 's'}"
            stderr.print(f"wrote {parts} to {where}", soft_wrap=True)
        return 1 if summary.failed else 0
