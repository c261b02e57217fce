"""The fast default against the exact path, on the benchmark photos.

Default: dtype auto (bfloat16 on CPUs with native bf16 matmul), the fused oneDNN kernels it
enables, JPEG draft decoding, batching. Exact: float32 with full decoding, the path that matches
transformers to 1e-4 (tests/test_model.py). Both run the full-size model (google's configuration)
through the Runner, as `vithybrid classify` / `embed` do.

The checkpoint has random weights (no network here), and that needs care: a random head gives
near-uniform logits whose top two are often within 1e-3 of each other, where any rounding flips
top-1; and random CLS embeddings of different photographs share a large common component. So:

- CLS embeddings and logits must keep cosine >= 0.999 with float32's, photo by photo;
- the logit error is bounded (LOGIT_BOUND), and top-1 must match wherever float32's margin between
  its top two exceeds twice that bound (a flip there is an error, not a near-tie) and be among
  float32's top 5 everywhere;

Top-1 equality on google's trained head (real margins) needs the real weights, which cannot be
downloaded here; with random weights most float32 margins are near-ties, so the margin condition
above is what can honestly be asserted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vithybrid_cli.inputs import iter_inputs
from vithybrid_cli.runner import FunctionTask, Runner, RunOptions
from vithybrid_cli.runtime import prepare_model, resolve_dtype
from vithybrid_cli.weights import load_model

REPO = Path(__file__).resolve().parent.parent
COUNT = 16  # make_photos.py cycles 8 camera sizes (0.3-12 MP) over 10 photographs, some gray
SIZES = [(640, 480), (1024, 768), (1600, 1200), (2048, 1536), (4032, 3024), (480, 640),
         (3024, 4032), (1920, 1080)]  # fmt: skip
LOGIT_BOUND = 0.15  # |logit error|; float32 logits have std ~0.5 here (observed error <= 0.08)


@pytest.fixture(scope="module")
def bench_photos(tmp_path_factory) -> Path:
    """The shared benchmark photos (../shared/bench/make_photos.py), or, without the script,
    camera-sized JPEGs made the same way from scikit-image's photographs."""
    directory = tmp_path_factory.mktemp("bench-photos")
    script = REPO.parent / "shared" / "bench" / "make_photos.py"
    if script.is_file():
        subprocess.run(
            [sys.executable, str(script), str(directory), "--count", str(COUNT)],
            check=True,
            capture_output=True,
        )
        return directory
    from checkpoints import photographs

    sources = photographs(6)
    names = ["chelsea", "astronaut", "coffee", "rocket", "camera", "horse"]
    for i in range(COUNT):
        image = sources[i % len(sources)]
        image = image.convert("RGB") if i % 7 else image.convert("L")
        image = image.resize(SIZES[i % len(SIZES)], 3)
        image.save(directory / f"{i:03d}_{names[i % len(names)]}.jpg", quality=90)
    return directory


def run_pipeline(checkpoint: Path, photos: Path, dtype: torch.dtype, fast_decode: bool):
    """(CLS embeddings, logits, paths) through the Runner, float32 arrays."""
    model = prepare_model(load_model(checkpoint, dtype=dtype))
    runner = Runner(model, RunOptions(fast_decode=fast_decode))

    def task(output):
        cls = output.cls_embedding.float().cpu().numpy()
        logits = output.logits.float().cpu().numpy()
        return list(zip(cls, logits, strict=True))

    results = list(runner.run(iter_inputs([str(photos)]), FunctionTask(task)))
    assert results and all(result.ok for result in results), [r.error for r in results]
    cls = torch.from_numpy(np.stack([r.payload[0] for r in results]))
    logits = torch.from_numpy(np.stack([r.payload[1] for r in results]))
    return cls, logits, [r.path for r in results]


@pytest.fixture(scope="module")
def exact(full_checkpoint, bench_photos):
    return run_pipeline(full_checkpoint, bench_photos, torch.float32, fast_decode=False)


@pytest.mark.parametrize("dtype_name", ["auto", "bfloat16"])
def test_fast_default_tracks_float32(dtype_name, full_checkpoint, bench_photos, exact):
    dtype = resolve_dtype(dtype_name, torch.device("cpu"))
    if dtype_name == "bfloat16" and resolve_dtype("auto", torch.device("cpu")) == dtype:
        pytest.skip("auto is bfloat16 on this CPU: covered by the default case")
    cls, logits, paths = run_pipeline(full_checkpoint, bench_photos, dtype, fast_decode=True)
    ref_cls, ref_logits, ref_paths = exact
    assert paths == ref_paths and len(paths) == COUNT

    cls_cosine = F.cosine_similarity(cls, ref_cls, dim=-1)
    logit_cosine = F.cosine_similarity(logits, ref_logits, dim=-1)
    assert (cls_cosine >= 0.999).all(), dict(zip(paths, cls_cosine.tolist(), strict=True))
    assert (logit_cosine >= 0.999).all(), dict(zip(paths, logit_cosine.tolist(), strict=True))

    error = (logits - ref_logits).abs().max()
    assert error < LOGIT_BOUND, error
    top = ref_logits.topk(5, dim=-1)
    top1 = logits.argmax(-1)
    clear = (top.values[:, 0] - top.values[:, 1]) > 2 * LOGIT_BOUND
    assert torch.equal(top1[clear], top.indices[clear, 0])
    assert all(top1[i] in top.indices[i] for i in range(len(paths)))
