"""AutoGroup: the feature-set interaction layer, the autogroup model and its search."""

from __future__ import annotations

import dataclasses
import os
from typing import Any
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from absl.testing import parameterized

import models.search as search_module
from models.architecture import Architecture, ArchitectureError
from models.layers.autogroup import FeatureGroupInteraction
from models.search import SearchContext, SearchError, autogroup
from models.zoo import build_ctr_model, model_input_names
from models.zoo.autogroup import order_layer_name
from tests.models.in_memory import split_datasets
from tests.models.synthetic_search import search_synthetic

# [B=2, F=3, D=2] embeddings with hand-checkable products.
EMBEDDINGS = np.array([[[1.0, 2.0], [3.0, 0.0], [0.0, 1.0]],
                       [[2.0, -1.0], [1.0, 1.0], [-1.0, 2.0]]], np.float32)


def _fixed(order: int, groups: list[list[int]], weights: np.ndarray, **kwargs: Any
           ) -> FeatureGroupInteraction:
    layer = FeatureGroupInteraction(order, groups=groups, batch_norm=False, **kwargs)
    layer(tf.constant(EMBEDDINGS))
    layer.group_weights.assign(weights)
    return layer


class FeatureGroupInteractionTest(tf.test.TestCase, parameterized.TestCase):

    def test_order_two_is_a_weighted_fm_inside_each_set(self):
        weights = np.array([[1.0, 0.0], [2.0, 1.0], [5.0, -1.0]], np.float32)
        layer = _fixed(2, [[0, 1], [0, 1, 2]], weights)
        out = layer(tf.constant(EMBEDDINGS)).numpy()
        # Row 0, set {0, 1}: g = 1*(1, 2) + 2*(3, 0) = (7, 2); g^2 - sum (w e)^2 =
        # (49 + 4) - (1 + 4) - (36 + 0) = 12 = 2 * 1 * 2 * <e0, e1> = 4 * 3.
        self.assertAllClose(out[0, 0], 12.0)
        # Set {0, 1, 2} with weights (0, 1, -1): 2 * (1)(-1) <e1, e2> = 0 in row 0,
        # and -2 <(1, 1), (-1, 2)> = -2 in row 1.
        self.assertAllClose(out[:, 1], [0.0, -2.0])
        for row in range(2):  # the general identity: 2 sum_{i<k} w_i w_k <e_i, e_k>
            e = EMBEDDINGS[row]
            expected = 2 * sum(weights[i, 0] * weights[k, 0] * e[i] @ e[k]
                               for i, k in [(0, 1)])
            self.assertAllClose(out[row, 0], expected)

    def test_order_three_golden_values_and_compensation(self):
        weights = np.ones([3, 1], np.float32)
        full = _fixed(3, [[0, 1, 2]], weights)(tf.constant(EMBEDDINGS)).numpy()
        none = _fixed(3, [[0, 1, 2]], weights, compensation=0.0)(
            tf.constant(EMBEDDINGS)).numpy()
        # Row 0: g = (4, 3); sum g^3 = 64 + 27 = 91; sum e^3 = (1 + 27 + 0) + (8 + 0 + 1) = 37.
        self.assertAllClose(full[0, 0], 91.0 - 37.0)
        self.assertAllClose(none[0, 0], 91.0)

    def test_order_one_outputs_the_set_vectors(self):
        weights = np.array([[1.0, 0.0], [1.0, 2.0], [0.0, 1.0]], np.float32)
        out = _fixed(1, [[0, 1], [1, 2]], weights)(tf.constant(EMBEDDINGS)).numpy()
        # Row 0: set 0 = e0 + e1 = (4, 2); set 1 = 2 e1 + e2 = (6, 1); side by side.
        self.assertAllClose(out[0], [4.0, 2.0, 6.0, 1.0])

    def test_non_members_do_not_count(self):
        weights = np.full([3, 1], 3.0, np.float32)
        out = _fixed(2, [[0, 2]], weights)(tf.constant(EMBEDDINGS)).numpy()
        self.assertAllClose(out[:, 0], 2 * 9.0 * np.sum(EMBEDDINGS[:, 0] * EMBEDDINGS[:, 2], 1))

    def test_batch_norm_has_no_scale_or_shift(self):
        layer = FeatureGroupInteraction(2, groups=[[0, 1]])
        layer(tf.constant(EMBEDDINGS), training=True)
        self.assertEqual([w.name.split("/")[-1] for w in layer.trainable_weights],
                         ["group_weights:0"])

    def test_searching_membership_is_hard_and_derived_from_the_logits(self):
        layer = FeatureGroupInteraction(2, num_groups=2)
        layer(tf.constant(EMBEDDINGS))
        logits = np.zeros([3, 2, 2], np.float32)
        logits[[0, 2], 0, 0] = 1.0  # fields 0 and 2 in set 0, field 1 out
        logits[1, 0, 1] = 1.0
        logits[:, 1, 1] = 1.0  # set 1 empty
        layer.structure_logits.assign(logits)
        self.assertEqual(layer.derive(), [[0, 2], []])
        self.assertAllEqual(layer.membership(), [[1, 0], [0, 0], [1, 0]])
        layer.noise_scale.assign(1.0)
        sampled = layer.membership().numpy()
        self.assertTrue(np.all((sampled == 0) | (sampled == 1)))

    def test_straight_through_gradient_reaches_the_logits(self):
        layer = FeatureGroupInteraction(2, num_groups=3, batch_norm=False)
        with tf.GradientTape() as tape:
            out = layer(tf.constant(EMBEDDINGS), training=True)
            loss = tf.reduce_sum(out)
        grad = tape.gradient(loss, layer.structure_logits)
        self.assertIsNotNone(grad)
        self.assertGreater(float(tf.reduce_max(tf.abs(grad))), 0.0)

    @parameterized.parameters(
        ({"order": 0, "num_groups": 2}, "order=0"),
        ({"order": 2}, "exactly one"),
        ({"order": 2, "num_groups": 2, "groups": [[0, 1]]}, "exactly one"),
        ({"order": 2, "num_groups": 0}, "num_groups=0"),
        ({"order": 2, "groups": [[0]]}, "at least 2"),
        ({"order": 1, "groups": [[1, 1]]}, "distinct"),
        ({"order": 1, "groups": []}, "at least one set"),
        ({"order": 2, "num_groups": 2, "temperature": 0.0}, "temperature=0.0"),
        ({"order": 2, "num_groups": 2, "compensation": 2.0}, "compensation=2.0"),
    )
    def test_invalid_arguments(self, kwargs: dict[str, Any], message: str):
        with self.assertRaisesRegex(ValueError, message):
            FeatureGroupInteraction(**kwargs)

    def test_invalid_inputs(self):
        with self.assertRaisesRegex(ValueError, "input has 3 fields"):
            FeatureGroupInteraction(2, groups=[[0, 3]])(tf.constant(EMBEDDINGS))
        with self.assertRaisesRegex(ValueError, r"\[B, F, D\]"):
            FeatureGroupInteraction(2, num_groups=2)(tf.zeros([2, 3]))

    @parameterized.parameters(({"num_groups": 4},), ({"groups": [[0, 1], [1, 2, 3]]},))
    def test_config_round_trip(self, mode: dict[str, Any]):
        layer = FeatureGroupInteraction(3, **mode, temperature=0.5, compensation=0.01,
                                        batch_norm=False, momentum=0.8, epsilon=1e-4,
                                        name="groups")
        config = layer.get_config()
        restored = FeatureGroupInteraction.from_config(config)
        self.assertEqual(restored.get_config(), config)
        self.assertEqual(restored.searching, "num_groups" in mode)


def _arch(**kwargs: Any) -> Architecture:
    return Architecture.uniform("autogroup", ["user", "item"], ["age"],
                                {"user": 5, "item": 4}, embedding_dim=3, hidden_units=[4],
                                **kwargs)


GROUPS = {"1": [["user"], ["item", "age"]], "2": [["user", "item"]],
          "3": [["user", "item", "age"]]}
DIMS = {"1": 2, "2": 3, "3": 4}
INPUTS = {"user_id": tf.constant([0, 4, 2], tf.int64), "item_id": tf.constant([1, 3, 0], tf.int64),
          "age_z": tf.constant([0.5, -1.0, 2.0])}


class AutoGroupModelTest(tf.test.TestCase, parameterized.TestCase):

    def test_model_from_fixed_groups_builds_saves_and_counts_its_tables(self):
        arch = _arch(feature_groups=GROUPS, group_dims=DIMS)
        model = build_ctr_model(arch)
        self.assertEqual(sorted(INPUTS), sorted(model_input_names(arch)))
        self.assertEqual(model.get_layer(order_layer_name("1")).groups, [[0], [1, 2]])
        self.assertEqual(model.get_layer(order_layer_name("2")).groups, [[0, 1]])
        # Per order, a table per used field (age: a field vector), plus the LR scalars.
        expected = (5 + 4 + 1) * 2 + (5 + 4) * 3 + (5 + 4 + 1) * 4 + (5 + 4 + 1)
        self.assertEqual(arch.embedding_params(), expected)
        tables = sum(int(np.prod(w.shape)) for w in model.weights
                     if "embedding" in w.name or "field_vector" in w.name)
        self.assertEqual(tables, expected)
        expected_out = model(INPUTS).numpy()
        path = os.path.join(self.get_temp_dir(), "autogroup")
        model.save(path, save_format="tf")
        restored = keras.models.load_model(path)
        self.assertIsInstance(restored.get_layer(order_layer_name("3")), FeatureGroupInteraction)
        self.assertAllClose(restored(INPUTS), expected_out, rtol=1e-5, atol=1e-6)
        self.assertEqual(Architecture.from_json(arch.to_json()), arch)

    def test_group_logit_adds_the_set_interactions_linearly(self):
        plain = build_ctr_model(_arch(feature_groups=GROUPS, group_dims=DIMS))
        arch = _arch(feature_groups=GROUPS, group_dims=DIMS, group_logit=True)
        model = build_ctr_model(arch)
        layer = model.get_layer("group_logit")
        self.assertEqual(tuple(layer.kernel.shape), (2, 1))  # one order-2 set, one order-3 set
        self.assertAllEqual(layer.kernel, tf.zeros([2, 1]))  # starts as the plain model
        self.assertEqual(len(model.weights), len(plain.weights) + 1)
        # The logit moves by exactly v^T [I2, I3] of the sets.
        logit = keras.Model(model.inputs, model.get_layer("logit").output)
        before = logit(INPUTS).numpy()
        layer.kernel.assign([[1.0], [2.0]])
        terms = keras.Model(model.inputs, [model.get_layer(order_layer_name(p)).output
                                           for p in ("2", "3")])(INPUTS)
        expected = before + terms[0].numpy() + 2.0 * terms[1].numpy()
        self.assertAllClose(logit(INPUTS), expected, rtol=1e-5, atol=1e-5)
        self.assertTrue(Architecture.from_json(arch.to_json()).group_logit)
        with self.assertRaisesRegex(ArchitectureError, "group_logit applies to model "
                                                       "'autogroup' only"):
            Architecture.uniform("fm", ["user"], [], {"user": 5}, embedding_dim=3,
                                 group_logit=True)

    def test_without_groups_it_constructs_but_does_not_build(self):
        arch = _arch()
        with self.assertRaisesRegex(ArchitectureError, "feature_groups"):
            build_ctr_model(arch)

    @parameterized.parameters(
        ({"feature_groups": {"2": [["user"]]}, "group_dims": {"2": 3}}, "at least 2"),
        ({"feature_groups": {"1": [["nope"]]}, "group_dims": {"1": 3}}, "known fields"),
        ({"feature_groups": {"x": [["user"]]}, "group_dims": {"x": 3}}, "keys are orders"),
        ({"feature_groups": {"1": [["user"]]}, "group_dims": {}}, "group_dims"),
        ({"feature_groups": {"1": [["user"]]}, "group_dims": {"1": 0}}, "group_dims"),
        ({"feature_groups": {"1": []}, "group_dims": {"1": 2}}, "no set"),
    )
    def test_invalid_architecture(self, kwargs: dict[str, Any], message: str):
        with self.assertRaisesRegex(ArchitectureError, message):
            _arch(**kwargs)

    def test_groups_belong_to_the_autogroup_family(self):
        with self.assertRaisesRegex(ArchitectureError, "feature_groups"):
            Architecture.uniform("fm", ["user"], [], {"user": 5}, embedding_dim=3,
                                 feature_groups={"1": [["user"]]}, group_dims={"1": 3})


def _context(options: dict[str, Any], **kwargs: Any) -> SearchContext:
    return SearchContext(arch=_arch(), dataset=lambda *_: None, learning_rate=1e-3,
                         batch_size=8, max_epochs=1, patience=1, seed=0, options=options,
                         **kwargs)


class SearchTest(tf.test.TestCase):

    def test_settings_defaults_and_errors(self):
        values = autogroup.settings(_context({}))
        self.assertEqual(values["num_groups"], [2, 3, 3])
        self.assertEqual(values["embedding_dims"], [3, 3, 3])
        self.assertEqual(autogroup.settings(_context({"max_order": 2}))["num_groups"], [2, 3])
        for options, message in (({"alpha": 1}, "unknown options"), ({"epochs": 0}, "epochs=0"),
                                 ({"num_groups": [2, 2]}, "num_groups"),
                                 ({"final_temperature": 0}, "final_temperature=0")):
            with self.assertRaisesRegex(SearchError, message):
                autogroup.settings(_context(options))

    def test_search_on_tiny_data_writes_buildable_groups_and_pictures(self):
        rng = np.random.default_rng(0)
        features = {"user_id": rng.integers(0, 5, 256), "item_id": rng.integers(0, 4, 256),
                    "age_z": rng.normal(size=256).astype(np.float32)}
        labels = ((features["user_id"] + features["item_id"]) % 2).astype(np.float32)[:, None]

        dataset = split_datasets({"train": (features, labels), "eval": (features, labels)}, 128)

        report_dir = self.get_temp_dir()
        ctx = SearchContext(arch=_arch(), dataset=dataset, learning_rate=1e-2, batch_size=128,
                            max_epochs=1, patience=1, seed=0,
                            options={"epochs": 1, "batch_size": 64}, report_dir=report_dir)
        searched = autogroup.search(ctx)
        record = searched.search["autogroup"]
        self.assertEqual(record["steps"], 4)
        # Every finalist was retrained on validation; the architecture holds the chosen one.
        self.assertEqual([f["sets"] for f in record["finalists"]],
                         ["searched", "baseline", "baseline_linear"])
        scores = {f["sets"]: f["retrained_val_auc"] for f in record["finalists"]}
        best_plain = max(("baseline", "baseline_linear"), key=lambda k: scores[k])
        self.assertEqual(record["chosen"], "searched" if scores["searched"] > scores[best_plain]
                         else best_plain)
        self.assertEqual(searched.feature_groups, record["groups"] if record["chosen"] == "searched"
                         else autogroup.baseline_groups(ctx.arch.fields, ["1", "2", "3"]))
        self.assertEqual(searched.hidden_units,
                         [] if record["chosen"] == "baseline_linear" else [4])
        self.assertEqual(searched.group_dims, {"1": 3, "2": 3, "3": 3})
        self.assertTrue(searched.group_logit)  # the default, written for the retrain
        self.assertEqual([len(record["membership"][p][0]) for p in "123"], [2, 3, 3])
        self.assertNotIn("autogroup", ctx.arch.search)
        self.assertTrue(os.path.exists(os.path.join(report_dir, autogroup.GROUPS_PICTURE)))
        model = build_ctr_model(searched)
        self.assertEqual(model(INPUTS).shape, (3, 1))
        autogroup.report_trained(searched, model, report_dir)
        self.assertTrue(os.path.exists(os.path.join(report_dir, autogroup.RETRAINED_PICTURE)))


    def test_found_sets_must_beat_the_baseline_sets_on_validation(self):
        features = {"user_id": np.arange(64) % 5, "item_id": np.arange(64) % 4,
                    "age_z": np.linspace(-1, 1, 64).astype(np.float32)}
        labels = (np.arange(64) % 2).astype(np.float32)[:, None]

        dataset = split_datasets({"train": (features, labels), "eval": (features, labels)}, 32)

        baseline = autogroup.baseline_groups(_arch().fields, ["1", "2", "3"])
        for searched_auc, baseline_auc, linear_auc, chosen in (
                (0.71, 0.70, 0.70, "searched"), (0.70, 0.70, 0.69, "baseline"),
                (0.69, 0.70, 0.70, "baseline"), (0.71, 0.70, 0.72, "baseline_linear")):
            def scored(ctx: SearchContext, arch: Any, s=searched_auc, b=baseline_auc,
                       lin=linear_auc):
                if arch.feature_groups != baseline:
                    return s, 1
                return (b if arch.hidden_units else lin), 1

            ctx = SearchContext(arch=_arch(), dataset=dataset, learning_rate=1e-2,
                                batch_size=32, max_epochs=1, patience=1, seed=0,
                                options={"epochs": 1, "batch_size": 32})
            with mock.patch.object(search_module, "retrain_val_auc", scored):
                searched = autogroup.search(ctx)
            record = searched.search["autogroup"]
            self.assertEqual(record["chosen"], chosen)
            self.assertEqual(searched.feature_groups,
                             record["groups"] if chosen == "searched" else baseline)
            self.assertEqual(searched.hidden_units,
                             [] if chosen == "baseline_linear" else _arch().hidden_units)
            self.assertEqual([(f["sets"], f["retrained_val_auc"]) for f in record["finalists"]],
                             [("searched", searched_auc), ("baseline", baseline_auc),
                              ("baseline_linear", linear_auc)])
        with mock.patch.object(search_module, "retrain_val_auc", scored):
            linear_only = dataclasses.replace(ctx, options={
                "epochs": 1, "batch_size": 32, "baseline_finalist": False})
            record = autogroup.search(linear_only).search["autogroup"]
        self.assertEqual([f["sets"] for f in record["finalists"]],
                         ["searched", "baseline_linear"])
        off = autogroup.search(dataclasses.replace(ctx, options={
            "epochs": 1, "batch_size": 32, "baseline_finalist": False,
            "linear_finalist": False, "group_logit": False}))
        self.assertNotIn("chosen", off.search["autogroup"])
        self.assertFalse(off.group_logit)
        self.assertEqual(off.feature_groups, off.search["autogroup"]["groups"])
        with self.assertRaisesRegex(SearchError, "baseline_finalist"):
            autogroup.settings(_context({"baseline_finalist": "yes"}))
        with self.assertRaisesRegex(SearchError, "linear_finalist=1"):
            autogroup.settings(_context({"linear_finalist": 1}))


@pytest.mark.slow
def test_search_puts_planted_fields_in_more_sets_than_noise_fields(tmp_path):
    from pipeline.datasets.synthetic import INFORMATIVE, NOISE  # noqa: PLC0415

    arch, _ = search_synthetic(tmp_path, "autogroup")
    # Sets holding each field, summed over the orders: the planted fields (main effects and
    # pairs) must be in more sets than the noise fields. Order 2 alone does not separate them
    # reliably (README, "AutoGroup").
    counts = arch.search["autogroup"]["field_counts"]
    planted = np.mean([sum(counts[p][f] for p in counts) for f in INFORMATIVE])
    noise = np.mean([sum(counts[p][f] for p in counts) for f in NOISE])
    assert planted > noise, counts
    assert (tmp_path / "report" / autogroup.GROUPS_PICTURE).stat().st_size > 1000
