"""`vithybrid report`: reading classify outputs back, thumbnails, and the page in a real browser.

The browser tests open the written page in Debian's headless chromium (driven by playwright,
never `playwright install`) and assert on what it shows; outside CI they skip when chromium is
missing. Everything is local: the page must not make one request that is not file://.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import checkpoints
import pytest
from PIL import Image
from test_cli import assert_clean_error, cli, jsonl

from vithybrid_cli.io.outputs import open_writer
from vithybrid_cli.io.results import Row, read_results
from vithybrid_cli.report.gallery import build_gallery, certainty
from vithybrid_cli.report.thumbnails import make_thumbnails

expect = None  # playwright's, set by the browser fixture (playwright is a dev dependency)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def top(*pairs: tuple[str, float]) -> list[dict]:
    return [{"index": i, "label": label, "score": score} for i, (label, score) in enumerate(pairs)]


RECORDS = [
    {"path": "a.jpg", "top_k": top(("cat", 0.9), ("dog", 0.05))},
    {"path": "b.jpg", "top_k": top(("dog", 0.5), ("cat", 0.45))},
    {"path": "c.jpg", "error": "cannot identify image file"},
    {"path": "d.jpg", "top_k": top(("cat", 0.6), ("dog", 0.2))},
]


def write_records(path: Path, records: list[dict], **options) -> Path:
    fmt = "jsonl" if path.is_dir() else path.suffix[1:]
    target = path / "part-0.parquet" if path.is_dir() else path
    writer = open_writer("records", "parquet" if path.is_dir() else fmt, str(target), **options)
    for record in records:
        writer.write(record)
    writer.close()
    return path


# ---------------------------------------------------------------------------- reading results


@pytest.mark.parametrize("name", ["out.jsonl", "out.json", "out.csv", "out.parquet", "parts"])
def test_every_classify_format_reads_back_to_the_same_rows(tmp_path, name):
    path = tmp_path / name
    if name == "parts":
        path.mkdir()
    write_records(path, RECORDS, top_k=2)
    results = read_results(path)
    assert [row.path for row in results.rows] == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert [row.label for row in results.rows] == ["cat", "dog", None, "cat"]
    assert results.rows[2].error == "cannot identify image file"
    assert results.rows[1].top_k == [("dog", 0.5), ("cat", 0.45)]
    assert results.rows[1].margin == pytest.approx(0.05)
    assert not results.decision


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_a_decision_runs_abstentions_read_back_as_no_label(tmp_path, suffix):
    records = [
        {"path": "a.jpg", "label": "cat", "score": 0.9, "top_k": top(("cat", 0.9), ("dog", 0.1))},
        {"path": "b.jpg", "label": None, "score": 0.4, "top_k": top(("dog", 0.4), ("cat", 0.3))},
    ]
    results = read_results(
        write_records(tmp_path / f"out{suffix}", records, top_k=2, decision=True)
    )
    assert results.decision
    assert [row.label for row in results.rows] == ["cat", None]
    assert results.rows[1].score == pytest.approx(0.4)


def test_certainty_puts_a_low_score_or_a_small_margin_first():
    sure = Row("a", "cat", 0.9, [("cat", 0.9), ("dog", 0.05)])
    close_call = Row("b", "cat", 0.5, [("cat", 0.5), ("dog", 0.48)])
    low = Row("c", "cat", 0.2, [("cat", 0.2), ("dog", 0.01)])
    assert sorted([sure, close_call, low], key=certainty) == [close_call, low, sure]


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("notes.txt", "hello\n", "not a classify output"),
        ("vectors.jsonl", '{"id": 1}\n', 'no "path"'),
        ("half.jsonl", '{"path": "a.jpg", "top_k": []}\nnot json\n', "line 2"),
        ("table.csv", "name,value\nx,1\n", "not a classify CSV"),
        ("broken.parquet", "PAR1 but not really", "not a classify output"),
    ],
)
def test_report_of_a_file_that_is_not_a_classify_output_is_one_line(tmp_path, name, text, words):
    path = tmp_path / name
    path.write_text(text)
    result = cli("report", path, "-o", tmp_path / "page.html")
    assert_clean_error(result, name, words)
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "page.html").exists()


# ---------------------------------------------------------------------------- thumbnails


@pytest.fixture
def images(tmp_path) -> Path:
    """Three photographs in a folder, and a tar archive holding a fourth."""
    root = tmp_path / "images"
    root.mkdir()
    photos = checkpoints.photographs(4)
    for name, image in zip(["cat.jpg", "astronaut.png", "coffee.jpg"], photos, strict=False):
        image.convert("RGB").resize((600, 400)).save(root / name)
    data = io.BytesIO()
    photos[3].convert("RGB").save(data, format="JPEG")
    with tarfile.open(root / "shard.tar", "w") as archive:
        info = tarfile.TarInfo("inner/rocket.jpg")
        info.size = len(data.getvalue())
        archive.addfile(info, io.BytesIO(data.getvalue()))
    return root


def test_thumbnails_come_from_files_and_tar_members_once_and_are_reused(images, tmp_path):
    paths = ["cat.jpg", "astronaut.png", "shard.tar/inner/rocket.jpg", "gone.jpg", "-"]
    folder = tmp_path / "thumbs"
    calls = []
    made, stats = make_thumbnails(
        paths, folder, bases=[images], workers=2, progress=lambda *a: calls.append(a)
    )
    assert (stats.made, stats.reused, stats.missing) == (3, 0, 2)
    assert calls[0] == (0, 3) and calls[-1] == (3, 3)
    for path in paths[:3]:
        with Image.open(folder / made[path].file) as thumb:
            assert thumb.format == "WEBP" and max(thumb.size) == 256
    assert made["gone.jpg"].reason == "image not found"
    assert "stdin" in made["-"].reason
    assert made["cat.jpg"].original == str(images / "cat.jpg")
    assert made["shard.tar/inner/rocket.jpg"].original is None  # no file a browser can open
    written = {path: os.stat(folder / made[path].file).st_mtime_ns for path in paths[:3]}

    again, stats = make_thumbnails(paths, folder, bases=[images])
    assert (stats.made, stats.reused) == (0, 3)
    assert {path: os.stat(folder / again[path].file).st_mtime_ns for path in paths[:3]} == written

    Image.new("RGB", (300, 200), "red").save(images / "cat.jpg")  # edited: a fresh thumbnail
    os.utime(images / "cat.jpg", ns=(1, 1))
    (folder / "notes.txt").write_text("mine")  # not a thumbnail: never removed
    edited, stats = make_thumbnails(paths, folder, bases=[images], fmt="jpeg")
    assert edited["cat.jpg"].file != made["cat.jpg"].file
    assert edited["cat.jpg"].file.endswith(".jpg")
    # the three .webp of the earlier runs are no longer shown: removed, the .jpg ones stay
    assert stats.removed == 3
    shown = {thumb.file for thumb in edited.values() if thumb.file}
    assert set(os.listdir(folder)) == shown | {"notes.txt"}
    fewer, stats = make_thumbnails(paths[1:2], folder, bases=[images], fmt="jpeg")
    assert (stats.reused, stats.removed) == (1, 2)
    assert set(os.listdir(folder)) == {fewer["astronaut.png"].file, "notes.txt"}


def test_an_unreadable_image_gets_its_reason_and_the_rest_is_made(images, tmp_path):
    (images / "broken.jpg").write_bytes((images / "cat.jpg").read_bytes()[:300])
    made, stats = make_thumbnails(["broken.jpg", "cat.jpg"], tmp_path / "t", bases=[images])
    assert stats.made == 1 and made["cat.jpg"].file
    assert made["broken.jpg"].file is None and "truncated" in made["broken.jpg"].reason.lower()
    assert made["broken.jpg"].original is None  # nothing to show larger either


@pytest.fixture
def served(images):
    """`images` over loopback HTTP (a thread of the standard library's server)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(images))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def test_thumbnails_of_urls_bucket_objects_and_their_archive_members(images, served, tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    bucket = f"thumbs-{os.getpid()}"
    fs.pipe(f"/{bucket}/a.jpg", (images / "coffee.jpg").read_bytes())
    fs.pipe(f"/{bucket}/shard.tar", (images / "shard.tar").read_bytes())
    try:
        paths = [f"{served}/cat.jpg", f"{served}/gone.jpg", f"memory://{bucket}/a.jpg",
                 f"memory://{bucket}/shard.tar/inner/rocket.jpg"]  # fmt: skip
        made, stats = make_thumbnails(paths, tmp_path / "thumbs", workers=2)
    finally:
        fs.rm(f"/{bucket}", recursive=True)
    assert (stats.made, stats.missing) == (3, 1)
    assert "404" in made[f"{served}/gone.jpg"].reason
    for path in (paths[0], paths[2], paths[3]):
        with Image.open(tmp_path / "thumbs" / made[path].file) as thumb:
            assert max(thumb.size) == 256
        assert made[path].original is None  # remote: the larger view is the thumbnail


def spy_progress_bars(monkeypatch) -> list[tuple[str, int, int | None]]:
    """Every (label, done, total) the CLI's one progress bar is given."""
    from vithybrid_cli.cli.render import ProgressBar

    calls: list[tuple[str, int, int | None]] = []
    original = ProgressBar.__call__

    def call(self, done, total):
        calls.append((self.label, done, total))
        original(self, done, total)

    monkeypatch.setattr(ProgressBar, "__call__", call)
    return calls


# ---------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def classified(tiny_checkpoint, tmp_path_factory) -> Path:
    """A real classify run (tiny model) over four photographs and one broken file."""
    root = tmp_path_factory.mktemp("run")
    photos = root / "photos"
    photos.mkdir()
    names = ["cat.jpg", "astronaut.jpg", "coffee.jpg", "rocket.jpg"]
    for name, image in zip(names, checkpoints.photographs(4), strict=True):
        image.convert("RGB").resize((320, 240)).save(photos / name)
    (photos / "broken.jpg").write_bytes((photos / "cat.jpg").read_bytes()[:500])
    output = root / "labels.jsonl"
    result = cli("classify", photos, "--model", tiny_checkpoint, "-o", output, "--quiet")
    assert result.exit_code == 1, result.stderr  # the broken file
    return output


def test_report_writes_a_page_and_thumbnails_beside_it(classified, tmp_path, monkeypatch):
    page = tmp_path / "out" / "report.html"
    bars = spy_progress_bars(monkeypatch)
    result = cli("report", classified, "-o", page, "--thumb-format", "jpeg")
    assert result.exit_code == 0, result.stderr
    assert {label for label, _, _ in bars} == {"thumbnails"} and bars[-1][1:] == (4, 4)
    assert "5 records" in result.stderr and "4 made, 0 reused in" in result.stderr
    thumbs = sorted((tmp_path / "out" / "report_files").iterdir())
    assert len(thumbs) == 4 and all(path.suffix == ".jpg" for path in thumbs)
    addresses = set(re.findall(r"https?://[^\s\"'`]*", page.read_text()))
    assert addresses == {"http://www.w3.org/2000/svg"}  # a name, never fetched: SVG's namespace
    again = cli("report", classified, "-o", page, "--thumb-format", "jpeg")
    assert "0 made, 4 reused" in again.stderr


def test_report_from_another_folder_says_images_are_missing_and_root_finds_them(
    tmp_path, monkeypatch
):
    """Paths are relative to where classify ran (here run/, the results in run/out/): report run
    from elsewhere warns with the fix, and --root (the folder classify ran in) finds them."""
    run = tmp_path / "run"
    (run / "photos").mkdir(parents=True)
    (run / "out").mkdir()
    for name, colour in (("a.jpg", "red"), ("b.jpg", "blue")):
        Image.new("RGB", (40, 30), colour).save(run / "photos" / name)
    records = [
        {"path": f"photos/{name}", "top_k": top(("cat", 0.9))} for name in ("a.jpg", "b.jpg")
    ]
    write_records(run / "out" / "labels.jsonl", records)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    results, page = run / "out" / "labels.jsonl", elsewhere / "page.html"
    lost = cli("report", results, "-o", page, "--quiet")
    assert lost.exit_code == 0, lost.stderr
    [line] = lost.stderr.splitlines()  # one line, even with --quiet
    assert line.startswith("warning: 2 images not found: run report from the folder classify ran")
    assert line.endswith("or pass --root DIR")
    found = cli("report", results, "-o", page, "--root", run)
    assert found.exit_code == 0, found.stderr
    assert "2 made, 0 reused in" in found.stderr and "not found" not in found.stderr
    assert_clean_error(cli("report", results, "--root", tmp_path / "nowhere"), "--root", "nowhere")


# ---------------------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium): no browser to open")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    global expect
    expect = sync_api.expect
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


class Opened:
    """A page opened in chromium, every request it made recorded."""

    def __init__(self, browser, path: Path) -> None:
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_selector("#groups .tile, #groups .empty")

    def texts(self, selector: str) -> list[str]:
        return self.page.locator(selector).all_inner_texts()

    def close(self) -> None:
        self.page.close()
        assert not self.errors, self.errors
        leaving = [url for url in self.requests if not url.startswith("file://")]
        assert not leaving, leaving


@pytest.fixture
def open_page(browser):
    opened: list[Opened] = []

    def open_(path: Path) -> Opened:
        opened.append(Opened(browser, path))
        return opened[-1]

    yield open_
    for page in opened:
        page.close()


@pytest.mark.slow
def test_the_page_shows_a_tile_per_record_its_labels_and_the_failures(
    classified, tmp_path, open_page
):
    page_path = tmp_path / "report.html"
    assert cli("report", classified, "-o", page_path).exit_code == 0
    records = jsonl(classified.read_text())
    shown = open_page(page_path)
    page = shown.page
    assert page.locator("#groups .tile").count() == len(records)
    labels = {record["top_k"][0]["label"] for record in records if "top_k" in record}
    headings = set(shown.texts("#groups .group h3 .name"))
    assert headings == labels | {"(failed)"}
    images = page.locator("#groups .tile img").all()
    assert len(images) == 4
    for image in images:  # each thumbnail loads and decodes (lazy: scrolled into view first)
        image.scroll_into_view_if_needed()
        assert image.evaluate("i => i.decode().then(() => i.naturalWidth)") > 0
    error = next(record["error"] for record in records if "error" in record)
    failure = page.locator("#tables tbody tr")
    assert failure.count() == 1
    assert "broken.jpg" in failure.inner_text() and error in failure.inner_text()
    assert error in page.locator("#groups .group.failed .tile").inner_text()

    page.locator("#groups .tile").first.click()  # the larger view, with the top-k
    viewer = page.locator("#viewer")
    viewer.wait_for(state="visible")
    first = next(record for record in records if "top_k" in record)
    assert viewer.locator(".topk tr").count() == len(first["top_k"])
    assert viewer.locator(".large img").evaluate("i => i.getAttribute('src')").endswith(".jpg")
    page.keyboard.press("Escape")


@pytest.mark.slow
def test_typing_in_the_filter_changes_the_tiles_shown(tmp_path, open_page):
    records = [
        {"path": f"x/{name}.jpg", "top_k": top((label, 0.5 + i / 100), ("other", 0.1))}
        for i, (name, label) in enumerate(
            [("one", "tabby cat"), ("two", "tabby cat"), ("three", "teapot"), ("cat-ish", "mug")]
        )
    ]
    results = write_records(tmp_path / "labels.jsonl", records)
    build_gallery(str(results), str(tmp_path / "page.html"))
    shown = open_page(tmp_path / "page.html")
    page = shown.page
    assert page.locator("#groups .tile").count() == 4
    page.fill("#filter", "teapot")
    expect(page.locator("#groups .tile")).to_have_count(1)
    assert shown.texts("#groups .tile .name") == ["three.jpg"]
    page.fill("#filter", "cat")  # two labels and one path hold "cat"
    expect(page.locator("#groups .tile")).to_have_count(3)
    assert sorted(shown.texts("#groups .tile .name")) == ["cat-ish.jpg", "one.jpg", "two.jpg"]
    page.fill("#filter", "nothing like this")
    page.wait_for_selector("#groups .empty")
    page.fill("#filter", "")
    expect(page.locator("#groups .tile")).to_have_count(4)
    page.locator("svg g.filter").first.click()  # a bar of the chart filters by its label
    expect(page.locator("#groups .tile")).to_have_count(2)
    assert page.input_value("#filter") == "tabby cat"


@pytest.mark.slow
def test_a_few_thousand_rows_are_paged_and_the_review_view_puts_the_unsure_first(
    tmp_path, open_page
):
    count = 3000
    records = []
    for i in range(count):
        best = 0.3 + 0.7 * ((i * 7919) % count) / count
        pairs = top((f"label {i % 12}", best), ("runner-up", best / 2))
        records.append({"path": f"far/away/img{i:05d}.jpg", "top_k": pairs})
    records.append({"path": "far/away/bad.jpg", "error": "cannot identify image file"})
    results = write_records(tmp_path / "many.jsonl", records)
    build_gallery(str(results), str(tmp_path / "many.html"))
    shown = open_page(tmp_path / "many.html")
    page = shown.page
    assert page.locator("#groups .tile").count() == 250  # never all 3,001 at once
    assert page.locator("#pager-top .position").inner_text() == "page 1 of 13"
    first_page = shown.texts("#groups .tile .name")
    page.locator("#pager-top .next").click()
    expect(page.locator("#pager-top .position")).to_have_text("page 2 of 13")
    second_page = shown.texts("#groups .tile .name")
    assert len(second_page) == 250 and not set(first_page) & set(second_page)
    page.select_option("#pager-top select", "500")
    expect(page.locator("#groups .tile")).to_have_count(500)
    page.locator("#pager-top .previous").wait_for()
    page.locator("#views button", has_text="Review").click()
    expect(page.locator("#pager-top .position")).to_have_text("page 1 of 6")  # 3,000 at 500 a page
    assert page.locator("#groups .group h3").count() == 0  # one order across the labels
    details = shown.texts("#groups .tile .detail")[:5]
    scores = [float(text.split()[0]) for text in details]
    assert scores == sorted(scores) and scores[0] < 0.31
    page.locator("#views button", has_text="Failed").click()
    expect(page.locator("#groups .tile")).to_have_count(1)
    assert "cannot identify" in page.locator("#groups .tile").inner_text()
    # each record's tile says why it has no thumbnail
    assert "3,000 images could not be shown" in page.locator("#subtitle").inner_text()


@pytest.mark.slow
def test_a_head_run_shows_its_decisions_and_abstentions_as_a_group(tmp_path, open_page):
    records = [
        {"path": "a.jpg", "label": "mine", "score": 0.9, "top_k": top(("mine", 0.9))},
        {"path": "b.jpg", "label": None, "score": 0.4, "top_k": top(("yours", 0.4))},
        {"path": "c.jpg", "label": None, "score": 0.3, "top_k": top(("mine", 0.3))},
    ]
    results = write_records(tmp_path / "head.csv", records, top_k=1, decision=True)
    build_gallery(str(results), str(tmp_path / "head.html"))
    shown = open_page(tmp_path / "head.html")
    assert shown.texts("#groups .group h3 .name") == ["mine", "(abstained)"]
    assert shown.page.locator("#groups .group.abstained .tile").count() == 2
    assert "best guess yours" in shown.texts("#groups .group.abstained .tile .detail")[0]
    facts = dict(zip(shown.texts("#facts dt"), shown.texts("#facts dd"), strict=True))
    assert facts["ABSTAINED"] == "2"  # inner text, as shown: upper case


# ---------------------------------------------------------------------------- fit --report


@pytest.fixture(scope="module")
def fit_task(tmp_path_factory) -> Path:
    from test_head import write_task

    root = tmp_path_factory.mktemp("fit-task")
    return write_task(root, {"train": 4, "val": 3}, scale=0.5, size=64, seed=3)


def test_fit_report_keeps_each_validation_prediction_as_counted_in_the_confusion(
    tiny_checkpoint, fit_task, tmp_path
):
    from vithybrid_cli.model.weights import load_model
    from vithybrid_cli.pipeline.fit import fit_head

    report = fit_head(load_model(tiny_checkpoint), str(fit_task / "train"), val_fraction=0.5,
                      cache_dir=str(tmp_path / "cache"))  # fmt: skip
    assert len(report.validation) == sum(report.val_counts) == 8
    counted = [[0] * len(report.labels) for _ in report.labels]
    for path, truth, ranked in report.validation:
        assert Path(path).parent.name == truth  # the split's own images, with their labels
        assert [score for _, score in ranked] == sorted((s for _, s in ranked), reverse=True)
        counted[report.labels.index(truth)][report.labels.index(ranked[0][0])] += 1
    assert counted == report.confusion


@pytest.mark.slow
def test_fit_report_page_shows_metrics_the_confusion_and_the_misclassified(
    tiny_checkpoint, fit_task, tmp_path, open_page
):
    page_path = tmp_path / "fit.html"
    head = tmp_path / "h.safetensors"
    result = cli("fit", fit_task / "train", "--val", fit_task / "val", "-o", head,
                 "--model", tiny_checkpoint, "--format", "json", "--report", page_path)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    fitted = json.loads(result.stdout)
    confusion, labels = fitted["confusion"], fitted["labels"]
    wrong = sum(confusion[i][j] for i in range(len(labels)) for j in range(len(labels)) if i != j)
    assert wrong > 0  # the tiny random model confuses hard crops: there is something to show
    shown = open_page(page_path)
    page = shown.page
    assert page.locator("svg rect.cell").count() == len(labels) ** 2
    per_class = page.locator('#tables [data-title="Per class"] tbody tr')
    assert per_class.count() == len(labels)
    first = fitted["per_class"][0]
    assert per_class.first.inner_text().split("\t")[:4] == [
        first["label"], str(first["train"]), str(first["validation"]), f"{first['precision']:.3f}"
    ]  # fmt: skip
    assert page.locator("#groups .tile").count() == wrong
    for tile in page.locator("#groups .tile").all():
        group = tile.locator("xpath=ancestor::section[1]").get_attribute("data-group")
        truth, predicted = group.split(" → ")
        assert truth != predicted
        assert tile.locator(".label").inner_text() == predicted
        assert tile.locator(".detail").inner_text().startswith(f"true: {truth}")
    page.locator("#views button", has_text="All validation").click()
    validation = sum(row["validation"] for row in fitted["per_class"])
    expect(page.locator("#groups .tile")).to_have_count(validation)


def test_fit_report_must_be_an_html_file_and_is_checked_before_the_model(fit_task, tmp_path):
    head, missing_model = tmp_path / "h.safetensors", tmp_path / "no-such-model"
    result = cli("fit", fit_task / "train", "-o", head, "--model", missing_model,
                 "--report", tmp_path / "fit.png")  # fmt: skip
    assert_clean_error(result, "--report", "fit.png", ".html")


# ---------------------------------------------------------------------------- attention-map --index


@pytest.mark.slow
def test_attention_map_index_shows_each_overlay_and_each_failure(
    classified, tiny_checkpoint, tmp_path, open_page
):
    photos = classified.parent / "photos"
    result = cli("attention-map", photos, "-d", tmp_path / "maps", "--index",
                 "--model", tiny_checkpoint)  # fmt: skip
    assert result.exit_code == 1, result.stderr  # broken.jpg
    assert "wrote" in result.stderr and "index.html" in result.stderr
    shown = open_page(tmp_path / "maps" / "index.html")
    page = shown.page
    assert page.locator("#groups .tile").count() == 5
    assert shown.texts("#groups .tile .name") == sorted(p.name for p in photos.iterdir())
    assert "truncated" in page.locator("#groups .tile.failed").inner_text().lower()
    for image in page.locator("#groups .tile img").all():
        image.scroll_into_view_if_needed()
        assert image.evaluate("i => i.decode().then(() => i.naturalWidth)") > 0
    page.locator("#groups .tile img").first.click()  # the full overlay, beside the page
    expect(page.locator("#viewer .large img")).to_have_attribute("src", "astronaut.png")


def test_attention_map_index_needs_an_output_dir(tmp_path):
    cat = Path(__file__).resolve().parent.parent / "examples" / "cat.jpg"
    result = cli("attention-map", cat, "-o", tmp_path / "cat.png", "--index")
    assert_clean_error(result, "--index", "--output-dir")


def test_page_data_cannot_end_its_script_early():
    from vithybrid_cli.report.page import Page, Tile, page_json

    path = "x/</script><script>alert(1)</script>\u2028.jpg"
    text = page_json(Page("t", tiles=[Tile(path, title="<b>")]))
    assert "</" not in text and "\u2028" not in text
    assert json.loads(text)["tiles"] == [{"path": path, "title": "<b>"}]
