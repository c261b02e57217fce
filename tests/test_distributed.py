"""Scale-out (issue #5): several processes share a run, rank 0 merges their parts in input order.

The torchrun tests start 2 CPU processes on loopback (gloo), so they need no GPU; the in-process
tests drive RecordOutput / EmbeddingOutput for 2 "ranks" in threads to cover every format fast.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from batchkit import (
    TIMEOUT,
    block_with_fifo,
    child_env,
    cli,
    kill_tree,
    line_count,
    make_images,
    read_jsonl,
    restore_image,
    top_labels,
    wait_for,
    write_list,
)

from vithybrid_cli.runner import shard_size
from vithybrid_cli.runtime import Distributed
from vithybrid_cli.shards import (
    EmbeddingOutput,
    EmbeddingPartWriter,
    RecordOutput,
    RecordPartWriter,
    find_parts,
    part_path,
)

N_IMAGES = 24
STALL_AT = 8  # rank 0's fifth input: it writes 0, 2, 4, 6 and stalls in its batch [8, 10]


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint) -> str:
    return str(tiny_checkpoint)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("distributed") / "images"
    make_images(folder, N_IMAGES)
    (folder / "zz_not_an_image.jpg").write_text("text, not pixels")  # an error record, merged too
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list, log: Path, nproc: int = 2) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    command += ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    command += ["-m", "vithybrid_cli", *(str(a) for a in args), "--workers", "1"]
    with open(log, "wb") as handle:
        return subprocess.Popen(
            command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(),
            start_new_session=True,
        )


def finish(child: subprocess.Popen, log: Path) -> str:
    try:
        child.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_tree(child.pid)
        raise
    return log.read_text(errors="replace")


def no_parts(directory: Path) -> bool:
    return not [name for name in os.listdir(directory) if ".part" in name]


# --------------------------------------------------------------------------- torchrun


def test_torchrun_classify_matches_one_process(tmp_path, tiny, folder):
    single, merged, log = tmp_path / "single.jsonl", tmp_path / "merged.jsonl", tmp_path / "log"
    cli("classify", folder, "-o", single, "--model", tiny, "--batch-size", "2", "-q", code=1)
    child = torchrun(["classify", folder, "-o", merged, "--model", tiny, "--batch-size", "2"], log)
    output = finish(child, log)
    assert child.returncode == 1, output  # one input failed: every rank says so
    assert output.count(f"{N_IMAGES} labeled, 1 failed") == 1  # rank 0's summary, for the job
    one, two = read_jsonl(single), read_jsonl(merged)
    assert [r["path"] for r in two] == [r["path"] for r in one]  # input order, each once
    assert top_labels(two) == top_labels(one) and "error" in two[-1]
    for a, b in zip(one, two, strict=True):
        if "top_k" in a:
            np.testing.assert_allclose(
                [p["score"] for p in b["top_k"]], [p["score"] for p in a["top_k"]], rtol=1e-5
            )
    assert no_parts(tmp_path)


def test_torchrun_embed_matches_one_process(tmp_path, tiny, folder):
    single, merged, log = tmp_path / "single.npy", tmp_path / "merged.npy", tmp_path / "log"
    cli("embed", folder, "-o", single, "--model", tiny, "--batch-size", "2", "-q", code=1)
    child = torchrun(["embed", folder, "-o", merged, "--model", tiny, "--batch-size", "2"], log)
    output = finish(child, log)
    assert child.returncode == 1, output
    assert output.count(f"wrote {N_IMAGES} rows to {merged}") == 1
    np.testing.assert_allclose(np.load(merged), np.load(single), rtol=1e-4, atol=1e-6)
    paths = (tmp_path / "merged.paths.txt").read_text()
    assert paths == (tmp_path / "single.paths.txt").read_text()
    assert no_parts(tmp_path)


def test_torchrun_killed_then_resumed(tmp_path, tiny):
    folder = tmp_path / "images"
    paths = make_images(folder, N_IMAGES)
    reference = tmp_path / "reference.jsonl"
    cli("classify", folder, "-o", reference, "--model", tiny, "--batch-size", "2", "-q")
    block_with_fifo(paths[STALL_AT])
    listing = write_list(tmp_path / "list.txt", paths)
    out, log = tmp_path / "out.jsonl", tmp_path / "log"
    args = ["classify", "--files-from", listing, "-o", out, "--model", tiny, "--batch-size", "2"]
    child = torchrun(args, log)
    part0, part1 = (Path(part_path(str(out), rank, 2)) for rank in (0, 1))
    wait_for(
        lambda: line_count(part0) >= STALL_AT // 2 and line_count(part1) >= N_IMAGES // 2,
        child,
        "both ranks' records",
    )
    kill_tree(child.pid)  # torchrun and its workers (in their own sessions)
    child.wait(timeout=TIMEOUT)
    assert not out.exists()
    assert line_count(part0) == STALL_AT // 2 and line_count(part1) == N_IMAGES // 2

    restore_image(paths[STALL_AT], STALL_AT)
    child = torchrun(
        ["classify", folder, "-o", out, "--model", tiny, "--batch-size", "2", "--resume"], log
    )
    output = finish(child, log)
    assert child.returncode == 0, output
    # the killed run's 4 + 12 records were merged first; the other 8 inputs shared out afresh
    assert f"{N_IMAGES - STALL_AT // 2 - N_IMAGES // 2} labeled, 0 failed" in output
    records = read_jsonl(out)
    assert sorted(r["path"] for r in records) == paths  # each input exactly once
    assert top_labels(records) == top_labels(read_jsonl(reference))
    assert no_parts(tmp_path)


# --------------------------------------------------------------------------- in process


class ThreadJob:
    """A stand-in for runner.Distributed: `world` ranks as threads of this process."""

    def __init__(self, rank: int, barrier: threading.Barrier) -> None:
        self.rank, self.world, self._barrier = rank, barrier.parties, barrier

    def barrier(self) -> None:
        self._barrier.wait(timeout=30)


def run_ranks(world: int, body) -> None:
    """Run body(job) for every rank in its own thread; re-raise the first failure."""
    barrier, errors = threading.Barrier(world), []

    def main(rank: int) -> None:
        try:
            body(ThreadJob(rank, barrier))
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=main, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def record(i: int) -> dict:
    if i % 5 == 4:
        return {"path": f"img{i:02d}.png", "error": "cannot decode"}
    return {"path": f"img{i:02d}.png", "top_k": [{"index": i, "label": f"L{i}", "score": 0.5}]}


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
def test_record_parts_merge_in_input_order(tmp_path, fmt):
    out = str(tmp_path / f"out.{fmt}")
    n, world = 11, 3

    def rank_body(job):
        with RecordOutput(fmt, out, top_k=1, job=job) as target:
            assert target.done is None
            for i in range(job.rank, n, job.world):
                target.write(i, record(i))

    run_ranks(world, rank_body)
    if fmt == "jsonl":
        paths = [r["path"] for r in read_jsonl(Path(out))]
    elif fmt == "json":
        paths = [r["path"] for r in json.loads(Path(out).read_text())]
    else:
        with open(out, newline="") as f:
            paths = [row[0] for row in list(csv.reader(f))[1:]]
    assert paths == [f"img{i:02d}.png" for i in range(n)]
    assert no_parts(tmp_path)


@pytest.mark.parametrize("world", [1, 2])
def test_resume_merges_a_killed_runs_parts(tmp_path, world):
    out = str(tmp_path / "out.jsonl")
    Path(out).write_text(json.dumps(record(0)) + "\n")  # finished by an earlier run
    for rank, indices in ((0, [0, 3]), (1, [1, 4, 7]), (2, [2])):  # a killed 3-process run
        part = RecordPartWriter(part_path(out, rank, 3))
        for i in indices:
            part.write(i, record(i + 1))  # that run's input i is img{i+1}
        part.close()
    with open(part_path(out, 0, 3), "a") as torn:
        torn.write('{"index": 6, "rec')
    seen: dict[int, set] = {}

    def rank_body(job):
        with RecordOutput("jsonl", out, resume=True, top_k=1, job=job) as target:
            seen[job.rank] = set(target.done)
            todo = [i for i in range(10) if f"img{i:02d}.png" not in target.done]
            for i, index in enumerate(todo):
                if i % job.world == job.rank:
                    target.write(index, record(index))

    run_ranks(world, rank_body)
    expected_done = {f"img{i:02d}.png" for i in (0, 1, 2, 3, 5, 8)}  # img04 failed: retried
    assert all(done == expected_done for done in seen.values())
    records = read_jsonl(Path(out))
    assert sorted(r["path"] for r in records) == [f"img{i:02d}.png" for i in range(10)]
    assert no_parts(tmp_path)


@pytest.mark.parametrize("world", [1, 2])
def test_embedding_parts_merge_and_resume(tmp_path, world):
    out = str(tmp_path / "v.npy")
    rows = {i: np.full(4, i, dtype=np.float32) for i in range(9)}
    for rank, indices in ((0, [0, 2]), (1, [1, 3])):  # a killed 2-process run: img0..img3
        part = EmbeddingPartWriter(part_path(out, rank, 2))
        part.write(indices, [f"img{i}" for i in indices], np.stack([rows[i] for i in indices]))
        part.close()
    with open(part_path(out, 1, 2), "ab") as torn:
        torn.write(b"\0\0")  # half a row past the last indexed one
    assert len(find_parts(out)) == 2
    seen: dict[int, set] = {}

    def rank_body(job):
        with EmbeddingOutput(out, resume=True, job=job) as target:
            seen[job.rank] = set(target.done)
            todo = [i for i in range(9) if f"img{i}" not in target.done]
            for i, index in enumerate(todo):
                if i % job.world == job.rank:
                    target.write(i, f"img{index}", rows[index])

    run_ranks(world, rank_body)
    assert all(done == {"img0", "img1", "img2", "img3"} for done in seen.values())
    saved = np.load(out)
    assert (tmp_path / "v.paths.txt").read_text().splitlines() == [f"img{i}" for i in range(9)]
    np.testing.assert_array_equal(saved, np.stack([rows[i] for i in range(9)]))
    assert no_parts(tmp_path) and not [n for n in os.listdir(tmp_path) if n.startswith(".")]


def test_single_process_job_and_shard_sizes():
    with Distributed(0, 1) as job:
        assert job.is_main and job.all_sum(3, 4) == (3, 4)
        job.barrier()
    assert [shard_size(10, r, 3) for r in range(3)] == [4, 3, 3]
    assert shard_size(None, 0, 2) is None
    with pytest.raises(ValueError):
        Distributed(2, 2)


def test_several_processes_need_an_output_file(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = cli("classify", tmp_path, "--model", tiny, "-f", "jsonl", code=2)
    assert "give --output" in result.stderr
