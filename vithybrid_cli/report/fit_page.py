"""The page of a fitted head: `vithybrid fit ... --report fit.html`.

From a FitReport (pipeline/fit/fitting.py): per-class precision and recall, the confusion matrix as
a heatmap, and the validation images, the misclassified first, each with its true and predicted
label; the images left out of the fit are listed with their errors. With `fit --issues`, an
Issues view first: every flagged example (pipeline/fit/issues.py), most likely first, each tile
with given → suggested, its kind and score.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .gallery import GalleryReport, ThumbnailOptions, pictured, thumbnails_beside
from .page import Page, Tile, View, heatmap, table, write_page


def write_fit_page(
    report: Any,
    output: str,
    *,
    head_path: str = "",
    thumbnails: ThumbnailOptions | None = None,
) -> GalleryReport:
    """Thumbnails of `report`'s validation images beside `output`, then the page itself."""
    started = time.perf_counter()
    issues = getattr(report, "issues", None) or []
    paths = list(dict.fromkeys([path for path, _, _ in report.validation]
                               + [issue["path"] for issue in issues]))  # fmt: skip
    thumbs, stats, folder = thumbnails_beside(output, paths, thumbnails or ThumbnailOptions())
    page_dir = Path(output).parent
    tiles, wrong = [], []
    for path, truth, ranked in report.validation:
        predicted, score = ranked[0]
        tile = Tile(path, title=predicted, top_k=ranked)
        if predicted == truth:
            tile.group, tile.detail = truth, f"{score:.3f}"
        else:
            tile.group, tile.kind = f"{truth} → {predicted}", "wrong"
            tile.detail = f"true: {truth} · {score:.3f}"
            wrong.append(len(tiles))
        tiles.append(pictured(tile, thumbs.get(path), page_dir, folder))
    # the most confident mistakes first: those are the labels worth checking
    wrong.sort(key=lambda i: (tiles[i].group, -(tiles[i].top_k[0][1]), i))
    by_truth = sorted(range(len(tiles)), key=lambda i: (report.validation[i][1], i))
    flagged = list(range(len(tiles), len(tiles) + len(issues)))
    tiles += [pictured(issue_tile(issue), thumbs.get(issue["path"]), page_dir, folder)
              for issue in issues]  # fmt: skip
    views = [
        View(
            "Misclassified",
            wrong,
            "Validation images whose prediction is not their label, "
            "grouped as true → predicted; most confident first.",
        ),  # fmt: skip
        View("All validation", by_truth, "Every validation image, by its true label."),
    ]
    if issues:
        note = ("Labels probably wrong (given → suggested), outliers and train/validation near "
                "copies, most likely first; fix them in a corrections file and refit.")  # fmt: skip
        views.insert(0, View("Issues", flagged, note, grouped=False))
    page = Page(
        title=f"Fitted head {head_path}".strip(),
        subtitle=_subtitle(report),
        facts=_facts(report, len(wrong)) + ([("issues", f"{len(issues):,}")] if issues else []),
        charts=[heatmap("Confusion matrix (validation)", report.labels, report.labels,
                        report.confusion, "true", "predicted")] if report.confusion else [],
        tables=_tables(report),
        views=views,
        tiles=tiles,
    )  # fmt: skip
    write_page(page, output)
    return GalleryReport(
        output=output,
        thumbnails=str(folder),
        rows=len(report.validation),
        labels=len(report.labels),
        failed=len(report.errors),
        abstained=0,
        stats=stats,
        seconds=time.perf_counter() - started,
    )


def issue_tile(issue: dict) -> Tile:
    """A flagged example's tile: given → suggested as its title, kind and score below."""
    given, suggested = issue["label"], issue["suggested"]
    title = f"{given} → {suggested}" if suggested else given
    detail = f"{issue['kind']} · {issue['score']:.3f}"
    if issue.get("copy_of"):
        detail += f" · copy of {issue['copy_of']}"
    return Tile(issue["path"], group=issue["kind"], title=title, detail=detail,
                kind="wrong" if issue["kind"] == "label" else "")  # fmt: skip


def _facts(report: Any, wrong: int) -> list[tuple[str, str]]:
    accuracy = "–" if report.accuracy is None else f"{report.accuracy:.3f}"
    return [
        ("accuracy", accuracy),
        ("labels", str(len(report.labels))),
        ("training", f"{sum(report.train_counts):,}"),
        ("validation", f"{sum(report.val_counts):,}"),
        ("misclassified", f"{wrong:,}"),
    ]


def _subtitle(report: Any) -> str:
    chosen = "chosen on the validation split" if len(report.c_scores) > 1 else "given"
    return f"logistic regression on embeddings, C={report.c:g} ({chosen})"


def _tables(report: Any) -> list[dict]:
    per_class = []
    for i, label in enumerate(report.labels):
        scores = [f"{values[i]:.3f}" if values else "–"
                  for values in (report.precision, report.recall, report.f1)]  # fmt: skip
        per_class.append([label, report.train_counts[i], report.val_counts[i], *scores])
    columns = ["label", "training", "validation", "precision", "recall", "F1"]
    tables = [table("Per class", columns, per_class)]
    if len(report.c_scores) > 1:
        rows = [
            [f"{c:g}", f"{accuracy:.3f}", f"{loss:.3f}"] for c, accuracy, loss in report.c_scores
        ]
        tables.append(table("Regularization", ["C", "accuracy", "log-loss"], rows))
    if report.errors:
        rows = [[path, message] for path, message in report.errors]
        tables.append(table(f"Left out ({len(rows)})", ["path", "error"], rows))
    return tables
