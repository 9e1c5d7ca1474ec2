"""Architecture: JSON round trip, value-naming errors, embedding parameter count vs the model."""

import pytest

from models.architecture import Architecture, ArchitectureError
from models.zoo import build_ctr_model


def _arch(model: str, **kwargs) -> Architecture:
    return Architecture.uniform(model, ["u", "i"], ["p"], {"u": 30, "i": 20}, embedding_dim=4,
                                hidden_units=[8], numeric_encoding={"p": "bucket"},
                                num_buckets=5, **kwargs)


@pytest.mark.parametrize("model", ["lr", "fm", "deepfm", "dnn", "dcn"])
def test_embedding_params_count_the_models_tables(model):
    arch = _arch(model)
    keras_model = build_ctr_model(arch)
    tables = [w for w in keras_model.weights
              if w.name.startswith(("field_embedding/", "field_linear/")) and "bias" not in w.name]
    assert arch.embedding_params() == sum(int(w.shape.num_elements()) for w in tables)


def test_json_round_trip():
    arch = _arch("deepfm", kept_interactions=[["u", "i"]], dropout=0.3)
    assert Architecture.from_json(arch.to_json()) == arch


@pytest.mark.parametrize("change, needle", [
    ({"model": "xgb"}, "Unknown model 'xgb'"),
    ({"dropout": 1.0}, "dropout must be in"),
    ({"l2": -1.0}, "l2 must be >= 0"),
    ({"kept_interactions": [["u", "zzz"]]}, "unknown pair"),
    ({"lambdaopt": {"variant": "truncated"}}, "lambdaopt .* applies to"),
])
def test_errors_name_the_value(change, needle):
    data = dict(vars(_arch("fm")))
    data.update(change)
    with pytest.raises(ArchitectureError, match=needle):
        Architecture(**data)


def test_unknown_version_and_keys_are_rejected():
    text = _arch("fm").to_json()
    with pytest.raises(ArchitectureError, match="version 99"):
        Architecture.from_json(text.replace('"version": 1', '"version": 99'))
    with pytest.raises(ArchitectureError, match="unknown keys"):
        Architecture.from_json(text.replace('"version": 1', '"version": 1, "magic": 2'))


def test_lambdaopt_settings_round_trip_on_mf():
    arch = Architecture.uniform("mf", ["user", "item"], [], {"user": 5, "item": 7},
                                embedding_dim=4, hidden_units=[],
                                lambdaopt={"variant": "full", "lambda_learning_rate": 0.01})
    assert Architecture.from_json(arch.to_json()) == arch
    with pytest.raises(ArchitectureError, match="without id_dims or id_l2"):
        Architecture.uniform("mf", ["user", "item"], [], {"user": 5, "item": 7},
                             embedding_dim=4, hidden_units=[], lambdaopt={},
                             id_l2={"user": [0.1] * 5})
