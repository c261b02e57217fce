"""How long `vithybrid report` takes at scale, and how the page copes in chromium.

    python benchmarks/bench_report.py [--images 2000] [--rows 100000] [--work DIR] [--browser]

1. thumbnails: `--images` camera-like JPEGs (1600x1200, made once in WORK/images), a classify
   output naming them, `vithybrid report` timed as a process: the first run makes every
   thumbnail, the second reuses them (the rerun cost).
2. the page: a classify output of `--rows` records (1,000 labels) naming files that do not
   exist, so the number is the page's own cost (reading, grouping, JSON, writing), and its size.
3. with --browser: that page opened in headless chromium (Debian's, through playwright): time to
   the first page of tiles, to a filter's result and to the next page.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image


def make_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img{i:06d}.jpg" for i in range(count)]
    rng = random.Random(0)
    base = None
    for path in paths:
        if path.exists():
            continue
        if base is None:
            import skimage.data

            base = Image.fromarray(skimage.data.astronaut()).resize((1600, 1200))
        shift = rng.randint(0, 255)
        base.point(lambda v, s=shift: (v + s) % 256).save(path, quality=90)
    return paths


def record(path: str, rng: random.Random, labels: int) -> dict:
    scores = sorted((rng.random() for _ in range(5)), reverse=True)
    total = sum(scores) * rng.uniform(1.0, 1.6)
    ranks = rng.sample(range(labels), 5)
    return {"path": path, "top_k": [{"index": r, "label": f"label {r}", "score": s / total}
                                    for r, s in zip(ranks, scores, strict=True)]}  # fmt: skip


def write_results(target: Path, paths: list[str], labels: int) -> None:
    rng = random.Random(1)
    with open(target, "w") as file:
        for path in paths:
            file.write(json.dumps(record(path, rng, labels)) + "\n")


def timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of `command`: CPU time moves less with other load."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def browse(page: Path) -> dict:
    from playwright.sync_api import expect, sync_playwright

    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-sync"]  # fmt: skip
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=flags)
        tab = browser.new_page()
        started = time.perf_counter()
        tab.goto(page.resolve().as_uri())
        tab.wait_for_selector("#groups .tile")
        opened = time.perf_counter() - started
        tiles = tab.locator("#groups .tile").count()
        started = time.perf_counter()
        tab.fill("#filter", "label 7")
        expect(tab.locator("#shown")).to_contain_text("of")
        filtered = time.perf_counter() - started
        started = time.perf_counter()
        tab.locator("#pager-top .next").click()
        expect(tab.locator("#pager-top .position")).to_contain_text("page 2 of")
        paged = time.perf_counter() - started
        browser.close()
    return {"open_s": opened, "tiles_drawn": tiles, "filter_s": filtered, "next_page_s": paged}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=Path(__file__).parent / ".cache" / "report")
    parser.add_argument("--browser", action="store_true")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    report = [sys.executable, "-m", "vithybrid_cli", "report", "--quiet"]
    results: dict[str, object] = {"cpus": os.cpu_count(), "load": os.getloadavg()[0]}

    images = make_images(work / "images", args.images)
    write_results(work / "photos.jsonl", [str(p) for p in images], 1000)
    for stale in (work / "photos_files").glob("*"):
        stale.unlink()
    first, first_cpu = timed([*report, str(work / "photos.jsonl"), "-o", str(work / "photos.html")])
    again, _ = timed([*report, str(work / "photos.jsonl"), "-o", str(work / "photos.html")])
    per_image = 1000 * first_cpu / args.images
    results.update(images=args.images, first_s=first, cpu_ms_per_image=per_image, rerun_s=again)

    paths = [f"missing/dir{i // 1000}/img{i:06d}.jpg" for i in range(args.rows)]
    write_results(work / "rows.jsonl", paths, 1000)
    page_s, page_cpu = timed([*report, str(work / "rows.jsonl"), "-o", str(work / "rows.html")])
    results.update(rows=args.rows, page_s=page_s, page_cpu_s=page_cpu,
                   page_mb=(work / "rows.html").stat().st_size / 1e6)  # fmt: skip
    if args.browser:
        results.update(browse(work / "rows.html"))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
