"""The model against its references: transformers' ViTHybrid (eager) and timm's ViT-R50 hybrid.

Full size where size matters (google's configuration: parity, resolution, bfloat16), tiny
everywhere else. Every checkpoint is written by transformers' own save_pretrained with random
seeded weights (tests/checkpoints.py), so the hub's exact file layout is what gets loaded.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from checkpoints import make_hf_model, save_checkpoint
from PIL import Image

from vithybrid_cli.model import kernels
from vithybrid_cli.model.config import ConfigError, ViTHybridConfig
from vithybrid_cli.model.weights import CheckpointError, load_model


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    torch.testing.assert_close(actual.float(), expected.float(), rtol=0, atol=atol)


def tiny_pixels(batch: int = 3, height: int = 64, width: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- 1. full-size parity


def assert_matches_reference(ours, reference, batch: int) -> None:
    """Logits, every hidden state and every attention map of the first `batch` images."""
    assert_close(ours.logits, reference.logits[:batch], atol=1e-4)
    assert len(ours.hidden_states) == len(reference.hidden_states) == 13
    for mine, theirs in zip(ours.hidden_states, reference.hidden_states, strict=True):
        assert mine.shape == (batch, 577, 768)
        assert_close(mine, theirs[:batch], atol=1e-4)
    assert len(ours.attentions) == len(reference.attentions) == 12
    for mine, theirs in zip(ours.attentions, reference.attentions, strict=True):
        assert mine.shape == (batch, 12, 577, 577)
        assert_close(mine, theirs[:batch], atol=1e-4)


def test_full_size_parity_with_transformers(
    full_checkpoint, full_model, full_model_outputs, full_reference_outputs
):
    """google's configuration, four real photographs, model.safetensors."""
    model = full_model
    assert model.checkpoint.weight_files == [full_checkpoint / "model.safetensors"]
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    # float32 keeps the reference's memory layout (channels_last would reorder the conv sums).
    assert model.backbone.stem.conv.weight.is_contiguous()
    assert model.config.num_labels == 1000
    assert full_model_outputs.grid_size == (24, 24)
    assert_matches_reference(full_model_outputs, full_reference_outputs, batch=4)


def test_full_size_parity_from_pytorch_model_bin(
    full_checkpoint_bin, full_model, full_reference_outputs, google_pixels
):
    """pytorch_model.bin (safe_serialization=False): bit-identical weights to the safetensors
    load, and the reference's outputs (on one photograph, to keep the suite fast)."""
    model = load_model(full_checkpoint_bin)
    assert model.checkpoint.weight_files == [full_checkpoint_bin / "pytorch_model.bin"]
    mine, theirs = model.state_dict(), full_model.state_dict()
    assert mine.keys() == theirs.keys()
    for name, tensor in mine.items():
        assert torch.equal(tensor, theirs[name]), name
    with torch.no_grad():
        ours = model(google_pixels[:1], output_hidden_states=True, output_attentions=True)
    assert_matches_reference(ours, full_reference_outputs, batch=1)


# ---------------------------------------------------------------------------- 2. other resolutions

# (height, width) in pixels: portrait, square, landscape, large portrait. All multiples of 16.
SIZES = [(320, 256), (512, 512), (384, 640), (1024, 768)]


def photo_pixels(photo: Image.Image, height: int, width: int) -> torch.Tensor:
    """A photograph resized to exactly (height, width), normalized as google's checkpoint wants."""
    array = np.asarray(photo.convert("RGB").resize((width, height), Image.BICUBIC), np.float32)
    # (H, W, 3) in [0, 255] -> (1, 3, H, W) in [-1, 1]
    return torch.from_numpy(array / 127.5 - 1.0).permute(2, 0, 1).unsqueeze(0)


@pytest.mark.parametrize(("height", "width"), SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_interpolate_pos_encoding_matches_timm(
    height, width, timm_checkpoint, timm_ours, photographs
):
    """Same weights in both; timm's dynamic_img_size resamples position embeddings as we do."""
    timm_model, _ = timm_checkpoint
    pixels = photo_pixels(photographs[1], height, width)
    with torch.no_grad():
        ours = timm_ours(pixels, interpolate_pos_encoding=True)
        features = timm_model.forward_features(pixels)  # (1, 1 + h*w, 768), after the final norm
        logits = timm_model.forward_head(features)

    assert ours.grid_size == (height // 16, width // 16)
    assert (
        ours.last_hidden_state.shape
        == features.shape
        == (1, 1 + (height // 16) * (width // 16), 768)
    )
    assert_close(ours.last_hidden_state, features, atol=1e-3)
    assert_close(ours.logits, logits, atol=1e-3)


def test_transformers_cannot_interpolate_hybrid_position_embeddings(full_hf_model):
    """Why this package exists: transformers resamples to the pixel grid (patch_size=1 counts
    backbone pixels), not the 16x-smaller token grid, so any other size fails to add up."""
    pixels = photo_pixels(Image.new("RGB", (256, 320), (90, 140, 200)), 320, 256)
    # 320*256 + 1 "positions" for 20*16 + 1 tokens (ours handles this size: see the timm test)
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"size of tensor b \(81921\)"):
        full_hf_model(pixels, interpolate_pos_encoding=True)


def test_wrong_input_size_without_interpolation_is_a_clear_error(tiny_checkpoint):
    model = load_model(tiny_checkpoint)
    with torch.no_grad():
        assert model(tiny_pixels(1)).logits.shape == (1, 10)  # the trained size needs no flag
        with pytest.raises(ValueError, match=r"\(48\*80\).*\(64\*64\).*interpolate_pos_encoding"):
            model(tiny_pixels(1, 48, 80))
        resized = model(tiny_pixels(1, 48, 80), interpolate_pos_encoding=True)
    assert resized.grid_size == (3, 5)


# ---------------------------------------------------------------------------- 3. attention kernels


def test_fused_and_explicit_attention_agree(tiny_checkpoint, monkeypatch):
    model = load_model(tiny_checkpoint)
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    pixels = tiny_pixels()
    with torch.no_grad():
        fused = model(pixels, output_hidden_states=True)
        assert len(calls) == 2  # one fused call per layer
        explicit = model(pixels, output_hidden_states=True, output_attentions=True)
        assert len(calls) == 2  # attention maps need the explicit softmax
        for block in model.blocks:
            block.attention.sdpa = False
        unfused = model(pixels, output_hidden_states=True)
        assert len(calls) == 2

    assert fused.attentions is None and unfused.attentions is None
    assert len(explicit.attentions) == 2
    for probs in explicit.attentions:
        assert probs.shape == (3, 4, 17, 17)
        assert_close(probs.sum(-1), torch.ones(3, 4, 17), atol=1e-5)
    for other in (explicit, unfused):
        assert_close(fused.logits, other.logits, atol=1e-5)
        assert_close(fused.last_hidden_state, other.last_hidden_state, atol=1e-5)
        for mine, theirs in zip(fused.hidden_states, other.hidden_states, strict=True):
            assert_close(mine, theirs, atol=1e-5)


# ---------------------------------------------------------------------------- 4. losses

LOSS_CASES = {
    "regression-1": (1, "regression"),
    "regression-3": (3, "regression"),
    "single-label": (10, "single_label_classification"),
    "multi-label": (10, "multi_label_classification"),
}


def make_labels(case: str, batch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    num_labels, _ = LOSS_CASES[case]
    if case == "regression-1":
        return torch.randn(batch, generator=generator)
    if case == "regression-3":
        return torch.randn(batch, 3, generator=generator)
    if case == "single-label":
        return torch.randint(0, num_labels, (batch,), generator=generator)
    return (torch.rand(batch, num_labels, generator=generator) > 0.5).float()


@pytest.mark.parametrize("in_config", [True, False], ids=["problem_type-set", "inferred"])
@pytest.mark.parametrize("case", list(LOSS_CASES))
def test_loss_equals_reference(case, in_config, tmp_path):
    """Unset problem_type is inferred as transformers does (regression-3 then counts as
    multi-label: float labels with more than one output)."""
    num_labels, problem_type = LOSS_CASES[case]
    overrides = {"problem_type": problem_type} if in_config else {}
    reference = make_hf_model("tiny", seed=3, num_labels=num_labels, **overrides)
    save_checkpoint(reference, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()).get("problem_type") == (
        problem_type if in_config else None
    )
    model = load_model(tmp_path)
    assert model.config.problem_type == (problem_type if in_config else None)

    pixels, labels = tiny_pixels(4), make_labels(case, 4)
    with torch.no_grad():
        expected = reference(pixels, labels=labels).loss
        ours = model(pixels, labels=labels)
    assert ours.logits.shape == (4, num_labels)
    assert ours.loss.ndim == 0 and ours.loss > 0
    assert_close(ours.loss, expected, atol=1e-5)
    # transformers records what it inferred; ours must not depend on a mutated config
    assert model.config.problem_type == (problem_type if in_config else None)


def test_training_gradients_equal_reference(tmp_path):
    """inference=False keeps weight standardization live, so gradients reach the raw weights."""
    reference = make_hf_model("tiny", seed=4)
    save_checkpoint(reference, tmp_path)
    model = load_model(tmp_path, inference=False)
    assert not model.backbone.stem.conv.frozen
    assert load_model(tmp_path).backbone.stem.conv.frozen

    pixels, labels = tiny_pixels(4), torch.tensor([0, 3, 9, 3])
    reference(pixels, labels=labels).loss.backward()
    model(pixels, labels=labels).loss.backward()

    ref = dict(reference.named_parameters())
    stem = "vit.embeddings.patch_embeddings.backbone.bit.embedder.convolution.weight"
    attention = "vit.encoder.layer.0.attention.attention"
    pairs = [
        (model.classifier.weight, ref["classifier.weight"].grad),
        (model.backbone.stem.conv.weight, ref[stem].grad),
        (
            model.blocks[0].attention.qkv.weight,
            torch.cat(
                [ref[f"{attention}.{part}.weight"].grad for part in ("query", "key", "value")]
            ),
        ),
        (model.embeddings.position_embeddings, ref["vit.embeddings.position_embeddings"].grad),
    ]
    for parameter, expected in pairs:
        assert expected.abs().max() > 0
        assert_close(parameter.grad, expected, atol=1e-5)


# ---------------------------------------------------------------------------- 5. masks, pruning


@pytest.mark.parametrize(
    "head_mask",
    [
        torch.tensor([1.0, 0.0, 1.0, 0.5]),  # (heads,): every layer
        torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.5, 1.0]]),  # (layers, heads)
    ],
    ids=["per-head", "per-layer"],
)
def test_head_mask_equals_reference(head_mask, tiny_checkpoint):
    reference = make_hf_model("tiny", seed=0)  # the weights of tiny_checkpoint
    model = load_model(tiny_checkpoint)
    pixels = tiny_pixels()
    with torch.no_grad():
        expected = reference(
            pixels, head_mask=head_mask, output_hidden_states=True, output_attentions=True
        )
        unmasked = model(pixels).logits
        explicit = model(
            pixels, head_mask=head_mask, output_hidden_states=True, output_attentions=True
        )
        fused = model(pixels, head_mask=head_mask)

    assert (unmasked - expected.logits).abs().max() > 1e-3  # the mask matters
    assert_close(explicit.logits, expected.logits, atol=1e-5)
    assert_close(fused.logits, expected.logits, atol=1e-5)
    for mine, theirs in zip(explicit.hidden_states, expected.hidden_states, strict=True):
        assert_close(mine, theirs, atol=1e-5)
    for mine, theirs in zip(explicit.attentions, expected.attentions, strict=True):
        assert_close(mine, theirs, atol=1e-5)


def test_head_mask_of_wrong_shape_is_rejected(tiny_checkpoint):
    model = load_model(tiny_checkpoint)
    with torch.no_grad(), pytest.raises(ValueError, match=r"head_mask must be"):
        model(tiny_pixels(1), head_mask=torch.ones(3, 4))


def test_mask_token_and_pooler_equal_reference(tmp_path):
    from checkpoints import hf_config, randomize
    from transformers.models.deprecated.vit_hybrid import ViTHybridModel

    config = hf_config("tiny")
    config._attn_implementation = "eager"
    reference = ViTHybridModel(config, add_pooling_layer=True, use_mask_token=True)
    randomize(reference, seed=5)
    reference.eval().save_pretrained(tmp_path)

    model = load_model(tmp_path)
    assert model.pooler is not None
    assert model.embeddings.mask_token is not None
    assert model.classifier is None

    pixels = tiny_pixels(2)
    masked = torch.rand(2, 16, generator=torch.Generator().manual_seed(1)) > 0.5
    with torch.no_grad():
        for bool_masked_pos in (None, masked):
            expected = reference(pixels, bool_masked_pos=bool_masked_pos)
            ours = model(pixels, bool_masked_pos=bool_masked_pos)
            assert ours.logits is None
            assert_close(ours.last_hidden_state, expected.last_hidden_state, atol=1e-5)
            assert_close(ours.pooler_output, expected.pooler_output, atol=1e-5)
        unmasked = model(pixels).pooler_output
    assert (unmasked - ours.pooler_output).abs().max() > 1e-3  # the mask matters


def test_bool_masked_pos_needs_a_mask_token(tiny_checkpoint):
    model = load_model(tiny_checkpoint)
    with torch.no_grad(), pytest.raises(ValueError, match="use_mask_token"):
        model(tiny_pixels(1), bool_masked_pos=torch.zeros(1, 16, dtype=torch.bool))


PRUNE = {0: [1, 2], 1: [0]}


def test_pruned_heads_equal_reference(tmp_path):
    reference = make_hf_model("tiny", seed=6)
    unpruned_dir = save_checkpoint(reference, tmp_path / "unpruned")
    reference.prune_heads(PRUNE)
    pruned_dir = save_checkpoint(reference, tmp_path / "pruned")
    saved = json.loads((pruned_dir / "config.json").read_text())["pruned_heads"]
    assert {int(k): sorted(v) for k, v in saved.items()} == PRUNE

    pixels = tiny_pixels()
    with torch.no_grad():
        expected = reference(pixels, output_attentions=True)

    loaded = load_model(pruned_dir)  # pruning recorded in config.json
    pruned_here = load_model(unpruned_dir)  # pruned by us, in one call
    pruned_here.prune_heads(PRUNE)
    stepwise = load_model(unpruned_dir)  # head indices always count the unpruned layer
    stepwise.prune_heads({0: [1]})
    stepwise.prune_heads({0: [2, 1], 1: [0]})

    for model in (loaded, pruned_here, stepwise):
        assert model.config.pruned_heads == PRUNE
        assert [block.attention.num_heads for block in model.blocks] == [2, 3]
        assert model.blocks[0].attention.qkv.weight.shape == (3 * 2 * 8, 32)
        with torch.no_grad():
            ours = model(pixels, output_attentions=True)
            fused = model(pixels)
        assert_close(ours.logits, expected.logits, atol=1e-5)
        assert_close(fused.logits, expected.logits, atol=1e-5)
        for mine, theirs in zip(ours.attentions, expected.attentions, strict=True):
            assert mine.shape == theirs.shape
            assert_close(mine, theirs, atol=1e-5)


# ---------------------------------------------------------------------------- 6. config validation

BAD_CONFIGS = {
    "heads": (
        {"num_attention_heads": 5},
        r"hidden_size 32 is not divisible by num_attention_heads 5",
    ),
    "model_type": ({"model_type": "vit"}, r"unsupported model_type 'vit'.*'vit-hybrid'"),
    "activation": ({"hidden_act": "gelu_magic"}, r"unknown hidden_act 'gelu_magic'; known: gelu"),
    "backbone": ({"backbone_config": {"model_type": "resnet"}}, r"backbone model_type 'resnet'"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_invalid_config_is_a_clear_error(case, tiny_checkpoint, edited_checkpoint):
    changes, message = BAD_CONFIGS[case]
    data = json.loads((tiny_checkpoint / "config.json").read_text())
    ViTHybridConfig.from_dict(data)  # the unedited config is fine
    if case == "backbone":
        changes = {"backbone_config": {**data["backbone_config"], **changes["backbone_config"]}}

    with pytest.raises(ConfigError, match=message):
        ViTHybridConfig.from_dict({**data, **changes})

    directory = edited_checkpoint(tiny_checkpoint, **changes)
    with pytest.raises(CheckpointError, match=message) as error:
        load_model(directory)
    assert str(directory / "config.json") in str(error.value)
    assert isinstance(error.value.__cause__, ConfigError)


# ---------------------------------------------------------------------------- 7. bfloat16


def test_bfloat16_inference_tracks_float32(full_checkpoint, full_model_outputs, google_pixels):
    """Random weights give near-tied top logits (fp32 margins of ~1e-3 for some photographs), so
    top-1 is compared only where the fp32 margin clearly exceeds the bf16 error bound asserted
    here; everywhere, bf16's top-1 must be among fp32's top 5."""
    model = load_model(full_checkpoint, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.backbone.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ours = model(google_pixels)
    reference = full_model_outputs
    assert ours.logits.dtype == torch.bfloat16

    cls_cosine = F.cosine_similarity(ours.cls_embedding.float(), reference.cls_embedding, dim=-1)
    logit_cosine = F.cosine_similarity(ours.logits.float(), reference.logits, dim=-1)
    assert (cls_cosine >= 0.999).all(), cls_cosine
    assert (logit_cosine >= 0.999).all(), logit_cosine

    error_bound = 0.1  # absolute logit error (fp32 logits here have std ~0.5, |max| ~1.7)
    assert (ours.logits.float() - reference.logits).abs().max() < error_bound
    top = reference.logits.topk(5, dim=-1)
    ours_top1 = ours.logits.float().argmax(-1)
    clear = (top.values[:, 0] - top.values[:, 1]) > 2 * error_bound
    assert torch.equal(ours_top1[clear], top.indices[clear, 0])
    assert all(ours_top1[i] in top.indices[i] for i in range(len(ours_top1)))


# ------------------------------------------------------------------------ 8. CLS-only last block


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("attention", ["fused", "explicit"])
def test_cls_only_gives_the_same_cls_outputs(tiny_checkpoint, dtype, attention):
    """cls_only skips the last block's other queries and MLP rows: logits and the CLS embedding
    are unchanged (bfloat16 takes the fused-linear path), only the CLS token comes back."""
    model = load_model(tiny_checkpoint, dtype=dtype)
    for block in model.blocks:
        block.attention.sdpa = attention == "fused"
    pixels = tiny_pixels()
    head_mask = torch.tensor([[1.0, 0.0, 1.0, 0.5], [0.0, 1.0, 1.0, 1.0]])
    with torch.no_grad():
        for mask in (None, head_mask):
            full = model(pixels, head_mask=mask)
            cls = model(pixels, head_mask=mask, cls_only=True)
            assert cls.last_hidden_state.shape == (3, 1, full.last_hidden_state.shape[-1])
            atol = 1e-6 if dtype == torch.float32 else 1e-2  # M=1 may take another kernel
            assert_close(cls.logits.float(), full.logits.float(), atol=atol)
            assert_close(cls.cls_embedding.float(), full.cls_embedding.float(), atol=atol)


def test_cls_only_refuses_attentions_and_hidden_states(tiny_checkpoint):
    model = load_model(tiny_checkpoint)
    for flag in ("output_attentions", "output_hidden_states"):
        with pytest.raises(ValueError, match="cls_only"):
            model(tiny_pixels(), cls_only=True, **{flag: True})


def test_cls_only_full_size_matches_the_reference(
    full_model, full_reference_outputs, google_pixels
):
    with torch.no_grad():
        ours = full_model(google_pixels, cls_only=True)
    assert_close(ours.logits, full_reference_outputs.logits, atol=1e-4)


# ------------------------------------------------------------------ 9. bfloat16 CPU backbone paths


def test_group_norm_statistics_of_a_1x1_conv_come_from_its_input():
    """The folded GroupNorm (backbone.group_norm_of_conv1x1) equals GroupNorm of the conv's
    output, computed without running the conv."""
    from vithybrid_cli.model.backbone import group_norm_of_conv1x1

    generator = torch.Generator().manual_seed(0)
    h = torch.relu(torch.randn(3, 16, 20, 24, generator=generator))  # post-ReLU, like a block's
    h = h.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(32, 16, 1, 1, generator=generator) / 4
    norm = torch.nn.GroupNorm(4, 32)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(32, generator=generator) + 0.5)
        norm.bias.copy_(torch.randn(32, generator=generator))
        scale, shift = group_norm_of_conv1x1(h, weight, norm)
        conv = F.conv2d(h, weight)
        folded = conv * scale[:, :, None, None] + shift[:, :, None, None]
        assert_close(folded, norm(conv), atol=1e-4)


def fold_used(monkeypatch) -> list[int]:
    """Count calls of the folded conv + GroupNorm + add + ReLU."""
    from vithybrid_cli.model import backbone

    calls = []
    original = backbone.conv_norm_add_relu

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(backbone, "conv_norm_add_relu", counting)
    return calls


def test_folded_bottleneck_tail_matches_plain_ops_and_spares_the_callers_input(
    tiny_checkpoint, monkeypatch
):
    from vithybrid_cli.model import backbone

    if not kernels.conv_available():
        pytest.skip("oneDNN's fused conv is not available on this CPU")
    model = load_model(tiny_checkpoint, dtype=torch.bfloat16)
    block = model.backbone.stages[0].blocks[0]  # 16 -> 32 channels, with a downsample
    x = torch.randn(2, 16, 48, 40).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    calls = fold_used(monkeypatch)
    with torch.no_grad():
        folded = block(x)
        assert calls == [1]
        monkeypatch.setattr(backbone, "FOLD_MIN_PIXELS", 10**9)
        plain = block(x)
    assert calls == [1]
    assert folded.is_contiguous(memory_format=torch.channels_last)
    assert folded.shape == plain.shape == (2, 32, 48, 40)
    assert_close(folded, plain, atol=plain.abs().max().item() / 32)  # bf16 rounding, not drift
    # A block without a downsample adds its input: the caller's tensor must survive.
    monkeypatch.setattr(backbone, "FOLD_MIN_PIXELS", 1024)
    inner = backbone.Bottleneck(model.config.backbone_config, 32, 32, 1, 1, downsample=False)
    inner = inner.to(torch.bfloat16).eval()
    inner.conv3.freeze_standardization()
    inner.to(memory_format=torch.channels_last)
    y = torch.randn(2, 32, 40, 40).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    before = y.clone()
    with torch.no_grad():
        out = inner(y)
        assert calls == [1, 1]
        assert torch.equal(y, before)
        owned = inner(y.clone(), owns_input=True)
    assert torch.equal(out, owned)


def test_bfloat16_backbone_paths_agree_with_plain_ops_at_larger_maps(tiny_checkpoint, monkeypatch):
    """At 256x256 the tiny model's stage-1 and stage-2 maps are large enough for the fold, and
    every small map takes the NCHW GroupNorm round trip: logits agree with the plain ops."""
    from vithybrid_cli.model import backbone

    model = load_model(tiny_checkpoint, dtype=torch.bfloat16)
    pixels = tiny_pixels(2, 256, 256)
    calls = fold_used(monkeypatch)
    with torch.no_grad():
        fast = model(pixels, interpolate_pos_encoding=True)
        if kernels.conv_available():
            assert len(calls) == 2  # stage 1 and stage 2 (one block each)
        monkeypatch.setattr(backbone, "FOLD_MIN_PIXELS", 10**9)
        monkeypatch.setattr(backbone.GroupNormAct, "forward", plain_group_norm_act)
        plain = model(pixels, interpolate_pos_encoding=True)
        reference = load_model(tiny_checkpoint)(pixels, interpolate_pos_encoding=True)
    cosine = F.cosine_similarity(fast.logits.float(), reference.logits, dim=-1)
    assert (cosine > 0.999).all(), cosine
    assert_close(fast.logits, plain.logits, atol=0.05 * reference.logits.abs().max().item())


def plain_group_norm_act(self, x):
    x = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
    return F.relu(x) if self.activation else x


def test_small_channels_last_group_norm_round_trip_is_exact():
    from vithybrid_cli.model.backbone import GroupNormAct

    norm = GroupNormAct(32, 256)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    norm = norm.to(torch.bfloat16)
    x = torch.randn(2, 256, 24, 24).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = norm(x)
        expected = plain_group_norm_act(norm, x.contiguous())
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out.contiguous(), expected)
