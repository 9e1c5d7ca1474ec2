"""`autorecsys bench` on the user's own CSV data (dataset ``csv``): CTR data and an interaction
log, with the flags of ``autorecsys run``, the cache keyed by the files' bytes, and the errors."""

from __future__ import annotations

import csv
import json
import os

import pytest

from benchmarks.cache import csv_key, data_root
from pipeline.cli import main
from pipeline.datasets import generate_synthetic, generate_synthetic_topk

CATEGORICAL = "c0,c1,c2,c3,c4,c5,c6,c7"


def _concat(directory: str, path: str, header: list[str] | None = None) -> str:
    """The prepared splits of ``directory`` as one CSV file (``header`` renames the columns)."""
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        for i, split in enumerate(("train", "eval", "test")):
            with open(os.path.join(directory, f"{split}.csv")) as f:
                rows = list(csv.reader(f))
            if i == 0:
                writer.writerow(header or rows[0])
            writer.writerows(rows[1:])
    return path


@pytest.fixture(scope="module")
def clicks(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("own")
    generate_synthetic(str(root / "syn"), seed=3, n_rows=6000)
    return _concat(str(root / "syn"), str(root / "clicks.csv"))


def _config(tmp_path) -> str:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train": {"max_epochs": 3, "batch_size": 512}}))
    return str(path)


@pytest.mark.slow
def test_bench_on_own_ctr_csv_splits_per_seed_and_reuses_its_cache(tmp_path, clicks):
    out, work = tmp_path / "own.json", tmp_path / "work"
    argv = ["bench", "--data", clicks, "--label", "label", "--categorical", CATEGORICAL,
            "--numerical", "n0,n1", "--models", "lr,fm", "--seeds", "1,2", "--work-dir",
            str(work), "--config", _config(tmp_path), "--out", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    rows = report["results"]
    assert [(r["dataset"], r["model"], r["seed"]) for r in rows] == [
        ("csv", "lr", 1), ("csv", "fm", 1), ("csv", "lr", 2), ("csv", "fm", 2)]
    assert all(0.6 < r["test_auc"] <= 1.0 and r["test_examples"] == 600 for r in rows)
    # each seed is its own 8:1:1 split of the one file, as `autorecsys run --data` splits it
    assert rows[0]["test_auc"] != rows[2]["test_auc"]
    assert report["dataset_options"]["data"] == os.path.abspath(clicks)
    assert report["dataset_options"]["numerical"] == ["n0", "n1"]
    assert "| csv | fm | 2 |" in out.with_suffix(".md").read_text()
    roots = sorted(p for p in os.listdir(work) if p.startswith("csv-"))
    options = report["dataset_options"]
    assert roots == sorted(os.path.basename(data_root(str(work), "csv", s, options))
                           for s in (1, 2))
    stamps = [os.path.getmtime(work / r / "cache_version") for r in roots]
    assert main([*argv[:-2], "--models", "lr", "--seeds", "1", "--out",
                 str(tmp_path / "again.json")]) == 0  # the prepared seed is reused
    assert os.path.getmtime(work / roots[0] / "cache_version") == stamps[0]


def test_given_split_files_are_prepared_once_for_every_seed(tmp_path):
    files = {s: tmp_path / f"{s}.csv" for s in ("train", "eval", "test")}
    for path in files.values():
        path.write_text("label,a\n1,x\n0,y\n")
    given = {s: str(p) for s, p in files.items()}
    assert data_root("w", "csv", 1, given) == data_root("w", "csv", 2, given)
    one = {"data": str(files["train"])}  # one file is split by the seed
    assert data_root("w", "csv", 1, one) != data_root("w", "csv", 2, one)
    assert data_root("w", "frappe86k", 3) == os.path.join("w", "frappe86k-3")


def test_the_cache_key_follows_the_bytes_and_the_columns(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("label,a\n1,x\n0,y\n")
    options = {"data": str(path), "label": "label", "categorical": ["a"]}
    key = csv_key(options)
    assert key == csv_key(dict(options))
    assert key != csv_key({**options, "categorical": ["a", "b"]})
    path.write_text("label,a\n1,x\n0,z\n")  # the same size; a new modification time
    os.utime(path, ns=(10**18, 10**18))
    assert csv_key(options) != key


@pytest.mark.slow
def test_bench_on_own_interaction_log_with_a_child_process_row(tmp_path):
    generate_synthetic_topk(str(tmp_path / "syn"), seed=5)
    log = _concat(str(tmp_path / "syn"), str(tmp_path / "log.csv"),
                  header=["clicked", "customer", "sku"])
    out = tmp_path / "log.json"
    # `mf` trains in this process; `mf[l2=0.001]` (a grid row) in a child process, which must
    # find the same prepared split of the log.
    assert main(["bench", "--data", log, "--user", "customer", "--item", "sku", "--label",
                 "clicked", "--models", "mf,mf[l2=0.001]", "--seeds", "7", "--work-dir",
                 str(tmp_path / "work"), "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["dataset"], r["model"]) for r in rows] == [("csv", "mf"), ("csv", "mf[l2=0.001]")]
    with open(tmp_path / "syn" / "ground_truth.json") as f:
        popularity = json.load(f)["popularity_test_recall@20"]
    # a per-user split of the planted log, not the generator's own: popularity is a yardstick
    assert all(r["recall@20"] > popularity for r in rows)
    assert rows[0]["architecture"]["num_users"] == rows[1]["architecture"]["num_users"]
    # one prepared split, which the child was handed (it prepares nothing of its own)
    assert [p for p in os.listdir(tmp_path / "work") if p.startswith("csv-")] == [
        os.path.basename(data_root(str(tmp_path / "work"), "csv", 7,
                                   json.loads(out.read_text())["dataset_options"]))]


def test_a_config_for_own_data_adds_it_only_without_named_datasets(tmp_path):
    from argparse import Namespace  # noqa: PLC0415

    from benchmarks.bench import own_data_options  # noqa: PLC0415
    from pipeline.configs import PipelineConfig  # noqa: PLC0415

    config = PipelineConfig.from_dict({"dataset": "csv", "dataset_options": {
        "data": "d.csv", "label": "y", "categorical": ["a"]}})
    flags = Namespace(label="clicked")  # a flag overrides the config's option
    assert own_data_options(flags, config, []) == {
        "data": os.path.abspath("d.csv"), "label": "clicked", "categorical": ["a"]}
    assert own_data_options(Namespace(), config, ["synthetic"]) == {}
    assert own_data_options(Namespace(), config, ["synthetic", "csv"])["label"] == "y"


def test_a_bad_row_in_own_data_names_file_and_row_and_writes_no_report(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("clicked,user,price\n1,a,0.5\n0,b,nan\n1,c,0.1\n")
    out = tmp_path / "b.json"
    assert main(["bench", "--data", str(bad), "--label", "clicked", "--categorical", "user",
                 "--numerical", "price", "--models", "lr", "--work-dir", str(tmp_path / "w"),
                 "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert str(bad) in error and "row 3" in error and "price" in error
    assert not out.exists()
