"""Write vithybrid_cli/model/imagenet21k_labels.txt: the 21,843 ImageNet-21k class names, in the
order of the outputs of timm's / Google's in21k checkpoints (one name per line, WordNet lemmas).

Source: timm's package data (Apache-2.0), timm/data/_info/imagenet21k_goog_synsets.txt (the
class order Google's ImageNet-21k models use, 21,843 WordNet ids) and
imagenet_synset_to_lemma.txt (WordNet lemmas). Run once with timm installed:

    python scripts/make_imagenet21k_labels.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "vithybrid_cli" / "model" / "imagenet21k_labels.txt"
EXPECTED = 21843


def main() -> int:
    import timm

    info = Path(timm.__file__).parent / "data" / "_info"
    synsets = (info / "imagenet21k_goog_synsets.txt").read_text("utf-8").split()
    lemmas = dict(
        line.split("\t", 1)
        for line in (info / "imagenet_synset_to_lemma.txt").read_text("utf-8").splitlines()
        if "\t" in line
    )
    if len(synsets) != EXPECTED:
        print(f"expected {EXPECTED} synsets, found {len(synsets)}", file=sys.stderr)
        return 1
    missing = [synset for synset in synsets if synset not in lemmas]
    if missing:
        print(f"{len(missing)} synsets have no lemma, e.g. {missing[:3]}", file=sys.stderr)
        return 1
    names = [" ".join(lemmas[synset].split()) for synset in synsets]
    OUTPUT.write_text("\n".join(names) + "\n", encoding="utf-8")
    print(f"wrote {len(names)} names to {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
