"""What to label next: search/suggest.py's selection and `vithybrid suggest`.

A head of the tiny random checkpoint is fitted on crops of three scikit-image photographs; the
pool is other crops of those three and of three photographs the head never saw, with byte
copies and a resized copy among them (near copies that must never both be picked).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import checkpoints
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vithybrid_cli.cli import app
from vithybrid_cli.model.head import load_head, save_head
from vithybrid_cli.pipeline.fit import fitting
from vithybrid_cli.search.suggest import margins, suggest, unit_rows, why

LABELS = ["cat", "astronaut", "coffee"]  # checkpoints.photographs' order
SIZE = ["--dtype", "float32"]  # the head's image size and interpolation are its own
# The tiny random model's CLS vectors all lie within cosine 0.97 of each other (a real model's
# spread: duplicates' 0.9 is the default); here distinct crops reach 0.993, the resized copy 0.999.
NEAR = ["--near-copy", "0.998"]


def cli(*args: object):
    return CliRunner().invoke(app, [str(arg) for arg in args], env={"COLUMNS": "200"})


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def crop(photo: Image.Image, rng: np.random.Generator, size: int = 96) -> Image.Image:
    width, height = photo.size
    side = rng.uniform(0.6, 1.0)
    crop_w, crop_h = int(width * side), int(height * side)
    left, top = rng.integers(0, width - crop_w + 1), rng.integers(0, height - crop_h + 1)
    image = photo.crop((left, top, left + crop_w, top + crop_h)).resize((size, size))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image.convert("RGB")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def head_file(tiny_checkpoint, tmp_path_factory) -> Path:
    """A head of LABELS fitted on 8 crops of each photograph, at 128x128."""
    from vithybrid_cli.model.weights import load_model

    root = tmp_path_factory.mktemp("labeled")
    rng = np.random.default_rng(0)
    for label, photo in zip(LABELS, checkpoints.photographs(3), strict=True):
        (root / label).mkdir()
        for i in range(8):
            crop(photo, rng).save(root / label / f"{i}.png")
    report = fitting.fit_head(
        load_model(tiny_checkpoint), root, image_size=(128, 128), interpolate_pos_encoding=True,
        cache_dir=tmp_path_factory.mktemp("cache"),
    )  # fmt: skip
    path = root.parent / "head.safetensors"
    save_head(report.head, path)
    return path


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    """pool/: 3 crops of each of the six photographs, plus two byte copies and a resized copy."""
    root = tmp_path_factory.mktemp("pool")
    rng = np.random.default_rng(1)
    for number, photo in enumerate(checkpoints.photographs(6)):
        for i in range(3):
            crop(photo.convert("RGB"), rng).save(root / f"p{number}-{i}.png")
    shutil.copy(root / "p3-0.png", root / "copy-of-p3-0.png")
    shutil.copy(root / "p4-1.png", root / "copy-of-p4-1.png")
    Image.open(root / "p5-2.png").resize((90, 90)).save(root / "smaller-p5-2.png")
    return root


@pytest.fixture(scope="module")
def pool_vectors(tiny_checkpoint, pool, tmp_path_factory) -> Path:
    """pool embedded by `embed` as the head reads it (cls, 128x128)."""
    out = tmp_path_factory.mktemp("vectors") / "pool.npy"
    result = cli("embed", pool, "-o", out, "-m", tiny_checkpoint, *SIZE, "--image-size", "128",
                 "--interpolate-pos-encoding", "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return out


NEAR_COPIES = [("p3-0.png", "copy-of-p3-0.png"), ("p4-1.png", "copy-of-p4-1.png"),
               ("p5-2.png", "smaller-p5-2.png")]  # fmt: skip


# ---------------------------------------------------------------------------- the selection


def test_margins_and_uncertainty_order():
    probabilities = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.1, 0.5, 0.4]])
    margin, best, second = margins(probabilities)
    np.testing.assert_allclose(margin, [0.85, 0.05, 0.1])
    assert best.tolist() == [0, 0, 1] and second.tolist() == [1, 1, 2]
    features = np.eye(3, dtype=np.float32)
    picks = suggest(features, probabilities, 3)
    assert [p.row for p in picks] == [1, 2, 0]  # all equally far apart: the least sure first
    assert picks[0].score == pytest.approx(0.95) and picks[0].nearest is None
    assert why(picks[0], ["a", "b", "c"]) == "margin 0.05 between a and b; the least sure of all"


def test_k_center_takes_the_farthest_and_never_a_near_copy():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(6, 16)).astype(np.float32)
    # rows 0..5 distinct; 6 is a near copy of 0, 7 of 1; all fairly uncertain
    features = np.vstack([base, base[0] + 0.01, base[1] + 0.01])
    probabilities = np.full((8, 2), 0.5)
    probabilities[:, 0] += np.linspace(0.0, 0.07, 8)[::-1]  # 7 least sure ... 0 most
    probabilities[:, 1] = 1 - probabilities[:, 0]
    picks = suggest(features, probabilities, 8, near_copy=0.9)
    rows = [p.row for p in picks]
    assert rows[0] == 7  # the least sure seeds the pick
    assert len(rows) == 6 and not {0, 6} <= set(rows) and not {1, 7} <= set(rows)
    unit = unit_rows(features)
    for k in range(1, len(rows)):  # each is the farthest from those before it
        left = [r for r in range(8) if r not in rows[:k]]
        left = [r for r in left if (unit[rows[:k]] @ unit[r]).max() < 0.9]
        nearest = {r: (unit[rows[:k]] @ unit[r]).max() for r in left}
        assert nearest[rows[k]] == pytest.approx(min(nearest.values()))
        assert picks[k].nearest == pytest.approx(nearest[rows[k]])


def test_candidates_are_the_most_uncertain():
    features = np.eye(10, dtype=np.float32)
    probabilities = np.column_stack([np.linspace(0.5, 0.99, 10), 1 - np.linspace(0.5, 0.99, 10)])
    picks = suggest(features, probabilities, 2, candidates=2)
    assert {p.row for p in picks} <= {0, 1, 2, 3}  # the top 2 x 2 by uncertainty
    with pytest.raises(ValueError, match="-n 0"):
        suggest(features, probabilities, 0)


# ---------------------------------------------------------------------------- the command


def test_suggest_photos_and_vectors(tiny_checkpoint, head_file, pool, pool_vectors, tmp_path):
    out = tmp_path / "next.jsonl"
    page = tmp_path / "next.html"
    result = cli("suggest", pool, "--head", head_file, "-n", 30, "-o", out,
                 "--report", page, *SIZE, *NEAR, "-m", tiny_checkpoint)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    records = jsonl(out.read_text())
    assert all(set(r) == {"path", "score", "label", "why"} for r in records)
    assert all(r["label"] in LABELS for r in records)
    names = [Path(r["path"]).name for r in records]
    assert len(names) == len(set(names)) == 18  # 21 photos, 3 of them near copies
    for first, second in NEAR_COPIES:
        assert not {first, second} <= set(names), names
    # the first is the one the head is least sure of (from the same vectors, read back)
    from vithybrid_cli.search.vectors import read_vectors

    vectors = read_vectors(str(pool_vectors))
    margin, _, _ = margins(load_head(head_file).probabilities(np.asarray(vectors.array)))
    least_sure = Path(vectors.paths[int(np.argmax(1 - margin))]).name
    least_sure_copies = (
        {least_sure}
        | {a for a, b in NEAR_COPIES if b == least_sure}
        | {b for a, b in NEAR_COPIES if a == least_sure}
    )
    assert names[0] in least_sure_copies
    assert records[0]["score"] == pytest.approx(float(np.max(1 - margin)), abs=1e-3)
    assert records[0]["why"].endswith("the least sure of all")
    assert "farthest from the picked" in records[1]["why"]
    scores = [r["score"] for r in records]
    assert scores[0] == max(scores)
    assert "suggested" in result.stderr and "of 21" in result.stderr
    # the page: a tile per pick
    html = page.read_text()
    assert all(name in html for name in names)
    assert len(list((tmp_path / "next_files").iterdir())) == len(names)
    # the same pool from `embed`'s vectors: the same picks
    again = cli("suggest", pool_vectors, "--head", head_file, "-n", 30, *SIZE, *NEAR)
    assert again.exit_code == 0, again.stderr
    assert [Path(r["path"]).name for r in jsonl(again.stdout)] == names


def test_n_picks_at_most_n(tiny_checkpoint, head_file, pool_vectors):
    result = cli("suggest", pool_vectors, "--head", head_file, "-n", 4, *SIZE, *NEAR)
    assert result.exit_code == 0, result.stderr
    assert len(jsonl(result.stdout)) == 4


def assert_one_line(result, *needles: str, status: int = 2) -> None:
    assert result.exit_code == status, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_not_a_head_file(pool_vectors, tmp_path):
    fake = tmp_path / "head.safetensors"
    fake.write_text("not a head")
    assert_one_line(cli("suggest", pool_vectors, "--head", fake), "head.safetensors",
                    "not a vithybrid head")  # fmt: skip
    assert_one_line(cli("suggest", pool_vectors, "--head", tmp_path / "missing"), "missing")


def test_vectors_of_other_settings_are_refused(tiny_checkpoint, head_file, pool, tmp_path):
    mean = tmp_path / "mean.npy"
    done = cli("embed", pool, "-o", mean, "--pool", "mean", "-m", tiny_checkpoint, *SIZE,
               "--image-size", "128", "--interpolate-pos-encoding", "--quiet")  # fmt: skip
    assert done.exit_code == 0, done.stderr
    assert_one_line(cli("suggest", mean, "--head", head_file), "mean.npy", "pool", "'mean'")
    small = tmp_path / "small.npy"
    done = cli("embed", pool, "-o", small, "-m", tiny_checkpoint, *SIZE, "--quiet")
    assert done.exit_code == 0, done.stderr
    assert_one_line(cli("suggest", small, "--head", head_file), "small.npy", "image-size")


def test_vectors_of_other_weights_are_refused(make_checkpoint_dir, head_file, pool, tmp_path):
    other = make_checkpoint_dir("tiny", seed=1)
    out = tmp_path / "other.npy"
    done = cli("embed", pool, "-o", out, "-m", other, *SIZE, "--image-size", "128",
               "--interpolate-pos-encoding", "--quiet")  # fmt: skip
    assert done.exit_code == 0, done.stderr
    assert_one_line(cli("suggest", out, "--head", head_file), "another model")


def test_output_must_be_jsonl(head_file, pool_vectors):
    assert_one_line(cli("suggest", pool_vectors, "--head", head_file, "-o", "next.csv"),
                    "next.csv", ".jsonl")  # fmt: skip


@pytest.mark.parametrize("count", ["0", "-1"])
def test_n_must_be_positive(head_file, pool_vectors, count):
    assert_one_line(cli("suggest", pool_vectors, "--head", head_file, "-n", count), count)


def test_unreadable_photos_are_one_line_each_and_the_rest_runs(
    tiny_checkpoint, head_file, pool, tmp_path
):
    mixed = tmp_path / "mixed"
    shutil.copytree(pool, mixed)
    (mixed / "broken.png").write_bytes(b"not a png")
    (mixed / "empty.jpg").write_bytes(b"")
    out = tmp_path / "next.jsonl"
    result = cli("suggest", mixed, "--head", head_file, "-n", 5, "-o", out, "-m",
                 tiny_checkpoint, *SIZE, *NEAR)  # fmt: skip
    assert result.exit_code == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and any("broken.png" in e for e in errors), result.stderr
    assert len(jsonl(out.read_text())) == 5


@pytest.mark.slow
def test_installed_script_suggests(tiny_checkpoint, head_file, pool, tmp_path):
    script = shutil.which("vithybrid", path=str(Path(sys.executable).parent)) or "vithybrid"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [script, "suggest", str(pool), "--head", str(head_file), "-n", "3", "-o",
               "next.jsonl", "-m", str(tiny_checkpoint), *SIZE, *NEAR]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    records = jsonl((tmp_path / "next.jsonl").read_text())
    assert len(records) == 3 and all(r["label"] in LABELS for r in records)
    assert "suggested 3 photos of 21" in done.stderr
