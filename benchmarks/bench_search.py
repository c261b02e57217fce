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


if __name__ == "__main__":
    main()
