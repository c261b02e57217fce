"""The Python API examples in examples/, each run as a user would (a subprocess of the script),
on the tiny checkpoint. (The CLI's shell examples are run in test_cli.py.)"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import checkpoints
import pytest
from PIL import Image

from vithybrid_cli import load_head

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # a subprocess each: an interpreter, torch, a model load


def run_example(script: str, *args: object, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, REPO / "examples" / script, *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """photos/: four photographs, one of them a folder down; a text file a listing must skip."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    names = ["cat", "astronaut", "coffee", "rocket"]  # checkpoints.photographs' order
    for index, (name, photo) in enumerate(zip(names, checkpoints.photographs(4), strict=True)):
        where = root / "sub" if index % 2 else root
        photo.convert("RGB").resize((96, 72)).save(where / f"{name}.jpg")
    (root / "notes.txt").write_text("not an image\n")
    return root


def test_label_folder_into_pandas(tiny_checkpoint, folder, tmp_path):
    csv_path = tmp_path / "labels.csv"
    result = run_example("label_folder_pandas.py", folder, "--model", tiny_checkpoint,
                         "--top-k", "2", "--csv", csv_path, cwd=tmp_path)  # fmt: skip
    rows = list(csv.DictReader(csv_path.open()))
    assert sorted(Path(row["path"]).name for row in rows) == [
        "astronaut.jpg", "cat.jpg", "coffee.jpg", "rocket.jpg",
    ]  # fmt: skip
    assert list(rows[0]) == ["path", "label_1", "score_1", "label_2", "score_2"]
    for row in rows:
        assert {row["label_1"], row["label_2"]} <= set(checkpoints.TINY_LABELS)
        assert 1 >= float(row["score_1"]) >= float(row["score_2"]) > 0
        assert row["path"] in result.stdout  # the frame is printed too
    counts = result.stdout.split("\n\n", 1)[1]  # then the images per best label
    assert sum(int(line.split()[-1]) for line in counts.splitlines()[1:]) == 4


def test_fit_head_then_label_new_images(tiny_checkpoint, tmp_path):
    labeled, new = tmp_path / "labeled", tmp_path / "new"
    photos = dict(zip(["cat", "astronaut", "coffee"], checkpoints.photographs(3), strict=True))
    for label, photo in photos.items():
        (labeled / label).mkdir(parents=True)
        for i in range(5):  # five crops of each photograph
            photo.crop((i * 10, i * 8, photo.width - i * 6, photo.height - i * 4)).convert(
                "RGB"
            ).resize((80, 80)).save(labeled / label / f"{i}.jpg")
    new.mkdir()
    for label, photo in photos.items():
        photo.convert("RGB").resize((80, 80), Image.BILINEAR).save(new / f"{label}.png")

    head = tmp_path / "out" / "my-head.safetensors"
    (tmp_path / "out").mkdir()
    result = run_example("fit_head.py", labeled, new, "--head", head,
                         "--model", tiny_checkpoint, cwd=tmp_path)  # fmt: skip
    assert load_head(head).labels == ["astronaut", "cat", "coffee"]
    assert (tmp_path / "out" / "my-head.safetensors.cache").is_dir()  # refits are instant
    assert result.stdout.startswith("3 labels: astronaut, cat, coffee; C=")
    labeled_lines = [line.split("\t") for line in result.stdout.splitlines() if "\t" in line]
    assert [Path(path).name for path, _, _ in labeled_lines] == [
        "astronaut.png", "cat.png", "coffee.png",
    ]  # fmt: skip
    for _, label, score in labeled_lines:
        assert label in photos and 1 / 3 <= float(score) <= 1  # the best of three labels


def test_similarity_search_finds_the_same_photo_first(tiny_checkpoint, folder, tmp_path):
    query = tmp_path / "query.jpg"
    shutil.copy(folder / "coffee.jpg", query)  # the same bytes as one of the folder's images
    result = run_example("similarity_search.py", folder, "--query", query, "--top", "2",
                         "--model", tiny_checkpoint, cwd=tmp_path)  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines[0] == str(query)
    best_score, best_path = lines[1].split()
    assert Path(best_path).name == "coffee.jpg" and float(best_score) == pytest.approx(1, abs=1e-3)
    assert len(lines) == 3

    every = run_example("similarity_search.py", folder, "--top", "1",
                        "--model", tiny_checkpoint, cwd=tmp_path)  # fmt: skip
    lines = every.stdout.splitlines()
    assert len(lines) == 8  # four queries, one match each
    for query_line, match_line in zip(lines[::2], lines[1::2], strict=True):
        score, match = match_line.split()
        assert match != query_line  # an image is not its own neighbour
        assert -1 <= float(score) <= 1
