#!/usr/bin/env python3
"""Label a folder read from disk vs the same folder served over loopback HTTP; report img/s.

Both runs go through the same Runner (decode threads, batching, the model) in this process; only
the inputs differ: local paths, or http://127.0.0.1:PORT/NAME URLs answered by a standard-library
HTTP server in a thread of this process (so its work competes with ours, as a conservative
stand-in for a fast image server). The goal: HTTP within 10% of disk, since downloads run in the
decode threads and overlap with the model.

    python benchmarks/bench_remote.py                          # 32 photos, google's full config
    python benchmarks/bench_remote.py --photos DIR --model CKPT --repeat 3
    python benchmarks/bench_remote.py --model tiny --count 64  # decode-bound: the worst case

Without --model a full-size checkpoint with random weights is built once under --work (needs the
dev extras). `--model tiny` builds the test suite's tiny model: the model then costs next to
nothing and the figure measures download + decode overhead alone. Photos come from --photos DIR,
else shared/bench/make_photos.py (shared/ from $VITHYBRID_SHARED, beside this checkout, or beside
the main checkout of a git worktree), else scikit-image's sample photographs resized to 640x480
JPEGs. Runs are interleaved (disk, http, disk, http, ...) and the best of each is kept.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def shared_candidates() -> list[Path]:
    """Where the project's shared/ folder may be: $VITHYBRID_SHARED, beside or in this checkout,
    or beside the main checkout of a git worktree (found through git's common directory)."""
    found = [Path(os.environ["VITHYBRID_SHARED"])] if os.environ.get("VITHYBRID_SHARED") else []
    found += [REPO.parent / "shared", REPO / "shared"]
    try:
        common = subprocess.run(
            ["git", "rev-parse", "--path-format=absolute", "--git-common-dir"],
            cwd=REPO, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        common = ""
    if common:  # /work/main/.git for a worktree of /work/main: shared/ is /work/shared
        main = Path(common).parent
        found += [main.parent / "shared", main / "shared"]
    return found


def make_photos(target: Path, count: int) -> Path:
    if len(list(target.glob("*.jpg"))) == count:
        return target
    shutil.rmtree(target, ignore_errors=True)
    for shared in shared_candidates():
        script = shared / "bench" / "make_photos.py"
        if script.is_file():
            command = [sys.executable, str(script), str(target), "--count", str(count)]
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            return target
    sys.path.insert(0, str(REPO / "tests"))
    from checkpoints import photographs
    from PIL import Image

    target.mkdir(parents=True)
    sources = [image.convert("RGB") for image in photographs(4)]
    for i in range(count):
        image = sources[i % len(sources)].resize((640, 480), Image.BICUBIC)
        image.rotate(i * 7 % 360).save(target / f"photo-{i:04d}.jpg", quality=90)
    return target


def make_checkpoint(work: Path, size: str) -> Path:
    target = work / f"checkpoint-{size}"
    if (target / "config.json").is_file():
        return target
    sys.path.insert(0, str(REPO / "tests"))
    from checkpoints import make_checkpoint as build

    shutil.rmtree(target, ignore_errors=True)
    build(target, size, seed=0)
    return target


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def serve(folder: Path) -> tuple[ThreadingHTTPServer, threading.Thread]:
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def label(runner, specs: list[str]) -> tuple[float, list]:
    """(seconds, [(path, best label) or (path, error)]) for one pass over `specs`."""
    from vithybrid_cli.data.inputs import iter_inputs
    from vithybrid_cli.pipeline.tasks import classify_task

    task = classify_task(1, runner.model.config.id2label)
    started = time.perf_counter()
    results = [
        (r.path, r.payload[0][1] if r.ok else f"error: {r.error}")
        for r in runner.run(iter_inputs(specs), task)
    ]
    return time.perf_counter() - started, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, help="folder of images (default: generated)")
    parser.add_argument("--count", type=int, default=32, help="photos to generate")
    parser.add_argument("--model", help="checkpoint (default: full config, random weights)")
    work = Path(tempfile.gettempdir()) / "vithybrid-bench"
    parser.add_argument("--work", type=Path, default=work, help="generated files (kept)")
    parser.add_argument("--repeat", type=int, default=2, help="timed passes of each (best kept)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from vithybrid_cli.data.inputs import iter_inputs
    from vithybrid_cli.model.weights import load_model
    from vithybrid_cli.pipeline.runner import Runner, RunOptions
    from vithybrid_cli.pipeline.runtime import prepare_model, resolve_device, resolve_dtype

    args.work.mkdir(parents=True, exist_ok=True)
    folder = args.photos or make_photos(args.work / f"photos-{args.count}", args.count)
    if args.model in (None, "full", "tiny"):
        model_path = str(make_checkpoint(args.work, args.model or "full"))
    else:
        model_path = args.model
    device = resolve_device("auto")
    dtype = resolve_dtype("auto", device)
    model = prepare_model(load_model(model_path, device=device, dtype=dtype))
    runner = Runner(model, RunOptions(batch_size=args.batch_size, workers=args.workers))

    local = [item.path for item in iter_inputs([str(folder)])]
    server, thread = serve(folder)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    urls = [f"{base}/{urllib.parse.quote(os.path.relpath(path, folder))}" for path in local]
    try:
        _, reference = label(runner, local)  # warm-up: caches, allocator, first-call costs
        _, over_http = label(runner, urls)
        mismatches = [(a, b) for (_, a), (_, b) in zip(reference, over_http, strict=True) if a != b]
        if mismatches:
            sys.exit(f"HTTP labels differ from disk labels: {mismatches[:3]}")
        times: dict[str, list[float]] = {"disk": [], "http": []}
        for _ in range(args.repeat):
            times["disk"].append(label(runner, local)[0])
            times["http"].append(label(runner, urls)[0])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

    rates = {mode: len(local) / min(seconds) for mode, seconds in times.items()}
    figures = {
        "images": len(local),
        "model": model_path,
        "device": str(device),
        "batch_size": runner.batch_size,
        "workers": runner.workers,
        "disk_img_per_s": round(rates["disk"], 2),
        "http_img_per_s": round(rates["http"], 2),
        "http_vs_disk": round(rates["http"] / rates["disk"], 3),
        "runs_s": {mode: [round(s, 3) for s in seconds] for mode, seconds in times.items()},
        "loadavg": os.getloadavg(),
    }
    print(f"{len(local)} images, batch {runner.batch_size}, {runner.workers} decode threads")
    print(f"disk  {rates['disk']:8.2f} img/s")
    print(f"http  {rates['http']:8.2f} img/s   ({figures['http_vs_disk']:.1%} of disk)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
