"""A gallery page from start to finish, on scikit-image's photographs (docs/images/gallery.png).

    python examples/gallery_demo.py [--model MODEL] [--out gallery-demo] [--screenshot PNG]

In OUT: train/LABEL/*.jpg (crops of six photographs), photos/ (other crops, examples/cat.jpg and
one truncated file), then `vithybrid fit ... --report fit.html`, `vithybrid classify photos
--head ... --min-score` and `vithybrid report labels.jsonl -o report.html`. With --screenshot,
Debian's chromium (through playwright) photographs the page. Needs scikit-image (the dev extra).
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

PHOTOS = {"cat": "chelsea", "astronaut": "astronaut", "coffee": "coffee", "rocket": "rocket",
          "camera": "camera", "horse": "horse"}  # fmt: skip
CAT = Path(__file__).resolve().parent / "cat.jpg"


def variant(photo: Image.Image, rng: random.Random, smallest: float) -> Image.Image:
    """A random crop (`smallest`..0.95 of each side), maybe mirrored, brightness and colour."""
    width, height = photo.size
    side = rng.uniform(smallest, 0.95)
    crop_w, crop_h = int(width * side), int(height * side)
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    crop = photo.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        crop = ImageOps.mirror(crop)
    crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.6, 1.4))
    return ImageEnhance.Color(crop).enhance(rng.uniform(0.3, 1.5))


def make_images(out: Path) -> None:
    import skimage.data

    rng = random.Random(0)
    photos = out / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for label, name in PHOTOS.items():
        array = getattr(skimage.data, name)()
        photo = Image.fromarray(array.astype("uint8") * (255 if array.dtype == bool else 1))
        photo = photo.convert("RGB")
        train = out / "train" / label
        train.mkdir(parents=True, exist_ok=True)
        for i in range(20):
            variant(photo, rng, 0.6).save(train / f"{label}_{i}.jpg", quality=88)
        for i in range(6):
            variant(photo, rng, 0.6).save(photos / f"{label}_{i}.jpg", quality=88)
    shutil.copy(CAT, photos / "tabby.jpg")
    (photos / "broken.jpg").write_bytes(CAT.read_bytes()[:3000])  # a truncated download


def vithybrid(out: Path, *args: str, ok: tuple[int, ...] = (0,)) -> None:
    print("$ vithybrid", " ".join(args))
    status = subprocess.run(["vithybrid", *args], cwd=out).returncode
    if status not in ok:
        raise SystemExit(f"vithybrid {args[0]} exited with {status}")


def screenshot(page: Path, target: Path) -> None:
    from playwright.sync_api import sync_playwright

    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-sync"]  # fmt: skip
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=flags)
        tab = browser.new_page(viewport={"width": 1280, "height": 1180})
        tab.goto(page.resolve().as_uri())
        for image in tab.locator("#groups .tile img").all()[:24]:
            image.scroll_into_view_if_needed()
            image.evaluate("i => i.decode()")
        tab.evaluate("window.scrollTo(0, 0)")
        target.parent.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(target))
        browser.close()
    with Image.open(target) as shot:  # 256 colours: a third of the bytes, the same to the eye
        shot.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(
            target, optimize=True
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="google/vit-hybrid-base-bit-384")
    parser.add_argument("--out", type=Path, default=Path("gallery-demo"))
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--c", default="1", help="fit's regularization (see vithybrid fit --c)")
    args = parser.parse_args()
    out = args.out
    make_images(out)
    model = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
    vithybrid(out, "fit", "train", "-o", "head.safetensors", "--model", model, "--c", args.c,
              "--report", "fit.html", "--quiet")  # fmt: skip
    vithybrid(out, "classify", "photos", "--head", "head.safetensors", "--min-score", "0.5",
              "-o", "labels.jsonl", "--model", model, ok=(0, 1))  # fmt: skip
    vithybrid(out, "report", "labels.jsonl", "-o", "report.html", "--title", "photos/")
    if args.screenshot:
        screenshot(out / "report.html", args.screenshot)


if __name__ == "__main__":
    main()
