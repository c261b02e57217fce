"""The Ray Data engine: the job of `run_job`, with Ray moving the data across a cluster.

plan_ray_run checks and plans a run before any work (the model step built once on this
machine's CPU: settings, concrete dtype, batch size, Parquet metadata); run_ray runs it:

    inputs, listed here as the local engine lists them (same paths, same resume keys)
      -> ray.data.from_items: path + the pickled InputItem (or the listing's error)
      -> map_batches(Decoder): decode and preprocess in CPU tasks, on any node
      -> map_batches(Classifier | Embedder): the model in an actor pool (--concurrency,
         --num-gpus); the same tasks as the local engine (vithybrid_cli/ray.py)
      -> PartsSink: Parquet or JSONL parts in DEST (a local folder or a bucket URL), each
         written as soon as its rows are in (rows_per_part: 32 batches of each actor), so an
         interrupted run keeps its finished parts and a resume redoes about a part or two

Every input ends up in DEST exactly once even when a worker dies: Ray retries the task (an actor
is restarted and its batch rerun), and a part is named by its run and its write task, so a
retried write replaces its own part instead of adding one. A local part is written to a hidden
temp file and renamed; an object store shows an object only once it is whole.

DEST also holds `_vithybrid.json`: the settings that shape a row (job_settings: model, weights,
dtype, image size, task options), as the journal header records them. `--resume` reads the
paths already in the parts and skips them, after checking those settings; a run without it
removes the parts (and only them) first. Readers skip files starting with `_` or `.`, so
pyarrow.dataset, DuckDB and pandas read DEST as one table.

RAY_ADDRESS names a running cluster; `connect` turns the ways joining it fails (nothing there,
Ray's token authentication refusing this machine) into one line naming the cause.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import re
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import IO, Any

from ray.data.datasource import Datasink

from ...data.items import InputError
from ...data.sources import SourceError, is_remote, remote_filesystem
from ...io.outputs import json_safe, safe_text
from ...io.parquet import PARTS_SETTINGS, SETTINGS_KEY
from ..job import Summary, select
from ..journal import SettingsMismatch, describe_differences

SETTINGS_FILE = PARTS_SETTINGS
VERSION = 1
PART = re.compile(r"part-(\d+)-(\d+)\.(parquet|jsonl)")
FORMATS = ("parquet", "jsonl")
# A part is written once all its rows are in, so an interrupted run keeps its finished parts and
# loses the rows of the part still filling (and of those being written): PART_BATCHES batches of
# every model actor per part bound that loss by time (batch sizes follow the device's speed), not
# by the run's size. 256 rows on one CPU actor at batch 8; 8,192 with 8 GPU actors at batch 32.
PART_BATCHES = 32
MAX_ROWS_PER_PART = 16_384
EMBEDDING_BYTES_PER_PART = 64 << 20  # vectors in one part at most (--tokens: ~40 rows)
# CPUs a decode task asks of Ray beside CPU model actors (which ask 1): any other figure keeps
# the two maps apart (see build_dataset); half lets two decode tasks share a core, as decoding
# waits on reads and the actors' threads leave cores idle between batches.
DECODE_CPUS = 0.5
# CPUs a write task asks of Ray. With Ray's default, 1, the writes could wait while decode tasks
# and the model actors held every CPU (Ray Data's budget backpressured them), up to the run's end;
# a part takes milliseconds to write, mostly waiting on storage.
WRITE_CPUS = 0.1


# ---------------------------------------------------------------------------- the destination


class Destination:
    """DEST: a local folder or an fsspec URL (s3://, gs://, ...); its parts and settings."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.remote = is_remote(url)
        if self.remote:
            try:
                self.fs, self.root = remote_filesystem(url)
            except SourceError as error:
                raise ValueError(f"{url}: {error}") from error
        else:
            import fsspec

            self.fs, self.root = fsspec.filesystem("file"), os.path.abspath(url)
        self.root = self.root.rstrip("/")

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def names(self) -> list[str]:
        """The names of the files in DEST (none when it does not exist yet)."""
        try:
            listed = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        return sorted(os.path.basename(str(name).rstrip("/")) for name in listed)

    def parts(self) -> list[str]:
        return [name for name in self.names() if PART.fullmatch(name)]

    def read_header(self) -> dict[str, Any] | None:
        try:
            with self.fs.open(self.path(SETTINGS_FILE), "rb") as file:
                header = json.loads(file.read())
        except FileNotFoundError:
            return None
        except ValueError as error:
            raise ValueError(f"{self.url}: {SETTINGS_FILE} is not valid JSON ({error})") from None
        return header if isinstance(header, dict) else None

    def prepare(self, fmt: str, settings: dict[str, Any], resume: bool) -> tuple[set[str], int]:
        """Check or start DEST; (paths already there, this run's number)."""
        settings = json.loads(json.dumps(json_safe(settings)))  # as read back
        name = safe_text(self.url)
        parts = self.parts()
        for stale in self.names():  # temp files of killed writers
            if stale.startswith(".tmp-part-"):
                self.fs.rm(self.path(stale))
        if resume:
            header = self.read_header()
            if header is None and parts:
                raise ValueError(
                    f"--resume: {name} has parts but no {SETTINGS_FILE} beside them: "
                    "run without --resume to write it anew"
                )
            if header is not None:
                differences = describe_differences(header.get("settings", {}), settings)
                if header.get("format", fmt) != fmt:
                    differences.insert(0, f"with --format {header['format']}, not {fmt}")
                if differences:
                    raise SettingsMismatch(f"--resume: {name} was written {'; '.join(differences)}")
        else:
            for part in parts:
                self.fs.rm(self.path(part))
            parts = []
        done = self.paths_in(parts, fmt)
        run = max((int(PART.fullmatch(part)[1]) for part in parts), default=-1) + 1
        self.fs.makedirs(self.root, exist_ok=True)
        header = {"vithybrid": VERSION, "engine": "ray", "format": fmt, "settings": settings}
        with self.open(SETTINGS_FILE) as file:
            file.write(json.dumps(header, indent=1).encode() + b"\n")
        return done, run

    def paths_in(self, parts: list[str], fmt: str) -> set[str]:
        """Every path written in `parts` (a resume skips them)."""
        done: set[str] = set()
        for part in parts:
            with self.fs.open(self.path(part), "rb") as file:
                if fmt == "parquet":
                    import pyarrow.parquet as pq

                    done.update(pq.read_table(file, columns=["path"])["path"].to_pylist())
                else:
                    done.update(json.loads(line)["path"] for line in file if line.strip())
        return done

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        """A new file `name`, in place only when whole (local: a temp file, renamed)."""
        if self.remote:
            with self.fs.open(self.path(name), "wb") as file:
                yield file
            return
        temp = self.path(f".tmp-{name}-{uuid.uuid4().hex[:8]}")
        try:
            with open(temp, "wb") as file:
                yield file
            os.replace(temp, self.path(name))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(name))


# ---------------------------------------------------------------------------- the sink


@dataclass
class PartStats:
    """What one write task did: rows in, rows written, and each failure (path, error)."""

    rows: int = 0
    written: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)


class PartsSink(Datasink):
    """Writes each write task's rows to one part, `part-RUN-TASK.parquet` (or .jsonl).

    Embedding rows that failed are counted and left out, as the local engine leaves them out of
    its files; record rows keep them (the `error` column).
    """

    def __init__(
        self,
        destination: Destination,
        fmt: str,
        kind: str,
        run: int,
        rows_per_part: int,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.destination, self.fmt, self.kind, self.run = destination, fmt, kind, run
        self.rows_per_part, self.metadata = rows_per_part, metadata or {}
        self.stats: list[PartStats] = []

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_part

    def write(self, blocks: Iterable[Any], ctx: Any) -> PartStats:
        from ray.data.block import BlockAccessor

        name = f"part-{self.run:04d}-{ctx.task_idx:06d}.{self.fmt}"
        stats, writer = PartStats(), None
        with self.destination.open(name) as file:
            for block in blocks:
                table = BlockAccessor.for_block(block).to_arrow()
                stats.rows += table.num_rows
                paths, errors = table["path"].to_pylist(), table["error"].to_pylist()
                stats.errors += [(p, e) for p, e in zip(paths, errors, strict=True) if e]
                table = self.rows_to_write(table)
                if self.fmt == "parquet":
                    if writer is None:
                        writer = self.parquet_writer(file, table.schema)
                    writer.write_table(table)
                else:
                    rows = (json_safe(row) for row in table.to_pylist())
                    file.writelines(json.dumps(row).encode() + b"\n" for row in rows)
                stats.written += table.num_rows
            if writer is not None:
                writer.close()
        if not stats.written:  # every embedding failed: no empty part
            self.destination.remove(name)
        return stats

    def rows_to_write(self, table: Any) -> Any:
        if self.kind == "records":
            return table
        import pyarrow.compute as pc

        return table.filter(pc.is_null(table["error"])).select(["path", "embedding"])

    def parquet_writer(self, file: IO[bytes], schema: Any) -> Any:
        import pyarrow.parquet as pq

        metadata = {key.encode(): value.encode() for key, value in self.metadata.items()}
        return pq.ParquetWriter(file, schema.with_metadata(metadata))

    def on_write_complete(self, write_result: Any) -> None:
        self.stats = list(write_result.write_returns)


# ---------------------------------------------------------------------------- the run


@dataclass
class RayPlan:
    """Where and how: DEST, its format, the job's settings, and the cluster's share of work."""

    dest: str
    fmt: str = "parquet"
    kind: str = "records"
    settings: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    concurrency: int = 1  # model actors
    num_gpus: float = 0.0  # per model actor
    batch_size: int = 8
    rows_per_part: int = PART_BATCHES * 8  # rows_per_part(): the batch size, the actors
    metadata: dict[str, str] = field(default_factory=dict)  # Parquet key-value metadata
    progress: bool = True


@dataclass
class RayOutcome:
    summary: Summary
    errors: list[tuple[str, str]]  # (path, error) of each failure, in no particular order
    parts: int = 0


def rows_per_part(
    kind: str, row_shape: tuple[int, ...] | None = None, batch_size: int = 8, concurrency: int = 1
) -> int:
    """Rows per part: PART_BATCHES batches of each of the `concurrency` model actors, at most
    MAX_ROWS_PER_PART rows and, for embeddings of `row_shape`, EMBEDDING_BYTES_PER_PART."""
    rows = min(MAX_ROWS_PER_PART, PART_BATCHES * batch_size * concurrency)
    if kind != "records" and row_shape:
        rows = min(rows, EMBEDDING_BYTES_PER_PART // (4 * math.prod(row_shape)))
    return max(1, rows)


def input_rows(inputs: Iterable[Any], done: set[str]) -> list[dict[str, Any]]:
    """The dataset's rows: each input not done yet, its InputItem pickled (or its error)."""
    rows = []
    for _, item in select(inputs, done, 0, 1):
        failed = isinstance(item, InputError)
        rows.append(
            {
                "path": safe_text(item.path),
                "item": b"" if failed else pickle.dumps(item),
                "error": item.message if failed else "",
            }
        )
    return rows


@contextlib.contextmanager
def ray_session(quiet: bool = False) -> Iterator[None]:
    """Ray as it is (already initialized: the caller's), the cluster RAY_ADDRESS names, or a
    local Ray started for this run and shut down after it. `quiet`: Ray's warnings only."""
    import ray

    if quiet:
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if ray.is_initialized():
        yield
        return
    level = logging.WARNING if quiet else logging.INFO
    address = os.environ.get("RAY_ADDRESS")
    if address:
        connect(address, level)
    else:
        # The local Ray's address: Ray's choice (the machine's own) unless VITHYBRID_RAY_NODE_IP
        # says (127.0.0.2 keeps it all on loopback; Ray swaps 127.0.0.1 for the machine's).
        node_ip = os.environ.get("VITHYBRID_RAY_NODE_IP")
        where = {"_node_ip_address": node_ip} if node_ip else {}
        ray.init(include_dashboard=False, logging_level=level, **where)
    try:
        yield
    finally:
        ray.shutdown()


TOKEN_FIX = "copy ~/.ray/auth_token from the head node or set RAY_AUTH_TOKEN (docs/guides/ray.md)"


def connect(address: str, level: int) -> None:
    """ray.init on the cluster at `address`. Where it cannot connect, one ConnectionError that
    names the likely cause: nothing listening, or Ray's token authentication (Ray 2.52+) refusing
    this machine. Ray itself retries for ~20 s and then names neither, so both are asked first."""
    import ray
    from ray.exceptions import AuthenticationError

    where = f"cannot connect to the Ray cluster at {address} (RAY_ADDRESS)"
    token_mode = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
    if token_mode and not has_token():  # Ray would refuse to start (its client aborts)
        raise ConnectionError(f"{where}: RAY_AUTH_MODE=token, but this machine has no token: "
                              f"{TOKEN_FIX}")  # fmt: skip
    refused = (
        f"{where}: it refused this machine's token: {TOKEN_FIX}"
        if token_mode
        else f"{where}: it asks for a token: set RAY_AUTH_MODE=token, and {TOKEN_FIX}"
    )
    answer = gcs_answer(address)
    if answer == "silent":
        raise ConnectionError(f"{where}: nothing answers there (is `ray start --head` running?)")
    if answer == "refused":
        raise ConnectionError(refused)
    try:
        ray.init(address=address, logging_level=level)
    except AuthenticationError:
        raise ConnectionError(refused) from None
    except ConnectionError as error:
        if "InvalidAuthToken" in str(error.__cause__):  # what the probe could not tell
            raise ConnectionError(refused) from None
        raise ConnectionError(f"{where}: {error}") from None


def has_token() -> bool:
    """Whether Ray finds a token here: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    try:  # Ray's own loader (private API: where it is gone, ray.init says what it finds)
        from ray._raylet import AuthenticationTokenLoader

        return AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True)
    except Exception:  # noqa: BLE001
        return True


def gcs_answer(address: str) -> str:
    """How the cluster's GCS at HOST:PORT `address` answers this process: "silent" (no TCP
    connection), "refused" (Ray's InvalidAuthToken: missing or wrong token), "ok", or "unknown"
    (another address form, another error). Milliseconds, where ray.init takes ~20 s to fail."""
    host, colon, port = address.rpartition(":")
    if not colon or "://" in address or not port.isdigit():
        return "unknown"  # "auto", ray://, http://: left to ray.init
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=10):
            pass
    except OSError:
        return "silent"
    try:  # Ray's own GCS client, with this process's token (private API: any failure is unknown)
        from ray._raylet import InnerGcsClient
        from ray.exceptions import AuthenticationError

        InnerGcsClient.standalone(address, None, 10_000)
    except AuthenticationError:
        return "refused"
    except Exception:  # noqa: BLE001 - ray.init tries again and says what it finds
        return "unknown"
    return "ok"


def actor_threads(concurrency: int) -> int:
    """Torch threads per CPU model actor: the cluster's CPUs shared among the actors. (Ray starts
    workers with OMP_NUM_THREADS=1; decode tasks share the same cores, as the local engine's
    decode threads do.)"""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, cpus // max(1, concurrency))


def build_dataset(
    rows: list[dict[str, Any]],
    decoder: Any,
    model_step: type,
    model_options: dict[str, Any],
    plan: RayPlan,
) -> Any:
    """The pipeline up to the sink: `rows` (input_rows) -> decode tasks -> the model actors.

    Ray fuses a task map into the actor map after it when both ask for the same resources: the
    decoding would then run inside the model actors and scale with them only. Decode tasks ask
    for DECODE_CPUS (CPU actors keep Ray's 1) so decoding stays an operator of its own, its tasks
    spread over every node's free CPUs; GPU actors differ from them by their GPU already.
    When CPU actors take every CPU of the cluster, Ray fuses the two (no CPU left to decode on).
    """
    import ray

    blocks = max(1, math.ceil(len(rows) / (2 * plan.batch_size)))
    dataset = ray.data.from_items(rows, override_num_blocks=blocks)
    cpus = ray.cluster_resources().get("CPU", 1)
    # CPU actors holding every CPU would leave none to decode tasks (the run would hang): then
    # the decoding stays fused into the actors, as before.
    apart = not plan.num_gpus and plan.concurrency < cpus
    decode_cpus = DECODE_CPUS if apart else None
    dataset = dataset.map_batches(decoder, batch_size=plan.batch_size, num_cpus=decode_cpus)
    return dataset.map_batches(
        model_step,
        fn_constructor_kwargs=model_options,
        batch_size=plan.batch_size,
        compute=ray.data.ActorPoolStrategy(size=plan.concurrency),
        num_gpus=plan.num_gpus or None,
    )


def concrete_dtype(dtype: str, num_gpus: float) -> str:
    """--dtype auto made concrete once, here, so every actor of the cluster computes alike."""
    import torch

    from ..runtime import resolve_dtype

    if dtype != "auto":
        return dtype
    if num_gpus and not torch.cuda.is_available():
        return "bfloat16"  # this machine cannot ask the actors' GPUs: every recent one has it
    device = torch.device("cuda" if num_gpus else "cpu")
    return str(resolve_dtype("auto", device)).removeprefix("torch.")


@dataclass
class RayRun:
    """A planned run: the decode step, the model step and its actors' options, and the plan."""

    decoder: Any
    model_step: type
    model_options: dict[str, Any]
    plan: RayPlan


def plan_ray_run(
    model_step: type,
    decoder_class: type,
    options: dict[str, Any],
    task: dict[str, Any],
    where: RayPlan,
) -> RayRun:
    """Plan a run of `model_step` (vithybrid_cli.ray's Classifier or Embedder) before any work.

    `options` are the model's (model, revision, dtype: "auto" made concrete here, image_size,
    interpolate_pos_encoding, batch_size: None for the device's default, compile, backend),
    `task` the step's own (top_k, head, ... or pool, normalize, tokens); `where` holds DEST, its
    format and the cluster's share (concurrency, num_gpus). The step is built once here, on CPU:
    it gives the settings, the row shape and the batch size, and fails here (CheckpointError,
    ValueError) what every actor would fail. `decoder_class` (Decoder) is built with the model's
    preprocessing."""
    import torch

    from ..runner import auto_batch_size

    options = {**options, "dtype": concrete_dtype(options["dtype"], where.num_gpus)}
    probe = model_step(device="cpu", **options, **task)
    device = "cuda" if where.num_gpus else "cpu"
    batch = options["batch_size"] or auto_batch_size(torch.device(device), probe.runner.input_size)
    shape = getattr(probe, "row_shape", None)
    metadata = {"vithybrid.top_k": str(probe.task.top_k)} if probe.kind == "records" else {}
    if shape:
        metadata["vithybrid.row_shape"] = ",".join(map(str, shape))
    if probe.kind == "embeddings":  # as the local engine's Parquet: `similar` reads it back
        metadata[SETTINGS_KEY.decode()] = json.dumps(json_safe(probe.settings), sort_keys=True)
    plan = replace(
        where, kind=probe.kind, settings=probe.settings, batch_size=batch,
        rows_per_part=rows_per_part(probe.kind, shape, batch, where.concurrency),
        metadata=metadata,
    )  # fmt: skip
    decoder = decoder_class(config=probe.model.preprocess_config, image_size=options["image_size"])
    if "head" in task:
        task = {**task, "head": probe.head}  # the loaded head travels: no file on the nodes
    return RayRun(decoder, model_step, {**options, **task, "device": device}, plan)


def run_ray(inputs: Iterable[Any], run: RayRun) -> RayOutcome:
    """Run `run.model_step` (built in each actor with `run.model_options`) over `inputs` into
    run.plan.dest; see the module docstring."""
    import ray

    plan = run.plan
    started = time.perf_counter()
    destination = Destination(plan.dest)
    if plan.resume:  # nothing is removed: a run with nothing left to do starts no Ray
        done, run_number = destination.prepare(plan.fmt, plan.settings, plan.resume)
        rows = input_rows(inputs, done)
        if not rows:
            return RayOutcome(Summary(elapsed=time.perf_counter() - started), [])
    with ray_session(quiet=not plan.progress):
        if not plan.resume:  # connected first: a cluster out of reach removes no earlier parts
            done, run_number = destination.prepare(plan.fmt, plan.settings, plan.resume)
            rows = input_rows(inputs, done)
        sink = PartsSink(
            destination, plan.fmt, plan.kind, run_number, plan.rows_per_part, plan.metadata
        )
        ray.data.DataContext.get_current().enable_progress_bars = plan.progress
        options = dict(run.model_options)
        if not plan.num_gpus:
            options.setdefault("threads", actor_threads(plan.concurrency))
        dataset = build_dataset(rows, run.decoder, run.model_step, options, plan)
        dataset.write_datasink(sink, ray_remote_args={"num_cpus": WRITE_CPUS})
    failed = sum(len(stats.errors) for stats in sink.stats)
    summary = Summary(
        succeeded=sum(stats.rows for stats in sink.stats) - failed,
        failed=failed,
        elapsed=time.perf_counter() - started,
    )
    errors = [error for stats in sink.stats for error in stats.errors]
    return RayOutcome(summary, errors, sum(1 for stats in sink.stats if stats.written))
