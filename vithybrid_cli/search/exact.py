"""Exact cosine search: rows of length 1 in float32."""

from __future__ import annotations

from typing import Any

import numpy as np


def normalized(block: np.ndarray) -> Any:
    """A float32 torch copy of `block` with rows of length 1 (zero rows stay zero)."""
    import torch

    rows = np.ascontiguousarray(block, dtype=np.float32)
    if not rows.flags.writeable:  # a memory-mapped file's rows: torch wants its own copy
        rows = rows.copy()
    return torch.nn.functional.normalize(torch.from_numpy(rows), dim=1)
