"""create_pipeline's wiring: order, the anomaly gate before Transform, the optional Tuner."""

import pytest

from pipeline.configs import PipelineConfig
from pipeline.pipeline import PipelinePaths, create_pipeline, eval_config

SPEC = {"label": "label", "categorical": ["c0", "c1"], "numerical": ["n0"]}


def _pipeline(tmp_path, **overrides):
    config = PipelineConfig.from_dict(overrides)
    paths = PipelinePaths(str(tmp_path / "ex"), str(tmp_path / "root"),
                          str(tmp_path / "m.sqlite"), str(tmp_path / "serving"))
    return create_pipeline(config, SPEC, paths, ["--direct_num_workers=1"], "abc")


def _upstream(node):
    return {channel.producer_component_id for channel in node.inputs.values()}


def test_components_and_wiring(tmp_path):
    pipeline = _pipeline(tmp_path)
    nodes = {n.id: n for n in pipeline.components}
    assert set(nodes) == {"ImportExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator",
                          "AnomaliesGate", "Transform", "ArchitectureSearch", "Trainer",
                          "latest_blessed_model_resolver", "Evaluator", "Pusher"}
    assert _upstream(nodes["Transform"]) == {"ImportExampleGen", "AnomaliesGate"}
    assert _upstream(nodes["AnomaliesGate"]) == {"ExampleValidator", "SchemaGen"}
    assert _upstream(nodes["Trainer"]) == {"Transform", "AnomaliesGate", "ArchitectureSearch"}
    assert _upstream(nodes["Evaluator"]) == {"ImportExampleGen", "Trainer",
                                             "latest_blessed_model_resolver"}
    assert _upstream(nodes["Pusher"]) == {"Trainer", "Evaluator"}
    assert pipeline.beam_pipeline_args == ["--direct_num_workers=1"]


def test_tuner_feeds_the_search_stage(tmp_path):
    nodes = {n.id: n for n in _pipeline(tmp_path, tuner={"enabled": True}).components}
    assert _upstream(nodes["ArchitectureSearch"]) == {"Transform", "Tuner"}


def test_transform_never_sees_test(tmp_path):
    nodes = {n.id: n for n in _pipeline(tmp_path).components}
    splits = nodes["Transform"].exec_properties["splits_config"]
    assert "test" not in splits and "train" in splits
    assert "test" in str(nodes["StatisticsGen"].exec_properties["exclude_splits"])


@pytest.mark.parametrize("min_auc", [0.5, 0.7])
def test_auc_threshold_applies_to_the_overall_slice_only(min_auc):
    config = eval_config("label", "c0", min_auc)
    assert [list(s.feature_keys) for s in config.slicing_specs] == [[], ["c0"]]
    auc = next(m for m in config.metrics_specs[0].metrics if m.class_name == "AUC")
    assert not auc.HasField("threshold")
    (per_slice,) = auc.per_slice_thresholds
    assert [list(s.feature_keys) for s in per_slice.slicing_specs] == [[]]
    assert per_slice.threshold.value_threshold.lower_bound.value == min_auc
