"""The `vithybrid` command line: thin Typer commands that parse, call the package, and render.

Every command does the same: check its options, load the model, build a Runner, a task and an
output, call `job.run_job` (through Common.run), render the summary.

Everything heavy (torch, the model) is imported inside the commands so `vithybrid --help` is
instant. The app is app.py's; the option declarations live in options.py (--engine ray's, and
classify's and embed's one Ray branch, in ray_options.py), the pages beside a run in pages.py,
and the tables and progress bar in render.py: results go to stdout (or --output); progress,
per-file errors and the summary go to stderr, so pipes stay clean.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..model.config import DEFAULT_MODEL_ID
from .app import app
from .common import (
    Common,
    Inputs,
    ensure_parent,
    file_output,
    holding_outputs,
    needs_file,
    output_format,
    record_format,
    run_command,
    status_of,
)
from .options import (
    Alpha,
    ArrayOutput,
    Backend,
    BackendOpt,
    BatchSize,
    CacheDir,
    Compile,
    CorrectionsFile,
    Debug,
    Device,
    DeviceOpt,
    DiscardRatio,
    DType,
    DTypeOpt,
    FilesFrom,
    FitData,
    FitFormat,
    FitFormatOpt,
    FollowLinks,
    Fusion,
    HeadFusion,
    HeadOpt,
    HeadOutput,
    HeadPool,
    ImageSize,
    InfoHead,
    Interpolate,
    IssuesFile,
    LabelsFrom,
    MaxDownload,
    Method,
    MethodOpt,
    MinScore,
    ModelOpt,
    Normalize,
    OutputDir,
    Paths,
    PngOutput,
    Pool,
    PoolOpt,
    Quiet,
    Raw,
    RecordFormat,
    RecordOutput,
    Regularization,
    Resume,
    Revision,
    Seed,
    Strict,
    Tokens,
    TopK,
    UserError,
    ValDir,
    ValFraction,
    Workers,
    parse_image_size,
)
from .pages import IndexNotes, page_path, write_attention_index, write_fit_report
from .ray_options import (
    Concurrency,
    EmbedFormat,
    Engine,
    EngineOpt,
    NumGpus,
    RayOptions,
    ray_branch,
)
from .render import (
    ProgressBar,
    backend_rows,
    describe,
    head_rows,
    render_rows,
    render_table,
    report_fit,
    stderr,
    stdout,
)

# ---------------------------------------------------------------------------- commands


@app.command()
def classify(
    paths: Paths = None,
    files_from: FilesFrom = None,
    max_download_mb: MaxDownload = None,
    top_k: TopK = 5,
    format: RecordFormat = None,
    output: RecordOutput = None,
    resume: Resume = False,
    head: HeadOpt = None,
    min_score: MinScore = None,
    model: ModelOpt = DEFAULT_MODEL_ID,
    revision: Revision = None,
    device: DeviceOpt = Device.auto,
    dtype: DTypeOpt = DType.auto,
    backend: BackendOpt = Backend.torch,
    batch_size: BatchSize = None,
    workers: Workers = None,
    interpolate_pos_encoding: Interpolate = False,
    image_size: ImageSize = None,
    compile: Compile = False,
    quiet: Quiet = False,
    strict: Strict = False,
    follow_links: FollowLinks = False,
    engine: EngineOpt = Engine.local,
    concurrency: Concurrency = 1,
    num_gpus: NumGpus = 0.0,
    debug: Debug = False,
) -> None:
    """Label images: top-k classes with scores (the checkpoint's classes, or a --head's)."""
    common = Common(
        model=model, revision=revision, device=device, dtype=dtype, backend=backend,
        batch_size=batch_size, workers=workers, interpolate=interpolate_pos_encoding,
        image_size=image_size, compile=compile, quiet=quiet, strict=strict,
    )  # fmt: skip
    if engine is Engine.ray:  # cli/ray_options.py: classify's and embed's one Ray branch
        named = {"paths": paths, "files_from": files_from, "max_download_mb": max_download_mb,
                 "follow_links": follow_links}  # fmt: skip
        ray = RayOptions(concurrency=concurrency, num_gpus=num_gpus, resume=resume,
                         format=format.value if format else None)  # fmt: skip
        task = {"top_k": top_k, "head": head, "min_score": min_score}
        return ray_branch("records", common, named, output, ray, task, debug)

    def body() -> int:
        from ..pipeline.job import CollectOutput, StreamOutput
        from ..pipeline.runtime import Distributed
        from ..pipeline.tasks import labeling_task
        from .walk import own_outputs

        fmt = record_format(format, output)
        inputs = Inputs(paths, files_from, max_download_mb, follow_links, own_outputs(output),
                        strict)  # fmt: skip
        fitted = load_head_file(head)  # before the model: a bad head file fails fast
        ensure_parent(output)
        job = Distributed.from_env()
        needs_file(output, job)
        with job, holding_outputs(job, output):
            loaded = common.load()
            runner = common.runner(loaded)
            task = labeling_task(loaded, runner.options, top_k, fitted, min_score, head or "head")
            classes = fitted.num_classes if fitted is not None else loaded.num_labels
            decision = fitted is not None or min_score is not None
            columns = {"top_k": min(top_k, classes), "decision": decision}  # CSV columns
            if fmt == "table":
                target: Any = CollectOutput()
            elif output and output != "-":
                target = file_output(output, "records", runner, task, job, fmt=fmt,
                                     resume=resume, **columns)  # fmt: skip
            else:
                target = StreamOutput(fmt, sys.stdout, **columns)
            summary = common.run("labeled", inputs, runner, task, target, job)
        if fmt == "table":
            render_table(target.results)
        return status_of(summary)

    run_command(body, debug)


@app.command()
def embed(
    paths: Paths = None,
    output: ArrayOutput = ...,
    files_from: FilesFrom = None,
    max_download_mb: MaxDownload = None,
    pool: PoolOpt = Pool.cls,
    tokens: Tokens = False,
    normalize: Normalize = False,
    resume: Resume = False,
    model: ModelOpt = DEFAULT_MODEL_ID,
    revision: Revision = None,
    device: DeviceOpt = Device.auto,
    dtype: DTypeOpt = DType.auto,
    backend: BackendOpt = Backend.torch,
    batch_size: BatchSize = None,
    workers: Workers = None,
    interpolate_pos_encoding: Interpolate = False,
    image_size: ImageSize = None,
    compile: Compile = False,
    quiet: Quiet = False,
    strict: Strict = False,
    follow_links: FollowLinks = False,
    engine: EngineOpt = Engine.local,
    concurrency: Concurrency = 1,
    num_gpus: NumGpus = 0.0,
    format: EmbedFormat = None,
    debug: Debug = False,
) -> None:
    """Export embeddings to .npy/.npz/.parquet, rows in input order, paths beside them."""
    common = Common(
        model=model, revision=revision, device=device, dtype=dtype, backend=backend,
        batch_size=batch_size, workers=workers, interpolate=interpolate_pos_encoding,
        image_size=image_size, compile=compile, quiet=quiet, strict=strict,
    )  # fmt: skip
    if engine is Engine.ray:  # cli/ray_options.py: classify's and embed's one Ray branch
        named = {"paths": paths, "files_from": files_from, "max_download_mb": max_download_mb,
                 "follow_links": follow_links}  # fmt: skip
        ray = RayOptions(concurrency=concurrency, num_gpus=num_gpus, resume=resume,
                         format=format.value if format else None)  # fmt: skip
        task = {"pool": pool.value, "normalize": normalize, "tokens": tokens}
        return ray_branch("embeddings", common, named, output, ray, task, debug)

    def body() -> int:
        from ..io.outputs import format_from_path, sidecar_path
        from ..pipeline.runtime import Distributed
        from ..pipeline.tasks import check_pool, embed_task
        from .walk import own_outputs

        if format is not None:
            raise UserError("--format is for --engine ray: the --output suffix picks the format")
        written = own_outputs(output, sidecar_path(output))
        inputs = Inputs(paths, files_from, max_download_mb, follow_links, written, strict)
        task = embed_task(pool.value, normalize, tokens)
        output_format(output, "embeddings")  # an unknown suffix or a missing extra: now
        ensure_parent(output)
        with Distributed.from_env() as job, holding_outputs(job, output):
            loaded = common.load()
            check_pool(loaded, pool.value)  # a ValueError: one line, exit 2
            runner = common.runner(loaded)
            target = file_output(output, "embeddings", runner, task, job, resume=resume)
            summary = common.run("embedded", inputs, runner, task, target, job)
        if not quiet and job.rank == 0:
            npy = format_from_path(output) == "npy"
            where = f" and {sidecar_path(output)}" if npy else ""
            stderr.print(f"wrote {target.count} rows to {output}{where}", soft_wrap=True)
        return status_of(summary)

    run_command(body, debug)


@app.command("attention-map")
def attention_map(
    paths: Paths = None,
    output: PngOutput = None,
    output_dir: OutputDir = None,
    files_from: FilesFrom = None,
    max_download_mb: MaxDownload = None,
    method: MethodOpt = Method.rollout,
    head_fusion: HeadFusion = Fusion.mean,
    discard_ratio: DiscardRatio = 0.0,
    alpha: Alpha = 0.5,
    raw: Raw = None,
    index: Annotated[
        bool, typer.Option("--index", help="Also write DIR/index.html, a page of the overlays.")
    ] = False,
    model: ModelOpt = DEFAULT_MODEL_ID,
    revision: Revision = None,
    device: DeviceOpt = Device.auto,
    dtype: DTypeOpt = DType.auto,
    backend: BackendOpt = Backend.torch,
    batch_size: BatchSize = None,
    workers: Workers = None,
    interpolate_pos_encoding: Interpolate = False,
    image_size: ImageSize = None,
    quiet: Quiet = False,
    strict: Strict = False,
    follow_links: FollowLinks = False,
    debug: Debug = False,
) -> None:
    """Draw where the model looks: an attention heatmap over each image."""
    common = Common(
        model=model, revision=revision, device=device, dtype=dtype, backend=backend,
        batch_size=batch_size, workers=workers, interpolate=interpolate_pos_encoding,
        image_size=image_size, quiet=quiet, strict=strict,
    )  # fmt: skip

    def body() -> int:
        from ..pipeline.job import NoOutput
        from ..pipeline.runtime import Distributed
        from ..pipeline.tasks import attention_task
        from ..report.attention import save_overlay
        from .walk import own_outputs

        written = own_outputs(output, output_dir, raw)
        inputs = Inputs(paths, files_from, max_download_mb, follow_links, written, strict)
        inputs = one_or_many(inputs, output, output_dir)
        if index and not output_dir:
            raise UserError("--index writes DIR/index.html: give --output-dir DIR")
        task = attention_task(method.value, head_fusion.value, discard_ratio)
        if raw:
            output_format(raw, "embeddings")
        ensure_parent(output, raw)
        with Distributed.from_env() as job, holding_outputs(job, output, raw, directory=output_dir):
            runner = common.runner(common.load(), attentions=True)
            target = file_output(raw, "embeddings", runner, task, job, keep=False) if raw else None
            # Under torchrun a rank cannot see the others' names: every file gets its index.
            names: set[str] | None = set() if job.world == 1 else None
            saved: list[int] = []
            pictures = IndexNotes(target or NoOutput())

            def save(result: Any) -> None:
                if output and saved:
                    raise ValueError(ONE_IMAGE)
                saved.append(result.index)
                png = Path(output) if output else unique_png(Path(output_dir), result, names)
                save_overlay(result.image, result.payload, result.crop_box, png, alpha)
                pictures.saved[result.index] = str(png)

            summary = common.run("mapped", inputs, runner, task, pictures, job, save)
        if index and job.rank == 0:
            write_attention_index(pictures, output_dir, workers, quiet)
        return status_of(summary)

    run_command(body, debug)


def one_or_many(inputs: Inputs, output: str | None, output_dir: str | None) -> Inputs:
    """--output takes one image, --output-dir any number; exactly one of them is needed."""
    from ..data.sources import is_remote, is_tar_name

    if bool(output) == bool(output_dir):
        raise UserError("give --output FILE.png (one image) or --output-dir DIR (any number)")
    # The first two inputs are enough to know; but an archive on a server would be downloaded
    # twice to count its members: there, a second image fails alone when its result comes.
    remote_archive = any(is_remote(spec) and is_tar_name(spec) for spec in inputs.paths or [])
    peek = output and inputs.files_from != "-" and not remote_archive
    if peek and len(list(itertools.islice(inputs(), 2))) > 1:
        raise UserError(ONE_IMAGE)
    return inputs


ONE_IMAGE = "more than one input: use --output-dir for more than one image"


def unique_png(directory: Path, result: Any, names: set[str] | None) -> Path:
    """DIR/STEM.png, or DIR/STEM_INDEX.png for a repeated stem (always, when `names` is None)."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = "stdin" if result.path == "-" else Path(result.path.split("?", 1)[0]).stem or "image"
    name = stem if names is not None and stem not in names else f"{stem}_{result.index}"
    if names is not None:
        names.add(name)
    return directory / f"{name}.png"


@app.command()
def info(
    model: ModelOpt = DEFAULT_MODEL_ID,
    revision: Revision = None,
    device: DeviceOpt = Device.auto,
    dtype: DTypeOpt = DType.auto,
    head: InfoHead = None,
    debug: Debug = False,
) -> None:
    """Show the resolved model (where it is, its configuration, size, device, dtype) or a head."""
    common = Common(model=model, revision=revision, device=device, dtype=dtype)

    def body() -> int:
        from .walk import format_rows

        if head is not None:
            render_rows(head_rows(head, load_head_file(head)))
        else:
            render_rows(describe(common.load()) + format_rows() + backend_rows())
        return 0

    run_command(body, debug)


# ---------------------------------------------------------------------------- your own labels
# (classify --head, fit, info --head: the logic is in head.py and fitting.py; this renders)


def load_head_file(path: str | None) -> Any:
    """The head at `path` (None: no head); HeadError is a ValueError: one line, exit 2."""
    if path is None:
        return None
    from ..model.head import load_head

    return load_head(path)


def refuse_torchrun() -> None:
    """fit runs in one process: its ranks would race on the cache and the head file, and a fit
    embeds a few hundred images at most (the cache makes every refit instant)."""
    from ..pipeline.runtime import shard_from_env

    rank, world = shard_from_env()
    if world > 1:
        raise UserError(
            f"fit runs in one process, not under torchrun (this is rank {rank} of {world}): "
            "run `vithybrid fit` without torchrun"
        )


def read_fit_corrections(corrections: str | None, issues: str | None) -> dict | None:
    """fit's corrections (path -> label or None), read now; and the --issues target checked:
    a file there that is not an issues file is refused, not replaced. One line, exit 2."""
    from ..io.issues import check_issues_target

    if issues is not None:
        check_issues_target(issues)
    if corrections is None:
        return None
    from ..io.corrections import read_corrections

    return read_corrections(corrections)


def write_fit_issues(report: Any, path: str, quiet: bool) -> None:
    """fit --issues: the JSONL (io/issues.py), and one line saying what it holds."""
    from collections import Counter

    from ..io.issues import write_issues

    write_issues(path, report.issues)
    if not quiet:
        kinds = Counter(issue["kind"] for issue in report.issues)
        held = ", ".join(f"{kinds[kind]} {kind}" for kind in ("label", "outlier", "leak"))
        stderr.print(f"{len(report.issues)} issues ({held}); wrote {path}", soft_wrap=True)


@app.command()
def fit(
    data: FitData = None,
    output: HeadOutput = ...,
    labels_from: LabelsFrom = None,
    val: ValDir = None,
    val_fraction: ValFraction = 0.2,
    c: Regularization = None,
    cache: CacheDir = None,
    format: FitFormatOpt = FitFormat.table,
    pool: HeadPool = Pool.cls,
    seed: Seed = 0,
    issues: IssuesFile = None,
    corrections: CorrectionsFile = None,
    model: ModelOpt = DEFAULT_MODEL_ID,
    revision: Revision = None,
    device: DeviceOpt = Device.auto,
    dtype: DTypeOpt = DType.auto,
    backend: BackendOpt = Backend.torch,
    batch_size: BatchSize = None,
    workers: Workers = None,
    interpolate_pos_encoding: Interpolate = False,
    image_size: ImageSize = None,
    quiet: Quiet = False,
    debug: Debug = False,
    report_page: Annotated[
        str | None,
        typer.Option(
            "--report",
            help="Also write a page: per-class metrics, confusion heatmap, "
            "misclassified validation images.",
        ),
    ] = None,  # fmt: skip
) -> None:
    """Fit a head of your own labels (logistic regression on embeddings) for classify --head."""
    common = Common(
        model=model, revision=revision, device=device, dtype=dtype, backend=backend,
        batch_size=batch_size, workers=workers, interpolate=interpolate_pos_encoding,
        image_size=image_size, quiet=quiet,
    )  # fmt: skip

    def body() -> int:
        from ..model.head import save_head
        from ..pipeline.fit import default_cache_dir, fit_head

        if data is None and labels_from is None:
            raise UserError("no training data: give DATA (one folder per label) or --labels-from")
        refuse_torchrun()
        page_path(report_page, "--report")
        corrected = read_fit_corrections(corrections, issues)  # bad files: before any work
        ensure_parent(output, issues)
        with holding_outputs(None, output, issues):  # before the model loads
            loaded = common.load()
            with ProgressBar("embedding", not quiet) as progress:
                report = fit_head(
                    loaded, data, labels_from=labels_from, val=val, val_fraction=val_fraction, c=c,
                    pool=pool.value, image_size=parse_image_size(image_size),
                    interpolate_pos_encoding=interpolate_pos_encoding,
                    cache_dir=cache or default_cache_dir(output), seed=seed,
                    batch_size=batch_size, workers=workers, progress=progress,
                    corrections=corrected, find_issues=issues is not None,
                )  # fmt: skip
            save_head(report.head, output)
            report_fit(report, output, format is FitFormat.json, quiet)
            if issues is not None:
                write_fit_issues(report, issues, quiet)
            if report_page:
                write_fit_report(report, report_page, output, workers, quiet)
        return 0

    run_command(body, debug)


@app.command()
def models(debug: Debug = False) -> None:
    """The ViT-Hybrid family: short names for --model, size, cost, accuracy, speed."""

    def body() -> int:
        from ..model.family import MENU_COLUMNS, menu_cells

        rows, caption = menu_cells()
        table = Table(box=None, caption=caption)
        for index, title in enumerate(MENU_COLUMNS):
            table.add_column(title, no_wrap=True, justify="left" if index < 2 else "right")
        for row in rows:
            table.add_row(*row)
        stdout.print(table)
        return 0

    run_command(body, debug)
