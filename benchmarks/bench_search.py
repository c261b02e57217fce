#!/usr/bin/env python3
"""How fast `duplicates` and `similar` search embeddings, exactly and with the approximate
index, and how much memory they take: the crossover between the two (benchmarks/README.md).

Data (not timed, cached in benchmarks/.cache/search/): N vectors of width 768 in an `embed`
layout (NAME.npy + NAME.paths.txt), built in chunks: rows near one of 2,000 cluster centres
(cosine ~0.6 to their neighbours, like photos of one subject), and every 50th row followed by a
near copy of itself at cosine ~0.95 (the planted duplicates; no paths exist on disk, so only
vectors decide). Each case runs in a fresh process that reads the file as the CLI does
(memory-mapped), and reports wall time, peak memory (VmHWM), the recall of the planted pairs
and, for the exact cases, the effective GFLOP/s of the search beside torch.mm's on the same
shapes in the same precision, measured in the same process half just before and half just
after, as much work as the search's (`mm_gflops`; `ratio` = ours / torch.mm's):

  duplicates-exact        grouping.find_duplicates(index="exact"): N^2 / 2 x 768 x 2 flops in
                          bf16 tiles (search/exact.py); torch.mm: the same (2048, 768) x
                          (768, 2048) tiles in the same dtype (at most 2,000 of them)
  duplicates-approximate  the same with index="approximate" (usearch HNSW, build + N queries)
  similar-exact           10 queries against the N vectors: one blocked pass over the file,
                          N x 10 x 768 x 2 flops; torch.mm: (10, 768) x the file's blocks,
                          float32, from the same memory-mapped file
  similar-approximate     the same through a freshly built index (build included)

    python benchmarks/bench_search.py                             # the default grid
    python benchmarks/bench_search.py --sizes 20000 --cases duplicates-exact
    python benchmarks/bench_search.py --sizes 1000000 --cases duplicates-approximate similar-exact

The million rows and the growth case (issue #28) go in MILLION SCALE below.

Torch runs with the machine's cores (set OMP_NUM_THREADS to pin); the load average is printed
and the CPU with the numbers, which depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "benchmarks" / ".cache" / "search"
WIDTH = 768
CHUNK = 50_000
PLANT_EVERY = 50


def make_vectors(count: int, width: int = WIDTH) -> Path:
    """CACHE/vectors-N.npy (+ .paths.txt): clustered rows with planted near copies."""
    path = CACHE / f"vectors-{count}.npy"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2000, width)).astype(np.float32)
    partial = path.with_suffix(".partial.npy")
    array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(count, width))
    for start in range(0, count, CHUNK):
        rows = min(CHUNK, count - start)
        chunk = centres[rng.integers(0, len(centres), rows)]
        chunk = chunk + 1.1 * rng.standard_normal((rows, width)).astype(np.float32)
        planted = np.arange(0, rows - 1, PLANT_EVERY)
        copy = chunk[planted] / np.linalg.norm(chunk[planted], axis=1, keepdims=True)
        noise = rng.standard_normal(copy.shape).astype(np.float32)
        noise -= (noise * copy).sum(1, keepdims=True) * copy  # orthogonal to the row
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        chunk[planted + 1] = 0.95 * copy + np.sqrt(1 - 0.95**2) * noise  # cosine 0.95
        array[start : start + rows] = chunk
    array.flush()
    del array
    with open(path.with_suffix(".paths.txt"), "w") as file:
        file.writelines(f"photos/{i:07d}.jpg\n" for i in range(count))
    os.replace(partial, path)
    return path


def planted_pairs(count: int) -> set[tuple[int, int]]:
    pairs = set()
    for start in range(0, count, CHUNK):
        rows = min(CHUNK, count - start)
        pairs |= {(start + i, start + i + 1) for i in range(0, rows - 1, PLANT_EVERY)}
    return pairs


def peak_memory_mb() -> int:
    """The process's peak resident memory (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def tile_mm(count: int, width: int) -> tuple[float, float]:
    """(flops, seconds) of torch.mm on half the exact duplicates' tiles (at most 1,000), in
    their dtype: called before and after the search, the rate is over as long as the search
    took (a busy machine's load changes by the second)."""
    import torch

    from vithybrid_cli.search.exact import TILE_ROWS, fast_dtype

    rows = min(TILE_ROWS, count)
    first = torch.randn(rows, width).to(fast_dtype())
    second = torch.randn(rows, width).to(fast_dtype())
    scores = torch.mm(first, second.T)  # warm
    blocks = -(-count // rows)
    tiles = max(1, min(1000, blocks * (blocks + 1) // 4))
    started = time.perf_counter()
    for _ in range(tiles):
        torch.mm(first, second.T, out=scores)
    return tiles * 2 * rows * rows * width, time.perf_counter() - started


def pass_mm(array: np.ndarray, queries: np.ndarray) -> tuple[float, float]:
    """(flops, seconds) of torch.mm on `similar`'s pass: the queries times each block of the
    file, float32 (before and after the search, as tile_mm)."""
    from vithybrid_cli.search.exact import as_torch, normalized

    query = normalized(queries)
    started = time.perf_counter()
    for start in range(0, len(array), 8192):
        query @ as_torch(array[start : start + 8192]).T
    return 2 * len(array) * len(queries) * array.shape[1], time.perf_counter() - started


def rate(*measured: tuple[float, float]) -> float:
    """GFLOP/s over (flops, seconds) measurements together."""
    return sum(flops for flops, _ in measured) / sum(seconds for _, seconds in measured) / 1e9


def duplicates_case(index: str, vectors, count: int) -> dict:
    from vithybrid_cli.search.grouping import find_duplicates

    before = tile_mm(count, WIDTH) if index == "exact" else None
    started = time.perf_counter()
    groups = find_duplicates(vectors.array, vectors.paths, 0.9, index=index)
    seconds = time.perf_counter() - started
    found = {(a, b) for g in groups for i, a in enumerate(g.rows) for b in g.rows[i + 1 :]}
    expected = planted_pairs(count)
    result = {"seconds": seconds, "groups": len(groups)}
    result["recall"] = round(len(expected & found) / len(expected), 4)
    result["false_pairs"] = len(found - expected)
    if index == "exact":
        result["gflops"] = round(count * count * WIDTH / seconds / 1e9)  # N^2 / 2 x D x 2
        result["mm_gflops"] = round(rate(before, tile_mm(count, WIDTH)))
    return result


def similar_case(index: str, vectors, count: int) -> dict:
    from vithybrid_cli.search.index import nearest

    queries = vectors.array[np.arange(1, 10 * PLANT_EVERY, PLANT_EVERY)]  # planted copies
    before = pass_mm(vectors.array, queries) if index == "exact" else None
    started = time.perf_counter()
    found = nearest(vectors.array, queries, 10, index)
    seconds = time.perf_counter() - started
    hits = [int(row[1]) == PLANT_EVERY * i for i, row in enumerate(found.indices)]
    result = {"seconds": seconds, "recall": round(sum(hits) / len(hits), 4)}  # 2nd answer
    if index == "exact":
        result["gflops"] = round(2 * count * len(queries) * WIDTH / seconds / 1e9, 1)
        result["mm_gflops"] = round(rate(before, pass_mm(vectors.array, queries)), 1)
    return result


# ---------------------------------------------------------------------------- MILLION SCALE
# Issue #28, parts 2 and 3: the 1,000,000-row run (`--sizes 1000000`, the data made by
# make_vectors like the others) and the growth case (the file grown by 1% with appended rows,
# the kept index extended, groups equal to a rebuild's) are added here, as entries of CASES
# ("growth-...": a function (vectors, count) -> dict with its "seconds", like the others).

CASES = {
    "duplicates-exact": lambda vectors, count: duplicates_case("exact", vectors, count),
    "duplicates-approximate": lambda vectors, count: duplicates_case("approximate", vectors, count),
    "similar-exact": lambda vectors, count: similar_case("exact", vectors, count),
    "similar-approximate": lambda vectors, count: similar_case("approximate", vectors, count),
}


def run_case(case: str, count: int) -> dict:
    """One case in this process (called in a fresh one by main): wall time (reading the file
    and the search), peak memory, and what the case measures."""
    sys.path.insert(0, str(REPO))
    import torch

    from vithybrid_cli.search.vectors import read_vectors

    path = make_vectors(count)
    started = time.perf_counter()
    vectors = read_vectors(str(path))
    reading = time.perf_counter() - started
    result: dict = {"case": case, "vectors": count, "threads": torch.get_num_threads()}
    measured = CASES[case](vectors, count)  # its "seconds": the search (torch.mm's come after)
    measured["seconds"] = round(reading + measured["seconds"], 2)
    result.update(measured)
    if "mm_gflops" in result:
        result["ratio"] = round(result["gflops"] / result["mm_gflops"], 2)
    result["peak_mb"] = peak_memory_mb()
    return result


def cpu_name() -> str:
    """The CPU's model name, with AMX where it has it."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in info.splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    return model + (" with AMX-BF16" if " amx_bf16" in info else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=CASES)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: CASE N
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(args.one[0], int(args.one[1]))))
        return
    print(f"{cpu_name()}, {os.cpu_count()} cores", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}", flush=True)
    for count in args.sizes:
        make_vectors(count)  # not timed
        for case in args.cases:
            command = [sys.executable, __file__, "--one", case, str(count)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                print(f"{case} {count}: failed\n{done.stderr[-2000:]}", flush=True)
                continue
            print(done.stdout.strip(), flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__" and not {"--million", "--million-one"} & set(sys.argv):
    main()


# ---------------------------------------------------------------------------- a million (#28)
# Clustered vectors the way real embeddings are: SCENES scene centres, each row within cosine
# ~0.8 of its scene's other rows, and PLANTED random rows each copied (cosine 0.95) onto another
# random row. Independent random vectors would make any index look perfect. Each run reports
# wall time, peak memory (VmHWM), the recall of the planted pairs and the false pairs (found,
# not planted: every reported pair is rescored in float32, so these would be real near copies
# the generator made by chance), then the same file grown by 1% (the kept index extended).
#
#   python benchmarks/bench_search.py --million 1000000         # build + growth by 1%
#   python benchmarks/bench_search.py --million 200000 500000

SCENES = 1000
PLANTED = 500
SCENE_COSINE = 0.8
COPY_COSINE = 0.95


def scene_rows(rng: np.random.Generator, centres: np.ndarray, rows: int) -> np.ndarray:
    """`rows` unit rows, each at cosine sqrt(SCENE_COSINE) of a random centre: two rows of one
    scene are at cosine ~SCENE_COSINE."""
    chosen = centres[rng.integers(0, len(centres), rows)]
    noise = rng.standard_normal(chosen.shape).astype(np.float32)
    noise -= (noise * chosen).sum(1, keepdims=True) * chosen
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    along = np.float32(np.sqrt(SCENE_COSINE))
    return along * chosen + np.sqrt(1 - along**2).astype(np.float32) * noise


def near_copy(rng: np.random.Generator, rows: np.ndarray, cosine: float) -> np.ndarray:
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    noise = rng.standard_normal(unit.shape).astype(np.float32)
    noise -= (noise * unit).sum(1, keepdims=True) * unit
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return (cosine * unit + np.sqrt(1 - cosine**2) * noise).astype(np.float32)


def planted_rows(count: int, planted: int = PLANTED, seed: int = 1) -> np.ndarray:
    """(planted, 2) (original, copy) rows, original < copy, no row used twice."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(count, 2 * planted, replace=False).reshape(planted, 2)
    return np.sort(rows, axis=1)


def make_clustered(count: int, width: int = WIDTH, grown_from: int | None = None) -> Path:
    """CACHE/clustered-N.npy (+ .paths.txt): scene rows with PLANTED near copies. With
    `grown_from`, the first grown_from rows are clustered-<grown_from>.npy's, byte for byte."""
    path = CACHE / f"clustered-{count}.npy"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((SCENES, width)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    partial = path.with_suffix(".partial.npy")
    array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(count, width))
    for start in range(0, count, 1000):  # rows depend on their thousand only: a prefix repeats
        block_rng = np.random.default_rng([0, start])
        array[start : start + 1000] = scene_rows(block_rng, centres, min(1000, count - start))
    base = grown_from or count
    pairs = planted_rows(base)
    array[pairs[:, 1]] = near_copy(rng, np.asarray(array[pairs[:, 0]]), COPY_COSINE)
    if grown_from:  # the appended rows carry planted copies of their own
        extra = planted_rows(count - grown_from, max(1, PLANTED // 100), seed=2) + grown_from
        array[extra[:, 1]] = near_copy(rng, np.asarray(array[extra[:, 0]]), COPY_COSINE)
    array.flush()
    del array
    with open(path.with_suffix(".paths.txt"), "w") as file:
        file.writelines(f"photos/{i:07d}.jpg\n" for i in range(count))
    os.replace(partial, path)
    return path


def expected_clustered(count: int, grown_from: int | None = None) -> set[tuple[int, int]]:
    pairs = {tuple(p) for p in planted_rows(grown_from or count).tolist()}
    if grown_from:
        extra = planted_rows(count - grown_from, max(1, PLANTED // 100), seed=2) + grown_from
        pairs |= {tuple(p) for p in extra.tolist()}
    return pairs


def peak_rss_mb() -> int:
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    return 0


def run_million(count: int, grown_from: int | None, cache: str) -> dict:
    """`vithybrid duplicates` (as its body runs it) over clustered-N.npy, index kept in `cache`."""
    sys.path.insert(0, str(REPO))
    os.environ["VITHYBRID_CACHE"] = cache
    from vithybrid_cli.search.grouping import find_duplicates
    from vithybrid_cli.search.vectors import read_vectors

    path = Path(cache) / "collection.npy"  # one path: the grown file is the same collection
    for suffix in (".npy", ".paths.txt"):
        source = make_clustered(count, grown_from=grown_from).with_suffix(suffix)
        shutil.copyfile(source, path.with_suffix(suffix))
    os.sync()  # the copy's writes done before the clock starts
    import torch  # noqa: F401 - as the CLI does: the search alone is timed

    notes: list[str] = []
    started = time.perf_counter()
    vectors = read_vectors(str(path))
    groups = find_duplicates(
        vectors.array, vectors.paths, 0.9, index="clustered",
        saved=vectors.saved_index("clustered"), compare_bytes=False, note=notes.append,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    found = {(a, b) for g in groups for i, a in enumerate(g.rows) for b in g.rows[i + 1 :]}
    expected = expected_clustered(count, grown_from)
    return {
        "case": "duplicates-clustered" + (f" grown from {grown_from}" if grown_from else ""),
        "vectors": count,
        "seconds": round(seconds, 1),
        "peak_rss_mb": peak_rss_mb(),
        "planted_recall": round(len(expected & found) / len(expected), 4),
        "false_pairs": len(found - expected),
        "notes": notes,
    }


def main_million(sizes: list[int]) -> None:
    import tempfile

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    for count in sizes:
        grown = count + count // 100
        with tempfile.TemporaryDirectory() as cache:
            for size, base in ((count, None), (grown, count)):  # copied to one path, not timed
                make_clustered(size, grown_from=base)  # not timed
                command = [sys.executable, __file__, "--million-one", str(size), str(base or 0)]
                done = subprocess.run(
                    command, capture_output=True, text=True, check=False,
                    env={**os.environ, "VITHYBRID_CACHE": cache},
                )  # fmt: skip
                print(done.stdout.strip() or done.stderr[-2000:], flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__" and "--million" in sys.argv:
    main_million([int(n) for n in sys.argv[sys.argv.index("--million") + 1 :]])
elif __name__ == "__main__" and "--million-one" in sys.argv:
    size, base = (int(n) for n in sys.argv[sys.argv.index("--million-one") + 1 :][:2])
    print(json.dumps(run_million(size, base or None, os.environ["VITHYBRID_CACHE"])))
