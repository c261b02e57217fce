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
