"""The whole TFX pipeline on tiny synthetic data, twice (caching), then serving from outside.

Asserts MLMD execution counts and states (the second run reuses every cacheable execution),
the pushed SavedModel, summary.json, and `autorecsys predict` in a fresh process.
"""

import csv
import json
import os
import subprocess
import sys

import pytest
from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata

from pipeline.configs import PipelineConfig
from pipeline.run import run, run_paths
from tests.conftest import run_cli

pytestmark = pytest.mark.e2e

CACHEABLE = {"ImportExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator",
             "AnomaliesGate", "Transform", "Tuner", "ArchitectureSearch", "Trainer"}


def tiny_config(output_dir: str) -> PipelineConfig:
    return PipelineConfig.from_dict({
        "output_dir": output_dir,
        "dataset": "synthetic",
        "dataset_options": {"n_rows": 3000},
        "min_eval_auc": 0.5,
        "tuner": {"enabled": True, "max_trials": 2, "epochs_per_trial": 1},
        "train": {"model": "deepfm", "max_epochs": 3, "batch_size": 256,
                  "hidden_units": [32, 32], "learning_rate": 0.005},
    })


def executions_by_node(metadata_path: str) -> dict[str, list[int]]:
    """Node id -> states of its executions, oldest first."""
    config = metadata.sqlite_metadata_connection_config(metadata_path)
    with metadata.Metadata(config) as m:
        executions = sorted(m.store.get_executions(), key=lambda e: e.id)
        by_node: dict[str, list[int]] = {}
        for execution in executions:
            contexts = m.store.get_contexts_by_execution(execution.id)
            node = next(c.name.split(".")[-1] for c in contexts
                        if m.store.get_context_types_by_id([c.type_id])[0].name == "node")
            by_node.setdefault(node, []).append(execution.last_known_state)
    return by_node


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("e2e") / "run")
    first = run(tiny_config(output_dir))
    after_first = executions_by_node(run_paths(output_dir).metadata_path)
    second = run(tiny_config(output_dir))
    after_second = executions_by_node(run_paths(output_dir).metadata_path)
    return output_dir, first, second, after_first, after_second


def test_every_component_ran_once_then_cacheable_ones_were_reused(two_runs):
    _, _, _, after_first, after_second = two_runs
    complete = metadata_store_pb2.Execution.COMPLETE
    cached = metadata_store_pb2.Execution.CACHED
    assert CACHEABLE | {"Evaluator", "Pusher"} <= set(after_first)
    for node in CACHEABLE | {"Evaluator", "Pusher"}:
        assert after_first[node] == [complete], node
    for node in CACHEABLE:
        assert after_second[node] == [complete, cached], node
    # Evaluator re-runs against the now-blessed baseline; Pusher follows it.
    assert len(after_second["Evaluator"]) == 2
    assert len(after_second["Pusher"]) == 2


def test_summary_and_pushed_model(two_runs):
    output_dir, first, second, _, _ = two_runs
    with open(os.path.join(output_dir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["pushed_model_dir"] == second["pushed_model_dir"]
    for key in ("dataset", "pushed_model_dir", "raw_test_file", "metrics", "architecture"):
        assert key in summary
    assert os.path.exists(os.path.join(summary["pushed_model_dir"], "saved_model.pb"))
    assert summary["architecture"]["model"] == "deepfm"
    assert summary["architecture"]["search"]["strategy"] == "none"
    tuned = summary["architecture"]["search"]["tuned"]
    assert set(tuned) == {"learning_rate", "embedding_dim", "dropout", "l2"}
    assert all(summary["architecture"]["embedding_dims"][f] == tuned["embedding_dim"]
               for f in summary["architecture"]["categorical"])
    assert 0.55 < summary["metrics"]["test_auc"] <= 1.0
    assert first["metrics"]["test_examples"] == 300


def _predict(model_dir: str, csv_path: str) -> subprocess.CompletedProcess:
    return run_cli("predict", "--model-dir", model_dir, "--input", csv_path)


def test_predict_in_a_fresh_process_scores_every_row_in_order(two_runs, tmp_path):
    _, first, second, _, _ = two_runs
    with open(first["raw_test_file"]) as f:
        rows = list(csv.DictReader(f))
    unlabeled = tmp_path / "unlabeled.csv"
    columns = [c for c in rows[0] if c != "label"]
    with open(unlabeled, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows[:20]:
            writer.writerow({c: row[c] for c in columns})
        writer.writerow({**{c: rows[0][c] for c in columns}, "c0": "never-seen-before"})
    out = _predict(second["pushed_model_dir"], str(unlabeled))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "probability"
    probabilities = [float(x) for x in lines[1:]]
    assert len(probabilities) == 21
    assert all(0.0 < p < 1.0 for p in probabilities)
    with_label = _predict(second["pushed_model_dir"], first["raw_test_file"])
    assert len(with_label.stdout.strip().splitlines()) == len(rows) + 1


# Builds tf.Examples with TensorFlow alone and scores them; run with `python -I` (no project
# code, no PYTHONPATH) from an empty folder, it is what a model server sees of the export.
STANDALONE_SCORER = r"""
import csv, json, sys
import tensorflow as tf
model_dir, csv_path = sys.argv[1], sys.argv[2]
with open(model_dir + "/assets.extra/raw_features.json") as f:
    spec = json.load(f)
with open(csv_path) as f:
    rows = list(csv.DictReader(f))[:20]
def example(row):
    feature = {c: tf.train.Feature(bytes_list=tf.train.BytesList(value=[row[c].encode()]))
               for c in spec["categorical"]}
    feature.update({c: tf.train.Feature(float_list=tf.train.FloatList(value=[float(row[c])]))
                    for c in spec["numerical"] if row[c] != ""})
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
serve = tf.saved_model.load(model_dir).signatures["serving_default"]
probability = serve(examples=tf.constant([example(r) for r in rows]))["probability"]
loaded = {m.split(".")[0] for m in sys.modules}
print(json.dumps({"probability": probability.numpy().reshape(-1).tolist(),
                  "loaded": sorted(loaded & {"tensorflow_transform", "tfx", "tfx_bsl",
                                             "pipeline", "models", "components"})}))
"""


def test_pushed_model_serves_without_the_project_or_transform_code(two_runs, tmp_path):
    _, first, second, _, _ = two_runs
    proc = subprocess.run([sys.executable, "-I", "-c", STANDALONE_SCORER,
                           second["pushed_model_dir"], first["raw_test_file"]],
                          capture_output=True, text=True, check=False, cwd=tmp_path,
                          env=dict(os.environ, TF_USE_LEGACY_KERAS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    expected = _predict(second["pushed_model_dir"], first["raw_test_file"])
    probabilities = [float(x) for x in expected.stdout.strip().splitlines()[1:21]]
    assert result["probability"] == pytest.approx(probabilities, abs=1e-5)  # 6 decimals


def test_the_pushed_model_warms_up_tf_serving_with_its_own_requests(two_runs):
    from tests.e2e.warmup import replay_warmup  # noqa: PLC0415

    _, _, second, _, _ = two_runs
    outputs = replay_warmup(second["pushed_model_dir"])
    # a request of 1 example, then 2: the typical one and one with unseen categories
    assert [o["probability"].shape.as_list() for o in outputs] == [[1], [2]]
    probabilities = outputs[1]["probability"].numpy().ravel()
    assert ((probabilities > 0) & (probabilities < 1)).all()
    assert outputs[0]["probability"].numpy().ravel()[0] == pytest.approx(probabilities[0])


def test_predict_rejects_a_bad_row_naming_it(two_runs, tmp_path):
    _, _, second, _, _ = two_runs
    bad = tmp_path / "bad.csv"
    with open(second["raw_test_file"]) as f:
        header = f.readline().strip()
    bad.write_text(header + "\n" + ",".join(["1"] + ["x"] * (len(header.split(",")) - 1)) + "\n")
    out = _predict(second["pushed_model_dir"], str(bad))
    assert out.returncode == 2
    assert f"{bad}: row 2: field 'n0' is numerical" in out.stderr
