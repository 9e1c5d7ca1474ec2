"""Tests of the dataset adapters: synthetic generator, bring-your-own CSV, registry, real data."""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict

import numpy as np
import pytest

from pipeline.datasets import (
    DATA_DIR_ENV,
    DATASETS,
    DatasetError,
    PreparedDataset,
    prepare_csv,
    prepare_dataset,
    resolve_data_dir,
)
from pipeline.datasets.adapters import prepare_frappe86k
from pipeline.datasets.synthetic import generate_synthetic, roc_auc

FILES = ("train.csv", "eval.csv", "test.csv", "feature_spec.json")


def _rows(directory: str, split: str) -> list[dict[str, str]]:
    with open(os.path.join(directory, f"{split}.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _header(directory: str, split: str) -> list[str]:
    with open(os.path.join(directory, f"{split}.csv"), newline="") as f:
        return next(csv.reader(f))


def _raw_dir(folder: str) -> str:
    """The shared raw data dir, skipping the test when it (or ``folder`` in it) is absent."""
    try:
        data_dir = resolve_data_dir()
    except DatasetError:
        pytest.skip("no raw data dir (set AUTORECSYS_DATA_DIR)")
    if not os.path.isdir(os.path.join(data_dir, folder)):
        pytest.skip(f"raw data folder {folder} not available")
    return data_dir


def _ctr_spread(rows: list[dict[str, str]], field: str, min_count: int = 200) -> float:
    """Count-weighted std of per-id CTR over ids seen at least ``min_count`` times."""
    stats: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        stats[row[field]][0] += 1
        stats[row[field]][1] += int(row["label"])
    base = np.mean([int(r["label"]) for r in rows])
    kept = [(n, k) for n, k in stats.values() if n >= min_count]
    total = sum(n for n, _ in kept)
    return float(np.sqrt(sum(n * (k / n - base) ** 2 for n, k in kept) / total))


# --- synthetic ---------------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_seeded(tmp_path):
    a = generate_synthetic(str(tmp_path / "a"), seed=7, n_rows=2000)
    b = generate_synthetic(str(tmp_path / "b"), seed=7, n_rows=2000)
    generate_synthetic(str(tmp_path / "c"), seed=8, n_rows=2000)
    for name in ("train.csv", "eval.csv", "test.csv", "ground_truth.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "train.csv").read_bytes() != (
        tmp_path / "c" / "train.csv"
    ).read_bytes()
    assert a.metadata == b.metadata


def test_synthetic_layout_ground_truth_and_split_sizes(tmp_path):
    out = str(tmp_path / "syn")
    dataset = generate_synthetic(out, seed=2021, n_rows=2000)
    assert dataset.metadata["rows"] == {"train": 1600, "eval": 200, "test": 200}
    assert dataset.spec.categorical == tuple(f"c{j}" for j in range(8))
    assert dataset.spec.numerical == ("n0", "n1")
    for split in ("train", "eval", "test"):
        assert _header(out, split) == list(dataset.spec.columns)
    truth = json.loads((tmp_path / "syn" / "ground_truth.json").read_text())
    assert truth["informative_fields"] == ["c0", "c1", "c2", "c3"]
    assert truth["noise_fields"] == ["c4", "c5", "c6", "c7"]
    assert truth["interactions"] == [["c0", "c1"], ["c2", "c3"]]
    assert truth["numeric_effect"]["field"] == "n0"
    assert 0.6 < truth["bayes_auc_test"] < 1.0
    loaded = PreparedDataset.load(out)
    assert loaded.metadata["ground_truth"] == truth
    rows = _rows(out, "train")
    assert rows[0]["c0"].startswith("c0_")
    assert 0.15 < np.mean([int(r["label"]) for r in rows]) < 0.4


def test_synthetic_informative_fields_carry_signal(tmp_path):
    out = str(tmp_path / "syn")
    generate_synthetic(out, seed=3, n_rows=20000)
    rows = [r for split in ("train", "eval", "test") for r in _rows(out, split)]
    informative = min(_ctr_spread(rows, f) for f in ("c0", "c2", "c3"))
    noise = max(_ctr_spread(rows, f) for f in ("c4", "c5", "c6", "c7"))
    assert informative > 2.0 * noise


def test_roc_auc_matches_pairwise_definition():
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.4])
    labels = np.array([0, 0, 1, 1, 1])
    pairs = [(p, n) for p in scores[labels == 1] for n in scores[labels == 0]]
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert roc_auc(scores, labels) == pytest.approx(expected)
    assert roc_auc(scores, np.zeros(5)) is None


# --- bring your own CSV ------------------------------------------------------------------------

BYO = {"label": "y", "categorical": ("a", "b"), "numerical": ("x",), "seed": 1}


def _write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_byo_single_file_is_split_and_cleaned(tmp_path):
    lines = ["x,b,y,a,extra"] + [
        f"{i / 10},b{i % 3},{i % 2},{'' if i == 4 else i},z" for i in range(50)
    ]
    src = _write(tmp_path / "in.csv", "\n".join(lines) + "\n")
    out = str(tmp_path / "out")
    dataset = prepare_csv(src, out, **BYO)
    assert dataset.metadata["rows"] == {"train": 40, "eval": 5, "test": 5}
    assert _header(out, "train") == ["y", "a", "b", "x"]
    rows = [r for s in ("train", "eval", "test") for r in _rows(out, s)]
    assert len(rows) == 50
    assert sum(r["a"] == "__missing__" for r in rows) == 1
    assert {r["y"] for r in rows} == {"0", "1"}
    again = prepare_csv(src, str(tmp_path / "again"), **BYO)
    assert again.metadata == dataset.metadata
    assert (tmp_path / "again" / "test.csv").read_bytes() == (
        tmp_path / "out" / "test.csv"
    ).read_bytes()


def test_byo_optional_numerical_keeps_empty_cells_empty(tmp_path):
    lines = ["y,a,b,x"] + [f"{i % 2},a{i},b,{'' if i % 5 == 0 else i}" for i in range(20)]
    src = _write(tmp_path / "in.csv", "\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="only in optional numerical fields"):
        prepare_csv(src, str(tmp_path / "strict"), **BYO)
    dataset = prepare_csv(src, str(tmp_path / "out"), **BYO, optional_numerical=("x",))
    assert dataset.spec.optional_numerical == ("x",)
    cells = [r["x"] for s in ("train", "eval", "test") for r in _rows(str(tmp_path / "out"), s)]
    assert cells.count("") == 4 and all(float(c) >= 1 for c in cells if c)
    assert PreparedDataset.load(str(tmp_path / "out")).spec.optional_numerical == ("x",)
    blank = ["y,a,b,x"] + [f"{i % 2},a{i},b," for i in range(20)]
    with pytest.raises(DatasetError, match=r"\['x'\] have no value in any train row"):
        prepare_csv(_write(tmp_path / "blank.csv", "\n".join(blank) + "\n"),
                    str(tmp_path / "blank"), **BYO, optional_numerical=("x",))


def test_byo_three_files(tmp_path):
    paths = {
        s: _write(tmp_path / f"{s}.csv", "y,a,b,x\n1,u,v,1.5\n0,u,,2\n")
        for s in ("train", "eval", "test")
    }
    dataset = prepare_csv(None, str(tmp_path / "out"), **BYO, **paths)
    assert dataset.metadata["rows"] == {"train": 2, "eval": 2, "test": 2}
    assert _rows(str(tmp_path / "out"), "eval")[1]["b"] == "__missing__"


@pytest.mark.parametrize(
    ("text", "row", "fragment"),
    [
        ("", 1, "empty"),
        ("y,a,x\n1,u,2\n", 1, "['b']"),
        ("y,a,b,x\n1,u,v,2\n0,u,v\n", 3, "fields"),
        ("y,a,b,x\n1,u,v,2\n0,u,v,2\n1,u,v,abc\n", 4, "non-numeric"),
        ("y,a,b,x\n1,u,v,nan\n", 2, "NaN/inf"),
        ("y,a,b,x\n1,u,v,2\n1,u,v,-inf\n", 3, "NaN/inf"),
        ("y,a,b,x\n1,u,v,2\n2,u,v,2\n", 3, "label"),
        ("y,a,b,x\nyes,u,v,2\n", 2, "label"),
        ("y,a,b,x\n", 2, "no data rows"),
        ("y,a,b,x\n\n\n", 2, "no data rows"),
        ("y,a,b,x\n1,u,v,1e39\n", 2, "float32"),
    ],
)
def test_byo_errors_name_file_and_row(tmp_path, text, row, fragment):
    src = _write(tmp_path / "bad_input.csv", text)
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as info:
        prepare_csv(src, str(out), **BYO)
    message = str(info.value)
    assert src in message
    assert f"row {row}:" in message
    assert fragment in message
    assert not out.exists()
    assert os.listdir(tmp_path) == ["bad_input.csv"]  # No staging directory left behind.


def test_byo_bad_split_file_leaves_existing_output_untouched(tmp_path):
    good = _write(tmp_path / "good.csv", "y,a,b,x\n1,u,v,1\n0,u,v,2\n")
    bad = _write(tmp_path / "bad.csv", "y,a,b,x\n1,u,v,1\n1,u,v,oops\n")
    out = tmp_path / "out"
    prepare_csv(None, str(out), **BYO, train=good, eval=good, test=good)
    before = sorted(os.listdir(out))
    with pytest.raises(DatasetError, match=r"bad\.csv: row 3:"):
        prepare_csv(None, str(out), **BYO, train=good, eval=good, test=bad)
    assert sorted(os.listdir(out)) == before
    assert sorted(os.listdir(tmp_path)) == ["bad.csv", "good.csv", "out"]


def test_byo_every_split_needs_both_labels(tmp_path):
    # AUC (model selection on eval, test scoring) is undefined on one class: stop before TFX.
    both = _write(tmp_path / "both.csv", "y,a,b,x\n1,u,v,1\n0,u,v,2\n")
    ones = _write(tmp_path / "ones.csv", "y,a,b,x\n1,u,v,1\n1,u,v,2\n")
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match=r"ones\.csv: the test split \(2 rows\) holds only "
                                           r"label 1 rows"):
        prepare_csv(None, str(out), **BYO, train=both, eval=both, test=ones)
    few = _write(tmp_path / "few.csv", "y,a,b,x\n" + "1,u,v,1\n0,u,v,2\n" * 2)
    with pytest.raises(DatasetError, match=r"few\.csv: 4 data rows split 8:1:1 by seed 1: the "
                                           r"eval split \(0 rows\) holds no rows"):
        prepare_csv(few, str(out), **BYO)
    assert not out.exists()


def test_byo_argument_errors(tmp_path):
    src = _write(tmp_path / "in.csv", "y,a,b,x\n1,u,v,1\n")
    with pytest.raises(DatasetError, match="not both"):
        prepare_csv(src, str(tmp_path / "o"), **BYO, train=src, eval=src, test=src)
    with pytest.raises(DatasetError, match="eval"):
        prepare_csv(None, str(tmp_path / "o"), **BYO, train=src, test=src)
    with pytest.raises(DatasetError, match="not found"):
        prepare_csv(str(tmp_path / "nope.csv"), str(tmp_path / "o"), **BYO)
    with pytest.raises(DatasetError, match="cannot be read"):  # e.g. `--data data/`
        prepare_csv(str(tmp_path), str(tmp_path / "o"), **BYO)


# --- registry ----------------------------------------------------------------------------------


def test_unknown_dataset_lists_known(tmp_path):
    with pytest.raises(DatasetError, match=r"Unknown dataset 'x'; known: .*synthetic"):
        prepare_dataset("x", str(tmp_path / "o"))


def test_registry_synthetic_needs_no_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "does-not-exist"))
    dataset = prepare_dataset("synthetic", str(tmp_path / "o"), seed=5, n_rows=500)
    assert dataset.metadata["rows"] == {"train": 400, "eval": 50, "test": 50}
    assert "synthetic" in DATASETS


def test_resolve_data_dir(tmp_path, monkeypatch):
    assert resolve_data_dir(str(tmp_path)) == str(tmp_path)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert resolve_data_dir() == str(tmp_path)
    with pytest.raises(DatasetError, match="not a directory"):
        resolve_data_dir(str(tmp_path / "missing"))
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(DatasetError, match=DATA_DIR_ENV):
        resolve_data_dir()


def test_missing_raw_files_name_dataset_and_path(tmp_path):
    with pytest.raises(DatasetError, match=r"frappe86k: missing file .*train\.csv"):
        prepare_frappe86k(str(tmp_path), str(tmp_path / "o"), 1)
    with pytest.raises(DatasetError, match=r"gowalla: missing file .*gowalla_lightgcn"):
        prepare_dataset("gowalla", str(tmp_path / "o"), data_dir=str(tmp_path))
    assert not (tmp_path / "o").exists()


# --- real raw data (skipped when the shared data dir is absent) --------------------------------


def test_frappe86k_real(tmp_path):
    data_dir = _raw_dir("frappe86k")
    dataset = prepare_dataset("frappe86k", str(tmp_path / "f"), data_dir=data_dir)
    assert dataset.metadata["rows"] == {"train": 51950, "eval": 5772, "test": 28860}
    assert len(dataset.spec.categorical) == 10
    assert sorted(os.listdir(tmp_path / "f")) == sorted(FILES)
    assert _header(str(tmp_path / "f"), "test") == list(dataset.spec.columns)


def test_frappe_nfm_protocol_real(tmp_path):
    data_dir = _raw_dir("frappe")
    out = str(tmp_path / "f")
    dataset = prepare_dataset("frappe", out, data_dir=data_dir, seed=11)
    assert dataset.metadata["rows"] == {"train": 202027, "eval": 57722, "test": 28860}
    rows = [r for s in ("train", "eval", "test") for r in _rows(out, s)]
    context = ("user", "daytime", "weekday", "isweekend", "homework", "cost", "weather")
    context += ("country", "city")
    used: dict[tuple, set] = defaultdict(set)
    for r in rows:
        if r["label"] == "1":
            used[tuple(r[c] for c in context)].add(r["item"])
    negatives = [r for r in rows if r["label"] == "0"]
    assert len(negatives) == 2 * (len(rows) - len(negatives))
    assert all(r["item"] not in used[tuple(r[c] for c in context)] for r in negatives)


def test_criteo10k_real(tmp_path):
    data_dir = _raw_dir("criteo_10k")
    out = str(tmp_path / "c")
    dataset = prepare_dataset("criteo10k", out, data_dir=data_dir, seed=3)
    assert dataset.metadata["rows"] == {"train": 8000, "eval": 1000, "test": 1000}
    assert len(dataset.spec.categorical) == 26 and len(dataset.spec.numerical) == 13
    rows = _rows(out, "eval")
    # An empty numerical cell stays empty (a missing value, not 0); the rest are numbers.
    assert dataset.spec.optional_numerical == dataset.spec.numerical
    cells = [r[f"I{i}"] for r in rows for i in range(1, 14)]
    assert "" in cells and all(float(c) == float(c) for c in cells if c)
    assert any(r[c] == "__missing__" for r in rows for c in dataset.spec.categorical)


@pytest.mark.parametrize(
    ("name", "folder"), [("movielens1m_ctr", "movielens_1m"), ("ml100k_ctr", "movielens_100k")]
)
def test_movielens_ctr_real(tmp_path, name, folder):
    data_dir = _raw_dir(folder)
    out = str(tmp_path / "m")
    dataset = prepare_dataset(name, out, data_dir=data_dir)
    assert dataset.metadata["rows"] == {"train": 80000, "eval": 10000, "test": 10000}
    rows = _rows(out, "test")
    assert {r["label"] for r in rows} == {"0", "1"}
    assert all(r["genres"] and r["zip"] for r in rows)


@pytest.mark.parametrize(
    ("name", "folder", "rows"),
    [
        ("gowalla", "gowalla_lightgcn", {"train": 719081, "eval": 91047, "test": 217242}),
        (
            "ml1m_topk",
            "movielens_1m_topk_lightgcnpp",
            {"train": 590733, "eval": 80897, "test": 164848},
        ),
    ],
)
def test_topk_real(tmp_path, name, folder, rows):
    data_dir = _raw_dir(folder)
    out = str(tmp_path / "t")
    dataset = prepare_dataset(name, out, data_dir=data_dir)
    assert dataset.metadata["rows"] == rows
    assert dataset.spec.task == "topk" and dataset.spec.user == "user"
    assert _header(out, "eval") == ["label", "user", "item"]
    with open(os.path.join(out, "eval.csv")) as f:
        next(f)
        assert next(f).startswith("1,")
