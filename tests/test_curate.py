"""Curating labels: `fit --issues` (labels probably wrong, outliers, leaks) and `fit --corrections`.

The labeled folder is test_head's task (augmented crops of scikit-image photographs, one
photograph per label, the tiny random checkpoint at 128x128) with planted faults: photos moved
into another label's folder (flipped labels) and a validation photo that is a copy of a training
one (a leak).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_head import TINY_SIZE, assert_clean_error, cli, jsonl, write_task

from vithybrid_cli.io.corrections import Correction, append_correction
from vithybrid_cli.io.issues import FIELDS, read_issues
from vithybrid_cli.pipeline.fit import issues as issue_maths

# (label folder it came from, file, label folder it was moved into): the planted flips
FLIPS = [
    ("cat", "00.png", "coffee"),
    ("rocket", "01.png", "astronaut"),
    ("coffee", "02.png", "cat"),
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """root/train (16 per label, 3 flipped), root/val (4 per label + a copy of a training photo)."""
    root = write_task(tmp_path_factory.mktemp("curate"), {"train": 16, "val": 4}, scale=0.9,
                      size=96, seed=3)  # fmt: skip
    for source, name, target in FLIPS:
        shutil.move(root / "train" / source / name, root / "train" / target / f"was-{source}.png")
    shutil.copy(root / "train" / "astronaut" / "05.png", root / "val" / "astronaut" / "copy.png")
    return root


def page_data(path: Path) -> dict:
    """The records a page carries (report/page.py: JSON in its #data script)."""
    text = path.read_text()
    start = text.index('id="data">') + len('id="data">')
    return json.loads(text[start : text.index("</script>", start)])


def fit(checkpoint: Path, *args: object):
    return cli("fit", "train", "--val", "val", "--model", checkpoint, *TINY_SIZE, *args)


def test_issues_name_the_planted_flips_and_the_leak(tiny_checkpoint, planted, tmp_path,
                                                    monkeypatch):  # fmt: skip
    monkeypatch.chdir(planted)  # relative paths, as a person types them
    head, issues_file = tmp_path / "h.safetensors", tmp_path / "issues.jsonl"
    page_file = tmp_path / "fit.html"
    result = fit(tiny_checkpoint, "-o", head, "--issues", issues_file, "--cache", tmp_path / "c",
                 "--report", page_file)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert f"wrote {issues_file}" in result.stderr
    lines = jsonl(issues_file.read_text())
    assert lines == read_issues(issues_file)
    assert all(set(FIELDS) <= set(line) for line in lines)
    labels = [line for line in lines if line["kind"] == "label"]
    top = {line["path"]: line for line in labels[: len(FLIPS) + 1]}  # one false alarm allowed
    for source, _, target in FLIPS:
        flagged = top[f"train/{target}/was-{source}.png"]
        assert (flagged["label"], flagged["suggested"]) == (target, source)
    scores = [line["score"] for line in labels]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.5
    leaks = [line for line in lines if line["kind"] == "leak"]
    assert leaks[0]["path"] == "val/astronaut/copy.png"
    assert leaks[0]["copy_of"] == "train/astronaut/05.png" and leaks[0]["score"] > 0.999
    assert leaks[0]["suggested"] is None
    page = page_data(page_file)
    view = page["views"][0]
    assert view["name"] == "Issues" and len(view["order"]) == len(lines)
    tiles = [page["tiles"][i] for i in view["order"]]
    assert [tile["path"] for tile in tiles] == [line["path"] for line in lines]
    first = tiles[0]
    assert first["title"] == f"{labels[0]['label']} → {labels[0]['suggested']}"
    assert first["detail"].startswith(f"label · {labels[0]['score']:.3f}")
    assert ("issues", str(len(lines))) in [tuple(fact) for fact in page["facts"]]
    assert [line["kind"] for line in lines] == sorted(
        (line["kind"] for line in lines), key=["label", "outlier", "leak"].index
    )

    # the review: put the flips back, drop one photo, and one path that names nothing
    corrections = tmp_path / "corrections.jsonl"
    for source, _, target in FLIPS:
        path = f"train/{target}/was-{source}.png"
        append_correction(corrections, Correction(path, "rocket", was=target))  # a first mind...
        append_correction(corrections, Correction(path, source, was=target))  # ...the last wins
    append_correction(corrections, Correction(str(planted / "train/cat/03.png"), None))  # drop
    append_correction(corrections, Correction("train/cat/nothing.png", "cat"))
    refit = fit(tiny_checkpoint, "-o", head, "--issues", issues_file, "--cache", tmp_path / "c",
                "--corrections", corrections, "--format", "json")  # fmt: skip
    assert refit.exit_code == 0, refit.stderr
    assert "(0 embedded, " in refit.stderr  # only labels changed: every embedding cached
    assert "1 correction(s) match no example of this fit: ignored" in refit.stderr
    report = json.loads(refit.stdout)
    counts = {row["label"]: row["train"] for row in report["per_class"]}
    assert counts == {"astronaut": 16, "cat": 15, "coffee": 16, "rocket": 16}
    assert report["corrected"] == 4
    flagged = {line["path"] for line in jsonl(issues_file.read_text()) if line["kind"] == "label"}
    assert not flagged & {f"train/{target}/was-{source}.png" for source, _, target in FLIPS}


def test_a_correction_to_a_new_label_needs_two_examples(tiny_checkpoint, planted, tmp_path,
                                                        monkeypatch):  # fmt: skip
    monkeypatch.chdir(planted)
    head, corrections = tmp_path / "h.safetensors", tmp_path / "corrections.jsonl"
    append_correction(corrections, Correction("train/rocket/03.png", "satellite"))
    one = fit(tiny_checkpoint, "-o", head, "--corrections", corrections)
    assert_clean_error(one, "'satellite' (1)")
    assert not head.exists()
    append_correction(corrections, Correction("./train/rocket/04.png", "satellite"))
    two = fit(tiny_checkpoint, "-o", head, "--corrections", corrections, "--format", "json")
    assert two.exit_code == 0, two.stderr
    assert "satellite" in json.loads(two.stdout)["labels"]


def test_files_that_are_not_issues_or_corrections_are_refused(tiny_checkpoint, planted,
                                                              tmp_path, monkeypatch):  # fmt: skip
    monkeypatch.chdir(planted)
    head = tmp_path / "h.safetensors"
    other_csv = tmp_path / "other.csv"
    other_csv.write_text("name,size\na.png,3\n")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"path": "train/cat/01.png", "label": "dog"}\n{"path": \n')
    wrong_keys = tmp_path / "keys.jsonl"
    wrong_keys.write_text('{"file": "train/cat/01.png", "class": "dog"}\n')
    for bad, needle in ((other_csv, "other.csv:1"), (broken, "broken.jsonl:2"),
                        (wrong_keys, "keys.jsonl:1")):  # fmt: skip
        assert_clean_error(fit(tiny_checkpoint, "-o", head, "--corrections", bad), needle)
    assert_clean_error(fit(tiny_checkpoint, "-o", head, "--issues", other_csv), "other.csv:1")
    assert other_csv.read_text() == "name,size\na.png,3\n"  # not replaced
    assert_clean_error(fit(tiny_checkpoint, "-o", head, "--issues", broken), "broken.jsonl:1")
    assert not head.exists()
    # and from a real process: one line, exit 2, before the model loads
    missing_model = tmp_path / "no-such-model"
    process = subprocess.run(
        [sys.executable, "-m", "vithybrid_cli", "fit", "train", "-o", str(head), "--model",
         str(missing_model), "--corrections", str(broken)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert process.returncode == 2, process.stderr
    assert process.stderr.strip().count("\n") == 0 and "broken.jsonl:2" in process.stderr
    assert not head.exists()


def test_label_issues_agree_with_cleanlab():
    """The counting rule is cleanlab's find_label_issues(filter_by="both"), in numpy."""
    filter_ = pytest.importorskip("cleanlab.filter")
    rng = np.random.default_rng(0)
    for trial in range(5):
        classes, n = 4, 300
        truth = rng.integers(0, classes, n)
        logits = rng.normal(0, 1, (n, classes)) + 2.5 * np.eye(classes)[truth]
        probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        given = truth.copy()
        flipped = rng.choice(n, 30, replace=False)
        given[flipped] = (truth[flipped] + rng.integers(1, classes, 30)) % classes
        ours = np.zeros(n, dtype=bool)
        found = issue_maths.label_issues(probabilities, given)
        ours[[issue.index for issue in found]] = True
        theirs = filter_.find_label_issues(given, probabilities, filter_by="both")
        assert (ours == theirs).mean() >= 0.99, trial
        assert ours[flipped].mean() >= 0.5  # most flips are found
        assert all(issue.suggested != issue.label for issue in found)


def test_outliers_and_leaks_follow_their_rules():
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 1, (3, 16)) * 4
    targets = np.repeat(np.arange(3), 30)
    features = centres[targets] + rng.normal(0, 1, (90, 16))
    features[7] = rng.normal(0, 1, 16) * 0.5 - centres.sum(0)  # far from every class
    features[80] = features[3] + 1e-3  # a near copy of a training example
    train_at, val_at = np.arange(60), np.arange(60, 90)
    outliers = issue_maths.outlier_issues(features, targets, 3)
    assert [issue.index for issue in outliers][:1] == [7]
    assert outliers[0].suggested is None
    leaks = issue_maths.leak_issues(features, targets, train_at, val_at)
    assert [(issue.index, issue.copy_of) for issue in leaks] == [(80, 3)]
    assert issue_maths.leak_issues(features, targets, train_at, np.arange(0)) == []
