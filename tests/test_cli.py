"""The `vithybrid` command line, end to end: Typer's CliRunner in process, plus a few real
subprocesses (the installed script, `python -m vithybrid_cli`, the examples).

Every test uses the tiny checkpoint from conftest (random weights, 10 labels, 64x64 input), so
nothing touches the network; `--dtype float32` wherever numbers are compared.
"""

from __future__ import annotations

import csv
import io
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

REPO = Path(__file__).resolve().parent.parent
SUMMARY_WORDS = {"classify": "labeled", "embed": "embedded", "attention-map": "mapped"}


# ---------------------------------------------------------------------------- helpers


def cli(*args: object, input: str | None = None):
    """Run `vithybrid ARGS` in process; result.stdout and result.stderr are separate."""
    runner = CliRunner()
    return runner.invoke(app, [str(arg) for arg in args], input=input, env={"COLUMNS": "200"})


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def script_path() -> str:
    """The installed `vithybrid` console script of the running interpreter."""
    beside = Path(sys.executable).parent / "vithybrid"
    found = str(beside) if beside.exists() else shutil.which("vithybrid")
    assert found, "the vithybrid script is not installed (pip install -e .)"
    return found


def subprocess_env(**changes: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **changes}
    env["PATH"] = os.pathsep.join([str(Path(script_path()).parent), env.get("PATH", "")])
    env.pop("COLUMNS", None)
    return env


def run(command: list[object], cwd: Path | None = None, **env: str):
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=subprocess_env(**env),
        timeout=180,
    )


def assert_clean_error(result, *needles: str, status: int = 2) -> None:
    """An expected failure: the exit status, the words, and no traceback."""
    assert result.exit_code == status, (result.stdout, result.stderr)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def labels_of(checkpoint: Path) -> dict[int, str]:
    config = json.loads((checkpoint / "config.json").read_text())
    return {int(index): label for index, label in config["id2label"].items()}


def check_record(record: dict, id2label: dict[int, str], top_k: int) -> None:
    assert set(record) == {"path", "top_k"}
    assert len(record["top_k"]) == top_k
    scores = [entry["score"] for entry in record["top_k"]]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= score <= 1.0 for score in scores)
    assert sum(scores) <= 1.0 + 1e-6
    for entry in record["top_k"]:
        assert set(entry) == {"index", "label", "score"}
        assert entry["label"] == id2label[entry["index"]]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model's ops take microseconds: with other test runs sharing the CPU, waking a
    second OpenMP thread per op costs far more than it saves (0.7 s vs 5 ms a forward pass)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny(tiny_checkpoint) -> Path:
    return tiny_checkpoint


@pytest.fixture(scope="session")
def pooler_checkpoint(make_checkpoint_dir) -> Path:
    """transformers' ViTHybridModel (no classifier head) with add_pooling_layer=True."""
    return make_checkpoint_dir("tiny", 0, base=True)


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    """Small real photographs in a tree, created out of name order, plus a non-image file.

    Walk order: cat.jpg, coffee.jpg, sub/astronaut.png, sub/deeper/rocket.jpg.
    """
    root = tmp_path_factory.mktemp("photos")
    (root / "sub" / "deeper").mkdir(parents=True)
    cat, astronaut, coffee, rocket = (
        image.convert("RGB").resize((120, 80), Image.BICUBIC)
        for image in checkpoints.photographs(4)
    )
    rocket.save(root / "sub" / "deeper" / "rocket.jpg", quality=90)
    astronaut.save(root / "sub" / "astronaut.png")
    coffee.save(root / "coffee.jpg", quality=90)
    cat.save(root / "cat.jpg", quality=90)
    (root / "notes.txt").write_text("not an image: a directory walk skips it\n")
    return root


@pytest.fixture(scope="session")
def photos(photo_dir) -> list[str]:
    """The images of `photo_dir`, in the order a directory walk yields them."""
    names = ["cat.jpg", "coffee.jpg", "sub/astronaut.png", "sub/deeper/rocket.jpg"]
    return [str(photo_dir / name) for name in names]


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory, photo_dir) -> dict[str, str]:
    """One of each kind of input that yields no image."""
    root = tmp_path_factory.mktemp("bad")
    (root / "empty-dir").mkdir()
    (root / "notes.txt").write_text("hello\n")
    data = (photo_dir / "cat.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "zero.png").write_bytes(b"")
    return {
        "missing": str(root / "missing.jpg"),
        "empty directory": str(root / "empty-dir"),
        "non-image": str(root / "notes.txt"),
        "truncated": str(root / "truncated.jpg"),
        "zero bytes": str(root / "zero.png"),
    }


# ---------------------------------------------------------------------------- classify


def test_classify_single_image_defaults_to_jsonl(tiny, photos):
    result = cli("classify", photos[0], "--model", tiny)
    assert result.exit_code == 0, result.stderr
    records = jsonl(result.stdout)  # stdout is not a terminal: JSONL
    assert len(records) == 1
    assert records[0]["path"] == photos[0]
    check_record(records[0], labels_of(tiny), top_k=5)
    assert "1 labeled, 0 failed" in result.stderr


def test_classify_directory_is_recursive_sorted_and_in_input_order(tiny, photo_dir, photos):
    result = cli("classify", photos[3], photo_dir, photos[0], "--model", tiny, "-k", 1)
    assert result.exit_code == 0, result.stderr
    paths = [record["path"] for record in jsonl(result.stdout)]
    assert paths == [photos[3], *photos, photos[0]]  # notes.txt is skipped by the walk
    assert "6 labeled, 0 failed" in result.stderr


def test_classify_glob(tiny, photo_dir, photos):
    result = cli("classify", f"{photo_dir}/**/*.jpg", "--model", tiny, "-k", 1)
    assert result.exit_code == 0, result.stderr
    paths = [record["path"] for record in jsonl(result.stdout)]
    assert paths == [p for p in photos if p.endswith(".jpg")]


def test_classify_files_from_file_and_stdin(tiny, photos, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\n{photos[2]}\n\n{photos[0]}\n")
    result = cli("classify", "--files-from", listing, "--model", tiny, "-k", 1)
    assert result.exit_code == 0, result.stderr
    assert [r["path"] for r in jsonl(result.stdout)] == [photos[2], photos[0]]

    result = cli("classify", "--files-from", "-", "--model", tiny, "-k", 1, input=f"{photos[1]}\n")
    assert result.exit_code == 0, result.stderr
    assert [r["path"] for r in jsonl(result.stdout)] == [photos[1]]


def test_classify_formats_parse_back(tiny, photos, bad_inputs):
    inputs = [photos[0], bad_inputs["missing"], photos[2]]
    common = ["--model", tiny, "-k", 3, "--dtype", "float32"]
    by_format = {fmt: cli("classify", *inputs, "--format", fmt, *common) for fmt in
                 ("jsonl", "json", "csv", "table")}  # fmt: skip
    for fmt, result in by_format.items():
        assert result.exit_code == 1, (fmt, result.stderr)  # one input failed
        assert "2 labeled, 1 failed" in result.stderr

    records = jsonl(by_format["jsonl"].stdout)
    assert [r["path"] for r in records] == inputs
    assert records[1] == {"path": bad_inputs["missing"], "error": "no such file or directory"}
    for record in (records[0], records[2]):
        check_record(record, labels_of(tiny), top_k=3)

    assert json.loads(by_format["json"].stdout) == records

    rows = list(csv.reader(io.StringIO(by_format["csv"].stdout)))
    assert rows[0] == [
        "path",
        *(f"{name}_{rank}" for rank in (1, 2, 3) for name in ("label", "score", "index")),
        "error",
    ]
    assert [row[0] for row in rows[1:]] == inputs
    for row, record in zip(rows[1:], records, strict=True):
        if "error" in record:
            assert row[1:-1] == [""] * 9 and row[-1] == record["error"]
        else:
            best = record["top_k"][0]
            assert row[1:4] == [best["label"], repr(best["score"]), str(best["index"])]
            assert row[-1] == ""

    table = by_format["table"].stdout
    assert records[0]["top_k"][0]["label"] in table
    assert "no such file or directory" in table


def test_classify_table_for_one_image_lists_top_k(tiny, photos):
    result = cli("classify", photos[0], "--model", tiny, "-k", 3, "--format", "table")
    assert result.exit_code == 0, result.stderr
    reference = jsonl(cli("classify", photos[0], "--model", tiny, "-k", 3).stdout)[0]
    for entry in reference["top_k"]:
        assert entry["label"] in result.stdout
        assert f"{entry['score']:.3f}" in result.stdout


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_classify_format_from_output_extension(tiny, photos, tmp_path, suffix):
    target = tmp_path / "new-folder" / f"labels{suffix}"  # missing folders are created
    result = cli("classify", *photos[:2], "--model", tiny, "-k", 2, "--output", target)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    text = target.read_text()
    if suffix == ".jsonl":
        paths = [r["path"] for r in jsonl(text)]
    elif suffix == ".json":
        paths = [r["path"] for r in json.loads(text)]
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
        assert set(rows[0]) >= {"path", "label_1", "score_1", "index_1", "label_2", "error"}
        paths = [row["path"] for row in rows]
    assert paths == photos[:2]


def test_classify_table_to_a_file_is_an_error(tiny, photos, tmp_path):
    result = cli("classify", photos[0], "--model", tiny, "-f", "table", "-o", tmp_path / "x.csv")
    assert_clean_error(result, "--format table")


def test_top_k(tiny, photos):
    for k in (1, 4):
        records = jsonl(cli("classify", photos[0], "--model", tiny, "--top-k", k).stdout)
        check_record(records[0], labels_of(tiny), top_k=k)
    everything = jsonl(cli("classify", photos[0], "--model", tiny, "-k", 50).stdout)[0]
    assert len(everything["top_k"]) == 10  # capped at the number of classes
    assert sorted(e["index"] for e in everything["top_k"]) == list(range(10))
    assert sum(e["score"] for e in everything["top_k"]) == pytest.approx(1.0, abs=1e-4)


def test_labels_come_from_the_checkpoints_id2label(tiny, photos, edited_checkpoint):
    names = [f"custom-{i}" for i in range(10)]
    renamed = edited_checkpoint(
        tiny,
        id2label={str(i): name for i, name in enumerate(names)},
        label2id={name: i for i, name in enumerate(names)},
    )
    original = jsonl(cli("classify", photos[0], "--model", tiny, "--dtype", "float32").stdout)
    custom = jsonl(cli("classify", photos[0], "--model", renamed, "--dtype", "float32").stdout)
    check_record(custom[0], labels_of(renamed), top_k=5)
    assert [e["label"] for e in custom[0]["top_k"]] == [
        names[e["index"]] for e in original[0]["top_k"]
    ]


def test_classify_matches_the_python_api(tiny, photos):
    import vithybrid_cli

    model = vithybrid_cli.load_model(tiny)
    result = cli("classify", *photos, "--model", tiny, "--dtype", "float32", "-k", 3)
    assert result.exit_code == 0, result.stderr
    for record, path in zip(jsonl(result.stdout), photos, strict=True):
        [api] = vithybrid_cli.classify(model, [path], top_k=3)
        assert record["top_k"][0]["label"] == api[0][1]
        assert [e["index"] for e in record["top_k"]] == [index for index, _, _ in api]
        assert [e["score"] for e in record["top_k"]] == pytest.approx(
            [score for _, _, score in api], abs=1e-5
        )


@pytest.fixture(scope="module")
def camera_photos(tmp_path_factory) -> list[str]:
    """Five 1600x1200 JPEGs made from scikit-image's photographs: camera-sized, so the CLI's
    reduced-size (draft) JPEG decoding applies."""
    root = tmp_path_factory.mktemp("camera")
    paths = []
    for i, image in enumerate(checkpoints.photographs(5)):
        path = root / f"photo{i}.jpg"
        image.convert("RGB").resize((1600, 1200), Image.BICUBIC).save(path, quality=92)
        paths.append(str(path))
    return paths


def test_the_api_gives_the_clis_results_in_bounded_batches(tiny, camera_photos, monkeypatch):
    import vithybrid_cli
    from vithybrid_cli.model.model import ViTHybrid

    model = vithybrid_cli.load_model(tiny)
    batches = []
    forward = ViTHybrid.forward

    def spy(self, pixels, **kwargs):
        batches.append(pixels.shape[0])
        return forward(self, pixels, **kwargs)

    monkeypatch.setattr(ViTHybrid, "forward", spy)
    labels = vithybrid_cli.classify(model, camera_photos, top_k=3, batch_size=2)
    assert batches == [2, 2, 1]  # never one forward over all the images
    vectors = vithybrid_cli.embed(model, camera_photos, pool="mean", batch_size=2)
    monkeypatch.setattr(ViTHybrid, "forward", forward)

    options = ["--model", tiny, "--dtype", "float32", "--batch-size", "2"]
    records = jsonl(cli("classify", *camera_photos, *options, "-k", 3).stdout)
    for record, api in zip(records, labels, strict=True):
        assert [(e["index"], e["label"]) for e in record["top_k"]] == [(i, s) for i, s, _ in api]
        assert [e["score"] for e in record["top_k"]] == [score for _, _, score in api]
    out = Path(camera_photos[0]).parent / "vectors.npy"
    assert cli("embed", *camera_photos, "-o", out, *options, "--pool", "mean").exit_code == 0
    np.testing.assert_array_equal(np.load(out), vectors)  # same decoding, same batches


def test_load_model_takes_the_clis_dtype_names(tiny):
    import torch

    import vithybrid_cli

    cases = (("bf16", torch.bfloat16), ("float32", torch.float32), (None, torch.float32))
    for name, dtype in cases:
        model = vithybrid_cli.load_model(tiny, dtype=name)
        assert next(model.parameters()).dtype == dtype
    with pytest.raises(ValueError, match="unknown dtype"):
        vithybrid_cli.load_model(tiny, dtype="float64")


def test_the_api_names_an_image_it_cannot_read(tiny, photos, bad_inputs):
    import vithybrid_cli
    from vithybrid_cli.data.preprocess import ImageError

    model = vithybrid_cli.load_model(tiny)
    with pytest.raises(ImageError, match="empty file") as failed:
        vithybrid_cli.embed(model, [photos[0], bad_inputs["zero bytes"]])
    assert failed.value.path == bad_inputs["zero bytes"]
    with Image.open(photos[1]) as image:  # PIL images go through the same pipeline
        [from_pil] = vithybrid_cli.classify(model, [image.convert("RGB")], top_k=2)
    assert len(from_pil) == 2


def test_a_full_disk_is_one_line_naming_the_file(tiny, photos, tmp_path, monkeypatch):
    from vithybrid_cli.pipeline.journal import Journal

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Journal, "append", full)
    out = tmp_path / "out.jsonl"
    result = cli("classify", photos[0], "-o", out, "--model", tiny)
    assert_clean_error(result, f"error: {out}: no space left on device")


# ---------------------------------------------------------------------------- failures


def test_bad_inputs_never_abort_the_batch(tiny, photos, bad_inputs):
    inputs = [photos[0], *bad_inputs.values(), photos[1]]
    result = cli("classify", *inputs, "--model", tiny, "-k", 1)
    assert result.exit_code == 1
    records = jsonl(result.stdout)
    assert [r["path"] for r in records] == inputs  # in input order, failures included
    assert "top_k" in records[0] and "top_k" in records[-1]
    errors = records[1:-1]
    assert all(set(r) == {"path", "error"} and r["error"] for r in errors)
    lines = result.stderr.splitlines()
    for kind, path in bad_inputs.items():
        [line] = [line for line in lines if path in line]
        assert line.startswith("error: "), (kind, line)
    assert "2 labeled, 5 failed" in result.stderr
    assert "Traceback" not in result.stderr
    messages = {r["path"]: r["error"] for r in errors}
    assert "no such file" in messages[bad_inputs["missing"]]
    assert "no images" in messages[bad_inputs["empty directory"]]
    assert "not a recognized image" in messages[bad_inputs["non-image"]]
    assert "truncated" in messages[bad_inputs["truncated"]]
    assert "empty file" in messages[bad_inputs["zero bytes"]]


def test_strict_stops_at_the_first_failure(tiny, photos, bad_inputs):
    inputs = [photos[0], bad_inputs["zero bytes"], photos[1], photos[2]]
    result = cli("classify", *inputs, "--model", tiny, "-k", 1, "--strict")
    assert result.exit_code == 1
    assert [r["path"] for r in jsonl(result.stdout)] == inputs[:2]
    assert "--strict" in result.stderr
    assert "1 labeled, 1 failed" in result.stderr


def test_quiet_drops_the_summary(tiny, photos, bad_inputs):
    result = cli("classify", photos[0], bad_inputs["missing"], "--model", tiny, "--quiet")
    assert result.exit_code == 1
    assert "labeled" not in result.stderr
    assert bad_inputs["missing"] in result.stderr  # failures are still reported


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--image-size", "abc"], ["--image-size", "WIDTHxHEIGHT"]),
        (["--image-size", "0x64"], ["--image-size"]),
        (["--top-k", "0"], ["--top-k"]),
        (["--batch-size", "0"], ["--batch-size"]),
        (["--dtype", "float64"], ["--dtype"]),
        (["--format", "xml"], ["--format"]),
        (["--image-size", "96x64"], ["96x64", "--interpolate-pos-encoding"]),
    ],
)
def test_bad_option_values_are_one_clean_error(tiny, photos, args, needles):
    result = cli("classify", photos[0], "--model", tiny, *args)
    assert_clean_error(result, *needles)
    assert result.stdout == ""


def test_missing_model_path_and_no_inputs_are_clean_errors(tiny, photos, tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    assert_clean_error(cli("classify", photos[0], "--model", missing), str(missing))
    assert_clean_error(cli("classify", "--model", tiny), "no inputs")
    not_a_checkpoint = tmp_path / "folder"
    not_a_checkpoint.mkdir()
    assert_clean_error(cli("info", "--model", not_a_checkpoint), "error:")


def test_debug_raises_instead_of_one_line(tiny, photos):
    result = cli("classify", photos[0], "--model", tiny, "--image-size", "96", "--debug")
    assert result.exit_code == 1
    assert not isinstance(result.exception, SystemExit)  # the exception itself propagates
    assert "--interpolate-pos-encoding" in str(result.exception)


def test_interrupt_exits_130(tiny, photos, monkeypatch):
    import vithybrid_cli.cli.common

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vithybrid_cli.cli.common.Common, "load", interrupted)
    result = cli("classify", photos[0], "--model", tiny)
    assert result.exit_code == 130
    assert "interrupted" in result.stderr


COMMON_ARGS = ("--model", "m", "--revision", "r", "--device", "cpu", "--dtype", "float32",
               "--batch-size", "3", "--workers", "2", "--image-size", "96",
               "--interpolate-pos-encoding")  # fmt: skip


@pytest.mark.parametrize(
    ("command", "args", "flags"),
    [
        ("classify", ["--compile", "--quiet", "--strict"], (True, True, True)),
        ("embed", ["-o", "v.npy", "--quiet", "--strict"], (False, True, True)),
        ("attention-map", ["-o", "a.png", "--strict"], (False, False, True)),
        ("fit", ["-o", "h.json", "--quiet"], (False, True, False)),
        ("duplicates", ["--quiet"], (False, True, False)),
    ],
)
def test_every_command_names_its_common_options(photos, tmp_path, monkeypatch, command, args,
                                                flags):  # fmt: skip
    """Common is built by keyword: each option lands in its own field, for every command."""
    import vithybrid_cli.cli.common
    from vithybrid_cli.cli.common import Common, UserError
    from vithybrid_cli.cli.options import Device, DType

    built = []

    def load(self):
        built.append(self)
        raise UserError("stopped before the model")

    monkeypatch.setattr(vithybrid_cli.cli.common.Common, "load", load)
    monkeypatch.chdir(tmp_path)
    data = [str(Path(photos[0]).parent)] if command == "fit" else [photos[0]]
    result = cli(command, *data, *COMMON_ARGS, *args)
    assert result.output.strip() == "error: stopped before the model"
    [common] = built
    assert (common.model, common.revision, common.device, common.dtype) == (
        "m", "r", Device.cpu, DType.float32)  # fmt: skip
    assert (common.batch_size, common.workers, common.image_size) == (3, 2, "96")
    assert common.interpolate is True
    assert (common.compile, common.quiet, common.strict) == flags
    with pytest.raises(TypeError):
        Common("m", None)  # no positional options


# ---------------------------------------------------------------------------- the progress bar


def terminal_stderr(monkeypatch, terminal: bool = True) -> io.StringIO:
    """render's stderr as a terminal (or not) writing into the returned buffer."""
    from rich.console import Console

    import vithybrid_cli.cli.render as render

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=terminal, width=100, highlight=False)
    monkeypatch.setattr(render, "stderr", console)
    return buffer


@pytest.mark.parametrize(
    ("terminal", "show", "drawn"), [(True, True, True), (True, False, False), (False, True, False)]
)
def test_the_progress_bar_draws_on_a_terminal_unless_quiet(monkeypatch, terminal, show, drawn):
    from vithybrid_cli.cli.render import ProgressBar

    buffer = terminal_stderr(monkeypatch, terminal)
    with ProgressBar("thumbnails", show) as progress:
        progress(3, 7)  # the library's callback: (done, total)
        progress.progress.refresh()
    assert progress.shown is drawn
    assert ("thumbnails" in buffer.getvalue() and "3/7" in buffer.getvalue()) is drawn
    if not drawn:
        assert buffer.getvalue() == ""


def test_the_run_reporter_moves_the_one_bar_and_names_each_failure(monkeypatch):
    from types import SimpleNamespace

    from vithybrid_cli.cli.render import Reporter

    buffer = terminal_stderr(monkeypatch)
    good = SimpleNamespace(ok=True, path="a.jpg", error=None)
    bad = SimpleNamespace(ok=False, path="b[1].jpg", error="cannot identify image file")
    with Reporter("labeled", True, countable=True) as reporter:
        assert reporter.wants_total
        reporter.start(2)
        reporter.advance(good)
        reporter.advance(bad)
        reporter.bar.progress.refresh()
    shown = buffer.getvalue()
    assert "labeled" in shown and "2/2" in shown and "img/s" in shown
    assert "b[1].jpg: cannot identify image file" in shown  # escaped: no markup eaten
    assert not Reporter("labeled", True, countable=False).wants_total
    assert not Reporter("labeled", False, countable=True).wants_total
    buffer = terminal_stderr(monkeypatch, terminal=False)
    with Reporter("labeled", True, countable=True) as reporter:
        assert not reporter.wants_total
        reporter.advance(bad)  # no bar off a terminal, the failure's line all the same
    assert "error: b[1].jpg: cannot identify image file" in buffer.getvalue()


# ---------------------------------------------------------------------------- interpolation


@pytest.mark.parametrize(("size", "tokens"), [("96x64", 4 * 6 + 1), ("96", 6 * 6 + 1)])
def test_interpolate_pos_encoding_runs_at_other_sizes(tiny, photos, tmp_path, size, tokens):
    out = tmp_path / "tokens.npy"
    result = cli(
        "embed", photos[0], "-o", out, "--tokens", "--model", tiny,
        "--interpolate-pos-encoding", "--image-size", size,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert np.load(out).shape == (1, tokens, 32)
    result = cli(
        "classify", photos[0], "--model", tiny, "--interpolate-pos-encoding", "--image-size", size
    )
    assert result.exit_code == 0, result.stderr
    check_record(jsonl(result.stdout)[0], labels_of(tiny), top_k=5)


def test_native_image_size_needs_no_flag(tiny, photos):
    result = cli("classify", photos[0], "--model", tiny, "--image-size", "64x64")
    assert result.exit_code == 0, result.stderr


# ---------------------------------------------------------------------------- embed


def test_embed_rows_match_paths_in_input_order(tiny, photo_dir, photos, bad_inputs, tmp_path):
    out = tmp_path / "vectors.npy"
    inputs = [photos[3], bad_inputs["missing"], photo_dir]
    result = cli("embed", *inputs, "-o", out, "--model", tiny, "--dtype", "float32")
    assert result.exit_code == 1
    assert "5 embedded, 1 failed" in result.stderr
    assert f"wrote 5 rows to {out} and {tmp_path / 'vectors.paths.txt'}\n" in result.stderr
    vectors = np.load(out)
    paths = (tmp_path / "vectors.paths.txt").read_text().splitlines()
    assert paths == [photos[3], *photos]  # the failure is in neither file
    assert vectors.shape == (5, 32) and vectors.dtype == np.float32
    for row, path in zip(vectors, paths, strict=True):
        alone = tmp_path / "alone.npy"
        single = cli("embed", path, "-o", alone, "--model", tiny, "--dtype", "float32", "-q")
        assert single.exit_code == 0, single.stderr
        np.testing.assert_allclose(row, np.load(alone)[0], atol=1e-5)
    assert not np.allclose(vectors[1], vectors[2])


def test_embed_matches_the_python_api(tiny, photos, tmp_path):
    import vithybrid_cli

    out = tmp_path / "vectors.npy"
    result = cli(
        "embed", *photos, "-o", out, "--model", tiny, "--dtype", "float32", "--pool", "mean"
    )
    assert result.exit_code == 0, result.stderr
    api = vithybrid_cli.embed(vithybrid_cli.load_model(tiny), photos, pool="mean")
    np.testing.assert_allclose(np.load(out), api, atol=1e-5)


def test_embed_pools_normalize_and_npz(tiny, photos, tmp_path):
    def embed(*args: object) -> np.ndarray:
        out = tmp_path / "e.npz"
        result = cli("embed", *photos, "-o", out, "--model", tiny, "--dtype", "float32", *args)
        assert result.exit_code == 0, result.stderr
        with np.load(out) as saved:
            assert set(saved.files) == {"embeddings", "paths"}
            assert saved["paths"].tolist() == photos
            return saved["embeddings"]

    cls, mean = embed("--pool", "cls"), embed("--pool", "mean")
    assert cls.shape == mean.shape == (4, 32)
    assert not np.allclose(cls, mean)
    unit = embed("--pool", "mean", "--normalize")
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(unit, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5)
    tokens = embed("--tokens")
    assert tokens.shape == (4, 4 * 4 + 1, 32)  # [N, T, hidden]: CLS + the 4x4 grid
    np.testing.assert_allclose(tokens[:, 1:].mean(axis=1), mean, atol=1e-5)


def test_embed_pooler_needs_a_pooler(tiny, photos, tmp_path):
    result = cli("embed", photos[0], "-o", tmp_path / "p.npy", "--model", tiny, "--pool", "pooler")
    assert_clean_error(result, "no pooler", "--pool cls")
    assert not (tmp_path / "p.npy").exists()


def test_embed_pooler_matches_transformers(pooler_checkpoint, photos, tmp_path):
    import torch
    from transformers.models.deprecated.vit_hybrid import ViTHybridModel

    import vithybrid_cli
    from vithybrid_cli.data.preprocess import load_and_preprocess

    out = tmp_path / "p.npy"
    result = cli(
        "embed", *photos, "-o", out, "--model", pooler_checkpoint,
        "--pool", "pooler", "--dtype", "float32",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    ours = np.load(out)
    assert ours.shape == (4, 32)

    reference = ViTHybridModel.from_pretrained(pooler_checkpoint, attn_implementation="eager")
    config = vithybrid_cli.load_model(pooler_checkpoint).preprocess_config
    pixels = torch.from_numpy(np.stack([load_and_preprocess(path, config) for path in photos]))
    with torch.no_grad():
        expected = reference.eval()(pixels).pooler_output.numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_classify_on_a_checkpoint_without_head_is_a_clean_error(pooler_checkpoint, photos):
    result = cli("classify", photos[0], "--model", pooler_checkpoint)
    assert_clean_error(result, "no classifier head", "embed")


def test_embed_needs_npy_or_npz(tiny, photos, tmp_path):
    result = cli("embed", photos[0], "-o", tmp_path / "vectors.txt", "--model", tiny)
    assert_clean_error(result, ".npy or .npz")


# ---------------------------------------------------------------------------- attention-map


def test_attention_map_decodes_each_image_once(tiny, photos, tmp_path, monkeypatch):
    import vithybrid_cli.pipeline.runner as runner

    opened = []
    load_image = runner.load_image

    def counted(item, **kwargs):
        opened.append(item.path)
        return load_image(item, **kwargs)

    monkeypatch.setattr(runner, "load_image", counted)
    result = cli("attention-map", *photos, "-d", tmp_path / "maps", "--model", tiny)
    assert result.exit_code == 0, result.stderr
    assert sorted(opened) == sorted(photos)  # the overlay reuses the model's decode
    assert len(list((tmp_path / "maps").iterdir())) == 4


def test_attention_map_png_has_the_upright_image_size(tiny, photo_dir, tmp_path):
    source = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    Image.open(photo_dir / "cat.jpg").save(source, exif=exif, quality=90)  # stored 120x80
    out = tmp_path / "maps" / "rotated.png"
    result = cli("attention-map", source, "--output", out, "--model", tiny)
    assert result.exit_code == 0, result.stderr
    assert "1 mapped, 0 failed" in result.stderr
    with Image.open(out) as picture:
        assert picture.format == "PNG"
        assert picture.size == (80, 120)


def test_attention_map_output_dir_raw_and_methods(tiny, photo_dir, photos, tmp_path):
    def grids(*args: object) -> np.ndarray:
        raw = tmp_path / "raw.npz"
        result = cli(
            "attention-map", photo_dir, "--output-dir", tmp_path / "maps", "--raw", raw,
            "--model", tiny, "--dtype", "float32", *args,
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
        assert "4 mapped, 0 failed" in result.stderr
        with np.load(raw) as saved:
            assert saved["paths"].tolist() == photos
            return saved["embeddings"]

    rollout = grids()
    assert rollout.shape == (4, 4, 4)  # one 4x4 token grid per image
    pngs = sorted(path.name for path in (tmp_path / "maps").iterdir())
    assert pngs == ["astronaut.png", "cat.png", "coffee.png", "rocket.png"]
    for name, path in zip(["cat", "coffee", "astronaut", "rocket"], photos, strict=True):
        with Image.open(tmp_path / "maps" / f"{name}.png") as png, Image.open(path) as original:
            assert png.size == original.size
    last = grids("--method", "last-layer")
    fused_max = grids("--head-fusion", "max")
    assert last.shape == fused_max.shape == (4, 4, 4)
    assert not np.allclose(rollout, last)
    assert not np.allclose(rollout, fused_max)
    assert np.isfinite(rollout).all() and (rollout >= 0).all()


def test_attention_map_grid_follows_interpolated_size(tiny, photos, tmp_path):
    raw = tmp_path / "grid.npy"
    result = cli(
        "attention-map", photos[0], "-o", tmp_path / "cat.png", "--raw", raw, "--model", tiny,
        "--interpolate-pos-encoding", "--image-size", "96x64",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert np.load(raw).shape == (1, 4, 6)  # (rows, columns) of a 96x64 input at stride 16


def test_attention_map_needs_exactly_one_destination(tiny, photos, tmp_path):
    neither = cli("attention-map", photos[0], "--model", tiny)
    assert_clean_error(neither, "--output", "--output-dir")
    both = cli(
        "attention-map", photos[0], "-o", tmp_path / "a.png", "-d", tmp_path, "--model", tiny
    )
    assert_clean_error(both, "--output", "--output-dir")
    many = cli("attention-map", *photos[:2], "-o", tmp_path / "a.png", "--model", tiny)
    assert_clean_error(many, "--output-dir")


# ---------------------------------------------------------------------------- info, version


def test_info(tiny):
    from vithybrid_cli.model.weights import load_model

    result = cli("info", "--model", tiny, "--dtype", "float32")
    assert result.exit_code == 0, result.stderr
    model = load_model(tiny)
    parameters = sum(p.numel() for p in model.parameters())
    assert str(tiny) in result.stdout
    assert f"{parameters:,}" in result.stdout
    assert "float32" in result.stdout
    assert "labels" in result.stdout and "10" in result.stdout
    bf16 = cli("info", "--model", tiny, "--dtype", "bfloat16")
    assert "bfloat16" in bf16.stdout


def test_version_and_help():
    from vithybrid_cli import __version__

    version = cli("--version")
    assert version.exit_code == 0
    assert version.stdout.strip() == f"vithybrid {__version__}"
    listing = cli("--help")
    assert listing.exit_code == 0
    for command in ("classify", "embed", "attention-map", "info"):
        assert command in listing.stdout
    options = cli("classify", "--help").stdout
    for option in ("--model", "--top-k", "--format", "--interpolate-pos-encoding", "--strict"):
        assert option in options


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "import vithybrid_cli.cli as cli\n"
        "assert 'torch' not in sys.modules\n"
        "sys.argv = ['vithybrid', 'classify', '--help']\n"
        "try:\n"
        "    cli.main()\n"
        "except SystemExit as exit:\n"
        "    assert exit.code in (0, None), exit.code\n"
        "print('torch' in sys.modules)\n"
    )
    result = run([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"
    assert "--top-k" in result.stdout


# ---------------------------------------------------------------------------- real processes


@pytest.mark.slow
def test_installed_script_streams_jsonl_to_a_pipe(tiny, photo_dir, photos):
    result = run([script_path(), "classify", photo_dir, "--model", tiny, "-k", 2])
    assert result.returncode == 0, result.stderr
    records = jsonl(result.stdout)
    assert [r["path"] for r in records] == photos
    for record in records:
        check_record(record, labels_of(tiny), top_k=2)
    assert "4 labeled, 0 failed" in result.stderr


@pytest.mark.slow
def test_installed_script_fast_exit_keeps_files_streams_and_status(tiny, photos, tmp_path):
    """The script ends with os._exit once torch is loaded (see cli.exit_now): the exit status,
    the stderr summary and every output file must still be complete."""
    missing = str(tmp_path / "missing.jpg")
    out = tmp_path / "all.json"
    result = run([script_path(), "classify", *photos, missing, "--model", tiny, "-o", out])
    assert result.returncode == 1, result.stderr
    assert "4 labeled, 1 failed" in result.stderr and "missing.jpg" in result.stderr
    records = json.loads(out.read_text())
    assert [r["path"] for r in records] == [*photos, missing]
    vectors = tmp_path / "v.npy"
    result = run([script_path(), "embed", *photos, "--model", tiny, "-o", vectors])
    assert result.returncode == 0, result.stderr
    assert np.load(vectors).shape[0] == 4
    assert (tmp_path / "v.paths.txt").read_text().splitlines() == photos


def test_python_dash_m():
    from vithybrid_cli import __version__

    result = run([sys.executable, "-m", "vithybrid_cli", "--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"vithybrid {__version__}"


@pytest.mark.slow
def test_offline_default_model_is_a_one_line_error(photos, tmp_path):
    home = tmp_path / "empty-hf-home"
    (home / "hub").mkdir(parents=True)
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub")}
    result = run([script_path(), "classify", photos[0]], **env)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "google/vit-hybrid-base-bit-384" in lines[0]
    assert "--model" in lines[0]
    assert "Traceback" not in result.stderr

    debug = run([script_path(), "classify", photos[0], "--debug"], **env)
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr


# ---------------------------------------------------------------------------- examples


@pytest.fixture
def example_folder(tmp_path, photos) -> Path:
    folder = tmp_path / "folder"
    (folder / "nested").mkdir(parents=True)
    for index, path in enumerate(photos):
        shutil.copy(path, folder / ("nested" if index % 2 else "") / Path(path).name)
    return folder


@pytest.mark.slow
def test_example_label_folder(tiny, example_folder, tmp_path):
    result = run(["bash", REPO / "examples" / "label_folder.sh", example_folder, "--model", tiny],
                 cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader((tmp_path / "labels.csv").open()))
    assert len(rows) == 4
    assert all(row["label_1"] in checkpoints.TINY_LABELS for row in rows)


@pytest.mark.slow
def test_example_attention_folder(tiny, example_folder, tmp_path):
    result = run(
        ["bash", REPO / "examples" / "attention_folder.sh", example_folder, "--model", tiny],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "attention").glob("*.png"))) == 4


def test_example_photo_is_the_chelsea_jpeg():
    with Image.open(REPO / "examples" / "cat.jpg") as photo:
        assert photo.format == "JPEG"
        assert photo.size == (451, 300)
    assert 20_000 < (REPO / "examples" / "cat.jpg").stat().st_size < 60_000
