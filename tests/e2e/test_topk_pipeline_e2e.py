"""The top-k pipeline on synthetic_topk: MF-BPR through every TFX stage, then serving.

ImportExampleGen -> ... -> Transform -> ArchitectureSearch (mf) -> Trainer (BPR) -> TopkBlessing
-> Pusher; summary.json holds full-ranking test Recall@20 / NDCG@20 that must beat popularity
ranking, and `autorecsys predict` in a fresh process returns 20 items per user row.
"""

import csv
import json
import os
import subprocess

import numpy as np
import pytest
from ml_metadata.proto import metadata_store_pb2

from pipeline.configs import PipelineConfig
from pipeline.run import run, run_paths
from tests.conftest import run_cli
from tests.e2e.test_pipeline_e2e import executions_by_node

pytestmark = pytest.mark.e2e

NODES = {"ImportExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "AnomaliesGate",
         "Transform", "ArchitectureSearch", "Trainer", "TopkBlessing", "Pusher"}


def tiny_topk_config(output_dir: str, **topk) -> PipelineConfig:
    """A top-k run on the embedded data; the short runs below (a few epochs) set
    ``learning_rate`` 0.01 to get past the blessing's 0.15."""
    return PipelineConfig.from_dict({
        "output_dir": output_dir,
        "dataset": "synthetic_topk",
        "min_eval_recall": 0.15,
        "train": {"max_epochs": 40},
        "topk": topk,
    })


@pytest.fixture(scope="module")
def topk_run(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("topk") / "run")
    summary = run(tiny_topk_config(output_dir))  # the shipped topk settings
    return output_dir, summary


def test_every_stage_ran_and_topk_blessing_replaced_the_evaluator(topk_run):
    output_dir, _ = topk_run
    by_node = executions_by_node(run_paths(output_dir).metadata_path)
    assert set(by_node) == NODES
    for node in NODES:
        assert by_node[node] == [metadata_store_pb2.Execution.COMPLETE], node
    blessings = os.path.join(output_dir, "pipeline", "TopkBlessing", "blessing")
    assert any("BLESSED" in files for _, _, files in os.walk(blessings))


def test_summary_has_test_ranking_metrics_above_baselines(topk_run):
    output_dir, summary = topk_run
    with open(os.path.join(output_dir, "summary.json")) as f:
        assert json.load(f)["metrics"] == summary["metrics"]
    for key in ("dataset", "pushed_model_dir", "raw_test_file", "metrics", "architecture"):
        assert key in summary
    assert os.path.exists(os.path.join(summary["pushed_model_dir"], "saved_model.pb"))
    arch = summary["architecture"]
    assert arch["model"] == "mf" and arch["categorical"] == ["user", "item"]
    assert arch["embedding_dims"] == {"user": 64, "item": 64}
    metrics = summary["metrics"]
    truth = summary["dataset_metadata"]["ground_truth"]
    assert metrics["test_users"] == truth["n_users"]
    assert 0.0 < metrics["test_recall@20"] <= 1.0 and 0.0 < metrics["test_ndcg@20"] <= 1.0
    assert 0.0 < metrics["test_recall@20_excluding_eval"] <= 1.0
    # Random ranking reaches about k / catalogue; popularity alone far more on Zipf data.
    assert truth["random_test_recall@20"] < 0.15
    assert metrics["test_recall@20"] > 2 * truth["random_test_recall@20"]
    assert metrics["test_recall@20"] > truth["popularity_test_recall@20"]
    reports = [os.path.join(d, "training_report.json")
               for d, _, files in os.walk(os.path.join(output_dir, "pipeline", "Trainer"))
               if "training_report.json" in files]
    with open(reports[0]) as f:
        report = json.load(f)
    assert report["eval_recall@20"] >= 0.15
    # topk.min_steps_per_epoch: about 6,500 train pairs give 100 steps an epoch, not 4.
    assert 2 < report["training"]["batch_size"] <= 100


def _predict(model_dir: str, csv_path: str) -> subprocess.CompletedProcess:
    return run_cli("predict", "--model-dir", model_dir, "--input", csv_path)


def test_predict_in_a_fresh_process_returns_20_items_per_user_row(topk_run, tmp_path):
    _, summary = topk_run
    with open(summary["raw_test_file"]) as f:
        rows = list(csv.DictReader(f))[:5]
    users = [r["user"] for r in rows] + ["never-seen-user"]
    path = tmp_path / "users.csv"
    path.write_text("user\n" + "\n".join(users) + "\n")
    out = _predict(summary["pushed_model_dir"], str(path))
    assert out.returncode == 0, out.stderr
    lines = list(csv.reader(out.stdout.strip().splitlines()))
    assert lines[0] == ["user", "items"]
    assert [line[0] for line in lines[1:]] == users
    train_file = os.path.join(os.path.dirname(summary["raw_test_file"]), "train.csv")
    with open(train_file) as f:
        seen = {(r["user"], r["item"]) for r in csv.DictReader(f)}
    for user, items in lines[1:]:
        assert len(items.split()) == 20 == len(set(items.split()))
        assert all(i.startswith("i") for i in items.split())
        assert not [i for i in items.split() if (user, i) in seen], user


def test_autolossgen_search_loss_reaches_the_trainer(tmp_path):
    """``search_strategy: autolossgen`` on a top-k dataset: the loss found on train/eval is in
    the architecture the Trainer trains MF with (a pointwise loss instead of BPR)."""
    config = tiny_topk_config(str(tmp_path / "run"), learning_rate=0.01)
    config.train.max_epochs = 5
    config.search_strategy = "autolossgen"
    # Without BPR as a finalist, so that a found loss is what the Trainer gets (with it, BPR
    # may win on this tiny data and the test would check nothing).
    config.search_options = {"autolossgen": {"search_epochs": 1, "samples_per_epoch": 30,
                                             "max_trainings_per_epoch": 2,
                                             "default_finalist": False}}
    summary = run(config)
    arch = summary["architecture"]
    record = arch["search"]["autolossgen"]
    assert arch["search"]["strategy"] == "autolossgen"
    assert record["reward_metric"] == "eval Recall@20" and record["trained_candidates"] >= 1
    assert arch["loss"] == record["loss"] and arch["loss"]["kind"] == "autolossgen"
    assert summary["metrics"]["test_recall@20"] > 0.0


def test_refit_serves_a_model_trained_on_train_and_eval(tmp_path):
    """``topk.refit``: the Trainer retrains on train + eval for the early-stopped epoch count and
    exports that model; serving then leaves out the user's train and eval items."""
    config = tiny_topk_config(str(tmp_path / "run"), learning_rate=0.01)
    config.train.max_epochs = 6
    config.topk.refit = True
    summary = run(config)
    run_dirs = [d for d, _, files in os.walk(os.path.join(str(tmp_path / "run"), "pipeline",
                                                          "Trainer"))
                if "training_report.json" in files]
    with open(os.path.join(run_dirs[0], "training_report.json")) as f:
        report = json.load(f)
    data_dir = os.path.dirname(summary["raw_test_file"])
    pairs = {}
    for split in ("train", "eval"):
        with open(os.path.join(data_dir, f"{split}.csv")) as f:
            pairs[split] = {(r["user"], r["item"]) for r in csv.DictReader(f)}
    assert report["refit"]["epochs"] == report["best_epoch"] >= 1
    # Eval pairs whose user or item train lacks are dropped, as in training.
    assert len(pairs["train"]) < report["refit"]["train_pairs"] <= len(pairs["train"]
                                                                       | pairs["eval"])
    assert summary["metrics"]["test_recall@20_excluding_eval"] > 0.0
    users = sorted({u for u, _ in pairs["eval"]})[:5]
    path = tmp_path / "users.csv"
    path.write_text("user\n" + "\n".join(users) + "\n")
    out = _predict(summary["pushed_model_dir"], str(path))
    assert out.returncode == 0, out.stderr
    for user, items in list(csv.reader(out.stdout.strip().splitlines()))[1:]:
        assert not [i for i in items.split() if (user, i) in pairs["train"] | pairs["eval"]]


def test_lambdaopt_strategy_trains_mf_jointly_with_per_id_l2(tmp_path):
    """``search_strategy: lambdaopt`` on a top-k dataset: the Architecture holds the joint
    training's settings and the Trainer learns per-user and per-item Λ with the model."""
    config = tiny_topk_config(str(tmp_path / "run"), learning_rate=0.01)
    config.train.max_epochs = 4
    config.search_strategy = "lambdaopt"
    config.search_options = {"lambdaopt": {"lambda_learning_rate": 0.01, "variant": "full"}}
    summary = run(config)
    arch = summary["architecture"]
    assert arch["search"]["strategy"] == "lambdaopt"
    assert arch["lambdaopt"]["variant"] == "full"
    assert arch["lambdaopt"]["lambda_learning_rate"] == 0.01 and not arch["id_l2"]
    run_dirs = [d for d, _, files in os.walk(os.path.join(str(tmp_path / "run"), "pipeline",
                                                          "Trainer"))
                if "training_report.json" in files]
    with open(os.path.join(run_dirs[0], "training_report.json")) as f:
        report = json.load(f)["lambdaopt"]
    assert report["settings"]["variant"] == "full"
    for key in ("user", "item"):  # learned: Λ starts at 0 everywhere
        assert report["lambda"][key]["quantiles"]["max"] > 0, key
    lambdas = np.load(os.path.join(run_dirs[0], "lambdas.npz"))
    assert lambdas["user"].shape[1] == 1 and lambdas["item"].shape[1] == 1  # one Λ per id
    assert np.all(lambdas["user"] >= 0) and np.all(lambdas["item"] >= 0)
    assert summary["metrics"]["test_recall@20"] > 0.0


def test_lambdaopt_bad_option_is_refused_before_training(tmp_path):
    config = tiny_topk_config(str(tmp_path / "run"), learning_rate=0.01)
    config.search_strategy = "lambdaopt"
    config.search_options = {"lambdaopt": {"variant": "approximate"}}
    with pytest.raises(Exception, match="variant"):
        run(config)
    assert not os.path.exists(os.path.join(str(tmp_path / "run"), "summary.json"))


def test_the_pushed_top_k_model_warms_up_tf_serving(topk_run):
    from tests.e2e.warmup import replay_warmup  # noqa: PLC0415

    _, summary = topk_run
    outputs = replay_warmup(summary["pushed_model_dir"])
    assert [o["items"].shape.as_list() for o in outputs] == [[1, 20], [2, 20]]
    assert all(i.startswith(b"i") for i in outputs[1]["items"].numpy().ravel())
