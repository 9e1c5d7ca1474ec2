"""Golden values, validation errors and the config round trip of matrix factorization + BPR."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from models.losses import training_loss
from models.zoo.mf import MatrixFactorization, bpr_loss, pointwise_loss


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.log1p(np.exp(x))


def test_bpr_loss_golden_value_without_penalty():
    pos, neg = np.array([2.0, 0.0]), np.array([1.0, 1.0])
    expected = np.mean(_softplus(neg - pos))  # -ln sigmoid(x) = softplus(-x)
    np.testing.assert_allclose(bpr_loss(pos, neg), expected, rtol=1e-6)
    np.testing.assert_allclose(expected, (0.3132617 + 1.3132617) / 2, rtol=1e-6)


def test_bpr_loss_adds_lightgcn_l2_of_the_batch():
    pos, neg = tf.constant([2.0, 0.0]), tf.constant([1.0, 1.0])
    user = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    item = tf.constant([[1.0, 1.0], [0.0, 0.0]])
    negative = tf.constant([[2.0, 0.0], [0.0, 0.0]])
    loss = bpr_loss(pos, neg, embeddings=(user, item, negative), l2=0.1)
    penalty = 0.1 * 0.5 * (2.0 + 2.0 + 4.0) / 2  # l2 * 1/2 * sum of squares / batch
    np.testing.assert_allclose(loss, np.mean(_softplus(np.array([-1.0, 1.0]))) + penalty,
                               rtol=1e-6)


def test_pointwise_loss_labels_observed_items_1_and_sampled_items_0():
    pos, neg = tf.constant([2.0, 0.0]), tf.constant([1.0, -1.0])
    user = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    loss = pointwise_loss(pos, neg, training_loss(None), embeddings=(user,), l2=0.1)
    sig = 1.0 / (1.0 + np.exp(-np.array([2.0, 0.0, 1.0, -1.0])))
    logloss = -np.mean(np.log([sig[0], sig[1], 1 - sig[2], 1 - sig[3]]))
    np.testing.assert_allclose(loss, logloss + 0.1 * 0.5 * 2.0 / 2, rtol=1e-5)


def test_triple_loss_takes_a_pointwise_loss_instead_of_bpr():
    model = MatrixFactorization(3, 4, 2, l2=0.0, seed=0)
    ids = tf.constant([0, 2]), tf.constant([1, 3]), tf.constant([0, 0])
    squared_error = keras.losses.MeanSquaredError()
    scores = [model.score(ids[0], ids[1]), model.score(ids[0], ids[2])]
    expected = np.mean(np.square(np.concatenate(
        [1.0 - tf.sigmoid(scores[0]).numpy(), tf.sigmoid(scores[1]).numpy()])))
    np.testing.assert_allclose(model.triple_loss(*ids, squared_error), expected, rtol=1e-5)
    np.testing.assert_allclose(model.triple_loss(*ids),
                               bpr_loss(*scores), rtol=1e-6)


def test_score_is_the_dot_product_of_the_tables():
    model = MatrixFactorization(num_users=4, num_items=3, embedding_dim=5, seed=3)
    users_table, items_table = (t.numpy() for t in model.embedding_tables())
    users, items = np.array([0, 3, 3]), np.array([2, 0, 1])
    np.testing.assert_allclose(model.score(tf.constant(users), tf.constant(items)),
                               np.sum(users_table[users] * items_table[items], axis=1),
                               rtol=1e-6)
    vectors = model({"user": tf.constant(users), "negative": tf.constant([[0, 1]] * 3)})
    assert vectors["user"].shape == (3, 5) and vectors["negative"].shape == (3, 2, 5)


def test_default_initializer_is_normal_with_std_point_one():
    model = MatrixFactorization(num_users=200, num_items=300, embedding_dim=64, seed=0)
    users_table, items_table = (t.numpy() for t in model.embedding_tables())
    assert abs(users_table.std() - 0.1) < 0.005 and abs(items_table.std() - 0.1) < 0.005
    assert model.count_params() == (200 + 300) * 64


def test_triple_loss_matches_bpr_loss_of_the_looked_up_vectors():
    model = MatrixFactorization(num_users=3, num_items=4, embedding_dim=2, l2=0.5, seed=1)
    users_table, items_table = (t.numpy() for t in model.embedding_tables())
    u, i, j = np.array([0, 2]), np.array([1, 3]), np.array([0, 0])
    pos = np.sum(users_table[u] * items_table[i], axis=1)
    neg = np.sum(users_table[u] * items_table[j], axis=1)
    squares = sum(np.sum(t ** 2) for t in (users_table[u], items_table[i], items_table[j]))
    expected = np.mean(_softplus(neg - pos)) + 0.5 * 0.5 * squares / 2
    np.testing.assert_allclose(model.triple_loss(u, i, j), expected, rtol=1e-5)


def test_id_l2_penalises_each_looked_up_row_by_its_own_strength():
    lam_user, lam_item = [0.0, 1.0, 2.0], [0.5, 0.0, 3.0, 4.0]
    model = MatrixFactorization(num_users=3, num_items=4, embedding_dim=2, l2=0.7, seed=1,
                                id_l2={"user": lam_user, "item": lam_item})
    users_table, items_table = (t.numpy() for t in model.embedding_tables())
    u, i, j = np.array([1, 2, 2]), np.array([3, 0, 1]), np.array([2, 2, 0])
    pos = np.sum(users_table[u] * items_table[i], axis=1)
    neg = np.sum(users_table[u] * items_table[j], axis=1)
    penalty = (sum(lam_user[r] * np.sum(users_table[r] ** 2) for r in u)
               + sum(lam_item[r] * np.sum(items_table[r] ** 2) for r in (*i, *j)))
    expected = np.mean(_softplus(neg - pos)) + 0.5 * penalty / 3
    np.testing.assert_allclose(model.triple_loss(u, i, j), expected, rtol=1e-5)
    # Only the item table's strengths: the user rows keep the scalar l2.
    items_only = MatrixFactorization(num_users=3, num_items=4, embedding_dim=2, l2=0.7, seed=1,
                                     id_l2={"item": lam_item})
    user_part = 0.7 * sum(np.sum(users_table[r] ** 2) for r in u)
    item_part = sum(lam_item[r] * np.sum(items_table[r] ** 2) for r in (*i, *j))
    np.testing.assert_allclose(items_only.triple_loss(u, i, j),
                               np.mean(_softplus(neg - pos)) + 0.5 * (user_part + item_part) / 3,
                               rtol=1e-5)
    assert MatrixFactorization.from_config(model.get_config()).id_l2 == {
        "user": lam_user, "item": lam_item}


@pytest.mark.parametrize("id_l2, message", [
    ({"user": [0.1, 0.2]}, "one strength per row"),
    ({"item": [0.1, -1.0, 0.0, 0.0]}, "finite and >= 0"),
    ({"other": [0.1]}, "takes 'user' and 'item'"),
])
def test_bad_id_l2_is_refused_naming_the_table(id_l2, message):
    with pytest.raises(ValueError, match=message):
        MatrixFactorization(num_users=3, num_items=4, embedding_dim=2, id_l2=id_l2)


def test_config_round_trip_keeps_every_argument_and_the_weights():
    model = MatrixFactorization(num_users=5, num_items=7, embedding_dim=3, l2=1e-3,
                                init_std=0.2, seed=4, name="mf")
    model.build()
    config = model.get_config()
    assert {k: config[k] for k in ("num_users", "num_items", "embedding_dim", "l2", "init_std",
                                   "seed", "name")} == {
        "num_users": 5, "num_items": 7, "embedding_dim": 3, "l2": 1e-3, "init_std": 0.2,
        "seed": 4, "name": "mf"}
    clone = MatrixFactorization.from_config(config)
    assert clone.get_config() == config
    clone.build()
    clone.set_weights(model.get_weights())
    ids = tf.constant([0, 4]), tf.constant([6, 1])
    np.testing.assert_allclose(clone.score(*ids), model.score(*ids), rtol=1e-6)
    assert keras.utils.get_registered_name(MatrixFactorization) == "autorec>MatrixFactorization"


@pytest.mark.parametrize("kwargs, message", [
    ({"num_users": 0}, "num_users"),
    ({"num_items": -1}, "num_items"),
    ({"embedding_dim": 0}, "embedding_dim"),
    ({"l2": -0.1}, "l2"),
    ({"init_std": 0.0}, "init_std"),
])
def test_invalid_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MatrixFactorization(**{"num_users": 2, "num_items": 2, **kwargs})


def test_unknown_input_key_is_rejected():
    model = MatrixFactorization(num_users=2, num_items=2, embedding_dim=2)
    with pytest.raises(ValueError, match="unknown keys"):
        model({"user": tf.constant([0]), "price": tf.constant([1])})
