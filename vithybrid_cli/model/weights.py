"""Checkpoints: resolve a hub id, directory or file; read safetensors / .bin; map names to ours.

Every checkpoint name this project understands is in the tables below (transformers' and timm's);
nothing else in the package knows them.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import (
    DEFAULT_MODEL_ID,
    ConfigError,
    PreprocessConfig,
    ViTHybridConfig,
    is_timm_config,
    placeholder_labels,
    read_json,
    timm_model_config,
    timm_preprocess_config,
)

if TYPE_CHECKING:
    import torch

    from .model import ViTHybrid

logger = logging.getLogger(__name__)

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
CONFIG_FILE = "config.json"
HUB_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*")
PREPROCESSOR_FILE = "preprocessor_config.json"

# transformers (ViTHybridForImageClassification / ViTHybridModel) -> ours. Applied in order, the
# first match wins; q/k/v are fused afterwards (see _fuse_qkv).
HF_TABLE: list[tuple[str, str]] = [
    (r"^(?:vit\.)?embeddings\.cls_token$", "embeddings.cls_token"),
    (r"^(?:vit\.)?embeddings\.mask_token$", "embeddings.mask_token"),
    (r"^(?:vit\.)?embeddings\.position_embeddings$", "embeddings.position_embeddings"),
    (
        r"^(?:vit\.)?embeddings\.patch_embeddings\.backbone\.bit\.embedder\.convolution\.",
        "embeddings.patch_embed.backbone.stem.conv.",
    ),
    (
        r"^(?:vit\.)?embeddings\.patch_embeddings\.backbone\.bit\.embedder\.norm\.",
        "embeddings.patch_embed.backbone.stem.norm.",
    ),
    (
        r"^(?:vit\.)?embeddings\.patch_embeddings\.backbone\.bit\.encoder\.stages\.(\d+)\.layers\.(\d+)\.",
        r"embeddings.patch_embed.backbone.stages.\1.blocks.\2.",
    ),
    (
        r"^(?:vit\.)?embeddings\.patch_embeddings\.projection\.",
        "embeddings.patch_embed.projection.",
    ),
    (
        r"^(?:vit\.)?encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.",
        r"blocks.\1.attention.\2.",
    ),
    (r"^(?:vit\.)?encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attention.proj."),
    (r"^(?:vit\.)?encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"^(?:vit\.)?encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^(?:vit\.)?encoder\.layer\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^(?:vit\.)?encoder\.layer\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"^(?:vit\.)?layernorm\.", "norm."),
    (r"^(?:vit\.)?pooler\.dense\.", "pooler."),
    (r"^classifier\.", "classifier."),
]

# timm's vision_transformer_hybrid models -> ours (qkv is already fused there). The tiny models'
# backbone is the stem alone, a Sequential whose conv and norm sit right under the backbone.
TIMM_TABLE: list[tuple[str, str]] = [
    (r"^cls_token$", "embeddings.cls_token"),
    (r"^pos_embed$", "embeddings.position_embeddings"),
    (r"^patch_embed\.backbone\.(stem|stages)\.", r"embeddings.patch_embed.backbone.\1."),
    (r"^patch_embed\.backbone\.(conv|norm)\.", r"embeddings.patch_embed.backbone.stem.\1."),
    (r"^patch_embed\.proj\.", "embeddings.patch_embed.projection."),
    (r"^blocks\.(\d+)\.attn\.", r"blocks.\1.attention."),
    (r"^blocks\.(\d+)\.(norm1|norm2|mlp\.fc1|mlp\.fc2)\.", r"blocks.\1.\2."),
    (r"^norm\.", "norm."),
    (r"^head\.", "classifier."),
]


# The family's short names (README "Choosing a model"): hybrid-<size>-<input side> is the
# ImageNet-1k classifier (pre-trained on ImageNet-21k, fine-tuned on 1k); the -in21k suffix is
# the ImageNet-21k model before fine-tuning (21,843 classes; base's has no head: features only).
MODEL_ALIASES: dict[str, str] = {
    "hybrid-tiny-224": "timm/vit_tiny_r_s16_p8_224.augreg_in21k_ft_in1k",
    "hybrid-tiny-384": "timm/vit_tiny_r_s16_p8_384.augreg_in21k_ft_in1k",
    "hybrid-tiny-224-in21k": "timm/vit_tiny_r_s16_p8_224.augreg_in21k",
    "hybrid-small-224": "timm/vit_small_r26_s32_224.augreg_in21k_ft_in1k",
    "hybrid-small-384": "timm/vit_small_r26_s32_384.augreg_in21k_ft_in1k",
    "hybrid-small-224-in21k": "timm/vit_small_r26_s32_224.augreg_in21k",
    "hybrid-base-384": "timm/vit_base_r50_s16_384.orig_in21k_ft_in1k",
    "hybrid-base-224-in21k": "timm/vit_base_r50_s16_224.orig_in21k",
    "hybrid-large-224": "timm/vit_large_r50_s32_224.augreg_in21k_ft_in1k",
    "hybrid-large-384": "timm/vit_large_r50_s32_384.augreg_in21k_ft_in1k",
    "hybrid-large-224-in21k": "timm/vit_large_r50_s32_224.augreg_in21k",
    "hybrid-base-384-google": DEFAULT_MODEL_ID,
}


def resolve_alias(name: str) -> str:
    """The hub id a short name stands for; anything else unchanged."""
    return MODEL_ALIASES.get(name, name)


def misspelled_short_name(name: str) -> str | None:
    """What to say of a name that looks like a mistyped short name (`hybrid-smal-384`), else
    None. Hub ids (`org/name`), paths and the short names themselves are not looked at."""
    if name in MODEL_ALIASES or "/" in name or os.sep in name:
        return None
    close = difflib.get_close_matches(name, MODEL_ALIASES, n=1, cutoff=0.75)
    if not close and not name.startswith("hybrid-"):
        return None
    hint = f"did you mean {close[0]}?" if close else "not a short name"
    return f"unknown model {name!r}: {hint} (`vithybrid models` lists them)"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be found, read or matched to the model; says what to do."""


@dataclass
class ResolvedCheckpoint:
    """Where a checkpoint's files are on disk, and where they came from."""

    name: str
    revision: str | None
    weight_files: list[Path]
    config_file: Path | None = None
    preprocessor_file: Path | None = None
    directory: Path | None = None
    from_hub: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- resolving files


def resolve_checkpoint(
    name_or_path: str | os.PathLike = DEFAULT_MODEL_ID, revision: str | None = None
) -> ResolvedCheckpoint:
    """A local weights file, a local checkpoint directory, or a hub id (cached or downloaded)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return _resolve_file(path)
    if path.is_dir():
        return _resolve_directory(path, str(name_or_path), revision)
    if misspelled := misspelled_short_name(str(name_or_path)):  # before any network
        raise CheckpointError(misspelled)
    name = resolve_alias(str(name_or_path))
    if not HUB_ID.fullmatch(name):
        raise CheckpointError(
            f"model {name!r} is neither an existing file or directory nor a Hugging Face Hub id "
            f"(like {DEFAULT_MODEL_ID})"
        )
    return _resolve_hub(name, revision)


def _resolve_file(path: Path) -> ResolvedCheckpoint:
    directory = path.parent
    weight_files = _shards_from_index(path) if path.name.endswith(".index.json") else [path]
    config = directory / CONFIG_FILE
    preprocessor = directory / PREPROCESSOR_FILE
    return ResolvedCheckpoint(
        name=str(path),
        revision=None,
        weight_files=weight_files,
        directory=directory,
        config_file=config if config.is_file() else None,
        preprocessor_file=preprocessor if preprocessor.is_file() else None,
    )


def _resolve_directory(directory: Path, name: str, revision: str | None) -> ResolvedCheckpoint:
    for filename in WEIGHT_FILES:
        candidate = directory / filename
        if candidate.is_file():
            resolved = _resolve_file(candidate)
            resolved.name, resolved.revision = name, revision
            return resolved
    raise CheckpointError(f"no weights in {directory}: expected one of {', '.join(WEIGHT_FILES)}")


def _shards_from_index(index_file: Path) -> list[Path]:
    try:
        weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError) as error:
        raise CheckpointError(f"cannot read shard index {index_file}: {error}") from error
    shards = [index_file.parent / name for name in sorted(set(weight_map.values()))]
    missing = [str(shard) for shard in shards if not shard.is_file()]
    if missing:
        raise CheckpointError(f"shards listed in {index_file} are missing: {', '.join(missing)}")
    return shards


def _resolve_hub(repo_id: str, revision: str | None) -> ResolvedCheckpoint:
    """Config, preprocessor and weights from the huggingface_hub cache, else downloaded.

    The cache is tried first so a cached model needs no network at all; only a missing file
    goes online, after a quick reachability check (huggingface_hub would otherwise retry a dead
    network for half a minute per file).
    """
    from huggingface_hub import constants

    try:
        return _fetch_checkpoint(repo_id, revision, local_only=True)
    except _NotCached:
        pass
    if constants.HF_HUB_OFFLINE or not _hub_reachable(constants.ENDPOINT):
        raise CheckpointError(
            f"cannot get model {repo_id!r}: it is not in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and the Hub is "
            f"{'disabled (HF_HUB_OFFLINE)' if constants.HF_HUB_OFFLINE else 'unreachable'}. "
            f"Connect once to download it, set HF_HOME or HF_HUB_CACHE to a cache that has it, "
            f"or pass --model /path/to/checkpoint (a directory with config.json and "
            f"model.safetensors)"
        )
    try:
        return _fetch_checkpoint(repo_id, revision, local_only=False)
    except _NotCached as error:  # the network went away mid-download
        raise CheckpointError(f"download of {repo_id!r} failed: {error}") from error


class _NotCached(Exception):
    pass


def _hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _fetch_checkpoint(repo_id: str, revision: str | None, local_only: bool) -> ResolvedCheckpoint:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    def fetch(filename: str, required: bool) -> Path | None:
        try:
            return Path(
                hf_hub_download(repo_id, filename, revision=revision, local_files_only=local_only)
            )
        except EntryNotFoundError:
            return None
        except LocalEntryNotFoundError as error:
            if required:
                raise _NotCached(str(error)) from error
            return None
        except (RepositoryNotFoundError, RevisionNotFoundError) as error:
            raise CheckpointError(
                f"model {repo_id!r} (revision {revision or 'main'}) not found on the Hugging Face "
                f"Hub: check the id, or point --model at a local directory or weights file"
            ) from error
        except (HfHubHTTPError, OSError) as error:
            raise _NotCached(f"{type(error).__name__}: {error}") from error

    config_file = fetch(CONFIG_FILE, required=True)
    preprocessor_file = fetch(PREPROCESSOR_FILE, required=False)
    for filename in WEIGHT_FILES:
        found = fetch(filename, required=False)
        if found is None:
            continue
        weight_files = [found]
        if filename.endswith(".index.json"):
            names = json.loads(found.read_text(encoding="utf-8"))["weight_map"].values()
            weight_files = [fetch(name, required=True) for name in sorted(set(names))]
        return ResolvedCheckpoint(
            name=repo_id,
            revision=revision,
            weight_files=weight_files,
            config_file=config_file,
            preprocessor_file=preprocessor_file,
            directory=config_file.parent,
            from_hub=True,
        )
    if local_only:
        raise _NotCached("no weights file in the cache")
    raise CheckpointError(f"model {repo_id!r} has none of {', '.join(WEIGHT_FILES)}")


# ---------------------------------------------------------------------------- reading tensors


def read_state_dict(files: list[Path]) -> dict[str, torch.Tensor]:
    """Tensors from safetensors or (weights-only, never arbitrary pickles) torch .bin files."""
    import torch

    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            if file.suffix == ".safetensors":
                from safetensors.torch import load_file

                state.update(load_file(str(file)))
            else:
                if not looks_like_torch_file(file):  # a photo, say: torch's answer is of mmap
                    raise CheckpointError(
                        f"cannot read weights file {file}: it is not a checkpoint or weights file "
                        f"(give a checkpoint directory, a .safetensors or PyTorch .bin file, or a "
                        f"hub id)"
                    )
                loaded = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
                if isinstance(loaded, dict) and "state_dict" in loaded:
                    loaded = loaded["state_dict"]
                if not isinstance(loaded, dict):
                    raise CheckpointError(
                        f"{file} holds a {type(loaded).__name__}, not a state dict"
                    )
                state.update(loaded)
        except CheckpointError:
            raise
        except Exception as error:  # corrupt or hostile files raise many different types
            raise CheckpointError(
                f"cannot read weights file {file}: {type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else 'unreadable'} — re-download it "
                f"or check it is a safetensors/PyTorch state dict"
            ) from error
    return state


def looks_like_torch_file(file: Path) -> bool:
    """Whether `file` starts as torch.save writes: a zip archive, or (legacy) a pickle."""
    with open(file, "rb") as opened:
        return opened.read(4).startswith((b"PK\x03\x04", b"\x80"))


# ---------------------------------------------------------------------------- name mapping


def detect_format(state_dict: dict[str, Any]) -> str:
    """'timm' for timm's names, 'hf' for transformers'."""
    if "pos_embed" in state_dict or any(key.startswith("patch_embed.") for key in state_dict):
        return "timm"
    return "hf"


def _rename(key: str, table: list[tuple[str, str]]) -> str | None:
    for pattern, replacement in table:
        renamed, count = re.subn(pattern, replacement, key)
        if count:
            return renamed
    return None


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], checkpoint_format: str | None = None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename a transformers or timm state dict to ours; returns (converted, unrecognised keys)."""
    import torch

    checkpoint_format = checkpoint_format or detect_format(state_dict)
    table = TIMM_TABLE if checkpoint_format == "timm" else HF_TABLE
    converted: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        renamed = _rename(key, table)
        if renamed is None:
            unknown.append(key)
        else:
            converted[renamed] = tensor
    # transformers keeps query/key/value apart; we run them as one matmul.
    parts = re.compile(r"^(blocks\.\d+\.attention)\.(query|key|value)\.(weight|bias)$")
    grouped: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key in [k for k in converted if parts.match(k)]:
        prefix, part, kind = parts.match(key).groups()
        grouped.setdefault((prefix, kind), {})[part] = converted.pop(key)
    for (prefix, kind), tensors in grouped.items():
        if set(tensors) != {"query", "key", "value"}:
            unknown.extend(f"{prefix}.{part}.{kind}" for part in tensors)
            continue
        converted[f"{prefix}.qkv.{kind}"] = torch.cat(
            [tensors["query"], tensors["key"], tensors["value"]], dim=0
        )
    return converted, unknown


def _drop_unused_stages(state_dict: dict[str, Any], num_stages: int) -> None:
    """Backbone stages past the last one the ViT reads are never run; their weights are unused."""
    pattern = re.compile(r"^embeddings\.patch_embed\.backbone\.stages\.(\d+)\.")
    for key in list(state_dict):
        match = pattern.match(key)
        if match and int(match.group(1)) >= num_stages:
            del state_dict[key]


def load_state_dict_into(
    model: ViTHybrid,
    state_dict: dict[str, torch.Tensor],
    unknown: list[str] | None = None,
    assign: bool = False,
) -> None:
    """Strict load with one error that lists missing, unexpected and mis-shaped keys.

    `assign` makes the checkpoint's tensors the parameters (for a model built on the meta device).
    """
    _drop_unused_stages(state_dict, len(model.backbone.stages))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected)) + sorted(unknown or [])
    mismatched = [
        f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(expected[key].shape)}"
        for key, tensor in state_dict.items()
        if key in expected and tuple(tensor.shape) != tuple(expected[key].shape)
    ]
    if missing or unexpected or mismatched:
        # One line: counts and the first keys (all of them, hundreds, would bury the question)
        parts = []
        for title, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrong shapes", mismatched),
        ):
            if keys:
                more = f", … ({len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{title} ({len(keys)}): {', '.join(keys[:3])}{more}")
        raise CheckpointError(
            f"checkpoint does not match the model configuration: {'; '.join(parts)}. "
            "Is config.json the one that belongs to these weights?"
        )
    model.load_state_dict(state_dict, strict=True, assign=assign)


# ---------------------------------------------------------------------------- configs


def _label_file(filename: str) -> dict[int, str]:
    # Read beside this module rather than via importlib.resources.files("vithybrid_cli"), which
    # fails (NotADirectoryError) whenever the package resolves as a namespace package, e.g. an
    # editable install of a tree without __init__.py.
    text = Path(__file__).with_name(filename).read_text("utf-8")
    return dict(enumerate(text.splitlines()))


def imagenet_labels() -> dict[int, str]:
    """The 1,000 ImageNet-1k class names, in the classifiers' output order."""
    return _label_file("imagenet_labels.txt")


def imagenet21k_labels() -> dict[int, str]:
    """The 21,843 ImageNet-21k class names of Google's (and timm's) in21k checkpoints
    (scripts/make_imagenet21k_labels.py made the file from timm's package data)."""
    return _label_file("imagenet21k_labels.txt")


KNOWN_LABEL_SETS = {1000: imagenet_labels, 21843: imagenet21k_labels}


def read_configs(
    resolved: ResolvedCheckpoint, state_dict: dict[str, Any] | None = None
) -> tuple[ViTHybridConfig, PreprocessConfig]:
    """config.json and preprocessor_config.json (transformers' layout), config.json alone
    (timm's: architecture + pretrained_cfg), or google's defaults when a bare weights file
    (e.g. timm's release) comes without them."""
    if resolved.config_file is not None:
        data = read_json(resolved.config_file, "model config")
        if is_timm_config(data):
            config = timm_model_config(data)
            if config.num_labels in KNOWN_LABEL_SETS:
                config.id2label = KNOWN_LABEL_SETS[config.num_labels]()
            return config, timm_preprocess_config(data)
        config = ViTHybridConfig.from_dict(data)
    else:
        logger.info(
            "no config.json beside %s: assuming google's vit-hybrid-base-bit-384 layout",
            resolved.name,
        )
        config = ViTHybridConfig(id2label=imagenet_labels())
        if state_dict is not None:
            head = state_dict.get("head.weight", state_dict.get("classifier.weight"))
            if head is not None and head.shape[0] != 1000:
                config.id2label = placeholder_labels(head.shape[0])
        config.validate()
    if resolved.preprocessor_file is not None:
        preprocess = PreprocessConfig.from_json(resolved.preprocessor_file)
    else:
        side = config.image_size
        preprocess = PreprocessConfig(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side}
        )
    return config, preprocess


def _num_labels(config: ViTHybridConfig, state_dict: dict[str, Any]) -> int:
    """Classifier outputs: config.json's label count, so that a config whose labels do not match
    the head's weights fails the shape check instead of naming the wrong classes."""
    if "classifier.weight" not in state_dict:
        return 0  # a bare ViTHybridModel: no head, whatever id2label says
    if not config.id2label:
        outputs = state_dict["classifier.weight"].shape[0]
        config.id2label = placeholder_labels(outputs)
    return config.num_labels


class FeaturesOnlyError(ValueError):
    """`classify` asked of a checkpoint without a classifier head; str() is one line."""


def require_classifier(model: ViTHybrid) -> None:
    """Refuse a features-only checkpoint (e.g. timm's vit_base_r50_s16_224.orig_in21k) for
    classification, pointing at what it can do instead."""
    if model.classifier is None:
        name = model.checkpoint.name if model.checkpoint is not None else "this checkpoint"
        raise FeaturesOnlyError(
            f"{name} is features only (no classifier head): use `vithybrid embed` for its "
            "vectors, or `vithybrid fit` to train a head on them"
        )


# ---------------------------------------------------------------------------- the entry point


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL_ID,
    revision: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    *,
    inference: bool = True,
) -> ViTHybrid:
    """Build the model a checkpoint describes and load its weights.

    `name_or_path` is a hub id (default google/vit-hybrid-base-bit-384, or any of timm's BiT
    hybrids), a short name (MODEL_ALIASES, e.g. hybrid-small-384), a checkpoint directory
    (transformers' config.json + preprocessor_config.json, or timm's config.json with
    architecture and pretrained_cfg; model.safetensors / pytorch_model.bin / sharded
    *.index.json) or a weights file in transformers' or timm's naming. With `inference` (the
    default) the model is prepared by ViTHybrid.prepare_for_inference: eval mode, weight
    standardization precomputed in float32, cast, and a channels_last backbone for reduced
    precision (float32 keeps the reference's layout for exact parity). It carries
    `.config`, `.preprocess_config` and `.checkpoint` (a ResolvedCheckpoint).
    """
    import torch

    from .model import ViTHybrid

    resolved = resolve_checkpoint(name_or_path, revision)
    raw = read_state_dict(resolved.weight_files)
    try:
        config, preprocess = read_configs(resolved, raw)
    except ConfigError as error:
        source = resolved.config_file or resolved.name
        raise CheckpointError(f"invalid model configuration ({source}): {error}") from error
    state_dict, unknown = convert_state_dict(raw)
    del raw
    # Built on the meta device: random initialisation of 100M weights that the checkpoint then
    # overwrites would cost seconds of start-up. The loaded tensors are assigned, in float32.
    with torch.device("meta"):
        model = ViTHybrid(
            config,
            add_pooling_layer="pooler.weight" in state_dict,
            use_mask_token="embeddings.mask_token" in state_dict,
            num_labels=_num_labels(config, state_dict),
        )
        if config.pruned_heads:
            model.prune_heads({layer: list(heads) for layer, heads in config.pruned_heads.items()})
    try:
        load_state_dict_into(model, state_dict, unknown, assign=True)
    except CheckpointError as error:  # name what the user gave
        raise CheckpointError(f"{resolved.name}: {error}") from error
    model.float()
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if inference:
        model.prepare_for_inference(device, dtype)
    else:
        model.to(device=device, dtype=dtype or torch.float32)
    model.preprocess_config = preprocess
    model.checkpoint = resolved
    return model
