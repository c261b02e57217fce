#!/usr/bin/env python3
"""How fast `duplicates` and `similar` search embeddings, exactly and with the approximate
index, and how much memory they take: the crossover between the two (benchmarks/README.md).

Data (not timed, cached in benchmarks/.cache/search/): N vectors of width 768 in an `embed`
layout (NAME.npy + NAME.paths.txt), built in chunks: rows near one of 2,000 cluster centres
(cosine ~0.6 to their neighbours, like photos of one subject), and every 50th row followed by a
near copy of itself at cosine ~0.95 (the planted duplicates; no paths exist on disk, so only
vectors decide). Each case runs in a fresh process that reads the file as the CLI does
(memory-mapped), and reports wall time, peak RSS and the recall of the planted pairs:

  duplicates-exact        grouping.find_duplicates(index="exact"): blocked products, N^2
  duplicates-approximate  the same with index="approximate" (usearch HNSW, build + N queries)
  similar-exact           10 queries against the N vectors: one blocked pass over the file
  similar-approximate     the same through a freshly built index (build included)

    python benchmarks/bench_search.py                             # the default grid
    python benchmarks/bench_search.py --sizes 20000 --cases duplicates-exact
    python benchmarks/bench_search.py --sizes 1000000 --cases duplicates-approximate similar-exact

Torch runs with the machine's cores (set OMP_NUM_THREADS to pin); the load average is printed
with the numbers, which depend on it.
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
CASES = ["duplicates-exact", "duplicates-approximate", "similar-exact", "similar-approximate"]


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


def run_case(case: str, count: int) -> dict:
    """One case in this process (called in a fresh one by main)."""
    sys.path.insert(0, str(REPO))
    import torch

    from vithybrid_cli.search.grouping import find_duplicates
    from vithybrid_cli.search.index import nearest
    from vithybrid_cli.search.vectors import read_vectors

    path = make_vectors(count)
    started = time.perf_counter()
    vectors = read_vectors(str(path))
    kind, index = case.split("-")
    result: dict = {"case": case, "vectors": count, "threads": torch.get_num_threads()}
    if kind == "duplicates":
        groups = find_duplicates(vectors.array, vectors.paths, 0.9, index=index)
        found = {(a, b) for g in groups for i, a in enumerate(g.rows) for b in g.rows[i + 1 :]}
        expected = planted_pairs(count)
        result["groups"] = len(groups)
        result["recall"] = round(len(expected & found) / len(expected), 4)
        result["false_pairs"] = len(found - expected)
    else:
        queries = vectors.array[np.arange(1, 10 * PLANT_EVERY, PLANT_EVERY)]  # planted copies
        found = nearest(vectors.array, queries, 10, index)
        hits = [int(row[1]) == PLANT_EVERY * i for i, row in enumerate(found.indices)]
        result["recall"] = round(sum(hits) / len(hits), 4)  # the original is the 2nd answer
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000, 50000])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=CASES)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: CASE N
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(args.one[0], int(args.one[1]))))
        return
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
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
