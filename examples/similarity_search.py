#!/usr/bin/env python
"""Embed a folder, then find the images most like a query image (cosine similarity).

    python examples/similarity_search.py photos/ [--query cat.jpg ...] [--top 3] [--model M]

Without --query, every image of the folder is a query (its nearest neighbours, itself left out).
For millions of images, embed with `vithybrid embed photos/ -o vectors.npy` (resumable, in input
order, paths in vectors.paths.txt) and load the rows with numpy.load.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder of images to search (recursively)")
    parser.add_argument("--query", "-q", type=Path, nargs="+", help="images to look up")
    parser.add_argument("--top", "-n", type=int, default=3, help="matches per query")
    parser.add_argument("--model", "-m", help="short name, hub id, checkpoint directory or file")
    args = parser.parse_args()

    import vithybrid_cli as vh

    extensions = Image.registered_extensions()
    paths = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in extensions)
    queries = args.query or paths
    if len(paths) < 2 and not args.query:
        print("error: need at least two images to compare", file=sys.stderr)
        return 2
    model = vh.load_model(args.model or vh.DEFAULT_MODEL_ID)
    index = vh.embed(model, paths, normalize=True)  # unit vectors: dot product = cosine
    wanted = vh.embed(model, queries, normalize=True) if args.query else index

    similarity = wanted @ index.T
    for row, query in enumerate(queries):
        same = [column for column, path in enumerate(paths) if path.resolve() == query.resolve()]
        similarity[row, same] = -np.inf  # a query is not its own match
        print(query)
        for column in np.argsort(-similarity[row])[: args.top]:
            if np.isfinite(similarity[row, column]):
                print(f"  {similarity[row, column]:.3f}  {paths[column]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
