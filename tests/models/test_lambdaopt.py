"""λOpt: the per-id penalty layer, the Λ step's hypergradient (truncated and full, against
finite differences), Λ >= 0, the model step against plain L2, options, and the bench rows."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from models.layers.lambdaopt import IdL2Regularizer, penalty_gradient
from models.search import METHODS, SearchError
from models.search.lambdaopt import DEFAULTS, LambdaOptTrainer, settings, train_lambdaopt
from models.search.lambdaopt_lookahead import (
    adam_update,
    batch_scales,
    bpr_gradients,
    full_val_loss,
    truncated_val_loss,
)
from models.zoo.mf import MatrixFactorization, bpr_loss

F64 = tf.float64


# --- the layer --------------------------------------------------------------------------------

def test_penalty_golden_values_and_constant_lambda_is_plain_l2():
    reg = IdL2Regularizer(num_ids=3, embedding_dim=2, initial_value=0.5)
    ids, vectors = tf.constant([0, 2, 2]), tf.constant([[1.0, 2.0], [0.0, 1.0], [3.0, 0.0]])
    # 1/2 * 0.5 * (1 + 4 + 1 + 9) = 3.75; divided by the batch size 3 -> 1.25
    assert float(reg(ids, vectors)) == pytest.approx(3.75)
    assert float(reg.penalty(ids, vectors, 3)) == pytest.approx(1.25)
    # Λ = l2 everywhere is exactly bpr_loss's L2 term.
    user, pos, neg = (tf.random.stateless_normal([4, 3], seed=[s, 0]) for s in range(3))
    scores = tf.reduce_sum(user * pos, -1), tf.reduce_sum(user * neg, -1)
    l2 = 1e-2
    users, items = IdL2Regularizer(5, 3, initial_value=l2), IdL2Regularizer(6, 3, True, l2)
    u, i, j = tf.constant([0, 1, 1, 4]), tf.constant([0, 2, 5, 5]), tf.constant([1, 1, 3, 0])
    ours = (bpr_loss(*scores) + users.penalty(u, user, 4)
            + items.penalty(tf.concat([i, j], 0), tf.concat([pos, neg], 0), 4))
    expected = bpr_loss(*scores, embeddings=(user, pos, neg), l2=l2)
    assert float(ours) == pytest.approx(float(expected), rel=1e-6)


def test_per_id_and_per_dimension_shapes():
    per_id, per_dim = IdL2Regularizer(7, 4), IdL2Regularizer(7, 4, per_dimension=True)
    per_id.build(), per_dim.build()
    assert per_id.lambdas.shape == (7, 1) and per_dim.lambdas.shape == (7, 4)
    per_dim.lambdas.assign(tf.reshape(tf.range(28, dtype=tf.float32), [7, 4]))
    assert per_dim.per_id().numpy().tolist() == [1.5 + 4 * r for r in range(7)]
    model = MatrixFactorization(5, 6, 4)
    model.build()
    trainer = LambdaOptTrainer(model, 1e-3, settings({"per_dimension": True}))
    assert [tuple(lam.shape) for lam in trainer.lambdas] == [(5, 4), (6, 4)]


def test_per_id_initial_values_fixed_when_not_trainable():
    reg = IdL2Regularizer(3, 2, per_dimension=True, initial_value=[0.0, 0.5, 2.0],
                          trainable=False)
    reg.build()
    np.testing.assert_allclose(reg.lambdas, [[0.0, 0.0], [0.5, 0.5], [2.0, 2.0]])
    assert reg.trainable_weights == [] and reg.non_trainable_weights == [reg.lambdas]
    assert IdL2Regularizer.from_config(reg.get_config()).get_config() == reg.get_config()
    # 1/2 * (0.5 * 2 + 2 * 8) / 2 = 4.25
    assert float(reg.penalty(tf.constant([1, 2]), tf.constant([[1.0, 1.0], [2.0, 2.0]]),
                             2)) == pytest.approx(4.25)


def test_penalty_gradient_matches_autodiff_with_repeated_ids():
    table = tf.random.stateless_normal([4, 3], seed=[1, 2])
    lam = tf.constant([[0.1], [0.2], [0.3], [0.4]])
    ids = tf.constant([1, 3, 3, 0])
    reg = IdL2Regularizer(4, 3)
    reg.build()
    reg.lambdas.assign(lam)
    with tf.GradientTape() as tape:
        tape.watch(table)
        penalty = reg.penalty(ids, tf.gather(table, ids), 4)
    expected = tf.convert_to_tensor(tape.gradient(penalty, table))
    got = penalty_gradient(lam, table, ids, 4)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert np.all(got.numpy()[2] == 0)  # row 2 is not in the batch


def test_get_config_round_trip_and_savedmodel(tmp_path):
    reg = IdL2Regularizer(3, 2, per_dimension=True, initial_value=0.25, name="lam")
    clone = IdL2Regularizer.from_config(reg.get_config())
    assert clone.get_config() == reg.get_config()
    ids = keras.Input([], dtype=tf.int64)
    vectors = keras.Input([2])
    model = keras.Model([ids, vectors], reg(ids, vectors)[None])
    path = os.path.join(tmp_path, "reg")
    model.save(path)
    loaded = keras.models.load_model(path)
    x = [tf.constant([0, 2], tf.int64), tf.constant([[1.0, 1.0], [2.0, 0.0]])]
    # 1/2 * 0.25 * (1 + 1 + 4) = 0.75
    np.testing.assert_allclose(loaded(x), [0.75])
    np.testing.assert_allclose(model(x), loaded(x))


@pytest.mark.parametrize("kwargs, message", [
    ({"num_ids": 0, "embedding_dim": 2}, "num_ids"),
    ({"num_ids": 2, "embedding_dim": 0}, "embedding_dim"),
    ({"num_ids": 2, "embedding_dim": 2, "initial_value": -1.0}, "initial_value"),
    ({"num_ids": 2, "embedding_dim": 2, "initial_value": [0.1, -1.0]}, "initial_value"),
    ({"num_ids": 2, "embedding_dim": 2, "initial_value": [0.1]}, "one value per id"),
])
def test_layer_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IdL2Regularizer(**kwargs)


@pytest.mark.parametrize("options, message", [
    ({"varient": "full"}, "unknown options"),
    ({"variant": "second"}, "variant"),
    ({"lambda_learning_rate": 0.0}, "lambda_learning_rate"),
    ({"lambda_clipnorm": -1.0}, "lambda_clipnorm"),
    ({"lambda_epsilon": 0.0}, "lambda_epsilon"),
    ({"lambda_init": -0.1}, "lambda_init"),
    ({"val_batch_size": 0}, "val_batch_size"),
    ({"l2_grid": []}, "l2_grid"),
    ({"l2_grid": [1e-4, -1.0]}, "l2_grid"),
])
def test_bad_options_name_the_option(options, message):
    with pytest.raises(SearchError, match=message):
        settings(options)


def test_settings_defaults_and_registry():
    assert settings({}) == {**DEFAULTS, "l2_grid": [0.0, 1e-5, 1e-4, 1e-3]}
    assert len(settings({})["l2_grid"]) >= 4
    assert METHODS["lambdaopt"] == ("models.search.lambdaopt",
                                    ("mf", "fm", "deepfm", "dnn", "dcn"))


# --- the Λ step: hypergradients against finite differences -------------------------------------

def _tiny_state(rng: np.random.Generator, penalised: bool = True) -> dict:
    """Two users, three items, D = 2, at Adam step 3, with batch (u, i, j) = ([0, 1], [0, 2],
    [1, 1])."""
    def t(*shape, low=-1.0, high=1.0):
        return tf.constant(rng.uniform(low, high, shape), F64)

    u, i, j = (tf.constant(x, tf.int64) for x in ([0, 1], [0, 2], [1, 1]))
    tables = (t(2, 2), t(3, 2))
    _, g_users, g_items = bpr_gradients(*tables, u, i, j)
    scales = batch_scales(u, i, j, 2, 3, dtype=F64)
    if not penalised:
        scales = tuple(tf.zeros_like(s) for s in scales)
    return {"tables": tables, "moments": ((t(2, 2) * 0.1, t(2, 2, low=0.01, high=0.1)),
                                          (t(3, 2) * 0.1, t(3, 2, low=0.01, high=0.1))),
            "grads": (g_users, g_items), "scales": scales, "step": tf.constant(3, tf.int64)}


def _finite_difference(loss_fn, lambdas, h=1e-6):
    grads = []
    for index, lam in enumerate(lambdas):
        flat = lam.numpy().ravel()
        grad = np.zeros_like(flat)
        for k in range(flat.size):
            shifted = []
            for sign in (1, -1):
                moved = flat.copy()
                moved[k] += sign * h
                args = list(lambdas)
                args[index] = tf.constant(moved.reshape(lam.shape), F64)
                shifted.append(float(loss_fn(tuple(args))))
            grad[k] = (shifted[0] - shifted[1]) / (2 * h)
        grads.append(grad.reshape(lam.shape))
    return grads


def _autodiff(loss_fn, lambdas):
    with tf.GradientTape() as tape:
        tape.watch(lambdas)
        loss = loss_fn(lambdas)
    return [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, list(lambdas))]


VAL = tuple(tf.constant(x, tf.int64) for x in ([1, 0, 1], [1, 2, 0], [2, 0, 2]))
LR = 0.05


@pytest.mark.parametrize("per_dimension", [False, True])
def test_truncated_hypergradient_matches_finite_differences(per_dimension):
    rng = np.random.default_rng(0)
    state = _tiny_state(rng)
    width = 2 if per_dimension else 1
    lambdas = (tf.constant(rng.uniform(0.1, 0.9, (2, width)), F64),
               tf.constant(rng.uniform(0.1, 0.9, (3, width)), F64))

    def loss_fn(lam):
        return truncated_val_loss(lam, state, VAL, LR)

    got, expected = _autodiff(loss_fn, lambdas), _finite_difference(loss_fn, lambdas)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-9)
    # Item 1 appears in the batch (as j twice) and in VAL; user 0 and 1 both; all get a gradient.
    assert np.all(np.abs(got[0]) > 0) and np.all(np.abs(got[1][1]) > 0)


def test_truncated_hand_checkable_one_row():
    """One user, one item, D = 1: the derivative of Adam's next step written out by hand."""
    theta, m, v, g, s, lam, step = 0.5, 0.02, 0.04, 0.3, 1.0, 0.2, 1
    b1, b2, eps = 0.9, 0.999, 1e-7

    def next_theta(lam_):
        return adam_update(tf.constant(theta, F64), tf.constant(m, F64), tf.constant(v, F64),
                           tf.constant(g, F64) + s * lam_ * theta, step, LR)[0]

    lam_t = tf.constant(lam, F64)
    with tf.GradientTape() as tape:
        tape.watch(lam_t)
        out = next_theta(lam_t)
    grad = float(tape.gradient(out, lam_t))
    g2 = g + s * lam * theta
    m2, v2 = b1 * m + (1 - b1) * g2, b2 * v + (1 - b2) * g2 ** 2
    alpha = LR * np.sqrt(1 - b2 ** step) / (1 - b1 ** step)
    root = np.sqrt(v2)
    # d/dλ [-alpha m2 / (root + eps)], dg2/dλ = s θ
    by_hand = -alpha * ((1 - b1) * s * theta / (root + eps)
                        - m2 * (1 - b2) * g2 * s * theta / (root * (root + eps) ** 2))
    assert grad == pytest.approx(by_hand, rel=1e-9)


def test_full_hypergradient_matches_finite_differences_and_differs_from_truncated():
    rng = np.random.default_rng(1)
    prev = _tiny_state(rng)
    batch = tuple(tf.constant(x, tf.int64) for x in ([1, 1], [2, 1], [0, 0]))
    lambdas = (tf.constant(rng.uniform(0.1, 0.9, (2, 2)), F64),
               tf.constant(rng.uniform(0.1, 0.9, (3, 2)), F64))

    def full(lam):
        return full_val_loss(lam, prev, batch, VAL, LR)

    got, expected = _autodiff(full, lambdas), _finite_difference(full, lambdas)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-9)

    # The truncated gradient at the same point treats Θ_t (the simulated previous step) as fixed.
    current, moments = [], []
    for lam, table, (m, v), grad, scale in zip(lambdas, prev["tables"], prev["moments"],
                                               prev["grads"], prev["scales"], strict=True):
        theta, m, v = adam_update(table, m, v, grad + scale * lam * table, prev["step"], LR)
        current.append(theta)
        moments.append((m, v))
    _, g_users, g_items = bpr_gradients(*current, *batch)
    state = {"tables": tuple(current), "moments": tuple(moments), "grads": (g_users, g_items),
             "scales": batch_scales(*batch, 2, 3, dtype=F64), "step": prev["step"] + 1}
    truncated = _autodiff(lambda lam: truncated_val_loss(lam, state, VAL, LR), lambdas)
    assert float(full(lambdas)) == pytest.approx(float(truncated_val_loss(lambdas, state, VAL, LR)))
    assert not np.allclose(truncated[0], got[0], rtol=1e-3)

    # Without a penalty in the previous step, Θ_t does not depend on Λ: the two agree.
    unpenalised = {**prev, "scales": tuple(tf.zeros_like(s) for s in prev["scales"])}
    state["tables"] = tuple(adam_update(t, m, v, g, prev["step"], LR)[0] for t, (m, v), g in
                            zip(prev["tables"], prev["moments"], prev["grads"], strict=True))
    state["moments"] = tuple(adam_update(t, m, v, g, prev["step"], LR)[1:] for t, (m, v), g in
                             zip(prev["tables"], prev["moments"], prev["grads"], strict=True))
    state["grads"] = bpr_gradients(*state["tables"], *batch)[1:]
    a = _autodiff(lambda lam: full_val_loss(lam, unpenalised, batch, VAL, LR), lambdas)
    b = _autodiff(lambda lam: truncated_val_loss(lam, state, VAL, LR), lambdas)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)


# --- the trainer -------------------------------------------------------------------------------

def _ids(rng, rows, n=16):
    return rng.integers(0, rows, n).astype(np.int64)


def test_model_step_with_constant_lambda_is_adam_on_plain_l2():
    l2, lr = 0.3, 0.01
    model = MatrixFactorization(5, 7, 4, l2=l2, seed=0)
    model.build()
    reference = MatrixFactorization(5, 7, 4, l2=l2, seed=0)
    reference.build()
    trainer = LambdaOptTrainer(model, lr, settings({"lambda_init": l2, "jit_compile": False}))
    optimizer = keras.optimizers.Adam(lr)
    rng = np.random.default_rng(0)
    for _ in range(3):
        u, i, j = _ids(rng, 5), _ids(rng, 7), _ids(rng, 7)
        trainer.model_step(u, i, j)
        with tf.GradientTape() as tape:
            loss = reference.triple_loss(u, i, j)
        grads = tape.gradient(loss, reference.trainable_variables)
        grads = [tf.convert_to_tensor(g) for g in grads]
        optimizer.apply_gradients(zip(grads, reference.trainable_variables, strict=True))
    for ours, theirs in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["truncated", pytest.param("full", marks=pytest.mark.slow)])
def test_lambda_steps_keep_lambda_non_negative_and_learn(variant):
    model = MatrixFactorization(6, 8, 4, seed=1)
    model.build()
    trainer = LambdaOptTrainer(model, 0.05, settings({"variant": variant,
                                                      "lambda_learning_rate": 0.5,
                                                      "jit_compile": False}))
    rng = np.random.default_rng(2)
    for _ in range(6):
        trainer.step_fn()(*(_ids(rng, n) for n in (6, 8, 8, 6, 8, 8)))
    lambdas = [lam.numpy() for lam in trainer.lambdas]
    assert all(np.all(lam >= 0) for lam in lambdas)
    assert any(np.any(lam > 0) for lam in lambdas)  # Λ moved off its initial 0
    assert int(trainer.step.numpy()) == 6


def _planted(clusters: int = 4, size: int = 8):
    from components.topk import topk_data_from_interactions  # noqa: PLC0415

    rng = np.random.default_rng(0)
    splits: dict[str, tuple[list[int], list[int]]] = {s: ([], []) for s in ("tr", "ev", "te")}
    for c in range(clusters):
        for user in range(c * size, (c + 1) * size):
            items = rng.permutation(np.arange(c * size, (c + 1) * size))
            for name, part in (("tr", items[:4]), ("ev", items[4:6]), ("te", items[6:])):
                splits[name][0].extend([user] * len(part))
                splits[name][1].extend(part.tolist())
    return topk_data_from_interactions(splits["tr"], splits["ev"], splits["te"])


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["truncated", "full"])
def test_train_lambdaopt_on_planted_clusters(tmp_path, variant):
    data = _planted()
    out = train_lambdaopt(data, dim=8, learning_rate=0.05, batch_size=64, max_epochs=6,
                          patience=6, eval_every=2, k=5, seed=0,
                          options={"variant": variant, "jit_compile": False},
                          report_dir=str(tmp_path))
    # Random top-5 of the 28 unseen items finds 5/28 ~ 0.18 of the eval items.
    assert out.result.best_eval["recall@5"] > 0.4
    assert out.lambdas["user"].shape == (32, 1) and out.lambdas["item"].shape == (32, 1)
    assert out.report["settings"]["variant"] == variant
    assert set(out.report["lambda"]["item"]) >= {"quantiles", "mean_by_frequency_quartile"}
    assert os.path.exists(tmp_path / "lambdaopt_lambdas.png")
    assert np.load(tmp_path / "lambdas.npz")["item"].shape == (32, 1)


# --- the bench ---------------------------------------------------------------------------------

def test_bench_names_expand_into_rows():
    from benchmarks.topk_lambdaopt import expand  # noqa: PLC0415
    from pipeline.configs import PipelineConfig  # noqa: PLC0415

    config = PipelineConfig()
    assert [n for n, _ in expand("mf+l2grid", config)] == [
        "mf[l2=0]", "mf[l2=1e-05]", "mf[l2=0.0001]", "mf[l2=0.001]"]
    assert [n for n, _ in expand("mf+lambdaopt", config)] == [
        "mf+lambdaopt[truncated]", "mf+lambdaopt[full]", "mf+lambdaopt[fixed]"]
    assert expand("mf+lambdaopt[fixed]", config) == [
        ("mf+lambdaopt[fixed]", {"kind": "fixed_lambdas", "variant": "truncated"})]
    config.search_options["lambdaopt"] = {"l2_grid": [0, 1e-2]}
    assert [s["l2"] for _, s in expand("mf+l2grid", config)] == [0.0, 1e-2]
    assert expand("mf[l2=0.01]", config) == [("mf[l2=0.01]", {"kind": "fixed", "l2": 0.01})]
    with pytest.raises(ValueError, match="Unknown expansion"):
        expand("mf[l2=0.5]", config)


@pytest.mark.slow
def test_bench_rows_on_synthetic_topk(tmp_path):
    from benchmarks.topk import run_topk  # noqa: PLC0415
    from pipeline.configs import PipelineConfig  # noqa: PLC0415

    config = PipelineConfig()
    config.train.max_epochs, config.train.patience = 2, 1
    config.search_options["lambdaopt"] = {"l2_grid": [0.0, 1e-4], "jit_compile": False}
    rows = run_topk("synthetic_topk", ["mf+l2grid", "mf+lambdaopt"], [0], config,
                    str(tmp_path / "work"), None, search_dir=str(tmp_path / "search"))
    assert [r["model"] for r in rows] == ["mf[l2=0]", "mf[l2=0.0001]",
                                          "mf+lambdaopt[truncated]", "mf+lambdaopt[full]",
                                          "mf+lambdaopt[fixed]"]
    assert rows[-1]["search_seconds"] > 0 and rows[2]["search_seconds"] == 0.0
    for row in rows:
        assert 0 <= row["recall@20"] <= 1 and row["peak_rss_mb"] > 0
        assert row["time_vs_mf"] is not None and row["time_vs_mf"] > 0
    assert rows[1]["time_vs_mf"] == pytest.approx(1.0)
    assert os.path.exists(tmp_path / "search" / "synthetic_topk-mf+lambdaopt[full]-seed0"
                          / "lambdaopt_lambdas.png")
