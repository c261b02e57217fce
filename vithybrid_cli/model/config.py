"""Dataclass configs, parsed from the hub's config.json and preprocessor_config.json, and the
(width, height) a preprocessor config (or an explicit image size) gives the model: target_size.

Field names follow the hub's JSON so a checkpoint's files map onto them one to one; unknown keys
(transformers bookkeeping such as `architectures` or `torch_dtype`) are ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_MODEL_ID = "google/vit-hybrid-base-bit-384"
# hidden_act names (transformers') -> the kind of function model.ACTIVATION_KINDS implements
ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
    "tanh": "tanh",
}
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


class ConfigError(ValueError):
    """A config.json or preprocessor_config.json that cannot describe a working model."""


def placeholder_labels(count: int) -> dict[int, str]:
    """transformers' names for the classes of a head that comes without id2label: LABEL_i."""
    return {i: f"LABEL_{i}" for i in range(count)}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channel counts as BiT does (to a multiple of 8, never more than 10% below)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _read_json(path: str | Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read {what} {path}: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} is not a JSON object")
    return data


def _known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {key: value for key, value in data.items() if key in names}


@dataclass(frozen=True)
class StagePlan:
    """One backbone stage: output channels, blocks, the first block's stride, the dilation."""

    width: int
    depth: int
    stride: int
    dilation: int


@dataclass
class BitConfig:
    """The BiT ResNet that turns pixels into the feature map the ViT reads as tokens."""

    num_channels: int = 3
    embedding_size: int = 64
    hidden_sizes: tuple[int, ...] = (256, 512, 1024, 2048)
    depths: tuple[int, ...] = (3, 4, 9)
    layer_type: str = "bottleneck"
    hidden_act: str = "relu"
    global_padding: str | None = "same"
    num_groups: int = 32
    embedding_dynamic_padding: bool = True
    output_stride: int = 32
    width_factor: int = 1
    out_features: list[str] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BitConfig:
        model_type = data.get("model_type", "bit")
        if model_type != "bit":
            raise ConfigError(
                f"unsupported backbone model_type {model_type!r}: only 'bit' is known"
            )
        config = cls(**_known_fields(cls, data))
        config.hidden_sizes = tuple(config.hidden_sizes)
        config.depths = tuple(config.depths)
        config.validate()
        return config

    def validate(self) -> None:
        if self.layer_type != "bottleneck":
            raise ConfigError(f"unsupported BiT layer_type {self.layer_type!r}: only 'bottleneck'")
        if self.hidden_act != "relu":
            raise ConfigError(f"unsupported BiT hidden_act {self.hidden_act!r}: only 'relu'")
        # No stages at all is valid: timm's vit_tiny_r_s16_p8 reads the stem's output directly.
        if any(depth < 1 for depth in self.depths):
            raise ConfigError(f"BiT depths must be positive, got {list(self.depths)}")
        if len(self.hidden_sizes) < len(self.depths):
            raise ConfigError("BiT hidden_sizes needs one entry per stage in depths")
        if self.out_features and any(
            not name.startswith("stage")
            or not name[5:].isdigit()
            or not 1 <= int(name[5:]) <= len(self.depths)
            for name in self.out_features
        ):
            raise ConfigError(f"BiT out_features {self.out_features} name no existing stage")
        widths = [self.embedding_size]
        for width in self.stage_widths:
            widths += [width, make_divisible(width * 0.25)]
        for width in widths:
            if width % self.num_groups:
                raise ConfigError(
                    f"BiT width {width} is not divisible by num_groups={self.num_groups}"
                )

    @property
    def stage_widths(self) -> list[int]:
        return [stage.width for stage in self.stage_plan()]

    def stage_plan(self) -> list[StagePlan]:
        """Width, stride and dilation of every stage run: the one place BiT's schedule lives.

        The stem (conv stride 2 + max-pool stride 2) downsamples by 4, every stage after the first
        by 2 until output_stride is reached; later stages dilate instead.
        """
        plans, current_stride, dilation = [], 4, 1
        for index in range(self.num_stages):
            stride = 1 if index == 0 else 2
            if current_stride >= self.output_stride:
                dilation, stride = dilation * stride, 1
            width = make_divisible(self.hidden_sizes[index] * self.width_factor)
            plans.append(StagePlan(width, self.depths[index], stride, dilation))
            current_stride *= stride
        return plans

    @property
    def num_stages(self) -> int:
        """Stages actually run: up to the last one named in out_features (stage3 for google's)."""
        if self.out_features:
            return max(int(name.removeprefix("stage")) for name in self.out_features)
        return len(self.depths)

    @property
    def stride(self) -> int:
        """Input pixels per feature-map pixel (per side)."""
        stride = 4
        for stage in self.stage_plan():
            stride *= stage.stride
        return stride

    @property
    def out_channels(self) -> int:
        plans = self.stage_plan()
        return plans[-1].width if plans else self.embedding_size


@dataclass
class ViTHybridConfig:
    """The ViT encoder on top of the backbone, with the checkpoint's labels."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    image_size: int = 384
    patch_size: int = 1
    num_channels: int = 3
    qkv_bias: bool = True
    backbone_config: BitConfig = field(default_factory=BitConfig)
    id2label: dict[int, str] = field(default_factory=dict)
    problem_type: str | None = None
    model_type: str = "vit-hybrid"
    architecture: str | None = None  # timm's architecture name, for timm checkpoints
    pruned_heads: dict[int, list[int]] = field(default_factory=dict)
    backbone_featmap_shape: list[int] | None = None  # (1, C, h, w) the checkpoint was trained at

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViTHybridConfig:
        model_type = data.get("model_type", "vit-hybrid")
        if model_type not in ("vit-hybrid", "vit_hybrid", "timm"):
            raise ConfigError(f"unsupported model_type {model_type!r}: expected 'vit-hybrid'")
        values = _known_fields(cls, data)
        values["backbone_config"] = BitConfig.from_dict(data.get("backbone_config") or {})
        values["id2label"] = {int(k): str(v) for k, v in (data.get("id2label") or {}).items()}
        if "num_labels" in data and not values["id2label"]:
            values["id2label"] = placeholder_labels(int(data["num_labels"]))
        values["pruned_heads"] = {
            int(k): sorted(int(h) for h in v) for k, v in (data.get("pruned_heads") or {}).items()
        }
        image_size = values.get("image_size", 384)
        if isinstance(image_size, (list, tuple)):
            values["image_size"] = int(image_size[0])
        config = cls(**values)
        config.validate()
        return config

    @classmethod
    def from_json(cls, path: str | Path) -> ViTHybridConfig:
        return cls.from_dict(_read_json(path, "model config"))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["id2label"] = {str(k): v for k, v in self.id2label.items()}
        return data

    def validate(self) -> None:
        positive = (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "image_size",
            "patch_size",
            "num_channels",
        )
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(
                f"unknown hidden_act {self.hidden_act!r}; known: {', '.join(ACTIVATIONS)}"
            )
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ConfigError(f"unknown problem_type {self.problem_type!r}")
        if not self.layer_norm_eps > 0:
            raise ConfigError(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")
        if self.num_channels != self.backbone_config.num_channels:
            raise ConfigError("num_channels differs between the model and its backbone_config")
        if self.image_size % self.backbone_config.stride:
            raise ConfigError(
                f"image_size {self.image_size} is not a multiple of the backbone stride "
                f"{self.backbone_config.stride}"
            )

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def stride(self) -> int:
        """Pixels per token side: the backbone's stride times the projection's patch size."""
        return self.backbone_config.stride * self.patch_size

    @property
    def grid_size(self) -> tuple[int, int]:
        """(rows, cols) of the position-embedding grid the checkpoint was trained at."""
        if self.backbone_featmap_shape:
            height, width = self.backbone_featmap_shape[-2:]
            return height // self.patch_size, width // self.patch_size
        side = self.image_size // self.stride
        return side, side


@dataclass
class PreprocessConfig:
    """How pixels become the model's input, as preprocessor_config.json says (hub defaults)."""

    do_resize: bool = True
    size: dict[str, int] = field(default_factory=lambda: {"shortest_edge": 384})
    resample: int = 3  # PIL.Image.BICUBIC
    do_center_crop: bool = True
    crop_size: dict[str, int] = field(default_factory=lambda: {"height": 384, "width": 384})
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    do_convert_rgb: bool = True
    # "transformers" (ViTHybridImageProcessor's rounding) or "timm" (torchvision's: the crop
    # offset rounds half to even, pixels are divided by 255 in float32). timm's crop_pct and
    # crop_mode are kept for display; size and crop_size already say what they mean.
    pipeline: str = "transformers"
    crop_pct: float | None = None
    crop_mode: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        values = _known_fields(cls, data)
        for key, default_key in (("size", "shortest_edge"), ("crop_size", None)):
            value = values.get(key)
            if isinstance(value, int):
                values[key] = (
                    {default_key: value} if default_key else {"height": value, "width": value}
                )
        for key in ("image_mean", "image_std"):
            if key in values:
                value = values[key]
                values[key] = tuple(value) if isinstance(value, (list, tuple)) else (value,) * 3
        config = cls(**values)
        if any(std == 0 for std in config.image_std):
            raise ConfigError("image_std must not contain zeros")
        return config

    @classmethod
    def from_json(cls, path: str | Path) -> PreprocessConfig:
        return cls.from_dict(_read_json(path, "preprocessor config"))

    @property
    def target_size(self) -> tuple[int, int]:
        """(width, height) of the tensor this config produces."""
        if self.do_center_crop:
            return self.crop_size["width"], self.crop_size["height"]
        if "height" in self.size:
            return self.size["width"], self.size["height"]
        edge = self.size["shortest_edge"]
        return edge, edge


def target_size(
    config: PreprocessConfig, image_size: tuple[int, int] | None = None
) -> tuple[int, int]:
    """(W, H) of the array preprocess_image returns for a fixed-size config or image_size."""
    if image_size is not None:
        return int(image_size[0]), int(image_size[1])
    return config.target_size


# ---------------------------------------------------------------------------- timm's hub layout
# timm publishes its checkpoints as config.json {architecture, num_classes, pretrained_cfg,
# optional model_args} beside model.safetensors; the architecture name stands for code in
# timm/models/vision_transformer_hybrid.py, transcribed here.


@dataclass(frozen=True)
class TimmArchitecture:
    """One of timm's BiT-hybrid ViTs: `_resnetv2(layers)` feeding `VisionTransformer(...)`."""

    layers: tuple[int, ...]  # BiT stage depths; () = the stem alone (the tiny models)
    embed_dim: int
    depth: int
    num_heads: int
    img_size: int
    patch_size: int = 1  # on the backbone's feature map


TIMM_ARCHITECTURES: dict[str, TimmArchitecture] = {
    "vit_tiny_r_s16_p8_224": TimmArchitecture((), 192, 12, 3, 224, patch_size=8),
    "vit_tiny_r_s16_p8_384": TimmArchitecture((), 192, 12, 3, 384, patch_size=8),
    "vit_small_r26_s32_224": TimmArchitecture((2, 2, 2, 2), 384, 12, 6, 224),
    "vit_small_r26_s32_384": TimmArchitecture((2, 2, 2, 2), 384, 12, 6, 384),
    "vit_base_r26_s32_224": TimmArchitecture((2, 2, 2, 2), 768, 12, 12, 224),
    "vit_base_r50_s16_224": TimmArchitecture((3, 4, 9), 768, 12, 12, 224),
    "vit_base_r50_s16_384": TimmArchitecture((3, 4, 9), 768, 12, 12, 384),
    "vit_large_r50_s32_224": TimmArchitecture((3, 4, 6, 3), 1024, 24, 16, 224),
    "vit_large_r50_s32_384": TimmArchitecture((3, 4, 6, 3), 1024, 24, 16, 384),
}
# model_args (timm's create_model keyword overrides) that map onto our config; any other is refused
TIMM_MODEL_ARGS = frozenset(
    {"embed_dim", "depth", "num_heads", "img_size", "patch_size", "mlp_ratio", "num_classes"}
    | {"in_chans", "qkv_bias", "global_pool", "class_token"}
)
# timm's interpolation names -> PIL resample filters (torchvision's pil_modes_mapping)
PIL_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
TIMM_DEFAULT_CROP_PCT = 0.875  # timm.data.constants.DEFAULT_CROP_PCT


def is_timm_config(data: dict[str, Any]) -> bool:
    return "architecture" in data and "model_type" not in data


def read_json(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`, or ConfigError naming the file."""
    return _read_json(path, what)


def timm_model_config(data: dict[str, Any]) -> ViTHybridConfig:
    """Our config for a timm config.json; id2label holds placeholders (weights.py names them)."""
    name = data.get("architecture")
    if name not in TIMM_ARCHITECTURES:
        raise ConfigError(
            f"unsupported timm architecture {name!r}; known: {', '.join(TIMM_ARCHITECTURES)}"
        )
    arch = TIMM_ARCHITECTURES[name]
    args = dict(data.get("model_args") or {})
    unknown = sorted(set(args) - TIMM_MODEL_ARGS)
    if unknown:
        raise ConfigError(f"unsupported timm model_args for {name}: {', '.join(unknown)}")
    if args.get("global_pool", data.get("global_pool", "token")) != "token":
        raise ConfigError("only timm's global_pool='token' (the CLS token) is supported")
    if args.get("class_token", True) is not True:
        raise ConfigError("timm models without a class token are not supported")
    img_size = args.get("img_size", arch.img_size)
    if isinstance(img_size, (list, tuple)):
        if len(set(img_size)) != 1:
            raise ConfigError(f"non-square img_size {list(img_size)} is not supported")
        img_size = img_size[0]
    embed_dim = int(args.get("embed_dim", arch.embed_dim))
    num_classes = int(
        args.get("num_classes", data.get("num_classes", pretrained_cfg_of(data).get("num_classes")))
    )
    in_chans = int(args.get("in_chans", 3))
    backbone = BitConfig(
        num_channels=in_chans,
        depths=arch.layers,
        output_stride=32,  # timm's ResNetV2 default; r50_s16 gets 16 from having 3 stages
        global_padding="same",
        embedding_dynamic_padding=True,
    )
    backbone.validate()
    config = ViTHybridConfig(
        hidden_size=embed_dim,
        num_hidden_layers=int(args.get("depth", arch.depth)),
        num_attention_heads=int(args.get("num_heads", arch.num_heads)),
        intermediate_size=int(embed_dim * float(args.get("mlp_ratio", 4.0))),
        hidden_act="gelu",
        layer_norm_eps=1e-6,  # timm's ViT LayerNorm
        image_size=int(img_size),
        patch_size=int(args.get("patch_size", arch.patch_size)),
        num_channels=in_chans,
        qkv_bias=bool(args.get("qkv_bias", True)),
        backbone_config=backbone,
        id2label=placeholder_labels(num_classes),
        model_type="timm",
        architecture=name,
    )
    config.validate()
    return config


def pretrained_cfg_of(data: dict[str, Any]) -> dict[str, Any]:
    cfg = data.get("pretrained_cfg") or {}
    if not isinstance(cfg, dict):
        raise ConfigError("pretrained_cfg must be a JSON object")
    return cfg


def timm_preprocess_config(data: dict[str, Any]) -> PreprocessConfig:
    """timm's resolve_data_config + transforms_imagenet_eval for a config.json's pretrained_cfg.

    scale = floor(input_size / crop_pct); crop_mode "center" resizes the shortest edge to it
    (torchvision Resize) and center-crops input_size; "squash" resizes both edges to it, then
    crops. Then ToTensor (float32 / 255) and Normalize(mean, std).
    """
    cfg = pretrained_cfg_of(data)
    input_size = cfg.get("input_size", (3, 224, 224))
    if len(input_size) != 3:
        raise ConfigError(f"pretrained_cfg input_size must be (C, H, W), got {input_size}")
    _, height, width = (int(v) for v in input_size)
    crop_pct = float(cfg.get("crop_pct") or TIMM_DEFAULT_CROP_PCT)
    crop_mode = cfg.get("crop_mode") or "center"
    interpolation = cfg.get("interpolation") or "bilinear"
    if interpolation not in PIL_RESAMPLE:
        raise ConfigError(f"unsupported timm interpolation {interpolation!r}")
    scale_h, scale_w = math.floor(height / crop_pct), math.floor(width / crop_pct)
    if crop_mode == "squash":
        size = {"height": scale_h, "width": scale_w}
    elif crop_mode == "center" and height == width:
        size = {"shortest_edge": scale_h}
    else:
        raise ConfigError(
            f"timm crop_mode {crop_mode!r} at {height}x{width} is not supported "
            "(center on square inputs, or squash)"
        )
    mean = tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225)))
    config = PreprocessConfig(
        size=size,
        resample=PIL_RESAMPLE[interpolation],
        crop_size={"height": height, "width": width},
        image_mean=mean,
        image_std=std,
        crop_pct=crop_pct,
        crop_mode=crop_mode,
        pipeline="timm",
    )
    if any(value == 0 for value in config.image_std):
        raise ConfigError("pretrained_cfg std must not contain zeros")
    return config
