"""Phone formats and the folder walk's rules: AVIF (Pillow), HEIC (the heif extra) and JPEG XL
(the jxl extra) decode like a PNG of the same pixels, EXIF rotation and alpha included; without
a decoder the walk counts what it skipped and the error records carry the hint; the walk never
takes the run's own outputs and follows directory symlinks only when asked."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features
from typer.testing import CliRunner

from vithybrid_cli.cli import app
from vithybrid_cli.data import formats
from vithybrid_cli.data.inputs import iter_inputs
from vithybrid_cli.data.items import InputError, InputItem, WalkNotes
from vithybrid_cli.data.preprocess import ImageError, load_and_preprocess, load_image
from vithybrid_cli.model.config import PreprocessConfig

needs_heif = pytest.mark.skipif(find_spec("pillow_heif") is None, reason="needs vithybrid[heif]")
needs_jxl = pytest.mark.skipif(find_spec("pillow_jxl") is None, reason="needs vithybrid[jxl]")
needs_avif = pytest.mark.skipif(not features.check("avif"), reason="Pillow without AVIF")
HEIF_HINT = 'pip install "vithybrid[heif]"'
SMALL = PreprocessConfig(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
SAVE = {  # (Pillow format, options): lossy at a phone's quality, JPEG XL lossless
    "heic": ("HEIF", {"quality": 90}),
    "avif": ("AVIF", {"quality": 90}),
    "jxl": ("JXL", {"lossless": True}),
    "png": ("PNG", {}),
    "jpg": ("JPEG", {"quality": 90}),
}


def upright() -> Image.Image:
    """A smooth RGBA picture whose left quarter is transparent and second quarter half so."""
    height, width = 96, 128
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 / width, y * 255 / height, (x + y) * 255 / (width + height)], -1)
    alpha = np.full((height, width), 255, np.uint8)
    alpha[:, : width // 4], alpha[:, width // 4 : width // 2] = 0, 128
    return Image.fromarray(np.dstack([rgb.astype(np.uint8), alpha]), "RGBA")


def encode(ext: str, image: Image.Image, *, rotated: bool = True) -> bytes:
    """`image` in format `ext`, stored turned a quarter and EXIF orientation 6 set to undo it
    (as a phone held upright saves it); JPEG gets the picture composited over white."""
    fmt, options = SAVE[ext]
    if fmt == "JPEG":
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image).convert("RGB")
    if rotated:
        exif = Image.Exif()
        exif[0x0112] = 6
        options = {**options, "exif": exif.tobytes()}
        image = image.transpose(Image.Transpose.ROTATE_90)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def preprocessed(data: bytes) -> np.ndarray:
    return load_and_preprocess(io.BytesIO(data), SMALL)


@pytest.fixture(scope="module", autouse=True)
def plugins_registered():
    formats.register_plugins()  # the tests' encoders need the extras' plugins too


@pytest.fixture
def heif_unavailable():
    """This install as if the heif extra were missing: Pillow has no HEIF opener."""
    from PIL import Image as pil

    opener, ids = pil.OPEN.pop("HEIF", None), list(pil.ID)
    pil.ID[:] = [name for name in ids if name != "HEIF"]
    formats.decodable_extensions.cache_clear()
    try:
        yield
    finally:
        if opener is not None:
            pil.OPEN["HEIF"] = opener
        pil.ID[:] = ids
        formats.decodable_extensions.cache_clear()


def cli(*args: object):
    return CliRunner().invoke(app, [str(arg) for arg in args], env={"COLUMNS": "200"})


# ---------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    "ext", [pytest.param("heic", marks=needs_heif), pytest.param("avif", marks=needs_avif)]
)
def test_lossy_phone_formats_preprocess_like_a_png_within_jpeg_tolerance(ext):
    reference = preprocessed(encode("png", upright(), rotated=False))
    jpeg_error = np.abs(preprocessed(encode("jpg", upright())) - reference).mean()
    decoded = load_image(io.BytesIO(encode(ext, upright())))
    assert decoded.size == upright().size  # turned upright by its orientation, alpha on white
    error = np.abs(preprocessed(encode(ext, upright())) - reference).mean()
    assert error <= max(2 * jpeg_error, 0.01), (error, jpeg_error)


@needs_jxl
def test_lossless_jpeg_xl_preprocesses_exactly_like_the_png():
    reference = preprocessed(encode("png", upright(), rotated=False))
    np.testing.assert_array_equal(preprocessed(encode("jxl", upright())), reference)


@needs_heif
def test_ten_bit_heic_decodes_like_a_sixteen_bit_png():
    import pillow_heif

    height, width = 32, 64
    gray = (np.mgrid[0:height, 0:width][1] * 65535 // (width - 1)).astype(np.uint16)
    png, heic = io.BytesIO(), io.BytesIO()
    Image.fromarray(gray).save(png, "PNG")  # mode I;16
    Image.fromarray(gray).save(heic, "HEIF", quality=-1)  # stored in 10 bits
    assert pillow_heif.open_heif(io.BytesIO(heic.getvalue()))[0].info["bit_depth"] == 10
    expected = np.asarray(load_image(io.BytesIO(png.getvalue())), np.float32)
    got = np.asarray(load_image(io.BytesIO(heic.getvalue())), np.float32)
    assert got.shape == expected.shape and np.abs(got - expected).mean() < 1.0

    colour = np.dstack([gray, gray[::-1], np.full_like(gray, 30000)])
    ten_bit = io.BytesIO()
    pillow_heif.from_bytes(mode="RGB;16", size=(width, height), data=colour.tobytes()).save(
        ten_bit, quality=-1
    )
    got = np.asarray(load_image(io.BytesIO(ten_bit.getvalue())), np.float32)
    assert np.abs(got - colour / 257.0).mean() < 2.0  # 8-bit RGB, scaled like a 16-bit PNG


@needs_heif
def test_a_fresh_process_registers_the_heif_opener_once_in_its_decode_threads(tmp_path):
    for index in range(4):
        (tmp_path / f"{index}.heic").write_bytes(encode("heic", upright()))
    script = (
        "import sys; from concurrent.futures import ThreadPoolExecutor\n"
        "from vithybrid_cli.data.preprocess import load_image\n"
        "with ThreadPoolExecutor(4) as pool:\n"
        "    sizes = set(pool.map(lambda p: load_image(p).size, sys.argv[1:]))\n"
        "print(sorted(sizes))\n"
    )
    paths = sorted(str(path) for path in tmp_path.glob("*.heic"))
    done = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[(128, 96)]"


@needs_heif
def test_archive_members_are_sniffed_a_heic_named_jpg_decodes(tmp_path):
    heic = encode("heic", upright())
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as archive:
        for name in ("phone.jpg", "no_extension"):
            info = tarfile.TarInfo(name)
            info.size = len(heic)
            archive.addfile(info, io.BytesIO(heic))
    (tmp_path / "walked").mkdir()
    (tmp_path / "walked" / "IMG_0001").write_bytes(heic)
    items = list(iter_inputs([str(shard), str(tmp_path / "walked")]))
    assert [Path(item.path).name for item in items] == ["phone.jpg", "no_extension", "IMG_0001"]
    assert {load_image(item).size for item in items} == {(128, 96)}


# ---------------------------------------------------------------------------- without a decoder


@pytest.fixture
def camera_roll(tmp_path) -> Path:
    roll = tmp_path / "roll"
    roll.mkdir()
    (roll / "a.png").write_bytes(encode("png", upright(), rotated=False))
    for name in ("b.heic", "c.HEIC", os.path.join("sub", "d.heif")):
        (roll / name).parent.mkdir(exist_ok=True)
        (roll / name).write_bytes(HEIC_BYTES)
    return roll


# A HEIC file's first bytes are enough for the walk and the error message.
HEIC_BYTES = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64


def test_without_the_extra_the_walk_counts_what_it_skips(camera_roll, heif_unavailable):
    notes = WalkNotes()
    items = list(iter_inputs([str(camera_roll)], notes=notes))
    assert items == [InputItem(str(camera_roll / "a.png"))]
    assert notes.undecodable == {".heic": 2, ".heif": 1}

    only_heic = list(iter_inputs([str(camera_roll / "sub")]))
    assert only_heic == [
        InputError(str(camera_roll / "sub"), "directory contains no images this install decodes")
    ]
    notes = WalkNotes()
    assert list(iter_inputs([str(camera_roll / "*.heic")], notes=notes)) == []
    assert notes.undecodable == {".heic": 1}  # the glob is case-sensitive: b.heic


def test_without_the_extra_files_are_counted_by_what_they_are(camera_roll, heif_unavailable):
    (camera_roll / "IMG_0002").write_bytes(HEIC_BYTES)  # no extension: its bytes say HEIC
    jpeg = camera_roll / "f.heic"  # named HEIC, a JPEG inside: decodable, taken
    jpeg.write_bytes(encode("jpg", upright(), rotated=False))
    notes = WalkNotes()
    items = list(iter_inputs([str(camera_roll)], notes=notes))
    assert sorted(Path(item.path).name for item in items) == ["a.png", "f.heic"]
    assert notes.undecodable == {".heic": 3, ".heif": 1}  # b, c and IMG_0002; d.heif
    assert notes.undecodable_lines()[0] == f"skipped 3 .heic files: {HEIF_HINT}"

    notes = WalkNotes()
    assert list(iter_inputs([str(camera_roll / "IMG_*")], notes=notes)) == []
    assert notes.undecodable == {".heic": 1}  # a glob's matches too

    strict = list(iter_inputs([str(camera_roll / "IMG_0002")], take_undecodable=True))
    assert [Path(item.path).name for item in strict] == ["IMG_0002"]  # named: an error record


def test_without_the_extra_error_records_carry_the_hint(camera_roll, heif_unavailable):
    message = f"HEIC/HEIF image, which this install cannot decode: {HEIF_HINT}"
    taken = list(iter_inputs([str(camera_roll)], take_undecodable=True))  # --strict
    assert [Path(item.path).name for item in taken] == ["a.png", "b.heic", "c.HEIC", "d.heif"]
    disguised = camera_roll / "photo.jpg"
    disguised.write_bytes(HEIC_BYTES)  # named .jpg: the content says HEIC
    for source in [*taken[1:], str(disguised)]:
        with pytest.raises(ImageError) as caught:
            load_image(source)
        assert caught.value.message == message


def test_without_the_extra_nothing_else_changes(camera_roll, heif_unavailable):
    png = camera_roll / "a.png"
    with_hint = load_and_preprocess(str(png), SMALL)
    formats.decodable_extensions.cache_clear()
    np.testing.assert_array_equal(with_hint, preprocessed(png.read_bytes()))
    with pytest.raises(ImageError, match="not a recognized image format"):
        load_image(io.BytesIO(b"plain text, not a picture"))


def test_avif_without_pillow_support_is_counted_with_its_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(features, "check", lambda name: name != "avif")
    formats.decodable_extensions.cache_clear()
    try:
        (tmp_path / "t.avif").write_bytes(b"\x00\x00\x00\x1cftypavif" + b"\x00" * 40)
        (tmp_path / "t.png").write_bytes(encode("png", upright(), rotated=False))
        notes = WalkNotes()
        assert [Path(i.path).name for i in iter_inputs([str(tmp_path)], notes=notes)] == ["t.png"]
        assert notes.undecodable == {".avif": 1}
        with pytest.raises(ImageError, match=r"AVIF image.*pillow>=11.3"):
            load_image(str(tmp_path / "t.avif"))
    finally:
        monkeypatch.undo()
        formats.decodable_extensions.cache_clear()


def test_cli_summary_says_what_was_skipped_and_strict_fails(
    camera_roll, heif_unavailable, tiny_checkpoint
):
    done = cli("classify", camera_roll, "--model", tiny_checkpoint, "-k", "1", "-f", "jsonl")
    assert done.exit_code == 0, done.stderr
    assert [line.split('"')[3] for line in done.stdout.splitlines()] == [str(camera_roll / "a.png")]
    assert f"skipped 2 .heic files: {HEIF_HINT}" in done.stderr.splitlines()
    assert f"skipped 1 .heif file: {HEIF_HINT}" in done.stderr.splitlines()
    assert "1 labeled, 0 failed" in done.stderr

    strict = cli("classify", camera_roll, "--model", tiny_checkpoint, "-f", "jsonl", "--strict")
    assert strict.exit_code == 1
    assert f"b.heic: HEIC/HEIF image, which this install cannot decode: {HEIF_HINT}" in (
        strict.stderr
    )
    assert "stopping at the first failure (--strict)" in strict.stderr

    info = cli("info", "--model", tiny_checkpoint)
    assert info.exit_code == 0, info.stderr
    decoded = next(line for line in info.stdout.splitlines() if "image formats" in line)
    assert "PNG" in decoded and "HEIC" not in decoded
    assert "vithybrid[heif]" in info.stdout


# ---------------------------------------------------------------------------- own outputs


def test_attention_map_run_twice_into_the_input_folder_maps_only_the_photos(
    tmp_path, tiny_checkpoint
):
    photos = tmp_path / "ph"
    photos.mkdir()
    for index in range(3):
        Image.new("RGB", (40, 30), (60 * index, 90, 200)).save(photos / f"p{index}.jpg")
    maps = photos / "maps"
    for _ in range(2):
        done = cli("attention-map", photos, "--output-dir", maps, "--model", tiny_checkpoint)
        assert done.exit_code == 0, done.stderr
        assert "3 mapped, 0 failed" in done.stderr
    assert sorted(path.name for path in maps.iterdir()) == ["p0.png", "p1.png", "p2.png"]
    assert f"skipped {maps}: this run's own output" in done.stderr.splitlines()


def test_the_walk_and_globs_leave_out_excluded_paths(tmp_path):
    root = tmp_path / "ph"
    for name in ("a.png", "out/x.png", "out/deeper/y.png", "outer/z.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(encode("png", upright(), rotated=False))
    notes = WalkNotes()
    exclude = [str(root / "out"), str(root / "a.png")]
    walked = iter_inputs([str(root), str(root / "**" / "*.png")], exclude=exclude, notes=notes)
    names = [os.path.relpath(item.path, root) for item in walked]
    assert names == [os.path.join("outer", "z.png")] * 2
    assert notes.own_outputs == [str(root / "a.png"), str(root / "out")]


# ---------------------------------------------------------------------------- symlinks


def test_directory_symlinks_are_followed_only_with_follow_links(tmp_path, tiny_checkpoint):
    parent = tmp_path / "parent"
    root = parent / "ph"
    root.mkdir(parents=True)
    for path in (parent / "other.png", root / "mine.png", tmp_path / "far.png"):
        path.write_bytes(encode("png", upright(), rotated=False))
    os.symlink("..", root / "up")
    os.symlink(tmp_path / "far.png", root / "alias.png")  # a symlinked file is read as a file
    notes = WalkNotes()
    walked = [os.path.relpath(i.path, root) for i in iter_inputs([str(root)], notes=notes)]
    assert walked == ["alias.png", "mine.png"] and notes.links_not_followed == 1
    followed = [os.path.relpath(i.path, root) for i in iter_inputs([str(root)], follow_links=True)]
    assert followed == ["alias.png", "mine.png", os.path.join("up", "other.png")]

    done = cli("classify", root, "--model", tiny_checkpoint, "-f", "jsonl")
    assert done.exit_code == 0 and "2 labeled" in done.stderr
    assert "did not follow 1 directory symlink (--follow-links follows them)" in done.stderr
    done = cli("classify", root, "--model", tiny_checkpoint, "-f", "jsonl", "--follow-links")
    assert done.exit_code == 0 and "3 labeled" in done.stderr


def test_buckets_and_archives_count_what_they_skip(tmp_path, heif_unavailable):
    fsspec = pytest.importorskip("fsspec")
    png = encode("png", upright(), rotated=False)
    memory, bucket = fsspec.filesystem("memory"), f"/formats-{os.getpid()}"
    memory.pipe({f"{bucket}/a.png": png, f"{bucket}/b.heic": HEIC_BYTES})
    shards = [tmp_path / "indexed.tar", tmp_path / "streamed.tar.gz"]
    for shard, mode in zip(shards, ("w", "w:gz"), strict=True):
        with tarfile.open(shard, mode) as archive:
            for name, data in (("c.png", png), ("d.heic", HEIC_BYTES), ("e.heif", HEIC_BYTES)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    try:
        notes = WalkNotes()
        items = iter_inputs([f"memory://{bucket}/", *map(str, shards)], notes=notes)
        assert [item.path.rsplit("/", 1)[1] for item in items] == ["a.png", "c.png", "c.png"]
        assert notes.undecodable == {".heic": 3, ".heif": 2}
    finally:
        memory.rm(bucket, recursive=True)


def test_fit_data_folders_warn_of_the_formats_they_skip(camera_roll, heif_unavailable):
    from vithybrid_cli.pipeline.fit.examples import collect_folder

    data = camera_roll.parent / "data"
    (data / "cats").mkdir(parents=True)
    (data / "dogs").mkdir()
    (data / "cats" / "a.png").write_bytes((camera_roll / "a.png").read_bytes())
    (data / "dogs" / "b.heic").write_bytes(HEIC_BYTES)
    found = collect_folder(str(data))
    assert [example.label for example in found.items] == ["cats"]
    assert found.errors == []
    assert found.warnings == [
        f"label folder {data / 'dogs'} has no images: skipped",
        f"skipped 1 .heic file: {HEIF_HINT}",
    ]
