"""Scale-out: several processes share a run, each with its own journal; rank 0 writes the output.

The torchrun tests start 2 CPU processes on loopback (gloo), so they need no GPU (slow: each
process imports torch); the in-process tests drive JournalOutput for several "ranks" in threads to
cover every format fast.
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
    journal_entries,
    kill_tree,
    make_images,
    read_jsonl,
    restore_image,
    top_labels,
    wait_for,
    write_list,
)

from vithybrid_cli.data.items import InputItem
from vithybrid_cli.pipeline.job import JournalOutput, select
from vithybrid_cli.pipeline.journal import journal_dir
from vithybrid_cli.pipeline.runner import Result
from vithybrid_cli.pipeline.runtime import Distributed

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


def only_journals(directory: Path) -> bool:
    """No temp or part file left beside the outputs: only the kept journals."""
    return all(name.endswith(".journal") for name in os.listdir(directory) if name[0] == ".")


# --------------------------------------------------------------------------- torchrun


@pytest.mark.slow
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
    assert only_journals(tmp_path)


@pytest.mark.slow
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
    assert only_journals(tmp_path)


@pytest.mark.slow
def test_torchrun_tar_shards_into_parquet(tmp_path, tiny, folder):
    """Two processes share the members of tar shards (each reads only its own members' bytes)
    and rank 0 merges the journal into one Parquet file equal to a single process's."""
    import tarfile

    import pyarrow.parquet as pq

    shards = tmp_path / "shards"
    shards.mkdir()
    images = sorted(folder.iterdir())
    for number, start in enumerate((0, 13)):
        with tarfile.open(shards / f"shard-{number:03d}.tar", "w") as archive:
            for image in images[start : start + 13]:
                archive.add(image, arcname=image.name)
    single, merged, log = tmp_path / "single.parquet", tmp_path / "merged.parquet", tmp_path / "log"
    args = ["classify", f"{shards}/*.tar", "--model", tiny, "--batch-size", "2"]
    cli(*args, "-o", single, "-q", code=1)
    child = torchrun([*args, "-o", merged], log)
    output = finish(child, log)
    assert child.returncode == 1, output  # zz_not_an_image.jpg
    assert output.count(f"{N_IMAGES} labeled, 1 failed") == 1
    one, two = pq.read_table(single).to_pylist(), pq.read_table(merged).to_pylist()
    assert [r["path"] for r in two] == [r["path"] for r in one]  # input order, each once
    assert len(two) == N_IMAGES + 1 and two[-1]["error"]
    for a, b in zip(one, two, strict=True):
        assert a["top_k_labels"] == b["top_k_labels"]
        if a["top_k_scores"]:
            np.testing.assert_allclose(b["top_k_scores"], a["top_k_scores"], rtol=1e-5)
    assert only_journals(tmp_path)


@pytest.mark.slow
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
    # rank 0 writes 0, 2, 4, 6 and stalls at 8; rank 1 writes all its 12
    done = STALL_AT // 2 + N_IMAGES // 2
    wait_for(lambda: journal_entries(out) >= done, child, "both ranks' results")
    kill_tree(child.pid)  # torchrun and its workers (in their own sessions)
    child.wait(timeout=TIMEOUT)
    assert not out.exists()
    assert journal_entries(out) == done
    journals = sorted(os.listdir(journal_dir(str(out))))
    assert journals == ["run0000.rank0of2", "run0000.rank1of2"]

    restore_image(paths[STALL_AT], STALL_AT)
    child = torchrun(
        ["classify", folder, "-o", out, "--model", tiny, "--batch-size", "2", "--resume"], log
    )
    output = finish(child, log)
    assert child.returncode == 0, output
    assert f"{N_IMAGES - done} labeled, 0 failed" in output  # the rest, shared out afresh
    records = read_jsonl(out)
    assert [r["path"] for r in records] == paths  # each input exactly once, in input order
    assert top_labels(records) == top_labels(read_jsonl(reference))
    assert only_journals(tmp_path)


# --------------------------------------------------------------------------- in process


class ThreadJob:
    """A stand-in for runtime.Distributed: `world` ranks as threads of this process."""

    def __init__(self, rank: int, barrier: threading.Barrier) -> None:
        self.rank, self.world, self.meeting = rank, barrier.parties, barrier

    def barrier(self) -> None:
        self.meeting.wait(timeout=30)

    def all_sum(self, *values: int) -> tuple[int, ...]:
        return values


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


def result(i: int) -> Result:
    if i % 5 == 4:
        return Result(i, f"img{i:02d}.png", error="cannot decode")
    return Result(i, f"img{i:02d}.png", payload=[(i, f"L{i}", 0.5)])


SETTINGS = {"command": "classify", "model": "m", "top-k": 1}


def run_ranks_over(out: str, fmt: str, kind: str, world: int, inputs: list[str], make, **kw):
    """Every rank opens a JournalOutput, writes its share of the inputs not done, finishes;
    returns {rank: done set}."""
    seen: dict[int, set] = {}

    def rank_body(job):
        target = JournalOutput(out, fmt, kind, SETTINGS, job=job, **kw)
        seen[job.rank] = done = target.open()
        for index, item in select(map(InputItem, inputs), done, job.rank, job.world):
            target.write(make(index, item.path))
        target.finish()

    run_ranks(world, rank_body)
    return seen


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json", "parquet"])
def test_rank_journals_merge_in_input_order(tmp_path, fmt):
    out = str(tmp_path / f"out.{fmt}")
    names = [f"img{i:02d}.png" for i in range(11)]
    run_ranks_over(out, fmt, "records", 3, names, lambda i, p: result(i), top_k=1)
    if fmt == "jsonl":
        records = read_jsonl(Path(out))
    elif fmt == "json":
        records = json.loads(Path(out).read_text())
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        records = pq.read_table(out).to_pylist()
        assert [r["label"] for r in records if not r["error"]] == [
            f"L{i}" for i in range(11) if i % 5 != 4
        ]
    else:
        with open(out, newline="") as f:
            records = [{"path": row[0], "error": row[-1]} for row in list(csv.reader(f))[1:]]
    assert [r["path"] for r in records] == names
    assert [bool(r.get("error")) for r in records] == [i % 5 == 4 for i in range(11)]
    assert only_journals(tmp_path)


@pytest.mark.parametrize("world", [1, 2])
def test_resume_across_world_sizes(tmp_path, world):
    """A killed 3-process run (journals, one torn), resumed with `world` processes."""
    out = str(tmp_path / "out.jsonl")
    names = [f"img{i:02d}.png" for i in range(10)]

    def killed_rank(job):  # stops at input 6, output never written
        target = JournalOutput(out, "jsonl", "records", SETTINGS, job=job, top_k=1)
        target.open()
        for index, _ in select(names, set(), job.rank, job.world):
            if index >= 6:
                break
            target.write(result(index))
        target.abort()

    run_ranks(3, killed_rank)
    assert not os.path.exists(out)
    [torn] = [p for p in Path(journal_dir(out)).iterdir() if p.name.endswith("rank1of3")]
    with open(torn, "ab") as file:
        file.write(b'{"index": 7, "pa')
    make = lambda i, p: result(i)  # noqa: E731
    seen = run_ranks_over(out, "jsonl", "records", world, names, make, top_k=1, resume=True)
    assert all(done == {names[i] for i in (0, 1, 2, 3, 5)} for done in seen.values())  # 4 failed
    records = read_jsonl(Path(out))
    assert [r["path"] for r in records] == names  # each once, in input order


@pytest.mark.parametrize("name", ["v.npy", "v.npz", "v.parquet"])
def test_embedding_journals_merge_and_resume(tmp_path, name):
    out, fmt = str(tmp_path / name), name.split(".")[1]
    names = [f"img{i}" for i in range(9)]
    rows = {i: np.full(4, i, dtype=np.float32) for i in range(9)}
    make = lambda i, p: Result(i, p, payload=rows[i])  # noqa: E731
    run_ranks_over(out, fmt, "embeddings", 2, names[:4], make)
    seen = run_ranks_over(out, fmt, "embeddings", 3, names, make, resume=True)
    assert all(done == set(names[:4]) for done in seen.values())
    if name.endswith(".npy"):
        saved = np.load(out)
        assert (tmp_path / "v.paths.txt").read_text().splitlines() == names
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(out)
        assert table["path"].to_pylist() == names
        saved = np.array(table["embedding"].to_pylist(), dtype=np.float32)
    else:
        with np.load(out) as archive:
            saved, saved_names = archive["embeddings"], archive["paths"].tolist()
        assert saved_names == names
    np.testing.assert_array_equal(saved, np.stack([rows[i] for i in range(9)]))
    assert only_journals(tmp_path)


def test_single_process_job_and_shares():
    with Distributed(0, 1) as job:
        assert job.is_main and job.all_sum(3, 4) == (3, 4)
        job.barrier()
    shares = [[i for i, _ in select(range(10), set(), r, 3)] for r in range(3)]  # nothing done
    assert shares == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    items = [InputItem(str(i)) for i in range(6)]
    done_skipped = [[i for i, _ in select(items, {"1", "2"}, r, 2)] for r in range(2)]
    assert done_skipped == [[0, 4], [3, 5]]  # the rest shared evenly, indices kept
    with pytest.raises(ValueError):
        Distributed(2, 2)


def test_several_processes_need_an_output_file(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = cli("classify", tmp_path, "--model", tiny, "-f", "jsonl", code=2)
    assert "give --output" in result.stderr
