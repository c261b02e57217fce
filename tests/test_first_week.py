"""What a new user hit in their first week (issue #27): each mistake stops at once with one line
that names the user's own file or value and the real cause, and help reads whole at 80 columns.

The fixtures (`tiny`, `photos`) and helpers come from test_cli.
"""

from __future__ import annotations

import pytest
from test_cli import assert_clean_error, cli, photo_dir, photos, tiny  # noqa: F401 - fixtures


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
