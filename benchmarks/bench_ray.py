#!/usr/bin/env python3
"""The Ray engine against the local engine, on the same photos, side by side.

Each run is a whole `vithybrid classify` process (imports, model load, for Ray: starting a local
Ray and its workers), on the first N photos and on all 2N, runs interleaved:

  local   vithybrid classify PHOTOS -o labels.parquet --model M -q
  ray     vithybrid classify PHOTOS -o parts/ --engine ray --model M -q   (a local Ray, started
          and stopped by the command; RAY_ADDRESS is cleared)

Throughput is the marginal rate, N / (time for 2N - time for N): what each engine sustains once
started, the fixed costs (Ray's start-up is ~10-30 s) cancelled out. The end-to-end rate of the
2N run is printed beside it.

    python benchmarks/bench_ray.py                        # 32 + 32 photos, google-size model
    python benchmarks/bench_ray.py --count 16 --repeat 2  # best of two
    python benchmarks/bench_ray.py --model hybrid-tiny-224 --photos DIR

Without --model, a random checkpoint of google's size (tests/checkpoints.py) is written to a
temp folder; without --photos, ../shared/bench/make_photos.py makes them. Needs the ray extra.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENGINES = ("local", "ray")


def make_photos(folder: Path, count: int) -> Path:
    script = REPO.parent / "shared" / "bench" / "make_photos.py"
    if not script.exists():
        script = Path("/work/shared/bench/make_photos.py")
    subprocess.run([sys.executable, script, folder, "--count", str(count)], check=True)
    return folder


def make_checkpoint(folder: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    import checkpoints

    return checkpoints.make_checkpoint(folder, "full", 0)


def subsets(photos: Path, count: int, work: Path) -> dict[int, Path]:
    """Folders of the first `count` and the first 2 * `count` photos (symlinks)."""
    names = sorted(path.name for path in photos.iterdir() if path.suffix.lower() == ".jpg")
    if len(names) < 2 * count:
        raise SystemExit(f"{photos} has {len(names)} photos; --count {count} needs {2 * count}")
    folders = {}
    for size in (count, 2 * count):
        folder = work / f"photos{size}"
        folder.mkdir()
        for name in names[:size]:
            (folder / name).symlink_to(photos.resolve() / name)
        folders[size] = folder
    return folders


def run(engine: str, photos: Path, model: str, work: Path, extra: list[str]) -> float:
    """Seconds for one whole `vithybrid classify` process."""
    out = work / f"out-{engine}"
    shutil.rmtree(out, ignore_errors=True)
    target = ["-o", f"{out}.parquet"] if engine == "local" else ["-o", str(out), "--engine", "ray"]
    command = [sys.executable, "-m", "vithybrid_cli", "classify", str(photos), "--model", model,
               "-q", *target, *(extra if engine == "ray" else [])]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--count", type=int, default=32, help="N: runs on N and 2N photos")
    parser.add_argument("--repeat", type=int, default=1, help="best of this many")
    parser.add_argument("--photos", type=Path, help="a folder of JPEGs (default: make them)")
    parser.add_argument("--model", help="--model for both (default: a google-size random one)")
    parser.add_argument("--ray-args", default="", help="more options for the ray runs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ray-") as temp:
        work = Path(temp)
        photos = args.photos or make_photos(work / "photos", 2 * args.count)
        model = args.model or str(make_checkpoint(work / "model"))
        folders = subsets(photos, args.count, work)
        times: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.repeat):
            for size, folder in folders.items():
                for engine in ENGINES:  # side by side: interleaved, same load
                    seconds = run(engine, folder, model, work, args.ray_args.split())
                    times.setdefault((engine, size), []).append(seconds)
                    print(f"{engine:5} {size:4d} photos  {seconds:6.1f} s", flush=True)

    n, results = args.count, {}
    for engine in ENGINES:
        small, large = min(times[(engine, n)]), min(times[(engine, 2 * n)])
        results[engine] = {
            "seconds": {str(n): small, str(2 * n): large},
            "marginal_img_s": n / max(large - small, 1e-9),
            "end_to_end_img_s": 2 * n / large,
        }
    ratio = results["ray"]["marginal_img_s"] / results["local"]["marginal_img_s"]
    load = os.getloadavg()[0]
    print(f"\n{'engine':6} {'N s':>7} {'2N s':>7} {'marginal img/s':>15} {'end-to-end img/s':>17}")
    for engine, figures in results.items():
        seconds = figures["seconds"]
        print(f"{engine:6} {seconds[str(n)]:7.1f} {seconds[str(2 * n)]:7.1f} "
              f"{figures['marginal_img_s']:15.2f} {figures['end_to_end_img_s']:17.2f}")  # fmt: skip
    print(f"ray / local (marginal): {ratio:.0%}   load average {load:.1f}, {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(
            json.dumps({"results": results, "ratio": ratio, "load": load}, indent=1)
        )


if __name__ == "__main__":
    main()
