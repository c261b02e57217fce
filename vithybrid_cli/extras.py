"""Optional extras (parquet, cloud, search, ray, ...): importing one, or a one-line install hint.

`require("pyarrow", "parquet")` returns the module or raises MissingExtra, whose str() names the
extra and the package to install (`missing` builds one), so every command reports a missing extra
the same way.
"""

from __future__ import annotations

from types import ModuleType


class MissingExtra(ImportError):
    """An optional dependency is missing; str() is the one-line install hint naming it."""


def missing(extra: str, package: str) -> MissingExtra:
    """`install the cloud extra: pip install "vithybrid[cloud]" (needs s3fs)`, as an error."""
    return MissingExtra(
        f'install the {extra} extra: pip install "vithybrid[{extra}]" (needs {package})'
    )


def require(module: str, extra: str, package: str | None = None) -> ModuleType:
    """Import `module` or raise MissingExtra naming the extra and the package to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise missing(extra, package or module) from error
