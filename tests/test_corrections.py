"""io/corrections.py: the file `review` appends to and `fit --corrections` reads."""

from __future__ import annotations

import json

import pytest

from vithybrid_cli.io.corrections import (
    Correction,
    CorrectionsError,
    append_correction,
    read_correction_lines,
    read_corrections,
)


def test_the_last_line_of_a_path_wins_and_an_empty_label_drops(tmp_path):
    file = tmp_path / "corrections.jsonl"
    append_correction(file, Correction("a.jpg", "dog", "cat", "2026-12-06T04:00:00Z"))
    append_correction(file, Correction("b.jpg", "cat", "dog"))
    append_correction(file, Correction("a.jpg", "fox", "dog"))
    append_correction(file, Correction("b.jpg", None, "cat"))
    assert read_corrections(file) == {"a.jpg": "fox", "b.jpg": None}
    lines = [json.loads(line) for line in file.read_text().splitlines()]
    assert lines[0] == {"path": "a.jpg", "label": "dog", "was": "cat",
                        "time": "2026-12-06T04:00:00Z"}  # fmt: skip
    assert [c.path for c in read_correction_lines(file)] == ["a.jpg", "b.jpg", "a.jpg", "b.jpg"]
    file.write_text('{"path": "c.jpg", "label": ""}\n')
    assert read_corrections(file) == {"c.jpg": None}


def test_a_torn_last_line_is_ignored_and_cut_before_the_next_append(tmp_path):
    file = tmp_path / "corrections.jsonl"
    append_correction(file, Correction("a.jpg", "dog"))
    with open(file, "ab") as handle:
        handle.write(b'{"path": "b.jpg", "lab')  # killed mid-line
    assert read_corrections(file) == {"a.jpg": "dog"}
    append_correction(file, Correction("c.jpg", "cat"))
    assert read_corrections(file) == {"a.jpg": "dog", "c.jpg": "cat"}
    assert file.read_bytes().count(b"\n") == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("path,label_1,score_1\na.jpg,cat,0.9\n", r"c\.jsonl:1: not a corrections line"),
        ('{"path": "a.jpg", "label": "x"}\n{"path": "b.jpg"\n', r"c\.jsonl:2: not a corrections"),
        ('{"path": "a.jpg", "top_k": []}\n', r"c\.jsonl:1: .*needs path and label \(has path, "),
        ('{"path": "", "label": "x"}\n', r"path must be a non-empty string"),
        ('{"path": "a.jpg", "label": 3}\n', r"label must be a string or null"),
    ],
)
def test_a_file_that_is_not_corrections_is_one_line_naming_it(tmp_path, text, message):
    file = tmp_path / "c.jsonl"
    file.write_text(text)
    with pytest.raises(CorrectionsError, match=message) as caught:
        read_corrections(file)
    assert "\n" not in str(caught.value)


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(CorrectionsError, match=r"missing\.jsonl: No such file"):
        read_corrections(tmp_path / "missing.jsonl")
