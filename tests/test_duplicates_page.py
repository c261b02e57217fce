"""`vithybrid duplicates --report groups.html`: the page of duplicate groups, its data and in a
real browser (the browser fixtures are test_report's: headless Debian chromium, file:// only)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import test_report
from PIL import Image
from test_cli import assert_clean_error, cli
from test_report import browser, open_page  # noqa: F401 - fixtures
from test_search import photo_dir  # noqa: F401 - fixture

from vithybrid_cli.report.duplicates_page import duplicates_page
from vithybrid_cli.report.thumbnails import Thumbnail


def test_groups_become_tiles_side_by_side_exact_first_with_sizes_and_the_kept_file(tmp_path):
    Image.new("RGB", (64, 48), "red").save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes())
    a, b = str(tmp_path / "a.png"), str(tmp_path / "b.png")
    records = [  # as group_records writes them: a near group before an exact one
        {"paths": ["x/c.jpg", "x/d.jpg", "x/e.jpg"], "score": 0.935, "exact": False,
         "keep": "x/c.jpg"},
        {"paths": [b, a], "score": 1.0, "exact": True, "keep": b},
    ]  # fmt: skip
    thumbs = {a: Thumbnail(file="a.webp"), b: Thumbnail(file="b.webp")}
    page = duplicates_page(records, thumbs, tmp_path, tmp_path / "page_files", title="t",
                           threshold=0.9, searched=7)  # fmt: skip
    assert [tile.path for tile in page.tiles] == [b, a, "x/c.jpg", "x/d.jpg", "x/e.jpg"]
    groups = [tile.group for tile in page.tiles]
    assert groups == ["1. exact copies"] * 2 + ["2. lowest similarity 0.935"] * 3
    assert [tile.title for tile in page.tiles] == ["keep", "other", "keep", "other", "other"]
    size = (tmp_path / "a.png").stat().st_size
    assert page.tiles[0].detail == f"{size} B · 64×48"
    assert page.tiles[2].detail == ""  # not a local file: nothing to say
    assert page.tiles[0].thumb == "page_files/b.webp" and page.tiles[2].thumb is None
    assert page.tiles[2].reason == "no thumbnail"
    assert [view.name for view in page.views] == ["By score", "To review"]
    assert page.views[1].order == [1, 3, 4]
    assert dict(page.facts)["groups"] == "2" and dict(page.facts)["to review"] == "3"
    chart = page.charts[0]  # bins of 0.01 from a round number below the threshold
    assert (chart["low"], chart["high"], len(chart["counts"])) == (0.8, 1.0, 20)
    assert chart["counts"].index(1) == 13 and sum(chart["counts"]) == 1  # 0.935


def test_byte_copies_inside_a_near_group_are_marked_and_counted(tmp_path):
    records = [
        {"paths": ["c.jpg", "c_copy.jpg", "c_q40.jpg"], "score": 0.96, "exact": False,
         "copies": [["c.jpg", "c_copy.jpg"]]},
        {"paths": ["a.jpg", "b.jpg"], "score": 1.0, "exact": True,
         "copies": [["a.jpg", "b.jpg"]]},
    ]  # fmt: skip
    page = duplicates_page(records, {}, tmp_path, tmp_path / "page_files", title="t",
                           threshold=0.95, searched=5)  # fmt: skip
    details = {tile.path: tile.detail for tile in page.tiles}
    assert details == {"a.jpg": "", "b.jpg": "", "c.jpg": "byte copy A",
                       "c_copy.jpg": "byte copy A", "c_q40.jpg": ""}  # fmt: skip
    assert page.tiles[2].group == "2. lowest similarity 0.960, 2 byte copies"
    facts = dict(page.facts)
    assert (facts["exact"], facts["with byte copies"]) == ("1", "2")


def test_a_page_whose_images_are_not_found_says_so_with_the_fix(tmp_path, monkeypatch):
    import numpy as np

    shots = tmp_path / "shots"
    shots.mkdir()
    np.save(shots / "v.npy", np.ones((2, 4), np.float32))
    (shots / "v.paths.txt").write_text("gone/a.png\ngone/b.png\n")  # embed ran elsewhere
    monkeypatch.chdir(tmp_path)
    result = cli("duplicates", shots / "v.npy", "-f", "jsonl", "--report", "groups.html", "-q")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [
        "warning: 2 images not found: run duplicates from the folder embed ran in (relative "
        "paths start there)"
    ]


def test_the_report_must_be_an_html_file_and_is_checked_before_the_model(tmp_path):
    result = cli("duplicates", tmp_path, "--report", tmp_path / "groups.txt")
    assert_clean_error(result, "--report", "groups.txt", ".html")
    assert not (tmp_path / "groups.txt").exists()


@pytest.mark.slow
def test_byte_copies_end_to_end_show_side_by_side_with_the_score_and_filter(
    tiny_checkpoint,
    photo_dir,  # noqa: F811 - the fixture
    tmp_path,
    open_page,  # noqa: F811 - the fixture
):
    page_path = tmp_path / "out" / "groups.html"
    args = ["-m", tiny_checkpoint, "--dtype", "float32", "-t", "1.0", "-f", "jsonl"]
    result = cli("duplicates", photo_dir, *args, "--report", page_path)
    assert result.exit_code == 0, result.stderr
    assert "4 files in groups" in result.stderr and "4 made" in result.stderr
    addresses = set(re.findall(r"https?://[^\s\"'`]*", page_path.read_text()))
    assert addresses == {"http://www.w3.org/2000/svg"}  # a name, never fetched

    shown = open_page(page_path)
    page = shown.page
    assert shown.texts("#groups .group h3 .name") == ["1. exact copies", "2. exact copies"]
    first = page.locator("#groups .group").first
    assert first.locator(".tile .name").all_inner_texts() == ["photo1-copy.jpg", "photo1.jpg"]
    boxes = [tile.bounding_box() for tile in first.locator(".tile").all()]
    assert boxes[0]["y"] == boxes[1]["y"] and boxes[0]["x"] < boxes[1]["x"]  # side by side
    size = (photo_dir / "photo1.jpg").stat().st_size
    with Image.open(photo_dir / "photo1.jpg") as image:
        width, height = image.size
    assert f"{width}×{height}" in first.locator(".tile .detail").first.inner_text()
    assert str(size // 1000) in first.locator(".tile .detail").first.inner_text()
    for image in page.locator("#groups .tile img").all():  # each thumbnail loads
        image.scroll_into_view_if_needed()
        assert image.evaluate("i => i.decode().then(() => i.naturalWidth)") > 0

    page.fill("#filter", "photo3")
    test_report.expect(page.locator("#groups .tile")).to_have_count(2)
    assert sorted(shown.texts("#groups .tile .name")) == ["photo3-copy.jpg", "photo3.jpg"]
    page.fill("#filter", "more/")
    test_report.expect(page.locator("#groups .tile")).to_have_count(1)
    page.fill("#filter", "")
    test_report.expect(page.locator("#groups .tile")).to_have_count(4)


def screenshot(page_path: Path, target: Path) -> None:  # pragma: no cover - for the docs
    """docs/images/duplicates.png: `python tests/test_duplicates_page.py PAGE PNG`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=test_report.CHROMIUM, args=test_report.CHROMIUM_FLAGS
        )
        page = launched.new_page(viewport={"width": 1200, "height": 900})
        page.goto(page_path.resolve().as_uri())
        page.wait_for_selector("#groups .tile")
        for image in page.locator("#groups .tile img").all():
            image.evaluate("i => i.decode()")
        page.screenshot(path=str(target))
        launched.close()


if __name__ == "__main__":
    import sys

    screenshot(Path(sys.argv[1]), Path(sys.argv[2]))
