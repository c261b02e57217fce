"""One job, the same for every command and the Python API: inputs -> runner -> task -> output.

`run_job` takes the inputs (a function giving a fresh stream, so it can be counted when a
progress bar wants a total), a Runner, a task (see runner.py) and an Output, and returns a
Summary. It skips what the output already holds (--resume), takes this process's share of the
rest (torchrun: every world-th input), writes each result, and finishes the output; on Ctrl-C it
stops writing at once and leaves the output resumable.

Outputs (the Output protocol): `JournalOutput` (a file: results go to the journal, and the file
is written from it at the end, see journal.py), `StreamOutput` (records to stdout as they come),
`CollectOutput` (results kept in memory, in order: the Python API and the terminal table).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Protocol

from ..data.items import InputError
from ..files import naming
from ..io.outputs import open_writer, record_of, safe_text
from ..model.identity import weights_identity
from .journal import Job, Journal, SingleProcess
from .lock import Target, holding
from .runner import Result, Runner
from .tasks import Task

if TYPE_CHECKING:
    from ..model.model import ViTHybrid

Inputs = Callable[[], Iterable[Any]]  # a fresh stream of InputItem / InputError per call


class Output(Protocol):
    def open(self) -> set[str]:
        """Start; return the paths (safe_text keys) already done, to skip."""

    def write(self, result: Result) -> None: ...

    def finish(self) -> None:
        """The run ended (all inputs, or --strict): complete the output."""

    def abort(self) -> None:
        """The run was interrupted or failed: keep what can be resumed, nothing half-written."""


class Progress(Protocol):
    wants_total: bool  # counting the inputs walks them twice: only for a progress bar

    def start(self, total: int | None) -> None: ...
    def advance(self, result: Result) -> None: ...


@dataclass
class Summary:
    succeeded: int = 0
    failed: int = 0
    elapsed: float = 0.0
    interrupted: bool = False
    stopped: bool = False  # --strict stopped at a failure


# ---------------------------------------------------------------------------- outputs


class JournalOutput:
    """A file output: results go to the journal; `finish` writes the file (rank 0) from it."""

    def __init__(
        self,
        path: str,
        fmt: str,
        kind: str,
        settings: dict[str, Any],
        *,
        resume: bool = False,
        keep: bool = True,
        job: Job | None = None,
        **writer_options: Any,
    ) -> None:
        self.path, self.fmt, self.kind, self.options = path, fmt, kind, writer_options
        self.keep = keep  # the journal, for a later --resume
        self.job = job or SingleProcess()
        self.journal = Journal(path, settings, resume=resume, job=self.job)
        self.count = 0  # records or rows in the file written (rank 0)
        self.lock = contextlib.ExitStack()  # the output's lock (lock.py), open to finish/abort

    def open(self) -> set[str]:
        # Before the journal is touched: a second run on this output must not reset or join it.
        self.lock.enter_context(holding([Target(self.path)], self.job))
        try:
            with naming(self.path):
                return self.journal.open()
        except BaseException:
            self.lock.close()
            raise

    def write(self, result: Result) -> None:
        with naming(self.path):
            self.journal.append(result.index, result.path, result.error, result.payload)

    def finish(self) -> None:
        with self.lock:  # given back once the file is written, or the writing failed
            with naming(self.path):
                self.journal.close()
            self.job.barrier()  # every rank's share is in the journal
            if self.job.rank == 0:
                with naming(self.path):
                    self.write_file()
                if not self.keep:
                    self.journal.remove()
                else:  # a later --resume appends after the rows written (journal.py);
                    # without the mark (a full disk) it merges in input order: slower, not wrong
                    with contextlib.suppress(OSError):
                        self.journal.mark_completed()
            self.job.barrier()  # nobody exits (which makes torchrun stop the others) before that

    def write_file(self) -> None:
        options = dict(self.options)
        if self.kind == "embeddings":  # recorded with the vectors, for `similar` to check
            options.setdefault("settings", self.journal.settings)
        writer = open_writer(self.kind, self.fmt, self.path, **options)
        try:
            for entry in self.journal.entries():
                if self.kind == "records":
                    writer.write(record_of(entry.path, entry.payload, entry.error))
                elif entry.ok:  # arrays: failures are left out (they are on stderr)
                    writer.write(entry.path, entry.payload)
                else:
                    continue
                self.count += 1
        except BaseException:
            writer.abort()
            raise
        writer.close()

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.journal.close()
        self.lock.close()


class StreamOutput:
    """Records to a stream (stdout) as they come; nothing to resume."""

    def __init__(self, fmt: str, stream: IO[str], **writer_options: Any) -> None:
        self.writer = open_writer("records", fmt, stream, **writer_options)

    def open(self) -> set[str]:
        return set()

    def write(self, result: Result) -> None:
        self.writer.write(record_of(result.path, result.payload, result.error))

    def finish(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


class NoOutput:
    """Results go nowhere (attention-map without --raw: its pictures are the output)."""

    def open(self) -> set[str]:
        return set()

    def write(self, result: Result) -> None:
        pass

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        pass


@dataclass
class CollectOutput:
    """Every result, in input order, in memory (for a handful of images, or the API's rows)."""

    results: list[Result] = field(default_factory=list)
    on_result: Callable[[Result], None] | None = None

    def open(self) -> set[str]:
        return set()

    def write(self, result: Result) -> None:
        if self.on_result is not None:
            self.on_result(result)
        self.results.append(result)

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        pass


# ---------------------------------------------------------------------------- the job


def select(items: Iterable[Any], done: set[str], rank: int, world: int) -> Iterator[tuple]:
    """(input index, item) for this process's share of the inputs not done yet.

    Every rank sees the same inputs and the same done set, so the shares never overlap.
    """
    position = 0
    for index, item in enumerate(items):
        if done and not isinstance(item, InputError) and safe_text(item.path) in done:
            continue
        if position % world == rank:
            yield index, item
        position += 1


def run_job(
    runner: Runner,
    inputs: Inputs,
    task: Task,
    output: Output,
    *,
    job: Job | None = None,
    progress: Progress | None = None,
    strict: bool = False,
    on_result: Callable[[Result], None] | None = None,
) -> Summary:
    """Run `task` over `inputs` into `output`; see the module docstring.

    `on_result` sees each success before it is written (e.g. to save an overlay); it may raise
    ValueError or OSError to turn that result into a failure of its own.
    """
    job = job or SingleProcess()
    summary, started = Summary(), time.perf_counter()
    done = output.open()
    if progress is not None:
        wants = progress.wants_total
        progress.start(
            sum(1 for _ in select(inputs(), done, job.rank, job.world)) if wants else None
        )
    try:
        with stop_on_interrupt() as stopping:
            pairs = select(inputs(), done, job.rank, job.world)
            for result in runner.run_indexed(pairs, task):
                if stopping.is_set():
                    raise KeyboardInterrupt
                follow_up(result, on_result)
                output.write(result)
                summary.succeeded += result.ok
                summary.failed += not result.ok
                if progress is not None:
                    progress.advance(result)
                if strict and not result.ok:
                    summary.stopped = True
                    break
    except KeyboardInterrupt:
        output.abort()
        summary.interrupted = True
    except BaseException:
        output.abort()
        raise
    else:
        output.finish()
        summary.succeeded, summary.failed = job.all_sum(summary.succeeded, summary.failed)
    summary.elapsed = time.perf_counter() - started
    return summary


def follow_up(result: Result, on_result: Callable[[Result], None] | None) -> None:
    if on_result is not None and result.ok:
        try:
            on_result(result)
        except (ValueError, OSError) as error:  # a picture that cannot be saved fails alone
            result.error, result.payload = str(error), None
    result.image = None  # the decoded picture is done with: memory stays flat


@contextlib.contextmanager
def stop_on_interrupt() -> Iterator[threading.Event]:
    """Ctrl-C raises KeyboardInterrupt as usual and also sets an event that the job checks
    before writing each result: no result is written after Ctrl-C, even if the exception is
    swallowed somewhere (a finalizer, a callback) or lands late."""
    stopping = threading.Event()
    # Only where Ctrl-C would raise anyway: a process started with SIGINT ignored (nohup, a
    # background job of a script) keeps ignoring it, and a caller's own handler stays.
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield stopping
        return

    def interrupt(signum: int, frame: Any) -> None:
        stopping.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield stopping
    finally:
        signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------------------- settings


def model_settings(model: ViTHybrid) -> dict[str, Any]:
    """Which checkpoint made the results: name, revision and an identity of the weights."""
    checkpoint = model.checkpoint
    return {
        "model": str(checkpoint.name),
        "revision": checkpoint.revision,
        "weights": weights_identity([str(path) for path in checkpoint.weight_files]),
    }


def job_settings(runner: Runner, task: Task) -> dict[str, Any]:
    """Everything that shapes a result, for the journal (an open dict: add keys freely)."""
    return {**model_settings(runner.model), **runner.settings, **task.settings}
