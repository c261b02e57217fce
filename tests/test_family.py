"""timm's BiT-hybrid family through vithybrid: architectures against timm, timm's preprocessing,
the eleven hub ids from an offline cache, short names, ImageNet-21k labels, features-only.

Checkpoints are timm models with random seeded weights, saved by timm's own save_for_hf (the
layout of timm's Hub repos). Routine tests use the real architectures with fewer ViT blocks and a
small input (timm's model_args, which the checkpoint's config.json carries); the full-size ones
are marked slow.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from checkpoints import make_timm_checkpoint, make_timm_model, photographs, save_timm_checkpoint

from vithybrid_cli.data.preprocess import preprocess_image
from vithybrid_cli.model import kernels
from vithybrid_cli.model.config import TIMM_ARCHITECTURES, timm_preprocess_config
from vithybrid_cli.model.weights import (
    MODEL_ALIASES,
    FeaturesOnlyError,
    imagenet21k_labels,
    load_model,
    require_classifier,
    resolve_checkpoint,
)

TIMM_IDS = [hub_id for hub_id in MODEL_ALIASES.values() if hub_id.startswith("timm/")]


def timm_logits(model, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixels)


def our_logits(model, pixels: torch.Tensor, interpolate: bool = False) -> torch.Tensor:
    with torch.no_grad():
        output = model(pixels, interpolate_pos_encoding=interpolate)
    return output.logits if output.logits is not None else output.cls_embedding


def assert_matches_timm(tmp_path, name: str, sizes: list[tuple[int, int]], **model_args) -> None:
    """Native size within 1e-4; each (H, W) in `sizes` within 1e-3 of timm's
    dynamic_img_size=True, all in float32."""
    directory, reference = make_timm_checkpoint(tmp_path / "ckpt", name, **model_args)
    ours = load_model(directory)
    assert ours.config.architecture == name.split(".")[0]
    side = ours.config.image_size
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(1, 3, side, side, generator=generator)
    expected = timm_logits(reference, pixels)
    torch.testing.assert_close(our_logits(ours, pixels), expected, atol=1e-4, rtol=0)
    assert expected.abs().max() > 0.1  # a real signal, not a collapsed output
    import timm

    with torch.device("meta"):
        dynamic = timm.create_model(name, pretrained=False, dynamic_img_size=True, **model_args)
    dynamic.load_state_dict(reference.state_dict(), assign=True)
    dynamic.eval()
    for height, width in sizes:
        pixels = torch.randn(1, 3, height, width, generator=generator)
        torch.testing.assert_close(
            our_logits(ours, pixels, interpolate=True),
            timm_logits(dynamic, pixels),
            atol=1e-3,
            rtol=0,
        )


# ---------------------------------------------------------------------------- 1. architectures


def test_tiny_p8_matches_timm(tmp_path):
    """vit_tiny_r_s16_p8 at its native 224: the BiT stem alone (layers=()), 8x8 patches on its
    stride-4 map; two of its twelve blocks."""
    # 200x264: a stem map of 50x66, which the 8x8 projection floors to 6x8 tokens
    assert_matches_timm(
        tmp_path, "vit_tiny_r_s16_p8_224.augreg_in21k_ft_in1k", [(160, 288), (200, 264)], depth=2
    )


@pytest.mark.slow  # ~25M backbone weights to make, save and load: seconds, not milliseconds
@pytest.mark.parametrize(
    "name", ["vit_base_r50_s16_224.orig_in21k", "vit_small_r26_s32_224.augreg_in21k_ft_in1k"]
)
def test_resnet_backbones_match_timm(tmp_path, name):
    """The real BiT backbones (r50: 3 stages, stride 16; r26: 4 stages, stride 32), one ViT
    block, a 64-pixel input; base's in21k checkpoint is features only (its CLS embedding)."""
    assert_matches_timm(tmp_path, name, [(96, 64), (80, 112)], depth=1, img_size=64)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "vit_small_r26_s32_384.augreg_in21k_ft_in1k",
        "vit_base_r50_s16_384.orig_in21k_ft_in1k",
        "vit_large_r50_s32_224.augreg_in21k_ft_in1k",
    ],
)
def test_full_size_members_match_timm(tmp_path, name):
    side = TIMM_ARCHITECTURES[name.split(".")[0]].img_size
    assert_matches_timm(tmp_path, name, [(side + 64, side - 32), (side - 48, side + 96)])


@pytest.mark.slow
@pytest.mark.parametrize("hub_id", TIMM_IDS)
def test_every_member_has_timms_tensors_and_parameters(hub_id, tmp_path):
    """On the meta device (no weights): our model for each id's config holds exactly timm's
    tensors, under timm's names once converted, with the same shapes."""
    import timm
    from timm.models._hub import save_config_for_hf

    from vithybrid_cli.model.config import read_json, timm_model_config
    from vithybrid_cli.model.model import ViTHybrid
    from vithybrid_cli.model.weights import convert_state_dict

    with torch.device("meta"):
        reference = timm.create_model(hub_id.removeprefix("timm/"), pretrained=False)
    config_file = tmp_path / "config.json"
    save_config_for_hf(reference, config_file)
    config = timm_model_config(read_json(config_file, "config"))
    converted, unknown = convert_state_dict(reference.state_dict(), "timm")
    with torch.device("meta"):
        ours = ViTHybrid(config, num_labels=config.num_labels)
    assert unknown == []
    assert {k: tuple(v.shape) for k, v in converted.items()} == {
        k: tuple(v.shape) for k, v in ours.state_dict().items()
    }


# ---------------------------------------------------------------------------- 2. preprocessing


@pytest.mark.parametrize(
    "name,crop_mode",
    [
        ("vit_tiny_r_s16_p8_224.augreg_in21k", "center"),  # crop_pct 0.9: resize 248, crop 224
        ("vit_small_r26_s32_384.augreg_in21k_ft_in1k", "center"),  # crop_pct 1.0
        ("vit_small_r26_s32_224.augreg_in21k", "squash"),
    ],
)
def test_preprocessing_is_timms_bit_for_bit(name, crop_mode):
    """timm's resolve_data_config + create_transform on real photographs (and odd sizes whose
    crop offsets round differently from transformers'): bit-identical float32."""
    import timm
    from timm.data import create_transform, resolve_data_config

    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    cfg["crop_mode"] = crop_mode
    transform = create_transform(**resolve_data_config(pretrained_cfg=cfg))
    ours = timm_preprocess_config({"pretrained_cfg": json.loads(json.dumps(cfg))})
    images = [image.convert("RGB") for image in photographs(6)]
    images += [images[0].resize((301, 457)), images[2].crop((0, 0, 250, 251))]
    images += [images[3].resize((2000, 31))]  # the crop-window-only resize path
    for image in images:
        expected = transform(image).numpy()
        got = preprocess_image(image, ours)
        assert got.shape == expected.shape
        assert np.array_equal(got, expected), image.size


# ---------------------------------------------------------------------------- 3. hub, names, labels


def test_short_names_name_the_eleven_timm_ids():
    assert len(TIMM_IDS) == 11 and len(set(TIMM_IDS)) == 11
    for hub_id in TIMM_IDS:
        assert hub_id.removeprefix("timm/").split(".")[0] in TIMM_ARCHITECTURES
    assert all(name.startswith("hybrid-") for name in MODEL_ALIASES)


def published_config(hub_id: str) -> dict:
    """config.json as timm publishes it, from timm's registry (no model built)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(hub_id.removeprefix("timm/")).to_dict()
    return {
        "architecture": cfg["architecture"],
        "num_classes": cfg["num_classes"],
        "global_pool": "token",
        "pretrained_cfg": json.loads(json.dumps(cfg)),
    }


def test_all_eleven_ids_resolve_from_an_offline_cache(hf_hub_cache, tmp_path, no_network):
    """Every id (and its short name) resolves in an offline cache populated with its published
    config.json; the architecture, labels and preprocessing follow from it."""
    from timm.data import resolve_data_config

    from vithybrid_cli.model.weights import read_configs

    for hub_id in TIMM_IDS:
        source = tmp_path / hub_id.replace("/", "--")
        source.mkdir()
        (source / "config.json").write_text(json.dumps(published_config(hub_id)))
        (source / "model.safetensors").write_bytes(b"")  # resolving reads no weights
        if hub_id == MODEL_ALIASES["hybrid-tiny-384"]:  # loaded too: one block, 64 pixels
            make_timm_checkpoint(source, hub_id[5:], depth=1, img_size=64)
        commit = hf_hub_cache.add(hub_id, source)
        short = next(name for name, target in MODEL_ALIASES.items() if target == hub_id)
        for name in (hub_id, short):
            resolved = resolve_checkpoint(name)
            assert resolved.from_hub and resolved.name == hub_id
            assert resolved.weight_files[0].parent.name == commit
        config, preprocess = read_configs(resolve_checkpoint(short))
        arch = TIMM_ARCHITECTURES[config.architecture]
        assert config.backbone_config.depths == arch.layers
        assert config.hidden_size == arch.embed_dim and config.patch_size == arch.patch_size
        cfg = json.loads((source / "config.json").read_text())["pretrained_cfg"]
        assert cfg["tag"] == hub_id.split(".", 1)[1]
        assert config.num_labels == cfg["num_classes"]
        expected = resolve_data_config(pretrained_cfg=cfg)
        assert preprocess.crop_size == {
            "height": expected["input_size"][1],
            "width": expected["input_size"][2],
        }
        assert preprocess.crop_pct == expected["crop_pct"]
        assert preprocess.image_mean == tuple(expected["mean"])
        if config.num_labels == 21843:
            assert config.id2label[2397] == "tabby, tabby cat"
        if short == "hybrid-tiny-384":
            model = load_model(short)
            assert model.checkpoint.name == hub_id and model.config.patch_size == 8
            pixels = torch.zeros(1, 3, 64, 64)
            assert our_logits(model, pixels).shape[-1] == cfg["num_classes"]
    assert no_network == []


def test_cached_timm_id_loads_and_labels_21k_classes(hf_hub_cache, tmp_path, no_network):
    """A timm id from the cache, end to end: load by short name, classify with 21k names."""
    import vithybrid_cli

    hub_id = MODEL_ALIASES["hybrid-tiny-224-in21k"]
    args = dict(depth=2, img_size=64)
    directory, reference = make_timm_checkpoint(tmp_path / "ckpt", hub_id[5:], **args)
    hf_hub_cache.add(hub_id, directory)
    model = load_model("hybrid-tiny-224-in21k")
    assert model.checkpoint.from_hub and model.checkpoint.name == hub_id
    assert model.config.id2label == imagenet21k_labels()
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(our_logits(model, pixels), timm_logits(reference, pixels))
    (top,) = vithybrid_cli.classify(model, photographs(1), top_k=3)
    assert [label for _, label, _ in top] == [model.config.id2label[i] for i, _, _ in top]
    assert no_network == []


def test_imagenet21k_label_file():
    """21,843 names in the in21k checkpoints' output order: timm's own ImageNet-21k info."""
    from timm.data import ImageNetInfo

    labels = imagenet21k_labels()
    assert len(labels) == 21843
    info = ImageNetInfo("imagenet-21k-goog")
    for index in (0, 1, 2397, 10000, 21842):
        assert labels[index] == info.index_to_description(index)
    assert labels[0] == "organism, being"
    assert labels[2397] == "tabby, tabby cat"
    assert "golden retriever" in labels.values()


def test_features_only_checkpoint_refuses_classify_but_embeds(tmp_path):
    import vithybrid_cli

    directory, _ = make_timm_checkpoint(
        tmp_path / "ckpt", "vit_tiny_r_s16_p8_224.augreg_in21k", depth=1, img_size=64, num_classes=0
    )
    model = load_model(directory)
    assert model.classifier is None and model.config.num_labels == 0
    with pytest.raises(FeaturesOnlyError) as error:
        require_classifier(model)
    message = str(error.value)
    assert "\n" not in message and "embed" in message and "fit" in message
    vectors = vithybrid_cli.embed(model, photographs(2))
    assert vectors.shape == (2, 192) and np.isfinite(vectors).all()


def test_classify_command_refuses_features_only(tmp_path):
    from typer.testing import CliRunner

    from vithybrid_cli.cli import app

    directory, _ = make_timm_checkpoint(
        tmp_path / "ckpt", "vit_tiny_r_s16_p8_224.augreg_in21k", depth=1, img_size=64, num_classes=0
    )
    image = tmp_path / "cat.jpg"
    photographs(1)[0].save(image)
    result = CliRunner().invoke(app, ["classify", str(image), "--model", str(directory)])
    assert result.exit_code != 0
    assert "features only" in result.output and "embed" in result.output


# ---------------------------------------------------------------------------- 4. fast paths


@pytest.mark.parametrize(
    "name",
    [
        "vit_tiny_r_s16_p8_224.augreg_in21k_ft_in1k",
        pytest.param("vit_small_r26_s32_224.augreg_in21k", marks=pytest.mark.slow),
    ],
)
def test_bfloat16_and_fused_paths_follow_float32(tmp_path, name, monkeypatch):
    """bf16 (channels_last backbone, oneDNN epilogues where present, the folded GroupNorm on the
    r26's 32x32 stage-1 map at 128 pixels) stays with float32 for widths 192 and 384."""
    from vithybrid_cli.model import backbone

    directory, _ = make_timm_checkpoint(tmp_path / "ckpt", name, depth=2, img_size=128)
    exact = load_model(directory)
    fast = load_model(directory, dtype=torch.bfloat16)
    pixels = torch.randn(2, 3, 128, 160, generator=torch.Generator().manual_seed(0))
    folds = []
    original = backbone.conv_norm_add_relu
    monkeypatch.setattr(backbone, "conv_norm_add_relu", lambda *a: folds.append(1) or original(*a))
    got = our_logits(fast, pixels, interpolate=True).float()
    want = our_logits(exact, pixels, interpolate=True)
    cosine = torch.nn.functional.cosine_similarity(got, want, dim=-1)
    assert (cosine > 0.99).all(), cosine
    if "small" in name and kernels.conv_available():
        assert folds  # stage 1 (32x40 map) took the folded path
    with torch.no_grad():
        attentions = exact(pixels, output_attentions=True, interpolate_pos_encoding=True)
    assert attentions.grid_size == (4, 5)  # (128/32, 160/32): both have stride 32
    assert attentions.attentions[0].shape[-1] == 1 + 4 * 5


@pytest.mark.slow
def test_small_384_classifies_end_to_end(tmp_path, hf_hub_cache):
    """`vithybrid classify cat.jpg --model <small 384 id>` from the cache, full size."""
    from typer.testing import CliRunner

    from vithybrid_cli.cli import app

    hub_id = MODEL_ALIASES["hybrid-small-384"]
    model = make_timm_model(hub_id[5:])
    hf_hub_cache.add(hub_id, save_timm_checkpoint(model, tmp_path / "ckpt"))
    image = tmp_path / "cat.jpg"
    photographs(1)[0].save(image)
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, ["classify", str(image), "--model", hub_id, "-o", str(out)])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["path"].endswith("cat.jpg") and len(record["top_k"]) == 5


# ---------------------------------------------------------------------------- 5. the menu


def test_menu_cost_is_timms(monkeypatch):
    """Parameters and FLOPs of a member equal timm's model's, counted the same way."""
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    from vithybrid_cli.model.family import cost

    with torch.device("meta"), torch.no_grad():
        reference = timm.create_model("vit_tiny_r_s16_p8_384", pretrained=False)
        with FlopCounterMode(display=False) as counter:
            reference(torch.empty(1, 3, 384, 384))
    ours = cost("vit_tiny_r_s16_p8_384", 1000)
    assert ours.parameters == sum(p.numel() for p in reference.parameters())
    assert ours.gflops == pytest.approx(counter.get_total_flops() / 1e9, rel=1e-6)
    assert ours.input_size == 384


def test_readme_documents_every_short_name():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text("utf-8")
    section = readme.split("## Choosing a model", 1)[1].split("\n## ", 1)[0]
    for name, hub_id in MODEL_ALIASES.items():
        assert f"`{name}`" in section
        assert hub_id.split("/", 1)[1].split(".")[0] in section or name.endswith("google")


@pytest.mark.slow
def test_every_members_stored_cost_is_computed_from_its_architecture():
    from vithybrid_cli.model.family import MEMBERS, cost

    for member in MEMBERS:
        computed = cost(member.architecture, member.classes)
        assert member.cost.parameters == computed.parameters, member.short_name
        assert member.cost.gflops == pytest.approx(computed.gflops, abs=0.0005), member.short_name
        assert member.cost.input_size == computed.input_size, member.short_name


def test_models_command_prints_the_menu():
    from typer.testing import CliRunner

    from vithybrid_cli.cli import app
    from vithybrid_cli.model.family import MEMBERS

    result = CliRunner().invoke(app, ["models"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for member in MEMBERS:
        assert member.short_name in result.output
    assert "329.1M" in result.output and "86.2" in result.output  # large-384, timm's table


def test_crop_box_is_the_region_timm_crops():
    """preprocess.crop_box maps the model's input back onto the photo: with crop_pct 0.9 the
    centre 224/248 of the short side, offsets rounded as torchvision rounds them."""
    import timm

    from vithybrid_cli.data.preprocess import crop_box

    cfg = timm.models.get_pretrained_cfg("vit_tiny_r_s16_p8_224.augreg_in21k").to_dict()
    config = timm_preprocess_config({"pretrained_cfg": json.loads(json.dumps(cfg))})
    box = crop_box((600, 400), config)
    # 600x400 -> 372x248 (int(248 * 600 / 400)), crop 224 at round(148 / 2), round(24 / 2)
    scale = 400 / 248
    assert box == tuple(round(v * scale) for v in (74, 12, 74 + 224, 12 + 224))
    image = photographs(1)[0].convert("RGB").resize((600, 400))
    pixels = np.asarray(image.crop(box).resize((224, 224), 3), dtype=np.float32)
    cropped = (pixels.transpose(2, 0, 1) / 255 - 0.5) / 0.5  # timm's mean and std: 0.5
    full = preprocess_image(image, config)
    assert np.abs(cropped - full).mean() < 0.05  # the same picture, resampled once more
