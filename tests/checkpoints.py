"""Checkpoints for tests, written by transformers' own save_pretrained (the hub's exact layout).

Random weights, seeded. "full" is google/vit-hybrid-base-bit-384's configuration; "tiny" keeps the
same structure (3 BiT stages, SAME padding, stride 16) at a size that runs in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

GOOGLE_PREPROCESSOR = {
    "do_center_crop": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 384},
    "crop_size": {"height": 384, "width": 384},
    "do_convert_rgb": True,
    "image_processor_type": "ViTHybridImageProcessor",
}

TINY_LABELS = [
    "tabby cat",
    "golden retriever",
    "sports car",
    "teapot",
    "mountain bike",
    "coffee mug",
    "rocket",
    "astronaut",
    "horse",
    "camera",
]


def hf_config(size: str = "full", num_labels: int | None = None, **overrides):
    from transformers import BitConfig
    from transformers.models.deprecated.vit_hybrid import ViTHybridConfig

    if size == "full":
        backbone = BitConfig(
            global_padding="same",
            layer_type="bottleneck",
            depths=[3, 4, 9],
            out_features=["stage3"],
            embedding_dynamic_padding=True,
        )
        labels = [f"class {i}" for i in range(num_labels or 1000)]
        config = ViTHybridConfig(
            backbone_config=backbone,
            image_size=384,
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
        )
    else:
        backbone = BitConfig(
            global_padding="same",
            layer_type="bottleneck",
            depths=[1, 1, 1],
            hidden_sizes=[32, 64, 128, 256],
            embedding_size=16,
            num_groups=4,
            out_features=["stage3"],
            embedding_dynamic_padding=True,
        )
        labels = TINY_LABELS[: num_labels or len(TINY_LABELS)]
        config = ViTHybridConfig(
            backbone_config=backbone,
            image_size=64,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            backbone_featmap_shape=[1, 128, 4, 4],
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
        )
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights with enough spread that every layer matters (HF's init is near-zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if "norm" in name and name.endswith("weight"):
                parameter.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                parameter.copy_(0.05 * noise)
            else:
                parameter.copy_(
                    noise
                    * (0.5 if parameter.dim() > 1 else 0.02)
                    / max(1.0, float(np.sqrt(parameter[0].numel() if parameter.dim() > 1 else 1)))
                )


def make_hf_model(size: str = "full", seed: int = 0, base: bool = False, **config_overrides):
    from transformers.models.deprecated.vit_hybrid import (
        ViTHybridForImageClassification,
        ViTHybridModel,
    )

    torch.manual_seed(seed)
    config = hf_config(size, **config_overrides)
    config._attn_implementation = "eager"
    model = (
        ViTHybridModel(config, add_pooling_layer=True)
        if base
        else (ViTHybridForImageClassification(config))
    )
    randomize(model, seed)
    return model.eval()


def save_checkpoint(
    model,
    directory: Path,
    *,
    safe: bool = True,
    image_size: int | None = None,
    max_shard_size: str | None = None,
) -> Path:
    kwargs = {"safe_serialization": safe}
    if max_shard_size:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(directory, **kwargs)
    side = image_size or model.config.image_size
    preprocessor = dict(
        GOOGLE_PREPROCESSOR, size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    )
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return directory


def make_checkpoint(directory: Path, size: str = "tiny", seed: int = 0, **kwargs) -> Path:
    save_kwargs = {k: kwargs.pop(k) for k in ("safe", "max_shard_size") if k in kwargs}
    model = make_hf_model(size, seed, **kwargs)
    return save_checkpoint(model, directory, **save_kwargs)


def photographs(count: int = 4) -> list:
    """Real photographs that scikit-image ships, as PIL images."""
    import skimage.data
    from PIL import Image

    arrays = [
        skimage.data.chelsea(),
        skimage.data.astronaut(),
        skimage.data.coffee(),
        skimage.data.rocket(),
        skimage.data.camera(),
        skimage.data.horse(),
    ]
    images = []
    for array in arrays[:count]:
        if array.dtype == bool:
            array = (array * 255).astype(np.uint8)
        images.append(Image.fromarray(array))
    return images


# ---------------------------------------------------------------------------- timm's hub layout


def make_timm_model(name: str, seed: int = 0, **model_args):
    """A timm model (pretrained=False) with seeded random weights spread enough to matter.

    Built on the meta device and materialized uninitialized: randomize() writes every parameter
    anyway, and skipping timm's own initialization of ~100M weights saves seconds.
    """
    import timm

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **model_args)
    model = model.to_empty(device="cpu")
    assert not list(model.buffers()), "randomize() would leave buffers uninitialized"
    randomize(model, seed)
    return model.eval()


def save_timm_checkpoint(model, directory: Path, **model_args) -> Path:
    """timm's own save_for_hf: config.json (architecture, num_classes, pretrained_cfg,
    model_args) + model.safetensors, the layout of timm's Hub repos."""
    from timm.models._hub import save_for_hf

    save_for_hf(model, str(directory), model_args=model_args or None, safe_serialization=True)
    return directory


def make_timm_checkpoint(directory: Path, name: str, seed: int = 0, **model_args):
    """(directory, timm model) for timm's `name` with `model_args` overrides."""
    model = make_timm_model(name, seed, **model_args)
    return save_timm_checkpoint(model, directory, **model_args), model
