"""TopkBlessing blesses like TFX's Evaluator does, on the Trainer's eval Recall@20."""

import json
import os

import numpy as np
import pytest
from tfx.types import standard_artifacts

from components.topk_eval import TopkBlessing
from components.topk_trainer import TRAINING_REPORT, table_by_transform_id


def _artifacts(tmp_path, recall):
    model, model_run, blessing = (standard_artifacts.Model(), standard_artifacts.ModelRun(),
                                  standard_artifacts.ModelBlessing())
    for name, artifact in (("model", model), ("run", model_run), ("blessing", blessing)):
        artifact.uri = str(tmp_path / name)
        os.makedirs(artifact.uri)
    report = {} if recall is None else {"eval_recall@20": recall}
    with open(os.path.join(model_run.uri, TRAINING_REPORT), "w") as f:
        json.dump(report, f)
    return model, model_run, blessing


@pytest.mark.parametrize("recall, blessed", [(0.3, 1), (0.05, 1), (0.049, 0)])
def test_blesses_from_the_threshold_on(tmp_path, recall, blessed):
    model, model_run, blessing = _artifacts(tmp_path, recall)
    TopkBlessing.test_call(model=model, model_run=model_run, blessing=blessing, min_recall=0.05)
    assert blessing.get_int_custom_property("blessed") == blessed
    assert blessing.get_string_custom_property("current_model_uri") == model.uri
    assert blessing.get_float_custom_property("eval_recall@20") == pytest.approx(recall)
    expected = "BLESSED" if blessed else "NOT_BLESSED"
    assert os.listdir(blessing.uri) == [expected]


def test_report_without_recall_is_an_error(tmp_path):
    model, model_run, blessing = _artifacts(tmp_path, None)
    with pytest.raises(ValueError, match="no eval_recall@20"):
        TopkBlessing.test_call(model=model, model_run=model_run, blessing=blessing,
                               min_recall=0.0)


def test_tables_are_placed_by_transform_id():
    vectors = np.arange(6, dtype=np.float32).reshape(3, 2)
    table = table_by_transform_id(vectors, np.array(["2", "0", "3"]), rows=5)
    np.testing.assert_array_equal(table, [[2, 3], [0, 0], [0, 1], [4, 5], [0, 0]])


def test_early_stopping_takes_topk_settings_over_train():
    from components.topk_trainer import LARGE_RANKING, early_stopping  # noqa: PLC0415
    from pipeline.configs import PipelineConfig  # noqa: PLC0415

    default = PipelineConfig.from_dict({"train": {"patience": 2, "max_epochs": 50}})
    assert early_stopping(default, 10, 10) == {"max_epochs": 50, "patience": 3, "eval_every": 1,
                                               "min_epochs": 10}
    assert early_stopping(default, LARGE_RANKING, 2)["eval_every"] == 5
    mine = PipelineConfig.from_dict({"train": {"patience": 2, "max_epochs": 50},
                                     "topk": {"patience": 10, "max_epochs": 400,
                                              "min_epochs": 0}})
    assert early_stopping(mine, 10, 10) == {"max_epochs": 400, "patience": 10, "eval_every": 1,
                                            "min_epochs": 0}


def test_mf_schedule_lowers_the_batch_for_small_data_and_takes_overrides():
    from types import SimpleNamespace  # noqa: PLC0415

    from components.topk_trainer import early_stopping, mf_schedule  # noqa: PLC0415
    from pipeline.configs import PipelineConfig  # noqa: PLC0415

    config = PipelineConfig()
    small = SimpleNamespace(train_pairs=range(6500), num_users=300, num_items=200)
    step, fit = mf_schedule(config, small)
    assert step == {"learning_rate": config.topk.learning_rate, "batch_size": 65}
    assert fit == early_stopping(config, 300, 200)
    large = SimpleNamespace(train_pairs=range(810_128), num_users=29_858, num_items=40_981)
    assert mf_schedule(config, large)[0]["batch_size"] == config.topk.batch_size == 2048
    # the Tuner's values (a float batch from a JSON hyper-parameter included) win
    tuned, _ = mf_schedule(config, large, learning_rate=0.01, batch_size=1024.0)
    assert tuned == {"learning_rate": 0.01, "batch_size": 1024}
    assert isinstance(tuned["batch_size"], int)
