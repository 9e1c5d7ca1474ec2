"""The CTR model zoo: every family builds from an Architecture, trains, serves and saves."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl.testing import parameterized

from models.architecture import CTR_MODELS, Architecture, ArchitectureError
from models.zoo import (
    LOGIT_LAYER,
    build_ctr_model,
    model_input_names,
    model_input_specs,
)

VOCAB_SIZES = {"user": 20, "item": 10}
# What a family found by its own search needs before it builds (normally written by the search).
SEARCHED = {"autogroup": {"feature_groups": {"1": [["user"], ["item", "age", "price"]],
                                             "2": [["user", "item", "price"]]},
                          "group_dims": {"1": 4, "2": 3}},
            "autoctr": {"autoctr": {"blocks": [
                {"type": "mlp", "inputs": ["sparse", "dense"], "units": [4]},
                {"type": "fm", "inputs": ["sparse", 0], "output": "scalar"},
                {"type": "dot", "inputs": ["sparse"]}]}}}


def _arch(model: str, **kwargs: Any) -> Architecture:
    kwargs = {"hidden_units": [8, 4], "cross_layers": 2, "num_buckets": 5,
              "numeric_encoding": {"price": "bucket"}, **SEARCHED.get(model, {}), **kwargs}
    return Architecture.uniform(model, ["user", "item"], ["age", "price"], VOCAB_SIZES,
                                embedding_dim=4, **kwargs)


def _features(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "user_id": rng.integers(0, VOCAB_SIZES["user"], n),
        "item_id": rng.integers(0, VOCAB_SIZES["item"], n),
        "age_z": rng.normal(size=n).astype(np.float32),
        "age_raw": rng.normal(size=n).astype(np.float32),
        "age_bucket": rng.integers(0, 5, n),
        "price_z": rng.normal(size=n).astype(np.float32),
        "price_raw": rng.normal(size=n).astype(np.float32),
        "price_bucket": rng.integers(0, 5, n),
        "age_missing": (rng.random(n) < 0.3).astype(np.float32),
        "price_missing": (rng.random(n) < 0.3).astype(np.float32),
    }


def _inputs(arch: Architecture, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: features[name] for name in model_input_names(arch)}


class BuildCtrModelTest(tf.test.TestCase, parameterized.TestCase):

    def setUp(self):
        super().setUp()
        keras.utils.set_random_seed(0)

    @parameterized.parameters(*CTR_MODELS)
    def test_trains_and_serves_any_batch_size(self, model_name):
        arch = _arch(model_name, l2=1e-4, dropout=0.1)
        model = build_ctr_model(arch)
        self.assertEqual(model.name, model_name)
        features, labels = _features(64), np.random.default_rng(1).integers(0, 2, 64)
        model.compile(optimizer="adam", loss="binary_crossentropy")
        history = model.fit(_inputs(arch, features), labels.astype(np.float32), batch_size=16,
                            epochs=1, verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][0]))
        for batch_size in (1, 7):
            probabilities = model(_inputs(arch, _features(batch_size, seed=batch_size))).numpy()
            self.assertEqual(probabilities.shape, (batch_size, 1))
            self.assertTrue(np.all((probabilities > 0) & (probabilities < 1)))

    @parameterized.parameters(*CTR_MODELS)
    def test_probability_is_sigmoid_of_logit(self, model_name):
        arch = _arch(model_name)
        model = build_ctr_model(arch)
        logit_model = keras.Model(model.inputs, model.get_layer(LOGIT_LAYER).output)
        inputs = _inputs(arch, _features(5))
        self.assertAllClose(model(inputs), tf.sigmoid(logit_model(inputs)))

    def test_inputs_are_what_the_encodings_need(self):
        arch = _arch("fm")
        self.assertEqual(model_input_names(arch), ["user_id", "item_id", "age_z", "price_bucket"])
        model = build_ctr_model(arch)
        dtypes = {name: tensor.dtype for name, tensor in model.input.items()}
        self.assertEqual(dtypes, {"user_id": tf.int64, "item_id": tf.int64,
                                  "age_z": tf.float32, "price_bucket": tf.int64})
        self.assertEqual(model_input_specs(arch)["age_z"], tf.TensorSpec([None], tf.float32,
                                                                         name="age_z"))

    @parameterized.parameters("lr", "deepfm", "dcn")
    def test_accepts_features_of_shape_b1(self, model_name):
        arch = _arch(model_name)
        model = build_ctr_model(arch)
        inputs = _inputs(arch, _features(3))
        columns = {name: value[:, None] for name, value in inputs.items()}
        self.assertAllClose(model(columns), model(inputs))

    def test_kept_interactions_become_field_index_pairs(self):
        model = build_ctr_model(_arch("fm", kept_interactions=[["item", "price"], ["user", "age"]]))
        self.assertEqual(model.get_layer("fm_interaction").pair_mask, [(1, 3), (0, 2)])

    def test_fm_with_no_kept_interactions_is_lr(self):
        arch = _arch("fm", kept_interactions=[])
        model = build_ctr_model(arch)
        inputs = _inputs(arch, _features(4))
        fm_model = keras.Model(model.inputs, model.get_layer("fm_interaction").output)
        self.assertAllClose(fm_model(inputs), np.zeros([4, 1]))

    @parameterized.parameters("fm", "deepfm")
    def test_fm_models_need_one_embedding_dim(self, model_name):
        arch = _arch(model_name)
        arch.embedding_dims["age"] = 3
        with self.assertRaisesRegex(ArchitectureError, "one embedding dim"):
            build_ctr_model(arch)

    @parameterized.parameters("dnn", "dcn", "lr")
    def test_other_models_take_mixed_embedding_dims(self, model_name):
        arch = _arch(model_name)
        arch.embedding_dims.update(user=6, age=1)
        model = build_ctr_model(arch)
        self.assertEqual(model(_inputs(arch, _features(3))).shape, (3, 1))

    def test_dcn_rejects_negative_cross_layers(self):
        with self.assertRaisesRegex(ArchitectureError, "cross_layers=-1"):
            build_ctr_model(_arch("dcn", cross_layers=-1))

    @parameterized.parameters(
        ("deepfm", {"kept_interactions": [["user", "item"], ["age", "price"]]}), ("dcn", {}))
    def test_saved_model_round_trip(self, model_name, kwargs):
        arch = _arch(model_name, **kwargs)
        model = build_ctr_model(arch)
        inputs = _inputs(arch, _features(6))
        expected = model(inputs).numpy()
        path = os.path.join(self.get_temp_dir(), model_name)
        model.save(path, save_format="tf")

        restored = keras.models.load_model(path)
        self.assertAllClose(restored(inputs), expected, rtol=1e-5, atol=1e-6)
        self.assertEqual(type(restored.get_layer("mlp")).__name__, "MLP")

        serving = tf.saved_model.load(path).signatures["serving_default"]
        outputs = serving(**{name: tf.constant(value) for name, value in inputs.items()})
        self.assertAllClose(outputs["probability"], expected, rtol=1e-5, atol=1e-6)

    def test_deepfm_learns_a_planted_signal(self):
        arch = _arch("deepfm", hidden_units=[16])
        model = build_ctr_model(arch)
        train, test = _features(4000, seed=2), _features(1000, seed=3)

        def label(features: dict[str, np.ndarray], seed: int) -> np.ndarray:
            clicky = features["item_id"] < 3
            return (np.random.default_rng(seed).random(len(clicky))
                    < np.where(clicky, 0.8, 0.2)).astype(np.float32)

        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
        model.fit(_inputs(arch, train), label(train, 4), batch_size=128, epochs=3, verbose=0)
        auc = keras.metrics.AUC()
        auc.update_state(label(test, 5), model.predict(_inputs(arch, test), verbose=0))
        self.assertGreater(float(auc.result()), 0.7)


class NumericMissingTest(tf.test.TestCase, parameterized.TestCase):
    """``numeric_missing`` fields: an absent value gets its own learned embedding and weight."""

    def setUp(self):
        super().setUp()
        keras.utils.set_random_seed(0)

    @parameterized.parameters(*CTR_MODELS)
    def test_absent_value_ignores_its_encoding_and_trains_its_own(self, model_name):
        arch = _arch(model_name, numeric_missing=["price", "age"])
        self.assertEqual(model_input_names(arch)[-2:], ["age_missing", "price_missing"])
        model = build_ctr_model(arch)
        features = _features(8)
        features["price_missing"][:] = 1.0
        changed = dict(features, price_bucket=(features["price_bucket"] + 1) % 5)
        # Where price is absent its bucket (Transform writes 0 there) does not matter.
        self.assertAllClose(model(_inputs(arch, changed)), model(_inputs(arch, features)))
        # Its vectors (one per table set: autogroup has one per order; lr has none) and its
        # first-order weight (in the models with a linear term) are trained.
        missing_weights = [w for w in model.trainable_weights if "price_missing" in w.name]
        expected = {"lr": 1, "dnn": 1, "dcn": 1, "autogroup": 3}.get(model_name, 2)
        self.assertLen(missing_weights, expected)
        labels = np.ones([8, 1], np.float32)
        with tf.GradientTape() as tape:
            loss = keras.losses.binary_crossentropy(labels, model(_inputs(arch, features)))
        grads = tape.gradient(loss, missing_weights)
        self.assertTrue(all(float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads))

    def test_present_values_are_unchanged_by_the_missing_vectors(self):
        plain, with_missing = _arch("deepfm"), _arch("deepfm", numeric_missing=["age"])
        features = _features(6)
        features["age_missing"][:] = 0.0
        keras.utils.set_random_seed(3)
        a = build_ctr_model(plain)
        keras.utils.set_random_seed(3)
        b = build_ctr_model(with_missing)
        for layer in a.layers:  # copy the shared weights by layer name
            if layer.weights and layer.name in {x.name for x in b.layers}:
                target = b.get_layer(layer.name)
                if len(target.weights) == len(layer.weights):
                    target.set_weights(layer.get_weights())
        self.assertAllClose(b(_inputs(with_missing, features)), a(_inputs(plain, features)))

    def test_parameters_and_json_round_trip(self):
        arch = _arch("deepfm", numeric_missing=["age"])
        self.assertEqual(arch.embedding_params(), _arch("deepfm").embedding_params() + 4 + 1)
        self.assertEqual(Architecture.from_json(arch.to_json()).numeric_missing, ["age"])
        with self.assertRaisesRegex(ArchitectureError, "not numerical"):
            _arch("deepfm", numeric_missing=["user"])

    def test_saved_model_round_trip(self):
        arch = _arch("deepfm", numeric_missing=["age", "price"])
        model = build_ctr_model(arch)
        model.get_layer("age_missing_embedding").set_weights([np.full([4], 0.5, np.float32)])
        inputs = _inputs(arch, _features(6))
        expected = model(inputs).numpy()
        path = os.path.join(self.get_temp_dir(), "deepfm_missing")
        model.save(path, save_format="tf")
        restored = keras.models.load_model(path)
        self.assertAllClose(restored(inputs), expected, rtol=1e-5, atol=1e-6)
