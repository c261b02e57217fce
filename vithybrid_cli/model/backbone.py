"""BiT (Big Transfer) ResNet, as google's ViT-Hybrid checkpoint uses it.

Weight-standardized convolutions with TensorFlow "SAME" padding, GroupNorm + ReLU,
non-pre-activation bottleneck blocks, a 7x7 stem with max-pool. For
`google/vit-hybrid-base-bit-384`: stages of depths [3, 4, 9] and output stride 16, so a 384x384
image becomes a (1024, 24, 24) feature map.

In bfloat16 CPU inference, a bottleneck's last GroupNorm is folded into its 1x1 conv where the
map is large (see "folded GroupNorm" below); everywhere else the ops are the reference's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .config import BitConfig, make_divisible


def same_padding(size: int, kernel_size: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) for one spatial dimension.

    TF pads so that output = ceil(size / stride), putting the odd pixel after; PyTorch's symmetric
    padding cannot express that for strided convolutions, hence the explicit pad.
    """
    total = max(
        (math.ceil(size / stride) - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0
    )
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel_size: int, stride: int, dilation: int = 1) -> torch.Tensor:
    """Pad an NCHW tensor with zeros as TensorFlow's "SAME" would for this window."""
    top, bottom = same_padding(x.shape[-2], kernel_size, stride, dilation)
    left, right = same_padding(x.shape[-1], kernel_size, stride, dilation)
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom))
    return x


def standardize_weight(weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Per output channel: zero mean, unit (biased) variance over (in, kh, kw).

    Written as batch_norm over the flattened weight, as the reference does, so both round alike.
    """
    flat = weight.reshape(1, weight.shape[0], -1)
    return F.batch_norm(flat, None, None, training=True, momentum=0.0, eps=eps).reshape_as(weight)


class StdConv2dSame(nn.Conv2d):
    """Weight-standardized conv with TF "SAME" padding (static when symmetric, dynamic otherwise).

    Standardization depends only on the weight, so `freeze_standardization()` computes it once for
    inference; until then (training, parity tests) it is recomputed every call.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        eps: float = 1e-8,
        same: bool = True,
    ) -> None:
        symmetric = stride == 1 and (dilation * (kernel_size - 1)) % 2 == 0
        static_padding = dilation * (kernel_size - 1) // 2 if (symmetric or not same) else 0
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=static_padding,
            dilation=dilation,
            bias=False,
        )
        self.dynamic_padding = same and not symmetric
        self.eps = eps
        self.frozen = False

    @torch.no_grad()
    def freeze_standardization(self) -> None:
        standardized = standardize_weight(self.weight.float(), self.eps).to(self.weight.dtype)
        # A new tensor, not copy_: a loaded weight is often a view of the memory-mapped
        # checkpoint, and writing into it page-faults every page (0.19 s of a 0.42 s load).
        self.weight = nn.Parameter(standardized, requires_grad=self.weight.requires_grad)
        self.frozen = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_padding:
            x = pad_same(x, self.kernel_size[0], self.stride[0], self.dilation[0])
        weight = self.weight if self.frozen else standardize_weight(self.weight, self.eps)
        return F.conv2d(x, weight, None, self.stride, self.padding, self.dilation)


class GroupNormAct(nn.GroupNorm):
    """GroupNorm, optionally followed by ReLU."""

    def __init__(self, num_groups: int, num_channels: int, activation: bool = True) -> None:
        super().__init__(num_groups, num_channels, eps=1e-5)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type == "cpu"
            and x.shape[-2] * x.shape[-1] < 1024
            and x.shape[1] // self.num_groups < 16
            and x.is_contiguous(memory_format=torch.channels_last)
            and not x.is_contiguous()
        ):
            # torch's channels_last CPU GroupNorm is slow on small maps with narrow groups (8
            # channels): (8, 256, 24, 24) bf16 takes 2.0 ms, against 1.0 ms for the round trip
            # through NCHW, 17 times per forward of the 384x384 model (+3% model throughput).
            x = F.group_norm(x.contiguous(), self.num_groups, self.weight, self.bias, self.eps)
            x = x.contiguous(memory_format=torch.channels_last)
        else:
            x = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.relu(x) if self.activation else x


class MaxPoolSame(nn.Module):
    """3x3 stride-2 max-pool with TF "SAME" padding (zeros suffice: inputs are post-ReLU)."""

    def __init__(self, dynamic_padding: bool) -> None:
        super().__init__()
        self.dynamic_padding = dynamic_padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_padding:
            # SAME pads 3x3/2 by (0, 1) for even sizes and (1, 1) for odd ones. The pool's own
            # -inf padding plus ceil_mode gives the same windows without copying the input, and
            # the same maxima since inputs are >= 0 and every window holds a real pixel.
            top, _ = same_padding(x.shape[-2], 3, 2, 1)
            left, _ = same_padding(x.shape[-1], 3, 2, 1)
            if top <= 1 and left <= 1:
                return F.max_pool2d(x, 3, 2, padding=(top, left), ceil_mode=True)
            x = pad_same(x, 3, 2)
        return F.max_pool2d(x, 3, 2)


class Stem(nn.Module):
    """7x7/2 conv -> GroupNorm+ReLU -> 3x3/2 max-pool: the first 4x downsampling."""

    def __init__(self, config: BitConfig) -> None:
        super().__init__()
        same = (config.global_padding or "").upper() == "SAME"
        self.conv = StdConv2dSame(
            config.num_channels, config.embedding_size, 7, stride=2, same=same
        )
        self.norm = GroupNormAct(config.num_groups, config.embedding_size)
        self.pool = MaxPoolSame(config.embedding_dynamic_padding)
        # Without global SAME padding, BiT pads by one before the pool instead.
        self.pad_before_pool = 0 if same else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.pad_before_pool:
            x = F.pad(x, (1, 1, 1, 1))
        return self.pool(self.norm(x))


# ---------------------------------------------------------------------------- folded GroupNorm
# A bottleneck ends conv3 (1x1, mid -> 4*mid channels) -> GroupNorm -> + shortcut -> ReLU. On a
# CPU in bfloat16 the three elementwise passes over the wide output cost more than the conv
# itself at 96x96 and 48x48 (the tensors outgrow the caches). GroupNorm's statistics of a 1x1
# conv's output follow from its input, though: per sample, the channel means are W @ mean(h)
# and the second moments are the diagonal of W @ (h^T h / HW) @ W^T, with h^T h a mid x mid
# Gram matrix (a quarter of the conv's FLOPs, in float32). With them the normalization folds
# into per-sample conv weights and bias, and oneDNN adds the shortcut and applies the ReLU in
# the conv's epilogue: one pass instead of four. bfloat16 CPU inference only (float32 is the
# exact-parity path), where oneDNN's fused conv is present and agrees with the plain ops.
FOLD_MIN_PIXELS = 1024  # below this (24x24 at 384 input) the maps stay cached and plain is faster


def can_fold_norm(h: torch.Tensor, conv: StdConv2dSame) -> bool:
    return (
        h.shape[-2] * h.shape[-1] >= FOLD_MIN_PIXELS
        and conv.frozen
        and conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and kernels.conv_epilogue(h)
    )


def group_norm_of_conv1x1(
    h: torch.Tensor, weight: torch.Tensor, norm: nn.GroupNorm
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (scale, shift), each (B, out), with norm(conv1x1(h)) == conv1x1(h) * scale +
    shift, computed from h (B, in, H, W) without running the conv."""
    batch, in_channels, height, width = h.shape
    out_channels, groups = weight.shape[0], norm.num_groups
    # (B, in, H, W) channels_last -> (B, H*W, in): a view, then one float32 copy
    pixels = h.permute(0, 2, 3, 1).reshape(batch, height * width, in_channels).float()
    gram = torch.bmm(pixels.transpose(1, 2), pixels) / (height * width)  # (B, in, in)
    w = weight.reshape(out_channels, in_channels).float()
    channel_mean = pixels.mean(dim=1) @ w.t()  # (B, out)
    channel_square = (torch.matmul(w, gram) * w).sum(dim=-1)  # (B, out): E[y^2] per channel
    # (B, out) -> (B, groups, out/groups): GroupNorm's statistics pool a group's channels
    mean = channel_mean.view(batch, groups, -1).mean(dim=-1)
    variance = (channel_square.view(batch, groups, -1).mean(dim=-1) - mean.square()).clamp_min(0)
    rstd = torch.rsqrt(variance + norm.eps)
    per_channel = out_channels // groups
    scale = rstd.repeat_interleave(per_channel, dim=1) * norm.weight.float()
    shift = norm.bias.float() - mean.repeat_interleave(per_channel, dim=1) * scale
    return scale, shift


def conv_norm_add_relu(
    h: torch.Tensor, conv: StdConv2dSame, norm: nn.GroupNorm, shortcut: torch.Tensor
) -> torch.Tensor:
    """relu(norm(conv(h)) + shortcut) for a 1x1 conv, written into `shortcut` (which the caller
    owns), one oneDNN conv per sample with the normalization folded in."""
    weight = conv.weight.float()
    scale, shift = group_norm_of_conv1x1(h, weight, norm)
    for i in range(h.shape[0]):
        sample_weight = (weight * scale[i].view(-1, 1, 1, 1)).to(h.dtype)
        kernels.conv1x1_add_relu_(
            shortcut[i : i + 1],
            h[i : i + 1],
            sample_weight.contiguous(memory_format=torch.channels_last),
            shift[i].to(h.dtype),
        )
    return shortcut


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 with GroupNorm, residual, then ReLU (ResNet v1.5 ordering)."""

    def __init__(
        self,
        config: BitConfig,
        in_channels: int,
        out_channels: int,
        stride: int,
        dilation: int,
        downsample: bool,
    ) -> None:
        super().__init__()
        same = (config.global_padding or "").upper() == "SAME"
        mid_channels = make_divisible(out_channels * 0.25)
        groups = config.num_groups
        self.conv1 = StdConv2dSame(in_channels, mid_channels, 1, same=same)
        self.norm1 = GroupNormAct(groups, mid_channels)
        self.conv2 = StdConv2dSame(
            mid_channels, mid_channels, 3, stride=stride, dilation=dilation, same=same
        )
        self.norm2 = GroupNormAct(groups, mid_channels)
        self.conv3 = StdConv2dSame(mid_channels, out_channels, 1, same=same)
        self.norm3 = GroupNormAct(groups, out_channels, activation=False)
        self.downsample = (
            Downsample(config, in_channels, out_channels, stride) if downsample else None
        )

    def forward(self, x: torch.Tensor, owns_input: bool = False) -> torch.Tensor:
        """`owns_input`: x is the backbone's own intermediate, which the block may overwrite."""
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        if can_fold_norm(x, self.conv3):
            if self.downsample is None and not owns_input:
                shortcut = shortcut.clone()
            return conv_norm_add_relu(x, self.conv3, self.norm3, shortcut)
        x = self.norm3(self.conv3(x))
        return F.relu(x + shortcut)


class Downsample(nn.Module):
    """Projection shortcut of a stage's first block: strided 1x1 conv + GroupNorm."""

    def __init__(self, config: BitConfig, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        same = (config.global_padding or "").upper() == "SAME"
        self.conv = StdConv2dSame(in_channels, out_channels, 1, stride=stride, same=same)
        self.norm = GroupNormAct(config.num_groups, out_channels, activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Stage(nn.Module):
    def __init__(
        self,
        config: BitConfig,
        in_channels: int,
        out_channels: int,
        depth: int,
        stride: int,
        dilation: int,
    ) -> None:
        super().__init__()
        # BiT keeps the first block's dilation for every 3x3 conv of a dilated stage.
        first_dilation = 1 if dilation in (1, 2) else 2
        self.blocks = nn.ModuleList(
            Bottleneck(
                config,
                in_channels if i == 0 else out_channels,
                out_channels,
                stride=stride if i == 0 else 1,
                dilation=first_dilation,
                downsample=i == 0,
            )
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, block in enumerate(self.blocks):
            x = block(x, owns_input=index > 0)
        return x


class BitBackbone(nn.Module):
    """Pixels (B, 3, H, W) -> feature map (B, out_channels, ceil(H/stride), ceil(W/stride)).

    With no stages (timm's vit_tiny_r_s16_p8) the stem's output is the feature map.
    """

    def __init__(self, config: BitConfig) -> None:
        super().__init__()
        self.config = config
        self.stem = Stem(config)
        stages, in_channels = [], config.embedding_size
        for plan in config.stage_plan():
            stages.append(
                Stage(config, in_channels, plan.width, plan.depth, plan.stride, plan.dilation)
            )
            in_channels = plan.width
        self.stages = nn.ModuleList(stages)
        self.out_channels = config.out_channels
        self.stride = config.stride

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.stem(pixel_values)
        for stage in self.stages:
            x = stage(x)
        return x

    def freeze_standardization(self) -> None:
        """Standardize every conv weight once (inference only: weights must not train after)."""
        for module in self.modules():
            if isinstance(module, StdConv2dSame):
                module.freeze_standardization()
