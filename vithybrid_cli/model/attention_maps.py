"""Where the model looks, as numbers: attention rollout and last-layer CLS attention.

Attentions (one (B, heads, T, T) tensor per layer, from `ViTHybrid(..., output_attentions=True)`)
in, one value per patch token out, laid out on the model's (h, w) token grid (`attention_grid`).
A grid describes the model's *input crop*, not the whole photo; report/attention.py draws it
(heatmaps, overlays) and pipeline/tasks.py has the task that runs it per batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

HEAD_FUSIONS = ("mean", "max", "min")
METHODS = ("rollout", "last-layer")


# --------------------------------------------------------------------------------------------
# Token maps


def _check_attentions(attentions: Sequence[torch.Tensor], num_prefix_tokens: int) -> int:
    """Validate a stack of (B, heads, T, T) attentions; return T."""
    if len(attentions) == 0:
        raise ValueError("no attention layers given")
    shape = tuple(attentions[0].shape)
    if len(shape) != 4 or shape[-1] != shape[-2]:
        raise ValueError(f"attentions must be (B, heads, T, T), got {shape}")
    for layer in attentions:
        if tuple(layer.shape) != shape:
            raise ValueError(
                f"all layers must share one shape, got {tuple(layer.shape)} != {shape}"
            )
    tokens = shape[-1]
    if not 1 <= num_prefix_tokens < tokens:
        raise ValueError(f"num_prefix_tokens must be in [1, {tokens}), got {num_prefix_tokens}")
    return tokens


def check_head_fusion(head_fusion: str) -> None:
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(
            f"unknown head fusion {head_fusion!r}: use one of {', '.join(HEAD_FUSIONS)}"
        )


def check_discard_ratio(discard_ratio: float) -> None:
    # 1.0 would discard every weight but CLS->CLS, leaving only the identity: nothing to show.
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")


def fuse_heads(attention: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """(B, heads, T, T) -> (B, T, T) in float32: mean, max or min over heads."""
    check_head_fusion(head_fusion)
    attention = attention.float()  # bf16 / fp16 products over many layers lose too much
    if head_fusion == "mean":
        return attention.mean(dim=1)
    if head_fusion == "max":
        return attention.amax(dim=1)
    return attention.amin(dim=1)


def discard_lowest(attention: torch.Tensor, discard_ratio: float) -> torch.Tensor:
    """Zero the lowest `discard_ratio` fraction of each image's (T, T) weights, except CLS->CLS.

    As in jacobgildenblat/vit-explain: the matrix is flattened and the int(T*T * ratio) smallest
    entries are dropped, but entry 0 (CLS->CLS) is never dropped, so when it is among the smallest
    one entry fewer is discarded. Only that one entry is protected, also with extra prefix tokens.
    """
    check_discard_ratio(discard_ratio)
    batch, tokens, _ = attention.shape
    count = int(tokens * tokens * discard_ratio)
    if count == 0:
        return attention
    flat = attention.reshape(batch, tokens * tokens)  # (B, T, T) -> (B, T*T)
    _, lowest = flat.topk(count, dim=-1, largest=False)
    drop = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, lowest, True)
    drop[:, 0] = False  # CLS->CLS
    return flat.masked_fill(drop, 0.0).reshape(batch, tokens, tokens)  # (B, T*T) -> (B, T, T)


def _max_normalize(token_map: torch.Tensor) -> torch.Tensor:
    """Scale each row so its max is 1; a row with nothing positive becomes zeros, not NaN."""
    peak = token_map.amax(dim=-1, keepdim=True)
    safe = torch.where(peak > 0, peak, torch.ones_like(peak))
    return torch.where(peak > 0, token_map / safe, torch.zeros_like(token_map))


def attention_rollout(
    attentions: Sequence[torch.Tensor],
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): (B, T - num_prefix_tokens) float32, max 1.

    Per layer, as jacobgildenblat/vit-explain does it: fuse the heads, optionally discard the
    lowest weights (`discard_lowest`), add the identity for the residual connection, and
    renormalize rows. (vit-explain divides by `a.sum(dim=-1)` without keepdim, which broadcasts
    over columns; rows are normalized here, as the paper intends.) The layers are then chained,
    result = A_L @ ... @ A_1, and the CLS row over the patch tokens is returned, scaled so each
    image's maximum is 1. Computed in float32 whatever the attentions' dtype.
    """
    check_head_fusion(head_fusion)
    check_discard_ratio(discard_ratio)
    tokens = _check_attentions(attentions, num_prefix_tokens)
    first = attentions[0]
    eye = torch.eye(tokens, device=first.device, dtype=torch.float32)
    result = eye.expand(first.shape[0], tokens, tokens)
    for attention in attentions:
        fused = discard_lowest(fuse_heads(attention, head_fusion), discard_ratio)
        # The residual stream carries each token forward unchanged alongside its attention.
        mixed = (fused + eye) / 2
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        result = mixed @ result
    return _max_normalize(result[:, 0, num_prefix_tokens:])


def last_layer_attention(
    attentions: Sequence[torch.Tensor], head_fusion: str = "mean", num_prefix_tokens: int = 1
) -> torch.Tensor:
    """The last layer's CLS attention over the patch tokens: (B, T - num_prefix_tokens), max 1."""
    check_head_fusion(head_fusion)
    _check_attentions(attentions, num_prefix_tokens)
    fused = fuse_heads(attentions[-1], head_fusion)
    return _max_normalize(fused[:, 0, num_prefix_tokens:])


def attention_grid(token_map: torch.Tensor, grid_size: tuple[int, int]) -> np.ndarray:
    """(B, h*w) per-patch values -> (B, h, w) float32 numpy, row-major like the tokens."""
    height, width = grid_size
    if token_map.ndim != 2 or token_map.shape[-1] != height * width:
        raise ValueError(f"token map {tuple(token_map.shape)} does not fit a {height}x{width} grid")
    # (B, h*w) -> (B, h, w)
    grid = token_map.detach().float().reshape(-1, height, width)
    return grid.cpu().numpy()
