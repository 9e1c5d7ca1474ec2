"""Bring-your-own top-k data: an interaction log (user, item, optional label) split per user or
given as three files, with errors that name the file, row and field."""

from __future__ import annotations

import csv

import pytest

from pipeline.cli import main
from pipeline.datasets import prepare_dataset
from pipeline.datasets.base import DatasetError, PreparedDataset
from pipeline.datasets.byo import read_interactions, split_per_user


def _log(path, rows, header=("ts", "uid", "iid", "clicked")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def _read(directory, split):
    with open(f"{directory}/{split}.csv") as f:
        return list(csv.reader(f))


def test_read_interactions_dedupes_drops_label_zero_and_keeps_file_order(tmp_path):
    path = _log(tmp_path / "log.csv", [(1, "u1", "a", 1), (2, "u1", "a", 1), (3, "u2", "b", 0),
                                       (4, "u2", "c", 1), (5, "u1", "b", 1)])
    assert read_interactions(path, "uid", "iid", "clicked") == [("u1", "a"), ("u2", "c"),
                                                                 ("u1", "b")]
    # without a label every row is an interaction
    assert read_interactions(path, "uid", "iid") == [("u1", "a"), ("u2", "b"), ("u2", "c"),
                                                      ("u1", "b")]


@pytest.mark.parametrize("rows, args, needle", [
    ([(1, "u1", "", 1)], ("uid", "iid", "clicked"), "row 2: field 'iid' is empty"),
    ([(1, "u1", "a", 1), (2, "", "a", 1)], ("uid", "iid", None), "row 3: field 'uid' is empty"),
    ([(1, "u1", "a", 2)], ("uid", "iid", "clicked"), "row 2: field 'clicked' (label) must be 0"),
    ([(1, "u1", "a", 0)], ("uid", "iid", "clicked"), "no interactions (every row has clicked"),
    ([(1, "u1", "a", 1)], ("uid", "user", None), "header lacks column(s) ['user']"),
    ([(1, "u1", "a", 1)], ("uid", "uid", None), "the user and item columns must differ"),
    ([(1, "u1", "a")], ("uid", "iid", None), "row 2: has 3 fields, the header has 4"),
])
def test_bad_logs_name_file_row_and_field(tmp_path, rows, args, needle):
    path = _log(tmp_path / "log.csv", rows)
    with pytest.raises(DatasetError) as error:
        read_interactions(path, *args)
    assert str(error.value).startswith(path) and needle in str(error.value)


def test_split_per_user_is_disjoint_seeded_and_holds_out_per_user():
    pairs = ([("heavy", f"i{j}") for j in range(30)] + [("mid", f"i{j}") for j in range(3)]
             + [("light", "i0"), ("light", "i1")])
    split = split_per_user(pairs, seed=7)
    assert split == split_per_user(pairs, seed=7) != split_per_user(pairs, seed=8)
    assert sorted(p for s in split.values() for p in s) == sorted(pairs)  # a partition
    per_user = {s: {u: sum(1 for v, _ in split[s] if v == u) for u in ("heavy", "mid", "light")}
                for s in split}
    assert per_user["test"] == per_user["eval"] == {"heavy": 3, "mid": 1, "light": 0}
    assert per_user["train"] == {"heavy": 24, "mid": 1, "light": 2}


def test_one_file_becomes_a_topk_dataset_in_the_topk_layout(tmp_path):
    rows = [(n, f"u{n % 4}", f"i{n % 13}", 1) for n in range(80)]
    path = _log(tmp_path / "log.csv", rows)
    dataset = prepare_dataset("csv", str(tmp_path / "out"), seed=3, data=path, user="uid",
                              item="iid", label="clicked")
    loaded = PreparedDataset.load(str(tmp_path / "out")).spec
    assert loaded == dataset.spec and (loaded.task, loaded.user, loaded.item) == ("topk", "uid",
                                                                                  "iid")
    splits = {s: _read(dataset.directory, s) for s in ("train", "eval", "test")}
    assert all(rows[0] == ["clicked", "uid", "iid"] for rows in splits.values())
    held = [tuple(r[1:]) for s in ("eval", "test") for r in splits[s][1:]]
    train = [tuple(r[1:]) for r in splits["train"][1:]]
    assert not set(held) & set(train) and len(held) + len(train) == 4 * 13


def test_three_files_are_kept_as_given(tmp_path):
    files = {s: _log(tmp_path / f"{s}.csv", [(1, "u1", f"{s}-a"), (2, "u2", f"{s}-b")],
                     header=("ts", "uid", "iid")) for s in ("train", "eval", "test")}
    dataset = prepare_dataset("csv", str(tmp_path / "out"), user="uid", item="iid", **files)
    assert dataset.spec.columns == ("label", "uid", "iid")
    for split in files:
        assert _read(dataset.directory, split)[1:] == [["1", "u1", f"{split}-a"],
                                                       ["1", "u2", f"{split}-b"]]


def test_a_log_too_thin_for_a_per_user_split_is_refused_and_nothing_written(tmp_path):
    path = _log(tmp_path / "log.csv", [(1, "u1", "a", 1), (2, "u1", "b", 1), (3, "u2", "a", 1)])
    with pytest.raises(DatasetError, match="the eval split has no interactions"):
        prepare_dataset("csv", str(tmp_path / "out"), data=path, user="uid", item="iid")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options, needle", [
    ({"user": "uid"}, "a user and an item column"),
    ({"user": "uid", "item": "iid", "categorical": ["ts"]}, "no other feature columns"),
    ({}, "CTR CSV data needs a label column"),
])
def test_conflicting_options_are_refused(tmp_path, options, needle):
    path = _log(tmp_path / "log.csv", [(1, "u1", "a", 1)])
    with pytest.raises(DatasetError, match=needle):
        prepare_dataset("csv", str(tmp_path / "out"), data=path, **options)


@pytest.mark.parametrize("argv, needle", [
    (["--user", "uid"], "needs both --user and --item"),
    (["--user", "uid", "--item", "iid", "--categorical", "ts"], "drop ['--categorical']"),
    (["--categorical", "ts"], "--label is required (or --user and --item"),
])
def test_cli_refuses_mixed_topk_and_ctr_arguments(tmp_path, capsys, argv, needle):
    path = _log(tmp_path / "log.csv", [(1, "u1", "a", 1)])
    assert main(["run", "--data", path, *argv, "--output-dir", str(tmp_path / "run")]) == 2
    assert needle in capsys.readouterr().err
