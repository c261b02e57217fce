"""Reading an `embed` output back: its vectors, the paths they belong to, the settings that
made them (see io/outputs.py: NAME.paths.txt and NAME.settings.json beside a .npy, the
settings sidecar beside a .npz, Parquet's ``vithybrid.settings`` metadata).

A .npy is read a block of rows at a time (`NpyRows`), so a million rows cost memory only for
the block being searched (see index.py); .npz and Parquet are read whole.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io.outputs import format_from_path, json_safe, safe_text, settings_path, sidecar_path
from ..io.parquet import PARTS_SETTINGS

VECTOR_FORMATS = ("npy", "npz", "parquet")


class VectorsError(ValueError):
    """A vectors file that cannot be searched: one line naming it."""


@dataclass
class Vectors:
    """An `embed` output: `array` (N, D) float32 (perhaps memory-mapped), `paths` (N), and the
    settings recorded with it (None for a file written before they were)."""

    source: str
    array: np.ndarray
    paths: list[str]
    settings: dict[str, Any] | None

    @property
    def width(self) -> int:
        return int(self.array.shape[1])

    def saved_index(self, kind: str = "approximate") -> Path:
        """Where an index of these vectors is kept: the approximate one by
        search.index.saved_index_path, the clustered one by search.clustered.kept_path."""
        if kind == "clustered":
            from .clustered import kept_path

            return kept_path(self.source)
        from .index import saved_index_path

        return saved_index_path(self.source, source_stamp(self.source), tuple(self.array.shape))

    def __len__(self) -> int:
        return int(self.array.shape[0])


def source_stamp(source: str) -> str:
    """Size and modification time of a vectors file, or of every part of a folder of parts:
    what changes when the vectors are written again."""
    if not os.path.isdir(source):
        info = os.stat(source)
        return f"{info.st_size}:{info.st_mtime_ns}"
    stamps = []
    for name in sorted(os.listdir(source)):
        if name.endswith(".parquet"):
            info = os.stat(os.path.join(source, name))
            stamps.append(f"{name}:{info.st_size}:{info.st_mtime_ns}")
    return "/".join(stamps)


def is_vectors_file(spec: str) -> bool:
    """Whether `spec` names an `embed` output (by its suffix, or a folder of Parquet parts with
    the Ray engine's settings file) rather than images."""
    return format_from_path(spec) in VECTOR_FORMATS or is_parts_folder(spec)


def is_parts_folder(spec: str) -> bool:
    return os.path.isfile(os.path.join(spec, PARTS_SETTINGS))


def read_vectors(path: str) -> Vectors:
    """The vectors, paths and settings of `path` (.npy, .npz or .parquet), checked: VectorsError
    (naming the file) when the paths are missing or do not match the rows, or the rows are not
    one vector per image."""
    name = safe_text(path)
    parts = is_parts_folder(path)
    if not parts and not os.path.isfile(path):
        raise VectorsError(f"{name}: no such file")
    fmt = format_from_path(path)
    try:
        if parts:
            array, paths, settings = read_parts(path)
        elif fmt == "npy":
            array, paths, settings = read_npy(path)
        elif fmt == "npz":
            array, paths, settings = read_npz(path)
        elif fmt == "parquet":
            array, paths, settings = read_parquet(path)
        else:
            raise VectorsError(f"{name}: not a vectors file (.npy, .npz or .parquet)")
    except VectorsError:
        raise
    except (ValueError, OSError, KeyError, EOFError) as error:
        raise VectorsError(f"{name}: not a readable vectors file ({error})") from error
    if array.size == 0:
        raise VectorsError(f"{name}: holds no vectors")
    if array.ndim != 2:
        shape = "x".join(str(n) for n in array.shape)
        raise VectorsError(
            f"{name}: holds arrays of shape {shape}, not one vector per image "
            "(embed without --tokens)"
        )
    if len(paths) != len(array):
        raise VectorsError(f"{name}: {len(array)} vectors but {len(paths)} paths")
    return Vectors(path, array, paths, settings)


def read_settings_file(path: str) -> dict[str, Any] | None:
    sidecar = settings_path(path)
    if not os.path.exists(sidecar):
        return None
    with open(sidecar, encoding="utf-8") as file:
        settings = json.load(file)
    if not isinstance(settings, dict):
        raise VectorsError(f"{safe_text(sidecar)}: not a settings file")
    return settings


def read_npy(path: str) -> tuple[np.ndarray, list[str], dict[str, Any] | None]:
    sidecar = sidecar_path(path)
    if not os.path.exists(sidecar):
        raise VectorsError(
            f"{safe_text(path)}: no paths beside it ({safe_text(sidecar)}, which `embed` "
            "writes with the .npy): cannot say which image a row is"
        )
    array = NpyRows(path)
    with open(sidecar, encoding="utf-8", newline="\n") as file:
        paths = [line.removesuffix("\n") for line in file]
    return array, paths, read_settings_file(path)


def require_fields(path: str, names: list[str], vectors: str, paths: str, kind: str) -> None:
    """VectorsError unless the file holds both the `vectors` and the `paths` field."""
    if vectors not in names:
        raise VectorsError(f"{safe_text(path)}: no '{vectors}' {kind} (embed writes one)")
    if paths not in names:
        raise VectorsError(
            f"{safe_text(path)}: no '{paths}' {kind} beside '{vectors}': cannot say which image "
            "a row is"
        )


def read_npz(path: str) -> tuple[np.ndarray, list[str], dict[str, Any] | None]:
    with np.load(path, allow_pickle=False) as archive:
        require_fields(path, archive.files, "embeddings", "paths", "array")
        array = archive["embeddings"]
        paths = [str(p) for p in archive["paths"]]
    return array, paths, read_settings_file(path)


def read_parts(folder: str) -> tuple[np.ndarray, list[str], dict[str, Any] | None]:
    """A folder of Parquet parts, in part-name order (rows of one input are in one part only);
    the settings are the parts' own, else the folder's settings file."""
    names = sorted(name for name in os.listdir(folder) if name.endswith(".parquet"))
    if not names:
        raise VectorsError(f"{safe_text(folder)}: holds no .parquet parts (embed writes them)")
    arrays, paths, settings = [], [], None
    for name in names:
        array, part_paths, part_settings = read_parquet(os.path.join(folder, name))
        if arrays and array.shape[1:] != arrays[0].shape[1:]:
            raise VectorsError(
                f"{safe_text(os.path.join(folder, name))}: vectors of width {array.shape[1]}, "
                f"not {arrays[0].shape[1]} as in {names[0]}"
            )
        arrays.append(array)
        paths += part_paths
        settings = settings or part_settings
    if settings is None:
        with open(os.path.join(folder, PARTS_SETTINGS), encoding="utf-8") as file:
            settings = json.load(file).get("settings")
    return np.concatenate(arrays), paths, settings


def read_parquet(path: str) -> tuple[np.ndarray, list[str], dict[str, Any] | None]:
    from ..extras import require
    from ..io.parquet import SETTINGS_KEY

    pq = require("pyarrow.parquet", "parquet", "pyarrow")
    schema = pq.read_schema(path)
    require_fields(path, schema.names, "embedding", "path", "column")
    table = pq.read_table(path, columns=["path", "embedding"])
    column = table.column("embedding").combine_chunks()
    width = getattr(column.type, "list_size", None)
    values = column.flatten()
    if width is None or not str(values.type).startswith("float"):
        raise VectorsError(
            f"{safe_text(path)}: 'embedding' is {column.type}, not one fixed-size float vector "
            "per image (embed without --tokens)"
        )
    array = values.to_numpy().astype(np.float32, copy=False).reshape(-1, width)
    paths = [str(p) for p in table.column("path").to_pylist()]
    metadata = schema.metadata or {}
    settings = json.loads(metadata[SETTINGS_KEY]) if SETTINGS_KEY in metadata else None
    return array, paths, settings


class NpyRows:
    """The rows of a .npy file, read from disk when indexed (a slice or sorted row numbers),
    never held whole. Unlike a memory map, the rows read are not kept mapped into the
    process, so its memory stays one block however large the file is."""

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, "rb") as file:
            version = np.lib.format.read_magic(file)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(file)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(file)
            self.offset = file.tell()
        if fortran or dtype.hasobject:
            raise VectorsError(f"{safe_text(path)}: not a C-ordered numeric array")
        self.shape, self.dtype = tuple(shape), dtype
        self.ndim, self.size = len(self.shape), int(np.prod(self.shape))
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * dtype.itemsize
        if os.path.getsize(path) < self.offset + self.shape[0] * self.row_bytes:
            raise VectorsError(
                f"{safe_text(path)}: truncated (its header says {self.shape[0]} rows; "
                "written again by embed, or copied whole?)"
            )

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice | np.ndarray) -> np.ndarray:
        if isinstance(rows, slice):
            start, stop, step = rows.indices(len(self))
            if step != 1:
                raise IndexError("NpyRows takes contiguous slices")
            return self.read(start, max(0, stop - start))
        wanted = np.asarray(rows, dtype=np.int64).tolist()
        out = np.empty((len(wanted), *self.shape[1:]), self.dtype)
        with open(self.path, "rb") as file:
            for position, row in enumerate(wanted):
                out[position] = self.read(row, 1, file)[0]
        return out

    def read(self, start: int, count: int, file: Any = None) -> np.ndarray:
        if file is None:
            with open(self.path, "rb") as opened:
                return self.read(start, count, opened)
        file.seek(self.offset + start * self.row_bytes)
        data = file.read(count * self.row_bytes)
        if len(data) < count * self.row_bytes:
            raise VectorsError(f"{safe_text(self.path)}: truncated")
        return np.frombuffer(data, self.dtype).reshape(count, *self.shape[1:]).copy()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self.read(0, len(self))
        return whole if dtype is None else whole.astype(dtype)


# ---------------------------------------------------------------------------- settings


def check_settings(vectors: Vectors, current: dict[str, Any]) -> None:
    """VectorsError when `current` (the query run's job settings) differs from the settings
    recorded with `vectors`, naming each difference as the journal's --resume refusals do:
    ``vectors.npy was written with --pool cls, not mean``. The model's name and revision do
    not count when the weights are the same (a directory named another way)."""
    from ..pipeline.journal import describe_differences

    if vectors.settings is None:
        return
    recorded = json.loads(json.dumps(vectors.settings))
    now = json.loads(json.dumps(json_safe(current)))
    if recorded.get("weights") is not None and recorded.get("weights") == now.get("weights"):
        for key in ("model", "revision"):
            recorded.pop(key, None)
            now.pop(key, None)
    differences = describe_differences(recorded, now)
    if differences:
        raise VectorsError(f"{safe_text(vectors.source)} was written {'; '.join(differences)}")


def check_width(vectors: Vectors, width: int) -> None:
    """VectorsError when the model's vectors (`width` wide) cannot be compared with the file's."""
    if vectors.width != width:
        raise VectorsError(
            f"{safe_text(vectors.source)}: vectors of width {vectors.width}, but this model's "
            f"are {width} wide: embed the queries with the model that wrote it"
        )


class CollectVectors:
    """A run_job output: every input's result (without its payload, for error records) and the
    vectors of those that succeeded, in input order, in memory."""

    def __init__(self) -> None:
        self.results: list[Any] = []
        self.paths: list[str] = []
        self.rows: list[np.ndarray] = []

    def open(self) -> set[str]:
        return set()

    def write(self, result: Any) -> None:
        if result.ok:
            self.paths.append(result.path)
            self.rows.append(np.asarray(result.payload, dtype=np.float32))
        result.payload = None  # held once, in self.rows
        self.results.append(result)

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def vectors(self, source: str = "<images>", settings: dict[str, Any] | None = None) -> Vectors:
        width = self.rows[0].shape[-1] if self.rows else 0
        array = np.stack(self.rows) if self.rows else np.zeros((0, width), np.float32)
        return Vectors(source, array, list(self.paths), settings)
