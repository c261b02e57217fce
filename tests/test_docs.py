"""The documentation: the README's promises, the generated CLI reference, the built site.

The CLI reference must list every option that `vithybrid COMMAND --help` lists, for every
command that `vithybrid --help` lists: checked on the generator's Markdown (fast) and on the site
that `mkdocs build --strict` builds (slow: a few seconds of MkDocs and mkdocstrings).
"""

from __future__ import annotations

import html
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vithybrid_cli.cli import app

REPO = Path(__file__).resolve().parent.parent
OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def help_text(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.stdout


def commands_in_help() -> list[str]:
    """The command names of the `Commands` panel of `vithybrid --help`."""
    panel = help_text().split("Commands", 1)[1].split("╰", 1)[0]
    return re.findall(r"^│ (\S+)\s", panel, flags=re.MULTILINE)


def options_in_help(*command: str) -> set[str]:
    """Every option that `vithybrid COMMAND --help` lists: the names (long, short, --no- forms)
    that start a row of its option panels, before the row's `<type>`."""
    rows = [line.lstrip("│ *") for line in help_text(*command).splitlines()]  # *: required
    rows = [row for row in rows if row.startswith("-")]
    return {name for row in rows for name in OPTION.findall(row.split("<", 1)[0])}


def load_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    return hooks


def sections(text: str, heading: re.Pattern) -> dict[str, str]:
    """{command: its section}, split at each heading; the top-level options under ''."""
    parts = heading.split(text)
    found = {"": parts[0]}
    found.update(zip(parts[1::2], parts[2::2], strict=True))
    return found


def assert_every_option_documented(documented: dict[str, str], code: str) -> None:
    """`code` formats an option as the page shows it, e.g. "`--top-k`" or "<code>--top-k</code>"."""
    commands = commands_in_help()
    assert {"classify", "embed", "attention-map", "info", "fit", "models"} <= set(commands)
    assert set(commands) <= set(documented), "a command is missing from the CLI reference"
    for command in ["", *commands]:
        options = options_in_help(*([command] if command else []))
        assert "--help" in options and len(options) >= 2, (command, options)
        missing = sorted(o for o in options if code.format(o) not in documented[command])
        assert not missing, f"vithybrid {command} --help lists {missing}, the reference does not"


def test_generated_cli_reference_lists_every_command_and_option():
    markdown = load_hooks().cli_reference_markdown()
    documented = sections(markdown, re.compile(r"^## (\S+)$", re.MULTILINE))
    assert_every_option_documented(documented, "`{}`")
    assert "| `--top-k`, `-k` | &lt;int range&gt; |" in documented["classify"]
    assert "[default: 5; x&gt;=1]" in documented["classify"]  # the help record, extras included


def test_readme_fits_on_a_screen_and_ci_runs_its_setup_commands():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    setup = readme.split("## Set-up", 1)[1].split("```", 2)[1].strip().splitlines()
    assert setup == ['pip install -e ".[dev]"', "python -m pytest"]
    ci = (REPO / ".ci" / "run").read_text()
    for command in setup:
        assert re.search(rf"^{re.escape(command.replace('pip', 'python -m pip', 1))}$|"
                         rf"^{re.escape(command)}$", ci, re.MULTILINE), command  # fmt: skip
    assert re.search(r"^[\w= ]*mkdocs build --strict", ci, re.MULTILINE)


@pytest.mark.slow
def test_site_builds_strict_with_every_option_the_help_lists(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra (in dev): pip install -e '.[docs]'")
    site = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr

    cli_page = (site / "reference" / "cli" / "index.html").read_text()
    documented = sections(cli_page, re.compile(r'<h2 id="([\w-]+)"'))
    assert_every_option_documented(documented, "<code>{}</code>")

    api_page = (site / "reference" / "python-api" / "index.html").read_text()
    for name in ["load_model", "classify", "embed", "fit_head", "save_head", "load_head"]:
        assert f'id="vithybrid_cli.{name}"' in api_page, name
    # text kept once, included where it is needed: the README's model table, the benchmarks
    assert (
        "vit_small_r26_s32_384.augreg_in21k_ft_in1k"
        in (site / "guides" / "models" / "index.html").read_text()
    )
    benchmarks_page = (site / "reference" / "benchmarks" / "index.html").read_text()
    benchmarks_text = re.sub(r"<[^>]+>", "", benchmarks_page)  # the words, without the markup
    headings = re.findall(r"^## (.+)$", (REPO / "benchmarks" / "README.md").read_text(), re.M)
    assert headings
    assert all(html.escape(title.replace("`", "")) in benchmarks_text for title in headings)
    assert not (site / "readme-snippets").exists() and not (site / "hooks.py").exists()
