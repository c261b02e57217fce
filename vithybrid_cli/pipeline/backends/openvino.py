"""The OpenVINO backend: our own ViTHybrid, converted to OpenVINO IR once and compiled for the CPU.

Why: on a CPU with AVX-512 BF16 but no AMX, OpenVINO runs our exported model faster than our
torch bf16 path, nearly all of it in attention (its fused MHA against torch's CPU flash kernel);
see docs/guides/performance.md ("The OpenVINO backend") for the figures.

How: `OpenVINOModel` wraps a float32 CPU ViTHybrid. The first call with a given variant (the
outputs a task reads: CLS only, all tokens, or all tokens with attention maps) and input size
converts the model with OpenVINO's PyTorch frontend (traced; batch dynamic, height and width fixed)
and saves the IR in float32 under the cache (`cache_root()`/openvino/KEY/). Later calls, and later
processes, load that IR; OpenVINO's own CACHE_DIR (`cache_root()`/openvino/compiled/PRECISION,
one folder per precision) keeps the compiled blobs, so a second run neither converts nor compiles.
An IR is written to a temporary folder and renamed into place, so processes racing on one key
(torchrun ranks) are safe: the first rename wins, the others drop theirs.

Precision: dtype auto leaves OpenVINO's default (bf16 where the CPU has it, else f32); float32,
bfloat16 and float16 set INFERENCE_PRECISION_HINT (a CPU without f16 runs bf16 or f32 instead).
`compute_dtype` is the precision OpenVINO reports it uses, read from a compiled model.

Execution: PERFORMANCE_HINT=THROUGHPUT, each Runner batch split over the plugin's
OPTIMAL_NUMBER_OF_INFER_REQUESTS requests (one per stream) run at once and concatenated. Measured
on 2 AMD EPYC cores (AVX-512 BF16, no AMX), the full-size model at 384x384 in bf16, batch 8,
4 interleaved rounds of 16 images on a shared machine: THROUGHPUT (2 requests, 2 streams of one
thread) 1.38 img/s and 1.38 img per CPU-second against LATENCY (the whole batch on one request
with both threads) 1.24 img/s and 1.28 per CPU-second. A batch of one image runs on one stream,
so a single image takes longer than under LATENCY; `hint=` keeps LATENCY selectable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..runtime import cache_root

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ...model.model import ViTHybrid, ViTHybridOutput

MISSING = '--backend openvino needs OpenVINO: pip install "vithybrid[openvino]"'
HINTS = ("LATENCY", "THROUGHPUT")
DEFAULT_HINT = "THROUGHPUT"  # see the module docstring
# our --dtype names -> OpenVINO's INFERENCE_PRECISION_HINT values
PRECISION_HINTS = {
    "float32": "f32",
    "fp32": "f32",
    "bfloat16": "bf16",
    "bf16": "bf16",
    "float16": "f16",
    "fp16": "f16",
}
# OpenVINO's element type names -> torch dtype names
TORCH_DTYPES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}


def require_openvino() -> ModuleType:
    """The openvino module, else MissingExtra with the one-line install hint."""
    from ...extras import MissingExtra

    try:
        import openvino
    except ImportError as error:
        raise MissingExtra(MISSING) from error
    return openvino


def check_openvino_options(device: str, compile_model: bool) -> None:
    """Refuse what the OpenVINO backend cannot do, in one line (ValueError)."""
    device = device.removeprefix("torch.")
    if device not in ("auto", "cpu"):
        raise ValueError(
            f"--backend openvino runs on the CPU, not {device}: use --device cpu, "
            "or --backend torch"
        )
    if compile_model:
        raise ValueError("--compile is for --backend torch: OpenVINO compiles the model itself")


def precision_hint(dtype: Any) -> str | None:
    """INFERENCE_PRECISION_HINT for a --dtype value (a name or a torch dtype); None for auto."""
    if dtype is None or dtype == "auto":
        return None
    name = str(dtype).removeprefix("torch.")
    try:
        return PRECISION_HINTS[name]
    except KeyError:
        raise ValueError(
            f"unknown dtype {name!r}: use auto, float32, bfloat16 or float16"
        ) from None


def openvino_status() -> tuple[str, str] | None:
    """(OpenVINO's version, the precision `--backend openvino` computes in by default here), or
    None when OpenVINO is not installed."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return None
    ov = require_openvino()
    return ov.get_version().split("-")[0], effective_precision(compile_config())


def compile_config(
    dtype: Any = "auto", threads: int | None = None, hint: str = DEFAULT_HINT
) -> dict[str, Any]:
    """The CPU plugin's properties for a run."""
    if hint not in HINTS:
        raise ValueError(f"unknown OpenVINO hint {hint!r}: use {' or '.join(HINTS)}")
    config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
    precision = precision_hint(dtype)
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def effective_precision(config: dict[str, Any]) -> str:
    """The precision ("f32", "bf16", "f16") the CPU plugin uses under `config` on this machine:
    read from a compiled one-matmul model (milliseconds), as the hint is a request the plugin
    may not grant (f16 on a CPU without it runs bf16 or f32)."""
    import numpy as np

    ov = require_openvino()
    from openvino import opset13 as ops

    parameter = ops.parameter([1, 4], ov.Type.f32)
    product = ops.matmul(parameter, ops.constant(np.ones((4, 4), np.float32)), False, False)
    probe = ov.Model([product], [parameter], "precision-probe")
    compiled = ov.Core().compile_model(probe, "CPU", config)
    return compiled.get_property("INFERENCE_PRECISION_HINT").to_string()


# ---------------------------------------------------------------------------- conversion


@dataclass(frozen=True)
class Variant:
    """One converted graph: which outputs, at which input size."""

    cls_only: bool  # the last block computes the CLS token alone (logits, pooler, CLS embedding)
    attentions: bool  # every block's attention probabilities too (attention maps)
    height: int
    width: int
    interpolate_pos_encoding: bool

    @property
    def outputs(self) -> str:
        return "attentions" if self.attentions else "cls" if self.cls_only else "tokens"


def output_names(model: ViTHybrid, variant: Variant) -> list[str]:
    """The converted graph's outputs, in order."""
    names = ["last_hidden_state"]
    if model.classifier is not None:
        names.append("logits")
    if model.pooler is not None:
        names.append("pooler_output")
    if variant.attentions:
        names += [f"attention.{index}" for index in range(len(model.blocks))]
    return names


def graph_module(model: ViTHybrid, variant: Variant) -> torch.nn.Module:
    """`model` as a module from pixels to the tuple of `output_names(model, variant)`."""
    import torch

    class Outputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
            output = self.model(
                pixel_values,
                interpolate_pos_encoding=variant.interpolate_pos_encoding,
                output_attentions=variant.attentions,
                cls_only=variant.cls_only,
            )
            tensors = [output.last_hidden_state, output.logits, output.pooler_output]
            tensors = [tensor for tensor in tensors if tensor is not None]
            return tuple(tensors + list(output.attentions or ()))

    return Outputs().eval()


def cache_key(model: ViTHybrid, variant: Variant, fingerprint: str) -> str:
    """What decides a converted graph: the weights, the architecture, the variant, and the
    versions of OpenVINO and of this package (either may convert differently)."""
    from ..._version import __version__

    ov = require_openvino()
    recipe = {
        "weights": fingerprint,
        "config": dataclasses.asdict(model.config),
        "outputs": output_names(model, variant),
        "variant": dataclasses.asdict(variant),
        "openvino": ov.get_version(),
        "vithybrid": __version__,
    }
    text = json.dumps(recipe, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def convert(model: ViTHybrid, variant: Variant, folder: Path) -> None:
    """Convert `model`'s `variant` to OpenVINO IR in `folder` (model.xml, model.bin, meta.json)."""
    import torch

    ov = require_openvino()
    module = graph_module(model, variant)
    example = torch.zeros(2, 3, variant.height, variant.width)
    with torch.inference_mode():
        grid = model(
            example[:1], interpolate_pos_encoding=variant.interpolate_pos_encoding
        ).grid_size
    # The tracer warns about every shape-dependent branch (padding, kernel choices): they are
    # fixed by the fixed height and width, which is why those are part of the variant.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # convert_model(module, example_input=...) traces with the tracer's check on: two more
        # forward passes, a third of the conversion. The parity tests check instead.
        from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

        shape = [(-1, 3, variant.height, variant.width)]
        try:
            decoder = TorchScriptPythonDecoder(
                module, example_input=(example,), trace_kwargs={"check_trace": False}
            )
        except TypeError:  # an OpenVINO before trace_kwargs: the check costs time, not results
            graph = ov.convert_model(module, example_input=example, input=shape)
        else:
            graph = ov.convert_model(decoder, input=shape)
    # save_model compresses weights to f16 by default: keep ours exactly, in float32
    ov.save_model(graph, str(folder / "model.xml"), compress_to_fp16=False)
    meta = {"outputs": output_names(model, variant), "grid_size": list(grid)}
    (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")


def converted_ir(model: ViTHybrid, variant: Variant, fingerprint: str) -> Path:
    """The cached IR folder of `variant`, converted now if it is not there."""
    folder = cache_root() / "openvino" / cache_key(model, variant, fingerprint)
    if (folder / "meta.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        convert(model, variant, staging)
        try:
            os.rename(staging, folder)
        except OSError:
            if not (folder / "meta.json").is_file():  # not a race lost to another process
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


# ---------------------------------------------------------------------------- the model


@dataclass
class Compiled:
    """One variant compiled: the model, its outputs' names, its grid, its requests."""

    model: Any  # openvino.CompiledModel
    names: list[str]
    grid_size: tuple[int, int]
    request: Any = None  # LATENCY: one reused request
    queue: Any = None  # THROUGHPUT: an AsyncInferQueue of the plugin's optimal size


class OpenVINOModel:
    """Our ViTHybrid run by OpenVINO on the CPU, called like it (see the module docstring).

    Holds the float32 torch model it converts from (a new variant may be asked for at any time);
    answers `config`, `preprocess_config`, `checkpoint`, `pooler`, `classifier`, `num_labels`,
    `blocks`, `backbone` and the parameters from it, so code that reads a loaded model's
    structure works on either.
    """

    backend = "openvino"

    def __init__(
        self,
        model: ViTHybrid,
        dtype: Any = "auto",
        threads: int | None = None,
        hint: str = DEFAULT_HINT,
    ) -> None:
        import torch

        ov = require_openvino()
        self.torch_model = model.float().eval()
        self.config = model.config
        self.preprocess_config = model.preprocess_config
        self.checkpoint = model.checkpoint
        self.pooler = model.pooler
        self.classifier = model.classifier
        self.num_labels = model.num_labels
        self.blocks = model.blocks
        self.memory_format = torch.contiguous_format
        self.input_placement = (torch.device("cpu"), torch.float32)  # the IR takes float32
        self.hint = hint
        self.compile_config = compile_config(dtype, threads, hint)
        self.precision = effective_precision(self.compile_config)
        self.compute_dtype = getattr(torch, TORCH_DTYPES[self.precision])
        self.core = ov.Core()
        # One compiled-blob folder per precision: with one folder, a bf16 model compiled after
        # an f32 one in the same process read wrong values (NaN on Sapphire Rapids, OpenVINO
        # 2026.4); apart, each precision's blobs are reused and right.
        compiled = cache_root() / "openvino" / "compiled" / self.precision
        self.core.set_property({"CACHE_DIR": str(compiled)})
        self.compiled: dict[Variant, Compiled] = {}
        self._fingerprint: str | None = None

    @property
    def backbone(self) -> Any:
        return self.torch_model.backbone

    def parameters(self) -> Any:
        return self.torch_model.parameters()

    def named_parameters(self) -> Any:
        return self.torch_model.named_parameters()

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            from ...model.identity import weights_fingerprint

            self._fingerprint = weights_fingerprint(self.torch_model)
        return self._fingerprint

    def variant(self, variant: Variant) -> Compiled:
        """`variant` compiled (converted first unless its IR is in the cache)."""
        compiled = self.compiled.get(variant)
        if compiled is None:
            folder = converted_ir(self.torch_model, variant, self.fingerprint)
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            model = self.core.compile_model(str(folder / "model.xml"), "CPU", self.compile_config)
            compiled = Compiled(model, meta["outputs"], tuple(meta["grid_size"]))
            if self.hint == "THROUGHPUT":
                import openvino as ov

                compiled.queue = ov.AsyncInferQueue(model)
            else:
                compiled.request = model.create_infer_request()
            self.compiled[variant] = compiled
        return compiled

    def __call__(
        self,
        pixel_values: torch.Tensor,
        *,
        interpolate_pos_encoding: bool = False,
        output_attentions: bool = False,
        cls_only: bool = False,
    ) -> ViTHybridOutput:
        """Like ViTHybrid.forward (without hidden states, masks or labels); torch tensors out."""
        import torch

        from ...model.model import ViTHybridOutput

        if cls_only and output_attentions:
            raise ValueError("cls_only skips work that attentions need")
        _, _, height, width = pixel_values.shape
        if not interpolate_pos_encoding and (height, width) != (self.config.image_size,) * 2:
            side = self.config.image_size
            raise ValueError(
                f"Input image size ({height}*{width}) doesn't match model ({side}*{side}); pass "
                "interpolate_pos_encoding=True for other sizes."
            )
        variant = Variant(cls_only, output_attentions, height, width, interpolate_pos_encoding)
        compiled = self.variant(variant)
        pixels = pixel_values.detach().to("cpu", torch.float32).contiguous().numpy()
        arrays = dict(zip(compiled.names, self.infer(compiled, pixels), strict=True))
        tensors = {name: torch.from_numpy(array) for name, array in arrays.items()}
        attentions = tuple(
            tensors[name] for name in compiled.names if name.startswith("attention.")
        )
        return ViTHybridOutput(
            last_hidden_state=tensors["last_hidden_state"],
            grid_size=compiled.grid_size,
            logits=tensors.get("logits"),
            pooler_output=tensors.get("pooler_output"),
            attentions=attentions if output_attentions else None,
        )

    forward = __call__

    def infer(self, compiled: Compiled, pixels: np.ndarray) -> list[np.ndarray]:
        """Every output of `compiled` on `pixels`, as arrays this call owns."""
        import numpy as np

        if compiled.queue is None:
            results = compiled.request.infer({0: pixels})
            return [np.array(array) for array in results.to_tuple()]
        # THROUGHPUT: the batch split over the queue's requests, run at once, concatenated
        parts = [part for part in np.array_split(pixels, len(compiled.queue)) if len(part)]
        outputs: list[list[np.ndarray] | None] = [None] * len(parts)

        def done(request: Any, index: int) -> None:
            outputs[index] = [
                request.get_output_tensor(i).data.copy() for i in range(len(compiled.names))
            ]

        compiled.queue.set_callback(done)
        for index, part in enumerate(parts):
            compiled.queue.start_async({0: part}, index)
        compiled.queue.wait_all()
        return [
            np.concatenate([chunk[i] for chunk in outputs if chunk is not None])
            for i in range(len(compiled.names))
        ]
