"""The whole pipeline with its artifacts on storage that is not a local path (``artifact_root``).

A runner whose workers do not share this machine's disk (Dataflow) needs the examples, the
pipeline root and the serving dir on remote storage such as ``gs://``. Here ``ram://``
(TensorFlow's in-memory filesystem, made known to Beam by ``tests/e2e/ramfs.py``) stands in for
it: every component, our own and TFX's, must read and write through ``tf.io.gfile`` or Beam's
``FileSystems``, since nothing there exists on disk. MLMD, the prepared CSVs, ``summary.json``
and the search report stay in the local ``output_dir``.
"""

import json
import os

import pytest
import tensorflow as tf
from ml_metadata.proto import metadata_store_pb2

import tests.e2e.ramfs  # noqa: F401 (registers ram:// with Beam)
from pipeline import storage
from pipeline.configs import PipelineConfig
from pipeline.run import run
from tests.e2e.test_pipeline_e2e import executions_by_node

pytestmark = pytest.mark.e2e


def _assert_nothing_but_local_files(output_dir: str) -> None:
    """The artifacts went to the artifact root: locally only the run's own files."""
    assert sorted(os.listdir(output_dir)) == [
        "data", "examples", "metadata.sqlite", "search", "summary.json"], os.listdir(output_dir)


def _config(output_dir: str, root: str, search: str) -> PipelineConfig:
    return PipelineConfig.from_dict({
        "output_dir": output_dir, "artifact_root": root, "dataset": "synthetic",
        "dataset_options": {"n_rows": 3000}, "min_eval_auc": 0.5, "search_strategy": search,
        "train": {"model": "deepfm", "max_epochs": 2, "batch_size": 256,
                  "hidden_units": [32, 32]}})


def test_ctr_pipeline_with_a_search_runs_on_remote_storage(tmp_path):
    output_dir = str(tmp_path / "run")
    root = f"ram://remote-ctr-{tmp_path.name}/run"
    summary = run(_config(output_dir, root, "autofis"))

    pushed = summary["pushed_model_dir"]
    assert pushed.startswith(root + "/serving/")
    assert tf.io.gfile.exists(os.path.join(pushed, "saved_model.pb"))
    # scored through the pushed SavedModel, read back from the artifact root
    assert summary["metrics"]["test_examples"] == 300
    assert 0.5 < summary["metrics"]["test_auc"] <= 1.0
    assert summary["architecture"]["search"]["strategy"] == "autofis"
    # the examples were published by content and marked complete
    (digest,) = tf.io.gfile.listdir(root + "/examples")
    examples = os.path.join(root, "examples", digest.rstrip("/"))
    assert tf.io.gfile.exists(os.path.join(examples, storage.COMPLETE_MARKER))
    assert tf.io.gfile.glob(os.path.join(examples, "train", "*"))
    # every component wrote under the remote pipeline root
    components = {c.rstrip("/") for c in tf.io.gfile.listdir(root + "/pipeline")}
    assert {"ImportExampleGen", "Transform", "ArchitectureSearch", "Trainer", "Evaluator",
            "Pusher"} <= components
    # the search's pictures came back from the remote artifacts into the local report
    names = sorted(os.path.basename(p) for p in summary["search_report"])
    assert "architecture.json" in names and "autofis_gates.png" in names
    assert all(os.path.getsize(p) > 0 for p in summary["search_report"])
    _assert_nothing_but_local_files(output_dir)
    with open(os.path.join(output_dir, "summary.json")) as f:
        assert json.load(f)["pushed_model_dir"] == pushed

    # Run again without the search: the same data keeps its examples folder, so ExampleGen and
    # the data checks are reused from the remote artifacts; Transform (whose custom_config holds
    # the whole config), the search and the rest run anew.
    again = run(_config(output_dir, root, "none"))
    assert [d.rstrip("/") for d in tf.io.gfile.listdir(root + "/examples")] == [
        digest.rstrip("/")]
    states = executions_by_node(os.path.join(output_dir, "metadata.sqlite"))
    cached = metadata_store_pb2.Execution.CACHED
    for node in ("ImportExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator"):
        assert states[node] == [metadata_store_pb2.Execution.COMPLETE, cached], node
    assert states["ArchitectureSearch"][-1] != cached
    assert again["pushed_model_dir"].startswith(root + "/serving/")
    assert again["architecture"]["search"]["strategy"] == "none"


def test_topk_pipeline_runs_on_remote_storage(tmp_path):
    output_dir = str(tmp_path / "run")
    root = f"ram://remote-topk-{tmp_path.name}/run"
    summary = run(PipelineConfig.from_dict({
        "output_dir": output_dir, "artifact_root": root, "dataset": "synthetic_topk",
        "min_eval_recall": 0.05, "train": {"max_epochs": 10},
        "topk": {"learning_rate": 0.01, "batch_size": 256}}))

    pushed = summary["pushed_model_dir"]
    assert pushed.startswith(root + "/serving/")
    # TopkBlessing read the Trainer's report and wrote its blessing remotely; the test split
    # was ranked with the tables exported under the pushed model's assets.extra
    blessings = tf.io.gfile.glob(root + "/pipeline/TopkBlessing/blessing/*/BLESSED")
    assert len(blessings) == 1
    assert 0.0 < summary["metrics"]["test_recall@20"] <= 1.0
    assert 0.0 < summary["metrics"]["test_ndcg@20"] <= 1.0
    assert sorted(set(os.listdir(output_dir)) - {"search"}) == [
        "data", "examples", "metadata.sqlite", "summary.json"]
