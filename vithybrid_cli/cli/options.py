"""The command line's options: enums, the Typer option declarations the commands share, and
their parsing, so the commands in cli.py read as their option lists."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer


class UserError(Exception):
    """An expected failure: printed as one line, no traceback."""


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    parts = text.lower().replace("*", "x").split("x")
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        raise UserError(f"--image-size {text!r}: expected WIDTHxHEIGHT or one number") from None
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise UserError(f"--image-size {text!r}: expected WIDTHxHEIGHT or one number")
    return sizes[0], sizes[1]


class Format(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"
    parquet = "parquet"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class DType(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Backend(str, Enum):
    torch = "torch"
    openvino = "openvino"


class Pool(str, Enum):
    cls = "cls"
    mean = "mean"
    pooler = "pooler"


class Method(str, Enum):
    rollout = "rollout"
    last_layer = "last-layer"


class Fusion(str, Enum):
    mean = "mean"
    max = "max"
    min = "min"


class FitFormat(str, Enum):
    table = "table"
    json = "json"


# ---------------------------------------------------------------------------- shared options

Paths = Annotated[
    list[str] | None,
    typer.Argument(
        help="Image files, directories (searched recursively) or globs.", show_default=False
    ),
]
FilesFrom = Annotated[
    str | None,
    typer.Option("--files-from", help="Read paths from this file, one per line ('-' for stdin)."),
]
MaxDownload = Annotated[
    float | None,
    typer.Option(
        "--max-download-mb",
        min=0.001,
        help="Largest image read from a URL, stdin, tar member or bucket (default 64).",
        show_default=False,
    ),
]
ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="Hub id, checkpoint directory or weights file.")
]
Revision = Annotated[str | None, typer.Option(help="Hub revision: branch, tag or commit.")]
DeviceOpt = Annotated[Device, typer.Option(help="auto picks CUDA, else Apple MPS, when present.")]
DTypeOpt = Annotated[
    DType,
    typer.Option(help="auto: bfloat16 where the hardware has native bf16 matmul, else float32."),
]
BatchSize = Annotated[
    int | None, typer.Option(min=1, help="Images per forward pass (default: auto).")
]
Workers = Annotated[int | None, typer.Option(min=1, help="Decode threads (default: one per core).")]
Interpolate = Annotated[
    bool,
    typer.Option(
        "--interpolate-pos-encoding", help="Accept any input size (resample position embeddings)."
    ),
]


def check_image_size(text: str | None) -> str | None:
    """Reject a malformed --image-size while parsing, before the model loads."""
    try:
        parse_image_size(text)
    except UserError as error:
        raise typer.BadParameter(str(error).removeprefix(f"--image-size {text!r}: ")) from None
    return text


ImageSize = Annotated[
    str | None,
    typer.Option(
        "--image-size",
        callback=check_image_size,
        help="Model input WIDTHxHEIGHT or one number for a square "
        "(needs --interpolate-pos-encoding unless it is the checkpoint's size).",
    ),
]
BackendOpt = Annotated[
    Backend,
    typer.Option(
        help="torch, or openvino: our model converted once (cached) and run by OpenVINO on the "
        "CPU, faster there (needs the openvino extra).",
    ),
]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the model (slow start).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")]
Strict = Annotated[
    bool,
    typer.Option(
        help="Stop at the first input that fails (a walked image this install cannot decode "
        "fails too)."
    ),
]
FollowLinks = Annotated[
    bool,
    typer.Option("--follow-links", help="Walk into symlinked folders (loops are skipped)."),
]
Resume = Annotated[bool, typer.Option(help="Skip inputs already in --output and append the rest.")]
Debug = Annotated[bool, typer.Option(help="Show tracebacks and debug logs.")]
HeadOpt = Annotated[
    str | None,
    typer.Option("--head", help="A head of your own labels, made by `vithybrid fit`."),
]
MinScore = Annotated[
    float | None,
    typer.Option(
        "--min-score", min=0.0, max=1.0, help='Abstain ("label": null) below this best score.'
    ),
]


# ---------------------------------------------------------------------------- per-command options

# classify
TopK = Annotated[int, typer.Option("--top-k", "-k", min=1, help="Labels per image.")]
RecordFormat = Annotated[
    Format | None,
    typer.Option(
        "--format",
        "-f",
        help="Default: --output's type, else table on a terminal, else jsonl.",
        show_default=False,
    ),
]
RecordOutput = Annotated[str | None, typer.Option("--output", "-o", help="Write here, not stdout.")]

# embed
ArrayOutput = Annotated[
    str,
    typer.Option("--output", "-o", help="A .npy (paths in NAME.paths.txt), .npz or .parquet file."),
]
PoolOpt = Annotated[
    Pool,
    typer.Option(
        help="cls: CLS token after the final LayerNorm; mean: patch tokens' mean; "
        "pooler: the checkpoint's pooler."
    ),
]
Tokens = Annotated[bool, typer.Option("--tokens", help="Save every token: [N, T, hidden].")]
Normalize = Annotated[bool, typer.Option("--normalize", help="L2-normalize each vector.")]

# attention-map
PngOutput = Annotated[str | None, typer.Option("--output", "-o", help="PNG for one image.")]
OutputDir = Annotated[
    str | None,
    typer.Option("--output-dir", "-d", help="Folder for many images (NAME.png each)."),
]
MethodOpt = Annotated[
    Method, typer.Option(help="Attention rollout or the last layer's CLS attention.")
]
HeadFusion = Annotated[Fusion, typer.Option(help="How rollout combines heads.")]
DiscardRatio = Annotated[
    float,
    typer.Option(min=0.0, max=0.99, help="Rollout: drop this fraction of the weakest attention."),
]
Alpha = Annotated[float, typer.Option(min=0.0, max=1.0, help="Heatmap opacity.")]
Raw = Annotated[
    str | None, typer.Option(help="Also save the raw grid(s) to this .npy/.npz/.parquet.")
]

# info
InfoHead = Annotated[
    str | None, typer.Option("--head", help="Show this head file's metadata instead.")
]

# fit
FitData = Annotated[
    str | None,
    typer.Argument(help="A folder with one subfolder of images per label.", show_default=False),
]
HeadOutput = Annotated[
    str, typer.Option("--output", "-o", help="The head file to write (.safetensors).")
]
LabelsFrom = Annotated[
    str | None,
    typer.Option("--labels-from", help="A CSV or JSONL of path,label instead of DATA."),
]
ValDir = Annotated[
    str | None,
    typer.Option("--val", help="A separate validation folder (same layout as DATA)."),
]
ValFraction = Annotated[
    float, typer.Option(min=0.0, max=0.9, help="Held out for validation, per label.")
]
Regularization = Annotated[
    float | None,
    typer.Option(
        "--c", min=0.0, help="L2 regularization (scikit-learn's C; default: chosen on val)."
    ),
]
CacheDir = Annotated[
    str | None,
    typer.Option("--cache", help="Embedding cache folder (default: OUTPUT.cache beside it)."),
]
FitFormatOpt = Annotated[
    FitFormat, typer.Option("--format", "-f", help="How to print the validation results.")
]
HeadPool = Annotated[Pool, typer.Option(help="Which embedding the head reads (as embed --pool).")]
Seed = Annotated[int, typer.Option(help="Seed of the validation split.")]
IssuesFile = Annotated[
    str | None,
    typer.Option(
        "--issues",
        help="Also write the labels that are probably wrong, outliers and train/validation "
        "near copies (JSONL, most likely first).",
    ),
]
CorrectionsFile = Annotated[
    str | None,
    typer.Option(
        "--corrections",
        help="A corrections file (JSONL of path,label; `vithybrid review` writes one): its "
        "labels win over the folders; an empty label drops the photo.",
    ),
]


Root = Annotated[
    str | None,
    typer.Option(
        "--root",
        help="Where relative paths in the results start: the folder the run that wrote them ran "
        "in (default: the current folder, then the results file's folder).",
        metavar="DIR",
        show_default=False,
    ),
]


def root_folder(root: str | None) -> str | None:
    """--root checked before any work: a folder, or UserError (one line)."""
    import os

    if root is not None and not os.path.isdir(root):
        raise UserError(f"--root {root!r}: no such folder")
    return root
