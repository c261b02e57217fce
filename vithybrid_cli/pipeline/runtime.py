"""Where and how a run executes: device, dtype (the one parser), CPU allocator tuning, torchrun,
and the memory a batch needs against the memory there is (checked before a run).

The API and the CLI both resolve devices and dtypes here, so `"bf16"` means the same everywhere.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ..model.config import ViTHybridConfig
    from ..model.model import ViTHybrid

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- device and dtype


def has_native_bf16_cpu() -> bool:
    """AVX-512 BF16 or AMX: bfloat16 matmuls run at full speed instead of being emulated."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str = "auto") -> torch.device:
    """`auto`: CUDA where present (cuda:LOCAL_RANK under torchrun), else Apple's MPS, else CPU."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return _local_cuda_device()
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if device == "cuda":
        return _local_cuda_device()
    if device == "mps" and not _mps_available():
        raise ValueError("--device mps: MPS is not available on this machine")
    return torch.device(device)


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)  # absent from some builds
    return bool(mps is not None and mps.is_available())


def _local_cuda_device() -> torch.device:
    """cuda:LOCAL_RANK under torchrun (one GPU per process on each node), else cuda."""
    import torch

    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is None:
        return torch.device("cuda")
    return torch.device("cuda", int(local_rank) % max(1, torch.cuda.device_count()))


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 where the hardware multiplies it natively, else float32 (exact parity)."""
    import torch

    if dtype != "auto":
        try:
            return {
                "float32": torch.float32,
                "fp32": torch.float32,
                "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16,
                "float16": torch.float16,
                "fp16": torch.float16,
            }[dtype]
        except KeyError:
            raise ValueError(
                f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16"
            ) from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and has_native_bf16_cpu():
        return torch.bfloat16
    return torch.float32


# ---------------------------------------------------------------------------- torchrun


def shard_from_env() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them; (0, 1) for a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class Distributed:
    """The process group of a torchrun job, for one command; a no-op in a plain process.

    Ranks only meet to agree on files (barriers) and to add up counts, so the group always uses
    gloo over TCP: it needs no GPU and works whatever device the model runs on. torchrun's env://
    variables (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE) say where to meet.
    VITHYBRID_DIST_TIMEOUT (seconds, default 3 hours) bounds how long a rank waits for the others.
    """

    def __init__(self, rank: int = 0, world: int = 1) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside a world of {world} processes")
        self.rank, self.world = rank, world
        self._owned = False

    @classmethod
    def from_env(cls) -> Distributed:
        return cls(*shard_from_env())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __enter__(self) -> Distributed:
        if self.world > 1:
            import datetime

            import torch.distributed as dist

            if not dist.is_initialized():
                timeout = float(os.environ.get("VITHYBRID_DIST_TIMEOUT", 3 * 3600))
                dist.init_process_group(
                    os.environ.get("VITHYBRID_DIST_BACKEND", "gloo"),
                    init_method="env://",
                    rank=self.rank,
                    world_size=self.world,
                    timeout=datetime.timedelta(seconds=timeout),
                )
                self._owned = True
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._owned:
            import torch.distributed as dist

            self._owned = False
            dist.destroy_process_group()

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def all_sum(self, *values: int) -> tuple[int, ...]:
        """Each value added up over all ranks (every rank must call this)."""
        if self.world == 1:
            return values
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.int64)
        dist.all_reduce(tensor)
        return tuple(int(v) for v in tensor.tolist())


def prepare_model(model: ViTHybrid, compile_model: bool = False) -> ViTHybrid:
    """Ready a loaded model for a run in this process: the CPU allocator tuned (see
    tune_cpu_allocator) and, optionally, the forward torch.compile'd (fuses elementwise work; the
    first call compiles, which takes minutes on a small CPU)."""
    if next(model.parameters()).device.type == "cpu":
        tune_cpu_allocator()
    if compile_model:
        import torch

        model.forward = torch.compile(model.forward, dynamic=False)
    return model


_ALLOCATOR_TUNED = False


def tune_cpu_allocator() -> bool:
    """Let freed activation buffers be reused instead of handed back to the OS; process-wide.

    glibc serves every allocation over 32 MiB (the large activations of a batch at 384x384) with a
    fresh mmap and unmaps it on free, so each forward pass page-faults and zeroes those pages
    again: a quarter of a CPU forward. With mmap off and a high trim threshold they come from the
    heap, where the next batch reuses them. glibc only; VITHYBRID_NO_MALLOPT=1 skips it.
    Returns whether it is in effect.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or os.environ.get("VITHYBRID_NO_MALLOPT"):
        return _ALLOCATOR_TUNED
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    m_trim_threshold, m_mmap_max = -1, -4
    try:
        libc = ctypes.CDLL("libc.so.6")
        _ALLOCATOR_TUNED = bool(
            libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, 1 << 30)
        )
    except (OSError, AttributeError):
        logger.debug("mallopt unavailable", exc_info=True)
    return _ALLOCATOR_TUNED


def cache_root() -> Path:
    """Where vithybrid keeps what it can make again (OpenVINO conversions, search indexes):
    $VITHYBRID_CACHE, else $XDG_CACHE_HOME/vithybrid, else ~/.cache/vithybrid."""
    if os.environ.get("VITHYBRID_CACHE"):
        return Path(os.environ["VITHYBRID_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "vithybrid"
    return Path.home() / ".cache" / "vithybrid"


# ---------------------------------------------------------------------------- memory

GIB = 1 << 30


def batch_memory_bytes(
    config: ViTHybridConfig,
    image_size: tuple[int, int],
    batch_size: int,
    dtype_bytes: int,
    *,
    queued: int = 0,
    attention_maps: bool = False,
    parameters: int = 0,
) -> int:
    """The most memory a forward pass of `batch_size` images at `image_size` (width, height)
    holds at once, in bytes: an estimate that errs high, to refuse a run that cannot fit before
    it starts (a 20000x20000 input needs tens of GB and would be killed half-way, silently).

    Counted: the weights (`parameters`, 0 when they are loaded already), the largest of the
    backbone's steps (a bottleneck block's input, output, residual and 1/4-width middles, at its
    stage's resolution; the stem before its pool), the transformer's (residual stream, fused qkv,
    MLP hidden over (H/stride)*(W/stride) tokens, and with `attention_maps` the heads' TxT
    scores and probabilities; the fused kernel holds no TxT matrix), and `queued` preprocessed
    float32 images waiting for the model.
    """
    width, height = image_size
    pixels = width * height

    def area(stride: int) -> int:
        return -(-width // stride) * -(-height // stride)

    backbone = config.backbone_config
    steps = [backbone.embedding_size * (area(2) + area(4))]  # the stem's conv and its pool
    channels, stride = backbone.embedding_size, 4
    for plan in backbone.stage_plan():
        before, stride = area(stride), stride * plan.stride
        after, middle = area(stride), max(8, plan.width // 4)
        steps.append(channels * before + (2 * plan.width + 2 * middle) * after)
        channels = plan.width
    tokens = area(config.stride) + 1
    hidden = config.hidden_size
    layer = tokens * (2 * hidden + max(3 * hidden, config.intermediate_size))
    if attention_maps:
        layer += 2 * config.num_attention_heads * tokens * tokens
    activations = batch_size * (3 * pixels + max(*steps, layer))
    # 2.5: the convolutions' and norms' workspace beside their inputs and outputs (measured)
    return int(2.5 * activations * dtype_bytes) + 4 * 3 * pixels * queued + parameters * dtype_bytes


def available_memory(device: torch.device) -> int | None:
    """Bytes a run may still take on `device`: what CUDA reports free, or on the CPU Linux's
    MemAvailable (under a cgroup limit, the room left below it); None where unknown (MPS, other
    systems). VITHYBRID_AVAILABLE_MEMORY (bytes) overrides it."""
    if os.environ.get("VITHYBRID_AVAILABLE_MEMORY"):
        return int(float(os.environ["VITHYBRID_AVAILABLE_MEMORY"]))
    if device.type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    found = None
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    found = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    try:  # cgroup v2: a container's limit, which the OOM killer enforces, not MemAvailable
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max" and found is not None:
            found = min(found, int(limit) - used)
    except (OSError, ValueError):
        pass
    return found


def largest_side(fits: Callable[[int], bool], step: int, upper: int) -> int | None:
    """The largest multiple of `step` up to `upper` for which `fits(side)` holds (it holds for
    every smaller side too), or None."""
    low, high = 0, upper // step
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle * step):
            low = middle
        else:
            high = middle - 1
    return low * step or None
