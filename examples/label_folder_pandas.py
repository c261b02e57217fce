#!/usr/bin/env python
"""Label every image in a folder into a pandas DataFrame: one row per image, best labels first.

    python examples/label_folder_pandas.py photos/ [--top-k 3] [--csv labels.csv] [--model M]

Needs pandas (`pip install pandas`). The Python API stops at the first image it cannot read
(ImageError, naming it); `vithybrid classify photos/ -o labels.parquet` goes on past bad files,
and `pandas.read_parquet` reads its output as it is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--top-k", "-k", type=int, default=3, help="labels per image")
    parser.add_argument("--csv", type=Path, help="also write the table here")
    parser.add_argument("--model", "-m", help="short name, hub id, checkpoint directory or file")
    args = parser.parse_args()
    try:
        import pandas as pd
    except ImportError:
        print("error: this example needs pandas: pip install pandas", file=sys.stderr)
        return 2

    import vithybrid_cli as vh

    extensions = Image.registered_extensions()  # every suffix Pillow decodes: .jpg, .png, ...
    paths = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in extensions)
    if not paths:
        print(f"error: {args.folder}: no images", file=sys.stderr)
        return 2
    model = vh.load_model(args.model or vh.DEFAULT_MODEL_ID)

    rows = []
    for path, top_k in zip(paths, vh.classify(model, paths, top_k=args.top_k), strict=True):
        row: dict[str, object] = {"path": str(path)}
        for rank, (_index, label, score) in enumerate(top_k, start=1):
            row[f"label_{rank}"], row[f"score_{rank}"] = label, score
        rows.append(row)
    labels = pd.DataFrame(rows)

    print(labels.to_string(index=False, float_format="{:.3f}".format))
    print()
    print(labels["label_1"].value_counts().rename("images").to_string())  # how many per label
    if args.csv:
        labels.to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
