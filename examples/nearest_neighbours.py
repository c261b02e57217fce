#!/usr/bin/env python
"""Embed every image in a folder with the CLI, then print each image's nearest neighbours.

    python examples/nearest_neighbours.py photos/ [--neighbours 3] [--model DIR_OR_HUB_ID] [...]

Options it does not know (e.g. --dtype float32, --pool mean) are passed on to `vithybrid embed`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="folder of images (searched recursively)")
    parser.add_argument("--neighbours", "-n", type=int, default=1, help="neighbours per image")
    parser.add_argument("--model", "-m", help="hub id, checkpoint directory or weights file")
    args, passthrough = parser.parse_known_args()
    if args.model:
        passthrough += ["--model", args.model]

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "embeddings.npz"
        command = [sys.executable, "-m", "vithybrid_cli", "embed", args.folder]
        command += ["--output", str(out), "--normalize", "--quiet", *passthrough]
        status = subprocess.run(command).returncode
        if status not in (0, 1):  # 1: some files failed (reported on stderr), the rest are in
            return status
        with np.load(out) as saved:
            vectors, paths = saved["embeddings"], saved["paths"]

    if len(paths) < 2:
        print("need at least two images", file=sys.stderr)
        return 1
    similarity = vectors @ vectors.T  # unit vectors (--normalize): dot product = cosine
    np.fill_diagonal(similarity, -np.inf)
    for row, path in enumerate(paths):
        for other in np.argsort(-similarity[row])[: args.neighbours]:
            print(f"{path}  ->  {paths[other]}  (cosine {similarity[row, other]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
