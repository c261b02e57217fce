"""The `vithybrid` command line: thin Typer commands that parse, call the package, and render.

Everything heavy (torch, the model) is imported inside the commands so `vithybrid --help` is
instant. Results go to stdout (or --output); progress, per-file errors and the summary go to
stderr, so pipes stay clean.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .config import DEFAULT_MODEL_ID

app = typer.Typer(
    name="vithybrid",
    help="Run Google's ViT-Hybrid (BiT + ViT-B/16) image classifier: labels, embeddings and "
    "attention maps, for single images or whole folders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stderr = Console(stderr=True, highlight=False)
stdout = Console(highlight=False)
logger = logging.getLogger("vithybrid_cli")


class Format(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class DType(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Pool(str, Enum):
    cls = "cls"
    mean = "mean"
    pooler = "pooler"


class Method(str, Enum):
    rollout = "rollout"
    last_layer = "last-layer"


class Fusion(str, Enum):
    mean = "mean"
    max = "max"
    min = "min"


# ---------------------------------------------------------------------------- shared options

Paths = Annotated[
    list[str] | None,
    typer.Argument(
        help="Image files, directories (searched recursively) or globs.", show_default=False
    ),
]
FilesFrom = Annotated[
    str | None,
    typer.Option("--files-from", help="Read paths from this file, one per line ('-' for stdin)."),
]
ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="Hub id, checkpoint directory or weights file.")
]
Revision = Annotated[str | None, typer.Option(help="Hub revision: branch, tag or commit.")]
DeviceOpt = Annotated[Device, typer.Option(help="auto picks CUDA when present.")]
DTypeOpt = Annotated[
    DType,
    typer.Option(help="auto: bfloat16 where the hardware has native bf16 matmul, else float32."),
]
BatchSize = Annotated[
    int | None, typer.Option(min=1, help="Images per forward pass (default: auto).")
]
Workers = Annotated[int | None, typer.Option(min=1, help="Decode threads (default: one per core).")]
Interpolate = Annotated[
    bool,
    typer.Option(
        "--interpolate-pos-encoding", help="Accept any input size (resample position embeddings)."
    ),
]


def check_image_size(text: str | None) -> str | None:
    """Reject a malformed --image-size while parsing, before the model loads."""
    try:
        parse_image_size(text)
    except UserError as error:
        raise typer.BadParameter(str(error).removeprefix(f"--image-size {text!r}: ")) from None
    return text


ImageSize = Annotated[
    str | None,
    typer.Option(
        "--image-size",
        callback=check_image_size,
        help="Model input WIDTHxHEIGHT or one number for a square "
        "(needs --interpolate-pos-encoding unless it is the checkpoint's size).",
    ),
]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the model (slow start).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")]
Strict = Annotated[bool, typer.Option(help="Stop at the first input that fails.")]
Resume = Annotated[bool, typer.Option(help="Skip inputs already in --output and append the rest.")]
Debug = Annotated[bool, typer.Option(help="Show tracebacks and debug logs.")]
HeadOpt = Annotated[
    str | None,
    typer.Option("--head", help="A head of your own labels, made by `vithybrid fit`."),
]
MinScore = Annotated[
    float | None,
    typer.Option(
        "--min-score",
        min=0.0,
        max=1.0,
        help='Abstain ("label": null) when the best score is below this.',
    ),
]


def version_callback(value: bool) -> None:
    if value:
        stdout.print(f"vithybrid {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Show the version."
        ),
    ] = None,
) -> None:
    """ViT-Hybrid from the command line."""


# ---------------------------------------------------------------------------- helpers


class UserError(Exception):
    """An expected failure: printed as one line, no traceback."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C after drive() printed the summary; outputs keep what was written, for --resume."""


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    parts = text.lower().replace("*", "x").split("x")
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        raise UserError(f"--image-size {text!r}: expected WIDTHxHEIGHT or one number") from None
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise UserError(f"--image-size {text!r}: expected WIDTHxHEIGHT or one number")
    return sizes[0], sizes[1]


def ensure_parent(*paths: str | None) -> None:
    """Create the folders output files go into, as --output-dir creates its folder."""
    for path in paths:
        if path and path != "-":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def load(model: str, revision: str | None, device: Device, dtype: DType, compile_model: bool):
    """Load the checkpoint on the chosen device and dtype, with errors as UserError."""
    from .runtime import prepare_model, resolve_device, resolve_dtype
    from .weights import CheckpointError, load_model

    try:
        torch_device = resolve_device(device.value)
        torch_dtype = resolve_dtype(dtype.value, torch_device)
        loaded = load_model(model, revision, device=torch_device, dtype=torch_dtype)
    except (CheckpointError, ValueError) as error:
        raise UserError(str(error)) from error
    return prepare_model(loaded, compile_model)


def make_runner(model, batch_size, workers, interpolate, image_size, attentions=False):
    from .runner import Runner, RunOptions
    from .runtime import shard_from_env

    options = RunOptions(
        batch_size=batch_size,
        workers=workers,
        image_size=parse_image_size(image_size),
        interpolate_pos_encoding=interpolate,
        output_attentions=attentions,
        shard=shard_from_env(),
    )
    try:
        return Runner(model, options)
    except ValueError as error:
        raise UserError(str(error)) from error


def discover(paths: list[str] | None, files_from: str | None, done: set[str] | None = None):
    """The input stream (and its length when it can be counted without consuming stdin)."""
    from .inputs import InputError, iter_inputs
    from .outputs import safe_text

    if not paths and not files_from:
        raise UserError("no inputs: give image paths, directories or globs, or --files-from")

    def stream() -> Iterator[Any]:
        for item in iter_inputs(paths or [], files_from=files_from):
            if done and not isinstance(item, InputError) and safe_text(item.path) in done:
                continue
            yield item

    total = None if files_from == "-" else sum(1 for _ in stream())
    return stream(), total


def drive(
    results: Iterable[Any],
    total: int | None,
    quiet: bool,
    strict: bool,
    verb: str,
    on_result: Callable[[Any], None],
    counts: Callable[[int, int], tuple[int, ...]] | None = None,
) -> int:
    """Consume results with a progress bar; report failures; return the exit status.

    `counts` turns this process's (succeeded, failed) into the job's (torchrun: summed over
    ranks). Ctrl-C prints the summary so far, marked "(interrupted)", and raises Interrupted.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from .inputs import display_path

    succeeded = failed = 0
    interrupted = False
    started = time.perf_counter()
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    ]
    with Progress(
        *columns, console=stderr, transient=True, disable=quiet or not stderr.is_terminal
    ) as progress:
        task = progress.add_task(verb, total=total, rate="")
        try:
            for result in results:
                on_result(result)
                if result.ok:
                    succeeded += 1
                else:
                    failed += 1
                    stderr.print(
                        f"[red]error:[/red] {display_path(result.path)}: {result.error}",
                        markup=True,
                        soft_wrap=True,
                    )
                    if strict:
                        stderr.print("stopping at the first failure (--strict)")
                        break
                rate = (succeeded + failed) / max(time.perf_counter() - started, 1e-9)
                progress.update(task, advance=1, rate=f"{rate:.1f} img/s")
        except KeyboardInterrupt:
            interrupted = True
    if counts is not None and not interrupted:
        succeeded, failed = counts(succeeded, failed)
    if not quiet:
        elapsed = time.perf_counter() - started
        note = " (interrupted)" if interrupted else ""
        stderr.print(f"{succeeded} {verb}, {failed} failed in {elapsed:.1f} s{note}")
    if interrupted:
        raise Interrupted
    return 1 if failed else 0


def run_command(body: Callable[[], int], debug: bool) -> None:
    """Run a command body, turning expected failures into one line and an exit status."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not debug:  # its retry chatter would bury our one-line errors
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    try:
        status = body()
    except BrokenPipeError:
        # The reader (e.g. `| head`) has gone; that is not an error of ours.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps interpreter exit quiet
        raise typer.Exit(0) from None
    except KeyboardInterrupt as interrupt:
        if not isinstance(interrupt, Interrupted):  # else drive() said so in its summary
            stderr.print("interrupted")
        raise typer.Exit(130) from None
    except (UserError, OSError, ValueError) as error:
        if debug:
            raise
        stderr.print(f"[red]error:[/red] {error}", markup=True, soft_wrap=True)
        raise typer.Exit(2) from None
    raise typer.Exit(status)


def record_of(result: Any) -> dict[str, Any]:
    if not result.ok:
        return {"path": result.path, "error": result.error}
    return {
        "path": result.path,
        "top_k": [
            {"index": index, "label": label, "score": score}
            for index, label, score in result.payload
        ],
    }


# ---------------------------------------------------------------------------- your own labels
# (fit, classify --head, info --head: the logic is in head.py and fitting.py; this renders)


def load_head_file(path: str | None):
    """The head at `path` (None: no head), before the model loads: a bad file fails fast."""
    if path is None:
        return None
    from .head import load_head

    return load_head(path)  # HeadError is a ValueError: one line from run_command


def checked_head_task(head: Any, path: str, model: Any, runner: Any, top_k: int):
    """head_task for this run, after refusing a head fitted on another model, pool or size."""
    from .head import head_task, model_identity

    head.check_compatible(model_identity(model, runner.options), source=path)
    return head_task(head, top_k)


def decided_record(result: Any, min_score: float | None) -> dict[str, Any]:
    """record_of plus top-level "label" (None: abstain under --min-score) and "score"."""
    from .head import decide

    record = record_of(result)
    if result.ok:
        label, score = decide(result.payload, min_score)
        record = {"path": record["path"], "label": label, "score": score, **record}
    return record


def render_fit(report: Any, output: str) -> None:
    """The fit's validation results as Rich tables on stdout."""
    from rich.markup import escape

    labels = [escape(label) for label in report.labels]
    if report.accuracy is None:
        stdout.print(f"no validation split: C={report.c:g}, no accuracy to report")
    else:
        how = "given" if len(report.c_scores) <= 1 else "chosen on the validation split"
        stdout.print(
            f"validation accuracy [bold]{report.accuracy:.3f}[/bold] on {sum(report.val_counts)} "
            f"images (C={report.c:g}, {how})"
        )
    table = Table(title="per class", title_justify="left")
    for column in ("label", "train", "validation", "precision", "recall", "F1"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for i, label in enumerate(labels):
        scores = (
            [f"{values[i]:.3f}" for values in (report.precision, report.recall, report.f1)]
            if report.precision
            else ["-"] * 3
        )
        table.add_row(label, str(report.train_counts[i]), str(report.val_counts[i]), *scores)
    stdout.print(table)
    if report.confusion:
        matrix = Table(title="confusion matrix", title_justify="left")
        matrix.add_column("true \\ predicted")
        for label in labels:
            matrix.add_column(label, justify="right")
        for label, row in zip(labels, report.confusion, strict=True):
            matrix.add_row(label, *(str(count) if count else "[dim]0[/dim]" for count in row))
        stdout.print(matrix)


def render_head_info(path: str, head: Any) -> None:
    from rich.markup import escape

    rows = [
        ("head", path),
        ("labels", f"{head.num_classes}: " + ", ".join(head.labels)),
        ("model", head.model),
        ("revision", head.revision or "-"),
        ("weights", head.weights[:16]),
        ("pool", head.pool),
        ("embedding size", str(head.embedding_size)),
        ("image size", f"{head.image_size[0]}x{head.image_size[1]}"),
        ("interpolate", "yes" if head.interpolate_pos_encoding else "no"),
        ("C", f"{head.c:g}"),
        (
            "validation accuracy",
            "-" if head.validation_accuracy is None else f"{head.validation_accuracy:.3f}",
        ),
        ("examples", ", ".join(f"{k}: {v}" for k, v in head.examples_per_class.items())),
        ("created", head.created or "-"),
    ]
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, escape(value))
    stdout.print(table)


class TableOutput:
    """Collects classify's records and renders them as one table when the run ends cleanly."""

    done = None  # nothing to resume

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def __enter__(self) -> TableOutput:
        return self

    def write(self, index: int, record: dict[str, Any]) -> None:
        self.records.append(record)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            render_table(self.records)


def render_table(records: list[dict[str, Any]]) -> None:
    from rich.markup import escape

    from .inputs import display_path

    if len(records) == 1 and "top_k" in records[0]:
        title = display_path(records[0]["path"])
        if records[0].get("label", "") is None:
            title += f" (abstain: best score {records[0]['score']:.3f} < --min-score)"
        table = Table(title=title, title_justify="left")
        table.add_column("label")
        table.add_column("score", justify="right")
        table.add_column("")
        for entry in records[0]["top_k"]:
            bar = "█" * round(entry["score"] * 30)
            table.add_row(entry["label"], f"{entry['score']:.3f}", f"[cyan]{bar}[/cyan]")
    else:
        table = Table()
        for column, justify in (("path", "left"), ("label", "left"), ("score", "right")):
            table.add_column(column, justify=justify)
        for record in records:
            if "top_k" in record:
                best = record["top_k"][0]
                label = record.get("label", best["label"])
                shown = "[dim]abstain[/dim]" if label is None else escape(label)
                table.add_row(display_path(record["path"]), shown, f"{best['score']:.3f}")
            else:
                table.add_row(display_path(record["path"]), f"[red]{record['error']}[/red]", "")
    stdout.print(table)


# ---------------------------------------------------------------------------- commands


@app.command()
def classify(
    paths: Paths = None,
    files_from: FilesFrom = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Labels per image.")] = 5,
    format: Annotated[
        Format | None,
        typer.Option(
            "--format",
            "-f",
            help="Default: --output's type, else table on a terminal, else jsonl.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Write here, not stdout.")
    ] = None,
    resume: Resume = False,
    head: HeadOpt = None,
    min_score: MinScore = None,
    model: ModelOpt = DEFAULT_MODEL_ID,
    revision: Revision = None,
    device: DeviceOpt = Device.auto,
    dtype: DTypeOpt = DType.auto,
    batch_size: BatchSize = None,
    workers: Workers = None,
    interpolate_pos_encoding: Interpolate = False,
    image_size: ImageSize = None,
    compile: Compile = False,
    quiet: Quiet = False,
    strict: Strict = False,
    debug: Debug = False,
) -> None:
    """Label images: top-k classes with scores (the checkpoint's classes, or a --head's)."""

    def body() -> int:
        from .outputs import format_from_path
        from .runner import classify_task, shard_size
        from .runtime import Distributed
        from .shards import RecordOutput

        fmt = (
            (format.value if format else None)
            or format_from_path(output)
            or ("table" if stdout.is_terminal and not output else "jsonl")
        )
        if fmt == "table" and output:
            raise UserError(
                "--format table prints to the terminal; use json, jsonl or csv with --output"
            )
        ensure_parent(output)
        fitted = load_head_file(head)
        job = Distributed.from_env()
        if job.world > 1 and (not output or output == "-"):
            raise UserError("under torchrun every process writes a part file: give --output")
        with job:
            target = (
                TableOutput()
                if fmt == "table"
                else RecordOutput(
                    fmt,
                    output,
                    resume=resume,
                    top_k=top_k,
                    job=job,
                    decision=head is not None or min_score is not None,
                )
            )
            with target:
                items, total = discover(paths, files_from, target.done)
                loaded = load(model, revision, device, dtype, compile)
                runner = make_runner(
                    loaded, batch_size, workers, interpolate_pos_encoding, image_size
                )
                task = (
                    classify_task(top_k, loaded.config.id2label)
                    if fitted is None
                    else checked_head_task(fitted, head, loaded, runner, top_k)
                )
                decided = fitted is not None or min_score is not None
                return drive(
                    runner.run(items, task),
                    shard_size(total, job.rank, job.world),
                    quiet or not job.is_main,
                    strict,
                    "labeled",
                    lambda r: target.write(
                        r.index, decided_record(r, min_score) if decided else record_of(r)
                    ),
                    counts=job.all_sum,
                )

    run_command(body, debug)


@app.command()
def embed(
    paths: Paths = None,
    output: Annotated[
        str, typer.Option("--output", "-o", help="A .npy (paths in NAME.paths.txt) or .npz file.")
    ] = ...,
    files_from: FilesFrom = None,
    pool: Annotated[
        Pool,
        typer.Option(
            help="cls: CLS token after the final LayerNorm; mean: patch tokens' mean; "
            "pooler: the checkpoint's pooler."
        ),
    ] = Pool.cls,
    tokens: Annotated[
        bool, typer.Option("--tokens", help="Save every token: [N, T, hidden].")
    ] = False,
    normalize: Annotated[
        bool, typer.Option("--normalize", help="L2-normalize each vector.")
    ] = False,
    resume: Resume = False,
    model: ModelOpt = DEFAULT_MODEL_ID,
    revision: Revision = None,
    device: DeviceOpt = Device.auto,
    dtype: DTypeOpt = DType.auto,
    batch_size: BatchSize = None,
    workers: Workers = None,
    interpolate_pos_encoding: Interpolate = False,
    image_size: ImageSize = None,
    compile: Compile = False,
    quiet: Quiet = False,
    strict: Strict = False,
    debug: Debug = False,
) -> None:
    """Export embeddings to .npy/.npz, rows in input order, paths beside them."""

    def body() -> int:
        from .runner import embed_task, shard_size
        from .runtime import Distributed
        from .shards import EmbeddingOutput

        ensure_parent(output)
        with Distributed.from_env() as job, EmbeddingOutput(output, resume=resume, job=job) as out:
            items, total = discover(paths, files_from, out.done)
            loaded = load(model, revision, device, dtype, compile)
            if pool is Pool.pooler and loaded.pooler is None:
                raise UserError(f"{model} has no pooler layer: use --pool cls or --pool mean")
            runner = make_runner(loaded, batch_size, workers, interpolate_pos_encoding, image_size)
            status = drive(
                runner.run(items, embed_task(pool.value, normalize, tokens)),
                shard_size(total, job.rank, job.world),
                quiet or not job.is_main,
                strict,
                "embedded",
                lambda r: r.ok and out.write(r.index, r.path, r.payload),
                counts=job.all_sum,
            )
        if not quiet and job.is_main:
            sidecar = os.path.splitext(output)[0] + ".paths.txt"  # as given, like `output`
            where = f" and {sidecar}" if out.sidecar_path else ""
            stderr.print(f"wrote {out.count} rows to {output}{where}", soft_wrap=True)
        return status

    run_command(body, debug)


class FitFormat(str, Enum):
    table = "table"
    json = "json"


@app.command()
def fit(
    data: Annotated[
        str | None,
        typer.Argument(help="A folder with one subfolder of images per label.", show_default=False),
    ] = None,
    output: Annotated[
        str, typer.Option("--output", "-o", help="The head file to write (.safetensors).")
    ] = ...,
    labels_from: Annotated[
        str | None,
        typer.Option("--labels-from", help="A CSV or JSONL of path,label instead of DATA."),
    ] = None,
    val: Annotated[
        str | None,
        typer.Option("--val", help="A separate validation folder (same layout as DATA)."),
    ] = None,
    val_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Held out for validation, per label.")
    ] = 0.2,
    c: Annotated[
        float | None,
        typer.Option(
            "--c", min=0.0, help="L2 regularization (scikit-learn's C; default: chosen on val)."
        ),
    ] = None,
    cache: Annotated[
        str | None,
        typer.Option("--cache", help="Embedding cache folder (default: OUTPUT.cache beside it)."),
    ] = None,
    format: Annotated[
        FitFormat, typer.Option("--format", "-f", help="How to print the validation results.")
    ] = FitFormat.table,
    pool: Annotated[
        Pool, typer.Option(help="Which embedding the head reads (as embed --pool).")
    ] = Pool.cls,
    seed: Annotated[int, typer.Option(help="Seed of the validation split.")] = 0,
    model: ModelOpt = DEFAULT_MODEL_ID,
    revision: Revision = None,
    device: DeviceOpt = Device.auto,
    dtype: DTypeOpt = DType.auto,
    batch_size: BatchSize = None,
    workers: Workers = None,
    interpolate_pos_encoding: Interpolate = False,
    image_size: ImageSize = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Fit a head of your own labels (logistic regression on embeddings) for classify --head."""

    def body() -> int:
        import json

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        from .fitting import default_cache_dir, fit_head
        from .head import save_head
        from .inputs import display_path

        if data is None and labels_from is None:
            raise UserError("no training data: give DATA (one folder per label) or --labels-from")
        ensure_parent(output)
        loaded = load(model, revision, device, dtype, False)
        columns = [TextColumn("embedding"), BarColumn(), MofNCompleteColumn()]
        shown = not quiet and stderr.is_terminal
        with Progress(*columns, console=stderr, transient=True, disable=not shown) as progress:
            bar = progress.add_task("embedding", total=None)
            report = fit_head(
                loaded,
                data,
                labels_from=labels_from,
                val=val,
                val_fraction=val_fraction,
                c=c,
                pool=pool.value,
                image_size=parse_image_size(image_size),
                interpolate_pos_encoding=interpolate_pos_encoding,
                cache_dir=cache or default_cache_dir(output),
                seed=seed,
                batch_size=batch_size,
                workers=workers,
                progress=lambda done, total: progress.update(bar, completed=done, total=total),
            )
        save_head(report.head, output)
        for path, message in report.errors:
            stderr.print(f"[red]error:[/red] {display_path(path)}: {message}", soft_wrap=True)
        for warning in report.warnings:
            stderr.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
        if format is FitFormat.json:
            stdout.print_json(json.dumps({"head": output, **report.to_dict()}))
        else:
            render_fit(report, output)
        if not quiet:
            left_out = f", {len(report.errors)} left out" if report.errors else ""
            train, validation = sum(report.train_counts), sum(report.val_counts)
            stderr.print(
                f"{len(report.labels)} labels, {train} training + {validation} validation images "
                f"({report.embedded} embedded, {report.cached} from the cache{left_out}) in "
                f"{report.seconds:.1f} s; wrote {output}",
                soft_wrap=True,
            )
        return 0

    run_command(body, debug)


@app.command("attention-map")
def attention_map(
    paths: Paths = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="PNG for one image.")] = None,
    output_dir: Annotated[
        str | None,
        typer.Option("--output-dir", "-d", help="Folder for many images (NAME.png each)."),
    ] = None,
    files_from: FilesFrom = None,
    method: Annotated[
        Method, typer.Option(help="Attention rollout or the last layer's CLS attention.")
    ] = Method.rollout,
    head_fusion: Annotated[Fusion, typer.Option(help="How rollout combines heads.")] = Fusion.mean,
    discard_ratio: Annotated[
        float,
        typer.Option(
            min=0.0, max=0.99, help="Rollout: drop this fraction of the weakest attention."
        ),
    ] = 0.0,
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Heatmap opacity.")] = 0.5,
    raw: Annotated[
        str | None, typer.Option(help="Also save the raw grid(s) to this .npy/.npz.")
    ] = None,
    model: ModelOpt = DEFAULT_MODEL_ID,
    revision: Revision = None,
    device: DeviceOpt = Device.auto,
    dtype: DTypeOpt = DType.auto,
    batch_size: BatchSize = None,
    workers: Workers = None,
    interpolate_pos_encoding: Interpolate = False,
    image_size: ImageSize = None,
    quiet: Quiet = False,
    strict: Strict = False,
    debug: Debug = False,
) -> None:
    """Draw where the model looks: an attention heatmap over each image."""

    def body() -> int:
        from contextlib import nullcontext

        from .attention import attention_task
        from .runner import shard_size
        from .runtime import Distributed
        from .shards import EmbeddingOutput

        if bool(output) == bool(output_dir):
            raise UserError("give --output FILE.png (one image) or --output-dir DIR (any number)")
        ensure_parent(output, raw)
        items, total = discover(paths, files_from)
        if output and total is not None and total > 1:
            raise UserError(f"{total} inputs: use --output-dir for more than one image")
        job = Distributed.from_env()
        # Under torchrun a rank cannot see the others' names: every file gets its input's index.
        names: set[str] | None = set() if job.world == 1 else None
        with job, EmbeddingOutput(raw, job=job) if raw else nullcontext() as raw_out:
            loaded = load(model, revision, device, dtype, False)
            runner = make_runner(
                loaded, batch_size, workers, interpolate_pos_encoding, image_size, attentions=True
            )
            task = attention_task(method.value, head_fusion.value, discard_ratio)

            def save(result: Any) -> None:
                if not result.ok:
                    return
                target = Path(output) if output else unique_png(Path(output_dir), result, names)
                try:
                    save_overlay(result, target, runner.input_size, alpha)
                except Exception as error:  # an unreadable original only loses this picture
                    result.error = str(error)
                    return
                if raw_out:
                    raw_out.write(result.index, result.path, result.payload)

            return drive(
                runner.run(items, task),
                shard_size(total, job.rank, job.world),
                quiet or not job.is_main,
                strict,
                "mapped",
                save,
                counts=job.all_sum,
            )

    run_command(body, debug)


def unique_png(directory: Path, result: Any, names: set[str] | None) -> Path:
    """DIR/STEM.png, or DIR/STEM_INDEX.png for a repeated stem (always, when `names` is None)."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = Path(result.path).stem or "image"
    name = stem if names is not None and stem not in names else f"{stem}_{result.index}"
    if names is not None:
        names.add(name)
    return directory / f"{name}.png"


def save_overlay(result: Any, target: Path, input_size: tuple[int, int], alpha: float) -> None:
    from .attention import crop_box, overlay
    from .outputs import atomic_write
    from .preprocess import load_image

    image = load_image(result.path)
    picture = overlay(image, result.payload, alpha, box=crop_box(image.size, input_size))
    with atomic_write(target, "wb") as handle:
        picture.save(handle, format="PNG")


@app.command()
def info(
    head: Annotated[
        str | None, typer.Option("--head", help="Show this head file's metadata instead.")
    ] = None,
    model: ModelOpt = DEFAULT_MODEL_ID,
    revision: Revision = None,
    device: DeviceOpt = Device.auto,
    dtype: DTypeOpt = DType.auto,
    debug: Debug = False,
) -> None:
    """Show the resolved model: where it is, its configuration, size, device and dtype."""

    def body() -> int:
        from huggingface_hub import constants

        if head is not None:
            render_head_info(head, load_head_file(head))
            return 0
        loaded = load(model, revision, device, dtype, False)
        config, checkpoint = loaded.config, loaded.checkpoint
        parameter = next(loaded.parameters())
        backbone = config.backbone_config
        rows = [
            ("model", checkpoint.name),
            ("revision", checkpoint.revision or ("main" if checkpoint.from_hub else "-")),
            ("local path", str(checkpoint.directory or checkpoint.weight_files[0])),
            ("weights", ", ".join(path.name for path in checkpoint.weight_files)),
            (
                "backbone",
                f"BiT depths {list(backbone.depths[: backbone.num_stages])}, "
                f"stride {config.stride}, {loaded.backbone.out_channels} channels",
            ),
            (
                "encoder",
                f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, "
                f"{config.num_attention_heads} heads, MLP {config.intermediate_size}",
            ),
            (
                "input",
                f"{config.image_size}x{config.image_size}, "
                f"{config.grid_size[0]}x{config.grid_size[1]} tokens + CLS",
            ),
            ("labels", str(loaded.num_labels)),
            ("pooler", "yes" if loaded.pooler is not None else "no"),
            ("parameters", f"{sum(p.numel() for p in loaded.parameters()):,}"),
            ("device", str(parameter.device)),
            ("dtype", str(parameter.dtype).removeprefix("torch.")),
            ("cache", str(constants.HF_HUB_CACHE)),
        ]
        table = Table(show_header=False, box=None)
        table.add_column(style="bold")
        table.add_column()
        for key, value in rows:
            table.add_row(key, value)
        stdout.print(table)
        return 0

    run_command(body, debug)


def main() -> None:
    try:
        app()
    except SystemExit as done:
        if "torch" in sys.modules and isinstance(done.code, int | None):
            exit_now(done.code or 0)
        raise


def exit_now(status: int) -> None:
    """End the process without the interpreter's teardown, once every output is closed.

    With torch loaded, a normal exit spends ~0.45 s finalizing torch's modules (measured on
    2 cores: 0.44 s after a bare `import torch`, 0.02 s with os._exit), a fifth of a one-image
    run's wall time. The commands have closed (and atomically renamed) their files by now, so
    only the standard streams and logging need flushing.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        # a closed pipe or stream: nothing left to deliver
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)
