"""Golden values, validation errors and config round trips of the shared model layers."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl.testing import parameterized

from models.layers.embeddings import (
    FieldEmbedding,
    FieldLinear,
    concat_embeddings,
    field_input_dtypes,
    stack_embeddings,
)
from models.layers.interactions import FMInteraction
from models.layers.mlp import MLP

FIELDS: dict[str, Any] = {
    "categorical": ["user", "item"],
    "numerical": ["age", "price"],
    "vocab_sizes": {"user": 3, "item": 2},
    "numeric_encoding": {"age": "scaled", "price": "bucket"},
    "num_buckets": 4,
}
FEATURES = {
    "user_id": tf.constant([0, 2, 1], tf.int64),
    "item_id": tf.constant([1, 0, 1], tf.int64),
    "age_z": tf.constant([0.5, -2.0, 0.0]),
    "price_bucket": tf.constant([3, 0, 2], tf.int64),
}


def _embedding(**overrides: Any) -> FieldEmbedding:
    dims = {"user": 2, "item": 2, "age": 2, "price": 2}
    return FieldEmbedding(**{**FIELDS, "embedding_dims": dims, **overrides})


def _pairwise_brute_force(v: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
    return np.stack([sum(v[b, i] @ v[b, j] for i, j in pairs) for b in range(v.shape[0])])[:, None]


def _assert_config_round_trip(layer: keras.layers.Layer, inputs: Any) -> None:
    expected = layer(inputs)
    clone = layer.__class__.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    clone(inputs)
    clone.set_weights(layer.get_weights())
    tf.nest.map_structure(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                          clone(inputs), expected)


class FieldEmbeddingTest(tf.test.TestCase, parameterized.TestCase):

    def test_lookups_and_scaled_values_match_tables(self):
        layer = _embedding()
        layer.build(None)
        user, item = np.arange(6.0).reshape(3, 2), np.arange(4.0).reshape(2, 2) + 10
        age, price = np.array([1.0, -3.0]), np.arange(8.0).reshape(4, 2) + 20
        layer.set_weights([user, item, age, price])
        out = layer(FEATURES)
        self.assertLen(out, 4)
        self.assertAllClose(out[0], user[[0, 2, 1]])
        self.assertAllClose(out[1], item[[1, 0, 1]])
        self.assertAllClose(out[2], np.array([0.5, -2.0, 0.0])[:, None] * age)
        self.assertAllClose(out[3], price[[3, 0, 2]])

    def test_mixed_dims_concat_but_do_not_stack(self):
        out = _embedding(embedding_dims={"user": 3, "item": 1, "age": 2, "price": 4})(FEATURES)
        self.assertEqual([tuple(e.shape) for e in out], [(3, 3), (3, 1), (3, 2), (3, 4)])
        self.assertEqual(tuple(concat_embeddings(out).shape), (3, 10))
        with self.assertRaisesRegex(ValueError, "dims=\\[3, 1, 2, 4\\]"):
            stack_embeddings(out)

    def test_stack_is_batch_fields_dim(self):
        self.assertEqual(tuple(stack_embeddings(_embedding()(FEATURES)).shape), (3, 4, 2))

    def test_accepts_features_of_shape_b1(self):
        layer = _embedding()
        flat = layer(FEATURES)
        column = layer({name: value[:, None] for name, value in FEATURES.items()})
        for a, b in zip(flat, column, strict=True):
            self.assertAllClose(a, b)

    def test_input_dtypes_follow_encodings(self):
        self.assertEqual(_embedding().input_dtypes(), {
            "user_id": tf.int64, "item_id": tf.int64, "age_z": tf.float32,
            "price_bucket": tf.int64})
        self.assertEqual(field_input_dtypes([], ["age"]), {"age_z": tf.float32})

    @parameterized.parameters((0.0, 0), (0.1, 4))
    def test_l2_adds_one_loss_per_table(self, l2, losses):
        layer = _embedding(l2=l2)
        layer(FEATURES)
        self.assertLen(layer.losses, losses)

    def test_config_round_trip(self):
        _assert_config_round_trip(_embedding(l2=0.01), FEATURES)

    def test_rejects_no_fields(self):
        with self.assertRaisesRegex(ValueError, "at least one field"):
            FieldEmbedding([], [], {}, {})

    def test_rejects_duplicate_fields(self):
        with self.assertRaisesRegex(ValueError, "unique"):
            FieldEmbedding(["a"], ["a"], {"a": 2}, {"a": 2})

    def test_rejects_missing_vocab_size(self):
        with self.assertRaisesRegex(ValueError, "'item' needs a vocab size"):
            _embedding(vocab_sizes={"user": 3})

    def test_rejects_small_embedding_dim(self):
        with self.assertRaisesRegex(ValueError, "'age' needs an embedding dim"):
            _embedding(embedding_dims={"user": 2, "item": 2, "age": 0, "price": 2})

    def test_rejects_unknown_encoding(self):
        with self.assertRaisesRegex(ValueError, "Received: 'log'"):
            _embedding(numeric_encoding={"age": "log"})

    def test_rejects_encoding_of_non_numerical_field(self):
        with self.assertRaisesRegex(ValueError, "not numerical: \\['user'\\]"):
            _embedding(numeric_encoding={"user": "bucket"})

    def test_rejects_no_buckets(self):
        with self.assertRaisesRegex(ValueError, "num_buckets=0"):
            _embedding(num_buckets=0)

    def test_rejects_negative_l2(self):
        with self.assertRaisesRegex(ValueError, "l2=-1"):
            _embedding(l2=-1.0)

    def test_rejects_missing_feature(self):
        features = {k: v for k, v in FEATURES.items() if k != "price_bucket"}
        with self.assertRaisesRegex(ValueError, "missing input features \\['price_bucket'\\]"):
            _embedding()(features)

    def test_rejects_feature_of_wrong_rank(self):
        with self.assertRaisesRegex(ValueError, "'age_z' must have shape"):
            _embedding()({**FEATURES, "age_z": tf.zeros([3, 2])})


class FieldLinearTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters(True, False)
    def test_logit_is_bias_plus_field_weights(self, use_bias):
        layer = FieldLinear(**FIELDS, use_bias=use_bias)
        layer.build(None)
        user, item = np.array([[1.0], [2.0], [3.0]]), np.array([[-1.0], [5.0]])
        age, price = np.array([2.0]), np.array([[0.0], [0.1], [0.2], [0.3]])
        layer.weights_per_field.set_weights([user, item, age, price])
        if use_bias:
            layer.bias.assign([0.7])
        expected = (user[[0, 2, 1], 0] + item[[1, 0, 1], 0] + 2.0 * np.array([0.5, -2.0, 0.0])
                    + price[[3, 0, 2], 0] + (0.7 if use_bias else 0.0))
        self.assertAllClose(layer(FEATURES), expected[:, None])

    def test_starts_at_zero(self):
        self.assertAllClose(FieldLinear(**FIELDS)(FEATURES), np.zeros([3, 1]))

    def test_config_round_trip(self):
        _assert_config_round_trip(FieldLinear(**FIELDS, l2=0.1, use_bias=False,
                                              embeddings_initializer="ones"), FEATURES)

    def test_rejects_missing_vocab_size(self):
        with self.assertRaisesRegex(ValueError, "'item' needs a vocab size"):
            FieldLinear(**{**FIELDS, "vocab_sizes": {"user": 3}})


class FMInteractionTest(tf.test.TestCase, parameterized.TestCase):

    def setUp(self):
        super().setUp()
        self.v = np.random.default_rng(0).normal(size=(5, 4, 3)).astype(np.float32)

    def test_all_pairs_match_brute_force(self):
        pairs = list(itertools.combinations(range(4), 2))
        self.assertAllClose(FMInteraction()(self.v), _pairwise_brute_force(self.v, pairs),
                            rtol=1e-5, atol=1e-5)

    @parameterized.parameters([[(0, 1)]], [[(0, 3), (2, 1)]], [[(3, 0), (1, 2), (0, 2)]])
    def test_kept_pairs_match_brute_force(self, pairs):
        self.assertAllClose(FMInteraction(pair_mask=pairs)(self.v),
                            _pairwise_brute_force(self.v, pairs), rtol=1e-5, atol=1e-5)

    def test_mask_of_all_pairs_equals_unmasked(self):
        pairs = list(itertools.combinations(range(4), 2))
        self.assertAllClose(FMInteraction(pair_mask=pairs)(self.v), FMInteraction()(self.v),
                            rtol=1e-5, atol=1e-5)

    def test_empty_mask_gives_zero(self):
        self.assertAllClose(FMInteraction(pair_mask=[])(self.v), np.zeros([5, 1]))

    @parameterized.parameters((None,), ([[0, 2]],), ([],))
    def test_config_round_trip(self, pairs):
        _assert_config_round_trip(FMInteraction(pair_mask=pairs), self.v)

    def test_rejects_pair_of_three(self):
        with self.assertRaisesRegex(ValueError, "two field indices"):
            FMInteraction(pair_mask=[(0, 1, 2)])

    def test_rejects_self_pair(self):
        with self.assertRaisesRegex(ValueError, "distinct.*pair=\\[1, 1\\]"):
            FMInteraction(pair_mask=[(1, 1)])

    def test_rejects_negative_index(self):
        with self.assertRaisesRegex(ValueError, "non-negative.*pair=\\[-1, 1\\]"):
            FMInteraction(pair_mask=[(-1, 1)])

    def test_rejects_repeated_pair(self):
        with self.assertRaisesRegex(ValueError, "twice"):
            FMInteraction(pair_mask=[(0, 1), (1, 0)])

    def test_rejects_index_past_last_field(self):
        with self.assertRaisesRegex(ValueError, "names field 4.*4 fields"):
            FMInteraction(pair_mask=[(0, 4)])(self.v)

    def test_rejects_rank_two_input(self):
        with self.assertRaisesRegex(ValueError, "\\[B, F, D\\]"):
            FMInteraction()(tf.zeros([2, 3]))


class MLPTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters(([8, 4], 4), ([3], 3), ([], 5))
    def test_output_width(self, hidden_units, width):
        self.assertEqual(tuple(MLP(hidden_units)(tf.ones([7, 5])).shape), (7, width))

    def test_no_hidden_units_is_identity(self):
        x = tf.random.normal([2, 5])
        self.assertAllClose(MLP([])(x), x)

    def test_block_is_relu_of_affine(self):
        layer = MLP([2])
        layer.build((None, 3))
        kernel, bias = np.array([[1.0, -1.0], [2.0, 0.0], [0.0, 1.0]]), np.array([0.5, -0.5])
        layer.set_weights([kernel, bias])
        x = np.array([[1.0, 1.0, 1.0], [-1.0, 0.0, 2.0]], np.float32)
        self.assertAllClose(layer(x), np.maximum(x @ kernel + bias, 0.0))

    def test_batch_norm_replaces_bias(self):
        layer = MLP([4, 2], batch_norm=True)
        layer(tf.ones([3, 5]))
        names = [w.name.split("/")[-1] for w in layer.trainable_weights]
        self.assertNotIn("bias:0", names)
        self.assertEqual(names.count("gamma:0"), 2)

    def test_dropout_only_in_training(self):
        layer = MLP([64], dropout=0.5, kernel_initializer="ones")
        x = tf.ones([4, 8])
        self.assertAllClose(layer(x, training=False), layer(x, training=False))
        self.assertIn(0.0, layer(x, training=True).numpy())
        self.assertNotIn(0.0, layer(x, training=False).numpy())

    @parameterized.parameters((0.0, 0), (0.1, 2))
    def test_l2_adds_one_loss_per_kernel(self, l2, losses):
        layer = MLP([4, 2], l2=l2)
        layer(tf.ones([3, 5]))
        self.assertLen(layer.losses, losses)

    def test_config_round_trip(self):
        _assert_config_round_trip(MLP([4, 3], activation="tanh", dropout=0.2, batch_norm=True,
                                      l2=0.01, kernel_initializer="he_normal"), tf.ones([2, 5]))

    def test_rejects_zero_units(self):
        with self.assertRaisesRegex(ValueError, "hidden_units=\\[4, 0\\]"):
            MLP([4, 0])

    @parameterized.parameters(-0.1, 1.0)
    def test_rejects_dropout_out_of_range(self, dropout):
        with self.assertRaisesRegex(ValueError, f"dropout={dropout}"):
            MLP([4], dropout=dropout)

    def test_rejects_negative_l2(self):
        with self.assertRaisesRegex(ValueError, "l2=-0.5"):
            MLP([4], l2=-0.5)
