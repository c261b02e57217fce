"""Model identity: the two weights hashes (files for journals, values for heads) and
model_identity, on the tiny random checkpoint and copies of it."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from vithybrid_cli.model.config import target_size
from vithybrid_cli.model.identity import (
    FINGERPRINTS,
    model_identity,
    weights_fingerprint,
    weights_identity,
)
from vithybrid_cli.model.weights import load_model


def files_hash(model) -> str:
    return weights_identity([str(path) for path in model.checkpoint.weight_files])


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return load_model(tiny_checkpoint)


def test_weights_identity_hashes_the_files(tiny, tiny_checkpoint, make_checkpoint_dir, tmp_path):
    copy = shutil.copytree(tiny_checkpoint, tmp_path / "copy")
    assert files_hash(load_model(copy)) == files_hash(tiny)  # same bytes elsewhere
    assert files_hash(load_model(make_checkpoint_dir("tiny", 1))) != files_hash(tiny)
    # the same values written as pytorch_model.bin are other files: another identity
    as_bin = load_model(make_checkpoint_dir("tiny", 0, safe=False))
    assert files_hash(as_bin) != files_hash(tiny)
    assert len(files_hash(tiny)) == 16  # what journals have recorded as "weights"


def test_weights_fingerprint_hashes_the_values(
    tiny, tiny_checkpoint, make_checkpoint_dir, tmp_path
):
    fingerprint = weights_fingerprint(tiny)
    copy = shutil.copytree(tiny_checkpoint, tmp_path / "copy")
    as_bin = make_checkpoint_dir("tiny", 0, safe=False)  # the same values, other files
    assert weights_fingerprint(load_model(copy)) == fingerprint
    assert weights_fingerprint(load_model(as_bin)) == fingerprint
    assert weights_fingerprint(load_model(tiny_checkpoint, dtype=torch.bfloat16)) == fingerprint
    assert weights_fingerprint(load_model(make_checkpoint_dir("tiny", 1))) != fingerprint


def test_weights_fingerprint_covers_the_preprocessing(tiny, tiny_checkpoint, tmp_path):
    copy = shutil.copytree(tiny_checkpoint, tmp_path / "copy")
    path = copy / "preprocessor_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "image_mean": [0.0, 0.0, 0.0]}))
    other_inputs = load_model(copy)  # same weights
    assert files_hash(other_inputs) == files_hash(tiny)
    assert weights_fingerprint(other_inputs) != weights_fingerprint(tiny)


def test_model_identity_reads_any_run_sizing(tiny):
    """Any object with image_size and interpolate_pos_encoding will do (RunOptions has both);
    the fingerprint is computed once per loaded model."""
    FINGERPRINTS.pop(tiny, None)
    native = model_identity(tiny, SimpleNamespace(image_size=None, interpolate_pos_encoding=False))
    assert FINGERPRINTS[tiny] == native.weights == weights_fingerprint(tiny)
    assert native.image_size == target_size(tiny.preprocess_config) == (64, 64)
    assert native.embedding_size == tiny.config.hidden_size
    assert native.model == tiny.checkpoint.name and not native.interpolate_pos_encoding

    FINGERPRINTS[tiny] = "cached"  # not recomputed
    sized = model_identity(
        tiny, SimpleNamespace(image_size=(96, 80), interpolate_pos_encoding=True)
    )
    assert sized.weights == "cached" and sized.image_size == (96, 80)
    assert sized.interpolate_pos_encoding
    FINGERPRINTS.pop(tiny)
