"""Finding images: files, directories, globs and list files, streamed lazily and in order."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest

from vithybrid_cli.data import walk
from vithybrid_cli.data.formats import decodable_extensions
from vithybrid_cli.data.inputs import iter_inputs
from vithybrid_cli.data.items import (
    InputError,
    InputItem,
    display_path,
)

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 16
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
GIF = b"GIF89a" + b"\x00" * 16
WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8 "
TIFF = b"II*\x00" + b"\x00" * 16
BMP = b"BM" + b"\x10\x00\x00\x00" + b"\x00\x00\x00\x00" + b"\x36\x00\x00\x00"


def _touch(path: Path, data: bytes = JPEG) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _paths(results) -> list[str]:
    return [r.path if isinstance(r, InputItem) else f"ERR {r.path}: {r.message}" for r in results]


def _rel(results, base: Path) -> list[str]:
    return [os.path.relpath(p, base) if not p.startswith("ERR") else p for p in _paths(results)]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    _touch(root / "b.jpg")
    _touch(root / "a.PNG", PNG)
    _touch(root / "sub" / "z.gif", GIF)
    _touch(root / "sub" / "deeper" / "x.webp", WEBP)
    _touch(root / "c.tiff", TIFF)
    _touch(root / "notes.txt", b"hello")
    _touch(root / "README", b"BMW owners manual")
    _touch(root / "noext_jpeg", JPEG)
    _touch(root / "scan.dat", BMP)
    _touch(root / ".hidden.jpg")
    _touch(root / ".cache" / "thumb.jpg")
    _touch(root / "sub" / ".git" / "y.png", PNG)
    return root


def test_extensions_cover_pillow_defaults():
    assert {".jpg", ".jpeg", ".png", ".webp", ".tif", ".bmp", ".gif"} <= decodable_extensions()


def test_directory_walk_is_sorted_depth_first_with_sniffing(tree):
    assert _rel(iter_inputs([str(tree)]), tree) == [
        "a.PNG",
        "b.jpg",
        "c.tiff",
        "noext_jpeg",
        "scan.dat",
        os.path.join("sub", "deeper", "x.webp"),
        os.path.join("sub", "z.gif"),
    ]


def test_order_equals_sorting_by_components(tmp_path):
    root = tmp_path / "r"
    for name in ("a-b/1.jpg", "a/2.jpg", "a.jpg", "B.jpg", "a/b/c.jpg", "ab.jpg"):
        _touch(root / name)
    found = _paths(iter_inputs([str(root)]))
    assert found == sorted(found, key=lambda p: os.fsencode(p).split(b"/"))
    assert len(found) == 6


def test_explicit_file_is_yielded_whatever_its_extension(tree):
    notes = str(tree / "notes.txt")
    hidden = str(tree / ".hidden.jpg")
    assert list(iter_inputs([notes, hidden])) == [InputItem(notes), InputItem(hidden)]


def test_specs_keep_their_order_and_spelling(tree, monkeypatch):
    monkeypatch.chdir(tree)
    results = list(iter_inputs(["sub", "b.jpg", "./a.PNG"]))
    assert _paths(results) == [
        os.path.join("sub", "deeper", "x.webp"),
        os.path.join("sub", "z.gif"),
        "b.jpg",
        "./a.PNG",
    ]


def test_missing_path_and_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    _touch(tmp_path / "textonly" / "a.txt", b"text")
    missing = str(tmp_path / "missing.jpg")
    results = list(iter_inputs([missing, str(tmp_path / "empty"), str(tmp_path / "textonly")]))
    assert results == [
        InputError(missing, "no such file or directory"),
        InputError(str(tmp_path / "empty"), "directory contains no images"),
        InputError(str(tmp_path / "textonly"), "directory contains no images"),
    ]


def test_broken_symlink_spec(tmp_path):
    link = tmp_path / "dangling.jpg"
    os.symlink(tmp_path / "gone.jpg", link)
    assert list(iter_inputs([str(link)])) == [InputError(str(link), "broken symbolic link")]


def test_glob(tree):
    pattern = str(tree / "*")
    assert _rel(iter_inputs([pattern]), tree) == [
        "a.PNG",
        "b.jpg",
        "c.tiff",
        "noext_jpeg",
        "scan.dat",
    ]
    recursive = str(tree / "**" / "*.gif")
    assert _rel(iter_inputs([recursive]), tree) == [os.path.join("sub", "z.gif")]
    nothing = str(tree / "*.heic")
    assert list(iter_inputs([nothing])) == [InputError(nothing, "glob matched no files")]


def test_glob_characters_in_a_real_name_are_not_a_pattern(tmp_path):
    odd = _touch(tmp_path / "photo[1].jpg")
    assert list(iter_inputs([str(odd)])) == [InputItem(str(odd))]


def test_files_from_file(tree, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(
        f"# my photos\n\n{tree / 'b.jpg'}\n   \n{tree / 'sub'}\r\n{tree / 'nope.png'}\n",
        encoding="utf-8",
    )
    results = list(iter_inputs([str(tree / "a.PNG")], files_from=str(listing)))
    assert _rel(results, tree)[:4] == [
        "a.PNG",
        "b.jpg",
        os.path.join("sub", "deeper", "x.webp"),
        os.path.join("sub", "z.gif"),
    ]
    assert results[4] == InputError(str(tree / "nope.png"), "no such file or directory")
    assert len(results) == 5


def test_files_from_stdin(tree):
    stream = io.StringIO(f"{tree / 'c.tiff'}\n#{tree / 'b.jpg'}\n{tree / 'a.PNG'}\n")
    results = list(iter_inputs([], files_from="-", stdin=stream))
    assert _rel(results, tree) == ["c.tiff", "a.PNG"]


def test_files_from_stdin_bytes_buffer_keeps_undecodable_names(tmp_path):
    raw_name = os.fsencode(str(tmp_path)) + b"/caf\xe9.jpg"
    _touch(Path(os.fsdecode(raw_name)))
    stream = io.TextIOWrapper(io.BytesIO(raw_name + b"\n"), encoding="ascii")
    (item,) = iter_inputs([], files_from="-", stdin=stream)
    assert item == InputItem(os.fsdecode(raw_name))


def test_files_from_default_stdin(tree, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{tree / 'b.jpg'}\n"))
    assert _rel(iter_inputs([], files_from="-"), tree) == ["b.jpg"]


def test_unreadable_list_file(tmp_path):
    missing = str(tmp_path / "nolist.txt")
    (error,) = iter_inputs([], files_from=missing)
    assert isinstance(error, InputError) and error.path == missing
    assert "cannot read list file" in error.message


def test_symlink_loop_terminates(tmp_path, caplog):
    root = tmp_path / "root"
    _touch(root / "a" / "1.jpg")
    os.symlink("..", root / "a" / "up")
    os.symlink(root, root / "a" / "self")
    with caplog.at_level("WARNING", logger="vithybrid_cli.data.walk"):
        results = list(iter_inputs([str(root)], follow_links=True))
    assert _rel(results, root) == [os.path.join("a", "1.jpg")]
    assert "symlink loop" in caplog.text


def test_symlinks_leaving_the_root_are_followed_once(tmp_path):
    outside = tmp_path / "outside"
    _touch(outside / "o.jpg")
    _touch(outside / "inner" / "i.jpg")
    root = tmp_path / "root"
    _touch(root / "r.jpg")
    os.symlink(outside, root / "link1")
    os.symlink(outside, root / "link2")  # same directory again: not repeated
    os.symlink(outside / "inner", root / "link3")  # already inside link1: not repeated
    os.symlink(outside / "o.jpg", root / "o_alias.jpg")  # already yielded via link1
    os.symlink(root / "r.jpg", root / "r_alias.jpg")  # inside the root: real path suffices
    os.symlink(outside, outside / "inner" / "back")  # loop in the outside tree
    assert _rel(iter_inputs([str(root)], follow_links=True), root) == [
        os.path.join("link1", "inner", "i.jpg"),
        os.path.join("link1", "o.jpg"),
        "r.jpg",
    ]


def test_symlink_into_hidden_dir_is_kept(tmp_path):
    root = tmp_path / "root"
    _touch(root / ".store" / "blob.jpg")
    os.symlink(root / ".store" / "blob.jpg", root / "visible.jpg")
    assert _rel(iter_inputs([str(root)]), root) == ["visible.jpg"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any directory")
def test_unreadable_directory_is_an_error_and_walk_continues(tmp_path):
    root = tmp_path / "root"
    _touch(root / "a" / "1.jpg")
    locked = root / "b"
    _touch(locked / "2.jpg")
    _touch(root / "c" / "3.jpg")
    locked.chmod(0)
    try:
        results = list(iter_inputs([str(root)]))
    finally:
        locked.chmod(0o755)
    assert results[1] == InputError(str(locked), "cannot read directory: permission denied")
    assert _rel([results[0], results[2]], root) == [
        os.path.join("a", "1.jpg"),
        os.path.join("c", "3.jpg"),
    ]


def test_unreadable_directory_via_scandir_failure(tmp_path, monkeypatch):
    root = tmp_path / "root"
    _touch(root / "a" / "1.jpg")
    _touch(root / "b" / "2.jpg")
    _touch(root / "c" / "3.jpg")
    real_scandir = os.scandir

    def scandir(path):
        if os.path.basename(path) == "b":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(walk.os, "scandir", scandir)
    results = list(iter_inputs([str(root)]))
    assert results[1] == InputError(str(root / "b"), "cannot read directory: permission denied")
    assert _rel([results[0], results[2]], root) == [
        os.path.join("a", "1.jpg"),
        os.path.join("c", "3.jpg"),
    ]


def test_non_utf8_file_name(tmp_path):
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9-\xff.jpg"
    os.close(os.open(raw, os.O_WRONLY | os.O_CREAT, 0o644))
    (item,) = iter_inputs([str(tmp_path)])
    assert os.fsencode(item.path) == raw
    with open(item.path, "rb"):  # the str still opens the file
        pass
    shown = display_path(item.path)
    assert shown.endswith("caf\\xe9-\\xff.jpg")
    json.dumps(shown).encode("utf-8")
    shown.encode("utf-8")


def test_display_path_escapes_control_characters_and_keeps_unicode():
    assert display_path("a\nb.jpg") == "a\\x0ab.jpg"
    assert display_path("Zürich/東京.jpg") == "Zürich/東京.jpg"
    assert display_path("\ud800.jpg").encode("utf-8")


def test_large_tree_is_streamed_lazily(tmp_path, monkeypatch):
    root = tmp_path / "big"
    for d in range(20):
        for f in range(50):
            _touch(root / f"d{d:02d}" / f"f{f:02d}.jpg", b"")
    calls: list[str] = []
    real_scandir = os.scandir

    def counting_scandir(path):
        calls.append(os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(walk.os, "scandir", counting_scandir)
    stream = iter_inputs([str(root)])
    first = next(stream)
    assert first == InputItem(str(root / "d00" / "f00.jpg"))
    assert len(calls) == 2  # the root and its first subdirectory, nothing more
    assert sum(1 for _ in stream) == 999
    assert len(calls) == 21
