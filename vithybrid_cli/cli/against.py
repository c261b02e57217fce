"""`duplicates NEW... --against COLLECTION`: the run (checks, then NEW embedded as COLLECTION
was or read from vectors files, then search/against.py) and its table; and embedding images the
way a vectors file was recorded, which `similar --in` shares.

Not a command module: cli/search.py's commands call it (it imports no command module).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from rich.markup import escape
from rich.table import Table

from ..model.config import DEFAULT_MODEL_ID
from .common import Common, Inputs
from .options import Backend, Device, DType, Pool, UserError
from .render import counted, stderr, stdout


@dataclass(kw_only=True)
class Recorded:
    """The embedding options given on the command line (None: as recorded with the vectors)."""

    model: str | None = None
    revision: str | None = None
    dtype: DType | None = None
    backend: Backend | None = None
    pool: Pool | None = None
    interpolate: bool | None = None
    image_size: str | None = None


def embed_as_recorded(
    vectors: Any, inputs: Inputs, asked: Recorded, *, device: Device, batch_size: int | None,
    workers: int | None, quiet: bool,
) -> tuple[Any, Any]:  # fmt: skip
    """Embed `inputs` the way `vectors` (search.vectors.Vectors) were: the settings recorded
    with them, except those `asked` explicitly, which must agree with them (VectorsError, one
    line naming the file, before any image is read). (CollectVectors, the run's Summary)."""
    from ..pipeline.job import job_settings
    from ..pipeline.journal import SingleProcess
    from ..pipeline.tasks import embed_task
    from ..search.vectors import CollectVectors, check_settings, check_width

    recorded = vectors.settings or {}
    interpolate = recorded_flag(asked.interpolate, recorded, "interpolate-pos-encoding")
    size = asked.image_size or "x".join(str(n) for n in recorded.get("image-size", [])) or None
    common = Common(
        model=asked.model or recorded.get("model") or DEFAULT_MODEL_ID,
        revision=(
            asked.revision
            if asked.revision is not None or asked.model
            else recorded.get("revision")
        ),
        device=device,
        dtype=asked.dtype or DType(recorded.get("dtype", "auto")),
        batch_size=batch_size,
        workers=workers,
        interpolate=interpolate,
        image_size=size,
        quiet=quiet,
        backend=asked.backend or Backend(recorded.get("backend", "torch")),
    )
    pool_name = asked.pool.value if asked.pool else recorded.get("pool", "cls")
    task = embed_task(pool_name, bool(recorded.get("normalize", False)))
    loaded = common.load()
    check_width(vectors, loaded.config.hidden_size)
    runner = common.runner(loaded)
    check_settings(vectors, job_settings(runner, task))
    collected = CollectVectors()
    summary = common.run("embedded", inputs, runner, task, collected, SingleProcess())
    return collected, summary


def recorded_flag(given: bool | None, recorded: dict[str, Any], key: str) -> bool:
    return bool(recorded.get(key, False)) if given is None else given


# ---------------------------------------------------------------------------- --against


@dataclass(kw_only=True)
class AgainstRun:
    """`duplicates --against`'s options."""

    sources: list[str] | None
    files_from: str | None
    max_download_mb: float | None
    collection: str
    threshold: float
    index: Any  # cli.search.IndexChoice
    asked: Recorded
    device: Device
    batch_size: int | None
    workers: int | None
    quiet: bool


def asked_explicitly(context: Any) -> Recorded:
    """The embedding options of the command (`context`, its click Context) given on the
    command line (not their defaults), as a Recorded: with --against the collection's
    recorded settings fill in the rest."""

    def given(name: str, kind: Any = None) -> Any:
        source = context.get_parameter_source(name)  # by name: typer may bring its own click
        if getattr(source, "name", "DEFAULT") == "DEFAULT":
            return None
        value = context.params[name]
        return kind(value) if kind is not None and value is not None else value

    return Recorded(
        model=given("model"),
        revision=given("revision"),
        dtype=given("dtype", DType),
        backend=given("backend", Backend),
        pool=given("pool", Pool),
        interpolate=given("interpolate_pos_encoding"),
        image_size=given("image_size"),
    )


def asked_differences(recorded: dict[str, Any], asked: Recorded, model: bool) -> list[str]:
    """How the options given explicitly differ from the settings recorded with a collection,
    as far as they can be told without loading a model; with `model`, the model's name too
    (new images: left to the check once it is loaded, which compares the weights)."""
    from ..pipeline.journal import describe_differences
    from .options import parse_image_size

    given: dict[str, Any] = {}
    if model and asked.model is not None:
        given["model"] = asked.model
    for key, value in (("dtype", asked.dtype), ("backend", asked.backend), ("pool", asked.pool)):
        if value is not None:
            given[key] = value.value
    if asked.interpolate is not None:
        given["interpolate-pos-encoding"] = asked.interpolate
    if asked.image_size:
        given["image-size"] = list(parse_image_size(asked.image_size))[::-1]  # (h, w) recorded
    old = {key: recorded[key] for key in given if key in recorded}
    return describe_differences(old, {key: given[key] for key in old})


def read_collection(path: str) -> Any:
    """The collection's Vectors; VectorsError (one line naming it) when it is not one."""
    from ..io.outputs import safe_text
    from ..search.vectors import VectorsError, is_parts_folder, read_vectors

    if os.path.isdir(path) and not is_parts_folder(path):
        raise VectorsError(
            f"{safe_text(path)}: a folder, not vectors: --against takes an `embed` output "
            "(.npy with its .paths.txt, .npz, .parquet, or the Ray engine's folder of parts)"
        )
    return read_vectors(path)


def new_from_files(specs: list[str], collection: Any) -> tuple[Any, list[str]]:
    """NEW given as vectors files: one Vectors of them all (checked against the collection's
    width and recorded settings), and their folders (where their relative paths are)."""
    import numpy as np

    from ..io.outputs import safe_text
    from ..search.vectors import Vectors, VectorsError, check_settings, read_vectors

    arrays, paths, bases = [], [], []
    for spec in specs:
        new = read_vectors(spec)
        if new.width != collection.width:
            raise VectorsError(
                f"{safe_text(spec)}: vectors of width {new.width}, but "
                f"{safe_text(collection.source)}'s are {collection.width} wide"
            )
        if new.settings is not None:
            try:
                check_settings(collection, new.settings)
            except VectorsError as error:
                raise VectorsError(f"{error} (as {safe_text(spec)} was)") from None
        arrays.append(np.asarray(new.array, dtype=np.float32))
        paths += new.paths
        bases.append(os.path.dirname(os.path.normpath(spec)) or ".")
    return Vectors("<new>", np.concatenate(arrays), paths, None), bases


def find_against(run: AgainstRun) -> tuple[list[dict[str, Any]], int]:
    """(the match records, the exit status: 1 when an image failed, else 0 found or not)."""
    from ..io.outputs import safe_text
    from ..search.against import IN_COLLECTION, against_matches, match_records
    from ..search.index import choose_index
    from ..search.vectors import VectorsError, is_vectors_file

    if run.index.value == "approximate":
        from ..extras import require

        require("usearch", "search")
    collection = read_collection(run.collection)
    specs, status = run.sources or [], 0
    vectors_only = bool(specs) and all(is_vectors_file(spec) for spec in specs)
    differences = asked_differences(collection.settings or {}, run.asked, vectors_only)
    if differences:
        where = safe_text(collection.source)
        raise VectorsError(f"{where} was written {'; '.join(differences)}")
    if vectors_only:
        if run.files_from:
            raise UserError("give vectors files or images (--files-from), not both")
        new, bases = new_from_files(specs, collection)
    else:
        inputs = Inputs(run.sources, run.files_from, run.max_download_mb)
        collected, summary = embed_as_recorded(
            collection, inputs, run.asked, device=run.device, batch_size=run.batch_size,
            workers=run.workers, quiet=run.quiet,
        )  # fmt: skip
        new, bases, status = collected.vectors(), [], 1 if summary.failed else 0
    method = choose_index(run.index.value, len(collection))
    saved = collection.saved_index(method) if method != "exact" else None  # for the next run
    started = time.perf_counter()
    matches = against_matches(
        collection.array, new.array, run.threshold, index=run.index.value, saved=saved,
        paths=collection.paths, note=None if run.quiet else note_for(collection.source),
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    folder = os.path.dirname(os.path.normpath(run.collection)) or "."
    records = match_records(
        matches, new.paths, collection.paths, new_bases=bases, collection_bases=[folder]
    )
    if not run.quiet:
        here = {m.row for m in matches if m.within == IN_COLLECTION}
        among = sum(m.within != IN_COLLECTION for m in matches)
        stderr.print(
            f"{len(here)} of {counted(len(new), 'new item')} with a near copy in "
            f"{escape(safe_text(run.collection))}, {counted(among, 'near-copy pair')} among "
            f"them, at threshold {run.threshold:g} ({method} search of "
            f"{len(collection):,} vectors in {elapsed:.1f} s)",
            soft_wrap=True,
        )
    return records, status


def note_for(source: str) -> Any:
    """A `note` callback printing one line about the collection's kept index."""
    from ..io.outputs import safe_text

    def note(line: str) -> None:
        stderr.print(f"{escape(safe_text(source))}: {escape(line)}", soft_wrap=True)

    return note


def render_against(records: list[dict[str, Any]]) -> None:
    from ..data.items import display_path

    table = Table()
    for column, justify in (("new", "left"), ("match", "left"), ("score", "right"), ("in", "left")):
        table.add_column(column, justify=justify)
    for record in records:
        score = "exact" if record["exact"] else f"{record['score']:.3f}"
        path, match = (escape(display_path(record[key])) for key in ("path", "match"))
        table.add_row(path, match, score, record["in"])
    stdout.print(table)
