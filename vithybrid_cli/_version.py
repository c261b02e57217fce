"""The package's version, in a room of its own so any module can name it without importing the
package root (pyproject.toml holds the same string)."""

__version__ = "0.1.0"
