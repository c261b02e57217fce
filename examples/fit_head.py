#!/usr/bin/env python
"""Fit a head of your own labels on a labeled folder, save it, and label new images with it.

    python examples/fit_head.py labeled/ new/ [--head head.safetensors] [--model M]

labeled/ holds one subfolder of example images per label (labeled/cat/*.jpg, labeled/dog/*.jpg,
...; a few dozen each is plenty); new/ the images to label. The embeddings are cached beside the
head (HEAD.cache/), so a second run fits at once. `vithybrid fit` and `vithybrid classify --head`
do the same from the command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("labeled", type=Path, help="one subfolder of images per label")
    parser.add_argument("new", type=Path, help="folder of images to label (searched recursively)")
    parser.add_argument("--head", type=Path, default=Path("head.safetensors"), help="head file")
    parser.add_argument("--model", "-m", help="short name, hub id, checkpoint directory or file")
    args = parser.parse_args()

    import vithybrid_cli as vh

    model = vh.load_model(args.model or vh.DEFAULT_MODEL_ID)
    cache = args.head.with_name(args.head.name + ".cache")  # as `vithybrid fit` keeps it
    report = vh.fit_head(model, args.labeled, cache_dir=cache)
    print(f"{len(report.labels)} labels: {', '.join(report.labels)}; C={report.c:g}")
    if report.accuracy is not None:
        print(f"validation accuracy {report.accuracy:.3f} on {sum(report.val_counts)} images")
    for path, message in report.errors:
        print(f"left out {path}: {message}", file=sys.stderr)
    vh.save_head(report.head, args.head)

    extensions = Image.registered_extensions()
    new = sorted(p for p in args.new.rglob("*") if p.suffix.lower() in extensions)
    head = vh.load_head(args.head)  # as a later run would: from the file
    for path, top_k in zip(new, vh.classify(model, new, top_k=1, head=head), strict=True):
        _index, label, score = top_k[0]
        print(f"{path}\t{label}\t{score:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
