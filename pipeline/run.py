"""One run end to end: prepare data, run the TFX pipeline, score the pushed model on test once.

The test split is read exactly once, at the end, through the pushed SavedModel's serving
signature (so the reported numbers are what serving gives); nothing before it sees test. Top-k
models are scored by full ranking with the pushed model's exported tables (``assets.extra``), the
vectors its signature serves: test Recall@20 and NDCG@20, each user's train items excluded.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any

import tensorflow as tf
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx
from tfx.orchestration import metadata

from components.trainer import SEARCH_PICTURES
from models.architecture import TOPK_MODELS
from pipeline import metrics, storage
from pipeline.configs import PipelineConfig
from pipeline.datasets import prepare_run_dataset
from pipeline.datasets._common import require_both_labels
from pipeline.datasets.base import PreparedDataset
from pipeline.examples import write_tfrecords
from pipeline.pipeline import PipelinePaths, code_version, create_pipeline
from pipeline.predict import score_csv, topk_test_metrics
from pipeline.runners import beam_pipeline_args

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMMARY_FILE = "summary.json"
SEARCH_REPORT_DIR = "search"  # output_dir subfolder: the search's pictures and architecture


class NotPushedError(RuntimeError):
    """The Evaluator did not bless the model, so nothing was pushed."""


def run_paths(output_dir: str, artifact_root: str | None = None) -> PipelinePaths:
    """A run's locations: MLMD under ``output_dir``; the examples, pipeline root and serving dir
    under ``artifact_root`` when set (a URI for remote workers), else under ``output_dir``. With
    an ``artifact_root``, ``examples_dir`` is the folder that ``prepare`` publishes into
    (``storage.publish_examples``)."""
    root = artifact_root or output_dir
    return PipelinePaths(
        examples_dir=os.path.join(root, "examples"),
        pipeline_root=os.path.join(root, "pipeline"),
        metadata_path=os.path.join(output_dir, "metadata.sqlite"),
        serving_dir=os.path.join(root, "serving"),
    )


def prepare(config: PipelineConfig, beam_args: list[str],
            dataset: PreparedDataset | None = None) -> tuple[PreparedDataset, str]:
    """Runs the dataset adapter (unless ``dataset`` is already prepared) and the validated CSV ->
    TFRecord conversion (a Beam job on the configured runner for large inputs).

    Returns:
      The dataset and the folder ImportExampleGen reads: ``output_dir/examples``, or with an
      ``artifact_root`` the content-named copy of it there (``storage.publish_examples``). The
      conversion reads the local CSVs, so with an ``artifact_root`` and a remote runner a large
      input is converted by the local multi-process runner, then copied.
    """
    if dataset is None:
        dataset = prepare_run_dataset(config)
    local_examples = run_paths(config.output_dir).examples_dir
    convert_args = beam_args
    if config.artifact_root is not None and not config.runner.startswith("direct"):
        convert_args = beam_pipeline_args("direct-multiprocess")  # it reads the local CSVs
    counts = write_tfrecords(dataset, local_examples, convert_args, config.beam_prep_min_bytes)
    logging.info("Prepared %s: %s examples per split.", dataset.name, counts)
    examples_dir = local_examples
    if config.artifact_root is not None:
        examples_dir = storage.publish_examples(
            local_examples, run_paths(config.output_dir, config.artifact_root).examples_dir)
    return dataset, examples_dir


def _outputs_since(store: Any, type_name: str, since_ms: int) -> list[Any]:
    """Artifacts of ``type_name`` output by executions created at or after ``since_ms``, the
    newest execution's first. A cached execution is new but outputs the artifacts of the run it
    reuses: these are this invocation's outputs, not merely the store's newest artifacts."""
    artifacts = {a.id: a for a in store.get_artifacts_by_type(type_name)}
    if not artifacts:
        return []
    events = [e for e in store.get_events_by_artifact_ids(list(artifacts))
              if e.type == metadata_store_pb2.Event.OUTPUT]
    executions = {e.id: e for e in store.get_executions_by_id({e.execution_id for e in events})
                  if e.create_time_since_epoch >= since_ms}
    found = [(executions[e.execution_id], artifacts[e.artifact_id]) for e in events
             if e.execution_id in executions]
    found.sort(key=lambda pair: (pair[0].create_time_since_epoch, pair[0].id), reverse=True)
    return [artifact for _, artifact in found]


def pushed_model_dir(metadata_path: str, since_ms: int) -> str:
    """Where this run's Pusher put the model (a cached Pusher: where the run it reuses put it);
    raises NotPushedError if it did not push."""
    config = metadata.sqlite_metadata_connection_config(metadata_path)
    with metadata.Metadata(config) as m:
        pushed = next(iter(_outputs_since(m.store, "PushedModel", since_ms)), None)
        blessing = next(iter(_outputs_since(m.store, "ModelBlessing", since_ms)), None)
    if pushed is None:
        raise NotPushedError("The Pusher did not run in this invocation.")
    props = pushed.custom_properties
    if not props.get("pushed", metadata_store_pb2.Value()).int_value:
        blessed = blessing.custom_properties if blessing else {}
        detail = "not blessed" if blessed and not blessed["blessed"].int_value else "not pushed"
        raise NotPushedError(f"The model was {detail} by the Evaluator (or TopkBlessing; see "
                             f"its output: {blessing.uri if blessing else 'none recorded'}).")
    return props["pushed_destination"].string_value


def collect_search_report(metadata_path: str, out_dir: str, since_ms: int) -> list[str]:
    """Copies this run's search report (ArchitectureSearch's ``search_report``, and the
    pictures the Trainer drew of the retrained model) into ``out_dir``; returns the files."""
    config = metadata.sqlite_metadata_connection_config(metadata_path)
    with metadata.Metadata(config) as m:
        runs = _outputs_since(m.store, "ModelRun", since_ms)
    sources = []
    for component, sub in (("ArchitectureSearch", ""), ("Trainer", SEARCH_PICTURES)):
        latest = next((a for a in runs if f"/{component}/" in a.uri), None)
        if latest is not None:
            sources.append(os.path.join(latest.uri, sub) if sub else latest.uri)
    copied = []
    for source in sources:
        if not tf.io.gfile.isdir(source):
            continue
        for name in sorted(tf.io.gfile.listdir(source)):
            path = os.path.join(source, name)
            if name.endswith((".png", ".json")) and not tf.io.gfile.isdir(path):
                os.makedirs(out_dir, exist_ok=True)
                tf.io.gfile.copy(path, os.path.join(out_dir, name), overwrite=True)
                copied.append(os.path.join(out_dir, name))
    return copied


def architecture_of(model_dir: str) -> dict[str, Any]:
    return json.loads(storage.read_text(os.path.join(model_dir, "assets.extra",
                                                     "architecture.json")))


def pipeline_spec(dataset: PreparedDataset, config: PipelineConfig) -> dict[str, Any]:
    """The feature spec the components read (``custom_config["spec"]``), as a dict.

    Raises:
      ConfigError: the config cannot train on this dataset (``PipelineConfig.check_task``).
    """
    spec = dataset.spec
    config.check_task(dataset.name, spec.task)
    if spec.task == "topk" and config.train.model not in TOPK_MODELS:
        logging.info("%s is a top-k dataset: training mf (train.model %r applies to CTR "
                     "datasets).", dataset.name, config.train.model)
    return spec.component_spec()


def check_both_labels(dataset: PreparedDataset) -> None:
    """Raises DatasetError unless every split of a CTR dataset holds labels 0 and 1.

    AUC, which blesses the model on eval and scores it on test, is undefined on one class (a
    small ``synthetic`` draw can hold one). Checked before the pipeline runs, so that nothing is
    pushed first; only the label column is read.
    """
    if dataset.spec.task == "topk":
        return
    for split in ("train", "eval", "test"):
        path = dataset.split_path(split)
        with open(path, newline="") as f:
            require_both_labels(split, (row[dataset.spec.label] for row in csv.DictReader(f)),
                                path)


def score_test_split(model_dir: str, dataset: PreparedDataset) -> dict[str, Any]:
    """The pushed model's test metrics: AUC and logloss (CTR) or Recall/NDCG@20 (top-k)."""
    if dataset.spec.task == "topk":
        return topk_test_metrics(model_dir, dataset)
    scores, labels = score_csv(model_dir, dataset.split_path("test"))
    return {"test_auc": metrics.roc_auc(labels, scores),
            "test_logloss": metrics.log_loss(labels, scores),
            "test_examples": int(scores.size)}


def data_version(dataset: PreparedDataset, spec: dict[str, Any]) -> str:
    """SHA-256 over the dataset's name, feature spec and split CSVs (first 12 hex digits)."""
    digest = hashlib.sha256(json.dumps([dataset.name, spec], sort_keys=True).encode())
    for split in ("train", "eval", "test"):
        with open(dataset.split_path(split), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def unpublish(output_dir: str) -> None:
    """Removes the last run's report (``summary.json``, ``search/``) from ``output_dir`` as a
    new run starts, so that a run that fails leaves none that would pass for its own."""
    for name in (SUMMARY_FILE, SUMMARY_FILE + ".partial"):
        path = os.path.join(output_dir, name)
        if os.path.exists(path):
            os.remove(path)
    shutil.rmtree(os.path.join(output_dir, SEARCH_REPORT_DIR), ignore_errors=True)


def run(config: PipelineConfig, orchestrator: str = "local",
        dataset: PreparedDataset | None = None) -> dict[str, Any]:
    """Runs the whole job for ``config`` and writes ``output_dir/summary.json``.

    Args:
      config: the run's configuration.
      orchestrator: ``local`` (LocalDagRunner, in-process, sequential) or ``beam`` (TFX's
        BeamDagRunner: every component is a step of one Beam pipeline).
      dataset: ``prepare_run_dataset(config)``'s result when the caller already prepared it
        (the CLI does, to report bad input before importing TFX); prepared here when None.
    """
    config.validate()
    config.output_dir = os.path.abspath(config.output_dir)
    config.check_storage()  # the CLI checked it before preparing; idempotent
    os.makedirs(config.output_dir, exist_ok=True)
    summary_path = os.path.join(config.output_dir, SUMMARY_FILE)
    search_dir = os.path.join(config.output_dir, SEARCH_REPORT_DIR)
    unpublish(config.output_dir)
    beam_args = beam_pipeline_args(config.runner, config.beam_pipeline_args)
    dataset, examples_dir = prepare(config, beam_args, dataset)
    paths = dataclasses.replace(run_paths(config.output_dir, config.artifact_root),
                                examples_dir=examples_dir)
    spec = pipeline_spec(dataset, config)
    check_both_labels(dataset)
    logging.info("Orchestrator %s; components' Beam args: %s", orchestrator, " ".join(beam_args))
    pipeline = create_pipeline(config, spec, paths, beam_args, code_version(REPO_ROOT),
                               data_version(dataset, spec))
    started_ms = int(time.time() * 1000)
    start = time.perf_counter()
    if orchestrator == "beam":
        from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner  # noqa: PLC0415

        BeamDagRunner().run(pipeline)
    else:
        tfx.orchestration.LocalDagRunner().run(pipeline)
    pipeline_seconds = time.perf_counter() - start
    model_dir = pushed_model_dir(paths.metadata_path, started_ms)
    summary = {
        "dataset": dataset.name,
        "pushed_model_dir": model_dir,
        "raw_test_file": dataset.split_path("test"),
        "metrics": score_test_split(model_dir, dataset),
        "architecture": architecture_of(model_dir),
        "pipeline_seconds": pipeline_seconds,
        "config": config.to_dict(),
        "dataset_metadata": dataset.metadata,
        # last: search/ is written only once the rest of the summary could be
        "search_report": collect_search_report(paths.metadata_path, search_dir, started_ms),
    }
    staging = summary_path + ".partial"
    with open(staging, "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    os.replace(staging, summary_path)
    return summary

