"""The journal (pipeline/journal.py): append, torn tails, settings, resume, merge in order."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from vithybrid_cli.pipeline.journal import (
    Journal,
    SettingsMismatch,
    describe_differences,
    journal_dir,
    read_entries,
)

SETTINGS = {"command": "embed", "model": "m", "weights": "abc", "pool": "cls", "normalize": False,
            "image-size": [64, 64]}  # fmt: skip


def files_of(output: Path) -> list[Path]:
    return sorted(Path(journal_dir(str(output))).iterdir())


def journal_run(output: Path, entries, settings=SETTINGS, resume=False) -> set[str]:
    """One finished single-process run appending `entries` (index, path, error, payload)."""
    journal = Journal(str(output), settings, resume=resume)
    done = journal.open()
    for entry in entries:
        journal.append(*entry)
    journal.close()
    return done


def test_entries_round_trip_values_errors_and_arrays(tmp_path):
    out = tmp_path / "v.npy"
    vector = np.arange(6, dtype=np.float32).reshape(2, 3)
    bad = os.fsdecode(b"caf\xe9.png")
    journal_run(out, [(0, "a.png", None, vector), (1, bad, "empty file", None),
                      (2, "c.png", None, [[1, "cat", 0.5]])])  # fmt: skip
    [file] = files_of(out)
    entries = [entry for entry, _ in read_entries(str(file))]
    assert [e.index for e in entries] == [0, 1, 2]
    assert [e.path for e in entries] == ["a.png", "caf\\xe9.png", "c.png"]
    np.testing.assert_array_equal(entries[0].payload, vector)
    assert entries[1].error == "empty file" and not entries[1].ok
    assert entries[2].payload == [[1, "cat", 0.5]]


@pytest.mark.parametrize("cut", [1, 16, 17, 30])  # in the array, before it, in the line
def test_a_torn_tail_is_cut_off_on_open(tmp_path, cut):
    out = tmp_path / "v.npy"
    journal_run(out, [(0, "a.png", None, np.ones(4)), (1, "b.png", None, np.ones(4))])
    [file] = files_of(out)
    whole = file.read_bytes()
    third = b'{"index": 2, "path": "c.png", "array": [4]}\n' + b"\0" * 16
    with open(file, "ab") as torn:  # a third entry, killed mid-write
        torn.write(third)
    os.truncate(file, len(whole) + len(third) - cut)
    done = Journal(str(out), SETTINGS, resume=True).open()
    assert done == {"a.png", "b.png"}
    assert file.read_bytes() == whole  # repaired: exactly the whole entries


def test_latest_run_wins_errors_are_retried_and_entries_merge_in_input_order(tmp_path):
    out = tmp_path / "v.npy"
    row = lambda i: np.full(2, i, np.float32)  # noqa: E731
    journal_run(out, [(0, "a", None, row(0)), (1, "b", "broken", None), (3, "d", None, row(3))])
    done = journal_run(out, [(1, "b", None, row(1)), (2, "c", None, row(2))], resume=True)
    assert done == {"a", "d"}  # b failed: retried
    journal = Journal(str(out), SETTINGS, resume=True)
    assert journal.open() == {"a", "b", "c", "d"}
    journal.close()
    entries = list(journal.entries())
    assert [(e.index, e.path, e.ok) for e in entries] == [
        (0, "a", True), (1, "b", True), (2, "c", True), (3, "d", True)]  # fmt: skip
    assert [float(e.payload[0]) for e in entries] == [0, 1, 2, 3]


def test_without_resume_an_old_journal_is_discarded(tmp_path):
    out = tmp_path / "v.npy"
    journal_run(out, [(0, "a", None, np.ones(2))])
    assert journal_run(out, [], settings={**SETTINGS, "pool": "mean"}) == set()
    assert len(files_of(out)) == 1


def test_resume_with_other_settings_names_each_difference(tmp_path):
    out = tmp_path / "v.npy"
    journal_run(out, [(0, "a", None, np.ones(2))])
    other = {**SETTINGS, "pool": "mean", "normalize": True, "weights": "def"}
    with pytest.raises(SettingsMismatch) as refused:
        Journal(str(out), other, resume=True).open()
    message = str(refused.value)
    assert message.startswith(f"--resume: {out} was written ")
    assert "with --pool cls, not mean" in message
    assert "without --normalize, not with" in message
    assert "with weights abc, not def" in message
    assert "\n" not in message
    assert len(files_of(out)) == 1  # refused before anything was added


def test_describe_differences():
    assert describe_differences({"top-k": 5}, {"top-k": 3}) == ["with --top-k 5, not 3"]
    assert describe_differences({"image-size": [64, 64]}, {"image-size": [96, 64]}) == [
        "with --image-size 64x64, not 96x64"
    ]
    assert describe_differences({"command": "classify"}, {"command": "embed"}) == [
        "by classify, not embed"
    ]
    assert describe_differences({"head": None}, {}) == []  # a key a later version adds
    assert describe_differences({}, {"head": "x"}) == ["with --head none, not x"]


def test_resume_of_an_output_without_a_journal_is_one_clear_line(tmp_path):
    out = tmp_path / "v.npy"
    out.write_bytes(b"written by an older version")
    with pytest.raises(ValueError, match="no journal") as refused:
        Journal(str(out), SETTINGS, resume=True).open()
    assert "\n" not in str(refused.value) and "without --resume" in str(refused.value)
    assert Journal(str(tmp_path / "new.npy"), SETTINGS, resume=True).open() == set()  # fresh


# --------------------------------------------------------------------------- resume appends


def finished_run(out: Path, rows: dict[str, int], inputs: list[str], resume=False, fail=()):
    """One run through JournalOutput (embeddings, .npy) over `inputs`, finishing the file:
    returns the paths it found done. `fail`: inputs answered with an error. An input's index is
    its place in the sorted names (a folder's listing, whichever of its files a run sees)."""
    from vithybrid_cli.pipeline.job import JournalOutput
    from vithybrid_cli.pipeline.runner import Result

    target = JournalOutput(str(out), "npy", "embeddings", SETTINGS, resume=resume)
    done = target.open()
    for path in inputs:
        index = sorted(rows).index(path)
        if path not in done:
            row = np.full(3, rows[path], np.float32)
            target.write(Result(index, path, "broken", None) if path in fail else
                         Result(index, path, payload=row))  # fmt: skip
    target.finish()
    return done


def saved(out: Path) -> tuple[list[str], np.ndarray]:
    paths = out.with_suffix(".paths.txt").read_text().splitlines()
    return paths, np.load(out)


def test_a_resume_of_a_finished_output_keeps_its_rows_and_adds_the_new_after(tmp_path):
    out = tmp_path / "v.npy"
    rows = {name: number for number, name in enumerate("abcdef")}
    finished_run(out, rows, ["a", "c", "e"])
    before_paths, before = saved(out)
    assert before_paths == ["a", "c", "e"]
    assert finished_run(out, rows, list("abcdef"), resume=True) == {"a", "c", "e"}
    paths, after = saved(out)
    assert paths == ["a", "c", "e", "b", "d", "f"]  # the old rows first, unchanged; new in order
    assert np.array_equal(after[:3], before)
    assert after[:, 0].tolist() == [rows[p] for p in paths]
    # and again: the second finish's file is kept too, the third run's rows come after it
    rows["aa"] = 9
    finished_run(out, rows, ["a", "aa", *"bcdef"], resume=True)
    assert saved(out)[0] == ["a", "c", "e", "b", "d", "f", "aa"]


def test_a_failure_retried_after_a_finished_run_comes_after_its_rows(tmp_path):
    out = tmp_path / "v.npy"
    rows = {name: number for number, name in enumerate("abcd")}
    finished_run(out, rows, list("abc"), fail={"b"})
    assert saved(out)[0] == ["a", "c"]  # a failure is not a row
    finished_run(out, rows, list("abcd"), resume=True)
    paths, after = saved(out)
    assert paths == ["a", "c", "b", "d"] and after[:, 0].tolist() == [0, 2, 1, 3]


def test_a_resume_after_a_crash_merges_in_input_order(tmp_path):
    """Runs after the last finished one (a killed resume) are one group: input order among them,
    after the finished file's rows; a journal never finished is input order throughout."""
    out = tmp_path / "v.npy"
    rows = {name: number for number, name in enumerate("abcdef")}
    journal_run(out, [(2, "c", None, np.full(3, 2, np.float32))])  # killed: no file written
    finished_run(out, rows, list("abce"), resume=True)
    assert saved(out)[0] == ["a", "b", "c", "e"]  # one group: input order across both runs
    journal_run(out, [(5, "f", None, np.full(3, 5, np.float32))], resume=True)  # killed
    finished_run(out, rows, list("abcdef"), resume=True)
    assert saved(out)[0] == ["a", "b", "c", "e", "d", "f"]


def test_an_output_changed_since_its_finish_is_merged_in_input_order(tmp_path):
    out = tmp_path / "v.npy"
    rows = {name: number for number, name in enumerate("abc")}
    finished_run(out, rows, ["a", "c"])
    os.utime(out, ns=(0, 0))  # not the file the finish left (touched, copied back, replaced)
    finished_run(out, rows, list("abc"), resume=True)
    assert saved(out)[0] == ["a", "b", "c"]
    out.unlink()  # deleted: written anew from the journal, in input order
    finished_run(out, rows, list("abc"), resume=True)
    assert saved(out)[0] == ["a", "b", "c"]
