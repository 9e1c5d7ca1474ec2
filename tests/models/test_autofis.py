"""AutoFIS: the gated interaction layer, the GRDA optimizer and the search on planted data."""

from __future__ import annotations

import itertools
import os
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from absl.testing import parameterized

from models.architecture import Architecture
from models.layers.autofis import GatedInteraction
from models.optimizers import GRDA
from models.search import SearchContext, SearchError, autofis
from models.zoo import build_ctr_model, model_input_names
from models.zoo.ctr import FM_INTERACTION_LAYER
from tests.models.in_memory import split_datasets
from tests.models.synthetic_search import search_synthetic

EPSILON = 1e-3
# [B=3, F=3, D=2] embeddings with hand-checkable products.
EMBEDDINGS = np.array([[[1.0, 0.0], [2.0, 1.0], [0.0, 3.0]],
                       [[1.0, 1.0], [1.0, -1.0], [2.0, 2.0]],
                       [[0.0, 2.0], [1.0, 1.0], [1.0, 0.0]]], np.float32)


def _products(embeddings: np.ndarray, interaction: tuple[int, ...]) -> np.ndarray:
    return np.prod(embeddings[:, list(interaction), :], axis=1).sum(axis=1)


def _batch_norm(terms: np.ndarray) -> np.ndarray:
    return (terms - terms.mean(axis=0)) / np.sqrt(terms.var(axis=0) + EPSILON)


class GatedInteractionTest(tf.test.TestCase, parameterized.TestCase):

    def test_all_pairs_golden_values_in_training(self):
        layer = GatedInteraction(epsilon=EPSILON)
        out = layer(tf.constant(EMBEDDINGS), training=True)
        pairs = [(0, 1), (0, 2), (1, 2)]
        self.assertEqual(layer.interactions, pairs)
        terms = np.stack([_products(EMBEDDINGS, p) for p in pairs], axis=1)
        # Row 0: <e0,e1> = 2, <e0,e2> = 0, <e1,e2> = 3.
        np.testing.assert_allclose(terms[0], [2.0, 0.0, 3.0])
        expected = 0.6 * _batch_norm(terms).sum(axis=1, keepdims=True)
        self.assertAllClose(out, expected, rtol=1e-5, atol=1e-5)

    def test_kept_pairs_and_triples_golden_values_at_inference(self):
        layer = GatedInteraction(interactions=[(0, 1, 2), (2, 0)], epsilon=EPSILON)
        layer(tf.constant(EMBEDDINGS))
        self.assertEqual(layer.interactions, [(2, 0), (0, 1, 2)])
        layer.gates.assign([0.5, -2.0])
        out = layer(tf.constant(EMBEDDINGS), training=False)
        terms = np.stack([_products(EMBEDDINGS, (2, 0)), _products(EMBEDDINGS, (0, 1, 2))],
                         axis=1)
        # Fresh moving statistics: mean 0, variance 1.
        expected = (terms / np.sqrt(1.0 + EPSILON)) @ np.array([0.5, -2.0])
        self.assertAllClose(out[:, 0], expected, rtol=1e-5)

    def test_third_order_gates_every_triple(self):
        layer = GatedInteraction(third_order=True)
        layer(tf.zeros([2, 4, 3]))
        self.assertLen(layer.interactions, 6 + 4)
        self.assertEqual(layer.interactions[6:], list(itertools.combinations(range(4), 3)))

    def test_derive_keeps_non_zero_gates(self):
        layer = GatedInteraction()
        layer(tf.constant(EMBEDDINGS))
        layer.gates.assign([0.0, -0.1, 0.0])
        self.assertEqual(layer.derive(), [(0, 2)])

    def test_no_interactions_give_zero(self):
        layer = GatedInteraction(interactions=[])
        self.assertAllEqual(layer(tf.constant(EMBEDDINGS)), np.zeros([3, 1]))

    def test_bn_has_no_scale_or_shift(self):
        layer = GatedInteraction()
        layer(tf.constant(EMBEDDINGS))
        self.assertEqual([w.name.split("/")[-1] for w in layer.trainable_weights], ["gates:0"])

    @parameterized.parameters(
        ({"interactions": [(0,)]}, "2 or 3 distinct"),
        ({"interactions": [(1, 1)]}, "2 or 3 distinct"),
        ({"interactions": [(0, -1)]}, "2 or 3 distinct"),
        ({"interactions": [(0, 1), (1, 0)]}, "twice"),
        ({"interactions": [(0, 1)], "third_order": True}, "third_order=True"),
    )
    def test_invalid_arguments(self, kwargs: dict[str, Any], message: str):
        with self.assertRaisesRegex(ValueError, message):
            GatedInteraction(**kwargs)

    def test_invalid_inputs(self):
        with self.assertRaisesRegex(ValueError, "input has 3 fields"):
            GatedInteraction(interactions=[(0, 3)])(tf.constant(EMBEDDINGS))
        with self.assertRaisesRegex(ValueError, r"\[B, F, D\]"):
            GatedInteraction()(tf.zeros([2, 3]))

    def test_config_round_trip(self):
        layer = GatedInteraction(interactions=[(0, 1), (1, 2, 3)], gate_init=0.3,
                                 epsilon=1e-4, momentum=0.9, name="gated")
        config = layer.get_config()
        restored = GatedInteraction.from_config(config)
        self.assertEqual(restored.get_config(), config)
        self.assertEqual(config["interactions"], [[0, 1], [1, 2, 3]])
        self.assertEqual(GatedInteraction(third_order=True).get_config()["third_order"], True)

    @parameterized.parameters("fm", "deepfm")
    def test_ctr_models_share_the_gated_layer_and_save(self, model_name: str):
        arch = Architecture.uniform(model_name, ["user", "item"], ["age"],
                                    {"user": 5, "item": 4}, embedding_dim=3, hidden_units=[4],
                                    kept_interactions=[["user", "age"]],
                                    gated_interactions=True)
        model = build_ctr_model(arch)
        layer = model.get_layer(FM_INTERACTION_LAYER)
        self.assertIsInstance(layer, GatedInteraction)
        self.assertEqual(layer.interactions, [(0, 2)])
        inputs = {"user_id": tf.constant([0, 4, 2], tf.int64),
                  "item_id": tf.constant([1, 3, 0], tf.int64),
                  "age_z": tf.constant([0.5, -1.0, 2.0])}
        self.assertEqual(sorted(inputs), sorted(model_input_names(arch)))
        expected = model(inputs).numpy()
        path = os.path.join(self.get_temp_dir(), model_name)
        model.save(path, save_format="tf")
        restored = keras.models.load_model(path)
        self.assertIsInstance(restored.get_layer(FM_INTERACTION_LAYER), GatedInteraction)
        self.assertAllClose(restored(inputs), expected, rtol=1e-5, atol=1e-6)


class GRDATest(tf.test.TestCase, parameterized.TestCase):

    def test_matches_hand_computed_steps(self):
        gate = tf.Variable([0.6, 0.6, -0.2])
        opt = GRDA(learning_rate=0.5, c=0.4, mu=0.5)
        grads = [np.array([-0.2, 0.0, 0.1]), np.array([0.4, 0.0, 0.0]),
                 np.array([-0.2, 0.2, 0.0])]
        accumulator = np.zeros(3)
        theta = np.array([0.6, 0.6, -0.2])
        for t, grad in enumerate(grads):
            accumulator = accumulator + (theta if t == 0 else 0.0) - 0.5 * grad
            threshold = 0.4 * 0.5 ** (0.5 + 0.5) * t ** 0.5
            theta = np.sign(accumulator) * np.maximum(np.abs(accumulator) - threshold, 0.0)
            opt.apply_gradients([(tf.constant(grad, tf.float32), gate)])
            self.assertAllClose(gate, theta, atol=1e-6)
        # t = 2: v = [0.6, 0.5, -0.25], l1 = 0.2 * sqrt(2) = 0.283.
        self.assertAllClose(gate, [0.6 - 0.2 * np.sqrt(2), 0.5 - 0.2 * np.sqrt(2), 0.0],
                            atol=1e-6)

    def test_drives_unhelpful_weights_to_exact_zero(self):
        target = tf.constant([1.5, -1.0, 0.0, 0.0, 0.0])
        weights = tf.Variable(tf.fill([5], 0.6))
        opt = GRDA(learning_rate=0.1, c=0.02, mu=0.6)
        for _ in range(300):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(weights - target))
            opt.apply_gradients([(tape.gradient(loss, weights), weights)])
        values = weights.numpy()
        self.assertAllEqual(values[2:] == 0.0, [True, True, True])
        self.assertGreater(values[0], 1.0)
        self.assertLess(values[1], -0.5)

    def test_config_round_trip(self):
        opt = GRDA(learning_rate=0.7, c=0.0005, mu=0.8, name="gates_grda")
        config = opt.get_config()
        restored = GRDA.from_config(config)
        self.assertEqual((restored.c, restored.mu, restored.name), (0.0005, 0.8, "gates_grda"))
        self.assertAllClose(restored.learning_rate, 0.7)

    @parameterized.parameters(({"c": -0.1}, "c=-0.1"), ({"mu": 1.0}, "mu=1.0"),
                              ({"learning_rate": 0.0}, "learning_rate=0.0"))
    def test_invalid_arguments(self, kwargs: dict[str, Any], message: str):
        with self.assertRaisesRegex(ValueError, message):
            GRDA(**kwargs)


def _context(options: dict[str, Any], **kwargs: Any) -> SearchContext:
    arch = Architecture.uniform("fm", ["a", "b"], [], {"a": 3, "b": 3}, embedding_dim=2)
    return SearchContext(arch=arch, dataset=lambda *_: None, learning_rate=1e-3,
                         batch_size=8, max_epochs=1, patience=1, seed=0, options=options,
                         **kwargs)


class SearchSettingsTest(tf.test.TestCase):

    def test_model_defaults_and_unknown_options(self):
        self.assertEqual(autofis.settings(_context({}))["mu"], 0.6)
        self.assertEqual(autofis.settings(_context({"mu": 0.7}))["mu"], 0.7)
        with self.assertRaisesRegex(SearchError, "unknown options"):
            autofis.settings(_context({"alpha": 1}))
        with self.assertRaisesRegex(SearchError, "epochs=0"):
            autofis.settings(_context({"epochs": 0}))


class SearchOnTinyDataTest(tf.test.TestCase):

    def test_search_records_gates_and_draws_them(self):
        rng = np.random.default_rng(0)
        ids = {f"{f}_id": rng.integers(0, 4, 512) for f in "abc"}
        labels = ((ids["a_id"] + ids["b_id"]) % 2).astype(np.float32)[:, None]

        dataset = split_datasets({"train": (ids, labels), "eval": (ids, labels)}, 128)

        arch = Architecture.uniform("fm", list("abc"), [], dict.fromkeys("abc", 4),
                                    embedding_dim=3, search={"strategy": "none"})
        report_dir = self.get_temp_dir()
        ctx = SearchContext(arch=arch, dataset=dataset, learning_rate=1e-3, batch_size=128,
                            max_epochs=1, patience=1, seed=0, options={"batch_size": 64},
                            report_dir=report_dir)
        searched = autofis.search(ctx)
        record = searched.search["autofis"]
        self.assertTrue(searched.gated_interactions)
        self.assertEqual(sorted(record["gates"]), ["a,b", "a,c", "b,c"])
        self.assertEqual(record["kept"], len(searched.kept_interactions))
        self.assertEqual(record["steps"], 8)
        self.assertEqual(searched.kept_interactions,
                         [p.split(",") for p, g in record["gates"].items() if g != 0.0])
        self.assertNotIn("autofis", arch.search)
        self.assertTrue(os.path.exists(os.path.join(report_dir, autofis.GATES_PICTURE)))
        model = build_ctr_model(searched)
        autofis.report_trained(searched, model, report_dir)
        self.assertTrue(os.path.exists(os.path.join(report_dir,
                                                    autofis.RETRAINED_GATES_PICTURE)))

    def test_search_refuses_a_single_field(self):
        ids = {"a_id": np.arange(64) % 4}
        labels = (ids["a_id"] % 2).astype(np.float32)[:, None]

        dataset = split_datasets({"train": (ids, labels), "eval": (ids, labels)}, 32)

        arch = Architecture.uniform("fm", ["a"], [], {"a": 4}, embedding_dim=2)
        ctx = SearchContext(arch=arch, dataset=dataset, learning_rate=1e-3, batch_size=32,
                            max_epochs=1, patience=1, seed=0)
        message = "autofis selects pairs of fields.*two fields. Received: fields=\\['a'\\]"
        with self.assertRaisesRegex(SearchError, message):
            autofis.search(ctx)


@pytest.mark.slow
def test_search_keeps_the_planted_pairs_of_synthetic(tmp_path):
    arch, data = search_synthetic(tmp_path, "fm+autofis")
    planted = data.dataset.metadata["ground_truth"]["interactions"]
    kept = {frozenset(pair) for pair in arch.kept_interactions}
    found = sum(frozenset(pair) in kept for pair in planted)
    report = arch.search["autofis"]
    assert arch.gated_interactions
    assert found / len(planted) >= 0.8, (arch.kept_interactions, report["gates"])
    assert report["total"] == 45 and report["kept"] <= 0.5 * report["total"], report["gates"]
    assert (tmp_path / "report" / autofis.GATES_PICTURE).stat().st_size > 1000
