"""λOpt on CTR models: ``Architecture.id_l2`` (validation, JSON), the retrain's penalty (golden
value, config and SavedModel round trips), the substituted-table look-ahead's hypergradient against
finite differences, the trainer's model step, options, a short search, and the bench name."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from models.architecture import Architecture, ArchitectureError
from models.layers.embeddings import FieldEmbedding
from models.layers.lambdaopt import row_scales
from models.search import SearchContext, SearchError, check_applies
from models.search.lambdaopt import search, settings
from models.search.lambdaopt_ctr import CTRLambdaOptTrainer, lookahead_val_loss
from models.search.lambdaopt_lookahead import adam_update
from models.zoo import LOGIT_LAYER, build_ctr_model, model_input_names
from tests.models.in_memory import split_datasets
from tests.models.test_lambdaopt import F64, _finite_difference

VOCAB = {"u": 4, "i": 3}


def _arch(model: str = "deepfm", **kwargs: Any) -> Architecture:
    return Architecture.uniform(model, ["u", "i"], ["p"], VOCAB, embedding_dim=2,
                                hidden_units=[3], **kwargs)


def _features(n: int, seed: int) -> dict[str, tf.Tensor]:
    rng = np.random.default_rng(seed)
    return {"u_id": tf.constant(rng.integers(0, 4, n)), "i_id": tf.constant(rng.integers(0, 3, n)),
            "p_z": tf.constant(rng.normal(size=n), tf.float32)}


# --- Architecture.id_l2 ------------------------------------------------------------------------

@pytest.mark.parametrize("change, needle", [
    ({"id_l2": {"p": [0.1]}}, "id_l2 names 'p', which is not a categorical field"),
    ({"id_l2": {"u": [0.1, 0.2]}}, r"id_l2\['u'\] needs one strength per id \(4 ids\)"),
    ({"id_l2": {"u": [0.1, -1.0, 0.0, 0.0]}}, r"id_l2\['u'\] .* Received: -1.0 at id 1"),
    ({"id_l2": {"i": [0.0, math.nan, 0.0]}}, r"id_l2\['i'\] strengths must be finite"),
    ({"id_l2": {"i": [0.0, 0.0, math.inf]}}, r"id_l2\['i'\] strengths must be finite"),
    ({"model": "lr", "id_l2": {"i": [0.0] * 3}}, "id_l2 applies to models"),
    ({"id_l2": {"i": [0.0] * 3}, "id_dims": {"u": [1, 2, 2, 1]}}, "cannot be combined"),
])
def test_id_l2_errors_name_the_field(change, needle):
    data = {**vars(_arch()), **change}
    with pytest.raises(ArchitectureError, match=needle):
        Architecture(**data)


def test_id_l2_json_round_trip():
    arch = _arch(id_l2={"u": [0.0, 0.5, 1.25, 3e-7]})
    assert Architecture.from_json(arch.to_json()) == arch
    assert _arch().id_l2 == {}


# --- the retrain's penalty ---------------------------------------------------------------------

def test_penalty_is_lambda_opts_on_the_batch_rows_and_replaces_l2():
    layer = FieldEmbedding(["u", "i"], ["p"], VOCAB, {"u": 2, "i": 2, "p": 2}, l2=0.1,
                           id_l2={"u": [0.5, 0.0, 2.0, 1.0]})
    features = {"u_id": tf.constant([0, 2, 2], tf.int64), "i_id": tf.constant([0, 1, 1]),
                "p_z": tf.constant([1.0, 1.0, 1.0])}
    layer(features)
    layer.tables["u"].assign([[1.0, 2.0], [5.0, 5.0], [0.0, 1.0], [9.0, 9.0]])
    plain_l2 = sorted(float(x) for x in layer.losses)  # "i" table and "p" vector only
    assert len(plain_l2) == 2
    layer(features, training=True)
    # 1/2 (0.5 * (1 + 4) + 2 * 1 + 2 * 1) / 3 = 6.5 / 6
    penalties = sorted(float(x) for x in layer.losses)
    assert len(penalties) == 3
    assert min(set(penalties) - set(plain_l2)) == pytest.approx(6.5 / 6)
    assert [w.name for w in layer.non_trainable_weights] == [
        "field_embedding/u_id_l2/lambdas:0"]
    clone = FieldEmbedding.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert clone.get_config()["id_l2"] == {"u": [0.5, 0.0, 2.0, 1.0]}


def test_model_with_id_l2_saves_loads_and_serves_unchanged(tmp_path):
    strengths = {"u": [0.5, 0.0, 2.0, 1.0], "i": [1e-3, 0.0, 4.0]}
    model = build_ctr_model(_arch(id_l2=strengths))
    features = _features(5, 0)

    def training_losses(m: keras.Model) -> list[float]:
        m(features, training=True)
        return sorted(float(x) for x in m.losses)

    assert len(training_losses(model)) == 2  # one penalty per id_l2 field, l2 = 0 elsewhere
    path = os.path.join(tmp_path, "deepfm")
    model.save(path, save_format="tf")
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(features), model(features), rtol=1e-6)
    np.testing.assert_allclose(training_losses(loaded), training_losses(model), rtol=1e-6)
    assert loaded.get_layer("field_embedding").get_config()["id_l2"] == strengths
    serving = tf.saved_model.load(path).signatures["serving_default"]
    assert list(serving.structured_outputs) == ["probability"]
    np.testing.assert_allclose(serving(**features)["probability"], model(features), rtol=1e-6)
    # Λ is a constant of training: the same weights but no Λ serve the same probabilities.
    plain = build_ctr_model(_arch())
    plain.set_weights([w.numpy() for w in model.weights if "id_l2" not in w.name])
    np.testing.assert_allclose(plain(features), model(features), rtol=1e-6)


def test_substituted_tables_replace_the_lookups_differentiably():
    layer = FieldEmbedding(["u", "i"], [], VOCAB, {"u": 2, "i": 2})
    features = {"u_id": tf.constant([3, 1]), "i_id": tf.constant([0, 0])}
    before = layer(features)
    table = tf.reshape(tf.range(8, dtype=tf.float32), [4, 2])
    with tf.GradientTape() as tape:
        tape.watch(table)
        with layer.substituted_tables({"u": table}):
            inside = layer(features)
        total = tf.reduce_sum(inside[0])
    np.testing.assert_allclose(inside[0], [[6.0, 7.0], [2.0, 3.0]])
    np.testing.assert_allclose(inside[1], before[1])
    np.testing.assert_allclose(tf.convert_to_tensor(tape.gradient(total, table)),
                               [[0, 0], [1, 1], [0, 0], [1, 1]])
    np.testing.assert_allclose(layer(features)[0], before[0])
    with pytest.raises(ValueError, match="substituted_tables"):
        with layer.substituted_tables({"u": tf.zeros([3, 2])}):
            pass


# --- the Λ step and the model step -------------------------------------------------------------

@pytest.fixture
def float64():
    keras.backend.set_floatx("float64")
    yield
    keras.backend.set_floatx("float32")


def test_lookahead_hypergradient_matches_finite_differences(float64):
    rng = np.random.default_rng(3)
    model = build_ctr_model(_arch(batch_norm=True, dropout=0.5, id_l2={"u": [0.0] * 4,
                                                                         "i": [0.0] * 3}))
    layer = model.get_layer("field_embedding")
    for table in layer.tables.values():
        table.assign(rng.normal(size=table.shape))
    logit_model = keras.Model(model.inputs, model.get_layer(LOGIT_LAYER).output)
    train_ids = {"u": tf.constant([0, 2, 2]), "i": tf.constant([1, 1, 1])}  # u 1, 3 and i 0, 2 out
    state: dict[str, Any] = {"tables": {}, "moments": {}, "grads": {}, "scales": {},
                             "step": tf.constant(3, tf.int64)}
    for f, rows in VOCAB.items():
        state["tables"][f] = tf.convert_to_tensor(layer.tables[f])
        state["moments"][f] = (tf.constant(rng.normal(0, 0.1, (rows, 2)), F64),
                               tf.constant(rng.uniform(0.01, 0.1, (rows, 2)), F64))
        state["grads"][f] = tf.constant(rng.normal(0, 0.3, (rows, 2)), F64)
        state["scales"][f] = row_scales(train_ids[f], rows, 3, F64)
    features = {"u_id": tf.constant([0, 2, 1, 3, 0, 2]), "i_id": tf.constant([1, 0, 1, 2, 1, 0]),
                "p_z": tf.constant([0.5, -1.0, 0.0, 2.0, 1.0, -0.5])}
    labels = tf.constant([[1.0], [0.0], [1.0], [1.0], [0.0], [0.0]], F64)
    lambdas = tuple(tf.constant(rng.uniform(0.1, 0.9, (rows, 1)), F64) for rows in VOCAB.values())

    def loss_fn(lam: tuple[tf.Tensor, ...]) -> tf.Tensor:
        return lookahead_val_loss(logit_model, layer, dict(zip(VOCAB, lam, strict=True)), state,
                                  features, labels, 0.05)

    with tf.GradientTape() as tape:
        tape.watch(lambdas)
        loss = loss_fn(lambdas)
    got = [g.numpy() for g in tape.gradient(loss, list(lambdas))]
    for g, e in zip(got, _finite_difference(loss_fn, lambdas), strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-10)
    # Ids outside the train batch get no penalty gradient, so Λ cannot act on them.
    assert np.all(got[0][[1, 3]] == 0) and np.all(got[1][[0, 2]] == 0)
    assert np.all(got[0][[0, 2]] != 0) and np.all(got[1][1] != 0)


def test_model_step_is_adam_on_the_loss_with_the_new_lambda():
    lr = 0.01
    model = build_ctr_model(_arch(dropout=0.0, id_l2={"u": [0.3] * 4, "i": [0.0] * 3}))
    trainer = CTRLambdaOptTrainer(model, keras.losses.BinaryCrossentropy(), lr,
                                  settings({"jit_compile": False, "lambda_learning_rate": 0.1,
                                            "lambda_epsilon": 1e-30}))
    layer = trainer.layer
    for table in layer.tables.values():
        table.assign(np.random.default_rng(0).normal(size=table.shape))
    features, labels = _features(8, 2), tf.constant([[1.0], [0.0]] * 4)
    before = model.get_weights()
    trainer.train_step(features, labels, _features(8, 3), labels)
    after = {f: (layer.tables[f].numpy(), trainer.lambdas[f].numpy()) for f in VOCAB}
    assert all(np.all(lam >= 0) for _, lam in after.values())
    assert np.any(after["u"][1] != 0.3)  # Λ moved
    # Redo the step by hand at the old weights and the new Λ: Adam's first step on BCE + Ω.
    model.set_weights(before)
    for f in VOCAB:
        trainer.lambdas[f].assign(after[f][1])
    with tf.GradientTape() as tape:
        loss = keras.losses.BinaryCrossentropy()(labels, model(features, training=True))
        loss += tf.add_n(model.losses)
    tables = [layer.tables[f] for f in VOCAB]
    for f, table, grad in zip(VOCAB, tables, tape.gradient(loss, tables), strict=True):
        grad = tf.convert_to_tensor(grad)
        expected = adam_update(table, tf.zeros_like(grad), tf.zeros_like(grad), grad, 1, lr)[0]
        np.testing.assert_allclose(after[f][0], expected, rtol=1e-5, atol=1e-7)


# --- the search ----------------------------------------------------------------------------------

def _context(arch: Architecture, options: dict[str, Any], report_dir: str | None = None,
             counts: dict[str, list[int]] | None = None) -> SearchContext:
    """Label 1 exactly for the even ``u`` ids."""
    def data(n: int, seed: int) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        features = _features(n, seed)
        return features, tf.cast(features["u_id"] % 2 == 0, tf.float32)[:, None]

    dataset = split_datasets({"train": data(256, 0), "eval": data(128, 1)}, 64)

    return SearchContext(arch=arch, dataset=dataset, learning_rate=0.05, batch_size=64,
                         max_epochs=3, patience=2, seed=0, options=options,
                         vocab_counts=counts, report_dir=report_dir)


@pytest.mark.parametrize("options, message", [
    ({"variant": "full"}, "variant 'full' runs on top-k MF only"),
    ({"per_dimension": True}, "per_dimension runs on top-k MF only"),
    ({"search_epochs": 0}, "search_epochs must be >= 1"),
])
def test_unsupported_options_name_themselves(options, message):
    with pytest.raises(SearchError, match=message):
        search(_context(_arch(), options))


def test_registered_for_ctr_families_and_mf_is_a_joint_training():
    for family in ("fm", "deepfm", "dnn", "dcn"):
        check_applies("lambdaopt", family)
    mf = Architecture.uniform("mf", ["u", "i"], [], VOCAB, embedding_dim=2)
    with pytest.raises(SearchError, match="top-k MF is a joint training"):
        search(_context(mf, {}))


@pytest.mark.parametrize("model", ["deepfm", "fm"])
def test_search_writes_finite_non_negative_id_l2_and_a_report(tmp_path, model):
    arch = _arch(model, l2=0.01)
    options = {"search_epochs": 3, "lambda_learning_rate": 0.05, "held_out_check": False}
    found = search(_context(arch, options, str(tmp_path)))
    assert sorted(found.id_l2) == ["i", "u"] and found.l2 == 0.01
    for f, strengths in found.id_l2.items():
        assert len(strengths) == VOCAB[f]
        assert all(math.isfinite(x) and x >= 0 for x in strengths)
    assert any(x > 0 for x in found.id_l2["u"])
    record = found.search["lambdaopt"]
    assert record["settings"]["variant"] == "truncated" and "l2_grid" not in record["settings"]
    assert record["steps"] == 4 * len(record["history"])
    aucs = [h["eval_auc"] for h in record["history"]]
    assert record["best_epoch"] == int(np.argmax(aucs)) + 1 and record["best_eval_auc"] == max(aucs)
    assert set(record["lambda"]) == {"u", "i"}
    json.dumps(record)
    assert os.path.getsize(tmp_path / "lambdaopt_lambdas.png") > 1000
    assert np.load(tmp_path / "lambdas.npz")["u"].shape == (4, 1)
    assert Architecture.from_json(found.to_json()) == found
    assert found.embedding_params() == arch.embedding_params()


def test_eval_halves_are_disjoint_fixed_and_cover_the_eval_split():
    from models.search.lambdaopt_ctr import eval_half  # noqa: PLC0415

    ctx = _context(_arch(), {})
    full = np.concatenate([y.numpy().ravel() for _, y in ctx.dataset("eval", ["u_id"], False)])
    ids = {}
    for part in (0, 1):
        half = eval_half(ctx.dataset, part, 16, seed=0)
        rows = [(int(u), float(y)) for x, ys in half("eval", ["u_id"], True)
                for u, y in zip(x["u_id"].numpy().ravel(), ys.numpy().ravel(), strict=True)]
        again = [(int(u), float(y)) for x, ys in half("eval", ["u_id"], True)
                 for u, y in zip(x["u_id"].numpy().ravel(), ys.numpy().ravel(), strict=True)]
        assert sorted(rows) == sorted(again) and len(rows) == full.size // 2
        ids[part] = rows
    assert sorted(ids[0] + ids[1]) == sorted(
        (int(u), float(y)) for x, ys in ctx.dataset("eval", ["u_id"], False)
        for u, y in zip(x["u_id"].numpy().ravel(), ys.numpy().ravel(), strict=True))
    # the train split passes through unchanged
    train = eval_half(ctx.dataset, 0, 16, seed=0)("train", ["u_id"], False)
    assert sum(int(y.shape[0]) for _, y in train) == 256


def test_held_out_check_keeps_the_learned_strengths_only_if_they_score_higher(monkeypatch):
    from models.search import lambdaopt_ctr  # noqa: PLC0415

    arch = _arch("deepfm", l2=0.01)
    options = {"search_epochs": 2, "lambda_learning_rate": 0.05}
    found = search(_context(arch, options))  # unpatched: both retrains run
    record = found.search["lambdaopt"]["held_out_check"]
    for key in ("learned", "fixed_l2"):
        assert 0.0 <= record[key]["held_out_auc"] <= 1.0 and record[key]["best_epoch"] >= 1
    assert record["kept"] == (record["learned"]["held_out_auc"]
                              > record["fixed_l2"]["held_out_auc"])
    assert bool(found.id_l2) == record["kept"] and found.l2 == 0.01
    for learned_auc, kept in ((0.6, False), (0.8, True), (0.7, False)):  # a tie keeps the l2
        monkeypatch.setattr(lambdaopt_ctr, "held_out_auc", lambda ctx, a, check, v=learned_auc:
                            {"held_out_auc": v if a.id_l2 else 0.7, "best_epoch": 1})
        chosen = search(_context(arch, options))
        assert chosen.search["lambdaopt"]["held_out_check"]["kept"] is kept
        assert bool(chosen.id_l2) is kept
        assert chosen.search["lambdaopt"]["best_eval_auc"] > 0
        assert Architecture.from_json(chosen.to_json()) == chosen


@pytest.mark.slow
def test_search_on_synthetic_then_retrain_beats_chance(tmp_path):
    from benchmarks.data import transformed_dataset  # noqa: PLC0415 (loads Beam and TFT)
    from components.base import train_model  # noqa: PLC0415
    from tests.models.synthetic_search import search_synthetic  # noqa: PLC0415

    arch, data = search_synthetic(tmp_path, "deepfm+lambdaopt",
                                  options={"lambdaopt": {"search_epochs": 2,
                                                         "held_out_check": False}})
    assert arch.search["strategy"] == "lambdaopt"
    assert sorted(arch.id_l2) == sorted(arch.categorical)
    for f, strengths in arch.id_l2.items():
        assert len(strengths) == arch.vocab_sizes[f]
        assert all(math.isfinite(x) and x >= 0 for x in strengths)
    assert (tmp_path / "report" / "lambdaopt_lambdas.png").exists()
    names = model_input_names(arch)
    train = transformed_dataset(data, "train", names, 512, shuffle=True, seed=0)
    evaluation = transformed_dataset(data, "eval", names, 512, shuffle=False, seed=0)
    result = train_model(arch, train, evaluation, learning_rate=1e-3, max_epochs=2, patience=1,
                         seed=0)
    assert max(result.history["val_auc"]) > 0.5


def test_bench_name_parses():
    from benchmarks.bench import parse_model  # noqa: PLC0415 (loads Beam and TFT)
    from pipeline.configs import PipelineConfig  # noqa: PLC0415

    config = parse_model("deepfm+lambdaopt", PipelineConfig())
    assert config.search_strategy == "lambdaopt" and config.train.model == "deepfm"
    config.validate()
