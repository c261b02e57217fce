"""Heads of your own labels: fit (cache, split, regression, metrics), the file, classify --head.

The labeling task is built here: augmented crops of scikit-image photographs, one photograph per
label. With the tiny random checkpoint the crops are mild and the model runs at 128x128
(--interpolate-pos-encoding) so its 32-d embeddings separate the photographs; the slow test runs
google's full-size configuration (random weights) at its own 384x384.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import checkpoints
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vithybrid_cli.cli import app
from vithybrid_cli.model.head import (
    Head,
    HeadError,
    load_head,
    save_head,
)
from vithybrid_cli.model.identity import ModelIdentity, model_identity
from vithybrid_cli.pipeline.fit import examples, fitting, solver
from vithybrid_cli.pipeline.runner import RunOptions
from vithybrid_cli.pipeline.tasks import head_fingerprint, head_task

LABELS = ["cat", "astronaut", "coffee", "rocket"]  # checkpoints.photographs' order
TINY_SIZE = ["--image-size", "128", "--interpolate-pos-encoding"]


def cli(*args: object):
    return CliRunner().invoke(app, [str(arg) for arg in args], env={"COLUMNS": "200"})


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_clean_error(result, *needles: str, status: int = 2) -> None:
    assert result.exit_code == status, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def augment(photo: Image.Image, rng: np.random.Generator, scale: float, size: int) -> Image.Image:
    """A random crop (side `scale`..1 of the photograph), resized to size x size, maybe mirrored."""
    width, height = photo.size
    side = rng.uniform(scale, 1.0)
    crop_w, crop_h = int(width * side), int(height * side)
    left, top = rng.integers(0, width - crop_w + 1), rng.integers(0, height - crop_h + 1)
    crop = photo.crop((left, top, left + crop_w, top + crop_h)).resize((size, size))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop.convert("RGB")


def write_task(root: Path, counts: dict[str, int], scale: float, size: int, seed: int) -> Path:
    """root/SPLIT/LABEL/N.png: `counts[SPLIT]` augmented crops of each label's photograph."""
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        for label, photo in zip(LABELS, checkpoints.photographs(len(LABELS)), strict=True):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                augment(photo, rng, scale, size).save(folder / f"{i:02d}.png")
    return root


def accuracy_of(records: list[dict]) -> float:
    return float(np.mean([r["label"] == Path(r["path"]).parent.name for r in records]))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model's kernels are too small for two threads; on a busy machine the second
    one only adds waiting (each OpenMP region waits for it)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    """train/ (12 per label) and test/ (8 per label): mild crops, 96x96."""
    return write_task(
        tmp_path_factory.mktemp("labels"), {"train": 12, "test": 8}, scale=0.9, size=96, seed=1
    )


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    from vithybrid_cli.model.weights import load_model

    return load_model(tiny_checkpoint)


@pytest.fixture(scope="module")
def fitted(tiny, task, tmp_path_factory):
    """(report, cache folder) of the tiny model fitted on task/train at 128x128."""
    cache = tmp_path_factory.mktemp("cache")
    report = fitting.fit_head(
        tiny, task / "train", image_size=(128, 128), interpolate_pos_encoding=True, cache_dir=cache
    )
    return report, cache


class ForwardCounter:
    """Counts the images that go through `model`'s forward pass while installed."""

    def __init__(self, model) -> None:
        self.images = 0
        self.handle = model.register_forward_hook(self.hook)

    def hook(self, module, inputs, output) -> None:
        self.images += inputs[0].shape[0]


# ---------------------------------------------------------------------------- end to end


def test_fit_then_classify_with_the_head(tiny_checkpoint, task, tmp_path, monkeypatch):
    from vithybrid_cli.cli.render import ProgressBar

    bars: list[tuple[str, int, int]] = []  # fit's embedding loop moves the CLI's one bar
    monkeypatch.setattr(ProgressBar, "__call__", lambda bar, *done: bars.append((bar.label, *done)))
    head_file = tmp_path / "out" / "head.safetensors"
    fit = cli("fit", task / "train", "-o", head_file, "--model", tiny_checkpoint, *TINY_SIZE,
              "--format", "json")  # fmt: skip
    assert fit.exit_code == 0, fit.stderr
    report = json.loads(fit.stdout)
    assert report["labels"] == sorted(LABELS)
    per_class = report["per_class"]
    assert [row["train"] + row["validation"] for row in per_class] == [12] * 4
    assert sum(map(sum, report["confusion"])) == sum(row["validation"] for row in per_class)
    assert report["validation_accuracy"] >= 0.75
    assert (tmp_path / "out" / "head.safetensors.cache").is_dir()  # the default cache
    assert "4 labels, 40 training + 8 validation images (48 embedded" in fit.stderr
    assert {label for label, _, _ in bars} == {"embedding"} and bars[-1][1:] == (48, 48)

    run = cli("classify", task / "test", "--head", head_file, "--model", tiny_checkpoint,
              *TINY_SIZE, "-k", "2", "-f", "jsonl")  # fmt: skip
    assert run.exit_code == 0, run.stderr
    records = jsonl(run.stdout)
    assert len(records) == 32
    assert all(len(r["top_k"]) == 2 and r["top_k"][0]["label"] == r["label"] for r in records)
    assert all(r["top_k"][0]["score"] >= r["top_k"][1]["score"] for r in records)
    assert accuracy_of(records) >= 0.85

    table = cli("fit", task / "train", "-o", head_file, "--model", tiny_checkpoint, *TINY_SIZE)
    assert table.exit_code == 0, table.stderr
    assert "validation accuracy" in table.stdout and "confusion matrix" in table.stdout
    assert "(0 embedded, 48 from the cache)" in table.stderr

    info = cli("info", "--head", head_file)
    assert info.exit_code == 0, info.stderr
    for needle in ("cat, coffee, rocket", "128x128", "cls", "embedding size", "32"):
        assert needle in info.stdout, info.stdout


def test_classify_api_with_a_head(tiny, task, fitted, tmp_path):
    import vithybrid_cli as vh

    report, _ = fitted
    path = tmp_path / "head.safetensors"
    vh.save_head(report.head, path)
    images = sorted((task / "test" / "coffee").iterdir())[:3]
    by_object = vh.classify(tiny, images, top_k=4, image_size=(128, 128),
                            interpolate_pos_encoding=True, head=report.head)  # fmt: skip
    by_path = vh.classify(tiny, images, top_k=4, image_size=(128, 128),
                          interpolate_pos_encoding=True, head=path)  # fmt: skip
    assert by_object == by_path
    assert all(sorted(label for _, label, _ in row) == sorted(LABELS) for row in by_object)
    embeddings = vh.embed(tiny, images, image_size=(128, 128), interpolate_pos_encoding=True)
    expected = report.head.probabilities(embeddings)
    for row, probabilities in zip(by_object, expected, strict=True):
        assert [index for index, _, _ in row] == list(np.argsort(-probabilities))
        np.testing.assert_allclose([s for _, _, s in row], np.sort(probabilities)[::-1], rtol=1e-5)


def test_classify_head_through_every_output(tiny_checkpoint, fitted, task, tmp_path):
    """The journaled files (.jsonl, .json, .csv) hold what stdout streams, label and score first."""
    path = tmp_path / "head.safetensors"
    save_head(fitted[0].head, path)
    args = ["--head", path, "--model", tiny_checkpoint, *TINY_SIZE, "-k", "2", "-q"]
    streamed = cli("classify", task / "test" / "cat", task / "test" / "rocket", *args)
    assert streamed.exit_code == 0, streamed.stderr
    records = jsonl(streamed.stdout)
    assert len(records) == 16 and list(records[0])[:3] == ["path", "label", "score"]
    assert all(r["label"] == r["top_k"][0]["label"] for r in records)
    assert accuracy_of(records) >= 0.75

    out = tmp_path / "out"
    for name in ("labels.jsonl", "labels.json", "labels.csv"):
        run = cli("classify", task / "test" / "cat", task / "test" / "rocket", *args,
                  "-o", out / name)  # fmt: skip
        assert run.exit_code == 0, (name, run.stderr)
    assert jsonl((out / "labels.jsonl").read_text(encoding="utf-8")) == records
    assert json.loads((out / "labels.json").read_text(encoding="utf-8")) == records
    with open(out / "labels.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "label", "score", "label_1", "score_1", "index_1",
                             "label_2", "score_2", "index_2", "error"]  # fmt: skip
    assert [(row["path"], row["label"]) for row in rows] == [
        (r["path"], r["label"]) for r in records
    ]
    assert [float(row["score_2"]) for row in rows] == [r["top_k"][1]["score"] for r in records]

    # -k beyond the head's labels: the CSV has a column group per label, no empty ones
    wide = cli("classify", task / "test" / "cat", "--head", path, "--model", tiny_checkpoint,
               *TINY_SIZE, "-k", "50", "-q", "-o", out / "wide.csv")  # fmt: skip
    assert wide.exit_code == 0, wide.stderr
    header = (out / "wide.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    classes = fitted[0].head.num_classes
    assert [name for name in header if name.startswith("label_")] == [
        f"label_{rank}" for rank in range(1, classes + 1)
    ]


def test_resume_with_a_head_checks_the_head_and_min_score(tiny_checkpoint, fitted, task, tmp_path):
    head = fitted[0].head
    path, other = tmp_path / "head.safetensors", tmp_path / "other.safetensors"
    save_head(head, path)
    save_head(Head(**{**head.__dict__, "bias": head.bias + np.float32(0.5)}), other)
    out = tmp_path / "labels.jsonl"
    base = ["--model", tiny_checkpoint, *TINY_SIZE, "-q", "-o", out]
    first = cli("classify", task / "test" / "cat", "--head", path, "--min-score", 0.5, *base)
    assert first.exit_code == 0, first.stderr
    assert len(jsonl(out.read_text(encoding="utf-8"))) == 8

    everything = [task / "test", *base, "--resume"]
    refused = cli("classify", *everything, "--head", other, "--min-score", 0.5)
    assert_clean_error(refused, "--resume", "labels.jsonl", "was written with --head")
    fingerprints = [cli("info", "--head", name).stdout for name in (path, other)]
    assert head_fingerprint(head) in fingerprints[0] and head_fingerprint(head) in refused.stderr
    assert head_fingerprint(load_head(other)) in fingerprints[1]
    refused = cli("classify", *everything, "--head", path, "--min-score", 0.6)
    assert_clean_error(refused, "with --min-score 0.5, not 0.6")
    refused = cli("classify", *everything, "--min-score", 0.5)  # the checkpoint's classifier
    assert_clean_error(refused, "--head")
    assert len(jsonl(out.read_text(encoding="utf-8"))) == 8  # refusals leave the file alone

    moved = tmp_path / "moved" / "same.safetensors"  # the same head under another name
    moved.parent.mkdir()
    moved.write_bytes(path.read_bytes())
    resumed = cli("classify", *everything, "--head", moved, "--min-score", 0.5)
    assert resumed.exit_code == 0, resumed.stderr
    records = jsonl(out.read_text(encoding="utf-8"))
    once = jsonl(cli("classify", task / "test", "--head", path, "--min-score", 0.5,
                     *base[:-2], "-f", "jsonl").stdout)  # fmt: skip
    assert sorted(r["path"] for r in records) == sorted(r["path"] for r in once)
    by_path = {r["path"]: r for r in once}
    assert all(r == by_path[r["path"]] for r in records)


def test_classify_refuses_a_head_of_another_model(tiny_checkpoint, make_checkpoint_dir, fitted,
                                                  task, tmp_path):  # fmt: skip
    head = fitted[0].head
    image = next((task / "test" / "cat").iterdir())
    cases = {
        "fitted on another model": (head, make_checkpoint_dir("tiny", 1)),
        "reads the pooler output but": (
            Head(**{**head.__dict__, "pool": "pooler"}),
            tiny_checkpoint,
        ),  # fmt: skip
        "expects 3-d embeddings": (random_head(np.random.default_rng(2), size=3), tiny_checkpoint),
    }
    for needle, (candidate, checkpoint) in cases.items():
        path = tmp_path / "head.safetensors"
        save_head(candidate, path)
        result = cli("classify", image, "--head", path, "--model", checkpoint, *TINY_SIZE)
        assert_clean_error(result, needle, "head.safetensors")


def test_fit_refuses_to_run_under_torchrun(tiny_checkpoint, task, tmp_path):
    head_file = tmp_path / "head.safetensors"
    args = ["fit", str(task / "train"), "-o", str(head_file), "--model", str(tiny_checkpoint)]
    ranks = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "COLUMNS": "200"}
    result = CliRunner().invoke(app, args, env=ranks)
    assert_clean_error(result, "fit runs in one process, not under torchrun", "rank 1 of 2")
    assert not head_file.exists() and not (tmp_path / "head.safetensors.cache").exists()


def test_single_image_table_says_it_abstains(tiny_checkpoint, fitted, task, tmp_path):
    path = tmp_path / "head.safetensors"
    save_head(fitted[0].head, path)
    image = next((task / "test" / "coffee").iterdir())
    args = [
        "classify",
        image,
        "--head",
        path,
        "--model",
        tiny_checkpoint,
        *TINY_SIZE,
        "-f",
        "table",
    ]
    abstained = cli(*args, "--min-score", 1.0)
    assert abstained.exit_code == 0, abstained.stderr
    assert "abstain: best score" in abstained.stdout and "--min-score" in abstained.stdout
    assert all(label in abstained.stdout for label in LABELS)  # the top-k is still shown
    decided = cli(*args)
    assert decided.exit_code == 0 and "abstain" not in decided.stdout


# ---------------------------------------------------------------------------- the head file


def random_head(rng: np.random.Generator, classes: int = 3, size: int = 8) -> Head:
    return Head(
        weight=rng.normal(size=(classes, size)).astype(np.float32),
        bias=rng.normal(size=classes).astype(np.float32),
        mean=rng.normal(size=size).astype(np.float32),
        std=rng.uniform(0.5, 2, size=size).astype(np.float32),
        labels=["défaut, grave", "ok ✓", "screenshot"][:classes],
        pool="mean",
        model="org/model",
        revision="abc123",
        weights="f" * 64,
        image_size=(96, 64),
        interpolate_pos_encoding=True,
        c=0.1,
        validation_accuracy=0.875,
        examples_per_class={"défaut, grave": 5, "ok ✓": 7, "screenshot": 2},
        created="2026-01-01T00:00:00+00:00",
    )


def test_head_round_trips_bit_exactly(fitted, tmp_path):
    rng = np.random.default_rng(0)
    for head in (fitted[0].head, random_head(rng)):
        path = tmp_path / "head.safetensors"
        save_head(head, path)
        loaded = load_head(path)
        for name in ("weight", "bias", "mean", "std"):
            original, reloaded = getattr(head, name), getattr(loaded, name)
            assert reloaded.dtype == original.dtype and reloaded.shape == original.shape
            assert reloaded.tobytes() == original.tobytes()
        assert loaded.metadata() == head.metadata()
        assert loaded.labels == head.labels and loaded.image_size == head.image_size


def test_foreign_and_truncated_head_files(tmp_path, tiny_checkpoint):
    from safetensors.numpy import save_file

    good = tmp_path / "good.safetensors"
    save_head(random_head(np.random.default_rng(1)), good)
    data = good.read_bytes()
    cases = {
        "text.safetensors": (b"hello, not a head", "not a vithybrid head"),
        "short.safetensors": (b"abc", "too short"),
        "cut.safetensors": (data[: len(data) - 7], "truncated"),
        "cut-header.safetensors": (data[:20], "truncated"),
    }
    for name, (content, _) in cases.items():
        (tmp_path / name).write_bytes(content)
    save_file({"x": np.zeros(3, np.float32)}, str(tmp_path / "weights.safetensors"))
    cases["weights.safetensors"] = (None, "not a vithybrid head (no head metadata)")
    cases["missing.safetensors"] = (None, "cannot read head file")
    for name, (_, needle) in cases.items():
        with pytest.raises(HeadError, match="^.*" + name) as raised:
            load_head(tmp_path / name)
        assert needle in str(raised.value) and "\n" not in str(raised.value)
        assert_clean_error(cli("info", "--head", tmp_path / name), name, needle)
    refused = cli("classify", good, "--head", tmp_path / "cut.safetensors",
                  "--model", tiny_checkpoint)  # fmt: skip
    assert_clean_error(refused, "truncated")


# ---------------------------------------------------------------------------- compatibility


def test_mismatched_heads_are_refused(tiny, fitted, make_checkpoint_dir, task):
    from vithybrid_cli.model.weights import load_model

    head = fitted[0].head
    options = RunOptions(image_size=(128, 128), interpolate_pos_encoding=True)
    identity = model_identity(tiny, options)
    head.check_compatible(identity)  # the model it was fitted on

    other = load_model(make_checkpoint_dir("tiny", 1))  # same shapes, other weights
    with pytest.raises(HeadError, match="fitted on another model"):
        head.check_compatible(model_identity(other, options))
    with pytest.raises(HeadError, match="image size 128x128, this run uses 64x64"):
        head.check_compatible(model_identity(tiny, RunOptions()))
    wide = ModelIdentity(**{**identity.__dict__, "embedding_size": 768})
    with pytest.raises(HeadError, match="expects 32-d embeddings but .* makes 768-d"):
        head.check_compatible(wide)
    pooler_head = Head(**{**head.__dict__, "pool": "pooler"})
    with pytest.raises(HeadError, match="no pooler"):
        pooler_head.check_compatible(identity)


def test_classify_refuses_a_head_for_another_size(tiny_checkpoint, fitted, task, tmp_path):
    path = tmp_path / "head.safetensors"
    save_head(fitted[0].head, path)
    image = next((task / "test" / "cat").iterdir())
    result = cli("classify", image, "--head", path, "--model", tiny_checkpoint, "-f", "jsonl")
    assert_clean_error(result, "fitted at image size 128x128", "--image-size 128x128")


def test_head_task_reads_only_what_its_pool_needs(fitted):
    head = fitted[0].head
    assert head_task(head, 3).cls_only is True
    assert head_task(Head(**{**head.__dict__, "pool": "mean"}), 3).cls_only is False


# ---------------------------------------------------------------------------- --min-score


def test_min_score_abstains(tiny_checkpoint, fitted, task, tmp_path):
    path = tmp_path / "head.safetensors"
    save_head(fitted[0].head, path)
    args = ["classify", task / "test", "--head", path, "--model", tiny_checkpoint, *TINY_SIZE]
    records = jsonl(cli(*args, "-f", "jsonl").stdout)
    scores = sorted(r["score"] for r in records)
    threshold = scores[len(scores) // 2]  # about half abstain
    decided = jsonl(cli(*args, "-f", "jsonl", "--min-score", threshold).stdout)
    assert [r["path"] for r in decided] == [r["path"] for r in records]
    for plain, record in zip(records, decided, strict=True):
        assert record["score"] == plain["score"] == record["top_k"][0]["score"]
        expected = None if record["score"] < threshold else record["top_k"][0]["label"]
        assert record["label"] == expected
    assert 0 < sum(r["label"] is None for r in decided) < len(decided)

    table = cli(*args, "-f", "table", "--min-score", threshold)
    assert table.exit_code == 0 and "abstain" in table.stdout

    out = tmp_path / "labels.csv"
    for resume in ([], ["--resume"]):  # resuming checks the columns: the same ones
        run = cli(*args, "-o", out, "-k", "2", "--min-score", threshold, *resume)
        assert run.exit_code == 0, run.stderr
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:5] == ["path", "label", "score", "label_1", "score_1"]
    assert [row["label"] or None for row in rows] == [r["label"] for r in decided]
    assert [float(row["score"]) for row in rows] == [r["score"] for r in decided]

    # Without a head, --min-score applies to the checkpoint's own classifier.
    image = next((task / "test" / "cat").iterdir())
    own = jsonl(cli("classify", image, "--model", tiny_checkpoint, "--min-score", 1.0).stdout)
    assert own[0]["label"] is None and own[0]["score"] == own[0]["top_k"][0]["score"]
    plain = jsonl(cli("classify", image, "--model", tiny_checkpoint, "-f", "jsonl").stdout)
    assert "label" not in plain[0]  # records are unchanged without --head / --min-score


# ---------------------------------------------------------------------------- the regression


def test_logistic_regression_matches_scikit_learn():
    LogisticRegression = pytest.importorskip("sklearn.linear_model").LogisticRegression

    rng = np.random.default_rng(0)
    centers = rng.normal(scale=1.5, size=(4, 12))
    targets = rng.integers(0, 4, size=120)
    features = centers[targets] + rng.normal(size=(120, 12))
    features = (features - features.mean(0)) / features.std(0)
    for c in (0.05, 1.0):
        weight, bias = solver.fit_logistic(features, targets, 4, c, max_iter=2000, tolerance=1e-10)
        oracle = LogisticRegression(C=c, tol=1e-12, max_iter=20000).fit(features, targets)
        np.testing.assert_allclose(weight, oracle.coef_, atol=2e-4 * max(1, np.abs(weight).max()))
        ours = solver.predict_proba(features, weight, bias)
        np.testing.assert_allclose(ours, oracle.predict_proba(features), atol=1e-5)


def test_stratified_split_is_seeded_and_keeps_every_label():
    targets = np.array([0] * 10 + [1] * 2 + [2] * 5)
    train, val = examples.stratified_split(targets, 0.2, seed=3)
    again = examples.stratified_split(targets, 0.2, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert not set(train) & set(val) and len(train) + len(val) == len(targets)
    assert np.bincount(targets[val]).tolist() == [2, 1, 1]  # round(n * 0.2), at least one
    assert np.bincount(targets[train]).tolist() == [8, 1, 4]
    assert not np.array_equal(val, examples.stratified_split(targets, 0.2, seed=4)[1])


# ---------------------------------------------------------------------------- the cache


def test_refits_hit_the_cache(tiny, task, tmp_path):
    cache = tmp_path / "cache"
    options = dict(image_size=(128, 128), interpolate_pos_encoding=True, cache_dir=cache)
    seen = ForwardCounter(tiny)
    try:
        first = fitting.fit_head(tiny, task / "train", **options)
        assert seen.images == 48 and first.embedded == 48 and first.cached == 0
        for changes in ({"c": 0.5}, {"val_fraction": 0.4}, {"seed": 7}):
            refit = fitting.fit_head(tiny, task / "train", **options, **changes)
            assert seen.images == 48, changes  # no forward pass at all
            assert refit.embedded == 0 and refit.cached == 48
        np.testing.assert_array_equal(
            fitting.fit_head(tiny, task / "train", **options).head.weight, first.head.weight
        )
        touched = next((task / "train" / "cat").iterdir())
        os.utime(touched, ns=(1, 1))  # another file identity: re-embedded alone
        assert fitting.fit_head(tiny, task / "train", **options).embedded == 1
        assert seen.images == 49
        fitting.fit_head(tiny, task / "train", **options, pool="mean")  # another pool
        assert seen.images == 49 + 48
    finally:
        seen.handle.remove()


def test_the_cache_embeds_each_image_once_and_never_keeps_a_failure(tiny, task, tmp_path):
    """Whatever runs the cache's embedding: vectors as `embed` gives them, progress as
    (done, total) from the cached count up, a failed image reported alike each time and never
    cached, and a fit interrupted midway keeps what it embedded."""
    from vithybrid_cli import embed
    from vithybrid_cli.pipeline.fit.cache import EmbeddingCache, embed_examples

    data = tmp_path / "data"
    for label in ("cat", "rocket"):
        (data / label).mkdir(parents=True)
        for image in sorted((task / "train" / label).iterdir())[:3]:
            (data / label / image.name).write_bytes(image.read_bytes())
    broken = str(data / "cat" / "broken.png")
    Path(broken).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    paths = sorted(str(path) for path in data.rglob("*.png"))
    good = [path for path in paths if path != broken]
    size = dict(image_size=(128, 128), interpolate_pos_encoding=True)

    def embed_all(calls: list) -> tuple:
        cache = EmbeddingCache(tmp_path / "cache", {"pool": "cls"})  # reads the folder afresh
        return embed_examples(tiny, paths, RunOptions(**size), "cls", cache,
                              lambda done, total: calls.append((done, total)))  # fmt: skip

    calls: list[tuple[int, int]] = []
    vectors, errors, embedded = embed_all(calls)
    assert embedded == 7 and calls == [(done, 7) for done in range(8)]
    assert [path for path, _ in errors] == [broken] and errors[0][1]
    embedded_alone = embed(tiny, good, **size)
    np.testing.assert_allclose(np.stack([vectors[path] for path in good]), embedded_alone,
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    seen, calls = ForwardCounter(tiny), []
    try:
        again, errors_again, embedded_again = embed_all(calls)
    finally:
        seen.handle.remove()
    assert seen.images == 0 and embedded_again == 1  # only the broken image is tried again
    assert errors_again == errors and calls == [(6, 7), (7, 7)]
    for path in good:
        np.testing.assert_array_equal(again[path], vectors[path])

    def stop_at_three(done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    options = dict(cache_dir=tmp_path / "fit-cache", **size)
    with pytest.raises(KeyboardInterrupt):
        fitting.fit_head(tiny, data, progress=stop_at_three, **options)
    report = fitting.fit_head(tiny, data, **options)
    assert (report.embedded, report.cached) == (4, 3)  # the 3 embedded before Ctrl-C were kept
    assert report.errors == errors


# ---------------------------------------------------------------------------- bad input


def test_bad_training_data_gets_one_line(tiny_checkpoint, task, tmp_path):
    def fit(*args):
        return cli("fit", *args, "-o", tmp_path / "h.safetensors", "--model", tiny_checkpoint)

    one = tmp_path / "one"
    (one / "cat").mkdir(parents=True)
    for image in list((task / "train" / "cat").iterdir())[:3]:
        (one / "cat" / image.name).write_bytes(image.read_bytes())
    assert_clean_error(fit(one), "only one label ('cat')")

    few = tmp_path / "few"
    (few / "dog").mkdir(parents=True)
    (few / "dog" / "a.png").write_bytes(next((task / "train" / "cat").iterdir()).read_bytes())
    for image in list((task / "train" / "coffee").iterdir())[:3]:
        (few / "cat").mkdir(exist_ok=True)
        (few / "cat" / image.name).write_bytes(image.read_bytes())
    assert_clean_error(fit(few), "at least 2 readable examples", "'dog' (1)")

    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_error(fit(empty), "has no images in label folders")
    assert_clean_error(fit(tmp_path / "nowhere"), "no such folder")
    assert_clean_error(fit(), "no training data")


def test_unreadable_images_are_listed_and_left_out(tiny_checkpoint, task, tmp_path):
    data = tmp_path / "data"
    for label in ("cat", "rocket"):
        (data / label).mkdir(parents=True)
        for image in sorted((task / "train" / label).iterdir())[:4]:
            (data / label / image.name).write_bytes(image.read_bytes())
    (data / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (data / "empty-label").mkdir()
    result = cli("fit", data, "-o", tmp_path / "h.safetensors", "--model", tiny_checkpoint,
                 "--format", "json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "broken.png" in result.stderr and "empty-label has no images: skipped" in result.stderr
    report = json.loads(result.stdout)
    assert [Path(e["path"]).name for e in report["errors"]] == ["broken.png"]
    assert report["labels"] == ["cat", "rocket"]
    assert sum(r["train"] + r["validation"] for r in report["per_class"]) == 8


def test_labels_file_csv_and_jsonl(tiny, task, tmp_path):
    rows = [
        (f"{split}/{label}/{i:02d}.png", f"{label}, «x»")
        for split in ("train",)
        for label in ("cat", "coffee", "rocket")
        for i in range(4)
    ]
    listing = tmp_path / "labels.csv"
    with open(listing, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows((os.path.relpath(task / path, tmp_path), label) for path, label in rows)
        writer.writerow(["missing.png", "cat, «x»"])
    report = fitting.fit_head(tiny, labels_from=listing, c=1.0)
    assert report.labels == ["cat, «x»", "coffee, «x»", "rocket, «x»"]
    assert [Path(p).name for p, _ in report.errors] == ["missing.png"]
    assert report.errors[0][1] == "no such file or directory"

    as_jsonl = tmp_path / "labels.jsonl"
    lines = [{"path": str(task / "train" / "cat"), "label": "chat"}]  # a folder: all its images
    lines += [{"path": str(task / "train" / "rocket" / "00.png"), "label": "fusée"}] * 2
    as_jsonl.write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in lines))
    report = fitting.fit_head(tiny, labels_from=as_jsonl, val_fraction=0.0)
    assert report.labels == ["chat", "fusée"] and report.accuracy is None
    assert report.train_counts == [12, 2] and report.head.c == solver.DEFAULT_C

    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\na.png,one,two\n")
    with pytest.raises(examples.FitError, match="bad.csv:2: expected 2 columns"):
        fitting.fit_head(tiny, labels_from=bad)


def test_separate_validation_folder(tiny, task, tmp_path):
    report = fitting.fit_head(tiny, task / "train", val=task / "test", image_size=(128, 128),
                              interpolate_pos_encoding=True)  # fmt: skip
    assert report.train_counts == [12] * 4 and report.val_counts == [8] * 4
    assert report.head.examples_per_class == dict.fromkeys(sorted(LABELS), 20)
    assert report.accuracy >= 0.85 and len(report.c_scores) == len(solver.C_GRID)
    strange = tmp_path / "val"
    (strange / "dog").mkdir(parents=True)
    (strange / "dog" / "x.png").write_bytes(next((task / "test" / "cat").iterdir()).read_bytes())
    with pytest.raises(examples.FitError, match="not among the training labels: dog"):
        fitting.fit_head(tiny, task / "train", val=strange, c=1.0)


# ---------------------------------------------------------------------------- the done-when


@pytest.mark.slow
def test_google_configuration_labels_unseen_photos(full_checkpoint, tmp_path):
    """4 labels x 12 augmented training photos, full size, random weights: >= 90% on 8 unseen."""
    task = write_task(tmp_path, {"train": 12, "test": 8}, scale=0.6, size=256, seed=5)
    head_file = tmp_path / "head.safetensors"
    fit = cli("fit", task / "train", "-o", head_file, "--model", full_checkpoint, "-f", "json")
    assert fit.exit_code == 0, fit.stderr
    run = cli("classify", task / "test", "--head", head_file, "--model", full_checkpoint,
              "-f", "jsonl")  # fmt: skip
    assert run.exit_code == 0, run.stderr
    records = jsonl(run.stdout)
    assert len(records) == 32
    assert accuracy_of(records) >= 0.9, (json.loads(fit.stdout)["validation_accuracy"], records)
