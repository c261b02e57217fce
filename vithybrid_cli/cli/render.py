"""What the command line shows: result tables, the one progress bar (a run's, thumbnails',
fit's embedding), the fit report, info rows.

Only the CLI uses this module; the library returns data and logs. Results go to `stdout`;
progress, per-file errors and summaries to `stderr`, so pipes stay clean.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

stderr = Console(stderr=True, highlight=False)
stdout = Console(highlight=False)
# Piped to a file or a program, a line stays one line (rich would wrap it at 80 columns); tables
# keep their width and wrap inside their cells.
stderr.soft_wrap, stdout.soft_wrap = not stderr.is_terminal, not stdout.is_terminal


def tidy_help() -> None:
    """Typer's help, readable at 80 columns: option names whole (their columns never shrink,
    the help text wraps instead; a --no- form goes under its option, not in a column of its
    own) and no `<bool>` after a flag. Process-wide; idempotent."""
    import typer.core
    import typer.rich_utils
    from rich.text import Text

    if getattr(typer.rich_utils.Table, "tidy", False):
        return

    def stack(name: Any, negative: Any) -> Any:
        return Text("\n").join([name, negative]) if negative.plain else name

    class HelpTable(Table):
        tidy = True

        def add_row(self, *renderables: Any, **kwargs: Any) -> None:
            cells = list(renderables)
            if len(cells) >= 6:  # [required], long, short, --no- long, --no- short, type, help
                first = len(cells) - 6
                long, short, no_long, no_short = cells[first : first + 4]
                cells[first : first + 4] = [stack(long, no_long), stack(short, no_short)]
            super().add_row(*cells, **kwargs)
            for column in self.columns[:-2]:  # option names; the type and help columns wrap
                column.no_wrap = True

    display_type = typer.core.TyperOption.display_type_rich

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        return None if self.is_bool_flag else display_type(self, ctx)

    typer.rich_utils.Table = HelpTable
    typer.core.TyperOption.display_type_rich = display_type_rich


class ProgressBar:
    """The CLI's one progress bar, on stderr (on a terminal, and only when `show`): `label`, the
    bar, done/total; `timing` adds the rate (set through `update(rate=...)`) and the time left.

    Entered, it is the library's progress callback, `bar(done, total)` (thumbnails, fit's
    embedding); the run's Reporter moves it on with `update`.
    """

    def __init__(self, label: str, show: bool, timing: bool = False) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.label, self.shown = label, show and stderr.is_terminal
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
        if timing:
            columns += [TextColumn("{task.fields[rate]}"), TimeRemainingColumn()]
        self.progress = Progress(*columns, console=stderr, transient=True, disable=not self.shown)

    def __enter__(self) -> ProgressBar:
        self.progress.__enter__()
        self.task = self.progress.add_task(self.label, total=None, rate="")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.__exit__(*exc_info)

    def __call__(self, done: int, total: int | None) -> None:
        self.progress.update(self.task, completed=done, total=total)

    def update(self, **fields: Any) -> None:
        self.progress.update(self.task, **fields)


class Reporter:
    """The run's progress (job.run_job's `progress`): the progress bar with its rate, and one
    stderr line per failure."""

    def __init__(self, verb: str, show: bool, countable: bool) -> None:
        self.verb, self.started, self.done = verb, time.perf_counter(), 0
        self.bar = ProgressBar(verb, show, timing=True)
        self.wants_total = self.bar.shown and countable

    def __enter__(self) -> Reporter:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.bar.__exit__(*exc_info)

    def start(self, total: int | None) -> None:
        self.bar.update(total=total)

    def advance(self, result: Any) -> None:
        from rich.markup import escape

        from ..data.items import display_path

        if not result.ok:  # a path or message with [brackets] is text, not markup
            line = f"{display_path(result.path)}: {result.error}"
            stderr.print(f"[red]error:[/red] {escape(line)}", soft_wrap=True)
        self.done += 1
        rate = self.done / max(time.perf_counter() - self.started, 1e-9)
        self.bar.update(advance=1, rate=f"{rate:.1f} img/s")


def render_table(results: list[Any]) -> None:
    from rich.markup import escape

    from ..data.items import display_path
    from ..io.outputs import record_of

    records = [record_of(r.path, r.payload, r.error) for r in results]
    if len(records) == 1 and "top_k" in records[0]:
        title = display_path(records[0]["path"])
        if records[0].get("label", "") is None:
            title += f" (abstain: best score {records[0]['score']:.3f} < --min-score)"
        table = Table(title=escape(title), title_justify="left")
        for column, justify in (("label", "left"), ("score", "right"), ("", "left")):
            table.add_column(column, justify=justify)
        for entry in records[0]["top_k"]:
            bar = "█" * round(entry["score"] * 30)
            table.add_row(escape(entry["label"]), f"{entry['score']:.3f}", f"[cyan]{bar}[/cyan]")
    else:
        table = Table()
        for column, justify in (("path", "left"), ("label", "left"), ("score", "right")):
            table.add_column(column, justify=justify)
        for record in records:
            path = escape(display_path(record["path"]))
            if "top_k" in record:
                best = record["top_k"][0]
                label = record.get("label", best["label"])
                shown = "[dim]abstain[/dim]" if label is None else escape(label)
                table.add_row(path, shown, f"{best['score']:.3f}")
            else:
                table.add_row(path, f"[red]{escape(record['error'])}[/red]", "")
    stdout.print(table)


def describe(loaded: Any) -> list[tuple[str, str]]:
    """The rows `info` shows for a loaded model."""
    from huggingface_hub import constants

    config, checkpoint = loaded.config, loaded.checkpoint
    parameter = next(loaded.parameters())
    backbone = config.backbone_config
    depths = list(backbone.depths[: backbone.num_stages])
    channels, side, grid = loaded.backbone.out_channels, config.image_size, config.grid_size
    heads = f"{config.num_attention_heads} heads, MLP {config.intermediate_size}"
    return [
        ("model", checkpoint.name),
        ("revision", checkpoint.revision or ("main" if checkpoint.from_hub else "-")),
        ("local path", str(checkpoint.directory or checkpoint.weight_files[0])),
        ("weights", ", ".join(path.name for path in checkpoint.weight_files)),
        ("backbone", f"BiT depths {depths}, stride {config.stride}, {channels} channels"),
        ("encoder", f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, {heads}"),
        ("input", f"{side}x{side}, {grid[0]}x{grid[1]} tokens + CLS"),
        ("labels", str(loaded.num_labels)),
        ("pooler", "yes" if loaded.pooler is not None else "no"),
        ("parameters", f"{sum(p.numel() for p in loaded.parameters()):,}"),
        ("device", str(parameter.device)),
        ("dtype", str(parameter.dtype).removeprefix("torch.")),
        ("cache", str(constants.HF_HUB_CACHE)),
    ]


def backend_rows() -> list[tuple[str, str]]:
    """`info`'s row on the OpenVINO backend: installed or not, and its default precision."""
    from ..pipeline.backends.openvino import TORCH_DTYPES, openvino_status

    status = openvino_status()
    if status is None:
        return [("openvino", 'not installed (pip install "vithybrid[openvino]")')]
    version, precision = status
    return [("openvino", f"{version}: --backend openvino computes in {TORCH_DTYPES[precision]}")]


def render_fit(report: Any) -> None:
    """The fit's validation results as Rich tables on stdout."""
    from rich.markup import escape

    labels = [escape(label) for label in report.labels]
    if report.accuracy is None:
        stdout.print(f"no validation split: C={report.c:g}, no accuracy to report")
    else:
        how = "given" if len(report.c_scores) <= 1 else "chosen on the validation split"
        stdout.print(
            f"validation accuracy [bold]{report.accuracy:.3f}[/bold] on {sum(report.val_counts)} "
            f"images (C={report.c:g}, {how})"
        )
    table = Table(title="per class", title_justify="left")
    for column in ("label", "train", "validation", "precision", "recall", "F1"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for i, label in enumerate(labels):
        metrics = (report.precision, report.recall, report.f1)
        scores = [f"{values[i]:.3f}" for values in metrics] if report.precision else ["-"] * 3
        table.add_row(label, str(report.train_counts[i]), str(report.val_counts[i]), *scores)
    stdout.print(table)
    if report.confusion:
        matrix = Table(title="confusion matrix", title_justify="left")
        matrix.add_column("true \\ predicted")
        for label in labels:
            matrix.add_column(label, justify="right")
        for label, row in zip(labels, report.confusion, strict=True):
            matrix.add_row(label, *(str(count) if count else "[dim]0[/dim]" for count in row))
        stdout.print(matrix)


def report_fit(report: Any, output: str, as_json: bool, quiet: bool) -> None:
    """Left-out images and warnings on stderr, the results on stdout, then a summary line."""
    import json

    from ..data.items import display_path

    for path, message in report.errors:
        stderr.print(f"[red]error:[/red] {display_path(path)}: {message}", soft_wrap=True)
    for warning in report.warnings:
        stderr.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
    if as_json:
        stdout.print_json(json.dumps({"head": output, **report.to_dict()}))
    else:
        render_fit(report)
    if not quiet:
        left_out = f", {len(report.errors)} left out" if report.errors else ""
        train, validation = sum(report.train_counts), sum(report.val_counts)
        stderr.print(
            f"{len(report.labels)} labels, {train} training + {validation} validation images "
            f"({report.embedded} embedded, {report.cached} from the cache{left_out}) in "
            f"{report.seconds:.1f} s; wrote {output}",
            soft_wrap=True,
        )


def head_rows(path: str, head: Any) -> list[tuple[str, str]]:
    """The rows `info --head` shows (the fingerprint is how a --resume refusal names a head)."""
    from ..pipeline.tasks import head_fingerprint

    accuracy = head.validation_accuracy
    return [
        ("head", path),
        ("fingerprint", head_fingerprint(head)),
        ("labels", f"{head.num_classes}: " + ", ".join(head.labels)),
        ("model", head.model),
        ("revision", head.revision or "-"),
        ("weights", head.weights[:16]),
        ("pool", head.pool),
        ("embedding size", str(head.embedding_size)),
        ("image size", f"{head.image_size[0]}x{head.image_size[1]}"),
        ("interpolate", "yes" if head.interpolate_pos_encoding else "no"),
        ("C", f"{head.c:g}"),
        ("validation accuracy", "-" if accuracy is None else f"{accuracy:.3f}"),
        ("examples", ", ".join(f"{k}: {v}" for k, v in head.examples_per_class.items())),
        ("created", head.created or "-"),
    ]


def render_rows(rows: list[tuple[str, str]]) -> None:
    from rich.markup import escape

    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, escape(value))
    stdout.print(table)


def counted(count: int, noun: str) -> str:
    """`1 label`, `2 labels`."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
