"""classify|embed --engine ray: the same rows as the local engine, on a local Ray (2 CPUs) and on
a two-node cluster on loopback, with a worker killed mid-run; resume; the settings check.
duplicates --engine ray: the local run's groups, on both.

Every Ray instance here is this module's own: `ray.init` in this process (stopped by
`ray.shutdown()`), or `ray start` processes with their own temp folder, stopped by their pids.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from batchkit import (
    TIMEOUT,
    block_with_fifo,
    child_env,
    default_sigint,
    make_images,
    png_bytes,
    restore_image,
    unblock_fifo,
    write_list,
)
from batchkit import wait_for as wait_while_running
from typer.testing import CliRunner

from vithybrid_cli.cli import app

OBJECT_STORE = 100_000_000  # bytes: Ray's smallest is 75 MB; the tiny model needs little
N_IMAGES = 12


def cli(*args: object):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def read_parts(folder: Path) -> dict[str, dict]:
    """path -> row of every part in `folder` (asserting each path appears once)."""
    import pyarrow.dataset as ds

    rows = ds.dataset(folder, format="parquet").to_table().to_pylist()
    paths = [row["path"] for row in rows]
    assert len(paths) == len(set(paths)), "a path written twice"
    return {row["path"]: row for row in rows}


def read_local(path: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    return {row["path"]: row for row in pq.read_table(path).to_pylist()}


def assert_records_match(ray_rows: dict[str, dict], local_rows: dict[str, dict]) -> None:
    assert ray_rows.keys() == local_rows.keys()
    for path, local in local_rows.items():
        row = ray_rows[path]
        assert row["error"] == local["error"], path
        assert row["label"] == local["label"], path
        assert row["top_k_labels"] == local["top_k_labels"], path
        assert row["top_k_indices"] == local["top_k_indices"], path
        if local["error"] is None:
            np.testing.assert_allclose(row["top_k_scores"], local["top_k_scores"], atol=1e-4)


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint) -> str:
    return str(tiny_checkpoint)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """N_IMAGES PNGs of two sizes, a text file named .jpg and an empty .png."""
    folder = tmp_path_factory.mktemp("ray") / "images"
    make_images(folder, N_IMAGES // 2)
    make_images(folder / "large", N_IMAGES // 2, size=(150, 90))
    (folder / "junk.jpg").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def local_ray():
    """A Ray of this process's own, 2 CPUs, small object store; the CLI runs on it in-process."""
    ray = pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="vhray", dir="/tmp")  # Ray's socket paths must stay short
    # workers inherit the environment Ray starts with: --backend openvino's cache in the test's
    saved = {name: os.environ.get(name) for name in ("VITHYBRID_CACHE", "RAY_AUTH_MODE")}
    os.environ["VITHYBRID_CACHE"] = os.path.join(temp, "vithybrid-cache")
    # no token written to the real ~/.ray (Ray 2.60 turns token auth on for a new local Ray)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=OBJECT_STORE,
        _temp_dir=temp,
        _node_ip_address=os.environ["VITHYBRID_RAY_NODE_IP"],
    )  # loopback: conftest.py
    yield ray
    ray.shutdown()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# ---------------------------------------------------------------------------- one machine


@pytest.mark.slow
def test_classify_on_ray_matches_the_local_engine(local_ray, tiny, folder, tmp_path):
    local = cli("classify", folder, "-o", tmp_path / "local.parquet", "--model", tiny,
                "--dtype", "float32", "-k", 3)  # fmt: skip
    assert local.exit_code == 1, local.output  # the two bad inputs
    result = cli("classify", folder, "-o", tmp_path / "parts", "--engine", "ray",
                 "--model", tiny, "--dtype", "float32", "-k", 3)  # fmt: skip
    assert result.exit_code == 1, result.output
    assert f"{N_IMAGES} labeled, 2 failed in" in result.output
    assert "junk.jpg: not a recognized image format" in result.output
    rows = read_parts(tmp_path / "parts")
    assert_records_match(rows, read_local(tmp_path / "local.parquet"))
    assert rows[str(folder / "empty.png")]["error"] == "empty file (0 bytes)"
    # the same columns, in the same order, as the local Parquet
    import pyarrow.parquet as pq

    part = next((tmp_path / "parts").glob("part-*.parquet"))
    local_schema = pq.read_schema(tmp_path / "local.parquet")
    assert pq.read_schema(part).names == local_schema.names
    assert pq.read_schema(part).remove_metadata().equals(local_schema.remove_metadata())
    settings = json.loads((tmp_path / "parts" / "_vithybrid.json").read_text())["settings"]
    assert settings["top-k"] == 3 and settings["dtype"] == "float32"


@pytest.mark.slow
def test_classify_on_ray_with_openvino_matches_local_torch(local_ray, tiny, folder, tmp_path):
    """The model actors convert and run our model with OpenVINO (float32): the local torch
    engine's labels, and the parts record the backend."""
    pytest.importorskip("openvino")
    local = cli("classify", folder, "-o", tmp_path / "local.parquet", "--model", tiny,
                "--dtype", "float32", "-k", 3)  # fmt: skip
    assert local.exit_code == 1, local.output
    result = cli("classify", folder, "-o", tmp_path / "parts", "--engine", "ray", "--model", tiny,
                 "--dtype", "float32", "-k", 3, "--backend", "openvino")  # fmt: skip
    assert result.exit_code == 1, result.output
    assert f"{N_IMAGES} labeled, 2 failed in" in result.output
    assert_records_match(read_parts(tmp_path / "parts"), read_local(tmp_path / "local.parquet"))
    settings = json.loads((tmp_path / "parts" / "_vithybrid.json").read_text())["settings"]
    assert settings["backend"] == "openvino" and settings["dtype"] == "float32"
    cache = Path(os.environ["VITHYBRID_CACHE"], "openvino")  # the fixture's, the actors' too
    assert list(cache.glob("*/model.xml"))


@pytest.mark.slow
def test_embed_on_ray_matches_the_local_engine(local_ray, tiny, folder, tmp_path):
    local = cli("embed", folder, "-o", tmp_path / "local.parquet", "--model", tiny,
                "--dtype", "float32", "--pool", "mean")  # fmt: skip
    assert local.exit_code == 1, local.output
    result = cli("embed", folder, "-o", tmp_path / "parts", "--engine", "ray",
                 "--model", tiny, "--dtype", "float32", "--pool", "mean")  # fmt: skip
    assert result.exit_code == 1, result.output
    assert f"{N_IMAGES} embedded, 2 failed in" in result.output
    rows, expected = read_parts(tmp_path / "parts"), read_local(tmp_path / "local.parquet")
    assert rows.keys() == expected.keys()  # failures are left out of both
    assert len(rows) == N_IMAGES
    for path, row in rows.items():
        ours, theirs = np.asarray(row["embedding"]), np.asarray(expected[path]["embedding"])
        cosine = ours @ theirs / np.linalg.norm(ours) / np.linalg.norm(theirs)
        assert cosine >= 0.9999, path
    import pyarrow.parquet as pq

    part = next((tmp_path / "parts").glob("part-*.parquet"))
    local_schema = pq.read_schema(tmp_path / "local.parquet")
    assert pq.read_schema(part).equals(local_schema, check_metadata=True)
    # the parts folder is a vectors source like the file: `similar --in` takes either
    query = sorted(rows)[0]
    found = {}
    for source in ("parts", "local.parquet"):
        similar = cli("similar", query, "--in", tmp_path / source, "-k", "3", "-f", "jsonl",
                      "--model", tiny)  # fmt: skip
        assert similar.exit_code == 0, similar.output
        [record] = [json.loads(line) for line in similar.stdout.splitlines() if line.strip()]
        found[source] = [match["path"] for match in record["matches"]]
    assert found["parts"] == found["local.parquet"]
    assert found["parts"][0] == query


@pytest.mark.slow
def test_embed_tokens_on_ray_have_the_local_nested_schema(local_ray, tiny, folder, tmp_path):
    import pyarrow.parquet as pq

    args = [folder / "large", "--model", tiny, "--dtype", "float32", "--tokens", "--normalize"]
    assert cli("embed", *args, "-o", tmp_path / "local.parquet").exit_code == 0
    result = cli("embed", *args, "-o", tmp_path / "parts", "--engine", "ray")
    assert result.exit_code == 0, result.output
    rows, expected = read_parts(tmp_path / "parts"), read_local(tmp_path / "local.parquet")
    assert rows.keys() == expected.keys() and len(rows) == N_IMAGES // 2
    for path, row in rows.items():  # (tokens, hidden) per image
        np.testing.assert_allclose(row["embedding"], expected[path]["embedding"], atol=1e-4)
    part = next((tmp_path / "parts").glob("part-*.parquet"))
    assert pq.read_schema(part).equals(pq.read_schema(tmp_path / "local.parquet"), True)


@pytest.mark.slow
def test_jsonl_parts_resume_adds_only_new_inputs(local_ray, tiny, folder, tmp_path):
    images = sorted(str(path) for path in folder.rglob("img*.png"))
    first, everything = images[:5], [*images, str(folder / "junk.jpg")]
    dest = tmp_path / "parts"
    args = ["--engine", "ray", "--model", tiny, "--dtype", "float32", "-k", 2, "-f", "jsonl"]
    result = cli("classify", "--files-from", write_list(tmp_path / "a.txt", first), "-o", dest,
                 *args)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "5 labeled, 0 failed" in result.output
    before = {path.name: path.read_bytes() for path in dest.glob("part-*.jsonl")}

    result = cli("classify", "--files-from", write_list(tmp_path / "b.txt", everything),
                 "-o", dest, "--resume", *args)  # fmt: skip
    assert result.exit_code == 1, result.output
    assert f"{len(everything) - 5} labeled" not in result.output  # the junk one failed
    assert f"{len(everything) - 6} labeled, 1 failed" in result.output
    rows = [json.loads(line) for part in dest.glob("part-*.jsonl") for line in part.open()]
    paths = [row["path"] for row in rows]
    assert sorted(paths) == sorted(everything)  # each once
    for name, data in before.items():  # the first run's parts are as they were
        assert (dest / name).read_bytes() == data
    assert set(rows[0]) == {"path", "label", "score", "index", "top_k_labels", "top_k_scores",
                            "top_k_indices", "error"}  # fmt: skip

    # Nothing left to do: a resume runs nothing; with other settings it is refused, one line.
    result = cli("classify", "--files-from", tmp_path / "b.txt", "-o", dest, "--resume", *args)
    assert "0 labeled, 0 failed" in result.output
    changed = [arg if arg != 2 else 3 for arg in args]
    result = cli("classify", "--files-from", tmp_path / "b.txt", "-o", dest, "--resume", *changed)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].endswith("was written with --top-k 2, not 3")


@pytest.mark.slow
def test_an_interrupted_run_keeps_its_finished_parts_and_resume_does_the_rest(
    local_ray, tiny, tmp_path
):
    """Ctrl-C (SIGINT to the command, which runs its own local Ray) once a part is written: the
    finished parts stay, whole; --resume labels only the inputs in none of them. (Parts of 16,384
    rows kept nothing of a run below that: issue 27.)"""
    paths = make_images(tmp_path / "images", 40)
    block_with_fifo(paths[-1])  # the run cannot finish before the test interrupts it
    listed = write_list(tmp_path / "list.txt", paths)  # a folder walk would skip the FIFO
    dest = tmp_path / "parts"
    args = ["classify", "--files-from", listed, "-o", dest, "--engine", "ray", "--model", tiny,
            "--dtype", "float32", "--batch-size", 1]  # fmt: skip
    temp = tempfile.mkdtemp(prefix="vhri", dir="/tmp")  # the command's Ray: its files, processes
    env = child_env(RAY_TMPDIR=temp, RAY_AUTH_MODE="disabled", PYTHONPATH=os.pathsep.join(sys.path))
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "stderr.txt"
    with log.open("wb") as handle:
        run = subprocess.Popen(
            [sys.executable, "-m", "vithybrid_cli", *map(str, args)], env=env, stdout=handle,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=default_sigint,
        )  # fmt: skip
    try:
        wait_while_running(lambda: list(dest.glob("part-*.parquet")), run, "a finished part")
        os.kill(run.pid, signal.SIGINT)
        run.wait(timeout=TIMEOUT)
    finally:
        if run.poll() is None:
            run.kill()
        stop(temp)
        shutil.rmtree(temp, ignore_errors=True)
        print(log.read_text()[-5000:])  # shown when the test fails
    assert run.returncode == 130
    kept = read_parts(dest)  # every part whole (readable), each path once
    assert 0 < len(kept) < len(paths) and paths[-1] not in kept

    restore_image(paths[-1], 39)
    result = cli(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert f"{len(paths) - len(kept)} labeled, 0 failed" in result.output
    rows = read_parts(dest)
    assert sorted(rows) == sorted(paths)  # each once
    assert all(rows[path] == row for path, row in kept.items())  # the kept parts as they were


@pytest.mark.slow
def test_a_fitted_head_on_ray_matches_the_local_engine(local_ray, tiny, tmp_path):
    from vithybrid_cli import fit_head, load_model, save_head

    for label, first in (("a", 0), ("b", 100)):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(6):
            (tmp_path / "data" / label / f"{i}.png").write_bytes(png_bytes(first + i))
    report = fit_head(load_model(tiny), str(tmp_path / "data"), c=1.0)
    save_head(report.head, tmp_path / "head.safetensors")
    common = ["--model", tiny, "--dtype", "float32", "--head", tmp_path / "head.safetensors"]
    local = cli("classify", tmp_path / "data", "-o", tmp_path / "local.parquet", *common)
    assert local.exit_code == 0, local.output
    result = cli("classify", tmp_path / "data", "-o", tmp_path / "parts", "--engine", "ray",
                 *common)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert_records_match(read_parts(tmp_path / "parts"), read_local(tmp_path / "local.parquet"))


@pytest.mark.slow
def test_classifier_in_your_own_map_batches(local_ray, tiny, folder, tmp_path):
    """The public callables on Ray's own reader (bytes in): the local engine's rows."""
    from vithybrid_cli.ray import Classifier, Embedder

    local = cli("classify", folder, "-o", tmp_path / "local.parquet", "--model", tiny,
                "--dtype", "float32", "-k", 3)  # fmt: skip
    assert local.exit_code == 1, local.output

    def key(path: str) -> str:  # Ray's reader may write a local path its own way
        return path.rsplit(f"/{folder.name}/", 1)[1]

    expected = {key(path): row for path, row in read_local(tmp_path / "local.parquet").items()}
    photos = local_ray.data.read_binary_files(str(folder), include_paths=True)
    options = {"model": tiny, "dtype": "float32", "device": "cpu"}
    pool = local_ray.data.ActorPoolStrategy(size=1)
    rows = photos.map_batches(Classifier, fn_constructor_kwargs={**options, "top_k": 3},
                              compute=pool, batch_size=4).take_all()  # fmt: skip
    labeled = {key(row["path"]): row for row in rows}
    assert_records_match(labeled, expected)
    vectors = photos.map_batches(Embedder, fn_constructor_kwargs=options, compute=pool,
                                 batch_size=4).take_all()  # fmt: skip
    failed = {Path(row["path"]).name for row in vectors if row["error"]}
    assert failed == {"junk.jpg", "empty.png"}
    assert all(len(row["embedding"]) == 32 for row in vectors if not row["error"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "concurrency, maps",
    [(1, ["MapBatches(Decoder)", "MapBatches(Classifier)"]),  # a CPU left: decode tasks apart
     (2, ["MapBatches(Decoder)->MapBatches(Classifier)"])],  # actors hold both CPUs: fused
)  # fmt: skip
def test_decoding_is_an_operator_apart_from_cpu_model_actors(
    local_ray, tiny, folder, concurrency, maps
):
    """With CPU actors, the engine's decode map runs as tasks of its own operator, not fused into
    the model actors (Ray fuses maps with equal resource requests): decoding scales apart. Where
    the actors take every CPU, decoding runs in them (decode tasks would find no CPU: a hang)."""
    from vithybrid_cli.data.inputs import iter_inputs
    from vithybrid_cli.pipeline.engines.ray_engine import RayPlan, build_dataset, input_rows
    from vithybrid_cli.ray import Classifier, Decoder

    rows = input_rows(iter_inputs([str(folder)]), set())
    plan = RayPlan(dest="unused", concurrency=concurrency, batch_size=4)
    options = {"model": tiny, "dtype": "float32", "device": "cpu", "threads": 1}
    dataset = build_dataset(rows, Decoder(tiny), Classifier, options, plan).materialize()
    # "Operator 1 MapBatches(Decoder): ..."; a fused one is "MapBatches(Decoder)->MapBatches(...)"
    operators = [line.split(":", 1)[0].split(" ", 2)[2] for line in dataset.stats().splitlines()
                 if line.startswith("Operator ")]  # fmt: skip
    assert operators == ["FromItems", *maps]
    labeled = {row["path"]: row for row in dataset.take_all()}
    assert len(labeled) == N_IMAGES + 2
    assert {Path(path).name for path, row in labeled.items() if row["error"]} == {
        "junk.jpg", "empty.png"}  # fmt: skip


def test_engine_ray_without_the_extra_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if not installed
    monkeypatch.setitem(sys.modules, "ray.data", None)
    result = cli("classify", tmp_path, "-o", tmp_path / "out", "--engine", "ray",
                 "--model", tmp_path / "no-such-model")  # fmt: skip
    assert result.exit_code == 2
    assert result.output.strip() == (
        'error: install the ray extra: pip install "vithybrid[ray]" (needs ray[data])'
    )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        ([], "--engine ray writes a folder of parts: give --output DIR or a bucket URL"),
        (
            ["-o", "out", "--strict"],
            "--strict is the local engine's: on Ray a failed input is a row",
        ),
        (["-o", "out", "-f", "csv"], "--engine ray writes parquet or jsonl parts, not csv"),
    ],
)
def test_engine_ray_option_errors_are_one_line(tmp_path, args, line):
    result = cli("classify", tmp_path, "--engine", "ray", *args)
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {line}"


@pytest.mark.parametrize("command", ["classify", "embed"])
def test_classify_and_embed_refuse_strict_on_ray_alike(tmp_path, command):
    result = cli(command, tmp_path, "--engine", "ray", "-o", tmp_path / "out", "--strict")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: --strict is the local engine's: on Ray a failed input is a row"
    )


@pytest.mark.parametrize(
    ("command", "args", "task"),
    [
        ("classify", ["-k", "3", "--min-score", "0.5"], {"top_k": 3, "head": None,
                                                         "min_score": 0.5}),
        ("embed", ["--pool", "mean", "--normalize"], {"pool": "mean", "normalize": True,
                                                      "tokens": False}),
    ],
)  # fmt: skip
def test_classify_and_embed_share_the_one_ray_branch(tmp_path, monkeypatch, command, args, task):
    """Both commands reach the engine's planning through one branch: the same model options and
    plan from the same flags; only the step class and its task differ."""
    import vithybrid_cli.pipeline.engines.ray_engine as engine
    from vithybrid_cli.ray import Classifier, Decoder, Embedder

    planned = []

    def plan(*arguments):
        planned.append(arguments)
        raise ValueError("planned")

    monkeypatch.setattr(engine, "plan_ray_run", plan)
    out = tmp_path / "out"
    result = cli(command, tmp_path, "--engine", "ray", "-o", out, "--model", "m",
                 "--batch-size", "3", "--concurrency", "2", "--num-gpus", "0.5", "-f", "jsonl",
                 "--resume", "--quiet", *args)  # fmt: skip
    assert result.exit_code == 2
    assert result.output.strip() == "error: planned"
    [(step, decoder, options, step_task, where)] = planned
    assert step is {"classify": Classifier, "embed": Embedder}[command]
    assert decoder is Decoder
    assert options == {"model": "m", "revision": None, "dtype": "auto", "image_size": None,
                       "interpolate_pos_encoding": False, "batch_size": 3, "compile": False,
                       "backend": "torch"}  # fmt: skip
    assert step_task == task
    assert (where.dest, where.fmt, where.resume) == (str(out), "jsonl", True)
    assert (where.concurrency, where.num_gpus, where.progress) == (2, 0.5, False)


@pytest.mark.parametrize("kind", ["records", "embeddings"])
def test_the_engine_plans_its_run_on_cpu_before_any_work(tiny, tmp_path, kind):
    """plan_ray_run builds the step once: dtype made concrete, the batch size, the metadata, the
    plan completed, the decoder built with the model's preprocessing; nothing written yet."""
    import torch

    from vithybrid_cli.io.outputs import json_safe
    from vithybrid_cli.pipeline.engines.ray_engine import (
        RayPlan,
        plan_ray_run,
        rows_per_part,
    )
    from vithybrid_cli.pipeline.runtime import resolve_dtype
    from vithybrid_cli.ray import Classifier, Decoder, Embedder

    options = {"model": tiny, "revision": None, "dtype": "auto", "image_size": None,
               "interpolate_pos_encoding": False, "batch_size": None, "compile": False,
               "backend": "torch"}  # fmt: skip
    if kind == "records":
        step, task = Classifier, {"top_k": 3, "head": None, "min_score": None}
    else:
        step, task = Embedder, {"pool": "cls", "normalize": False, "tokens": False}
    where = RayPlan(dest=str(tmp_path / "out"), fmt="jsonl", concurrency=2)
    run = plan_ray_run(step, Decoder, options, task, where)
    assert run.model_step is step and isinstance(run.decoder, Decoder)
    dtype = str(resolve_dtype("auto", torch.device("cpu"))).removeprefix("torch.")  # not "auto"
    assert run.model_options == {**options, **task, "dtype": dtype, "device": "cpu"}
    plan = run.plan
    assert (plan.dest, plan.fmt, plan.concurrency, plan.kind) == (where.dest, "jsonl", 2, kind)
    assert plan.batch_size >= 1 and plan.settings["model"]
    if kind == "records":
        assert plan.metadata == {"vithybrid.top_k": "3"}
        assert plan.rows_per_part == rows_per_part(kind, None, plan.batch_size, 2) == 32 * 2 * 8
    else:
        assert plan.metadata["vithybrid.row_shape"] == "32"
        settings = json.loads(plan.metadata["vithybrid.settings"])
        assert settings == json.loads(json.dumps(json_safe(plan.settings)))
        assert plan.rows_per_part == rows_per_part(kind, (32,), plan.batch_size, 2) == 512
    assert not (tmp_path / "out").exists()  # the plan writes nothing


def test_embed_format_is_for_the_ray_engine(tmp_path):
    result = cli("embed", tmp_path, "-o", tmp_path / "v.npy", "-f", "jsonl")
    assert result.exit_code == 2
    assert "--format is for --engine ray" in result.output


# ---------------------------------------------------------------------------- two nodes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def processes_of(marker: str) -> list[int]:
    """Pids of the processes whose command line holds `marker`, and all their descendants."""
    parents, holders = {}, set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        if marker.encode() in cmdline and int(entry) != os.getpid():
            holders.add(int(entry))
    found, grew = set(holders), True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in found} - found
        found |= children
        grew = bool(children)
    return sorted(found)


def titled(pids: list[int], text: str) -> list[int]:
    """The pids among `pids` whose process title (Ray sets `ray::ACTOR`) contains `text`."""
    found = []
    for pid in pids:
        try:
            if text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


def wait_for(condition, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def two_nodes(tmp_path):
    """A head and a second node on loopback (`ray start`), their RAY_ADDRESS; stopped by pid."""
    pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="vhr2", dir="/tmp")
    port = free_port()
    # loopback, this test's own cluster; its workers import vithybrid_cli as this process does
    env = child_env(RAY_AUTH_MODE="disabled", PYTHONPATH=os.pathsep.join(sys.path))
    common = ["--num-cpus", "1", "--object-store-memory", OBJECT_STORE, "--disable-usage-stats"]
    ray_cli = [sys.executable, "-m", "ray.scripts.scripts", "start"]
    # Ray makes 127.0.0.1 the machine's own address: the head takes another loopback address,
    # the second node the one it reaches the head from (127.0.0.1): all traffic on loopback.
    head = [*ray_cli, "--head", "--port", port, "--node-ip-address", "127.0.0.2",
            "--include-dashboard", "false", "--temp-dir", temp,
            "--dashboard-agent-listen-port", free_port(), *common]  # fmt: skip
    second = [*ray_cli, "--address", f"127.0.0.2:{port}",
              "--dashboard-agent-listen-port", free_port(), *common]  # fmt: skip
    try:
        for command in (head, second):
            command = [str(arg) for arg in command]
            started = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=TIMEOUT
            )
            assert started.returncode == 0, started.stderr[-3000:]
        yield f"127.0.0.2:{port}", temp
    finally:
        stop(temp)
        shutil.rmtree(temp, ignore_errors=True)


def stop(marker: str) -> None:
    """SIGTERM, then SIGKILL, to every process of the cluster whose temp folder is `marker`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in processes_of(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        try:
            wait_for(lambda: not processes_of(marker), "the cluster to stop", timeout=10)
            return
        except AssertionError:
            continue


@pytest.mark.slow
def test_two_nodes_with_a_worker_killed_mid_run(two_nodes, tiny, tmp_path):
    address, temp = two_nodes
    folder = tmp_path / "images"
    paths = make_images(folder, 40)
    block_with_fifo(paths[20])  # the run cannot finish before the test lets it
    dest = tmp_path / "parts"
    env = child_env(
        RAY_ADDRESS=address, RAY_AUTH_MODE="disabled", PYTHONPATH=os.pathsep.join(sys.path)
    )
    listed = write_list(tmp_path / "list.txt", paths)  # a folder walk would skip the FIFO
    command = [sys.executable, "-m", "vithybrid_cli", "classify", "--files-from", listed,
               "-o", dest, "--engine", "ray", "--model", tiny, "--dtype", "float32",
               "--batch-size", 4]  # fmt: skip
    log = (tmp_path / "stderr.txt").open("w+")
    run = subprocess.Popen([str(arg) for arg in command], env=env, stderr=log, text=True)
    try:
        actors = wait_for(lambda: titled(processes_of(temp), "Classifier"), "a model actor")
        os.kill(actors[0], signal.SIGKILL)
        # Ray restarts the actor and reruns its work; the FIFO's reader comes back too.
        wait_for(lambda: fifo_opened(paths[20]), "the run to reach the blocked input")
        run.wait(timeout=TIMEOUT)
    finally:
        if run.poll() is None:
            run.kill()
        log.seek(0)
        errors = log.read()
        print(errors[-5000:])  # shown when the test fails
    assert run.returncode == 1, errors  # the FIFO read as an empty file
    assert "39 labeled, 1 failed" in errors
    rows = read_parts(dest)  # asserts each path once
    assert sorted(rows) == sorted(paths)
    assert rows[paths[20]]["error"] == "empty file (0 bytes)"


def fifo_opened(path: str) -> bool:
    try:
        unblock_fifo(path)
    except OSError:  # no reader yet
        return False
    return True


def test_a_ray_address_where_nothing_answers_is_one_line_at_once():
    """RAY_ADDRESS pointing at no cluster: one line, without Ray's 20 s of retries."""
    pytest.importorskip("ray")
    from vithybrid_cli.pipeline.engines.ray_engine import connect

    address = f"127.0.0.1:{free_port()}"  # closed: nothing listens
    started = time.monotonic()
    with pytest.raises(ConnectionError) as raised:
        connect(address, logging.WARNING)
    assert str(raised.value) == (
        f"cannot connect to the Ray cluster at {address} (RAY_ADDRESS): nothing answers there "
        "(is `ray start --head` running?)"
    )
    assert time.monotonic() - started < 15  # ray.init alone retries for 20 s


@pytest.mark.slow  # a process of its own
def test_a_cluster_out_of_reach_removes_no_earlier_parts(tiny, tmp_path):
    """Without --resume a run replaces the folder's parts, but only once it has a cluster: an
    unreachable RAY_ADDRESS leaves an earlier run's parts as they were."""
    pytest.importorskip("ray")
    photos = tmp_path / "photos"
    make_images(photos, 2)
    dest = tmp_path / "parts"
    dest.mkdir()
    earlier = dest / "part-0000-000000.parquet"
    earlier.write_bytes(b"an earlier run's rows")
    # a process of its own: a Ray this process runs (local_ray) would be used instead
    env = child_env(RAY_ADDRESS=f"127.0.0.1:{free_port()}", PYTHONPATH=os.pathsep.join(sys.path))
    command = [sys.executable, "-m", "vithybrid_cli", "classify", photos, "-o", dest,
               "--engine", "ray", "--model", tiny, "--dtype", "float32"]  # fmt: skip
    result = subprocess.run([str(arg) for arg in command], env=env, capture_output=True,
                            text=True, timeout=TIMEOUT)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "nothing answers there" in result.stderr
    assert earlier.read_bytes() == b"an earlier run's rows"


@pytest.mark.slow
def test_the_guides_two_machine_recipe_with_token_authentication(tiny, tmp_path):
    """docs/guides/ray.md "Two machines" as written, each machine a HOME of its own (its own
    ~/.ray) on loopback: a token generated on the head and copied to the second node, where the
    command then runs. A machine without the token gets one line naming it, at once. (Ray
    2.52+ turns token authentication on; without the token set-up the second node could not
    join, and the command waited 20 s to say only that it could not connect: issue 27.)"""
    pytest.importorskip("ray")
    homes = {name: tmp_path / f"home-{name}" for name in ("head", "node", "other")}
    for home in homes.values():
        home.mkdir()
    base = child_env(PYTHONPATH=os.pathsep.join(sys.path))
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        base.pop(name, None)

    def on(machine: str, *command: object, **env: str) -> subprocess.CompletedProcess:
        full = dict(base, HOME=str(homes[machine]), **env)
        command = [str(arg) for arg in command]
        return subprocess.run(command, capture_output=True, text=True, env=full, timeout=TIMEOUT)

    ray_cli = [sys.executable, "-m", "ray.scripts.scripts"]
    vithybrid = [sys.executable, "-m", "vithybrid_cli"]
    # Ray makes 127.0.0.1 the machine's own address: the head takes another loopback address,
    # and the second node the one it reaches the head from (127.0.0.1): all stays on loopback.
    temp, port, head_ip = tempfile.mkdtemp(prefix="vhrt", dir="/tmp"), free_port(), "127.0.0.2"
    address = f"{head_ip}:{port}"
    common = ["--num-cpus", 1, "--object-store-memory", OBJECT_STORE, "--disable-usage-stats"]
    try:
        generated = on("head", *ray_cli, "get-auth-token", "--generate")
        assert generated.returncode == 0, generated.stderr
        started = on("head", *ray_cli, "start", "--head", "--port", port,
                     "--node-ip-address", head_ip, "--include-dashboard", "false",
                     "--temp-dir", temp, "--dashboard-agent-listen-port", free_port(), *common,
                     RAY_AUTH_MODE="token")  # fmt: skip
        assert started.returncode == 0, started.stderr[-3000:]
        (homes["node"] / ".ray").mkdir()
        shutil.copy(homes["head"] / ".ray" / "auth_token", homes["node"] / ".ray" / "auth_token")
        joined = on("node", *ray_cli, "start", "--address", address,
                    "--dashboard-agent-listen-port", free_port(), *common,
                    RAY_AUTH_MODE="token")  # fmt: skip
        assert joined.returncode == 0, joined.stderr[-3000:]

        paths = make_images(tmp_path / "images", 8)
        args = ["classify", tmp_path / "images", "-o", tmp_path / "parts", "--engine", "ray",
                "--model", tiny, "--dtype", "float32", "--batch-size", 4, "-q"]  # fmt: skip
        result = on("node", *vithybrid, *args, RAY_ADDRESS=address, RAY_AUTH_MODE="token")
        assert result.returncode == 0, result.stderr[-5000:]
        assert sorted(read_parts(tmp_path / "parts")) == sorted(paths)

        where = f"error: cannot connect to the Ray cluster at {address} (RAY_ADDRESS): "
        fix = "copy ~/.ray/auth_token from the head node or set RAY_AUTH_TOKEN (docs/guides/ray.md)"
        token = {"RAY_AUTH_MODE": "token"}
        for env, line in [
            ({}, f"it asks for a token: set RAY_AUTH_MODE=token, and {fix}"),
            (token, f"RAY_AUTH_MODE=token, but this machine has no token: {fix}"),
            ({**token, "RAY_AUTH_TOKEN": "0" * 32}, f"it refused this machine's token: {fix}"),
        ]:
            refused = on("other", *vithybrid, *args, RAY_ADDRESS=address, **env)
            assert refused.returncode == 2, refused.stderr[-3000:]
            assert refused.stderr.strip().splitlines()[-1] == where + line
    finally:
        stop(temp)
        shutil.rmtree(temp, ignore_errors=True)


# ---------------------------------------------------------------------------- duplicates


def planted_vectors(folder: Path, rows: int = 3000, width: int = 32) -> tuple[Path, int]:
    """A vectors file of `rows` random vectors, every 20th followed by 1 to 3 near copies
    (cosine ~0.99, well apart from the threshold 0.9); (its path, the groups planted)."""
    rng = np.random.default_rng(11)
    array = rng.standard_normal((rows, width)).astype(np.float32)
    planted = 0
    for start in range(0, rows - 4, 20):
        copies = 1 + planted % 3
        array[start + 1 : start + 1 + copies] = array[start] + 0.1 * rng.standard_normal(
            (copies, width)
        )
        planted += 1
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "v.npy", array)
    (folder / "v.paths.txt").write_text("".join(f"{row}.jpg\n" for row in range(rows)))
    return folder / "v.npy", planted


def test_duplicates_on_ray_gives_the_local_groups(local_ray, tmp_path):
    """Queries sharded over Ray actors sharing the vectors: the local run's groups."""
    vectors, planted = planted_vectors(tmp_path)
    local = cli("duplicates", vectors, "--index", "exact", "-f", "jsonl")
    assert local.exit_code == 0, local.output
    sharded = cli("duplicates", vectors, "--index", "exact", "--engine", "ray", "-f", "jsonl")
    assert sharded.exit_code == 0, sharded.output
    groups = [json.loads(line) for line in local.stdout.splitlines()]
    assert len(groups) == planted
    assert [json.loads(line) for line in sharded.stdout.splitlines()] == groups


@pytest.mark.slow
def test_duplicates_on_two_nodes_gives_the_local_groups(two_nodes, tmp_path):
    address, temp = two_nodes
    vectors, planted = planted_vectors(tmp_path, rows=2000)
    env = child_env(
        RAY_ADDRESS=address, RAY_AUTH_MODE="disabled", PYTHONPATH=os.pathsep.join(sys.path)
    )
    command = [sys.executable, "-m", "vithybrid_cli", "duplicates", str(vectors), "-f", "jsonl"]
    local = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert local.returncode == 0, local.stderr
    sharded = subprocess.run(
        [*command, "--engine", "ray"], env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    groups = [json.loads(line) for line in local.stdout.splitlines()]
    assert len(groups) == planted
    assert [json.loads(line) for line in sharded.stdout.splitlines()] == groups
