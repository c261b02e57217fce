#!/usr/bin/env python3
"""Benchmark vithybrid against transformers' reference pipeline and timm's best CPU recipe.

Same photos (../shared/bench/make_photos.py), same weights (one full-size random checkpoint written
by transformers' save_pretrained, renamed for timm), one session, each pipeline in its own
subprocess so none shares another's thread pools, allocator or caches:

  reference  transformers ViTHybridForImageClassification + ViTHybridImageProcessor in
             pipeline("image-classification"), batch 8, float32
  timm       vit_base_r50_s16_384, DataLoader(num_workers=2), channels_last, bf16 autocast, batch 8
  ours       `vithybrid classify DIR --model CKPT -o out.jsonl`, default settings
  model      forward pass alone at 384x384, batch 8: ours bf16 (logits, as classify runs it;
             and all tokens, as embed --tokens), ours float32, timm bf16 autocast
  cold       `vithybrid classify one.jpg` as a new process vs model load + one forward + 1 s
  family     timm's hybrid family (--members, short names; default small, base and large 384):
             the forward pass alone (bf16, batch 8, the member's input size) and
             `vithybrid classify DIR --model MEMBER` as a whole process, on random weights in
             timm's hub layout; --record stores them for `vithybrid models`

Pipelines are timed as whole processes (interpreter start-up, imports, model load included).

    python benchmarks/bench.py                      # everything, once (~5 min on 2 cores)
    python benchmarks/bench.py --repeat 3           # best of three, runs interleaved
    python benchmarks/bench.py --only ours,model    # a subset
    python benchmarks/bench.py --count 16 --json results.json
    python benchmarks/bench.py --only family --members hybrid-small-384,hybrid-base-384 --record

Needs the dev extras (transformers 4.x, timm, scikit-image). Numbers are only comparable within
one run: other load on the machine changes them all, so the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PIPELINES = ("reference", "timm", "ours")
MODELS = ("ours-bf16", "ours-bf16-all-tokens", "ours-fp32", "timm-bf16")
SECTIONS = ("reference", "timm", "ours", "model", "cold", "family")
FAMILY_MEMBERS = "hybrid-small-384,hybrid-base-384,hybrid-large-384"
BATCH = 8


# ---------------------------------------------------------------------------- set-up


def find_make_photos() -> Path | None:
    for candidate in (
        REPO.parent / "shared" / "bench" / "make_photos.py",
        REPO / "shared" / "bench" / "make_photos.py",
    ):
        if candidate.is_file():
            return candidate
    return None


def ensure_photos(work: Path, count: int, photos: Path | None) -> Path:
    if photos is not None:
        return photos
    target = work / f"photos-{count}"
    if len(list(target.glob("*.jpg"))) == count:
        return target
    script = find_make_photos()
    if script is None:
        sys.exit("cannot find ../shared/bench/make_photos.py: pass --photos DIR")
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run(
        [sys.executable, str(script), str(target), "--count", str(count)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return target


def ensure_checkpoint(work: Path) -> Path:
    """google's full configuration with seeded random weights (no network needed)."""
    target = work / "checkpoint-full"
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    sys.path.insert(0, str(REPO / "tests"))
    from checkpoints import make_checkpoint

    shutil.rmtree(target, ignore_errors=True)
    make_checkpoint(target, "full", seed=0)
    return target


def ensure_family_checkpoint(work: Path, member: str) -> Path:
    """A family member's full architecture with seeded random weights in timm's hub layout
    (timm's save_for_hf), as its Hub repo has it; random weights cost the same compute."""
    from vithybrid_cli.model.weights import MODEL_ALIASES

    target = work / "family" / member
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    sys.path.insert(0, str(REPO / "tests"))
    from checkpoints import make_timm_model, save_timm_checkpoint

    shutil.rmtree(target, ignore_errors=True)
    model = make_timm_model(MODEL_ALIASES[member].removeprefix("timm/"))
    save_timm_checkpoint(model, target)
    return target


def machine_info() -> dict:
    info = {"python": platform.python_version(), "cores": os.cpu_count()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = re.search(r"Model name:\s*(.+)", lscpu)
        info["cpu"] = model.group(1).strip() if model else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    try:
        flags = Path("/proc/cpuinfo").read_text()
        info["bf16"] = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
        mem = re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text())
        info["memory_gb"] = round(int(mem.group(1)) / 2**20, 1) if mem else None
    except OSError:
        pass
    versions = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, torch, timm, transformers, PIL; print(json.dumps({'torch': "
            "torch.__version__, 'timm': timm.__version__, 'transformers': "
            "transformers.__version__, 'pillow': PIL.__version__, 'threads': "
            "torch.get_num_threads()}))",
        ],
        capture_output=True,
        text=True,
    )
    if versions.returncode == 0:
        info.update(json.loads(versions.stdout.strip().splitlines()[-1]))
    return info


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


# ---------------------------------------------------------------------------- running children


def run_child(args: list[str], env_extra: dict | None = None) -> tuple[float, dict, str]:
    """(wall seconds of the whole process, the JSON its last stdout line holds, stderr)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(env_extra or {})
    started = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])}... failed ({proc.returncode}):\n{proc.stderr}")
    payload = {}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            payload = json.loads(line)
            break
    return wall, payload, proc.stderr


def worker(kind: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", kind, *args]


def bench_pipeline(
    name: str,
    photos: Path,
    ckpt: Path,
    out_dir: Path,
    command: str = "classify",
    options: tuple[str, ...] = (),
) -> dict:
    """A whole process; `command` embed (to .npy) for a features-only checkpoint; `options`
    more command-line options for ours (`--backend openvino`)."""
    count = len(list(photos.glob("*.jpg")))
    if name == "ours":
        out = out_dir / ("ours.jsonl" if command == "classify" else "ours.npy")
        out.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "vithybrid_cli", command, str(photos)]
        cmd += ["--model", str(ckpt), "-o", str(out), *options]
        wall, _, _ = run_child(cmd)
        import numpy as np

        rows = len(out.read_text().splitlines()) if command == "classify" else len(np.load(out))
        if rows != count:
            raise RuntimeError(f"vithybrid wrote {rows} results for {count} photos")
        return {"wall_s": wall, "images": count, "img_s": count / wall}
    wall, payload, _ = run_child(worker(name, str(photos), str(ckpt), str(out_dir)))
    return {"wall_s": wall, "images": count, "img_s": count / wall, **payload}


def bench_model(name: str, ckpt: Path, iters: int) -> dict:
    _, payload, _ = run_child(worker("model", name, str(ckpt), str(iters)))
    return payload


def bench_cold(photos: Path, ckpt: Path, out_dir: Path) -> dict:
    """`vithybrid classify one.jpg` as a fresh process, and its parts measured separately."""
    image = sorted(photos.glob("*.jpg"))[0]
    out = out_dir / "cold.jsonl"
    cmd = [sys.executable, "-X", "importtime", "-m", "vithybrid_cli", "classify", str(image)]
    cmd += ["--model", str(ckpt), "-o", str(out)]
    wall, _, stderr = run_child(cmd)
    imports = {}
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if match and len(match.group(2)) <= 1:  # top-level imports only
            imports[match.group(3)] = int(match.group(1)) / 1e6
    parts = run_child(worker("parts", str(image), str(ckpt)))[1]
    plain_wall = run_child(cmd[:1] + cmd[3:])[0]  # the same without -X importtime
    top = sorted(imports.items(), key=lambda item: -item[1])[:6]
    # "model load" = import torch and the package + load_model: torch's import alone is ~1 s.
    budget = parts["import_s"] + parts["load_s"] + parts["forward_s"] + 1.0
    return {
        "wall_s": plain_wall,
        "wall_importtime_s": wall,
        "budget_s": budget,
        "overhead_s": plain_wall - (budget - 1.0),
        "within_budget": plain_wall <= budget,
        "top_imports_s": dict(top),
        **parts,
    }


# ---------------------------------------------------------------------------- workers (children)


def hf_to_timm(state: dict) -> dict:
    """transformers' names -> ours (weights.convert_state_dict) -> timm's (TIMM_TABLE inverted)."""
    from vithybrid_cli.model.weights import convert_state_dict

    ours, unknown = convert_state_dict(state, "hf")
    assert not unknown, unknown
    inverse = [
        (r"^embeddings\.cls_token$", "cls_token"),
        (r"^embeddings\.position_embeddings$", "pos_embed"),
        (r"^embeddings\.patch_embed\.backbone\.", "patch_embed.backbone."),
        (r"^embeddings\.patch_embed\.projection\.", "patch_embed.proj."),
        (r"^blocks\.(\d+)\.attention\.", r"blocks.\1.attn."),
        (r"^classifier\.", "head."),
    ]
    timm_state = {}
    for key, tensor in ours.items():
        for pattern, replacement in inverse:
            key, hits = re.subn(pattern, replacement, key)
            if hits:
                break
        timm_state[key] = tensor
    return timm_state


def timm_model(ckpt: Path):
    import timm
    import torch
    from safetensors.torch import load_file

    model = timm.create_model("vit_base_r50_s16_384", pretrained=False)
    model.load_state_dict(hf_to_timm(load_file(str(ckpt / "model.safetensors"))), strict=True)
    return model.eval().to(memory_format=torch.channels_last)


def timings(started: float, ready: float, done: float, images: int) -> dict:
    return {
        "setup_s": ready - started,
        "run_s": done - ready,
        "steady_img_s": images / (done - ready),
    }


def worker_reference(photos: str, ckpt: str, out_dir: str) -> dict:
    import torch
    from transformers import pipeline
    from transformers.models.deprecated.vit_hybrid import (
        ViTHybridForImageClassification,
        ViTHybridImageProcessor,
    )

    started = time.perf_counter()
    # model_type "vit-hybrid" is not in 4.x's auto mapping, so the pipeline gets the objects.
    model = ViTHybridForImageClassification.from_pretrained(ckpt, torch_dtype=torch.float32)
    processor = ViTHybridImageProcessor.from_pretrained(ckpt)
    pipe = pipeline("image-classification", model=model, image_processor=processor, device=-1)
    ready = time.perf_counter()
    files = [str(p) for p in sorted(Path(photos).glob("*.jpg"))]
    results = pipe(files, batch_size=BATCH, top_k=5)
    done = time.perf_counter()
    top1 = [r[0]["label"] for r in results]
    Path(out_dir, "reference.json").write_text(json.dumps(top1))
    return timings(started, ready, done, len(files))


def photo_loader(files: list[str], transform, num_workers: int = 2):
    """The usual PyTorch input pipeline: PIL decode + a transform in DataLoader workers, batch 8."""
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    class Photos(Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, index):
            return transform(Image.open(files[index]).convert("RGB"))

    return DataLoader(Photos(), batch_size=BATCH, num_workers=num_workers)


def worker_timm(photos: str, ckpt: str, out_dir: str, dtype: str = "bf16") -> dict:
    """timm's recipe; dtype "bf16" (autocast) or "fp32"."""
    import torch
    from timm.data import create_transform, resolve_data_config

    started = time.perf_counter()
    model = timm_model(Path(ckpt))
    transform = create_transform(**resolve_data_config({}, model=model))
    files = [str(p) for p in sorted(Path(photos).glob("*.jpg"))]
    loader = photo_loader(files, transform)
    ready = time.perf_counter()
    top1 = []
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")
    with torch.inference_mode(), autocast:
        for batch in loader:
            logits = model(batch.contiguous(memory_format=torch.channels_last))
            scores, indices = logits.float().softmax(-1).topk(5)
            top1 += indices[:, 0].tolist()
    done = time.perf_counter()
    Path(out_dir, "timm.json").write_text(json.dumps(top1))
    return timings(started, ready, done, len(files))


def worker_model(name: str, ckpt: str, iters: str) -> dict:
    import numpy as np
    import torch

    started = time.perf_counter()
    pixels = np.random.default_rng(0).standard_normal((BATCH, 3, 384, 384), dtype=np.float32)
    if name.startswith("timm"):
        model = timm_model(Path(ckpt))

        def forward():
            batch = torch.from_numpy(pixels).contiguous(memory_format=torch.channels_last)
            autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in name)
            with torch.inference_mode(), autocast:
                return model(batch)
    else:
        from vithybrid_cli.model.weights import load_model
        from vithybrid_cli.pipeline.runner import Runner, RunOptions
        from vithybrid_cli.pipeline.runtime import prepare_model
        from vithybrid_cli.pipeline.tasks import FunctionTask, classify_task

        dtype = torch.bfloat16 if "bf16" in name else torch.float32
        if name == "ours-openvino":  # our model, converted and run by OpenVINO (its default)
            from vithybrid_cli.pipeline.backends import load_run_model

            model = load_run_model(ckpt, backend="openvino")
        else:
            model = prepare_model(load_model(ckpt, dtype=dtype))
        runner = Runner(model, RunOptions(batch_size=BATCH))
        # What `classify` runs (logits only: the last block computes the CLS token alone); the
        # all-tokens variant is what `embed --pool mean` / `--tokens` and timm compute.
        task = (
            classify_task(5, {})
            if not name.endswith("all-tokens")
            else FunctionTask(lambda out: [out])
        )

        def forward():
            return runner.forward(pixels, task)

    loaded = time.perf_counter()
    if name.startswith("timm"):
        precision = "bfloat16" if "bf16" in name else "float32"
    else:
        from vithybrid_cli.pipeline.backends import compute_dtype

        precision = str(compute_dtype(model)).removeprefix("torch.")
    return {"load_s": loaded - started, "precision": precision, **time_calls(forward, int(iters))}


def time_calls(forward, iters: int, images: int = BATCH, clock=time.perf_counter) -> dict:
    """Median and best img/s of `iters` calls of `forward` (each `images` images), after one
    warm-up call (oneDNN and the peers pick and cache their kernels on the first); with
    `clock=time.process_time`, images per CPU second of this process."""
    forward()
    times = []
    for _ in range(iters):
        start = clock()
        forward()
        times.append(clock() - start)
    return {
        "img_s": images / statistics.median(times),
        "best_img_s": images / min(times),
        "times_s": [round(t, 3) for t in times],
    }


def worker_family_model(ckpt: str, iters: str) -> dict:
    """A family member's forward pass alone, as classify runs it (embed --pool cls for a
    features-only checkpoint): bf16, batch 8, its size."""
    import numpy as np
    import torch

    from vithybrid_cli.model.weights import load_model
    from vithybrid_cli.pipeline.runner import Runner, RunOptions
    from vithybrid_cli.pipeline.runtime import prepare_model
    from vithybrid_cli.pipeline.tasks import classify_task, embed_task

    model = prepare_model(load_model(ckpt, dtype=torch.bfloat16))
    side = model.config.image_size
    pixels = np.random.default_rng(0).standard_normal((BATCH, 3, side, side), dtype=np.float32)
    runner = Runner(model, RunOptions(batch_size=BATCH))
    task = classify_task(5, {}) if model.config.num_labels else embed_task("cls")
    runner.forward(pixels, task)  # warm-up
    times = []
    for _ in range(int(iters)):
        start = time.perf_counter()
        runner.forward(pixels, task)
        times.append(time.perf_counter() - start)
    return {"img_s": BATCH / statistics.median(times), "best_img_s": BATCH / min(times)}


def bench_family(member: str, photos: Path, work: Path, out_dir: Path, iters: int) -> dict:
    ckpt = ensure_family_checkpoint(work, member)
    _, model, _ = run_child(worker("family-model", str(ckpt), str(iters)))
    features_only = json.loads((ckpt / "config.json").read_text()).get("num_classes", 1) == 0
    command = "embed" if features_only else "classify"
    process = bench_pipeline("ours", photos, ckpt, out_dir, command)
    return {
        "model_img_s": model["img_s"],
        "process_img_s": process["img_s"],
        "img_s": process["img_s"],
    }


def record_family(summary: dict, info: dict) -> Path:
    """Store the family's best throughputs for `vithybrid models` (family_throughput.json)."""
    from vithybrid_cli.model.family import THROUGHPUT_FILE, read_throughput

    data = read_throughput() or {}
    members = data.get("members", {})
    for name, entry in summary.items():
        if name.startswith("family:"):
            best = entry["runs"]
            members[name.removeprefix("family:")] = {
                "model_img_s": round(max(r["model_img_s"] for r in best), 2),
                "process_img_s": round(max(r["process_img_s"] for r in best), 2),
            }
    machine = f"{info.get('cpu')}, {info.get('cores')} cores, torch {info.get('torch')}"
    THROUGHPUT_FILE.write_text(json.dumps({"machine": machine, "members": members}, indent=2))
    return THROUGHPUT_FILE


def worker_parts(image: str, ckpt: str) -> dict:
    """The cold CLI's parts: imports, model load, one forward, in a fresh process."""
    t0 = time.perf_counter()
    import torch  # noqa: F401

    from vithybrid_cli.data.inputs import iter_inputs
    from vithybrid_cli.model.weights import load_model
    from vithybrid_cli.pipeline.runner import Runner, RunOptions
    from vithybrid_cli.pipeline.runtime import prepare_model
    from vithybrid_cli.pipeline.tasks import classify_task

    t1 = time.perf_counter()
    model = prepare_model(load_model(ckpt, dtype="bfloat16"))
    t2 = time.perf_counter()
    runner = Runner(model, RunOptions())
    results = list(runner.run(iter_inputs([image]), classify_task(5, model.config.id2label)))
    t3 = time.perf_counter()
    assert results and results[0].ok, results
    return {"import_s": t1 - t0, "load_s": t2 - t1, "forward_s": t3 - t2}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--photos, --work, --json and the hidden --worker, as each benchmark here takes them."""
    parser.add_argument("--photos", type=Path, help="use these JPEGs instead of making them")
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / ".cache")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)


def run_worker(argv: list[str], workers: dict) -> None:
    """In a child: call the worker `argv[0]` names with the rest, print its JSON for run_child."""
    kind, *rest = argv
    print(json.dumps(workers[kind](*rest)))


# ---------------------------------------------------------------------------- report


def summarize(runs: list[dict]) -> dict:
    rates = [r["img_s"] for r in runs]
    return {"img_s": max(rates), "median_img_s": statistics.median(rates), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=64, help="photos (default 64)")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved repetitions")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"any of {','.join(SECTIONS)}")
    parser.add_argument("--iters", type=int, default=5, help="timed forwards per model run")
    add_common_arguments(parser)
    parser.add_argument(
        "--members", default=FAMILY_MEMBERS, help=f"family short names (default {FAMILY_MEMBERS})"
    )
    parser.add_argument(
        "--record", action="store_true", help="store family results for `vithybrid models`"
    )
    args = parser.parse_args()

    if args.worker:
        workers = {
            "reference": worker_reference,
            "timm": worker_timm,
            "model": worker_model,
            "parts": worker_parts,
            "family-model": worker_family_model,
        }
        run_worker(args.worker, workers)
        return

    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}; use {', '.join(SECTIONS)}")
    args.work.mkdir(parents=True, exist_ok=True)
    photos = ensure_photos(args.work, args.count, args.photos)
    ckpt = ensure_checkpoint(args.work) if set(only) - {"family"} else None
    members = [m.strip() for m in args.members.split(",") if m.strip()]
    out_dir = Path(tempfile.mkdtemp(prefix="vithybrid-bench-"))
    info = machine_info()
    print(
        f"machine: {info.get('cpu')}, {info.get('cores')} cores, {info.get('memory_gb')} GB, "
        f"bf16: {'+'.join(info.get('bf16', [])) or 'no'}"
    )
    print(
        f"torch {info.get('torch')} (threads {info.get('threads')}), timm {info.get('timm')}, "
        f"transformers {info.get('transformers')}, pillow {info.get('pillow')}, "
        f"python {info.get('python')}"
    )
    print(f"photos: {photos} ({len(list(photos.glob('*.jpg')))}), checkpoint: {ckpt}")
    print(f"load average at start: {loadavg()}\n")

    results: dict[str, list[dict]] = {}
    for repeat in range(args.repeat):
        for name in PIPELINES:
            if name in only:
                result = bench_pipeline(name, photos, ckpt, out_dir)
                result["loadavg"] = loadavg()
                results.setdefault(name, []).append(result)
                print(
                    f"[{repeat + 1}] {name:10s} {result['img_s']:6.2f} img/s  "
                    f"({result['wall_s']:.1f} s whole process, load {result['loadavg']})"
                )
        if "model" in only:
            for name in MODELS:
                result = bench_model(name, ckpt, args.iters)
                result["loadavg"] = loadavg()
                results.setdefault(f"model:{name}", []).append(result)
                print(
                    f"[{repeat + 1}] model {name:10s} {result['img_s']:6.2f} img/s median, "
                    f"{result['best_img_s']:.2f} best (load {result['loadavg']})"
                )
        if "cold" in only:
            result = bench_cold(photos, ckpt, out_dir)
            result["img_s"] = 1 / result["wall_s"]
            result["loadavg"] = loadavg()
            results.setdefault("cold", []).append(result)
            print(
                f"[{repeat + 1}] cold classify one photo: {result['wall_s']:.2f} s whole process; "
                f"in a fresh process import {result['import_s']:.2f} + load {result['load_s']:.2f} "
                f"+ forward {result['forward_s']:.2f} s: {result['overhead_s']:.2f} s more"
            )

        if "family" in only:
            for member in members:
                result = bench_family(member, photos, args.work, out_dir, args.iters)
                result["loadavg"] = loadavg()
                results.setdefault(f"family:{member}", []).append(result)
                print(
                    f"[{repeat + 1}] {member:18s} model {result['model_img_s']:6.2f} img/s, "
                    f"classify {result['process_img_s']:6.2f} img/s whole process "
                    f"(load {result['loadavg']})"
                )

    summary = {name: summarize(runs) for name, runs in results.items()}
    print(f"\nsummary (best of {args.repeat}; load average at end: {loadavg()})")
    for name, entry in summary.items():
        print(f"  {name:18s} {entry['img_s']:7.2f} img/s   (median {entry['median_img_s']:.2f})")
    ours = summary.get("ours", {}).get("img_s")
    for base in ("reference", "timm"):
        if ours and base in summary:
            print(
                f"  ours / {base:9s} {ours / summary[base]['img_s']:6.2f}x   (goal "
                f"{'6' if base == 'reference' else '2'}x)"
            )
    if "model:ours-bf16" in summary and "model:timm-bf16" in summary:
        ratio = summary["model:ours-bf16"]["img_s"] / summary["model:timm-bf16"]["img_s"]
        print(f"  model ours-bf16 / timm-bf16 {ratio:.2f}x   (goal: ours >= 12 img/s)")
    if "cold" in summary:
        cold = min(summary["cold"]["runs"], key=lambda r: r["wall_s"])
        verdict = "within" if cold["within_budget"] else "OVER"
        print(
            f"  cold start {cold['wall_s']:.2f} s, {verdict} import + load + forward + 1 s = "
            f"{cold['budget_s']:.2f} s; slowest imports: "
            + ", ".join(f"{k} {v:.2f}s" for k, v in cold["top_imports_s"].items())
        )
    family = {n: e for n, e in summary.items() if n.startswith("family:")}
    for name, entry in family.items():
        print(
            f"  {name:26s} model {max(r['model_img_s'] for r in entry['runs']):7.2f} img/s, "
            f"classify {max(r['process_img_s'] for r in entry['runs']):7.2f} img/s"
        )
    small, base = family.get("family:hybrid-small-384"), family.get("family:hybrid-base-384")
    if small and base:
        ratio = max(r["process_img_s"] for r in small["runs"]) / max(
            r["process_img_s"] for r in base["runs"]
        )
        print(f"  classify small-384 / base-384 {ratio:.2f}x   (goal >= 2.5x)")
    if args.record and family:
        print(f"  recorded in {record_family(summary, info)}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": summary}, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
