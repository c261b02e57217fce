"""`vithybrid review`: the label API over HTTP (Starlette's TestClient), its refusals, the real
server as a subprocess on 127.0.0.1, and the edit page in chromium (as tests/test_report.py
drives it: Debian's chromium through playwright, no browser download)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import checkpoints
import pytest
from test_cli import assert_clean_error, cli, script_path, subprocess_env
from test_report import CHROMIUM, CHROMIUM_FLAGS, top, write_records

from vithybrid_cli.io.corrections import read_correction_lines, read_corrections
from vithybrid_cli.report.page import render_page
from vithybrid_cli.report.review import create_app, open_session, own_hosts, review_page, url_of

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

TOKEN = "the-token"
RECORDS = [
    {"path": "photos/cat.jpg", "top_k": top(("cat", 0.9), ("dog", 0.05))},
    {"path": "photos/dog.jpg", "top_k": top(("dog", 0.5), ("cat", 0.45))},
    {"path": "photos/broken.jpg", "error": "cannot identify image file"},
    {"path": "photos/coffee.jpg", "top_k": top(("cat", 0.6), ("mug", 0.2))},
]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A folder holding photos/ (three real photographs) and labels.jsonl naming them."""
    root = tmp_path_factory.mktemp("review")
    (root / "photos").mkdir()
    for name, image in zip(["cat", "dog", "coffee"], checkpoints.photographs(3), strict=True):
        image.convert("RGB").resize((160, 120)).save(root / "photos" / f"{name}.jpg")
    write_records(root / "labels.jsonl", RECORDS, top_k=2)
    return root


def session_of(root: Path, output: Path, **options):
    return open_session(str(root / "labels.jsonl"), str(output), bases=[root],
                        folder=output.with_name("thumbs"), **options)  # fmt: skip


@pytest.fixture
def client(photos, tmp_path):
    output = tmp_path / "fixes.jsonl"
    session = session_of(photos, output)
    with TestClient(create_app(session, TOKEN, ["testserver"])) as client:
        client.output = output
        yield client


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------------------- the API


def test_a_label_posted_is_on_disk_and_answered_with_the_correction(client):
    answer = client.post("/api/labels", json={"path": "photos/cat.jpg", "label": "dog"},
                         headers=bearer())  # fmt: skip
    assert answer.status_code == 200, answer.text
    recorded = answer.json()
    assert [recorded[key] for key in ("path", "label", "was")] == ["photos/cat.jpg", "dog", "cat"]
    lines = read_correction_lines(client.output)
    assert [line.record() for line in lines] == [recorded]
    # accepting keeps the shown label: "was" is now the corrected one
    again = client.post("/api/labels", json={"path": "photos/cat.jpg", "label": "dog"},
                        headers=bearer()).json()  # fmt: skip
    assert again["was"] == "dog"
    items = client.get("/api/items", headers=bearer()).json()
    assert [(item["path"], item["label"], item["reviewed"]) for item in items] == [
        ("photos/cat.jpg", "dog", True),
        ("photos/dog.jpg", "dog", False),
        ("photos/coffee.jpg", "cat", False),
    ]
    assert client.get("/api/labels", headers=bearer()).json() == {"labels": ["cat", "dog", "mug"]}


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), (bearer("wrong"), 403), ({"Authorization": "Basic the-token"}, 401)],
)
def test_an_api_call_without_the_right_token_is_refused(client, headers, status):
    answer = client.post("/api/labels", json={"path": "photos/cat.jpg", "label": "dog"},
                         headers=headers)  # fmt: skip
    assert answer.status_code == status
    assert client.get("/api/items", headers=headers).status_code == status
    assert not client.output.exists()


def test_the_page_and_thumbnails_need_the_token_too(client):
    assert client.get("/").status_code == 401
    assert client.get("/?token=wrong").status_code == 403
    page = client.get(f"/?token={TOKEN}")
    assert page.status_code == 200 and '"edit"' in page.text
    assert "connect-src 'self'" in page.text
    assert client.get("/thumbs/0").status_code == 401
    thumb = client.get(f"/thumbs/0?token={TOKEN}")
    assert thumb.status_code == 200 and len(thumb.content) > 100
    assert client.get(f"/thumbs/3?token={TOKEN}").status_code == 404  # three photos: 0..2


def test_another_sites_origin_or_host_is_refused(client):
    body = {"path": "photos/cat.jpg", "label": "dog"}
    evil = client.post(
        "/api/labels", json=body, headers={**bearer(), "Origin": "http://evil.example"}
    )
    assert evil.status_code == 403
    rebound = client.post("/api/labels", json=body, headers={**bearer(), "Host": "evil.example"})
    assert rebound.status_code == 403
    assert not client.output.exists()
    own = client.post("/api/labels", json=body, headers={**bearer(), "Origin": "http://testserver"})
    assert own.status_code == 200


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"path": "photos/elsewhere.jpg", "label": "dog"}, 404),  # not a photo of SOURCE
        ({"path": "../../etc/passwd", "label": "dog"}, 404),
        ({"path": "photos/broken.jpg", "label": "dog"}, 404),  # failed: nothing to see
        ({"path": "photos/cat.jpg", "label": "zebra"}, 400),  # not in the label set
        ({"path": "photos/cat.jpg"}, 400),
        ([1, 2], 400),
    ],
)
def test_only_sources_paths_and_the_label_set_are_written(client, body, status):
    answer = client.post("/api/labels", json=body, headers=bearer())
    assert answer.status_code == status, answer.text
    assert "error" in answer.json()
    assert not client.output.exists()


def test_thumbnails_are_served_by_index_only(client):
    for url in ("/thumbs/..%2F..%2Fetc%2Fpasswd", "/thumbs/-1", "/photos/cat.jpg",
                "/thumbs/photos/cat.jpg"):  # fmt: skip
        answer = client.get(f"{url}?token={TOKEN}")
        assert answer.status_code == 404, url


def test_labels_option_and_corrections_so_far_shape_the_page(photos, tmp_path):
    output = tmp_path / "fixes.jsonl"
    output.write_text(
        '{"path": "photos/dog.jpg", "label": "mug", "was": "dog", "time": ""}\n'
        '{"path": "elsewhere.jpg", "label": "x", "was": null, "time": ""}\n'
    )
    session = session_of(photos, output, extra_labels=["zebra", "cat"])
    assert session.labels == ["cat", "dog", "mug", "zebra"]
    page = review_page(session, TOKEN)
    assert [tile.title for tile in page.tiles] == ["cat", "mug", "cat"]
    assert page.edit["reviewed"] == [1] and page.edit["start"] == 0
    assert page.edit["original"] == ["cat", "dog", "cat"]
    assert "the-token" in render_page(page)


def test_an_issues_file_is_read_by_its_fields(photos, tmp_path):
    issues = tmp_path / "issues.jsonl"
    lines = [
        {"path": str(photos / "photos/dog.jpg"), "label": "cat", "suggested": "dog", "score": 0.1,
         "kind": "label"},
        {"path": str(photos / "photos/cat.jpg"), "label": "cat", "suggested": "owl", "score": 0.4,
         "kind": "label"},
    ]  # fmt: skip
    issues.write_text("".join(json.dumps(line) + "\n" for line in lines))
    output = tmp_path / "fixes.jsonl"
    session = open_session(str(issues), str(output), folder=tmp_path / "thumbs")
    assert session.labels == ["cat", "dog", "owl"]
    page = review_page(session, TOKEN)
    assert page.tiles[0].detail.startswith("suggested dog")
    with TestClient(create_app(session, TOKEN, ["testserver"])) as client:
        answer = client.post("/api/labels", json={"path": lines[0]["path"], "label": "dog"},
                             headers=bearer())  # fmt: skip
    assert answer.status_code == 200
    assert read_corrections(output) == {lines[0]["path"]: "dog"}


# ---------------------------------------------------------------------------- the command


def test_a_source_that_is_neither_results_nor_issues_is_one_line(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    result = cli("review", notes, "-o", tmp_path / "fixes.jsonl", "--no-browser")
    assert_clean_error(result, "notes.txt", "not a classify output")
    assert len(result.stderr.strip().splitlines()) == 1
    vectors = tmp_path / "vectors.jsonl"
    vectors.write_text('{"id": 1}\n')
    assert_clean_error(cli("review", vectors, "-o", tmp_path / "f.jsonl", "--no-browser"),
                       "vectors.jsonl")  # fmt: skip


def test_output_in_a_missing_folder_is_one_line(photos, tmp_path):
    result = cli("review", photos / "labels.jsonl", "-o", tmp_path / "nowhere/fixes.jsonl",
                 "--no-browser")  # fmt: skip
    assert_clean_error(result, "nowhere", "does not exist")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_port_in_use_is_one_line(photos, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("review", photos / "labels.jsonl", "-o", tmp_path / "fixes.jsonl",
                     "--port", port, "--no-browser")  # fmt: skip
    assert_clean_error(result, f"--port {port}", "in use")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "fixes.jsonl").exists()


def test_a_corrections_file_that_is_not_one_is_one_line(photos, tmp_path):
    output = tmp_path / "fixes.jsonl"
    output.write_text("not json\n")
    result = cli("review", photos / "labels.jsonl", "-o", output, "--no-browser")
    assert_clean_error(result, "fixes.jsonl:1", "not a corrections line")
    assert output.read_text() == "not json\n"


def test_without_the_review_extra_the_hint_is_one_line(photos, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn fails
    result = cli("review", photos / "labels.jsonl", "-o", tmp_path / "fixes.jsonl", "--no-browser")
    assert_clean_error(result, 'pip install "vithybrid[review]"', "uvicorn")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_server_on_every_address_answers_any_host_name_with_the_token(photos, tmp_path):
    assert own_hosts("0.0.0.0", 8000) is None
    assert url_of("0.0.0.0", 8000, TOKEN) == f"http://127.0.0.1:8000/?token={TOKEN}"
    assert "localhost:8000" in own_hosts("127.0.0.1", 8000)
    session = session_of(photos, tmp_path / "fixes.jsonl")
    with TestClient(create_app(session, TOKEN, None)) as client:
        headers = {"Host": "my-machine.lan:8000"}
        assert client.get("/api/labels", headers={**headers, **bearer()}).status_code == 200
        assert client.get("/api/labels", headers=headers).status_code == 401


def test_the_command_opens_the_browser_and_says_what_is_on_disk_when_stopped(
    photos, tmp_path, monkeypatch
):
    opened, served = [], []
    monkeypatch.setattr("webbrowser.open", opened.append)

    def serve(app, sock):  # a decision, then Ctrl-C
        assert sock.getsockname()[0] == "127.0.0.1"
        with TestClient(app, base_url=f"http://127.0.0.1:{sock.getsockname()[1]}") as client:
            token = opened[0].split("token=")[1]
            body = {"path": "photos/dog.jpg", "label": "cat"}
            served.append(client.post("/api/labels", json=body, headers=bearer(token)))

    monkeypatch.setattr("vithybrid_cli.report.review.serve", serve)
    monkeypatch.chdir(photos.parent)  # relative paths: found from SOURCE's folder
    output = tmp_path / "fixes.jsonl"
    result = cli("review", photos / "labels.jsonl", "-o", output)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == opened[0]
    assert served[0].status_code == 200
    assert "3 photos (0 reviewed), 3 labels" in result.stderr and "not found" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"stopped: 1 decision in {output}"
    # elsewhere, its images are not found: a warning, and the decisions so far still count
    monkeypatch.setattr("vithybrid_cli.report.review.serve", lambda app, sock: None)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(photos / "labels.jsonl", elsewhere)
    monkeypatch.chdir(tmp_path)
    moved = cli("review", elsewhere / "labels.jsonl", "-o", output, "--no-browser")
    assert moved.exit_code == 0, moved.stderr
    assert "3 photos (1 reviewed)" in moved.stderr
    assert "warning: 3 images not found" in moved.stderr and "--root DIR" in moved.stderr
    assert moved.stderr.strip().splitlines()[-1] == f"stopped: 1 decision in {output}"


class Server:
    """`vithybrid review --no-browser` as a real process; its URL read from stdout."""

    def __init__(self, root: Path, output: Path, *args: str) -> None:
        command = [script_path(), "review", "labels.jsonl", "-o", str(output), "--no-browser",
                   "--quiet", *args]  # fmt: skip
        self.process = subprocess.Popen(command, cwd=root, env=subprocess_env(),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)  # fmt: skip
        line = self.process.stdout.readline()
        found = re.fullmatch(r"(http://127\.0\.0\.1:(\d+))/\?token=([\w-]+)\n", line)
        if not found:
            self.process.kill()
            raise AssertionError((line, self.process.stderr.read()))
        self.url, self.base, self.port, self.token = line.strip(), *found.groups()
        self.port = int(self.port)

    def request(self, path: str, body: dict | None = None, **headers: str) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def stop(self) -> tuple[int, str]:
        os.kill(self.process.pid, signal.SIGINT)
        _, stderr = self.process.communicate(timeout=30)
        return self.process.returncode, stderr


def listening_addresses(pid: int, port: int) -> set[str]:
    """The local addresses of `pid`'s listening TCP sockets on `port`, from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                address, state, inode = fields[1], fields[3], fields[9]
                host, hex_port = address.split(":")
                if state == "0A" and inode in inodes and int(hex_port, 16) == port:  # LISTEN
                    found.add(host)
    return found


@pytest.mark.slow
def test_the_real_server_listens_on_127_0_0_1_and_checks_every_request(photos, tmp_path):
    output = tmp_path / "fixes.jsonl"
    server = Server(photos, output)
    try:
        assert listening_addresses(server.process.pid, server.port) == {"0100007F"}  # 127.0.0.1
        body = {"path": "photos/dog.jpg", "label": "cat"}
        assert server.request("/api/labels", body)[0] == 401
        assert server.request("/api/labels", body, Authorization="Bearer nope")[0] == 403
        auth = f"Bearer {server.token}"
        evil = server.request("/api/labels", body, Authorization=auth, Origin="http://evil.example")
        assert evil[0] == 403
        assert not output.exists()
        status, text = server.request("/api/labels", body, Authorization=auth,
                                      Origin=server.base)  # fmt: skip
        assert status == 200 and json.loads(text)["was"] == "dog"
        assert read_corrections(output) == {"photos/dog.jpg": "cat"}  # on disk before the answer
        assert server.request(f"/?token={server.token}")[0] == 200
    finally:
        status, stderr = server.stop()
    assert status == 0, stderr
    assert stderr.strip().splitlines()[-1] == f"stopped: 1 decision in {output}"


# ---------------------------------------------------------------------------- in chromium


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium): no browser to open")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield launched, sync_api.expect
        launched.close()


def open_edit_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.wait_for_selector("#groups .tile")
    page.wait_for_function("document.activeElement.classList.contains('tile')")
    return page, errors


@pytest.mark.slow
def test_keys_in_the_browser_write_corrections_that_a_restart_shows(photos, tmp_path, browser):
    launched, expect = browser
    output = tmp_path / "fixes.jsonl"
    server = Server(photos, output)
    try:
        page, errors = open_edit_page(launched, server.url)
        tiles = page.locator("#groups .tile")
        expect(tiles).to_have_count(3)
        for image in page.locator("#groups .tile img").all():  # thumbnails load, with the token
            assert image.evaluate("i => i.decode().then(() => i.naturalWidth)") > 0
        assert page.evaluate("document.activeElement.dataset.index") == "0"
        page.keyboard.press("2")  # the second label of the set: dog
        expect(tiles.nth(0).locator(".label")).to_have_text("dog")
        assert read_corrections(output) == {"photos/cat.jpg": "dog"}
        assert page.evaluate("document.activeElement.dataset.index") == "1"
        page.keyboard.press("Enter")  # accept dog for dog.jpg
        expect(tiles.nth(1)).to_have_class(re.compile(r"\breviewed\b"))
        page.keyboard.type("mu")  # type-ahead: mug
        expect(page.locator("#edit .match")).to_contain_text("mug")
        page.keyboard.press("Enter")
        expect(tiles.nth(2).locator(".label")).to_have_text("mug")
        page.keyboard.press("ArrowLeft")
        assert page.evaluate("document.activeElement.dataset.index") == "1"
        expect(page.locator("#edit .progress")).to_have_text("3 of 3 reviewed")
        assert errors == []
        page.close()
    finally:
        status, _ = server.stop()  # killed with its decisions on disk
    assert status == 0
    assert [(line.path, line.label, line.was) for line in read_correction_lines(output)] == [
        ("photos/cat.jpg", "dog", "cat"),
        ("photos/dog.jpg", "dog", "dog"),
        ("photos/coffee.jpg", "mug", "cat"),
    ]
    server = Server(photos, output)  # a restart shows the corrected labels
    try:
        page, errors = open_edit_page(launched, server.url)
        labels = page.locator("#groups .tile .label").all_inner_texts()
        assert [label.removeprefix("✓ ") for label in labels] == ["dog", "dog", "mug"]
        assert page.locator("#groups .tile.reviewed").count() == 3
        assert errors == []
        page.close()
    finally:
        server.stop()


@pytest.mark.slow
def test_a_static_report_keeps_no_edit_bar_and_enter_opens_the_viewer(photos, tmp_path, browser):
    from vithybrid_cli.report.gallery import build_gallery

    launched, expect = browser
    target = tmp_path / "report.html"
    build_gallery(str(photos / "labels.jsonl"), str(target))
    page = launched.new_page(viewport={"width": 1280, "height": 900})
    page.goto(target.as_uri())
    page.wait_for_selector("#groups .tile")
    assert not page.locator("#edit").is_visible()
    assert "connect-src" not in page.content()  # a static page talks to no server
    page.locator("#groups .tile").first.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#viewer")).to_be_visible()
    page.close()


def test_labels_and_labels_from_add_to_the_label_set(photos, tmp_path, monkeypatch):
    apps = []
    monkeypatch.setattr("vithybrid_cli.report.review.serve", lambda app, sock: apps.append(app))
    more = tmp_path / "more.txt"
    more.write_text("owl\n\ncat\n")
    output = tmp_path / "fixes.jsonl"
    result = cli("review", photos / "labels.jsonl", "-o", output, "--no-browser",
                 "--labels", "zebra, owl", "--labels-from", more)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    token = result.stdout.strip().split("token=")[1]
    with TestClient(apps[0], base_url=result.stdout.strip().split("/?")[0]) as client:
        labels = client.get("/api/labels", headers=bearer(token)).json()["labels"]
    assert labels == ["cat", "dog", "mug", "zebra", "owl"]
    missing = cli("review", photos / "labels.jsonl", "-o", output, "--no-browser",
                  "--labels-from", tmp_path / "nowhere.txt")  # fmt: skip
    assert_clean_error(missing, "nowhere.txt")
