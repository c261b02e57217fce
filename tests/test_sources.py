"""Inputs that are not plain local files: http(s) URLs, stdin, tar archives, fsspec object stores.

Nothing leaves this machine: URLs point at a real HTTP server on 127.0.0.1 (standard library, in a
thread) and object stores are fsspec's in-process `memory://` filesystem. Labels and scores read
through each kind of input are compared with the same image read from a local file.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import checkpoints
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vithybrid_cli import extras
from vithybrid_cli.cli import app
from vithybrid_cli.data import sources
from vithybrid_cli.data.inputs import cheap_to_count, iter_inputs
from vithybrid_cli.data.items import InputError, InputItem
from vithybrid_cli.data.preprocess import ImageError, load_and_preprocess, load_image
from vithybrid_cli.data.sources import RemoteOptions, SourceError, fetch_url, iter_tar

REPO = Path(__file__).resolve().parent.parent
FAST = RemoteOptions(max_download_mb=0.05, timeout=0.5, retries=1, backoff=0.01)
FAST_ENV = {
    "VITHYBRID_MAX_DOWNLOAD_MB": "0.05",
    "VITHYBRID_HTTP_TIMEOUT": "0.5",
    "VITHYBRID_HTTP_RETRIES": "1",
    "VITHYBRID_HTTP_BACKOFF": "0.01",
}


# ---------------------------------------------------------------------------- images


def encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    """Three small photographs, encoded: cat.jpg, coffee.png, rocket.jpg (each < 50 KB)."""
    cat, _, coffee, rocket = (
        image.convert("RGB").resize((96, 64), Image.BICUBIC) for image in checkpoints.photographs(4)
    )
    return {
        "cat.jpg": encode(cat),
        "coffee.png": encode(coffee, "PNG"),
        "rocket.jpg": encode(rocket),
    }


@pytest.fixture(scope="module")
def local(images, tmp_path_factory) -> dict[str, str]:
    """The same images as local files: name -> path."""
    root = tmp_path_factory.mktemp("local")
    for name, data in images.items():
        (root / name).write_bytes(data)
    return {name: str(root / name) for name in images}


def tar_bytes(members: list[tuple[str, bytes]], directory: str | None = None) -> bytes:
    """An uncompressed tar archive of `members` (name, data), then an empty `directory`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if directory:
            entry = tarfile.TarInfo(directory)
            entry.type = tarfile.DIRTYPE
            archive.addfile(entry)
    return buffer.getvalue()


def make_tar(path: Path, members: list[tuple[str, bytes]], gz: bool = False) -> Path:
    data = tar_bytes(members, directory="subdir")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def webdataset_members(images: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """A WebDataset shard: key.jpg + key.json + key.cls, a corrupt image, a hidden resource fork."""
    return [
        ("000.jpg", images["cat.jpg"]),
        ("000.json", b'{"caption": "a cat"}'),
        ("000.cls", b"3"),
        ("001.jpg", b"corrupt: these bytes are no image"),
        ("._002.png", b"\x00\x05\x16\x07 AppleDouble"),
        ("./002.png", images["coffee.png"]),
        ("002.json", b"{}"),
    ]


# ---------------------------------------------------------------------------- HTTP server


class Handler(BaseHTTPRequestHandler):
    """Routes: /img/NAME (image, any suffix), /missing (404), /flaky/N/NAME (500 N times, then
    the image), /slow (never answers in time), /big and /big-unsized (over the cap, with and
    without Content-Length), /html (HTML labelled image/jpeg), /redirect/NAME (302 to /img/NAME),
    /shard.tar (a tar archive)."""

    server: Server

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass

    def send_body(self, data: bytes, content_type: str, sized: bool = True) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        if sized:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.hits[self.path] += 1
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        route = parts[0].removesuffix(".jpg")
        images = self.server.images
        if route == "img" and parts[1] in images:
            # a text Content-Type on purpose: the bytes decide, not the header
            self.send_body(images[parts[1]], "text/plain")
        elif route == "flaky" and self.server.hits[self.path] <= int(parts[1]):
            self.send_error(500)
        elif route == "flaky":
            self.send_body(images[parts[2]], "image/jpeg")
        elif route == "slow":
            self.server.release.wait(10)
            self.send_body(images["cat.jpg"], "image/jpeg")
        elif route in ("big", "big-unsized"):
            self.send_body(b"\xff\xd8\xff" + b"\0" * 200_000, "image/jpeg", route == "big")
        elif route == "html":
            self.send_body(b"<!doctype html><html><body>cat</body></html>", "image/jpeg")
        elif route == "redirect":
            self.send_response(302)
            self.send_header("Location", f"/img/{parts[1]}")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif route == "shard.tar":
            self.send_body(self.server.shard, "application/x-tar")
        else:
            self.send_error(404)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # clients that give up (timeouts, size caps) break pipes on purpose

    def __init__(self, images: dict[str, bytes], shard: bytes) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.images, self.shard = images, shard
        self.hits: Counter[str] = Counter()
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
def server(images, tmp_path_factory):
    shard = make_tar(tmp_path_factory.mktemp("served") / "shard.tar", webdataset_members(images))
    httpd = Server(images, shard.read_bytes())
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def fresh(url: str) -> str:
    """`url` with a query no earlier request used (the flaky route counts per path)."""
    return f"{url}?{uuid.uuid4().hex}"


# ---------------------------------------------------------------------------- CLI helpers


def cli(*args: object, input: bytes | str | None = None, env: dict[str, str] | None = None):
    runner = CliRunner()
    env = {"COLUMNS": "200", **(env or {})}
    return runner.invoke(app, [str(a) for a in args], input=input, env=env)


def classify(tiny: Path, *inputs: object, env: dict[str, str] | None = None, input=None):
    """(records, result) of `vithybrid classify INPUTS -k 3 --dtype float32`."""
    args = ("classify", *inputs, "--model", tiny, "-k", 3, "--dtype", "float32", "--workers", 4)
    result = cli(*args, env=env, input=input)
    assert "Traceback" not in result.stderr, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return records, result


def without_path(record: dict) -> dict:
    return {key: value for key, value in record.items() if key != "path"}


@pytest.fixture(scope="module")
def expected(tiny_checkpoint, local) -> dict[str, dict]:
    """name -> the classify record of the local file (path left out)."""
    names = list(local)
    records, result = classify(tiny_checkpoint, *(local[name] for name in names))
    assert result.exit_code == 0, result.stderr
    return {name: without_path(record) for name, record in zip(names, records, strict=True)}


def assert_same(record: dict, expected_record: dict) -> None:
    """Same labels in the same order; scores equal up to float32 batch-composition noise."""
    got, want = record["top_k"], expected_record["top_k"]
    assert [(e["index"], e["label"]) for e in got] == [(e["index"], e["label"]) for e in want]
    assert [e["score"] for e in got] == pytest.approx([e["score"] for e in want], abs=1e-5)


# ---------------------------------------------------------------------------- decoding items


class Unseekable(io.RawIOBase):
    """A pipe-like stream: reads only."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_load_image_takes_items_and_file_objects_with_draft_decoding(tmp_path):
    big = Image.new("RGB", (1200, 900))
    big.paste((200, 30, 30), (0, 0, 600, 900))
    path = tmp_path / "big.jpg"
    big.save(path, quality=90)
    data = path.read_bytes()
    reference = load_image(str(path), min_size=(64, 64))
    assert reference.size[0] < 1200  # JPEG draft mode decoded it at a reduced scale
    stream = io.BytesIO(data)
    sources_of_same_bytes = [
        InputItem("in-memory.jpg", lambda: io.BytesIO(data)),
        InputItem(str(path)),
        stream,
        io.BufferedReader(Unseekable(data)),
    ]
    for source in sources_of_same_bytes:
        image = load_image(source, min_size=(64, 64))
        assert image.size == reference.size and image.tobytes() == reference.tobytes()
    assert not stream.closed  # the caller's file object stays the caller's
    with pytest.raises(ImageError, match=r"^empty.jpg: empty file \(0 bytes\)$"):
        load_image(InputItem("empty.jpg", io.BytesIO))
    with pytest.raises(ImageError, match=r"^x.jpg: HTTP 404$"):
        load_image(InputItem("x.jpg", lambda: (_ for _ in ()).throw(SourceError("HTTP 404"))))


# ---------------------------------------------------------------------------- HTTP


def test_classify_urls_in_input_order_with_one_line_errors(
    tiny_checkpoint, server, local, expected
):
    base = server.url
    inputs = [
        f"{base}/img/cat.jpg",
        f"{base}/missing.jpg",
        fresh(f"{base}/flaky/1/rocket.jpg"),
        f"{base}/slow.jpg",
        local["coffee.png"],
        f"{base}/big.jpg",
        f"{base}/big-unsized.jpg",
        f"{base}/html.jpg",
        f"{base}/redirect/coffee.png",
        f"{base}/img/rocket.jpg",
    ]
    started = time.perf_counter()
    records, result = classify(tiny_checkpoint, *inputs, env=FAST_ENV)
    elapsed = time.perf_counter() - started
    assert result.exit_code == 1, result.stderr
    assert [r["path"] for r in records] == inputs  # the URL as given, in input order
    errors = {r["path"]: r["error"] for r in records if "error" in r}
    assert errors == {
        f"{base}/missing.jpg": "HTTP 404 Not Found",
        f"{base}/slow.jpg": "timed out",
        f"{base}/big.jpg": "larger than 0.05 MB",
        f"{base}/big-unsized.jpg": "larger than 0.05 MB",
        f"{base}/html.jpg": "not a recognized image format",
    }
    ok = {r["path"]: r for r in records if "error" not in r}
    assert_same(ok[inputs[0]], expected["cat.jpg"])
    assert_same(ok[inputs[2]], expected["rocket.jpg"])
    assert_same(ok[inputs[4]], expected["coffee.png"])
    assert_same(ok[inputs[8]], expected["coffee.png"])
    assert_same(ok[inputs[9]], expected["rocket.jpg"])
    assert server.hits[inputs[2].removeprefix(base)] == 2  # one 500, one retry
    for path, error in errors.items():
        assert f"{path}: {error}" in result.stderr
    assert "5 labeled, 5 failed" in result.stderr
    # the slow server costs two timeouts (one retry) while the other downloads go on
    assert elapsed < 30


def test_fetch_url_retries_5xx_then_gives_up(server):
    url = fresh(f"{server.url}/flaky/5/cat.jpg")
    with pytest.raises(SourceError, match=r"^HTTP 500"):
        fetch_url(url, RemoteOptions(retries=2, backoff=0.01))
    assert server.hits[url.removeprefix(server.url)] == 3  # the first try and two retries
    url = fresh(f"{server.url}/flaky/2/cat.jpg")
    assert fetch_url(url, RemoteOptions(retries=2, backoff=0.01)) == server.images["cat.jpg"]


def test_fetch_url_does_not_retry_4xx_and_connection_refused_is_one_line(server):
    with pytest.raises(SourceError, match="^HTTP 404 Not Found$"):
        fetch_url(f"{server.url}/missing", RemoteOptions(retries=3, backoff=0.01))
    assert server.hits["/missing"] == 1
    with ThreadingHTTPServer(("127.0.0.1", 0), Handler) as closed:
        port = closed.server_address[1]
    with pytest.raises(SourceError, match="^connection refused$"):
        fetch_url(f"http://127.0.0.1:{port}/x.jpg", RemoteOptions(retries=1, backoff=0.01))


def test_url_item_downloads_once_however_often_opened(server):
    url = fresh(f"{server.url}/img/cat.jpg")
    (item,) = iter_inputs([url], options=FAST)
    assert server.hits[url.removeprefix(server.url)] == 0  # listing fetches nothing
    first, second = load_image(item), load_image(item)
    assert first.tobytes() == second.tobytes()
    assert server.hits[url.removeprefix(server.url)] == 1


def test_tar_over_http_streams_its_members(server, images):
    url = f"{server.url}/shard.tar"
    results = list(iter_inputs([url], options=FAST))
    assert [r.path for r in results] == [f"{url}/000.jpg", f"{url}/001.jpg", f"{url}/002.png"]
    assert results[0].open().read() == images["cat.jpg"]


# ---------------------------------------------------------------------------- tar archives


def test_tar_members_are_inputs_and_other_members_are_skipped(tmp_path, images):
    shard = make_tar(tmp_path / "shard-000.tar", webdataset_members(images))
    results = list(iter_inputs([str(shard)]))
    assert all(isinstance(r, InputItem) for r in results)
    assert [r.path for r in results] == [f"{shard}/000.jpg", f"{shard}/001.jpg", f"{shard}/002.png"]
    assert results[0].open().read() == images["cat.jpg"]
    assert results[2].open().read() == images["coffee.png"]
    with pytest.raises(ImageError, match="001.jpg: not a recognized image format"):
        load_image(results[1])
    assert not list(tmp_path.glob("**/000.jpg"))  # nothing extracted


def test_tar_gz_in_a_directory_walk_and_a_glob(tmp_path, images):
    root = tmp_path / "shards"
    root.mkdir()
    make_tar(root / "a.tar.gz", [("x.jpg", images["cat.jpg"])], gz=True)
    make_tar(root / "b.tar", [("y.png", images["coffee.png"]), ("y.txt", b"hi")])
    (root / "c.jpg").write_bytes(images["rocket.jpg"])
    expected = [f"{root}/a.tar.gz/x.jpg", f"{root}/b.tar/y.png", f"{root}/c.jpg"]
    assert [r.path for r in iter_inputs([str(root)])] == expected
    assert [r.path for r in iter_inputs([str(root / "*.tar*")])] == expected[:2]


def test_corrupt_archive_is_one_error_and_the_batch_goes_on(tmp_path, images):
    data = make_tar(tmp_path / "whole.tar", webdataset_members(images)).read_bytes()
    truncated = tmp_path / "truncated.tar"
    cut = data.index(images["coffee.png"][:64]) + 100  # inside the last image member
    truncated.write_bytes(data[:cut])
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"this is not a tar archive at all" * 40)
    empty = make_tar(tmp_path / "empty.tar", [("notes.txt", b"no images here")])
    after = tmp_path / "after.jpg"
    after.write_bytes(images["cat.jpg"])
    results = list(iter_inputs([str(truncated), str(garbage), str(empty), str(after)]))
    summary = [(r.path, getattr(r, "message", None)) for r in results]
    assert summary[:2] == [(f"{truncated}/000.jpg", None), (f"{truncated}/001.jpg", None)]
    assert summary[2][0] == str(truncated) and summary[2][1].startswith("corrupt tar archive")
    assert summary[3][0] == str(garbage) and "tar archive" in summary[3][1]
    assert summary[4:] == [(str(empty), "archive contains no images"), (str(after), None)]


def test_tar_is_read_lazily(images):
    archive = tar_bytes([(f"{i:04d}.jpg", images["cat.jpg"]) for i in range(50)])

    class Counting(io.BytesIO):
        consumed = 0

        def read(self, size=-1):
            chunk = super().read(size)
            Counting.consumed += len(chunk)
            return chunk

    stream = Counting(archive)
    members_seen = iter_tar(stream, RemoteOptions(), lambda name, head: True)
    name, data = next(members_seen)
    assert (name, data) == ("0000.jpg", images["cat.jpg"])
    assert Counting.consumed < len(archive) / 5


def test_oversized_tar_member_is_an_error_not_read(tmp_path, images):
    shard = make_tar(tmp_path / "s.tar", [("big.jpg", b"\xff\xd8" + b"\0" * 100_000)])
    (result,) = iter_inputs([str(shard)], options=FAST)
    assert result == InputError(f"{shard}/big.jpg", "larger than 0.05 MB")


def bytes_read() -> int:
    """Bytes this process has read through system calls so far (Linux)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="reads /proc/self/io")
def test_plain_tar_members_are_read_only_when_opened(tmp_path):
    """An uncompressed archive is indexed by its headers: the members of another torchrun rank
    (or done before a --resume) are passed without reading their bytes."""
    from vithybrid_cli.pipeline.job import select

    blobs = [bytes([i]) * 200_000 for i in range(20)]
    members = [(f"{i:03d}.jpg", blob) for i, blob in enumerate(blobs)]
    members.insert(5, ("005.json", b"{}" * 50_000))  # not an image: sniffed, not read
    shard = make_tar(tmp_path / "s.tar", members)
    before = bytes_read()
    mine = list(select(iter_inputs([str(shard)]), set(), 1, 2))  # rank 1 of 2
    listing = bytes_read() - before
    assert [index for index, _ in mine] == list(range(1, 20, 2))
    assert listing < 400_000  # headers only: the archive holds 4 MB
    assert [item.open().read() for _, item in mine] == blobs[1::2]
    assert 2_000_000 <= bytes_read() - before - listing < 2_500_000  # this rank's half


def test_classify_tar_shards_match_local_files(tiny_checkpoint, tmp_path, images, expected):
    shards = tmp_path / "shards"
    shards.mkdir()
    make_tar(shards / "shard-000.tar", webdataset_members(images))
    make_tar(shards / "shard-001.tar.gz", [("k.jpg", images["rocket.jpg"])], gz=True)
    records, result = classify(tiny_checkpoint, f"{shards}/*.tar*")
    assert result.exit_code == 1, result.stderr
    assert [r["path"] for r in records] == [
        f"{shards}/shard-000.tar/000.jpg",
        f"{shards}/shard-000.tar/001.jpg",
        f"{shards}/shard-000.tar/002.png",
        f"{shards}/shard-001.tar.gz/k.jpg",
    ]
    assert records[1]["error"] == "not a recognized image format"
    assert_same(records[0], expected["cat.jpg"])
    assert_same(records[2], expected["coffee.png"])
    assert_same(records[3], expected["rocket.jpg"])


# ---------------------------------------------------------------------------- stdin


def test_stdin_and_files_from_stdin_together_is_an_error(tiny_checkpoint, images):
    result = cli("classify", "-", "--files-from", "-", "--model", tiny_checkpoint)
    assert result.exit_code == 2
    assert "--files-from cannot also be '-'" in result.stderr


def test_classify_stdin_matches_the_local_file(tiny_checkpoint, images, expected):
    records, result = classify(tiny_checkpoint, "-", input=images["coffee.png"])
    assert result.exit_code == 0, result.stderr
    assert [r["path"] for r in records] == ["-"]
    assert_same(records[0], expected["coffee.png"])


def test_stdin_item_is_read_once_and_capped(images):
    stream = io.TextIOWrapper(io.BytesIO(images["cat.jpg"]))
    results = list(iter_inputs(["-", "-"], stdin=stream))
    assert [r.path for r in results] == ["-", "-"]
    assert all(r.open().read() == images["cat.jpg"] for r in results)
    big = io.TextIOWrapper(io.BytesIO(b"\0" * 100_000))
    assert list(iter_inputs(["-"], stdin=big, options=FAST)) == [
        InputError("-", "larger than 0.05 MB")
    ]


def script_path() -> str:
    beside = Path(sys.executable).parent / "vithybrid"
    found = str(beside) if beside.exists() else shutil.which("vithybrid")
    assert found, "the vithybrid script is not installed (pip install -e .)"
    return found


@pytest.mark.slow
def test_installed_script_reads_an_image_from_stdin(tiny_checkpoint, local, images):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [script_path(), "classify", "-", local["cat.jpg"], "--model", str(tiny_checkpoint)]
    command += ["-k", "3", "--dtype", "float32"]
    result = subprocess.run(
        command, input=images["cat.jpg"], capture_output=True, env=env, timeout=180
    )
    assert result.returncode == 0, result.stderr.decode()
    piped, from_file = (json.loads(line) for line in result.stdout.decode().splitlines())
    assert piped["path"] == "-"
    assert without_path(piped) == without_path(from_file)


# ---------------------------------------------------------------------------- fsspec


@pytest.fixture
def bucket(images):
    """A fresh tree in fsspec's memory filesystem: memory://NAME/ (removed afterwards)."""
    import fsspec

    fs = fsspec.filesystem("memory")
    name = f"bucket-{uuid.uuid4().hex[:8]}"
    fs.pipe(f"/{name}/b/rocket.jpg", images["rocket.jpg"])
    fs.pipe(f"/{name}/a.jpg", images["cat.jpg"])
    fs.pipe(f"/{name}/c/deeper/coffee.png", images["coffee.png"])
    fs.pipe(f"/{name}/notes.txt", b"not an image")
    fs.pipe(f"/{name}/.hidden.jpg", images["cat.jpg"])
    fs.pipe(f"/{name}/shard.tar", tar_bytes([("m.jpg", images["cat.jpg"])]))
    yield name
    fs.rm(f"/{name}", recursive=True)


def test_bucket_prefix_lists_recursively_in_name_order(bucket):
    prefix = f"memory://{bucket}"
    paths = [r.path for r in iter_inputs([prefix + "/"])]
    assert paths == [
        f"{prefix}/a.jpg",
        f"{prefix}/b/rocket.jpg",
        f"{prefix}/c/deeper/coffee.png",
        f"{prefix}/shard.tar/m.jpg",
    ]
    assert [r.path for r in iter_inputs([prefix])] == paths


def test_bucket_glob_and_single_object(bucket, images):
    prefix = f"memory://{bucket}"
    assert [r.path for r in iter_inputs([f"{prefix}/**/*.jpg"])] == [
        f"{prefix}/a.jpg",
        f"{prefix}/b/rocket.jpg",
    ]
    assert [r.path for r in iter_inputs([f"{prefix}/*/*/*.png"])] == [
        f"{prefix}/c/deeper/coffee.png"
    ]
    (item,) = iter_inputs([f"{prefix}/b/rocket.jpg"])
    with item.open() as handle:  # a streaming file object, not a download
        assert handle.read(3) == images["rocket.jpg"][:3]
    assert list(iter_inputs([f"{prefix}/*.gif"])) == [
        InputError(f"{prefix}/*.gif", "glob matched no files")
    ]
    (missing,) = iter_inputs([f"{prefix}/missing.jpg"])
    with pytest.raises(ImageError, match="missing.jpg: no such file or directory"):
        load_image(missing)
    big = list(iter_inputs([f"{prefix}/b/"], options=RemoteOptions(max_download_mb=0.001)))
    with pytest.raises(ImageError, match="larger than 0.001 MB"):
        load_image(big[0])


def test_bucket_images_decode_like_local_files(bucket, local):
    from vithybrid_cli.model.config import PreprocessConfig

    config = PreprocessConfig()
    items = {Path(r.path).name: r for r in iter_inputs([f"memory://{bucket}/"])}
    for name in ("rocket.jpg", "coffee.png"):
        np.testing.assert_array_equal(
            load_and_preprocess(items[name], config), load_and_preprocess(local[name], config)
        )


def test_classify_bucket_matches_local_files(tiny_checkpoint, bucket, expected):
    records, result = classify(tiny_checkpoint, f"memory://{bucket}/")
    assert result.exit_code == 0, result.stderr
    by_name = {r["path"].rsplit("/", 1)[1]: r for r in records}
    assert_same(by_name["rocket.jpg"], expected["rocket.jpg"])
    assert_same(by_name["coffee.png"], expected["coffee.png"])
    assert_same(by_name["a.jpg"], expected["cat.jpg"])


def test_missing_cloud_extra_is_an_install_hint(monkeypatch, tiny_checkpoint):
    monkeypatch.setitem(sys.modules, "fsspec", None)  # `import fsspec` now raises ImportError
    (result,) = iter_inputs(["s3://bucket/photos/"])
    assert result.path == "s3://bucket/photos/"
    assert (
        result.message == 'install the cloud extra: pip install "vithybrid[cloud]" (needs fsspec)'
    )
    # On the command line it stops the run at once (before the model loads): one line, exit 2
    for spec in ("s3://bucket/photos/", "gs://bucket/cat.jpg"):
        records, cli_result = classify(tiny_checkpoint, spec, tiny_checkpoint / "missing.jpg")
        assert cli_result.exit_code == 2 and records == []
        assert cli_result.stderr.splitlines() == [f"error: {spec}: {result.message}"]


def test_missing_protocol_package_is_named_by_the_cli(monkeypatch, tiny_checkpoint):
    monkeypatch.setitem(sys.modules, "s3fs", None)
    _, result = classify(tiny_checkpoint, "s3://bucket/cat.jpg")
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("error: s3://bucket/cat.jpg: install the cloud extra")
    assert line.endswith("(needs s3fs)")


def test_missing_protocol_package_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)
    monkeypatch.setitem(sys.modules, "adlfs", None)
    (s3,) = iter_inputs(["s3://bucket/cat.jpg"])
    (az,) = iter_inputs(["az://container/photos/"])
    assert s3.message.endswith("(needs s3fs)") and "vithybrid[cloud]" in s3.message
    assert az.message.endswith("(needs adlfs)")
    # the same line as require's for a missing module (extras.missing words both)
    assert s3.message == 'install the cloud extra: pip install "vithybrid[cloud]" (needs s3fs)'
    with pytest.raises(extras.MissingExtra, match=r"\(needs s3fs\)$") as raised:
        sources.require_protocol("s3://bucket/cat.jpg")
    assert str(raised.value) == s3.message
    sources.require_protocol("memory://bucket/")  # installed
    sources.require_protocol("no-such-scheme://x/")  # unknown: its input's error says so


def test_require_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(extras.MissingExtra, match=r'vithybrid\[parquet\]" \(needs pyarrow\)'):
        extras.require("pyarrow", "parquet")


# ---------------------------------------------------------------------------- mixing


def test_files_from_lines_mix_every_kind_in_order(server, tmp_path, images, local):
    shard = make_tar(tmp_path / "s.tar", [("m.png", images["coffee.png"])])
    listing = tmp_path / "list.txt"
    url = f"{server.url}/img/cat.jpg"
    listing.write_text(f"# a comment\n{url}\n{shard}\n\n{local['rocket.jpg']}\n")
    results = list(iter_inputs([local["cat.jpg"]], files_from=str(listing)))
    assert [r.path for r in results] == [
        local["cat.jpg"],
        url,
        f"{shard}/m.png",
        local["rocket.jpg"],
    ]
    assert [load_image(r).size for r in results] == [(96, 64)] * 4


def test_cheap_to_count():
    assert cheap_to_count(["photos/", "a.jpg", "photos/**/*.png"])
    assert cheap_to_count(["a.jpg"], files_from="list.txt")
    assert cheap_to_count(["shards/*.tar", "x.TAR"])  # headers list a local uncompressed archive
    specs_list = (["-"], ["http://h/a.jpg"], ["s3://b/"], ["x.tar.gz"], ["shards/*.tar*"])
    specs_list += (["http://h/s.tar"],)
    for specs in specs_list:
        assert not cheap_to_count(["a.jpg", *specs]), specs
    assert not cheap_to_count(["a.jpg"], files_from="-")


def test_resume_keys_are_record_paths_for_urls_and_tar_members(
    tiny_checkpoint, server, tmp_path, images
):
    shard = make_tar(tmp_path / "s.tar", webdataset_members(images))
    flaky = fresh(f"{server.url}/flaky/3/rocket.jpg")  # fails a first run (2 tries), then works
    good = f"{server.url}/img/cat.jpg"
    out = tmp_path / "out.jsonl"
    args = (good, flaky, shard, "-o", out, "--resume")
    _, first = classify(tiny_checkpoint, *args, env=FAST_ENV)
    assert first.exit_code == 1, first.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["path"] for r in records if "error" in r} == {flaky, f"{shard}/001.jpg"}
    good_hits = server.hits[good.removeprefix(server.url)]
    assert good_hits >= 1
    _, second = classify(tiny_checkpoint, *args, env=FAST_ENV)
    assert server.hits[good.removeprefix(server.url)] == good_hits  # done: not fetched again
    records = [json.loads(line) for line in out.read_text().splitlines()]
    paths = [r["path"] for r in records]
    assert sorted(paths) == sorted(
        [good, flaky, f"{shard}/000.jpg", f"{shard}/001.jpg", f"{shard}/002.png"]
    )
    assert [r["path"] for r in records if "error" in r] == [f"{shard}/001.jpg"]
    assert second.exit_code == 1  # the corrupt member is still corrupt


# ---------------------------------------------------------------------------- through the CLI


def test_url_stdin_and_tar_shards_label_like_the_local_file(tiny_checkpoint, server, tmp_path,
                                                            images, local):  # fmt: skip
    """The issue's done-when: `classify http://127.0.0.1:PORT/cat.jpg`, `classify - < cat.jpg`
    and `classify shards/*.tar` give the labels and scores of `classify cat.jpg`, exactly."""
    shards = tmp_path / "shards"
    shards.mkdir()
    make_tar(shards / "shard-000.tar", [("cat.jpg", images["cat.jpg"]), ("cat.json", b"{}")])
    [from_file], _ = classify(tiny_checkpoint, local["cat.jpg"])
    [from_url], _ = classify(tiny_checkpoint, f"{server.url}/img/cat.jpg")
    [from_stdin], _ = classify(tiny_checkpoint, "-", input=images["cat.jpg"])
    [from_tar], _ = classify(tiny_checkpoint, f"{shards}/*.tar")
    assert [from_url["path"], from_stdin["path"], from_tar["path"]] == [
        f"{server.url}/img/cat.jpg",
        "-",
        f"{shards}/shard-000.tar/cat.jpg",
    ]
    reference = without_path(from_file)
    assert len(reference["top_k"]) == 3
    assert without_path(from_url) == reference  # labels, indices, scores: equal
    assert without_path(from_stdin) == reference
    assert without_path(from_tar) == reference


def test_max_download_mb_on_the_command_line(tiny_checkpoint, server, tmp_path, images, local):
    shard = make_tar(tmp_path / "s.tar", [("big.jpg", b"\xff\xd8\xff" + b"\0" * 150_000),
                                          ("ok.jpg", images["cat.jpg"])])  # fmt: skip
    inputs = [f"{server.url}/big.jpg", f"{server.url}/img/rocket.jpg", shard, local["cat.jpg"]]
    records, result = classify(tiny_checkpoint, *inputs, "--max-download-mb", "0.1")
    assert result.exit_code == 1, result.stderr
    assert [r["path"] for r in records] == [
        inputs[0], inputs[1], f"{shard}/big.jpg", f"{shard}/ok.jpg", local["cat.jpg"]
    ]  # fmt: skip
    errors = [(r["path"], r.get("error")) for r in records]
    assert errors[0] == (inputs[0], "larger than 0.1 MB")
    assert errors[2] == (f"{shard}/big.jpg", "larger than 0.1 MB")
    assert all("top_k" in records[i] for i in (1, 3, 4))
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines == [f"error: {inputs[0]}: larger than 0.1 MB", f"error: {shard}/big.jpg: larger "
                     "than 0.1 MB"]  # fmt: skip
    assert "3 labeled, 2 failed" in result.stderr
    # without the option the cap is the default (64 MB): the big ones are read and decoded
    # (they are zeros after a JPEG marker: a decode error, not a size error)
    records, result = classify(tiny_checkpoint, f"{server.url}/big.jpg", shard)
    assert [r["path"] for r in records] == [inputs[0], f"{shard}/big.jpg", f"{shard}/ok.jpg"]
    assert "error" in records[0] and "error" in records[1] and "top_k" in records[2]
    assert "larger than" not in result.stderr


def test_attention_map_of_a_url_stdin_and_tar_members(tiny_checkpoint, server, tmp_path, images):
    """Overlays of images that are not local files: one download each, the decode reused."""
    model = ("--model", tiny_checkpoint, "-q")
    url = fresh(f"{server.url}/img/cat.jpg")
    result = cli("attention-map", url, "-o", tmp_path / "url.png", *model)
    assert result.exit_code == 0, result.stderr
    assert server.hits[url.removeprefix(server.url)] == 1  # no second download for the picture
    result = cli("attention-map", "-", "-o", tmp_path / "stdin.png", *model,
                 input=images["coffee.png"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    shard = make_tar(tmp_path / "s.tar", webdataset_members(images))
    result = cli("attention-map", shard, "-d", tmp_path / "maps", *model)
    assert result.exit_code == 1 and "001.jpg: not a recognized image format" in result.stderr
    shard_url = f"{server.url}/shard.tar"
    before = server.hits["/shard.tar"]
    result = cli("attention-map", shard_url, "-d", tmp_path / "served", *model)
    assert result.exit_code == 1, result.stderr
    assert server.hits["/shard.tar"] == before + 1  # the archive is read once
    for png, size in [
        (tmp_path / "url.png", (96, 64)),
        (tmp_path / "stdin.png", (96, 64)),
        (tmp_path / "maps" / "000.png", (96, 64)),
        (tmp_path / "maps" / "002.png", (96, 64)),
        (tmp_path / "served" / "000.png", (96, 64)),
    ]:
        with Image.open(png) as picture:
            assert picture.format == "PNG" and picture.size == size, png
    assert sorted(os.listdir(tmp_path / "maps")) == ["000.png", "002.png"]
    # --output names one picture: an archive on a server is not read twice to count its
    # members, so a second member fails alone (the first picture is kept)
    before = server.hits["/shard.tar"]
    result = cli("attention-map", shard_url, "-o", tmp_path / "one.png", *model)
    assert result.exit_code == 1 and server.hits["/shard.tar"] == before + 1
    assert "002.png: more than one input: use --output-dir" in result.stderr
    assert (tmp_path / "one.png").is_file()
