"""MkDocs hook: the CLI reference, generated at build time from the Typer app.

The page reference/cli.md holds one marker line; this hook replaces it with every command of
`vithybrid` and every argument and option, from the same definitions (and the same help
records) that `vithybrid COMMAND --help` prints. A command or option added to the app appears
in the site on the next build, with nothing to edit here.

Typer may ship its own copy of click (typer._click), so this uses only what both share:
`typer.main.get_command`, `list_commands` / `get_command`, `get_usage`, `get_params` and each
parameter's `get_help_record`.
"""

from __future__ import annotations

import html
from typing import Any

MARKER = "<!-- cli-reference -->"
PAGE = "reference/cli.md"


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell (no pipes, no raw HTML, no line breaks)."""
    return html.escape(" ".join(text.split()), quote=False).replace("|", "\\|")


def parameter_row(parameter: Any, context: Any) -> str:
    """One table row: the names, the value it takes, and the help with its [default: ...]."""
    record = parameter.get_help_record(context)
    names_and_type, help_text = record if record else (parameter.name or "", parameter.help or "")
    names = [*parameter.opts, *parameter.secondary_opts]
    if parameter.param_type_name == "argument":
        names = [(parameter.name or "").upper()]
    value = ""
    if " <" in names_and_type:  # "-k, --top-k <int range>": the type follows the names
        value = names_and_type[names_and_type.index(" <") + 1 :]
    shown = ", ".join(f"`{name}`" for name in names)
    return f"| {shown} | {cell(value)} | {cell(help_text)} |"


def parameter_table(command: Any, context: Any) -> list[str]:
    rows = [parameter_row(p, context) for p in command.get_params(context) if not p.hidden]
    return ["| name | value | meaning |", "| --- | --- | --- |", *rows] if rows else []


def help_paragraphs(text: str) -> str:
    """A command's help as Markdown paragraphs (its blank lines kept, raw HTML escaped)."""
    return html.escape(text.strip(), quote=False)


def usage_block(command: Any, context: Any) -> list[str]:
    return ["```", command.get_usage(context).removeprefix("Usage: "), "```"]


def cli_reference_markdown(app: Any = None) -> str:
    """Markdown for every command of the app (default: vithybrid's), in `--help` order."""
    import typer.main

    if app is None:
        from vithybrid_cli.cli import app
    group = typer.main.get_command(app)
    root = group.context_class(group, info_name="vithybrid")
    lines = [*usage_block(group, root), "", help_paragraphs(group.help or "")]
    lines += ["", *parameter_table(group, root)]
    for name in group.list_commands(root):
        command = group.get_command(root, name)
        if command is None or command.hidden:
            continue
        context = command.context_class(command, info_name=name, parent=root)
        lines += ["", f"## {name}", "", *usage_block(command, context), ""]
        lines += [help_paragraphs(command.help or ""), "", *parameter_table(command, context)]
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"{PAGE} lost its marker line {MARKER}")
    return markdown.replace(MARKER, cli_reference_markdown())
