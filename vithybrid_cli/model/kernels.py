"""oneDNN's private fused ops, one wrapper each, and the one place that says when they are used.

`torch.ops.mkldnn._linear_pointwise` and `_convolution_pointwise_` put a bias, a GELU or a
residual add (and a ReLU) into the matmul's or conv's epilogue, saving a full pass over the
activations per op. They are private: their signatures may change between torch releases, and
some CPUs lack them. So each is wrapped once here, probed once per process through that same
wrapper (functools.cache) against the plain ops, and used only for bfloat16 inference on CPU
(`epilogue_enabled`), where they agree with the plain ops to bf16 rounding. float32 (the
exact-parity path), CUDA, autograd and torch.compile (inductor fuses these itself) always take
the plain ops.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

# oneDNN's GELU algorithm for torch's F.gelu(approximate=...)
ONEDNN_GELU = {"none": "none", "tanh": "tanh"}


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: str | None = None
) -> torch.Tensor:
    """x @ weight.T + bias, then GELU (approximation "none" or "tanh") when `gelu` is given."""
    if gelu is None:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], ONEDNN_GELU[gelu])


def linear_add(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor
) -> torch.Tensor:
    """residual + x @ weight.T + bias, the add in the matmul's epilogue."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, "add")


def conv1x1_add_relu_(
    out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """out = relu(conv1x1(x, weight, bias) + out), in place (channels_last NCHW tensors)."""
    return torch.ops.mkldnn._convolution_pointwise_.binary(
        out,
        x,
        weight,
        bias,
        [0, 0],  # padding
        [1, 1],  # stride
        [1, 1],  # dilation
        1,  # groups
        "add",  # binary op with `out`
        1.0,  # its alpha
        "relu",  # unary op after it
        [],  # its scalars
        "",  # its algorithm
    )


def epilogue_enabled(x: torch.Tensor) -> bool:
    """Whether a fused-epilogue kernel may serve this tensor: bfloat16 CPU inference, eager."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.bfloat16
        and not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
    )


def linear_epilogue(x: torch.Tensor) -> bool:
    """Use linear / linear_add for this tensor."""
    return epilogue_enabled(x) and linear_available()


def conv_epilogue(x: torch.Tensor) -> bool:
    """Use conv1x1_add_relu_ for this tensor (also channels_last)."""
    return (
        epilogue_enabled(x)
        and x.is_contiguous(memory_format=torch.channels_last)
        and conv_available()
    )


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return got.shape == want.shape and torch.allclose(
        got.float(), want.float(), rtol=1 / 32, atol=1 / 32
    )


def _bf16(*shapes: tuple[int, ...], channels_last: bool = False) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(shape, generator=generator).to(torch.bfloat16) for shape in shapes]
    if channels_last:
        tensors = [t.contiguous(memory_format=torch.channels_last) for t in tensors]
    return tensors


@functools.cache
def linear_available() -> bool:
    """Whether `linear` and `linear_add` run here and agree with the plain ops."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        x, w, residual, b = _bf16((3, 5, 32), (16, 32), (3, 5, 16), (16,))
        with torch.no_grad():
            return (
                _close(linear(x, w, b), F.linear(x, w, b))
                and _close(linear(x, w, b, gelu="none"), F.gelu(F.linear(x, w, b)))
                and _close(
                    linear(x, w, b, gelu="tanh"), F.gelu(F.linear(x, w, b), approximate="tanh")
                )
                and _close(linear_add(x, w, b, residual), F.linear(x, w, b) + residual)
            )
    except Exception:  # no oneDNN, an op that changed signature, an unsupported CPU
        return False


@functools.cache
def conv_available() -> bool:
    """Whether `conv1x1_add_relu_` runs here and agrees with the plain ops."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        x, weight, other = _bf16((1, 8, 5, 5), (16, 8, 1, 1), (1, 16, 5, 5), channels_last=True)
        (bias,) = _bf16((16,))
        want = F.relu(F.conv2d(x, weight, bias) + other)
        with torch.no_grad():
            got = conv1x1_add_relu_(other.clone(), x, weight, bias)
        return _close(got, want)
    except Exception:  # no oneDNN, an op that changed signature, an unsupported CPU
        return False
