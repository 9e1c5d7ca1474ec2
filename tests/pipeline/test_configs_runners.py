"""Config JSON round trip and errors; runner flags as data."""

import json

import pytest

from pipeline.configs import ConfigError, PipelineConfig
from pipeline.runners import BEAM_ARGS_BY_RUNNER, beam_pipeline_args


def test_config_round_trip(tmp_path):
    config = PipelineConfig(dataset="frappe86k")
    config.train.model = "fm"
    path = tmp_path / "c.json"
    path.write_text(config.to_json())
    assert PipelineConfig.from_json_file(str(path)) == config


@pytest.mark.parametrize("data, needle", [
    ({"datset": "x"}, "Unknown config keys \\['datset'\\]"),
    ({"train": {"modle": "fm"}}, "train.modle"),
    ({"train": {"model": "xgboost"}}, "train.model: unknown model 'xgboost'"),
    ({"train": {"batch_size": 0}}, "train.batch_size must be >= 1"),
    ({"train": {"min_steps_per_epoch": -1}}, "train.min_steps_per_epoch must be >= 0"),
    ({"runner": "yarn"}, "runner: unknown 'yarn'"),
    ({"search_strategy": "magic"}, "search_strategy: Unknown search method"),
    ({"search_strategy": "autofis", "train": {"model": "lr"}}, "works on models"),
    ({"search_options": {"nope": {}}}, "search_options: unknown methods"),
    ({"min_eval_recall": 1.5}, "min_eval_recall must be in \\[0, 1\\]"),
    ({"topk": {"batch_size": 0}}, "topk.batch_size must be >= 1"),
    ({"topk": {"learning_rate": 0}}, "topk.learning_rate must be > 0"),
    ({"topk": {"patience": -1}}, "topk.patience must be >= 0"),
    ({"topk": {"max_epochs": -2}}, "topk.max_epochs must be >= 0"),
    ({"topk": {"dim": 8}}, "topk.dim"),
    ({"topk": {"refit": True}, "search_strategy": "lambdaopt", "train": {"model": "mf"}},
     "topk.refit does not apply to lambdaopt"),
])
def test_bad_config_names_the_key(data, needle):
    with pytest.raises(ConfigError, match=needle):
        PipelineConfig.from_dict(data)


def test_config_file_not_json(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=f"{path}: not valid JSON"):
        PipelineConfig.from_json_file(str(path))


def test_direct_runners_avoid_prism():
    for runner in ("direct", "direct-multiprocess"):
        args = beam_pipeline_args(runner)
        assert any("FnApiRunner" in a for a in args)
    assert "--direct_running_mode=multi_processing" in beam_pipeline_args("direct-multiprocess")


def test_remote_runner_needs_its_settings(monkeypatch):
    monkeypatch.delenv("AUTORECSYS_GCP_PROJECT", raising=False)
    with pytest.raises(ValueError, match="AUTORECSYS_GCP_PROJECT"):
        beam_pipeline_args("dataflow")
    for key, value in (("PROJECT", "p"), ("REGION", "r"), ("TEMP_LOCATION", "gs://b/t"),
                       ("EXTRA_PACKAGE", "dist/a.whl")):
        monkeypatch.setenv(f"AUTORECSYS_{'GCP_' if key in ('PROJECT', 'REGION') else ''}{key}",
                           value)
    args = beam_pipeline_args("dataflow", ["--machine_type=n1-standard-4"])
    assert "--project=p" in args and args[-1] == "--machine_type=n1-standard-4"
    assert json.dumps(sorted(BEAM_ARGS_BY_RUNNER)) == json.dumps(
        ["dataflow", "direct", "direct-multiprocess", "flink", "spark"])


def test_model_presets_fill_only_unset_regularisation():
    deep = PipelineConfig.from_dict({"train": {"model": "deepfm"}}).train.resolved()
    assert (deep.l2, deep.dropout, deep.batch_norm) == (0.3, 0.3, True)
    dcn = PipelineConfig.from_dict({"train": {"model": "dcn"}}).train.resolved()
    assert (dcn.l2, dcn.dropout, dcn.batch_norm) == (0.2, 0.3, True)
    shallow = PipelineConfig.from_dict({"train": {"model": "fm"}}).train.resolved()
    assert (shallow.l2, shallow.dropout, shallow.batch_norm) == (0.0, 0.0, False)
    explicit = PipelineConfig.from_dict({"train": {"model": "deepfm", "l2": 0.0}}).train
    assert explicit.resolved().l2 == 0.0 and explicit.resolved().dropout == 0.3


@pytest.mark.parametrize("batch, min_steps, num_train, expected", [
    (4096, 8, 51_950, 4096),   # frappe86k: 12.7 steps an epoch already
    (4096, 8, 32_768, 4096),   # exactly 8 steps
    (4096, 8, 32_767, 4096),   # ceil(32767 / 8) = 4096
    (4096, 8, 8_000, 1000),    # criteo10k: 2 steps at 4096, 8 at 1000
    (4096, 8, 3, 1),
    (4096, 0, 8_000, 4096),    # disabled
    (256, 8, 8_000, 256),
])
def test_batch_size_lowered_for_small_train_splits(batch, min_steps, num_train, expected):
    train = PipelineConfig.from_dict(
        {"train": {"batch_size": batch, "min_steps_per_epoch": min_steps}}).train
    got = train.batch_size_for(num_train)
    assert got == expected
    assert -(-num_train // got) >= min(min_steps, num_train) or got == batch
