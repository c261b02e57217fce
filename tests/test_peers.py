"""The peer benchmark times our model: its ONNX and OpenVINO exports (benchmarks/bench_peers.py)
compute our float32 logits, and its parity check refuses a model that does not."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_peers  # noqa: E402


@pytest.mark.slow
def test_exported_models_compute_our_float32_logits(tiny_checkpoint, tmp_path):
    onnx_path, xml_path = tmp_path / "model.onnx", tmp_path / "model.xml"
    exported = bench_peers.worker_export(str(tiny_checkpoint), str(onnx_path), str(xml_path))
    assert exported == {"image_size": 64}
    pixels = np.random.default_rng(1).standard_normal((8, 3, 64, 64), dtype=np.float32)
    with torch.inference_mode():
        ours = bench_peers.our_logits_module(str(tiny_checkpoint))(torch.from_numpy(pixels))
    ours = ours.numpy()
    assert ours.shape == (8, 10)

    # ONNX keeps the batch dynamic; the OpenVINO IR has it fixed at the benchmark's 8
    onnx = bench_peers.ort_session(str(onnx_path)).run(None, {"pixel_values": pixels[:3]})[0]
    compiled = bench_peers.ov_compiled(str(xml_path), "f32")
    openvino = compiled.create_infer_request().infer({0: pixels})[0]
    assert bench_peers.ov_precision(compiled) == "float32"
    np.testing.assert_allclose(onnx, ours[:3], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(openvino, ours, rtol=1e-4, atol=1e-5)

    # the check the benchmark runs before timing anything
    assert bench_peers.print_parity({"onnxruntime f32": bench_peers.compare(onnx, ours[:3])})
    shuffled = bench_peers.compare(openvino[::-1], ours)
    assert not bench_peers.print_parity({"openvino f32": shuffled})
