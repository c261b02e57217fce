"""`--backend openvino`: our model converted by OpenVINO agrees with our torch float32 path, its
conversion is cached and reused, and what it cannot do fails in one line.

Every test uses the tiny checkpoint (random weights, 64x64); the converted graphs go to one
cache per module (VITHYBRID_CACHE), so each variant converts once (about 2 s on a loaded
2-core machine): the fast tests share two conversions (CLS only, all tokens), and the tests
that need one of their own (pooler, attention maps, another size, a real process) are slow.
float32 agrees with torch to about 2e-6 on these values (OpenVINO fuses and reorders the
float32 sums), so the float32 tolerance is 1e-4.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ov = pytest.importorskip("openvino", reason="the openvino extra is not installed")

from test_cli import assert_clean_error, cli, jsonl, run, script_path  # noqa: E402

import vithybrid_cli as vh  # noqa: E402
from vithybrid_cli.pipeline.backends import openvino as ovb  # noqa: E402
from vithybrid_cli.pipeline.journal import describe_differences  # noqa: E402

ATOL = 1e-4  # float32: see the module docstring
HAS_BF16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(scope="module")
def ov_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("openvino-cache")


@pytest.fixture(autouse=True)
def cache_env(ov_cache, monkeypatch) -> None:
    monkeypatch.setenv("VITHYBRID_CACHE", str(ov_cache))


@pytest.fixture(scope="module")
def torch_model(tiny_checkpoint):
    return vh.load_model(tiny_checkpoint, dtype="float32")


@pytest.fixture(scope="module")
def ov_model(tiny_checkpoint, ov_cache):
    os.environ["VITHYBRID_CACHE"] = str(ov_cache)  # module scope: monkeypatch is per test
    try:
        return vh.load_model(tiny_checkpoint, dtype="float32", backend="openvino")
    finally:
        del os.environ["VITHYBRID_CACHE"]


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    import checkpoints

    root = tmp_path_factory.mktemp("ov-photos")
    paths = []
    for index, image in enumerate(checkpoints.photographs(3)):
        path = root / f"photo{index}.png"
        image.convert("RGB").resize((96, 72)).save(path)
        paths.append(path)
    return paths


def close(got: torch.Tensor, want: torch.Tensor, atol: float = ATOL) -> None:
    torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=0)


def entries(cache: Path) -> set[str]:
    return {path.name for path in (cache / "openvino").iterdir() if path.name != "compiled"}


# ---------------------------------------------------------------------------- parity


def test_float32_logits_and_embeddings_match_torch(torch_model, ov_model, pixels):
    assert ov_model.precision == "f32" and ov_model.compute_dtype == torch.float32
    with torch.inference_mode():
        for cls_only in (True, False):
            want = torch_model(pixels, cls_only=cls_only)
            got = ov_model(pixels, cls_only=cls_only)
            assert got.last_hidden_state.shape == want.last_hidden_state.shape
            assert got.grid_size == want.grid_size
            close(got.logits, want.logits)
            close(got.cls_embedding, want.cls_embedding)
            if not cls_only:  # --pool mean and --tokens read every token
                close(got.patch_tokens.mean(dim=1), want.patch_tokens.mean(dim=1))
                close(got.last_hidden_state, want.last_hidden_state)
    # a batch of another size through the same graph (the batch dimension is dynamic)
    one = ov_model(pixels[:1], cls_only=True).logits
    close(one, torch_model(pixels[:1], cls_only=True).logits)


def test_float32_top_k_and_pools_through_the_api(torch_model, ov_model, photos):
    got, want = vh.classify(ov_model, photos, top_k=3), vh.classify(torch_model, photos, top_k=3)
    assert [[label for _, label, _ in row] for row in got] == [
        [label for _, label, _ in row] for row in want
    ]
    scores = [[score for *_, score in row] for row in got]
    np.testing.assert_allclose(scores, [[score for *_, score in row] for row in want], atol=ATOL)
    for pool in ("cls", "mean"):
        want = vh.embed(torch_model, photos, pool=pool, normalize=True)
        np.testing.assert_allclose(vh.embed(ov_model, photos, pool=pool), vh.embed(
            torch_model, photos, pool=pool), atol=ATOL)  # fmt: skip
        assert np.abs(vh.embed(ov_model, photos, pool=pool, normalize=True) - want).max() < ATOL


@pytest.mark.slow  # a conversion of its own (~2 s)
def test_pooler_matches_torch(make_checkpoint_dir, pixels):
    checkpoint = make_checkpoint_dir("tiny", 0, base=True)  # a pooler, no classifier
    want = vh.load_model(checkpoint, dtype="float32")(pixels, cls_only=True)
    got = vh.load_model(checkpoint, dtype="float32", backend="openvino")(pixels, cls_only=True)
    assert got.logits is None and want.logits is None
    close(got.pooler_output, want.pooler_output)


@pytest.mark.slow  # a conversion of its own (~2 s)
def test_attention_maps_match_torch(torch_model, ov_model, pixels):
    with torch.inference_mode():
        want = torch_model(pixels, output_attentions=True)
        got = ov_model(pixels, output_attentions=True)
    assert len(got.attentions) == len(want.attentions) == torch_model.config.num_hidden_layers
    for mine, theirs in zip(got.attentions, want.attentions, strict=True):
        close(mine, theirs)
    close(got.logits, want.logits)
    with pytest.raises(ValueError, match="cls_only"):
        ov_model(pixels, output_attentions=True, cls_only=True)


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no native bf16")
def test_bfloat16_agrees_within_bf16_rounding(tiny_checkpoint, torch_model, pixels):
    model = vh.load_model(tiny_checkpoint, dtype="bfloat16", backend="openvino")
    assert model.precision == "bf16" and model.compute_dtype == torch.bfloat16
    got, want = model(pixels).last_hidden_state, torch_model(pixels).last_hidden_state
    # bf16 keeps 8 bits of mantissa: ~0.4% per rounding, over a few layers of the tiny model
    scale = want.abs().max().item()
    close(got, want, atol=0.05 * scale)
    assert not torch.equal(got, want)  # it did run in bf16


@pytest.mark.slow  # two conversions of its own
@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no native bf16")
def test_a_bfloat16_model_after_a_float32_one_in_one_process_is_right(
    tiny_checkpoint, torch_model, pixels, tmp_path, monkeypatch
):
    # One compiled-blob folder shared by both precisions gave NaN or wrong values for the bf16
    # model compiled second (Sapphire Rapids, OpenVINO 2026.4): the cache keeps them apart.
    monkeypatch.setenv("VITHYBRID_CACHE", str(tmp_path))
    want = torch_model(pixels).last_hidden_state
    scale = want.abs().max().item()
    first = vh.load_model(tiny_checkpoint, dtype="float32", backend="openvino")
    close(first(pixels).last_hidden_state, want)
    for _ in range(2):  # compiled, then from the compiled cache
        second = vh.load_model(tiny_checkpoint, dtype="bfloat16", backend="openvino")
        got = second(pixels).last_hidden_state
        assert torch.isfinite(got).all()
        close(got, want, atol=0.05 * scale)
    compiled = tmp_path / "openvino" / "compiled"
    assert {path.name for path in compiled.iterdir()} == {"f32", "bf16"}


def test_auto_records_the_precision_openvino_compiled(tiny_checkpoint, pixels):
    from vithybrid_cli.pipeline.job import job_settings
    from vithybrid_cli.pipeline.runner import Runner
    from vithybrid_cli.pipeline.tasks import embed_task

    model = vh.load_model(tiny_checkpoint, backend="openvino")  # auto: OpenVINO's default
    model(pixels, cls_only=True)
    compiled = next(iter(model.compiled.values())).model
    actual = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    assert model.precision == actual == ("bf16" if HAS_BF16 else "f32")
    settings = job_settings(Runner(model), embed_task())
    assert settings["backend"] == "openvino"
    assert settings["dtype"] == ovb.TORCH_DTYPES[actual]
    torch_settings = job_settings(
        Runner(vh.load_model(tiny_checkpoint, dtype="float32")), embed_task()
    )
    assert torch_settings["backend"] == "torch" and torch_settings["dtype"] == "float32"


# ---------------------------------------------------------------------------- the cache


def test_a_second_model_reuses_the_cached_graph(tiny_checkpoint, ov_model, pixels, ov_cache,
                                                 monkeypatch):  # fmt: skip
    ov_model(pixels, cls_only=True)  # converted here unless an earlier test did
    before = entries(ov_cache)
    variant = ovb.Variant(True, False, 64, 64, False)
    folder = (
        ov_cache / "openvino" / ovb.cache_key(ov_model.torch_model, variant, ov_model.fingerprint)
    )
    stamp = (folder / "model.xml").stat().st_mtime_ns

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(ovb, "convert", no_conversion)
    again = vh.load_model(tiny_checkpoint, dtype="float32", backend="openvino")  # a new process'
    close(again(pixels, cls_only=True).logits, ov_model(pixels, cls_only=True).logits, atol=0)
    assert entries(ov_cache) == before
    assert (folder / "model.xml").stat().st_mtime_ns == stamp
    assert any((ov_cache / "openvino" / "compiled").iterdir())  # OpenVINO's compiled blobs


@pytest.mark.slow  # a conversion of its own (~2 s)
def test_another_image_size_gets_another_entry(ov_model, ov_cache):
    ov_model(torch.zeros(1, 3, 64, 64), cls_only=True)
    before = entries(ov_cache)
    out = ov_model(torch.zeros(2, 3, 96, 80), cls_only=True, interpolate_pos_encoding=True)
    assert out.logits.shape == (2, ov_model.num_labels)
    added = entries(ov_cache) - before
    assert len(added) == 1
    meta = json.loads((ov_cache / "openvino" / added.pop() / "meta.json").read_text())
    assert meta["grid_size"] == list(out.grid_size)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        ov_model(torch.zeros(1, 3, 96, 80), cls_only=True)


def test_a_race_lost_to_another_process_keeps_the_winner(torch_model, tmp_path, monkeypatch):
    monkeypatch.setenv("VITHYBRID_CACHE", str(tmp_path))
    variant = ovb.Variant(True, False, 64, 64, False)
    final = tmp_path / "openvino" / ovb.cache_key(torch_model, variant, "fp")

    def convert_while_another_wins(model, variant, folder: Path) -> None:
        final.mkdir(parents=True)  # the other process renamed its folder into place first
        (final / "meta.json").write_text("winner")
        (folder / "meta.json").write_text("loser")

    monkeypatch.setattr(ovb, "convert", convert_while_another_wins)
    assert ovb.converted_ir(torch_model, variant, "fp") == final
    assert (final / "meta.json").read_text() == "winner"
    assert [path.name for path in final.parent.iterdir()] == [final.name]  # no staging left


def test_cache_location_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VITHYBRID_CACHE", str(tmp_path / "mine"))
    assert ovb.cache_root() == tmp_path / "mine"
    monkeypatch.delenv("VITHYBRID_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ovb.cache_root() == tmp_path / "xdg" / "vithybrid"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert ovb.cache_root() == Path.home() / ".cache" / "vithybrid"


# ---------------------------------------------------------------------------- the CLI


def test_cli_classify_and_embed_match_torch_float32(tiny_checkpoint, photos, tmp_path):
    common = ["--model", tiny_checkpoint, "--dtype", "float32", "-q"]
    labels = {}
    for backend in ("torch", "openvino"):
        out = tmp_path / f"{backend}.jsonl"
        result = cli("classify", *photos, *common, "-k", 3, "-o", out, "--backend", backend)
        assert result.exit_code == 0, result.stderr
        labels[backend] = [[e["label"] for e in r["top_k"]] for r in jsonl(out.read_text())]
        npy = tmp_path / f"{backend}.npy"
        result = cli("embed", *photos, *common, "-o", npy, "--pool", "mean", "--backend", backend)
        assert result.exit_code == 0, result.stderr
    assert labels["openvino"] == labels["torch"] and len(labels["torch"]) == len(photos)
    np.testing.assert_allclose(np.load(tmp_path / "openvino.npy"), np.load(tmp_path / "torch.npy"),
                               atol=ATOL)  # fmt: skip


def test_duplicates_and_similar_with_the_openvino_backend(tiny_checkpoint, photos, tmp_path):
    """duplicates embeds with the backend asked for (float32: torch's groups); similar embeds
    its queries with the backend its vectors file recorded."""
    common = ["--model", tiny_checkpoint, "--dtype", "float32", "-q", "-t", "0.999"]
    groups = {}
    for backend in ("torch", "openvino"):
        out = tmp_path / f"{backend}-groups.jsonl"
        result = cli("duplicates", *photos, photos[0], *common, "-o", out, "--backend", backend)
        assert result.exit_code == 0, result.stderr
        groups[backend] = [group["paths"] for group in jsonl(out.read_text())]
    assert groups["openvino"] == groups["torch"]
    assert [str(photos[0])] * 2 in groups["torch"]  # the file given twice: exact copies
    vectors = tmp_path / "v.npy"
    result = cli("embed", *photos, "--model", tiny_checkpoint, "--dtype", "float32", "-q",
                 "-o", vectors, "--backend", "openvino")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "v.settings.json").read_text())["backend"] == "openvino"
    result = cli("similar", photos[1], "--in", vectors, "-k", 2, "-f", "jsonl")
    assert result.exit_code == 0, result.stderr
    [record] = jsonl(result.stdout)
    assert record["matches"][0]["path"] == str(photos[1])
    assert record["matches"][0]["score"] == pytest.approx(1.0, abs=1e-5)  # the same backend
    result = cli("similar", photos[1], "--in", vectors, "--backend", "torch")
    assert_clean_error(result, "was written with --backend openvino, not torch")


def test_resume_across_backends_is_refused(tiny_checkpoint, photos, tmp_path):
    out = tmp_path / "out.jsonl"
    common = ["--model", tiny_checkpoint, "--dtype", "float32", "-q", "-o", out]
    assert cli("classify", *photos, *common).exit_code == 0
    result = cli("classify", *photos, *common, "--resume", "--backend", "openvino")
    assert_clean_error(result, "was written with --backend torch, not openvino")


def test_journals_from_before_backends_resume_on_torch_only():
    old = {"model": "m", "dtype": "float32"}  # written before the key existed
    assert describe_differences(old, {**old, "backend": "torch"}) == []
    assert describe_differences(old, {**old, "backend": "openvino"}) == [
        "with --backend torch, not openvino"
    ]


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--device", "cuda"], "--backend openvino runs on the CPU, not cuda"),
        (["--compile"], "--compile is for --backend torch"),
    ],
)
def test_what_openvino_cannot_do_is_one_line(tiny_checkpoint, photos, flags, needle):
    result = cli("classify", photos[0], "--model", tiny_checkpoint, "--backend", "openvino", *flags)
    assert_clean_error(result, needle)


def test_missing_openvino_is_one_line(tiny_checkpoint, photos, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    out = tmp_path / "x.npy"
    result = cli("embed", photos[0], "--model", tiny_checkpoint, "-o", out, "--backend", "openvino")
    assert_clean_error(
        result, 'error: --backend openvino needs OpenVINO: pip install "vithybrid[openvino]"'
    )
    assert not out.exists()
    info = cli("info", "--model", tiny_checkpoint)
    assert info.exit_code == 0, info.stderr
    assert 'not installed (pip install "vithybrid[openvino]")' in info.stdout


def test_info_says_whether_openvino_is_installed(tiny_checkpoint, monkeypatch):
    result = cli("info", "--model", tiny_checkpoint)
    assert result.exit_code == 0, result.stderr
    assert f"computes in {'bfloat16' if HAS_BF16 else 'float32'}" in result.stdout


@pytest.mark.slow
def test_installed_script_runs_the_openvino_backend(tiny_checkpoint, photos, ov_cache, tmp_path):
    """A real process: the cache from this module's runs is reused, and labels match torch."""
    outs = {}
    for backend in ("torch", "openvino"):
        outs[backend] = tmp_path / f"{backend}.jsonl"
        result = run([script_path(), "classify", *photos, "--model", tiny_checkpoint, "--dtype",
                      "float32", "-k", 2, "-o", outs[backend], "--backend", backend],
                     VITHYBRID_CACHE=str(ov_cache))  # fmt: skip
        assert result.returncode == 0, result.stderr
    labels = {b: [r["top_k"][0]["label"] for r in jsonl(p.read_text())] for b, p in outs.items()}
    assert labels["openvino"] == labels["torch"]
