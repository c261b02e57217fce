"""--device auto: CUDA where present, else Apple's MPS, else CPU (availability monkeypatched)."""

from __future__ import annotations

import pytest
import torch

from vithybrid_cli.pipeline.runtime import resolve_device


@pytest.fixture
def available(monkeypatch):
    """available(cuda=..., mps=...) makes torch report those accelerators."""

    def set_available(*, cuda: bool, mps: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        monkeypatch.delenv("LOCAL_RANK", raising=False)

    return set_available


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (False, True, "mps"), (True, False, "cuda"), (False, False, "cpu")],
)
def test_auto_prefers_cuda_then_mps_then_cpu(available, cuda, mps, expected):
    available(cuda=cuda, mps=mps)
    assert resolve_device("auto").type == expected
    assert resolve_device().type == expected


def test_explicit_mps_needs_mps(available):
    available(cuda=False, mps=False)
    with pytest.raises(ValueError, match="MPS is not available"):
        resolve_device("mps")
    available(cuda=False, mps=True)
    assert resolve_device("mps") == torch.device("mps")
