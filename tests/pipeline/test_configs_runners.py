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
    ({"topk": {"min_steps_per_epoch": -1}}, "topk.min_steps_per_epoch must be >= 0"),
    ({"topk": {"min_epochs": -1}}, "topk.min_epochs must be >= 0"),
    ({"topk": {"dim": 8}}, "topk.dim"),
    ({"topk": {"refit": True}, "search_strategy": "lambdaopt", "train": {"model": "mf"}},
     "topk.refit does not apply to lambdaopt"),
    ({"train": {"embedding_dim": "8"}}, "train.embedding_dim must be of type int. Received: '8'"),
    ({"train": {"embedding_dim": 2.5}}, "train.embedding_dim must be of type int"),
    ({"train": {"learning_rate": "0.01"}}, "train.learning_rate must be of type float"),
    ({"train": {"deterministic": "false"}}, "train.deterministic must be of type bool"),
    ({"train": {"hidden_units": 400}}, "train.hidden_units must be of type list\\[int\\]"),
    ({"topk": {"l2": "0"}}, "topk.l2 must be of type float"),
    ({"min_eval_auc": "0.5"}, "min_eval_auc must be of type float"),
    ({"search_strategy": 5}, "search_strategy must be of type str"),
    ({"loss_from": 5}, "loss_from must be of type str \\| None"),
    ({"train": 5}, "train must be a mapping"),
    ({"tuner": None}, "tuner must be a mapping"),
    ({"train": {"dropout": 1.5}}, "train.dropout must be in \\[0, 1\\)"),
    ({"train": {"l2": -0.1}}, "train.l2 must be >= 0"),
    ({"train": {"embedding_init_std": 0}}, "train.embedding_init_std must be > 0"),
    ({"train": {"hidden_units": [16, 0]}}, "train.hidden_units must all be >= 1"),
    ({"tuner": {"max_trials": 0}}, "tuner.max_trials must be >= 1"),
    ({"beam_prep_min_bytes": -1}, "beam_prep_min_bytes must be >= 0"),
    ({"search_options": {"autofis": 5}}, "search_options must be of type dict"),
    ({"search_options": {"nis": {"epochz": 1}}, "search_strategy": "nis"},
     "search_options.nis: unknown options \\['epochz'\\]"),
    ({"search_options": {"autodis": {"temprature": 0.5}}},
     "search_options.autodis: unknown options \\['temprature'\\]"),
])
def test_bad_config_names_the_key(data, needle):
    with pytest.raises(ConfigError, match=needle):
        PipelineConfig.from_dict(data)


def test_config_file_not_json(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=f"{path}: not valid JSON"):
        PipelineConfig.from_json_file(str(path))


@pytest.mark.parametrize("content", [None, b"\xff\xfe{}"])
def test_unreadable_config_file_names_the_file(tmp_path, content):
    path = tmp_path / "c.json"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"{path}: cannot read the config file"):
        PipelineConfig.from_json_file(str(path))


def test_search_option_names_are_each_methods_options():
    # Read from the modules' source (no TensorFlow import when a config is validated); every
    # name must be one the method accepts, and every option it accepts must be listed.
    import importlib  # noqa: PLC0415

    from models.architecture import AUTODIS_DEFAULTS  # noqa: PLC0415
    from models.search import METHODS  # noqa: PLC0415
    from pipeline.configs import search_option_names  # noqa: PLC0415

    for method, (module_name, _) in METHODS.items():
        module = importlib.import_module(module_name)
        expected = set(getattr(module, "DEFAULTS", AUTODIS_DEFAULTS))
        for defaults in getattr(module, "MODEL_DEFAULTS", {}).values():
            expected |= set(defaults)
        assert search_option_names(method) == expected, method
    known = PipelineConfig.from_dict({"search_options": {"autofis": {"mu": 0.5}}})
    assert known.search_options == {"autofis": {"mu": 0.5}}


@pytest.mark.parametrize("data, task, needle", [
    ({"train": {"model": "mf"}}, "ctr", "train.model 'mf' is a top-k model; dataset 'd'"),
    ({"tuner": {"enabled": True}}, "topk", "tuner.enabled"),
    ({"search_strategy": "autofis"}, "topk", "search_strategy: top-k dataset 'd' supports"),
    ({"search_strategy": "esapn+autolossgen"}, "topk", "one at a time"),
])
def test_config_that_cannot_train_on_the_dataset_task(data, task, needle):
    config = PipelineConfig.from_dict(data)
    with pytest.raises(ConfigError, match=needle):
        config.check_task("d", task)
    PipelineConfig().check_task("d", "ctr")
    PipelineConfig.from_dict({"search_strategy": "esapn"}).check_task("d", "topk")


def test_direct_runners_avoid_prism():
    for runner in ("direct", "direct-multiprocess"):
        args = beam_pipeline_args(runner)
        assert any("FnApiRunner" in a for a in args)
    assert "--direct_running_mode=multi_processing" in beam_pipeline_args("direct-multiprocess")


def test_remote_runner_needs_its_settings(monkeypatch):
    monkeypatch.delenv("AUTORECSYS_GCP_PROJECT", raising=False)
    with pytest.raises(ValueError, match="AUTORECSYS_GCP_PROJECT"):
        beam_pipeline_args("dataflow")
    for key, value in (("GCP_PROJECT", "p"), ("GCP_REGION", "r"), ("TEMP_LOCATION", "gs://b/t"),
                       ("SDK_CONTAINER_IMAGE", "img:1")):
        monkeypatch.setenv(f"AUTORECSYS_{key}", value)
    args = beam_pipeline_args("dataflow", ["--machine_type=n1-standard-4"])
    assert "--project=p" in args and args[-1] == "--machine_type=n1-standard-4"
    # Dataflow cannot set a worker's environment: TF_USE_LEGACY_KERAS comes from the image.
    assert "--sdk_container_image=img:1" in args
    assert json.dumps(sorted(BEAM_ARGS_BY_RUNNER)) == json.dumps(
        ["dataflow", "direct", "direct-multiprocess", "flink", "spark"])


def test_every_runner_flag_is_a_beam_option(monkeypatch):
    from apache_beam.options.pipeline_options import PipelineOptions  # noqa: PLC0415

    for key in ("GCP_PROJECT", "GCP_REGION", "TEMP_LOCATION", "SDK_CONTAINER_IMAGE"):
        monkeypatch.setenv(f"AUTORECSYS_{key}", "gs://b/x")
    for runner in BEAM_ARGS_BY_RUNNER:
        options = PipelineOptions(beam_pipeline_args(runner))
        unknown = set(options.get_all_options(retain_unknown_options=True)) - set(
            options.get_all_options())
        assert not unknown, (runner, unknown)
    # A flag appended from the config overrides the runner's (a remote cluster's environment).
    options = PipelineOptions(beam_pipeline_args("flink", ["--environment_type=EXTERNAL"]))
    assert options.get_all_options()["environment_type"] == "EXTERNAL"


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


@pytest.mark.parametrize("topk, num_train, expected", [
    ({}, 6_445, 65),                                   # synthetic_topk: 4 steps at 2,048
    ({}, 810_128, 2048),                               # gowalla: about 400 steps already
    ({}, 204_800, 2048),                               # exactly 100 steps
    ({"min_steps_per_epoch": 0}, 6_445, 2048),         # disabled
    ({"batch_size": 32}, 6_445, 32),                   # already small enough
])
def test_topk_batch_size_lowered_for_small_train_splits(topk, num_train, expected):
    config = PipelineConfig.from_dict({"topk": topk}).topk
    assert config.batch_size_for(num_train) == expected
