"""Which engine runs the model's forward pass: `torch` (our ViTHybrid itself) or `openvino` (the
same ViTHybrid, converted once and compiled by OpenVINO for the CPU; see openvino.py).

Both give the Runner the same thing: a callable `model(pixels, interpolate_pos_encoding=,
output_attentions=, cls_only=) -> ViTHybridOutput` with `.config`, `.preprocess_config`,
`.checkpoint`, `.memory_format`. What differs (where inputs go, what precision computes, what the
journal records) is asked through the functions here, so the Runner does not care which it holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ...model.model import ViTHybrid
    from .openvino import OpenVINOModel

BACKENDS = ("torch", "openvino")


def load_run_model(
    name_or_path: Any,
    revision: str | None = None,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = "auto",
    backend: str = "torch",
    compile_model: bool = False,
    threads: int | None = None,
) -> ViTHybrid | OpenVINOModel:
    """The checkpoint ready to run: our torch model on `device` in `dtype` (optionally
    torch.compile'd), or with `backend="openvino"` that model converted and compiled by OpenVINO
    on the CPU in `dtype` (auto: OpenVINO's default, bf16 where the CPU has it). `threads`: the
    OpenVINO backend's inference threads (None: its default); torch's are set by the caller.
    Raises ValueError for a combination that cannot run, MissingExtra without OpenVINO."""
    from ...model.weights import load_model
    from ..runtime import prepare_model, resolve_device, resolve_dtype

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use {' or '.join(BACKENDS)}")
    if backend == "torch":
        torch_device = resolve_device(device) if isinstance(device, str) else device
        if isinstance(dtype, str):
            dtype = resolve_dtype(dtype, torch_device)
        loaded = load_model(name_or_path, revision, device=torch_device, dtype=dtype)
        return prepare_model(loaded, compile_model)
    from .openvino import OpenVINOModel, check_openvino_options, require_openvino

    require_openvino()  # before the model loads: one line
    check_openvino_options(str(device), compile_model)
    import torch

    loaded = load_model(name_or_path, revision, device="cpu", dtype=torch.float32)
    prepare_model(loaded)  # the CPU allocator tuning helps the conversion's forward too
    return OpenVINOModel(loaded, dtype=dtype, threads=threads)


def backend_of(model: Any) -> str:
    """The backend's name: "torch" for our ViTHybrid, else the one the model names."""
    return getattr(model, "backend", "torch")


def input_placement(model: Any) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) the model's input tensors go to: its weights' for torch."""
    placement = getattr(model, "input_placement", None)
    if placement is not None:
        return placement
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def compute_dtype(model: Any) -> torch.dtype:
    """The precision the forward pass computes in: the weights' for torch, the one OpenVINO
    actually chose for its backend."""
    return getattr(model, "compute_dtype", None) or next(model.parameters()).dtype


def backend_settings(model: Any) -> dict[str, Any]:
    """What the journal records of how the forward pass ran (a resume must match it)."""
    return {
        "backend": backend_of(model),
        "dtype": str(compute_dtype(model)).removeprefix("torch."),
    }
