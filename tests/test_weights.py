"""Checkpoint loading: hub ids from an offline cache, file formats, hostile and broken files, timm.

Checkpoints are written by transformers' save_pretrained (the hub's layout) with random seeded
weights; the hub cache is laid out by hand in a temporary directory. Nothing touches the network.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from checkpoints import hf_config
from safetensors.torch import load_file, save_file

from vithybrid_cli.model.weights import CheckpointError, imagenet_labels, load_model

FULL_MODEL_ID = "google/vit-hybrid-base-bit-384"


def assert_same_model(actual, expected) -> None:
    """Same tensors under the same names, same labels, same preprocessing."""
    mine, theirs = actual.state_dict(), expected.state_dict()
    assert mine.keys() == theirs.keys()
    for name, tensor in mine.items():
        assert torch.equal(tensor, theirs[name]), name
    assert actual.config.id2label == expected.config.id2label
    assert actual.preprocess_config == expected.preprocess_config


def tiny_logits(model, seed: int = 0) -> torch.Tensor:
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(pixels).logits


# ---------------------------------------------------------------------------- 1. hub ids, offline


def test_hub_id_loads_from_offline_cache(hf_hub_cache, make_checkpoint_dir, no_network):
    main_dir = make_checkpoint_dir("tiny", seed=0)
    other_dir = make_checkpoint_dir("tiny", seed=1)
    main_commit = hf_hub_cache.add(FULL_MODEL_ID, main_dir)
    other_commit = hf_hub_cache.add(FULL_MODEL_ID, other_dir, ref="v2")
    assert main_commit != other_commit and len(other_commit) == 40

    from_hub = load_model(FULL_MODEL_ID)
    direct = load_model(main_dir)
    assert from_hub.checkpoint.from_hub
    assert from_hub.checkpoint.name == FULL_MODEL_ID
    snapshot = hf_hub_cache.repo_dir(FULL_MODEL_ID) / "snapshots" / main_commit
    assert [Path(f) for f in from_hub.checkpoint.weight_files] == [snapshot / "model.safetensors"]
    assert_same_model(from_hub, direct)
    assert torch.equal(tiny_logits(from_hub), tiny_logits(direct))
    assert_same_model(load_model(), direct)  # the default model id

    other = load_model(other_dir)
    assert not torch.equal(tiny_logits(other), tiny_logits(direct))  # really another checkpoint
    for revision in (other_commit, "v2"):
        pinned = load_model(FULL_MODEL_ID, revision=revision)
        assert pinned.checkpoint.revision == revision
        assert Path(pinned.checkpoint.weight_files[0]).parent.name == other_commit
        assert_same_model(pinned, other)
    assert no_network == []  # everything came from the cache


@pytest.mark.slow
def test_hub_id_from_cache_named_only_by_environment(hf_hub_cache, tiny_checkpoint, tmp_path):
    """A fresh process sees the cache through HF_HOME alone (the remedy the errors suggest)."""
    commit = hf_hub_cache.add(FULL_MODEL_ID, tiny_checkpoint)
    script = (
        "import json, sys\n"
        "from vithybrid_cli.model.weights import load_model\n"
        f"model = load_model({FULL_MODEL_ID!r})\n"
        "total = sum(float(t.double().sum()) for t in model.state_dict().values())\n"
        "print(json.dumps([str(model.checkpoint.weight_files[0]), total]))\n"
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))
    }
    env.update(HF_HOME=str(hf_hub_cache.root.parent), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    weights_file, total = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(weights_file).parent.name == commit
    expected = load_model(tiny_checkpoint).state_dict().values()
    assert total == pytest.approx(sum(float(t.double().sum()) for t in expected), rel=1e-12)


@pytest.mark.parametrize("cached", [(), ("config.json", "preprocessor_config.json")])
def test_uncached_model_offline_names_model_and_remedy(
    cached, hf_hub_cache, tiny_checkpoint, no_network
):
    if cached:  # config but no weights: still unusable
        hf_hub_cache.add(FULL_MODEL_ID, tiny_checkpoint, files=cached)
    with pytest.raises(CheckpointError) as error:
        load_model(FULL_MODEL_ID)
    message = str(error.value)
    assert FULL_MODEL_ID in message
    assert "--model" in message and "HF_HOME" in message
    assert no_network == []  # offline mode means not even trying


def test_unreachable_hub_fails_fast(hf_hub_cache, no_network, monkeypatch):
    """Online mode with a dead network (every socket refused here: no real traffic)."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    start = time.monotonic()
    with pytest.raises(CheckpointError) as error:
        load_model(FULL_MODEL_ID)
    assert time.monotonic() - start < 10
    assert no_network, "the refusal should have been met (the hub was tried)"
    message = str(error.value)
    assert FULL_MODEL_ID in message and "--model" in message and "HF_HOME" in message


# ---------------------------------------------------------------------------- 2. formats


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_sharded_checkpoint_equals_single_file(safe, make_checkpoint_dir, tiny_checkpoint):
    sharded = make_checkpoint_dir("tiny", seed=0, safe=safe, max_shard_size="50KB")
    index = sharded / ("model.safetensors.index.json" if safe else "pytorch_model.bin.index.json")
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    assert len(shards) > 1

    single = load_model(tiny_checkpoint)
    for source in (sharded, index):  # the directory, or the index file itself
        model = load_model(source)
        assert [Path(f).name for f in model.checkpoint.weight_files] == shards
        assert_same_model(model, single)

    (sharded / shards[-1]).rename(sharded / "moved-away")
    try:
        with pytest.raises(CheckpointError, match=f"missing: .*{shards[-1]}"):
            load_model(sharded)
    finally:
        (sharded / "moved-away").rename(sharded / shards[-1])


def test_weights_file_path_uses_the_config_beside_it(tiny_checkpoint):
    model = load_model(tiny_checkpoint / "model.safetensors")
    assert model.checkpoint.config_file == tiny_checkpoint / "config.json"
    assert model.config.id2label[1] == "golden retriever"
    assert_same_model(model, load_model(tiny_checkpoint))


def _run_payload(marker: str) -> str:
    Path(marker).write_text("code from a pickle ran")
    return "payload"


class Payload:
    """Unpickling this calls _run_payload: what a hostile .bin would do with os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return _run_payload, (self.marker,)


def test_pickled_code_in_bin_is_refused(tiny_checkpoint, tmp_path):
    directory = tmp_path / "hostile"
    directory.mkdir()
    (directory / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    state = load_file(str(tiny_checkpoint / "model.safetensors"))
    marker = tmp_path / "marker"
    torch.save({**state, "extra": Payload(marker)}, directory / "pytorch_model.bin")

    # The payload is real: an unrestricted torch.load runs it.
    torch.load(directory / "pytorch_model.bin", weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(CheckpointError, match="cannot read weights file .*pytorch_model.bin"):
        load_model(directory)
    assert not marker.exists()


def test_plain_bin_state_dict_loads(tiny_checkpoint, tmp_path):
    """The same tensors as a plain torch.save'd dict (not pickled code) load fine."""
    directory = tmp_path / "plain"
    directory.mkdir()
    (directory / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    torch.save(load_file(str(tiny_checkpoint / "model.safetensors")), directory / "model.bin")
    model = load_model(directory / "model.bin")
    assert model.checkpoint.weight_files == [directory / "model.bin"]
    assert_same_model(model, load_model(tiny_checkpoint))


def test_directory_without_weights(tiny_checkpoint, tmp_path):
    (tmp_path / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"no weights in .*model\.safetensors"):
        load_model(tmp_path)


def test_missing_local_path(tmp_path):
    missing = str(tmp_path / "nowhere" / "model")
    with pytest.raises(CheckpointError, match="exist") as error:
        load_model(missing)
    assert missing in str(error.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "garbage-bin"])
def test_corrupt_weights_file(damage, tiny_checkpoint, edited_checkpoint):
    directory = edited_checkpoint(tiny_checkpoint)
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    garbage = bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)))
    if damage == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        weights.write_bytes(garbage)
    elif damage == "empty":
        weights.write_bytes(b"")
    else:
        weights.unlink()
        weights = directory / "pytorch_model.bin"
        weights.write_bytes(garbage)
    with pytest.raises(CheckpointError, match="cannot read weights file") as error:
        load_model(directory)
    assert str(weights) in str(error.value)


def test_config_with_other_sizes_lists_wrong_shapes(tiny_checkpoint, edited_checkpoint):
    directory = edited_checkpoint(tiny_checkpoint, hidden_size=48)
    with pytest.raises(CheckpointError) as error:
        load_model(directory)
    message = str(error.value)
    assert re.search(r"wrong shapes \(\d+\): classifier\.weight: checkpoint \(10, 32\) vs", message)
    # one line, the first three keys of each list (issue #27): a 1-D tensor's shapes among them
    assert "embeddings.patch_embed.projection.bias: checkpoint (32,) vs model (48,)" in message
    assert re.search(r", … \(\d+ more\)", message)  # long lists are cut, with a count
    assert "Is config.json the one that belongs to these weights?" in message


def test_config_with_other_label_count_lists_wrong_shapes(tiny_checkpoint, edited_checkpoint):
    """A config.json naming 5 classes for a 10-way head must not load (it would mislabel)."""
    labels = {str(i): f"class {i}" for i in range(5)}
    directory = edited_checkpoint(
        tiny_checkpoint, id2label=labels, label2id={v: int(k) for k, v in labels.items()}
    )
    with pytest.raises(CheckpointError) as error:
        load_model(directory)
    message = str(error.value)
    assert "wrong shapes (2)" in message
    assert "classifier.weight: checkpoint (10, 32) vs model (5, 32)" in message


def test_missing_and_unexpected_keys_are_listed(tiny_checkpoint, edited_checkpoint):
    directory = edited_checkpoint(tiny_checkpoint)
    state = load_file(str(directory / "model.safetensors"))
    del state["vit.layernorm.weight"]
    state["vit.extra_head.weight"] = torch.zeros(3)
    save_file(state, str(directory / "model.safetensors"))
    with pytest.raises(CheckpointError) as error:
        load_model(directory)
    message = str(error.value)
    assert "missing keys (1): norm.weight" in message
    assert "unexpected keys (1): vit.extra_head.weight" in message


# ---------------------------------------------------------------------------- 3. timm


def transformers_state_dict_from_timm(timm_state: dict, config) -> dict:
    """timm -> transformers names with transformers' own conversion script (independent of ours)."""
    from transformers.models.deprecated.vit_hybrid import convert_vit_hybrid_timm_to_pytorch as cv

    state = {name: tensor.clone() for name, tensor in timm_state.items()}
    for source, destination in cv.create_rename_keys(config, base_model=False):
        cv.rename_key(state, source, destination)
    cv.read_in_q_k_v(state, config, base_model=False)
    return state


def test_timm_file_equals_transformers_checkpoint(
    timm_checkpoint, timm_ours, google_pixels, tmp_path
):
    from transformers.modeling_utils import no_init_weights
    from transformers.models.deprecated.vit_hybrid import ViTHybridForImageClassification

    timm_model, _ = timm_checkpoint
    config = hf_config("full")
    with no_init_weights():  # every weight comes from timm's state dict just below
        reference = ViTHybridForImageClassification(config).eval()
    reference.load_state_dict(transformers_state_dict_from_timm(timm_model.state_dict(), config))
    reference.save_pretrained(tmp_path)
    from_transformers = load_model(tmp_path)

    assert from_transformers.checkpoint.config_file == tmp_path / "config.json"
    assert timm_ours.checkpoint.config_file is None
    mine, theirs = timm_ours.state_dict(), from_transformers.state_dict()
    assert mine.keys() == theirs.keys()
    for name, tensor in mine.items():
        assert torch.equal(tensor, theirs[name]), name

    pixels = google_pixels[:1]
    with torch.no_grad():
        from_timm_logits = timm_ours(pixels).logits
        from_transformers_logits = from_transformers(pixels).logits
        timm_logits = timm_model(pixels)
    torch.testing.assert_close(from_timm_logits, from_transformers_logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(from_timm_logits, timm_logits, rtol=0, atol=1e-4)


def test_timm_file_without_config_gets_imagenet_labels(timm_ours):
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert labels[281] == "tabby, tabby cat"
    assert timm_ours.config.id2label == labels
    assert timm_ours.config.image_size == 384
    assert timm_ours.preprocess_config.crop_size == {"height": 384, "width": 384}


def test_timm_file_with_other_head_gets_generic_labels(timm_checkpoint, tmp_path):
    _, timm_file = timm_checkpoint
    state = load_file(str(timm_file))
    state["head.weight"], state["head.bias"] = state["head.weight"][:5], state["head.bias"][:5]
    path = tmp_path / "five-classes.safetensors"
    save_file(state, str(path))
    model = load_model(path)
    assert model.config.id2label == {i: f"LABEL_{i}" for i in range(5)}
    assert model.classifier.weight.shape == (5, 768)


def test_bin_without_a_state_dict(tmp_path):
    """A .bin holding plain data other than a state dict is reported as such."""
    path = tmp_path / "pytorch_model.bin"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_model(path)
