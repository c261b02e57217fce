"""Parquet writers: read back with pyarrow (and pandas when installed), equal to the JSONL records
and .npy rows of the same run; bounded row groups; atomic replace; the missing-extra hint."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import sys
import tracemalloc
from pathlib import Path

import checkpoints
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vithybrid_cli.cli import app
from vithybrid_cli.extras import MissingExtra
from vithybrid_cli.io.parquet import ParquetEmbeddingWriter, ParquetRecordWriter

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
HAVE_PANDAS = importlib.util.find_spec("pandas") is not None

RECORD_COLUMNS = [
    "path",
    "label",
    "score",
    "index",
    "top_k_labels",
    "top_k_scores",
    "top_k_indices",
    "error",
]


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for name, image in zip(
        ("a.jpg", "b.png", "c.jpg", "d.jpg"), checkpoints.photographs(4), strict=True
    ):
        image.convert("RGB").resize((96, 64), Image.BICUBIC).save(root / name)
    (root / "e.jpg").write_bytes(b"not an image")
    return root


def cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def records_from_table(table) -> list[dict]:
    """The JSONL record each Parquet row stands for."""
    records = []
    for row in table.to_pylist():
        if row["error"] is not None:
            records.append({"path": row["path"], "error": row["error"]})
            continue
        entries = zip(row["top_k_indices"], row["top_k_labels"], row["top_k_scores"], strict=True)
        top_k = [{"index": i, "label": label, "score": score} for i, label, score in entries]
        assert (row["index"], row["label"], row["score"]) == tuple(top_k[0].values())
        records.append({"path": row["path"], "top_k": top_k})
    return records


# ---------------------------------------------------------------------------- records


def test_records_equal_the_jsonl_output_of_the_same_run(tiny_checkpoint, photo_dir, tmp_path):
    result = cli(
        "classify", photo_dir, tmp_path / "missing.jpg", "--model", tiny_checkpoint, "-k", 3
    )
    assert result.exit_code == 1, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 6 and sum("error" in r for r in records) == 2

    out = tmp_path / "labels.parquet"
    with ParquetRecordWriter(out, top_k=3) as writer:
        for record in records:
            writer.write(record)
    table = pq.read_table(out)
    assert table.column_names == RECORD_COLUMNS
    assert table.schema.field("top_k_scores").type == pa.list_(pa.float64())
    assert table.schema.metadata[b"vithybrid.top_k"] == b"3"
    assert records_from_table(table) == records  # values, order, errors: all equal

    if HAVE_PANDAS:
        import pandas

        assert list(pandas.read_parquet(out)["path"]) == [r["path"] for r in records]


def test_record_edge_cases(tmp_path):
    out = tmp_path / "edge.parquet"
    odd = "caf\udce9.jpg"  # an undecodable byte smuggled in by surrogateescape
    with ParquetRecordWriter(out, top_k=2) as writer:
        writer.write({"path": odd, "top_k": [{"index": 1, "label": "x", "score": float("nan")}]})
        writer.write({"path": "b.jpg", "error": "cannot decode:\nsecond line"})
        with pytest.raises(ValueError, match="without a 'path'"):
            writer.write({"top_k": []})
    rows = pq.read_table(out).to_pylist()
    assert rows[0]["path"] == "caf\\xe9.jpg"
    assert rows[0]["score"] is None and rows[0]["top_k_scores"] == [None]  # as JSON writes NaN
    assert rows[1]["error"] == "cannot decode: second line"
    assert rows[1]["top_k_labels"] is None and rows[1]["label"] is None


def test_record_row_groups_are_bounded(tmp_path):
    out = tmp_path / "many.parquet"
    writer = ParquetRecordWriter(out, top_k=1, row_group_size=100)
    for i in range(1050):
        writer.write({"path": f"{i}.jpg", "top_k": [{"index": i % 7, "label": "l", "score": 0.5}]})
        assert writer.count == i + 1
    writer.close()
    metadata = pq.ParquetFile(out).metadata
    assert metadata.num_rows == 1050
    assert [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)] == [
        100
    ] * 10 + [50]
    assert pq.read_table(out, columns=["index"])["index"].to_pylist() == [
        i % 7 for i in range(1050)
    ]


# ---------------------------------------------------------------------------- atomicity


def test_target_appears_only_on_close_and_abort_keeps_the_old_file(tmp_path):
    out = tmp_path / "labels.parquet"
    out.write_bytes(b"the previous run's file")
    writer = ParquetRecordWriter(out, top_k=1)
    writer.write({"path": "a.jpg", "error": "boom"})
    assert out.read_bytes() == b"the previous run's file"
    writer.abort()
    assert out.read_bytes() == b"the previous run's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.parquet"]  # no temp left

    with pytest.raises(RuntimeError), ParquetRecordWriter(out, top_k=1) as writer:
        writer.write({"path": "a.jpg", "error": "boom"})
        raise RuntimeError("interrupted")
    assert out.read_bytes() == b"the previous run's file"

    writer = ParquetRecordWriter(out, top_k=1)
    writer.write({"path": "a.jpg", "error": "boom"})
    writer.close()
    writer.close()  # idempotent
    assert pq.read_table(out)["error"].to_pylist() == ["boom"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.parquet"]
    with pytest.raises(ValueError, match="closed"):
        writer.write({"path": "b.jpg", "error": "late"})


def test_writes_to_a_stream(tmp_path):
    stream = io.BytesIO()
    with ParquetRecordWriter(stream, top_k=1) as writer:
        writer.write({"path": "a.jpg", "top_k": [{"index": 0, "label": "cat", "score": 0.9}]})
    assert not stream.closed
    assert pq.read_table(io.BytesIO(stream.getvalue()))["label"].to_pylist() == ["cat"]


# ---------------------------------------------------------------------------- embeddings


def test_embeddings_equal_the_npy_output_of_the_same_run(tiny_checkpoint, photo_dir, tmp_path):
    npy = tmp_path / "v.npy"
    result = cli("embed", photo_dir, "--model", tiny_checkpoint, "-o", npy)
    assert result.exit_code == 1, result.stderr  # e.jpg is no image
    vectors = np.load(npy)
    paths = (tmp_path / "v.paths.txt").read_text().splitlines()
    assert vectors.shape[0] == len(paths) == 4

    out = tmp_path / "vectors.parquet"
    with ParquetEmbeddingWriter(out) as writer:
        for path, vector in zip(paths, vectors, strict=True):
            writer.write(path, vector)
    table = pq.read_table(out)
    assert table.column_names == ["path", "embedding"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), vectors.shape[1])
    assert table["path"].to_pylist() == paths
    stored = table["embedding"].combine_chunks().flatten().to_numpy().reshape(vectors.shape)
    np.testing.assert_array_equal(stored, vectors)  # bit for bit

    if HAVE_PANDAS:
        import pandas

        frame = pandas.read_parquet(out)
        np.testing.assert_array_equal(np.stack(frame["embedding"].to_list()), vectors)


def test_token_embeddings_nest_fixed_size_lists(tmp_path):
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((5, 3, 4)).astype(np.float32)
    out = tmp_path / "tokens.parquet"
    with ParquetEmbeddingWriter(out, row_group_bytes=100) as writer:
        for i, row in enumerate(rows):
            writer.write(f"{i}.jpg", row)
        with pytest.raises(ValueError, match="differs"):
            writer.write("bad.jpg", rows[0, 0])
    table = pq.read_table(out)
    assert table.schema.field("embedding").type == pa.list_(pa.list_(pa.float32(), 4), 3)
    assert np.array(table["embedding"].to_pylist(), dtype=np.float32).tolist() == rows.tolist()
    assert table.schema.metadata[b"vithybrid.row_shape"] == b"3,4"
    assert pq.ParquetFile(out).metadata.num_row_groups == 3  # 100 bytes buffer two 48-byte rows


def test_no_embeddings_is_a_valid_empty_file(tmp_path):
    out = tmp_path / "empty.parquet"
    ParquetEmbeddingWriter(out).close()
    table = pq.read_table(out)
    assert table.num_rows == 0 and table.column_names == ["path", "embedding"]


def test_embedding_memory_stays_flat(tmp_path):
    """25 MB of vectors through a 1 MB row-group buffer: Python-side memory stays ~1 MB."""
    dim, rows = 256, 24_000
    vector = np.arange(dim, dtype=np.float32)
    out = tmp_path / "big.parquet"
    writer = ParquetEmbeddingWriter(out, row_group_bytes=1 << 20)
    tracemalloc.start()
    try:
        for i in range(rows):
            writer.write(str(i), vector)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    writer.close()
    assert peak < 6 << 20, peak  # data written: rows * dim * 4 = 25 MB
    metadata = pq.ParquetFile(out).metadata
    assert metadata.num_rows == rows
    assert metadata.num_row_groups == math.ceil(rows / ((1 << 20) // (4 * dim)))


# ---------------------------------------------------------------------------- missing extra


def test_missing_pyarrow_is_an_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    hint = r'install the parquet extra: pip install "vithybrid\[parquet\]" \(needs pyarrow\)'
    with pytest.raises(MissingExtra, match=hint):
        ParquetRecordWriter(tmp_path / "x.parquet", top_k=1)
    with pytest.raises(MissingExtra, match=hint):
        ParquetEmbeddingWriter(tmp_path / "x.parquet")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------- through the journal


def parquet_vectors(table) -> np.ndarray:
    column = table["embedding"].combine_chunks()
    return column.flatten().to_numpy().reshape(table.num_rows, -1)


def test_classify_and_embed_write_parquet_through_the_journal(tiny_checkpoint, photo_dir, tmp_path):
    """`classify DIR -o labels.parquet` and `embed DIR -o vectors.parquet`: one row per input,
    in input order, bit-equal to the JSONL and .npy outputs of the same inputs."""
    model = ("--model", tiny_checkpoint, "-k", 3, "--batch-size", 2, "--workers", 1)
    assert cli("classify", photo_dir, "-o", tmp_path / "labels.jsonl", *model).exit_code == 1
    result = cli("classify", photo_dir, "-o", tmp_path / "labels.parquet", *model)
    assert result.exit_code == 1 and "4 labeled, 1 failed" in result.stderr, result.stderr
    jsonl = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    table = pq.read_table(tmp_path / "labels.parquet")
    assert [r["path"] for r in jsonl] == [str(photo_dir / n) for n in sorted(os.listdir(photo_dir))]
    assert records_from_table(table) == jsonl  # order, labels, scores (bit for bit), errors
    assert table.schema.metadata[b"vithybrid.top_k"] == b"3"

    embed = ("--model", tiny_checkpoint, "--batch-size", 2, "--workers", 1)
    assert cli("embed", photo_dir, "-o", tmp_path / "v.npy", *embed).exit_code == 1
    result = cli("embed", photo_dir, "-o", tmp_path / "vectors.parquet", *embed)
    assert result.exit_code == 1 and "wrote 4 rows to" in result.stderr, result.stderr
    vectors = pq.read_table(tmp_path / "vectors.parquet")
    paths = (tmp_path / "v.paths.txt").read_text().splitlines()
    assert vectors["path"].to_pylist() == paths  # e.jpg (no image) left out, as in .npy
    np.testing.assert_array_equal(parquet_vectors(vectors), np.load(tmp_path / "v.npy"))
    hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert all(name.endswith(".journal") for name in hidden)  # no temp file left


def test_parquet_resume_adds_the_rest_and_refuses_other_settings(
    tiny_checkpoint, photo_dir, tmp_path
):
    model = ("--model", tiny_checkpoint, "-k", 2, "--workers", 1, "-q")
    first = [photo_dir / "a.jpg", photo_dir / "b.png"]
    out = tmp_path / "labels.parquet"
    assert cli("classify", *first, "-o", out, *model).exit_code == 0
    written = out.read_bytes()
    refused = cli("classify", photo_dir, "-o", out, *model[:2], "-k", 3, "--resume")
    assert refused.exit_code == 2
    assert refused.stderr.strip().endswith("with --top-k 2, not 3"), refused.stderr
    assert out.read_bytes() == written  # untouched
    result = cli("classify", photo_dir, "-o", out, "--model", tiny_checkpoint, "-k", 2, "--resume")
    assert result.exit_code == 1 and "2 labeled, 1 failed" in result.stderr, result.stderr
    paths = pq.read_table(out, columns=["path"])["path"].to_pylist()
    assert paths == [str(photo_dir / n) for n in sorted(os.listdir(photo_dir))]  # each once


def test_missing_pyarrow_on_the_command_line_is_one_line_before_any_work(
    monkeypatch, tiny_checkpoint, photo_dir, tmp_path
):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    import vithybrid_cli.model.weights as weights

    monkeypatch.setattr(weights, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    hint = 'error: install the parquet extra: pip install "vithybrid[parquet]" (needs pyarrow)'
    for command in ("classify", "embed"):
        result = cli(command, photo_dir, "-o", tmp_path / "x.parquet", "--model", tiny_checkpoint)
        assert result.exit_code == 2
        assert result.stderr.splitlines() == [hint]  # one line, no traceback
    assert not list(tmp_path.iterdir())  # no file, no journal
