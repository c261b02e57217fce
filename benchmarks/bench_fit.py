#!/usr/bin/env python3
"""How long `vithybrid fit` takes when every embedding is already in the cache (goal: < 5 s).

Set-up (not timed): a checkpoint with google's embedding size (768; a shallow random model, the
embeddings come from the cache anyway), 1,000 small image files in 10 label folders, and for each
file a 768-d vector (a class centre plus noise) written into the cache under the key the fit
computes. Then, timed:

  library   fit.fit_head(model, DATA, cache_dir=CACHE) in this process, model loaded
            (C chosen on the validation split from the 7-value grid: 7 L-BFGS fits)
  cli       `vithybrid fit DATA -o head.safetensors --cache CACHE` as a new process
            (interpreter start-up, imports and model load included), wall and CPU time: on a
            busy machine the wall time is mostly waiting (importing torch alone is ~1 s of CPU)

Both must run no forward pass: the script checks that every image came from the cache.

    python benchmarks/bench_fit.py                  # 1,000 embeddings, 10 labels
    python benchmarks/bench_fit.py --count 5000 --labels 20 --repeat 3

Needs the dev extras (transformers writes the checkpoint). Numbers depend on the machine's load,
which is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def make_checkpoint(directory: Path) -> Path:
    """The tiny test structure widened to hidden size 768 (12 heads, as google's)."""
    from checkpoints import make_checkpoint as make

    if not (directory / "config.json").exists():
        directory.mkdir(parents=True, exist_ok=True)
        make(directory, "tiny", 0, hidden_size=768, num_attention_heads=12, intermediate_size=768)
    return directory


def make_data(root: Path, count: int, labels: int) -> list[tuple[str, int]]:
    """`count` 8x8 PNGs in root/label_K/; returns (path, label index) in a fixed order."""
    from PIL import Image

    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        label = i % labels
        folder = root / f"label_{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:05d}.png"
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
        files.append((str(path), label))
    return files


def fill_cache(model, cache: Path, files: list[tuple[str, int]], labels: int) -> None:
    """One vector per file, in the cache format, under the key a default fit looks up."""
    from vithybrid_cli.model.identity import model_identity
    from vithybrid_cli.pipeline.fit.cache import EmbeddingCache, cache_settings, file_key
    from vithybrid_cli.pipeline.runner import RunOptions

    options = RunOptions()
    identity = model_identity(model, options)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    store = EmbeddingCache(cache, cache_settings(identity, "cls", dtype, options.fast_decode))
    rng = np.random.default_rng(1)
    size = identity.embedding_size
    centres = rng.normal(size=(labels, size))
    for path, label in files:
        vector = centres[label] + rng.normal(scale=4.0, size=size)
        store.add(file_key(path), vector.astype(np.float32))
    store.flush()


def loadavg() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--labels", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    from vithybrid_cli.model.weights import load_model
    from vithybrid_cli.pipeline.fit import fit_head

    work = Path(tempfile.mkdtemp(prefix="bench-fit-"))
    checkpoint = make_checkpoint(REPO / "benchmarks" / ".cache" / "fit-checkpoint-768")
    files = make_data(work / "data", args.count, args.labels)
    model = load_model(checkpoint)
    fill_cache(model, work / "cache", files, args.labels)

    results: dict[str, list[float]] = {"library": [], "cli": [], "cli_cpu": []}
    for _ in range(args.repeat):
        started = time.perf_counter()
        report = fit_head(model, work / "data", cache_dir=work / "cache")
        results["library"].append(time.perf_counter() - started)
        assert report.embedded == 0 and report.cached == args.count, "cache missed"

        command = [
            sys.executable, "-m", "vithybrid_cli", "fit", str(work / "data"),
            "-o", str(work / "head.safetensors"), "--cache", str(work / "cache"),
            "--model", str(checkpoint), "--dtype", "float32", "--format", "json",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
        started = time.perf_counter()
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        results["cli"].append(time.perf_counter() - started)
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        results["cli_cpu"].append(
            cpu.ru_utime - cpu_before.ru_utime + cpu.ru_stime - cpu_before.ru_stime
        )
        if done.returncode != 0:
            sys.exit(f"vithybrid fit failed:\n{done.stderr}")
        assert json.loads(done.stdout)["embedded"] == 0, "the CLI fit missed the cache"

    summary = {
        "embeddings": args.count,
        "labels": args.labels,
        "embedding_size": report.head.embedding_size,
        "c": report.c,
        "validation_accuracy": report.accuracy,
        "library_s": min(results["library"]),
        "cli_s": min(results["cli"]),
        "cli_cpu_s": min(results["cli_cpu"]),
        "runs": results,
        "loadavg": loadavg(),
    }
    print(
        f"refit from the cache, {args.count} embeddings x {report.head.embedding_size}, "
        f"{args.labels} labels (C={report.c:g} chosen from {len(report.c_scores)}, "
        f"validation accuracy {report.accuracy:.3f}):\n"
        f"  library fit_head            {summary['library_s']:.2f} s\n"
        f"  cli `vithybrid fit` process {summary['cli_s']:.2f} s wall, "
        f"{summary['cli_cpu_s']:.2f} s CPU (goal < 5 s; imports and model load included)\n"
        f"  load average {summary['loadavg']}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
