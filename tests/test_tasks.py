"""The tasks' one home (pipeline/tasks.py): the labeling task the CLI, the API and the Ray step
build alike, the one pool check, and the API's load_model going through the one loader.

Every test uses conftest's tiny checkpoint (random weights, 10 labels, no pooler, 64x64 input)
or its features-only twin (no classifier, a pooler); nothing touches the network.
"""

from __future__ import annotations

import checkpoints
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import vithybrid_cli as vh
from vithybrid_cli.cli import app
from vithybrid_cli.model.head import Head, HeadError, save_head
from vithybrid_cli.model.identity import model_identity
from vithybrid_cli.model.weights import FeaturesOnlyError, load_model
from vithybrid_cli.pipeline import fit as fitting
from vithybrid_cli.pipeline.runner import RunOptions
from vithybrid_cli.pipeline.runtime import resolve_dtype
from vithybrid_cli.pipeline.tasks import (
    ClassifyTask,
    HeadTask,
    check_pool,
    classify_task,
    head_fingerprint,
    labeling_task,
)
from vithybrid_cli.ray import Classifier, Embedder

MISSING = "no-such-photo.jpg"  # a check made before any input is read never gets to it


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return load_model(tiny_checkpoint)


@pytest.fixture(scope="module")
def features_checkpoint(make_checkpoint_dir):
    """transformers' ViTHybridModel: no classifier head, a pooling layer."""
    return make_checkpoint_dir("tiny", 0, base=True)


@pytest.fixture(scope="module")
def features_only(features_checkpoint):
    return load_model(features_checkpoint)


def make_head(model, **changes) -> Head:
    """A 3-label head fitted (by construction) on `model` at its own input size."""
    identity = model_identity(model, RunOptions())
    size = identity.embedding_size
    rng = np.random.default_rng(0)
    fields = {
        "weight": rng.standard_normal((3, size)).astype(np.float32),
        "bias": np.zeros(3, np.float32),
        "mean": np.zeros(size, np.float32),
        "std": np.ones(size, np.float32),
        "labels": ["a", "b", "c"],
        "pool": "cls",
        "model": identity.model,
        "revision": identity.revision,
        "weights": identity.weights,
        "image_size": identity.image_size,
        "interpolate_pos_encoding": identity.interpolate_pos_encoding,
        "c": 1.0,
    }
    return Head(**{**fields, **changes})


def forward(model, batch: int = 2):
    pixels = torch.from_numpy(np.random.default_rng(1).random((batch, 3, 64, 64), np.float32))
    with torch.inference_mode():
        return model(pixels)


# ---------------------------------------------------------------------------- labeling_task


def test_without_a_head_it_is_the_checkpoints_classifier(tiny):
    task = labeling_task(tiny, RunOptions(), 3, min_score=0.2)
    alone = classify_task(3, tiny.config.id2label, 0.2)
    assert isinstance(task, ClassifyTask) and task.settings == alone.settings
    output = forward(tiny)
    assert task(output) == alone(output)
    best = task(output)[0]["top_k"][0]
    assert best["label"] == tiny.config.id2label[best["index"]]


def test_with_a_head_it_is_the_heads_task(tiny):
    head = make_head(tiny)
    task = labeling_task(tiny, RunOptions(), 2, head, min_score=0.5, head_source="mine")
    assert isinstance(task, HeadTask) and task.head is head
    assert task.settings == {
        "command": "classify",
        "top-k": 2,
        "min-score": 0.5,
        "head": head_fingerprint(head),
    }
    (first, _) = task(forward(tiny))
    assert len(first["top_k"]) == 2 and {e["label"] for e in first["top_k"]} <= {"a", "b", "c"}


def test_a_head_of_another_size_is_refused_naming_its_source(tiny):
    head = make_head(tiny, image_size=(96, 96))
    with pytest.raises(HeadError) as error:
        labeling_task(tiny, RunOptions(), 3, head, head_source="mine.safetensors")
    message = str(error.value)
    assert message.startswith("mine.safetensors was fitted at image size 96x96, this run uses")
    assert "--image-size 96x96" in message and "\n" not in message
    # ... and accepted where the run uses that size
    options = RunOptions(image_size=(96, 96), interpolate_pos_encoding=True)
    assert isinstance(labeling_task(tiny, options, 3, head), HeadTask)


def test_the_api_and_the_ray_step_refuse_a_head_the_same_way(tiny, tiny_checkpoint, tmp_path):
    head = make_head(tiny, image_size=(96, 96))
    path = tmp_path / "head.safetensors"
    save_head(head, path)
    with pytest.raises(HeadError, match=r"^head was fitted at image size 96x96"):
        vh.classify(tiny, [MISSING], head=head)
    with pytest.raises(HeadError, match=r"^head was fitted at image size 96x96"):
        vh.classify(tiny, [MISSING], head=path)  # a path: the default source still
    with pytest.raises(HeadError) as error:
        Classifier(str(tiny_checkpoint), head=str(path), dtype="float32")
    assert str(error.value).startswith(f"{path} was fitted at image size 96x96")


def test_a_features_only_checkpoint_is_refused_everywhere_before_any_input(
    features_only, features_checkpoint
):
    with pytest.raises(FeaturesOnlyError) as error:
        labeling_task(features_only, RunOptions(), 3)
    message = str(error.value)
    assert "no classifier head" in message and "embed" in message and "\n" not in message
    with pytest.raises(FeaturesOnlyError, match="no classifier head"):
        vh.classify(features_only, [MISSING])  # used to fail on the input, not the model
    with pytest.raises(FeaturesOnlyError, match="no classifier head"):
        Classifier(str(features_checkpoint), dtype="float32")


# ---------------------------------------------------------------------------- check_pool


def test_check_pool_accepts_what_the_model_can_pool(tiny, features_only):
    for pool in ("cls", "mean"):
        check_pool(tiny, pool)
        check_pool(features_only, pool)
    check_pool(features_only, "pooler")


def test_check_pool_refuses_in_one_line(tiny):
    with pytest.raises(ValueError) as error:
        check_pool(tiny, "pooler")
    name = tiny.checkpoint.name
    assert str(error.value) == f"{name} has no pooler layer: use --pool cls or --pool mean"
    with pytest.raises(ValueError) as error:
        check_pool(tiny, "max")
    assert str(error.value) == "unknown pool 'max': use one of cls, mean, pooler"


def test_every_caller_says_the_same_line_for_a_missing_pooler(tiny, tiny_checkpoint, tmp_path):
    photo = tmp_path / "cat.jpg"
    checkpoints.photographs(1)[0].save(photo)
    line = f"{tiny.checkpoint.name} has no pooler layer: use --pool cls or --pool mean"
    with pytest.raises(fitting.FitError) as error:
        fitting.fit_head(tiny, tmp_path, pool="pooler")
    assert str(error.value) == line
    with pytest.raises(ValueError) as error:
        vh.embed(tiny, [MISSING], pool="pooler")  # the API: before any input is read
    assert str(error.value) == line
    with pytest.raises(ValueError) as error:
        Embedder(str(tiny_checkpoint), pool="pooler", dtype="float32")
    assert str(error.value) == line
    result = CliRunner().invoke(
        app,
        ["embed", str(photo), "-o", str(tmp_path / "p.npy"), "--model", str(tiny_checkpoint),
         "--pool", "pooler"],
        env={"COLUMNS": "200"},
    )  # fmt: skip
    assert result.exit_code == 2, result.stderr
    assert result.stderr.strip() == f"error: {line}"


def test_fitting_refuses_an_unknown_pool_with_the_same_line(tiny, tmp_path):
    with pytest.raises(fitting.FitError) as error:
        fitting.fit_head(tiny, tmp_path, pool="max")
    assert str(error.value) == "unknown pool 'max': use one of cls, mean, pooler"


# ---------------------------------------------------------------------------- load_model


@pytest.mark.parametrize(
    "dtype, expected",
    [
        (None, torch.float32),  # the checkpoint's own (the tiny one is float32)
        ("float32", torch.float32),
        ("bf16", torch.bfloat16),
        ("float16", torch.float16),
        (torch.bfloat16, torch.bfloat16),
        ("auto", resolve_dtype("auto", torch.device("cpu"))),
    ],
)
@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_load_model_takes_device_and_dtype_as_before(tiny_checkpoint, dtype, expected, device):
    model = vh.load_model(tiny_checkpoint, device=device, dtype=dtype)
    parameter = next(model.parameters())
    assert parameter.device == torch.device("cpu") and parameter.dtype == expected
    assert model.config.num_labels == 10 and not model.training


def test_load_model_refuses_what_the_runner_refuses(tiny_checkpoint):
    with pytest.raises(ValueError, match="unknown dtype 'float64'"):
        vh.load_model(tiny_checkpoint, dtype="float64")
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        vh.load_model(tiny_checkpoint, backend="tensorrt")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is available"):
            vh.load_model(tiny_checkpoint, device="cuda")


def test_load_model_goes_through_the_one_loader(monkeypatch):
    import vithybrid_cli.pipeline.backends as backends

    calls = []
    monkeypatch.setattr(backends, "load_run_model", lambda *a, **k: calls.append((a, k)) or "m")
    assert vh.load_model("some/model", "main") == "m"
    vh.load_model("some/model", dtype="bf16", device="cuda:1")
    vh.load_model("some/model", backend="openvino")  # None: OpenVINO's default precision
    assert calls == [
        (("some/model", "main"), {"device": "cpu", "dtype": None, "backend": "torch"}),
        (("some/model", None), {"device": "cuda:1", "dtype": "bf16", "backend": "torch"}),
        (("some/model", None), {"device": "cpu", "dtype": "auto", "backend": "openvino"}),
    ]
