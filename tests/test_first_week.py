"""What a new user hit in their first week (issue #27): each mistake stops at once with one line
that names the user's own file or value and the real cause, and help reads whole at 80 columns.

The helpers (`cli`, `assert_clean_error`) are test_cli's; the tiny checkpoint is conftest's.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image
from test_cli import assert_clean_error, cli
from typer.testing import CliRunner

from vithybrid_cli.cli import app


@pytest.fixture(scope="session")
def tiny(tiny_checkpoint) -> Path:
    return tiny_checkpoint


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[str]:
    path = tmp_path_factory.mktemp("photos") / "cat.jpg"
    Image.new("RGB", (80, 60), (200, 120, 40)).save(path)
    return [str(path)]


# ---------------------------------------------------------------------------- output formats


@pytest.mark.parametrize("name", ["labels.cvs", "labels.xyz", "labels.txt", "labels"])
def test_classify_refuses_an_output_suffix_it_does_not_write(tiny, photos, tmp_path, name):
    target = tmp_path / name
    result = cli("classify", photos[0], "--model", tiny, "-o", target)
    assert_clean_error(result, name, ".jsonl", ".csv", ".parquet")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not target.exists()


def test_classify_format_still_overrides_the_output_suffix(tiny, photos, tmp_path):
    target = tmp_path / "labels.txt"  # --format overrides the suffix, as documented
    result = cli("classify", photos[0], "--model", tiny, "-f", "csv", "-o", target)
    assert result.exit_code == 0, result.stderr
    assert target.read_text().startswith("path,label_1,")
    to_stdout = cli("classify", photos[0], "--model", tiny, "-o", "-")
    assert to_stdout.exit_code == 0 and to_stdout.stdout.startswith('{"path"')


# ---------------------------------------------------------------------------- model names


def test_a_mistyped_short_name_gets_a_suggestion_before_any_network(no_network, hf_hub_cache):
    result = cli("classify", "any.jpg", "-m", "hybrid-smal-384")
    assert_clean_error(result, "hybrid-smal-384", "did you mean hybrid-small-384?")
    assert "unreachable" not in result.stderr and no_network == []


@pytest.mark.parametrize(
    ("name", "suggested"),
    [("hybrid-smal-384", "hybrid-small-384"), ("hybrid-tiny-224-in21", "hybrid-tiny-224-in21k"),
     ("hybrid-xxl", None), ("hybrid-small-384", None), ("timm/hybrid-smal-384", None),
     ("gpt2", None)],
)  # fmt: skip
def test_misspelled_short_name_looks_only_at_short_names(name, suggested):
    from vithybrid_cli.model.weights import misspelled_short_name

    message = misspelled_short_name(name)
    if suggested:
        assert f"did you mean {suggested}?" in message
    elif name.startswith("hybrid-") and name != "hybrid-small-384":
        assert "not a short name" in message
    else:
        assert message is None


# ---------------------------------------------------------------------------- error lines


@pytest.fixture
def read_only_folder(tmp_path, monkeypatch):
    """A folder no file can be created in: chmod 555, or (as root, who may write anything) an
    os.open that refuses to create files there, as the kernel would."""
    import errno
    import os

    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real_open = os.open

        def refusing_open(file, flags, *args, **kwargs):
            if flags & os.O_CREAT and os.path.dirname(os.path.abspath(file)) == str(folder):
                raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(file))
            return real_open(file, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", refusing_open)
    yield folder
    folder.chmod(0o755)


def test_a_read_only_output_folder_names_the_output_not_its_lock(tiny, photos, read_only_folder):
    target = read_only_folder / "labels.csv"
    result = cli("classify", photos[0], "--model", tiny, "-o", target)
    assert_clean_error(result, f"{target}: permission denied", str(read_only_folder))
    assert ".lock" not in result.stderr


def test_a_failed_atomic_write_names_the_users_file_not_the_temp_file(read_only_folder):
    from vithybrid_cli.cli.common import error_line
    from vithybrid_cli.files import atomic_write

    target = read_only_folder / "g.jsonl"
    with pytest.raises(PermissionError) as raised, atomic_write(target) as file:
        file.write("never")
    line = error_line(raised.value)
    assert line.startswith(f"{target}: permission denied") and ".tmp" not in line, line


def test_an_output_under_a_file_says_not_a_directory(tiny, photos):
    result = cli("classify", photos[0], "--model", tiny, "-o", f"{photos[0]}/labels.csv")
    assert_clean_error(result, f"{photos[0]}: not a directory")
    assert "file exists" not in result.stderr


def test_a_photo_as_the_model_is_not_a_weights_file(photos):
    result = cli("classify", photos[0], "--model", photos[0])
    assert_clean_error(result, photos[0], "not a checkpoint or weights file")
    assert "mmap" not in result.stderr


def test_weights_of_another_configuration_are_summarized_in_one_line(
    tiny, photos, edited_checkpoint
):
    other = edited_checkpoint(tiny, hidden_size=48)  # every transformer tensor mis-shaped
    result = cli("classify", photos[0], "--model", other)
    assert_clean_error(result, str(other), "wrong shapes (", " more)", "config.json")
    assert len(result.stderr.strip().splitlines()) == 1
    assert len(result.stderr) < 600, result.stderr


# ---------------------------------------------------------------------------- help, piped lines


def command_options() -> dict[str, list[str]]:
    """Every command's option names (long, short and --no- forms), from the click command."""
    import typer

    from vithybrid_cli.cli import app

    group = typer.main.get_command(app)
    names = {"": [opt for param in group.params for opt in param.opts + param.secondary_opts]}
    for name, command in group.commands.items():
        names[name] = [
            opt for param in command.params for opt in param.opts + param.secondary_opts
            if opt.startswith("-")
        ]  # fmt: skip
    return names


def test_help_at_80_columns_prints_every_option_name_whole_and_no_bool():
    commands = command_options()
    assert {"classify", "embed", "duplicates"} <= set(commands)
    for command, options in commands.items():
        result = CliRunner().invoke(app, [*command.split(), "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        assert max(len(line) for line in result.output.splitlines()) <= 80
        words = set(result.output.replace("│", " ").replace(",", " ").split())
        cut = [option for option in options if option not in words]
        assert not cut, f"vithybrid {command} --help at 80 columns cuts {cut}"
        assert "<bool>" not in result.output, command


def test_a_long_line_piped_to_a_file_is_not_wrapped():
    import subprocess
    import sys

    sentence = " ".join(f"word{i}" for i in range(40))  # about 280 characters
    code = f"from vithybrid_cli.cli.render import stderr, stdout; stderr.print({sentence!r}); "
    code += f"stdout.print({sentence!r})"
    env = {**os.environ, "COLUMNS": "80"}
    env.pop("FORCE_COLOR", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == sentence + "\n" and done.stdout == sentence + "\n"


# ---------------------------------------------------------------------------- memory


def test_batch_memory_estimate_grows_as_the_work_does():
    from vithybrid_cli.model.config import ViTHybridConfig
    from vithybrid_cli.pipeline.runtime import GIB, batch_memory_bytes

    config = ViTHybridConfig()  # google's: BiT-R50 stages + ViT-B/16

    def need(side: int, batch: int = 1, **options) -> int:
        return batch_memory_bytes(config, (side, side), batch, 4, **options)

    assert need(384, 8) < 2 * GIB < 100 * GIB < need(20000)  # the size that was killed at 23 GB
    assert need(384, 2) - need(384, 1) == need(384, 3) - need(384, 2) > 0  # linear in the batch
    assert need(768) > 3 * need(384)  # about the pixels
    assert batch_memory_bytes(config, (384, 384), 1, 2) < need(384)  # bfloat16 halves it
    tokens = (384 // 16) ** 2 + 1
    maps = need(384, attention_maps=True) - need(384)
    assert maps >= 2 * config.num_attention_heads * tokens**2 * 4  # scores and probabilities
    assert need(384, parameters=1000) - need(384) == 4000
    assert need(384, queued=2) - need(384) == 2 * 3 * 384 * 384 * 4  # float32 inputs waiting


def test_available_memory_reads_the_machine_or_the_override(monkeypatch):
    import torch

    from vithybrid_cli.pipeline.runtime import available_memory, largest_side

    found = available_memory(torch.device("cpu"))
    assert found is None or found > 0
    monkeypatch.setenv("VITHYBRID_AVAILABLE_MEMORY", "3e9")
    assert available_memory(torch.device("cpu")) == 3_000_000_000
    assert largest_side(lambda side: side * side <= 10_000, 16, 1000) == 96
    assert largest_side(lambda side: False, 16, 1000) is None


def test_an_image_size_that_cannot_fit_is_refused_naming_the_one_that_does(
    tiny, photos, monkeypatch
):
    monkeypatch.setenv("VITHYBRID_AVAILABLE_MEMORY", str(2 << 30))  # 2 GiB, whatever the machine
    result = cli("classify", photos[0], "-m", tiny, "--image-size", "20000",
                 "--interpolate-pos-encoding")  # fmt: skip
    assert_clean_error(result, "20000x20000", "2.0 GB is available", "at most --image-size")
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    side = int(result.stderr.split("--image-size ")[1].split("x")[0])
    assert 64 <= side < 20000


def test_a_batch_that_cannot_fit_is_lowered_or_refused(tiny, photos, monkeypatch):
    from vithybrid_cli import load_model
    from vithybrid_cli.pipeline.runner import Runner, RunOptions
    from vithybrid_cli.pipeline.runtime import batch_memory_bytes

    model = load_model(tiny, dtype="float32")
    options = RunOptions(image_size=(256, 256), interpolate_pos_encoding=True, workers=2)
    three = batch_memory_bytes(model.config, (256, 256), 3, 4, queued=2 * 3 + 2)
    monkeypatch.setenv("VITHYBRID_AVAILABLE_MEMORY", str(three))
    assert Runner(model, options).batch_size == 3  # the automatic 8 (CPU), lowered to fit
    result = cli("classify", photos[0], "-m", tiny, "--image-size", "256", "--dtype", "float32",
                 "--interpolate-pos-encoding", "--workers", 2, "--batch-size", 8)  # fmt: skip
    assert_clean_error(result, "--batch-size 8 at 256x256", "--batch-size 3 fits")


@pytest.mark.parametrize("name", ["labels.csv", "labels.parquet", "vectors.npy", "labels.jsonl"])
def test_ray_engine_refuses_an_output_that_names_one_file(tmp_path, name):
    # item 5: -o labels.csv made a folder named labels.csv
    result = cli("classify", tmp_path, "--engine", "ray", "-o", tmp_path / name)
    assert result.exit_code == 2
    line = result.output.strip()
    assert line.startswith("error: --engine ray writes a folder of parts, not one ")
    assert f"-o {tmp_path / Path(name).stem}/" in line
    assert not (tmp_path / name).exists()
    (tmp_path / name).mkdir()  # a folder of that name from an earlier run: taken as one
    again = cli("classify", tmp_path / name, "--engine", "ray", "-o", tmp_path / name, "--strict")
    assert "--strict is the local engine's" in again.output
