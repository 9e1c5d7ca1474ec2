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


TOPK_SPEC = {"label": "label", "categorical": ["user", "item"], "numerical": [],
             "task": "topk", "user": "user", "item": "item"}


def _topk_pipeline(tmp_path, **overrides):
    config = PipelineConfig.from_dict(overrides)
    paths = PipelinePaths(str(tmp_path / "ex"), str(tmp_path / "root"),
                          str(tmp_path / "m.sqlite"), str(tmp_path / "serving"))
    return create_pipeline(config, TOPK_SPEC, paths, [], "abc")


def test_topk_blessing_replaces_the_evaluator(tmp_path):
    pipeline = _topk_pipeline(tmp_path, min_eval_recall=0.2)
    nodes = {n.id: n for n in pipeline.components}
    assert set(nodes) == {"ImportExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator",
                          "AnomaliesGate", "Transform", "ArchitectureSearch", "Trainer",
                          "TopkBlessing", "Pusher"}
    assert _upstream(nodes["TopkBlessing"]) == {"Trainer"}
    assert nodes["TopkBlessing"].exec_properties["min_recall"] == 0.2
    assert _upstream(nodes["Pusher"]) == {"Trainer", "TopkBlessing"}


def test_topk_rejects_the_tuner(tmp_path):
    from pipeline.configs import ConfigError

    with pytest.raises(ConfigError, match="tuner.enabled"):
        _topk_pipeline(tmp_path, tuner={"enabled": True})


def test_topk_architecture_is_mf_over_user_and_item():
    from components.search import search_payload, topk_architecture

    config = PipelineConfig.from_dict({"topk": {"embedding_dim": 16, "l2": 0.01,
                                                "learning_rate": 0.02}})
    arch = topk_architecture(config, TOPK_SPEC, {"user": 11, "item": 21})
    assert (arch.model, arch.categorical, arch.numerical) == ("mf", ["user", "item"], [])
    assert arch.embedding_dims == {"user": 16, "item": 16} and arch.l2 == 0.01
    assert arch.embedding_params() == (11 + 21) * 16
    assert search_payload(arch, config, None)["training"] == {"learning_rate": 0.02,
                                                              "batch_size": 2048}


def test_mf_on_a_ctr_dataset_is_a_config_error(tmp_path):
    from pipeline.configs import ConfigError
    from pipeline.datasets import prepare_dataset
    from pipeline.run import pipeline_spec

    dataset = prepare_dataset("synthetic", str(tmp_path / "d"), n_rows=100)
    config = PipelineConfig.from_dict({"train": {"model": "mf"}})
    with pytest.raises(ConfigError, match="'mf' is a top-k model"):
        pipeline_spec(dataset, config)
    topk = prepare_dataset("synthetic_topk", str(tmp_path / "t"), n_users=20, n_items=80)
    topk_spec = pipeline_spec(topk, PipelineConfig())
    assert (topk_spec["task"], topk_spec["user"], topk_spec["item"]) == (
        "topk", topk.spec.user, topk.spec.item)
    # a CTR dataset: its columns only, the same dict the bench's Transform reads
    assert pipeline_spec(dataset, PipelineConfig()) == {
        "label": "label", "categorical": [f"c{j}" for j in range(8)],
        "numerical": ["n0", "n1"], "optional_numerical": []}
