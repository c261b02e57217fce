"""ViT-Hybrid: a BiT feature map, projected to tokens, read by a ViT-B/16 encoder.

Bottom-up: position-embedding resampling, patch embedding (any backbone), attention, MLP, block,
the model with its heads. One forward pass can hand back everything the commands need (logits,
CLS/pre-logits, pooled output, all tokens, hidden states, attention maps).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .backbone import BitBackbone
from .config import ACTIVATIONS, ViTHybridConfig

if TYPE_CHECKING:
    from .config import PreprocessConfig


def resample_position_embeddings(
    position_embeddings: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int],
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """Resample (1, prefix + old_h*old_w, C) position embeddings to a (new_h, new_w) token grid.

    Bicubic with antialiasing, in float32, prefix (CLS) positions untouched: the same resampling
    timm applies with `dynamic_img_size=True`, so both give the same numbers at any size.
    """
    if tuple(new_grid) == tuple(old_grid):
        return position_embeddings
    prefix = position_embeddings[:, :num_prefix_tokens]
    grid = position_embeddings[:, num_prefix_tokens:]
    channels = grid.shape[-1]
    # (1, old_h*old_w, C) -> (1, C, old_h, old_w)
    grid = grid.float().reshape(1, old_grid[0], old_grid[1], channels).permute(0, 3, 1, 2)
    grid = F.interpolate(
        grid, size=tuple(new_grid), mode="bicubic", align_corners=False, antialias=True
    )
    # (1, C, new_h, new_w) -> (1, new_h*new_w, C)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, channels).to(position_embeddings.dtype)
    return torch.cat([prefix, grid], dim=1)


class PatchEmbed(nn.Module):
    """Any backbone's feature map -> tokens via a patch_size x patch_size projection."""

    def __init__(
        self, backbone: nn.Module, feature_channels: int, hidden_size: int, patch_size: int
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection = nn.Conv2d(feature_channels, hidden_size, patch_size, stride=patch_size)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        features = self.projection(self.backbone(pixel_values))
        grid = (features.shape[-2], features.shape[-1])
        # (B, C, h, w) -> (B, h*w, C)
        return features.flatten(2).transpose(1, 2), grid


class Embeddings(nn.Module):
    """Patch tokens + CLS token + position embeddings (resampled for other grids on request)."""

    def __init__(
        self, config: ViTHybridConfig, patch_embed: nn.Module, use_mask_token: bool = False
    ) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = patch_embed
        self.grid_size = config.grid_size
        num_positions = self.grid_size[0] * self.grid_size[1] + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, num_positions, config.hidden_size))
        self.mask_token = (
            nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if use_mask_token else None
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        batch, channels, height, width = pixel_values.shape
        if channels != self.config.num_channels:
            raise ValueError(f"expected {self.config.num_channels} input channels, got {channels}")
        if not interpolate_pos_encoding and (height, width) != (self.config.image_size,) * 2:
            raise ValueError(
                f"Input image size ({height}*{width}) doesn't match model "
                f"({self.config.image_size}*{self.config.image_size}); pass "
                "interpolate_pos_encoding=True for other sizes."
            )
        tokens, grid = self.patch_embed(pixel_values)
        if bool_masked_pos is not None:
            if self.mask_token is None:
                raise ValueError("bool_masked_pos needs a model built with use_mask_token=True")
            mask = bool_masked_pos.unsqueeze(-1).type_as(tokens)
            tokens = tokens * (1.0 - mask) + self.mask_token.to(tokens.dtype) * mask
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1).to(tokens.dtype), tokens], dim=1)
        position_embeddings = self.position_embeddings
        if interpolate_pos_encoding:
            position_embeddings = resample_position_embeddings(
                position_embeddings, grid, self.grid_size
            )
        return self.dropout(tokens + position_embeddings), grid


def linear(x: torch.Tensor, layer: nn.Linear, epilogue: bool) -> torch.Tensor:
    """layer(x); with `epilogue`, oneDNN's fused kernel (see kernels.py)."""
    return kernels.linear(x, layer.weight, layer.bias) if epilogue else layer(x)


def linear_add(
    x: torch.Tensor, layer: nn.Linear, residual: torch.Tensor, epilogue: bool
) -> torch.Tensor:
    """residual + layer(x); with `epilogue`, the add rides in the matmul's epilogue."""
    if epilogue:
        return kernels.linear_add(x, layer.weight, layer.bias, residual)
    return residual + layer(x)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection.

    `sdpa` (torch's fused scaled_dot_product_attention) is chosen once at construction; the
    explicit softmax path is the reference and the only one that can hand back attention
    probabilities.
    """

    def __init__(self, config: ViTHybridConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention_dropout = config.attention_probs_dropout_prob
        self.proj_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.sdpa = hasattr(F, "scaled_dot_product_attention")
        self.pruned_heads: set[int] = set()

    def forward(
        self,
        x: torch.Tensor,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        cls_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, probs = self.context(x, head_mask, output_attentions, cls_only=cls_only)
        return self.proj_dropout(self.proj(out)), probs

    def context(
        self,
        x: torch.Tensor,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        epilogue: bool = False,
        cls_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The heads' outputs, concatenated, before the output projection; with `cls_only`,
        for the first (CLS) query alone: (B, 1, C)."""
        batch, tokens, _ = x.shape
        # (B, T, 3*heads*head_dim) -> (3, B, heads, T, head_dim)
        qkv = linear(x, self.qkv, epilogue).reshape(batch, tokens, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if cls_only:
            q = q[:, :, :1]
        dropout = self.attention_dropout if self.training else 0.0
        probs = None
        if self.sdpa and not output_attentions:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
            if head_mask is not None:
                # A per-head factor on the probabilities is the same factor on the head's output.
                out = out * head_mask
        else:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            probs = F.dropout(scores.softmax(dim=-1), dropout, self.training)
            if head_mask is not None:
                probs = probs * head_mask
            out = probs @ v
        # (B, heads, Tq, head_dim) -> (B, Tq, heads*head_dim)
        out = out.transpose(1, 2).reshape(batch, q.shape[2], self.num_heads * self.head_dim)
        return out, probs

    @torch.no_grad()
    def prune_heads(self, heads: set[int] | list[int]) -> None:
        """Remove heads, named by their index in the unpruned layer."""
        heads = set(heads) - self.pruned_heads
        if not heads:
            return
        # Position of each surviving original head among the heads still present.
        present = [
            h for h in range(self.num_heads + len(self.pruned_heads)) if h not in self.pruned_heads
        ]
        keep = [i for i, head in enumerate(present) if head not in heads]
        width = self.num_heads * self.head_dim
        channels = (
            torch.cat([torch.arange(i * self.head_dim, (i + 1) * self.head_dim) for i in keep])
            if keep
            else torch.zeros(0, dtype=torch.long)
        )
        rows = torch.cat([channels + part * width for part in range(3)])
        self.qkv = _linear_subset(self.qkv, rows, dim=0)
        self.proj = _linear_subset(self.proj, channels, dim=1)
        self.num_heads = len(keep)
        self.pruned_heads |= heads


def _linear_subset(layer: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    weight = layer.weight.index_select(dim, index.to(layer.weight.device))
    bias = layer.bias
    if bias is not None and dim == 0:
        bias = bias.index_select(0, index.to(bias.device))
    subset = nn.Linear(
        weight.shape[1],
        weight.shape[0],
        bias=bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    subset.weight.copy_(weight)
    if bias is not None:
        subset.bias.copy_(bias)
    return subset


# config.ACTIVATIONS' kinds -> (function, oneDNN GELU approximation for the fused epilogue)
ACTIVATION_KINDS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str | None]] = {
    "gelu": (F.gelu, "none"),
    "gelu_tanh": (functools.partial(F.gelu, approximate="tanh"), "tanh"),
    "quick_gelu": (lambda x: x * torch.sigmoid(1.702 * x), None),
    "relu": (F.relu, None),
    "silu": (F.silu, None),
    "tanh": (torch.tanh, None),
}


class MLP(nn.Module):
    def __init__(self, config: ViTHybridConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.activation, self.onednn_gelu = ACTIVATION_KINDS[ACTIVATIONS[config.hidden_act]]
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.activation(self.fc1(x))))

    def forward_add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """residual + forward(x), inference only, with oneDNN's fused epilogues (kernels.py)."""
        if self.onednn_gelu is None:
            hidden = self.activation(kernels.linear(x, self.fc1.weight, self.fc1.bias))
        else:
            hidden = kernels.linear(x, self.fc1.weight, self.fc1.bias, gelu=self.onednn_gelu)
        return kernels.linear_add(hidden, self.fc2.weight, self.fc2.bias, residual)


class Block(nn.Module):
    """Pre-norm transformer layer: x + attn(norm1(x)), then + mlp(norm2(x))."""

    def __init__(self, config: ViTHybridConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = Attention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        cls_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T, C) -> (B, T, C); with `cls_only`, only the CLS token's output, (B, 1, C):
        every token still serves as a key and value, but no other query or MLP row is run."""
        if not self.training and kernels.linear_epilogue(x):
            # bias, GELU and both residual adds ride in the matmuls' epilogues
            context, probs = self.attention.context(
                self.norm1(x), head_mask, output_attentions, epilogue=True, cls_only=cls_only
            )
            residual = x[:, :1].contiguous() if cls_only else x
            x = linear_add(context, self.attention.proj, residual, epilogue=True)
            return self.mlp.forward_add(self.norm2(x), x), probs
        attended, probs = self.attention(self.norm1(x), head_mask, output_attentions, cls_only)
        x = (x[:, :1] if cls_only else x) + attended
        return x + self.mlp(self.norm2(x)), probs


@dataclass
class ViTHybridOutput:
    """Everything one forward pass can hand back; optional fields are None unless requested."""

    last_hidden_state: torch.Tensor  # (B, 1 + h*w, C) after the final LayerNorm; (B, 1, C) cls_only
    grid_size: tuple[int, int]  # (h, w) of the patch tokens
    logits: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings + each layer's output
    attentions: tuple[torch.Tensor, ...] | None = None  # each (B, heads, T, T)

    @property
    def cls_embedding(self) -> torch.Tensor:
        """The CLS token after the final LayerNorm: the classifier's input (pre-logits)."""
        return self.last_hidden_state[:, 0]

    @property
    def patch_tokens(self) -> torch.Tensor:
        return self.last_hidden_state[:, 1:]


class ViTHybrid(nn.Module):
    """The whole model: BiT backbone -> tokens -> encoder -> LayerNorm -> (pooler) -> (classifier).

    `ViTHybrid(config)` matches transformers' ViTHybridForImageClassification; with
    `add_pooling_layer=True, num_labels=0` it matches ViTHybridModel.
    """

    def __init__(
        self,
        config: ViTHybridConfig,
        *,
        add_pooling_layer: bool = False,
        use_mask_token: bool = False,
        num_labels: int | None = None,
    ) -> None:
        super().__init__()
        config.validate()
        self.config = config
        backbone = BitBackbone(config.backbone_config)
        patch_embed = PatchEmbed(
            backbone, backbone.out_channels, config.hidden_size, config.patch_size
        )
        self.embeddings = Embeddings(config, patch_embed, use_mask_token=use_mask_token)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = (
            nn.Linear(config.hidden_size, config.hidden_size) if add_pooling_layer else None
        )
        self.num_labels = config.num_labels if num_labels is None else num_labels
        self.classifier = (
            nn.Linear(config.hidden_size, self.num_labels) if self.num_labels > 0 else None
        )
        self.apply(self._init_weights)
        # What a loaded model carries besides its weights (set by weights.load_model): how pixels
        # become its input, and the checkpoint (a weights.ResolvedCheckpoint) it came from.
        self.preprocess_config: PreprocessConfig | None = None
        self.checkpoint: Any = None

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Conv2d)) and not hasattr(module, "frozen"):
            nn.init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, Embeddings):
            nn.init.trunc_normal_(module.position_embeddings, std=self.config.initializer_range)
            nn.init.trunc_normal_(module.cls_token, std=self.config.initializer_range)

    @property
    def backbone(self) -> BitBackbone:
        return self.embeddings.patch_embed.backbone

    def forward(
        self,
        pixel_values: torch.Tensor,
        *,
        bool_masked_pos: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        interpolate_pos_encoding: bool = False,
        cls_only: bool = False,
    ) -> ViTHybridOutput:
        """`cls_only`: the caller reads only the CLS token (logits, pooler, CLS embedding), so
        the last block computes that token alone (the same values, ~5% less work) and
        last_hidden_state is (B, 1, C). Not with output_attentions or output_hidden_states."""
        if cls_only and (output_attentions or output_hidden_states):
            raise ValueError("cls_only skips work that attentions and hidden states need")
        dtype = self.embeddings.patch_embed.projection.weight.dtype
        x, grid = self.embeddings(pixel_values.to(dtype), bool_masked_pos, interpolate_pos_encoding)
        head_masks = self._per_layer_head_mask(head_mask, x.dtype)
        hidden_states, attentions = [], []
        last = len(self.blocks) - 1
        for index, (block, layer_head_mask) in enumerate(zip(self.blocks, head_masks, strict=True)):
            if output_hidden_states:
                hidden_states.append(x)
            x, probs = block(x, layer_head_mask, output_attentions, cls_only and index == last)
            if output_attentions:
                attentions.append(probs)
        if output_hidden_states:
            hidden_states.append(x)
        x = self.norm(x)
        output = ViTHybridOutput(
            last_hidden_state=x,
            grid_size=grid,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )
        if self.pooler is not None:
            output.pooler_output = torch.tanh(self.pooler(x[:, 0]))
        if self.classifier is not None:
            output.logits = self.classifier(x[:, 0])
            if labels is not None:
                output.loss = classification_loss(output.logits, labels, self.config.problem_type)
        return output

    def _per_layer_head_mask(
        self, head_mask: torch.Tensor | None, dtype: torch.dtype
    ) -> list[torch.Tensor | None]:
        layers = len(self.blocks)
        if head_mask is None:
            return [None] * layers
        if head_mask.dim() == 1:  # (heads,) for every layer
            head_mask = head_mask.unsqueeze(0).expand(layers, -1)
        if head_mask.dim() != 2 or head_mask.shape[0] != layers:
            raise ValueError(
                f"head_mask must be (heads,) or ({layers}, heads), got {tuple(head_mask.shape)}"
            )
        # (layers, heads) -> per layer (1, heads, 1, 1), broadcast over batch and tokens
        return [mask.to(dtype).view(1, -1, 1, 1) for mask in head_mask]

    def prune_heads(self, heads_to_prune: dict[int, list[int]]) -> None:
        """Remove attention heads: {layer: [head, ...]} with indices of the unpruned layer."""
        for layer, heads in heads_to_prune.items():
            self.blocks[int(layer)].attention.prune_heads(heads)
            pruned = self.blocks[int(layer)].attention.pruned_heads
            self.config.pruned_heads[int(layer)] = sorted(pruned)

    @property
    def memory_format(self) -> torch.memory_format:
        """The layout the backbone's convolutions want their input in."""
        weight = self.backbone.stem.conv.weight
        if (
            weight.dim() == 4
            and not weight.is_contiguous()
            and weight.is_contiguous(memory_format=torch.channels_last)
        ):
            return torch.channels_last
        return torch.contiguous_format

    def prepare_for_inference(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> ViTHybrid:
        """Eval mode, weight standardization computed once (in float32), then cast to `dtype` on
        `device`, then a channels_last backbone for reduced precision.

        Irreversible for training (the conv weights now hold standardized values). channels_last
        is faster for reduced precision but reorders float32 sums (~1e-3 drift in hidden states
        of a deep backbone), so float32 keeps the reference's layout for exact parity.
        """
        self.eval()
        # Standardize in float32, before any cast to a lower precision.
        if next(self.parameters()).dtype != torch.float32:
            self.float()
        self.backbone.freeze_standardization()
        dtype = dtype or torch.float32
        self.to(device=device, dtype=dtype)
        if dtype != torch.float32:
            self.backbone.to(memory_format=torch.channels_last)
        return self


def infer_problem_type(num_labels: int, labels: torch.Tensor) -> str:
    """What transformers assumes when config.problem_type is unset."""
    if num_labels == 1:
        return "regression"
    if labels.dtype in (torch.long, torch.int):
        return "single_label_classification"
    return "multi_label_classification"


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, problem_type: str | None
) -> torch.Tensor:
    num_labels = logits.shape[-1]
    labels = labels.to(logits.device)
    problem_type = problem_type or infer_problem_type(num_labels, labels)
    if problem_type == "regression":
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze())
        return F.mse_loss(logits, labels)
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels)
