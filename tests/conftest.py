"""Shared fixtures: checkpoints, photographs, reference outputs, an offline hub cache.

Expensive things (full-size models, their checkpoints, the reference forward pass, timm's model)
are session-scoped and built once; everything is written under pytest's tmp_path_factory.
Random weights are seeded (tests/checkpoints.py), so every run sees the same numbers.

Nothing here touches the network: HF_HUB_OFFLINE is set before huggingface_hub is imported (a
test that needs another setting patches huggingface_hub.constants, as `hf_hub_cache` does), and
`no_network` makes any socket use fail at once for tests that exercise online code paths.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# Before any huggingface_hub import: it copies these into huggingface_hub.constants at import.
# (Subprocesses that tests start inherit them too.)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# a Ray the tests start (the CLI's own, ray.init) listens and talks on loopback only
os.environ.setdefault("VITHYBRID_RAY_NODE_IP", "127.0.0.2")
if "huggingface_hub.constants" in sys.modules:  # imported earlier, e.g. by a pytest plugin
    offline = os.environ["HF_HUB_OFFLINE"].upper() in {"1", "ON", "YES", "TRUE"}
    sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = offline

sys.path.insert(0, str(Path(__file__).parent))
import checkpoints  # noqa: E402  (needs the path above)

# ---------------------------------------------------------------------------- markers

# Tests that use google's full-size model (or timm's) take seconds to minutes each on a CPU: they
# are `slow`, so `pytest -m "not slow"` is a fast loop. (Plain `pytest`, as CI runs it, runs all.)
FULL_SIZE_FIXTURES = {
    "full_hf_model",
    "full_checkpoint",
    "full_checkpoint_bin",
    "full_model",
    "full_reference_outputs",
    "full_model_outputs",
    "timm_checkpoint",
    "timm_ours",
}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if FULL_SIZE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def one_thread_for_small_work(request):
    """Outside slow tests, models are tiny: their ops take microseconds, and with other work
    sharing the CPU, waking a second OpenMP thread per op costs far more than it saves."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="session")
def make_checkpoint_dir(tmp_path_factory) -> Callable[..., Path]:
    """Factory: `make_checkpoint_dir(size="tiny", seed=0, **kwargs) -> Path`.

    A directory written by transformers' save_pretrained (see checkpoints.make_checkpoint for the
    kwargs: safe=False for pytorch_model.bin, max_shard_size for shards, config overrides such as
    num_labels or problem_type). Cached per argument set for the session: treat the result as
    read-only and use `edited_checkpoint` for a private, editable copy.
    """
    cache: dict[str, Path] = {}

    def make(size: str = "tiny", seed: int = 0, **kwargs) -> Path:
        key = json.dumps([size, seed, sorted(kwargs.items())], default=str)
        if key not in cache:
            directory = tmp_path_factory.mktemp(f"{size}-checkpoint")
            cache[key] = checkpoints.make_checkpoint(directory, size, seed, **kwargs)
        return cache[key]

    return make


@pytest.fixture
def edited_checkpoint(tmp_path) -> Callable[..., Path]:
    """Factory: `edited_checkpoint(source, **config_changes) -> Path`.

    A private copy of checkpoint directory `source` (e.g. a shared session checkpoint) under this
    test's tmp_path, with config.json's top-level keys changed (a value of None deletes the key).
    """
    copies = 0

    def edit(source: Path, **changes) -> Path:
        nonlocal copies
        copies += 1
        directory = shutil.copytree(source, tmp_path / f"{source.name}-edited-{copies}")
        path = directory / "config.json"
        data = json.loads(path.read_text())
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        path.write_text(json.dumps(data, indent=2))
        return directory

    return edit


@pytest.fixture(scope="session")
def tiny_checkpoint(make_checkpoint_dir) -> Path:
    """Tiny ViTHybridForImageClassification checkpoint (safetensors, 10 labels, 64x64 input)."""
    return make_checkpoint_dir("tiny", 0)


@pytest.fixture(scope="session")
def full_hf_model():
    """transformers' ViTHybridForImageClassification, google's configuration, random weights."""
    return checkpoints.make_hf_model("full", seed=0)


@pytest.fixture(scope="session")
def full_checkpoint(full_hf_model, tmp_path_factory) -> Path:
    """`full_hf_model` saved as model.safetensors (+ config.json, preprocessor_config.json)."""
    return checkpoints.save_checkpoint(full_hf_model, tmp_path_factory.mktemp("full-safetensors"))


@pytest.fixture(scope="session")
def full_checkpoint_bin(full_hf_model, tmp_path_factory) -> Path:
    """`full_hf_model` saved as pytorch_model.bin (safe_serialization=False)."""
    directory = tmp_path_factory.mktemp("full-bin")
    return checkpoints.save_checkpoint(full_hf_model, directory, safe=False)


@pytest.fixture(scope="session")
def full_model(full_checkpoint):
    """Ours, loaded from `full_checkpoint` with load_model's defaults (inference, float32).

    Shared by the session: do not modify it (prune, toggle attributes, cast); load your own.
    """
    from vithybrid_cli.model.weights import load_model

    return load_model(full_checkpoint)


# ---------------------------------------------------------------------------- inputs


@pytest.fixture(scope="session")
def photographs() -> list:
    """Four real photographs (PIL) shipped with scikit-image: cat, astronaut, coffee, rocket."""
    return checkpoints.photographs(4)


@pytest.fixture(scope="session")
def google_pixels(photographs) -> torch.Tensor:
    """`photographs` through transformers' ViTHybridImageProcessor with google's settings."""
    from transformers.models.deprecated.vit_hybrid import ViTHybridImageProcessor

    settings = dict(checkpoints.GOOGLE_PREPROCESSOR)
    settings.pop("image_processor_type")
    processor = ViTHybridImageProcessor(**settings)
    return processor(photographs, return_tensors="pt")["pixel_values"]  # (4, 3, 384, 384)


@pytest.fixture(scope="session")
def full_reference_outputs(full_hf_model, google_pixels):
    """The reference's (eager) output on `google_pixels`, with hidden states and attentions."""
    with torch.no_grad():
        return full_hf_model(google_pixels, output_hidden_states=True, output_attentions=True)


@pytest.fixture(scope="session")
def full_model_outputs(full_model, google_pixels):
    """Ours (float32) on `google_pixels`, with hidden states and attentions."""
    with torch.no_grad():
        return full_model(google_pixels, output_hidden_states=True, output_attentions=True)


# ---------------------------------------------------------------------------- timm


@pytest.fixture(scope="session")
def timm_checkpoint(tmp_path_factory):
    """(timm model, weights file): timm's vit_base_r50_s16_384 with random seeded weights.

    The model is built with dynamic_img_size=True (any input size) and its state dict is saved,
    in timm's own names, as a bare safetensors file: no config.json beside it.
    """
    import timm
    from safetensors.torch import save_file

    # Built on the meta device (skips timm's ~5 s of weight init) and then filled by randomize:
    # it writes every parameter, and this model has no buffers that would stay uninitialized.
    with torch.device("meta"):
        model = timm.create_model("vit_base_r50_s16_384", pretrained=False, dynamic_img_size=True)
    assert not list(model.buffers())
    model = model.to_empty(device="cpu")
    checkpoints.randomize(model, seed=1)
    model.eval()
    path = tmp_path_factory.mktemp("timm") / "vit_base_r50_s16_384.safetensors"
    save_file({name: t.contiguous() for name, t in model.state_dict().items()}, str(path))
    return model, path


@pytest.fixture(scope="session")
def timm_ours(timm_checkpoint):
    """Ours, loaded from the bare timm weights file of `timm_checkpoint` (read-only, shared)."""
    from vithybrid_cli.model.weights import load_model

    return load_model(timm_checkpoint[1])


# ---------------------------------------------------------------------------- hub and network


class HubCache:
    """A huggingface_hub cache laid out by hand: models--ORG--NAME/{refs,snapshots}.

    `add(repo_id, source_dir, commit=None, ref="main")` copies the files of `source_dir` into
    snapshots/<commit>/ (plain files, no blobs/symlinks: the hub client reads those fine) and
    points refs/<ref> at it; returns the 40-hex commit.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._commits = 0

    def repo_dir(self, repo_id: str) -> Path:
        return self.root / ("models--" + repo_id.replace("/", "--"))

    def add(
        self,
        repo_id: str,
        source_dir: Path,
        commit: str | None = None,
        ref: str | None = "main",
        files: tuple[str, ...] | None = None,
    ) -> str:
        self._commits += 1
        commit = commit or f"{self._commits:040x}"
        snapshot = self.repo_dir(repo_id) / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        for file in sorted(source_dir.iterdir()):
            if file.is_file() and (files is None or file.name in files):
                shutil.copyfile(file, snapshot / file.name)
        if ref is not None:
            refs = self.repo_dir(repo_id) / "refs"
            refs.mkdir(parents=True, exist_ok=True)
            (refs / ref).write_text(commit)
        return commit


@pytest.fixture
def hf_hub_cache(tmp_path, monkeypatch) -> HubCache:
    """An empty, offline huggingface_hub cache for this test (HF_HUB_CACHE / HF_HOME point here).

    huggingface_hub copies the environment into huggingface_hub.constants when first imported and
    hf_hub_download reads constants.HF_HUB_CACHE / constants.HF_HUB_OFFLINE at call time, so both
    the environment (for subprocesses) and the constants are patched.
    """
    import huggingface_hub.constants as constants

    root = tmp_path / "hf-home" / "hub"
    root.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(root.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(root.parent))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HUGGINGFACE_HUB_CACHE", str(root), raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return HubCache(root)


@pytest.fixture
def no_network(monkeypatch) -> list[str]:
    """Every connection attempt fails immediately (and is recorded in the returned list)."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts
