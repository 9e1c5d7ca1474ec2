"""``create_pipeline``: the TFX pipeline as one pure function of its configuration.

ImportExampleGen -> StatisticsGen -> SchemaGen -> ExampleValidator -> AnomaliesGate -> Transform
-> [Tuner] -> ArchitectureSearch -> Trainer (retrain) -> Evaluator (TFMA) -> Pusher.

Top-k datasets (``spec["task"] == "topk"``) train MF-BPR and replace the Evaluator (and its
baseline resolver) with ``TopkBlessing``, which blesses on the Trainer's eval Recall@20.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from tensorflow_model_analysis.proto import config_pb2 as tfma
from tfx import v1 as tfx

from components.search import ArchitectureSearch, is_topk
from components.topk_eval import TopkBlessing
from components.validation import AnomaliesGate
from pipeline.configs import PipelineConfig

SPLIT_PATTERNS = {"train": "train/*", "eval": "eval/*", "test": "test/*"}


@dataclass(frozen=True)
class PipelinePaths:
    """Where a run reads its examples and writes its artifacts."""

    examples_dir: str
    pipeline_root: str
    metadata_path: str
    serving_dir: str


def eval_config(label: str, slice_feature: str, min_auc: float) -> tfma.EvalConfig:
    """TFMA on raw eval examples: AUC, logloss, calibration, counts; overall and one slice.

    The thresholds hold on the overall slice only (a small slice must not veto the blessing):
    validation AUC above ``min_auc`` and not below the latest blessed model's.
    """
    overall = [tfma.SlicingSpec()]
    auc_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": min_auc}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -1e-10}))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_default", label_key=label,
                                    prediction_key="probability",
                                    preprocessing_function_names=["transform_features"])],
        slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(feature_keys=[slice_feature])],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            tfma.MetricConfig(class_name="AUC", per_slice_thresholds=[
                tfma.PerSliceMetricThreshold(slicing_specs=overall, threshold=auc_threshold)]),
            tfma.MetricConfig(class_name="BinaryCrossentropy"),
            tfma.MetricConfig(class_name="Calibration"),
            tfma.MetricConfig(class_name="MeanLabel"),
            tfma.MetricConfig(class_name="MeanPrediction"),
        ])],
    )


def create_pipeline(config: PipelineConfig, spec: dict, paths: PipelinePaths,
                    beam_pipeline_args: list[str], code_version: str,
                    data_version: str = "") -> tfx.dsl.Pipeline:
    """Builds the pipeline.

    Args:
      config: the run's configuration (validated).
      spec: the dataset's feature spec as a dict (``label``, ``categorical``, ``numerical``;
        ``task``, ``user`` and ``item`` for top-k datasets).
      paths: input examples and output locations.
      beam_pipeline_args: flags for every Beam-based component.
      code_version: hash of ``components/`` and ``models/``; part of the cache key, since code
        behind dotted ``run_fn``/``preprocessing_fn`` paths is not.
      data_version: hash of the prepared data, appended to the pipeline's name (its MLMD
        context): the Evaluator's baseline, the latest blessed model, and the cache then come
        from runs on the same data, never from another dataset run into the same output_dir.

    Returns:
      The TFX pipeline.

    Raises:
      ConfigError: the config cannot run on a top-k dataset (``PipelineConfig.check_task``: the
        Tuner enabled, a CTR search).
    """
    topk = is_topk(spec)
    if topk:
        config.check_task(config.dataset, "topk")
    config_json = config.to_json()
    spec_json = json.dumps(spec, sort_keys=True)
    custom_config = {"config": config.to_dict(), "spec": spec, "code_version": code_version}
    example_gen = tfx.components.ImportExampleGen(
        input_base=paths.examples_dir,
        input_config=tfx.proto.Input(splits=[
            tfx.proto.Input.Split(name=name, pattern=pattern)
            for name, pattern in SPLIT_PATTERNS.items()]))
    statistics_gen = tfx.components.StatisticsGen(
        examples=example_gen.outputs["examples"], exclude_splits=["test"])
    schema_gen = tfx.components.SchemaGen(
        statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    gate = AnomaliesGate(anomalies=example_validator.outputs["anomalies"],
                         schema=schema_gen.outputs["schema"])
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=gate.outputs["validated_schema"],
        preprocessing_fn="components.transform.preprocessing_fn",
        splits_config=tfx.proto.SplitsConfig(analyze=["train"], transform=["train", "eval"]),
        custom_config=custom_config)
    components = [example_gen, statistics_gen, schema_gen, example_validator, gate, transform]

    tuned = None
    if config.tuner.enabled:
        tuner = tfx.components.Tuner(
            tuner_fn="components.tuner.tuner_fn",
            examples=transform.outputs["transformed_examples"],
            transform_graph=transform.outputs["transform_graph"],
            train_args=tfx.proto.TrainArgs(splits=["train"]),
            eval_args=tfx.proto.EvalArgs(splits=["eval"]),
            custom_config=custom_config)
        components.append(tuner)
        tuned = tuner.outputs["best_hyperparameters"]
    search = ArchitectureSearch(
        transform_graph=transform.outputs["transform_graph"], hyperparameters=tuned,
        transformed_examples=transform.outputs["transformed_examples"],
        config_json=config_json, spec_json=spec_json, code_version=code_version)
    trainer = tfx.components.Trainer(
        run_fn="components.trainer.run_fn",
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=gate.outputs["validated_schema"],
        hyperparameters=search.outputs["architecture"],
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=["eval"]),
        custom_config=custom_config)
    if topk:
        validation = TopkBlessing(model=trainer.outputs["model"],
                                  model_run=trainer.outputs["model_run"],
                                  min_recall=config.min_eval_recall)
        gates = [validation]
    else:
        baseline = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
            model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
            model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
        ).with_id("latest_blessed_model_resolver")
        slice_feature = config.slice_feature or (spec["categorical"] or spec["numerical"])[0]
        validation = tfx.components.Evaluator(
            examples=example_gen.outputs["examples"],
            model=trainer.outputs["model"],
            baseline_model=baseline.outputs["model"],
            example_splits=["eval"],
            eval_config=eval_config(spec["label"], slice_feature, config.min_eval_auc))
        gates = [baseline, validation]
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        model_blessing=validation.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=paths.serving_dir)))
    components += [search, trainer, *gates, pusher]
    return tfx.dsl.Pipeline(
        pipeline_name="-".join(filter(None, (config.pipeline_name, data_version))),
        pipeline_root=paths.pipeline_root,
        components=components,
        enable_cache=config.enable_cache,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            paths.metadata_path),
        beam_pipeline_args=beam_pipeline_args,
    )


def code_version(repo_root: str) -> str:
    """SHA-256 over the sources of ``components/`` and ``models/`` (first 16 hex digits)."""
    import hashlib

    digest = hashlib.sha256()
    for package in ("components", "models"):
        for dirpath, dirnames, filenames in os.walk(os.path.join(repo_root, package)):
            dirnames.sort()
            for name in sorted(filenames):
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    digest.update(os.path.relpath(path, repo_root).encode())
                    with open(path, "rb") as f:
                        digest.update(f.read())
    return digest.hexdigest()[:16]
