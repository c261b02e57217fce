"""`vithybrid review`: fix labels in the browser (the server and its page are in
report/review.py; the corrections file in io/corrections.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from .app import app
from .common import run_command
from .options import Debug, Quiet, Root, UserError, root_folder
from .render import ProgressBar, counted, stderr, stdout


@app.command()
def review(
    source: Annotated[
        str,
        typer.Argument(
            help="A classify output (.jsonl, .json, .csv, .parquet, a folder of parts) or an "
            "issues file (fit --issues).",
            show_default=False,
            metavar="SOURCE",
        ),
    ],
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            metavar="CORRECTIONS",
            help="The corrections file (JSONL): each decision is appended; an existing one is "
            "continued. Thumbnails go to NAME_files/ beside it.",
            show_default=False,
        ),
    ],  # fmt: skip
    labels: Annotated[
        str | None,
        typer.Option(help="More labels to choose from, comma-separated (a,b,c).", metavar="A,B"),
    ] = None,
    labels_from: Annotated[
        str | None,
        typer.Option(help="More labels to choose from: a file with one a line.", metavar="FILE"),
    ] = None,
    host: Annotated[
        str, typer.Option(help="The address to listen on (another than 127.0.0.1 exposes it).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="The port (0: a free one).")] = 0,
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Print the URL, open no browser.")
    ] = False,
    root: Root = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Fix labels in the browser: number keys or typing pick a label, Enter accepts, arrows
    move; each decision is appended to CORRECTIONS (for fit --corrections). Ctrl-C stops."""

    def body() -> int:
        import os
        from pathlib import Path

        from ..extras import require
        from ..io.corrections import read_correction_lines
        from ..report import review as server
        from ..report.gallery import thumbnail_folder

        require("starlette", "review")
        require("uvicorn", "review")
        parent = Path(output).parent
        if not parent.is_dir():
            raise UserError(f"-o {output!r}: the folder {str(parent)!r} does not exist")
        if Path(output).is_dir():
            raise UserError(f"-o {output!r}: a folder, not a corrections file")
        root_folder(root)
        extra = more_labels(labels, labels_from)
        try:
            sock = server.listen(host, port)
        except OSError as error:
            raise UserError(f"--host {host} --port {port}: {error.strerror or error}") from None
        with sock:
            base = Path(source) if os.path.isdir(source) else Path(source).parent
            bases = [Path(root), base] if root else [base]
            with ProgressBar("thumbnails", not quiet) as progress:
                folder = thumbnail_folder(output)
                session = server.open_session(source, output, extra_labels=extra, bases=bases,
                                              folder=folder, progress=progress)  # fmt: skip
            bound = sock.getsockname()[1]
            token = server.new_token()
            app_ = server.create_app(session, token, server.own_hosts(host, bound))
            url = server.url_of(host, bound, token)
            reviewed = sum(item.path in session.current for item in session.items)
            if not quiet:
                stderr.print(
                    f"{counted(len(session.items), 'photo')} ({reviewed} reviewed), "
                    f"{counted(len(session.labels), 'label')}; decisions go to {output}; "
                    "Ctrl-C stops",
                    soft_wrap=True,
                )
            if session.not_found:
                stderr.print(
                    f"[yellow]warning:[/yellow] {counted(session.not_found, 'image')} not found: "
                    "run review from the folder classify ran in, or pass --root DIR",
                    soft_wrap=True,
                )
            stdout.print(url, soft_wrap=True, markup=False, highlight=False)
            stdout.file.flush()  # a script reading the URL from a pipe gets it now
            if not no_browser:
                import webbrowser

                webbrowser.open(url)
            server.serve(app_, sock)
        decisions = len(read_correction_lines(output)) if os.path.exists(output) else 0
        stderr.print(f"stopped: {counted(decisions, 'decision')} in {output}", soft_wrap=True)
        return 0

    run_command(body, debug)


def more_labels(labels: str | None, labels_from: str | None) -> list[str]:
    """--labels a,b,c and --labels-from FILE (one a line), in that order."""
    extra = [label.strip() for label in (labels or "").split(",") if label.strip()]
    if labels_from is not None:
        with open(labels_from, encoding="utf-8") as handle:
            extra += [line.strip() for line in handle if line.strip()]
    return extra
