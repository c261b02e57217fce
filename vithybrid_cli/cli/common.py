"""What every command shares: the one-line errors and exit statuses (`run_command`), the options
every command takes and the steps it takes with them (`Common`: load, runner, run), the inputs
named on the command line (`Inputs`), and the checks of output files made before the model loads.

The commands themselves are in commands.py (and search.py, report.py); they parse, call these,
and render.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from ..extras import MissingExtra
from .options import Backend, Device, DType, Format, UserError, parse_image_size
from .render import Reporter, stderr, stdout

# ---------------------------------------------------------------------------- errors and exit


class Interrupted(KeyboardInterrupt):
    """Ctrl-C after the summary was printed; outputs keep what was written, for --resume."""


def error_line(error: BaseException) -> str:
    """One line; an OSError names its file: `out.jsonl: no space left on device`."""
    from ..data.items import display_path

    if isinstance(error, OSError) and error.strerror:
        message = error.strerror[0].lower() + error.strerror[1:]
        if error.filename is not None:
            return f"{display_path(os.fsdecode(error.filename))}: {message}"
        return message
    return str(error)


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
        if not isinstance(interrupt, Interrupted):  # else the summary said so
            stderr.print("interrupted")
        raise typer.Exit(130) from None
    except (UserError, OSError, ValueError, MissingExtra) as error:
        if debug:
            raise
        from rich.markup import escape  # hints say "vithybrid[cloud]": not markup

        stderr.print(f"[red]error:[/red] {escape(error_line(error))}", soft_wrap=True)
        raise typer.Exit(2) from None
    raise typer.Exit(status)


# ---------------------------------------------------------------------------- the shared job


@dataclass(kw_only=True)
class Common:
    """The options every command shares, and the steps every command takes with them (built by
    keyword: Common(model=..., dtype=...))."""

    model: str
    revision: str | None = None
    device: Device = Device.auto
    dtype: DType = DType.auto
    batch_size: int | None = None
    workers: int | None = None
    interpolate: bool = False
    image_size: str | None = None
    compile: bool = False
    quiet: bool = False
    strict: bool = False
    backend: Backend = Backend.torch

    def load(self) -> Any:
        """The checkpoint on the chosen device and dtype, run by the chosen backend, with errors
        as UserError (a missing OpenVINO as MissingExtra: one line too)."""
        from ..model.weights import CheckpointError
        from ..pipeline.backends import load_run_model

        try:
            return load_run_model(
                self.model, self.revision, device=self.device.value, dtype=self.dtype.value,
                backend=self.backend.value, compile_model=self.compile,
            )  # fmt: skip
        except (CheckpointError, ValueError) as error:
            raise UserError(str(error)) from error

    def runner(self, model: Any, attentions: bool = False) -> Any:
        from ..pipeline.runner import Runner, RunOptions

        options = RunOptions(
            batch_size=self.batch_size,
            workers=self.workers,
            image_size=parse_image_size(self.image_size),
            interpolate_pos_encoding=self.interpolate,
            output_attentions=attentions,
            keep_images=attentions,
        )
        try:
            return Runner(model, options)
        except ValueError as error:
            raise UserError(str(error)) from error

    def run(self, verb: str, inputs: Any, runner: Any, task: Any, output: Any, job: Any,
            on_result: Callable[[Any], None] | None = None) -> Any:  # fmt: skip
        from ..pipeline.job import run_job

        with Reporter(verb, not self.quiet and job.rank == 0, inputs.countable) as reporter:
            summary = run_job(
                runner, inputs, task, output,
                job=job, progress=reporter, strict=self.strict, on_result=on_result,
            )  # fmt: skip
        if summary.stopped:
            stderr.print("stopping at the first failure (--strict)")
        if job.rank == 0:
            from .walk import note_lines

            for line in note_lines(inputs.notes, quiet=self.quiet):
                stderr.print(line, soft_wrap=True, markup=False, highlight=False)
        if not self.quiet and job.rank == 0:
            note = " (interrupted)" if summary.interrupted else ""
            counts = f"{summary.succeeded} {verb}, {summary.failed} failed"
            stderr.print(f"{counts} in {summary.elapsed:.1f} s{note}")
        if summary.interrupted:
            raise Interrupted
        return summary


def embed_images(
    common: Common,
    inputs: Inputs,
    task: Any,
    verb: str,
    check: Callable[[Any, Any], None] | None = None,
) -> tuple[Any, Any]:
    """(the vectors of the inputs that succeeded, with the run's settings; the run's summary),
    embedded by run_job as `embed` does; `check(model, runner)` first, when given (e.g. that a
    head reads this model's embeddings)."""
    from ..pipeline.job import job_settings
    from ..pipeline.journal import SingleProcess
    from ..search.vectors import CollectVectors

    loaded = common.load()
    runner = common.runner(loaded)
    if check is not None:
        check(loaded, runner)
    collected = CollectVectors()
    summary = common.run(verb, inputs, runner, task, collected, SingleProcess())
    return collected.vectors(settings=job_settings(runner, task)), summary


@dataclass
class Inputs:
    """What the user named, as a fresh lazy stream per call (see inputs.iter_inputs)."""

    paths: list[str] | None
    files_from: str | None
    max_download_mb: float | None = None
    follow_links: bool = False
    exclude: list[str] | None = None  # the run's own outputs (walk.own_outputs)
    strict: bool = False  # walked images this install cannot decode fail instead of a note
    notes: Any = None  # the latest stream's inputs.WalkNotes

    def __post_init__(self) -> None:
        from ..data.sources import is_http_url, is_remote, require_protocol

        if not self.paths and not self.files_from:
            raise UserError(
                "no inputs: give image paths, directories, globs, URLs, tar archives, '-' "
                "(stdin) or --files-from"
            )
        for spec in self.paths or []:  # a missing extra stops the run before the model loads
            if is_remote(spec) and not is_http_url(spec):
                try:
                    require_protocol(spec)
                except MissingExtra as error:
                    raise MissingExtra(f"{spec}: {error}") from error

    def __call__(self) -> Iterator[Any]:
        from ..data.inputs import iter_inputs
        from ..data.items import WalkNotes
        from ..data.sources import RemoteOptions

        limit = {} if self.max_download_mb is None else {"max_download_mb": self.max_download_mb}
        self.notes = WalkNotes()  # the run's stream comes last: its notes are the summary's
        return iter_inputs(
            self.paths or [], files_from=self.files_from, options=RemoteOptions(**limit),
            follow_links=self.follow_links, exclude=self.exclude or (), notes=self.notes,
            take_undecodable=self.strict,
        )  # fmt: skip

    @property
    def countable(self) -> bool:
        """Whether a progress bar's total costs only local listing (no stdin, network, .tar.gz)."""
        from ..data.inputs import cheap_to_count

        return cheap_to_count(self.paths or [], self.files_from)


def ensure_parent(*paths: str | None) -> None:
    """Create the folders output files go into, as --output-dir creates its folder."""
    for path in paths:
        if path and path != "-":
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError) as error:
                # `-o photos/cat.jpg/labels.csv`: mkdir says "file exists"; the cause is a file
                # where a folder should be.
                file = next((p for p in Path(path).parents if p.is_file()), None)
                if file is None:
                    raise
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(file)) from error


def holding_outputs(job: Any, *files: str | None, directory: str | None = None) -> Any:
    """The lock of every output of this run, taken before the model loads (see lock.py):
    a second run on one of them stops here with one line."""
    from ..pipeline.lock import Target, holding

    targets = [Target(path) for path in files if path and path != "-"]
    if directory:
        targets.append(Target(directory, "--output-dir", directory=True))
    return holding(targets, job)


def output_format(path: str, kind: str, fmt: str | None = None) -> str:
    """The format of output file `path` (`fmt`, else its suffix), with its writer's packages
    installed (else MissingExtra): checked before the model loads."""
    from ..io.outputs import WRITERS, format_from_path, formats, require_writer

    fmt = fmt or format_from_path(path)
    if (kind, fmt) not in WRITERS:
        names = " or ".join(f".{name}" for name in formats(kind))
        raise UserError(f"{kind} go to a {names} file, not {path!r}")
    require_writer(fmt)
    return fmt


def file_output(path: str, kind: str, runner: Any, task: Any, job: Any, **options: Any) -> Any:
    """The journaled output for file `path` (its format from its suffix, checked now)."""
    from ..pipeline.job import JournalOutput, job_settings

    fmt = output_format(path, kind, options.pop("fmt", None))
    return JournalOutput(path, fmt, kind, job_settings(runner, task), job=job, **options)


def record_format(format: Format | None, output: str | None) -> str:
    from ..io.outputs import format_from_path

    to_file = bool(output) and output != "-"
    fmt = (format.value if format else None) or (format_from_path(output) if to_file else None)
    if to_file and fmt is None:  # `-o labels.cvs`: no silent JSON Lines; --format overrides
        output_format(output, "records")  # type: ignore[arg-type]
    fmt = fmt or ("table" if stdout.is_terminal and not to_file else "jsonl")
    if fmt == "table" and to_file:
        raise UserError(
            "--format table prints to the terminal; use json, jsonl, csv or parquet with --output"
        )
    if fmt == "parquet" and not to_file:
        raise UserError("--format parquet is a binary file: give --output FILE.parquet")
    if to_file and fmt != "table":
        output_format(output, "records", fmt)  # type: ignore[arg-type]
    return fmt


def needs_file(output: str | None, job: Any) -> None:
    if job.world > 1 and (not output or output == "-"):
        raise UserError("under torchrun every process writes its own journal: give --output")


# ---------------------------------------------------------------------------- rendering


def status_of(summary: Any) -> int:
    return 1 if summary.failed else 0
