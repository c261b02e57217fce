"""The ViT-Hybrid family: every member's short name, what it labels, its size, cost and accuracy.

Data for `vithybrid models` and the README's "Choosing a model"; the short names resolve in
weights.MODEL_ALIASES. Parameters and GFLOPs are stored with each member, so the menu prints
at once; `cost()` computes them from the architecture (a model built on the meta device, nothing
downloaded), and a test checks every stored figure against it. Published ImageNet-1k top-1 is timm's
results/results-imagenet.csv (huggingface/pytorch-image-models, commit 0173a139); throughput is
what `python benchmarks/bench.py --only family --record` measured on the machine it names
(family_throughput.json, shipped beside this module).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from .config import timm_model_config
from .weights import MODEL_ALIASES

THROUGHPUT_FILE = Path(__file__).with_name("family_throughput.json")


@dataclass(frozen=True)
class Cost:
    parameters: int
    gflops: float  # multiply-adds count 2, at the member's input size, one image
    input_size: int


@dataclass(frozen=True)
class Member:
    short_name: str
    classes: int  # 1000 (ImageNet-1k), 21843 (ImageNet-21k) or 0 (features only)
    cost: Cost  # as cost(architecture, classes) computes it (tests/test_family.py checks)
    top1: float | None = None  # published ImageNet-1k top-1 (%), timm's results table

    @property
    def hub_id(self) -> str:
        return MODEL_ALIASES[self.short_name]

    @property
    def architecture(self) -> str:
        """timm's architecture name, e.g. vit_small_r26_s32_384."""
        return self.hub_id.removeprefix("timm/").split(".")[0]

    @property
    def labels(self) -> str:
        if self.classes == 0:
            return "features"
        return {1000: "in1k", 21843: "in21k"}.get(self.classes, str(self.classes))


MEMBERS: tuple[Member, ...] = (
    Member("hybrid-tiny-224", 1000, Cost(6_337_704, 0.867, 224), 71.798),
    Member("hybrid-tiny-384", 1000, Cost(6_355_944, 2.654, 384), 75.962),
    Member("hybrid-tiny-224-in21k", 21843, Cost(10_360_403, 0.875, 224)),
    Member("hybrid-small-224", 1000, Cost(36_431_912, 6.928, 224), 81.864),
    Member("hybrid-small-384", 1000, Cost(36_468_392, 20.527, 384), 84.048),
    Member("hybrid-small-224-in21k", 21843, Cost(44_456_467, 6.944, 224)),
    Member("hybrid-base-224-in21k", 0, Cost(97_890_112, 43.069, 224)),
    Member("hybrid-base-384", 1000, Cost(98_950_952, 134.312, 384), 84.976),
    Member("hybrid-large-224", 1000, Cost(328_994_856, 38.827, 224), 84.422),
    Member("hybrid-large-384", 1000, Cost(329_092_136, 114.272, 384), 86.182),
    Member("hybrid-large-224-in21k", 21843, Cost(350_358_931, 38.869, 224)),
)


@functools.cache
def cost(architecture: str, classes: int) -> Cost:
    """Parameters and forward GFLOPs (convolutions, matmuls, attention; torch's FlopCounter),
    from the model built on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .model import ViTHybrid

    config = timm_model_config({"architecture": architecture, "num_classes": classes})
    side = config.image_size
    with torch.device("meta"), torch.no_grad():
        model = ViTHybrid(config)
        parameters = sum(p.numel() for p in model.parameters())
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, side, side))
    return Cost(parameters, counter.get_total_flops() / 1e9, side)


def read_throughput(path: Path = THROUGHPUT_FILE) -> dict:
    """{"machine": str, "members": {short name: {"model_img_s", "process_img_s"}}}, or {}."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class MenuRow:
    member: Member
    model_img_s: float | None  # forward pass alone, bf16, batch 8
    process_img_s: float | None  # `vithybrid classify DIR` as a whole process


def menu(throughput: dict | None = None) -> list[MenuRow]:
    """One row per member, in MEMBERS' order (small to large)."""
    measured = (throughput if throughput is not None else read_throughput()).get("members", {})
    rows = []
    for member in MEMBERS:
        speed = measured.get(member.short_name, {})
        rows.append(
            MenuRow(
                member,
                speed.get("model_img_s"),
                speed.get("process_img_s"),
            )
        )
    return rows


MENU_COLUMNS = ("--model", "labels", "input", "params", "GFLOPs", "top-1", "fwd/s", "run/s")


def _number(value: float | None, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if value else "-"


def menu_cells(throughput: dict | None = None) -> tuple[list[list[str]], str]:
    """(one row of strings per member in MENU_COLUMNS' order, a caption saying what the
    throughput columns are and where they were measured): what `vithybrid models` prints."""
    measured = throughput if throughput is not None else read_throughput()
    rows = [
        [
            row.member.short_name,
            row.member.labels,
            str(row.member.cost.input_size),
            f"{row.member.cost.parameters / 1e6:.1f}M",
            _number(row.member.cost.gflops),
            _number(row.member.top1),
            _number(row.model_img_s),
            _number(row.process_img_s),
        ]
        for row in menu(measured)
    ]
    caption = (
        "fwd/s: images per second, the model alone (bf16, batch 8); run/s: `classify DIR` as a "
        f"whole process; measured on {measured.get('machine', '-')}"
    )
    return rows, caption
