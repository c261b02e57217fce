#!/usr/bin/env python3
"""vithybrid side by side with the CPU inference runtimes: ONNX Runtime and OpenVINO.

The same weights everywhere: google's full configuration with seeded random weights
(bench.ensure_checkpoint), loaded by our own `load_model` in float32 and exported once with
`torch.onnx.export` (logits of the whole batch) to ONNX, then converted from that ONNX file to
OpenVINO IR. Each peer is run the way a competent user would run it:

  onnxruntime  InferenceSession (CPU provider, all graph optimizations, one thread per core),
               DataLoader(num_workers=2) PIL decode + resize/crop/normalize, batch 8, float32
               (ONNX Runtime's only CPU precision for this model)
  openvino     compile_model(..., "CPU", PERFORMANCE_HINT=THROUGHPUT) with a model cache, its
               default precision (bf16 where the CPU has it; the one it used is recorded), the
               same DataLoader feeding an AsyncInferQueue, batch 8 (the IR has batch 8 fixed;
               a short last batch is padded)
  ours         `vithybrid classify DIR --model CKPT -o out.jsonl`, default settings
  ours-openvino  the same with `--backend openvino`: our model converted and compiled by
               OpenVINO in the package (its default precision), the cache warmed by a first run
  timm-fp32    timm's recipe (bench.worker_timm) in float32

Sections (--only):

  parity     the exported models' float32 logits against ours on 8 of the photos (abort if
             they differ), and each default precision's agreement with float32
  process    each pipeline as a whole process (start-up, imports, load, decoding, writing top-5)
  model      the forward pass alone at 384x384: ours bf16 and float32, timm float32, ONNX
             Runtime, OpenVINO (its throughput hint: as many batches in flight as it asks for)
  single     the forward pass on one thread in images per CPU second (ours bf16, the peers
             at their default precision): what a shared machine's load disturbs least
  roofline   the CPU's GEMM rate in float32 and bf16 (torch.mm, oneDNN), on all threads and per
             CPU second on one, and what it allows for the model's 134 GFLOPs per image
  profile    where the time goes, on one thread each: torch's profiler for ours bf16,
             OpenVINO's perf counters (layer type and the kernel it chose)

    python benchmarks/bench_peers.py --count 48 --repeat 3     # interleaved, median and spread
    python benchmarks/bench_peers.py --only parity,model --iters 4
    python benchmarks/bench_peers.py --only single,roofline,profile --models ours-bf16,openvino

The photos are made with ../shared/bench/make_photos.py where it is found; else pass --photos.

Needs the `bench` extra (onnx, onnxscript, onnxruntime, openvino) and the dev extras. Numbers are
only comparable within one run; rounds run the pipelines in alternating order (A B C D, D C B A)
so drift in the machine's speed falls on all of them alike. CPU seconds of each process are
printed beside its wall time: they move less than wall time when other work shares the cores.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

BATCH = bench.BATCH
SIDE = 384
PIPELINES = ("ours", "ours-openvino", "timm-fp32", "onnxruntime", "openvino")
MODELS = ("ours-bf16", "ours-openvino", "ours-fp32", "timm-fp32", "onnxruntime", "openvino")
OPENVINO_BACKEND = ("--backend", "openvino")
# the one-thread section runs each at its default precision (ours-bf16: torch's bf16 path)
SINGLE_MODELS = ("ours-bf16", "ours-openvino", "onnxruntime", "openvino")
SECTIONS = ("parity", "process", "model", "single", "roofline", "profile")
# The model's forward cost at 384x384, one image (family.MEMBERS, torch's FlopCounter)
GFLOPS_PER_IMAGE = 134.312
# float32 logits of an exported model against ours (|logit| ~ 1-5 with these random weights)
PARITY_ATOL = 1e-2


# ---------------------------------------------------------------------------- set-up


def ensure_exports(work: Path, ckpt: Path) -> tuple[Path, Path]:
    """(model.onnx, model.xml) exported once from our float32 model (a child process)."""
    target = work / "peers"
    onnx_path, xml_path = target / "model.onnx", target / "model.xml"
    if not (onnx_path.is_file() and xml_path.is_file()):
        target.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        bench.run_child(worker("export", str(ckpt), str(onnx_path), str(xml_path)))
        print(f"exported to ONNX and OpenVINO IR in {time.perf_counter() - started:.0f} s")
    return onnx_path, xml_path


def worker(kind: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", kind, *args]


def child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_process(name: str, photos: Path, ckpt: Path, exports: dict, out_dir: Path) -> dict:
    """One pipeline as a whole process; its wall time and CPU seconds."""
    count = len(list(photos.glob("*.jpg")))
    cpu = child_cpu_s()
    if name in ("ours", "ours-openvino"):
        options = OPENVINO_BACKEND if name == "ours-openvino" else ()
        result = bench.bench_pipeline("ours", photos, ckpt, out_dir, options=options)
    else:
        if name == "timm-fp32":
            args = bench.worker("timm", str(photos), str(ckpt), str(out_dir), "fp32")
        else:
            args = worker(name, str(photos), str(exports[name]), str(out_dir))
        wall, payload, _ = bench.run_child(args)
        result = {"wall_s": wall, "images": count, "img_s": count / wall, **payload}
    result["cpu_s"] = child_cpu_s() - cpu
    return result


def warm_openvino_backend(photos: Path, ckpt: Path, out_dir: Path) -> dict:
    """`classify ONE.jpg --backend openvino` twice: the first converts and compiles our model
    into the cache (untimed elsewhere, as a user's first run), the second finds it there."""
    image = sorted(photos.glob("*.jpg"))[0]
    cmd = [sys.executable, "-m", "vithybrid_cli", "classify", str(image), "--model", str(ckpt)]
    cmd += ["-o", str(out_dir / "warm.jsonl"), *OPENVINO_BACKEND]
    first, _, _ = bench.run_child(cmd)
    second, _, _ = bench.run_child(cmd)
    print(
        f"--backend openvino, one photo: first run {first:.1f} s (converts and compiles), "
        f"second {second:.1f} s (cached in {os.environ['VITHYBRID_CACHE']})"
    )
    return {"first_s": first, "second_s": second}


def bench_model(name: str, ckpt: Path, exports: dict, iters: int) -> dict:
    if name in ("onnxruntime", "openvino"):
        args = worker(f"model-{name}", str(exports[name]), str(iters))
    else:
        args = bench.worker("model", name, str(ckpt), str(iters))
    return bench.run_child(args)[1]


# ---------------------------------------------------------------------------- the peers


def peer_transform():
    """Resize the short side to 384 (bicubic), centre-crop 384, scale to [-1, 1]: google's
    preprocessor, as timm's transform factory builds it."""
    from timm.data import create_transform

    return create_transform(
        input_size=(3, SIDE, SIDE),
        interpolation="bicubic",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        crop_pct=1.0,
    )


def photo_files(photos: str) -> list[str]:
    return [str(p) for p in sorted(Path(photos).glob("*.jpg"))]


def ort_session(onnx_path: str, threads: int | None = None):
    import os

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    return ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])


def ov_compiled(
    xml_path: str, precision: str | None = None, perf_count: bool = False, threads: int = 0
):
    """OpenVINO's CPU plugin with the throughput hint and a model cache beside the IR;
    `precision` "f32" to override its default (bf16 where the CPU has it); `threads` 1 for one
    stream on one thread instead."""
    import openvino as ov

    core = ov.Core()
    core.set_property({"CACHE_DIR": str(Path(xml_path).parent / "ov-cache")})
    config = {"PERFORMANCE_HINT": "THROUGHPUT"}
    if threads:
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    if perf_count:
        config["PERF_COUNT"] = True
    return core.compile_model(xml_path, "CPU", config)


def ov_precision(compiled) -> str:
    return str(compiled.get_property("INFERENCE_PRECISION_HINT")).split("'")[-2]


def top5(logits) -> list[list[int]]:
    import numpy as np

    return np.argsort(-logits, axis=-1)[:, :5].tolist()


def worker_onnxruntime(photos: str, onnx_path: str, out_dir: str) -> dict:
    started = time.perf_counter()
    session = ort_session(onnx_path)
    files = photo_files(photos)
    loader = bench.photo_loader(files, peer_transform())
    ready = time.perf_counter()
    results = []
    for batch in loader:
        results += top5(session.run(None, {"pixel_values": batch.numpy()})[0])
    done = time.perf_counter()
    Path(out_dir, "onnxruntime.json").write_text(json.dumps(results))
    return {**bench.timings(started, ready, done, len(files)), "precision": "float32"}


def worker_openvino(photos: str, xml_path: str, out_dir: str) -> dict:
    import numpy as np
    import openvino as ov

    started = time.perf_counter()
    compiled = ov_compiled(xml_path)
    files = photo_files(photos)
    loader = bench.photo_loader(files, peer_transform())
    results: dict[int, list[list[int]]] = {}

    def done_batch(request, info) -> None:
        index, count = info
        results[index] = top5(request.get_output_tensor(0).data[:count])

    queue = ov.AsyncInferQueue(compiled)
    queue.set_callback(done_batch)
    ready = time.perf_counter()
    for index, batch in enumerate(loader):
        pixels = batch.numpy()
        count = len(pixels)
        if count < BATCH:  # the IR's batch is fixed at 8
            pixels = np.concatenate([pixels, np.zeros((BATCH - count, *pixels.shape[1:]), "f4")])
        queue.start_async({0: pixels}, (index, count))
    queue.wait_all()
    done = time.perf_counter()
    ordered = [row for index in sorted(results) for row in results[index]]
    Path(out_dir, "openvino.json").write_text(json.dumps(ordered))
    return {
        **bench.timings(started, ready, done, len(files)),
        "precision": ov_precision(compiled),
        "requests": len(queue),
    }


def random_pixels(batch: int = BATCH):
    import numpy as np

    return np.random.default_rng(0).standard_normal((batch, 3, SIDE, SIDE), dtype=np.float32)


def worker_model_onnxruntime(onnx_path: str, iters: str) -> dict:
    started = time.perf_counter()
    session = ort_session(onnx_path)
    pixels = random_pixels()
    loaded = time.perf_counter()
    timed = bench.time_calls(lambda: session.run(None, {"pixel_values": pixels}), int(iters))
    return {"load_s": loaded - started, "precision": "float32", **timed}


def worker_model_openvino(xml_path: str, iters: str) -> dict:
    """Each timed call keeps the throughput hint's number of batches in flight at once."""
    import openvino as ov

    started = time.perf_counter()
    compiled = ov_compiled(xml_path)
    queue = ov.AsyncInferQueue(compiled)
    pixels = random_pixels()
    loaded = time.perf_counter()

    def forward() -> None:
        for _ in range(len(queue)):
            queue.start_async({0: pixels})
        queue.wait_all()

    timed = bench.time_calls(forward, int(iters), images=BATCH * len(queue))
    return {
        "load_s": loaded - started,
        "precision": ov_precision(compiled),
        "requests": len(queue),
        "streams": compiled.get_property("NUM_STREAMS"),
        **timed,
    }


def worker_single(name: str, path: str, iters: str) -> dict:
    """The forward pass on one thread, in images per CPU second: on a shared machine a thread
    pool's barrier waits on its slowest (descheduled) thread, one thread waits on nothing."""
    pixels = random_pixels()
    if name == "onnxruntime":
        session, precision = ort_session(path, threads=1), "float32"

        def forward():
            return session.run(None, {"pixel_values": pixels})
    elif name == "openvino":
        compiled = ov_compiled(path, threads=1)
        request, precision = compiled.create_infer_request(), ov_precision(compiled)

        def forward():
            return request.infer({0: pixels})
    elif name == "ours-openvino":
        from vithybrid_cli.pipeline.backends import load_run_model
        from vithybrid_cli.pipeline.runner import Runner, RunOptions
        from vithybrid_cli.pipeline.tasks import classify_task

        model = load_run_model(path, backend="openvino", threads=1)
        runner, task = Runner(model, RunOptions()), classify_task(5, {})
        precision = str(model.compute_dtype).removeprefix("torch.")

        def forward():
            return runner.forward(pixels, task)
    else:
        import torch

        from vithybrid_cli.model.weights import load_model
        from vithybrid_cli.pipeline.runner import Runner, RunOptions
        from vithybrid_cli.pipeline.runtime import prepare_model
        from vithybrid_cli.pipeline.tasks import classify_task

        torch.set_num_threads(1)
        runner = Runner(prepare_model(load_model(path, dtype=torch.bfloat16)), RunOptions())
        task = classify_task(5, {})
        precision = "bfloat16"

        def forward():
            return runner.forward(pixels, task)

    timed = bench.time_calls(forward, int(iters), clock=time.process_time)
    return {**timed, "precision": precision}


# ---------------------------------------------------------------------------- export and parity


def our_logits_module(ckpt: str, dtype: str = "float32"):
    """Our model as a module from pixels (B, 3, 384, 384) to logits (B, classes)."""
    import torch

    from vithybrid_cli.model.weights import load_model

    model = load_model(ckpt, dtype=getattr(torch, dtype))

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.model(pixel_values, cls_only=True).logits.float()

    return Logits().eval()


def worker_export(ckpt: str, onnx_path: str, xml_path: str) -> dict:
    """Our float32 model to ONNX (batch dynamic) and OpenVINO IR (batch 8), at its input size."""
    import openvino as ov
    import torch

    module = our_logits_module(ckpt)
    side = module.model.config.image_size
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.inference_mode():
        torch.onnx.export(
            module,
            (torch.zeros(2, 3, side, side),),
            onnx_path,
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            external_data=False,
            dynamo=True,
        )
    ir = ov.convert_model(onnx_path)
    ir.reshape([BATCH, 3, side, side])
    # save_model compresses weights to fp16 by default: keep ours exactly, in float32
    ov.save_model(ir, xml_path, compress_to_fp16=False)
    return {"image_size": side}


def compare(got, want) -> dict:
    import numpy as np

    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    cosine = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
    return {
        "max_abs": float(np.abs(got - want).max()),
        "max_logit": float(np.abs(want).max()),
        "min_cosine": float(cosine.min()),
        "top1_agree": float((got.argmax(-1) == want.argmax(-1)).mean()),
    }


def worker_parity(photos: str, ckpt: str, onnx_path: str, xml_path: str) -> dict:
    """Logits of 8 photos (the peers' preprocessing) from each runtime against ours float32."""
    import torch

    pixels = next(iter(bench.photo_loader(photo_files(photos)[:BATCH], peer_transform(), 0)))
    with torch.inference_mode():
        ours = our_logits_module(ckpt)(pixels).numpy()
        ours_bf16 = our_logits_module(ckpt, "bfloat16")(pixels).numpy()
    array = pixels.numpy()
    onnx = ort_session(onnx_path).run(None, {"pixel_values": array})[0]
    ov_f32 = ov_compiled(xml_path, "f32")
    ov_default = ov_compiled(xml_path)
    return {
        "onnxruntime f32": compare(onnx, ours),
        "openvino f32": compare(ov_f32.create_infer_request().infer({0: array})[0], ours),
        f"openvino default ({ov_precision(ov_default)})": compare(
            ov_default.create_infer_request().infer({0: array})[0], ours
        ),
        "ours bf16": compare(ours_bf16, ours),
    }


# ---------------------------------------------------------------------------- floor and profile


def worker_roofline() -> dict:
    """TFLOP/s of torch.mm (oneDNN) in float32 and bf16, for a square 4096 GEMM and the ViT's
    widest linear at batch 8 (4616 tokens x 768 -> 2304): on all threads by the wall clock, and
    on one thread per CPU second times the cores (the machine's rate, other load aside)."""
    import os

    import torch

    rates = {}
    threads = torch.get_num_threads()
    for dtype in (torch.float32, torch.bfloat16):
        for m, k, n in ((4096, 4096, 4096), (BATCH * 577, 768, 2304)):
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            name = f"{str(dtype).removeprefix('torch.')} {m}x{k}x{n}"
            for label, count, clock, scale in (
                ("wall", threads, time.perf_counter, 1),
                ("cpu", 1, time.process_time, os.cpu_count() or 1),
            ):
                torch.set_num_threads(count)
                timed = bench.time_calls(functools.partial(torch.mm, a, b), 4, 1, clock)
                rates[f"{name} {label}"] = 2 * m * k * n * timed["best_img_s"] * scale / 1e12
            torch.set_num_threads(threads)
    return rates


def worker_profile(ckpt: str, xml_path: str) -> dict:
    """Share of the forward by op, both on one thread so that times compare: ours bf16
    (torch profiler, self time) and OpenVINO (its perf counters, by layer type and the kernel
    it chose)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from vithybrid_cli.model.weights import load_model
    from vithybrid_cli.pipeline.runner import Runner, RunOptions
    from vithybrid_cli.pipeline.runtime import prepare_model
    from vithybrid_cli.pipeline.tasks import classify_task

    pixels = random_pixels()
    torch.set_num_threads(1)
    runner = Runner(prepare_model(load_model(ckpt, dtype=torch.bfloat16)), RunOptions())
    task = classify_task(5, {})
    runner.forward(pixels, task)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        runner.forward(pixels, task)
    ours = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}

    compiled = ov_compiled(xml_path, perf_count=True, threads=1)
    request = compiled.create_infer_request()
    request.infer({0: pixels})
    request.infer({0: pixels})
    theirs: dict[str, float] = {}
    for node in request.profiling_info:
        key = f"{node.node_type} [{node.exec_type}]"
        theirs[key] = theirs.get(key, 0.0) + node.real_time.total_seconds()
    return {"ours-bf16": top_shares(ours), f"openvino {ov_precision(compiled)}": top_shares(theirs)}


def top_shares(seconds: dict[str, float], count: int = 10) -> dict:
    total = sum(seconds.values())
    top = sorted(seconds.items(), key=lambda item: -item[1])[:count]
    return {"total_s": total, "top": [(key, value, value / total) for key, value in top]}


# ---------------------------------------------------------------------------- report


def spread(values: list[float]) -> str:
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:.2f}"
    return f"{median:.2f} ({min(values):.2f}–{max(values):.2f})"


def print_parity(parity: dict) -> bool:
    ok = True
    for name, row in parity.items():
        exact = "f32" in name and "default" not in name
        good = row["max_abs"] <= PARITY_ATOL and row["top1_agree"] == 1.0
        ok &= good or not exact
        verdict = ("ok" if good else "FAILED") if exact else "(information)"
        print(
            f"  {name:28s} max |diff| {row['max_abs']:.2e} (|logit| up to {row['max_logit']:.2f}),"
            f" cosine >= {row['min_cosine']:.6f}, top-1 agree {row['top1_agree']:.0%} {verdict}"
        )
    return ok


def print_profile(profile: dict) -> None:
    for name, entry in profile.items():
        print(f"  {name}: {entry['total_s']:.2f} s per batch of 8")
        for key, seconds, share in entry["top"]:
            print(f"    {share:6.1%} {seconds:7.3f} s  {key[:70]}")


def print_table(results: dict, roofline: dict | None) -> None:
    """The side-by-side table, Markdown, medians with the range of the rounds in brackets."""
    print(
        "\n| pipeline | whole process, s | img/s | CPU s | model alone, img/s "
        "| one thread, img per CPU s | precision |"
    )
    print("|---|---|---|---|---|---|---|")
    model_name = {"ours": "ours-bf16", "timm-fp32": "timm-fp32"}  # ours-openvino is both
    for name in PIPELINES:
        process = results.get(f"process:{name}", [])
        model = results.get(f"model:{model_name.get(name, name)}", [])
        single = results.get(f"single:{model_name.get(name, name)}", [])
        default = "bfloat16" if name.startswith("ours") else "float32"
        precision = (model or single or process or [{}])[0].get("precision", default)
        cells = [
            spread([r["wall_s"] for r in process]) if process else "",
            spread([r["img_s"] for r in process]) if process else "",
            spread([r["cpu_s"] for r in process]) if process else "",
            spread([r["img_s"] for r in model]) if model else "",
            spread([r["img_s"] for r in single]) if single else "",
        ]
        if any(cells):
            print(f"| {name} | " + " | ".join(cells) + f" | {precision} |")
    if "model:ours-fp32" in results:
        rates = [r["img_s"] for r in results["model:ours-fp32"]]
        print(f"| ours-fp32 (model alone) | | | | {spread(rates)} | | float32 |")
    if roofline:
        print("  GEMM rates: 'wall' on all threads, 'cpu' one thread per CPU second x cores")
        for name, rate in roofline.items():
            print(
                f"  GEMM {name}: {rate:.2f} TFLOP/s -> "
                f"{rate * 1e3 / GFLOPS_PER_IMAGE:.1f} img/s at {GFLOPS_PER_IMAGE} GFLOP/image"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=48, help="photos (default 48)")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"any of {','.join(SECTIONS)}")
    parser.add_argument("--pipelines", default=",".join(PIPELINES), help="a subset of them")
    parser.add_argument("--models", default=",".join(MODELS), help="a subset of them")
    parser.add_argument("--iters", type=int, default=4, help="timed calls per model run")
    bench.add_common_arguments(parser)
    args = parser.parse_args()

    if args.worker:
        workers = {
            "export": worker_export,
            "parity": worker_parity,
            "onnxruntime": worker_onnxruntime,
            "openvino": worker_openvino,
            "model-onnxruntime": worker_model_onnxruntime,
            "model-openvino": worker_model_openvino,
            "roofline": worker_roofline,
            "profile": worker_profile,
            "single": worker_single,
        }
        bench.run_worker(args.worker, workers)
        return

    only = [s.strip() for s in args.only.split(",") if s.strip()]
    pipelines = [s.strip() for s in args.pipelines.split(",") if s.strip()]
    models = [s.strip() for s in args.models.split(",") if s.strip()]
    unknown = (
        set(only) - set(SECTIONS) | set(pipelines) - set(PIPELINES) | set(models) - set(MODELS)
    )
    if unknown:
        parser.error(
            f"unknown {', '.join(sorted(unknown))}: sections {', '.join(SECTIONS)}, "
            f"pipelines {', '.join(PIPELINES)}, models {', '.join(MODELS)}"
        )
    missing = [p for p in ("onnx", "onnxscript", "onnxruntime", "openvino") if not installed(p)]
    if missing:
        sys.exit(f"{', '.join(missing)} missing: pip install -e '.[bench]'")
    args.work.mkdir(parents=True, exist_ok=True)
    photos = bench.ensure_photos(args.work, args.count, args.photos)
    ckpt = bench.ensure_checkpoint(args.work)
    onnx_path, xml_path = ensure_exports(args.work, ckpt)
    exports = {"onnxruntime": onnx_path, "openvino": xml_path}
    # --backend openvino caches its conversion here (children inherit it); timed runs find it warm
    os.environ["VITHYBRID_CACHE"] = str(args.work / "vithybrid-cache")
    out_dir = Path(tempfile.mkdtemp(prefix="vithybrid-peers-"))
    info = bench.machine_info()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    print(f"machine: {info.get('cpu')}, {info.get('cores')} cores, ISA {'+'.join(isa)}")
    print(
        f"torch {info.get('torch')}, timm {info.get('timm')}, python {info.get('python')}, "
        f"{peer_versions()}"
    )
    print(f"photos: {photos} ({len(list(photos.glob('*.jpg')))}), checkpoint: {ckpt}")
    print(f"load average at start: {bench.loadavg()}\n")

    report: dict = {"machine": {**info, "isa": isa}}
    if "ours-openvino" in pipelines + models and {"process", "model", "single"} & set(only):
        report["openvino_first_run"] = warm_openvino_backend(photos, ckpt, out_dir)
    if "parity" in only:
        parity = bench.run_child(
            worker("parity", str(photos), str(ckpt), str(onnx_path), str(xml_path))
        )[1]
        report["parity"] = parity
        print("parity against ours float32, 8 photos:")
        if not print_parity(parity):
            sys.exit("an exported model does not compute ours: not timing it")
    if "roofline" in only:
        report["roofline"] = bench.run_child(worker("roofline"))[1]
    results: dict[str, list[dict]] = {}
    for repeat in range(args.repeat):
        order = pipelines if repeat % 2 == 0 else pipelines[::-1]
        if "process" in only:
            for name in order:
                result = bench_process(name, photos, ckpt, exports, out_dir)
                result["loadavg"] = bench.loadavg()
                results.setdefault(f"process:{name}", []).append(result)
                print(
                    f"[{repeat + 1}] {name:12s} {result['wall_s']:6.1f} s whole process "
                    f"({result['img_s']:.2f} img/s, {result['cpu_s']:.0f} CPU s, "
                    f"load {result['loadavg']})"
                )
        if "model" in only:
            for name in models if repeat % 2 == 0 else models[::-1]:
                result = bench_model(name, ckpt, exports, args.iters)
                result["loadavg"] = bench.loadavg()
                results.setdefault(f"model:{name}", []).append(result)
                print(
                    f"[{repeat + 1}] model {name:12s} {result['img_s']:6.2f} img/s median, "
                    f"{result['best_img_s']:.2f} best (load {result['loadavg']})"
                )
        if "single" in only:
            singles = [name for name in models if name in SINGLE_MODELS]
            for name in singles if repeat % 2 == 0 else singles[::-1]:
                path = exports.get(name, ckpt)
                result = bench.run_child(worker("single", name, str(path), str(args.iters)))[1]
                result["loadavg"] = bench.loadavg()
                results.setdefault(f"single:{name}", []).append(result)
                print(
                    f"[{repeat + 1}] one thread {name:12s} {result['img_s']:6.3f} img per CPU s "
                    f"median, {result['best_img_s']:.3f} best (load {result['loadavg']})"
                )
    report["results"] = results
    if results or "roofline" in report:
        print_table(results, report.get("roofline"))
    if "profile" in only:
        report["profile"] = bench.run_child(worker("profile", str(ckpt), str(xml_path)))[1]
        print("\nprofile, one batch of 8:")
        print_profile(report["profile"])
    print(f"\nload average at end: {bench.loadavg()}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)


def installed(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


def peer_versions() -> str:
    import importlib.metadata as metadata

    found = []
    for package in ("onnxruntime", "openvino", "onnx"):
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            found.append(f"{package} missing")
    return ", ".join(found)


if __name__ == "__main__":
    main()
