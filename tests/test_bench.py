"""`autorecsys bench` on tiny synthetic data writes rows with every field, a table and a plot."""

import json
import os

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.datasets import DatasetError, resolve_data_dir

ROW_KEYS = {"dataset", "model", "seed", "test_auc", "test_logloss", "test_auc_se",
            "embedding_params", "total_params", "search_seconds", "train_seconds",
            "train_examples_per_second", "architecture"}


@pytest.mark.slow
def test_bench_rows_report_and_plot(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"train": {"max_epochs": 2, "batch_size": 512,
                                            "hidden_units": [16]}}))
    out = tmp_path / "bench" / "b.json"
    code = main(["bench", "--datasets", "synthetic", "--models", "lr,deepfm+buckets",
                 "--seeds", "1,2", "--config", str(config), "--out", str(out), "--serving"])
    assert code == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["model"], r["seed"]) for r in rows] == [
        ("lr", 1), ("deepfm+buckets", 1), ("lr", 2), ("deepfm+buckets", 2)]
    for row in rows:
        assert ROW_KEYS <= set(row)
        assert 0.5 < row["test_auc"] <= 1.0
        assert row["train_examples_per_second"] > 0
    bucketed = rows[1]["architecture"]
    assert set(bucketed["numeric_encoding"].values()) == {"bucket"}
    serving = json.loads(out.read_text())["serving"]
    assert [s["model"] for s in serving] == ["lr", "deepfm+buckets"]
    for entry in serving:
        for batch in ("1", "256"):
            latency = entry["latency_ms"][batch]
            assert 0 < latency["p50"] <= latency["p99"]
    table = out.with_suffix(".md").read_text()
    assert "| synthetic | deepfm+buckets | 2 |" in table
    assert "| synthetic | deepfm+buckets | lr | test_auc | 2 |" in table  # paired differences
    assert all(0 < row["test_auc_se"] < 0.1 and row["batch_size"] == 512 for row in rows)
    assert out.with_suffix(".png").stat().st_size > 1000


def _has_data(name: str) -> bool:
    try:
        return os.path.isdir(os.path.join(resolve_data_dir(), name))
    except DatasetError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _has_data("movielens_100k"), reason="no ml100k data")
def test_bench_on_a_dataset_without_numerical_fields(tmp_path):
    # ml100k_ctr, like frappe86k and movielens1m_ctr, has categorical fields only; session 17's
    # missing-value code crashed on such data (no test had one).
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"train": {"max_epochs": 1, "hidden_units": [8]}}))
    out = tmp_path / "b.json"
    code = main(["bench", "--datasets", "ml100k_ctr", "--models", "deepfm", "--seeds", "1",
                 "--config", str(config), "--out", str(out)])
    assert code == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["architecture"]["numerical"] == [] and row["architecture"]["numeric_missing"] == []
    assert 0.5 < row["test_auc"] <= 1.0


@pytest.mark.slow
@pytest.mark.skipif(not _has_data("movielens_1m_topk_lightgcnpp"), reason="no ml1m_topk data")
def test_bench_topk_rows_carry_recall_and_ndcg(tmp_path):
    out = tmp_path / "topk.json"
    assert main(["bench", "--datasets", "ml1m_topk", "--models", "mf", "--seeds", "1",
                 "--max-epochs", "2", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert {"recall@20", "ndcg@20", "embedding_params", "train_seconds"} <= set(row)
    assert "test_auc" not in row
    assert 0.02 < row["recall@20"] < 1.0 and 0.0 < row["ndcg@20"] < 1.0
    assert row["embedding_params"] == 64 * (row["architecture"]["num_users"]
                                            + row["architecture"]["num_items"])
    assert "| ml1m_topk | mf | 1 |" in out.with_suffix(".md").read_text()


def test_bench_synthetic_topk_mf_with_shipped_settings_beats_popularity(tmp_path):
    """The embedded top-k data (about 6,500 train pairs) gets a batch lowered so that an epoch
    takes ``topk.min_steps_per_epoch`` steps; at 2,048 (4 steps an epoch) MF-BPR stopped near
    random ranking."""
    from benchmarks.topk import _prepare  # noqa: PLC0415
    from components.topk import load_topk  # noqa: PLC0415
    from pipeline.configs import TopkConfig  # noqa: PLC0415

    out, work = tmp_path / "syn.json", tmp_path / "work"
    assert main(["bench", "--datasets", "synthetic_topk", "--models", "mf", "--seeds", "2021",
                 "--work-dir", str(work), "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    num_train = len(load_topk(_prepare("synthetic_topk", str(work), None)).train_pairs)
    assert row["batch_size"] == TopkConfig().batch_size_for(num_train) == -(-num_train // 100)
    with open(work / "synthetic_topk" / "data" / "ground_truth.json") as f:
        truth = json.load(f)
    assert row["recall@20"] > truth["popularity_test_recall@20"] + 0.1
    assert row["val_recall@20"] > truth["popularity_test_recall@20"]


@pytest.mark.slow
def test_bench_mf_autolossgen_row_and_a_transferred_loss(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "train": {"max_epochs": 4}, "topk": {"learning_rate": 0.01, "batch_size": 256},
        "search_options": {"autolossgen": {"search_epochs": 1, "samples_per_epoch": 30,
                                           "max_trainings_per_epoch": 2,
                                           "default_finalist": False}}}))  # a found loss moves
    out = tmp_path / "alg.json"
    assert main(["bench", "--datasets", "synthetic_topk", "--models", "mf+autolossgen",
                 "--seeds", "1", "--config", str(config), "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    record = row["architecture"]["search"]["autolossgen"]
    assert row["search_seconds"] > 0 and 0.0 < row["recall@20"] <= 1.0
    assert row["architecture"]["loss"] == record["loss"]
    loss_file = tmp_path / "alg-search" / "synthetic_topk-mf+autolossgen-seed1" / \
        "autolossgen_loss.json"
    if record["loss"] is None:  # no candidate passed the validity check: BPR kept
        assert row["loss"] == "bpr" and not loss_file.exists()
        return
    assert row["loss"] == record["formula"]
    moved = tmp_path / "moved.json"  # the loss applied to plain mf, as --loss-from does
    assert main(["bench", "--datasets", "synthetic_topk", "--models", "mf", "--seeds", "1",
                 "--config", str(config), "--loss-from", str(loss_file),
                 "--out", str(moved)]) == 0
    (transferred,) = json.loads(moved.read_text())["results"]
    assert transferred["loss"] == record["formula"]
    assert transferred["architecture"]["search"]["loss_from"] == str(loss_file)


def test_ctr_model_on_a_topk_dataset_is_refused(tmp_path, capsys):
    if not _has_data("movielens_1m_topk_lightgcnpp"):
        pytest.skip("no ml1m_topk data")
    code = main(["bench", "--datasets", "ml1m_topk", "--models", "deepfm", "--out",
                 str(tmp_path / "x.json")])
    assert code == 2
    assert "top-k dataset" in capsys.readouterr().err


def test_paired_differences_pair_seeds_and_skip_mirrored_baselines():
    from benchmarks.report import paired_differences  # noqa: PLC0415

    rows = [{"dataset": "d", "model": m, "seed": s, "recall@20": r}
            for m, s, r in [("mf", 1, 0.20), ("mf", 2, 0.21), ("mf", 3, 0.19),
                            ("mf+esapn", 1, 0.18), ("mf+esapn", 2, 0.20), ("mf+esapn", 4, 0.5)]]
    rows += [{"dataset": "c", "model": m, "seed": 1, "test_auc": a, "test_auc_se": 0.01}
             for m, a in [("lr", 0.70), ("fm", 0.72), ("deepfm", 0.71)]]
    pairs = {(e["dataset"], e["model"], e["vs"]): e for e in paired_differences(rows)}
    assert set(pairs) == {("d", "mf+esapn", "mf"), ("c", "fm", "lr"), ("c", "deepfm", "lr"),
                          ("c", "deepfm", "fm")}
    esapn = pairs[("d", "mf+esapn", "mf")]  # seeds 1 and 2 only
    assert (esapn["metric"], esapn["n"], esapn["wins"]) == ("recall@20", 2, 0)
    assert esapn["mean"] == pytest.approx(-0.015)
    assert esapn["se"] == pytest.approx(np.std([-0.02, -0.01], ddof=1) / np.sqrt(2))
    assert pairs[("c", "deepfm", "fm")]["mean"] == pytest.approx(-0.01)
    assert pairs[("c", "deepfm", "fm")]["test_se"] == pytest.approx(0.01)


@pytest.mark.parametrize("argv, needle", [
    (["--datasets", "synthetic,nope", "--models", "lr"], "unknown dataset 'nope'"),
    (["--datasets", ",", "--models", "lr"], "--datasets needs one or more"),
    (["--datasets", "synthetic", "--models", "lr,lr"], "--models needs one or more distinct"),
    (["--datasets", "synthetic", "--models", "lr", "--seeds", ","], "--seeds needs one or more"),
    (["--datasets", "synthetic", "--models", "lr", "--seeds", "1,1"], "--seeds needs"),
    (["--datasets", "synthetic_topk", "--models", "mf+lambdaopt,mf+lambdaopt[fixed]"],
     "rows ['mf+lambdaopt[fixed]'] would be trained twice"),
    (["--datasets", "synthetic", "--models", "lr,mf"], "models ['mf'] are top-k models"),
    (["--datasets", "synthetic,synthetic_topk", "--models", "lr"], "models ['lr'] are CTR"),
    (["--datasets", "synthetic", "--models", "lr", "--max-epochs", "0"], "train.max_epochs"),
    (["--datasets", "synthetic,frappe86k", "--models", "lr", "--data-dir", "/nonexistent"],
     "'/nonexistent'"),
    (["--datasets", "synthetic", "--models", "lr", "--out", "DIR"], "is a directory"),
    (["--datasets", "synthetic", "--models", "lr", "--config", "TYPO"],
     "search_options.nis: unknown options ['epochz']"),
    # your own data (dataset "csv"; LOG: a one-row CSV, MISSING: no file)
    (["--models", "lr"], "give --datasets NAMES, or your own data"),
    (["--datasets", "csv", "--models", "lr"], "'csv' is your own data"),
    (["--label", "label", "--categorical", "a", "--models", "lr"], "bench: give --data FILE"),
    (["--data", "MISSING", "--label", "label", "--categorical", "a", "--models", "lr"],
     "missing.csv: no such file"),
    (["--data", "LOG", "--label", "label", "--models", "lr"],
     "give --categorical and/or --numerical"),
    (["--data", "LOG", "--user", "u", "--item", "i", "--categorical", "a", "--models", "mf"],
     "takes no other feature columns"),
    (["--data", "LOG", "--user", "u", "--models", "mf"], "needs both --user and --item"),
    (["--data", "LOG", "--user", "u", "--item", "i", "--models", "deepfm"],
     "models ['deepfm'] are CTR models"),
    (["--data", "LOG", "--label", "label", "--categorical", "a", "--models", "mf"],
     "models ['mf'] are top-k models"),
])
def test_bad_grid_fails_before_any_row_trains(tmp_path, capsys, monkeypatch, argv, needle):
    import benchmarks.bench  # noqa: PLC0415

    def no_work(*args, **kwargs):
        raise AssertionError("a row started before the grid was checked")

    monkeypatch.setattr(benchmarks.bench, "prepare_bench_data", no_work)
    monkeypatch.setattr(benchmarks.bench, "run_topk", no_work)
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"search_options": {"nis": {"epochz": 1}}}))
    log = tmp_path / "log.csv"
    log.write_text("u,i,label,a\n1,2,1,x\n")
    argv = [{"DIR": str(tmp_path), "TYPO": str(typo), "LOG": str(log),
             "MISSING": str(tmp_path / "missing.csv")}.get(a, a) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "b.json")]
    assert main(["bench", *argv]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_aggregate_keeps_datasets_apart_with_the_population_std():
    from benchmarks.report import aggregate  # noqa: PLC0415

    rows = [{"dataset": d, "model": "fm", "seed": s, "test_auc": a}
            for d, s, a in [("a", 1, 0.70), ("a", 2, 0.72), ("a", 3, 0.74), ("b", 1, 0.90)]]
    entries = {e["dataset"]: e for e in aggregate(rows)}
    assert entries["a"]["n"] == 3 and entries["b"]["n"] == 1
    assert entries["a"]["test_auc"] == pytest.approx((0.72, np.std([0.70, 0.72, 0.74], ddof=0)))
    assert entries["b"]["test_auc"] == pytest.approx((0.90, 0.0))


def test_report_shows_the_metrics_its_rows_have_and_plots_top_k_rows(tmp_path):
    from benchmarks.report import write_report  # noqa: PLC0415

    common = {"embedding_params": 10, "train_seconds": 1.0, "train_examples_per_second": 5.0}
    ctr = [{"dataset": "c", "model": "lr", "seed": s, "test_auc": 0.7 + s / 100,
            "test_logloss": 0.5, **common} for s in (1, 2)]
    topk = [{"dataset": "t", "model": "mf", "seed": s, "recall@20": 0.2 + s / 100,
             "ndcg@20": 0.3, **common} for s in (1, 2)]
    for name, rows, shown, absent in (("ctr", ctr, "test AUC", "Recall@20"),
                                      ("topk", topk, "Recall@20", "test AUC"),
                                      ("both", ctr + topk, "Recall@20", None)):
        out = tmp_path / f"{name}.json"
        write_report({"results": rows, "serving": []}, str(out))
        table = out.with_suffix(".md").read_text()
        header, rule = table.splitlines()[:2]
        assert shown in header and (absent is None or absent not in header)
        assert header.count("|") == rule.count("|")
        assert out.with_suffix(".png").stat().st_size > 1000
    assert "| t | mf | 2 | – | – | 0.2150 ± 0.0050 | 0.3000 ± 0.0000 | 10 |" in table
    assert "| c | lr | 2 | 0.7150 ± 0.0050 | 0.5000 ± 0.0000 | – | – | 10 |" in table
