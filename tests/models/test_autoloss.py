"""AutoLoss: candidate losses, controller, Gumbel-softmax, the retrain loss and the search."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from absl.testing import parameterized

from models.architecture import Architecture, ArchitectureError
from models.losses import autoloss, describe_loss, training_loss
from models.search import METHODS, SearchContext, SearchError, check_applies
from models.search import autoloss as autoloss_search
from models.zoo import build_ctr_model, model_input_names
from tests.models.in_memory import split_datasets

LABELS = np.array([1.0, 0.0, 1.0, 0.0, 1.0], np.float32)
PROBS = np.array([0.8, 0.8, 0.5, 0.1, 0.01], np.float32)


def _expected_losses(y: np.ndarray, p: np.ndarray, gamma: float = 2.0) -> np.ndarray:
    p_t = np.where(y == 1, p, 1 - p)
    z = np.log(p / (1 - p))
    s = 2 * y - 1
    return np.stack([-np.log(p_t), (y - p) ** 2, np.maximum(0, 1 - s * z) ** 2,
                     -((1 - p_t) ** gamma) * np.log(p_t)], axis=1)


class CandidateLossesTest(tf.test.TestCase):

    def test_golden_values_per_example(self):
        out = autoloss.candidate_losses(LABELS[:, None], PROBS[:, None]).numpy()
        self.assertEqual(out.shape, (5, 4))
        # Hand values: y=1, p=0.8 -> logloss -ln 0.8, mse 0.04, hinge 0 (z = ln 4 > 1),
        # focal 0.2^2 (-ln 0.8); y=0, p=0.8 -> -ln 0.2, 0.64, (1 + ln 4)^2, 0.8^2 (-ln 0.2).
        self.assertAllClose(out[0], [0.2231435, 0.04, 0.0, 0.0089257], atol=1e-6)
        self.assertAllClose(out[1], [1.6094379, 0.64, 5.6944008, 1.0300403], atol=1e-5)
        self.assertAllClose(out[2], [np.log(2), 0.25, 1.0, 0.25 * np.log(2)], atol=1e-6)
        self.assertAllClose(out, _expected_losses(LABELS, PROBS), rtol=1e-5, atol=1e-6)

    def test_subset_order_and_focal_gamma(self):
        out = autoloss.candidate_losses(LABELS, PROBS, ["focal", "mse"], focal_gamma=0.0)
        self.assertAllClose(out[:, 0], -np.log(np.where(LABELS == 1, PROBS, 1 - PROBS)),
                            rtol=1e-6)
        self.assertAllClose(out[:, 1], (LABELS - PROBS) ** 2, rtol=1e-6)

    def test_slopes_are_the_logit_derivatives(self):
        z = tf.constant(np.log(PROBS / (1 - PROBS)))
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(z)
            out = autoloss.candidate_losses(LABELS, tf.sigmoid(z), focal_gamma=1.5)
            columns = tf.unstack(out, axis=1)
        expected = np.stack([np.abs(tape.gradient(c, z).numpy()) for c in columns], axis=1)
        slopes = autoloss.candidate_slopes(LABELS, PROBS, focal_gamma=1.5).numpy()
        self.assertAllClose(slopes, expected, rtol=1e-4, atol=1e-6)
        self.assertAllClose(slopes[:, 0], np.abs(LABELS - PROBS), rtol=1e-5)

    def test_all_logloss_weights_give_logloss(self):
        controller = autoloss.LossController(4, [])
        controller.build((None, 3))
        controller.set_weights([np.zeros((3, 4)), np.array([30.0, 0.0, 0.0, 0.0])])
        loss = autoloss.AutoLossMix(autoloss.spec_from_controller(
            controller, autoloss.CANDIDATES, normalize=True))
        bce = keras.losses.BinaryCrossentropy()
        self.assertAllClose(loss(LABELS[:, None], PROBS[:, None]),
                            bce(LABELS[:, None], PROBS[:, None]), rtol=1e-5)

    def test_saturated_predictions_stay_finite(self):
        out = autoloss.candidate_losses(np.array([1.0, 0.0]), np.array([0.0, 0.0]))
        self.assertTrue(np.all(np.isfinite(out.numpy())))


class GumbelSoftmaxTest(tf.test.TestCase):

    def test_temperature_moves_from_one_hot_to_uniform(self):
        log_probs = tf.math.log(tf.constant([[0.1, 0.2, 0.3, 0.4]]))
        uniform = tf.constant([[0.3, 0.6, 0.5, 0.2]])
        gumbel = -np.log(-np.log(uniform.numpy()))
        winner = int(np.argmax(np.log([0.1, 0.2, 0.3, 0.4]) + gumbel))
        cold = autoloss.gumbel_softmax(log_probs, 0.01, uniform).numpy()
        self.assertAllClose(cold[0], np.eye(4)[winner], atol=1e-4)
        hot = autoloss.gumbel_softmax(log_probs, 1000.0, uniform).numpy()
        self.assertAllClose(hot[0], np.full(4, 0.25), atol=1e-2)
        mid = autoloss.gumbel_softmax(log_probs, 1.0, uniform).numpy()
        expected = np.exp(np.log([0.1, 0.2, 0.3, 0.4]) + gumbel)
        self.assertAllClose(mid[0], expected[0] / expected.sum(), rtol=1e-5)

    def test_samples_follow_the_probabilities(self):
        tf.random.set_seed(0)
        log_probs = tf.math.log(tf.tile([[0.1, 0.6, 0.3]], [20000, 1]))
        choices = np.argmax(autoloss.gumbel_softmax(log_probs, 0.1).numpy(), axis=1)
        self.assertAllClose(np.bincount(choices, minlength=3) / 20000, [0.1, 0.6, 0.3],
                            atol=0.02)


class LossControllerTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters(([16],), ([],), ([8, 4],))
    def test_probabilities_sum_to_one(self, hidden_units: list[int]):
        controller = autoloss.LossController(4, hidden_units)
        rng = np.random.default_rng(0)
        controller.build((None, 3))
        controller.set_weights([rng.normal(size=w.shape) for w in controller.get_weights()])
        probs = controller(tf.constant(rng.normal(size=(7, 3)), tf.float32)).numpy()
        self.assertEqual(probs.shape, (7, 4))
        self.assertAllClose(probs.sum(axis=1), np.ones(7), atol=1e-6)
        self.assertTrue(np.all(probs > 0))

    def test_starts_uniform(self):
        probs = autoloss.LossController(4)(tf.random.normal([3, 3]))
        self.assertAllClose(probs, np.full((3, 4), 0.25))

    def test_config_round_trip(self):
        controller = autoloss.LossController(3, [5, 2], activation="relu", name="ctrl")
        config = controller.get_config()
        restored = autoloss.LossController.from_config(config)
        self.assertEqual(restored.get_config(), config)
        self.assertEqual((config["num_losses"], config["hidden_units"]), (3, [5, 2]))

    @parameterized.parameters(({"num_losses": 1}, "num_losses=1"),
                              ({"hidden_units": [0]}, "hidden_units=\\[0\\]"))
    def test_invalid_arguments(self, kwargs: dict[str, Any], message: str):
        with self.assertRaisesRegex(ValueError, message):
            autoloss.LossController(**kwargs)

    def test_invalid_input(self):
        with self.assertRaisesRegex(ValueError, "\\[y, p, c\\]"):
            autoloss.LossController()(tf.zeros([2, 2]))


def _trained_spec(**overrides: Any) -> dict[str, Any]:
    controller = autoloss.LossController(4, [6])
    controller.build((None, 3))
    rng = np.random.default_rng(1)
    controller.set_weights([rng.normal(size=w.shape) for w in controller.get_weights()])
    return autoloss.spec_from_controller(controller, autoloss.CANDIDATES, **overrides)


class AutoLossMixTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters(False, True)
    def test_expected_mix_is_the_controllers_weighted_sum(self, normalize: bool):
        spec = _trained_spec(normalize=normalize)
        loss = autoloss.AutoLossMix(spec)
        y, p = LABELS[:, None], PROBS[:, None]
        per_example = _expected_losses(LABELS, PROBS)
        logloss = per_example[:, 0]
        signal = np.clip(np.log(logloss + 1e-7) - np.log(logloss.mean() + 1e-7), -5, 5)
        probs = loss.controller(np.stack([LABELS, PROBS, signal], axis=1)).numpy()
        slopes = autoloss.candidate_slopes(y, p).numpy()
        scale = slopes[:, 0].mean() / (probs * slopes).sum(axis=1).mean() if normalize else 1.0
        self.assertAllClose(loss(y, p), scale * (probs * per_example).sum(axis=1).mean(),
                            rtol=1e-5)
        # The running logloss starts at the first batch's mean and moves by 1 - momentum.
        self.assertAllClose(loss.average, logloss.mean(), rtol=1e-5)
        loss(y[:2], p[:2])
        self.assertAllClose(loss.average, 0.9 * logloss.mean() + 0.1 * logloss[:2].mean(),
                            rtol=1e-5)

    def test_sampled_mix_is_a_convex_combination(self):
        loss = autoloss.AutoLossMix(_trained_spec(sample=True, temperature=0.5))
        value = float(loss(LABELS[:, None], PROBS[:, None]))
        per_example = _expected_losses(LABELS, PROBS)
        self.assertBetween(value, per_example.min(axis=1).mean(),
                           per_example.max(axis=1).mean())

    def test_spec_round_trips_through_architecture_json(self):
        spec = _trained_spec(temperature=0.5)
        arch = Architecture.uniform("deepfm", ["a"], [], {"a": 3}, embedding_dim=2, loss=spec)
        restored = Architecture.from_json(arch.to_json())
        self.assertEqual(restored.loss, json.loads(json.dumps(spec)))
        original, rebuilt = autoloss.keras_loss(spec), training_loss(restored.loss)
        self.assertIsInstance(rebuilt, autoloss.AutoLossMix)
        self.assertAllClose(rebuilt(LABELS, PROBS), original(LABELS, PROBS), rtol=1e-6)
        self.assertEqual(describe_loss(restored.loss),
                         "autoloss(logloss, mse, squared_hinge, focal; controller 3-6-4, "
                         "expected mix)")
        config = rebuilt.get_config()
        self.assertEqual(autoloss.AutoLossMix.from_config(config).get_config(), config)

    @parameterized.parameters(
        ({"candidates": ["logloss"]}, "candidates"),
        ({"candidates": ["logloss", "hinge"]}, "candidates"),
        ({"temperature": 0.0}, "temperature=0.0"),
        ({"momentum": 1.0}, "momentum=1.0"),
        ({"focal_gamma": -1.0}, "focal_gamma=-1.0"),
        ({"sample": "yes"}, "sample='yes'"),
        ({"normalize": 1}, "normalize=1"),
        ({"tau": 1.0}, "unknown autoloss keys \\['tau'\\]"),
        ({"weights": [[1.0]]}, "weights do not fit"),
    )
    def test_bad_specs(self, overrides: dict[str, Any], message: str):
        with self.assertRaisesRegex(ArchitectureError, message):
            autoloss.keras_loss(autoloss.default_spec(**overrides))

    def test_architecture_rejects_an_unknown_kind(self):
        with self.assertRaisesRegex(ArchitectureError, "loss"):
            Architecture.uniform("fm", ["a"], [], {"a": 3}, embedding_dim=2,
                                 loss={"kind": "autolosss"})


def _ids(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = {f"{f}_id": rng.integers(0, 4, n) for f in "abc"}
    labels = ((ids["a_id"] + ids["b_id"]) % 2).astype(np.float32)[:, None]
    return ids, labels


def _arch(loss: dict | None = None) -> Architecture:
    return Architecture.uniform("deepfm", list("abc"), [], dict.fromkeys("abc", 4),
                                embedding_dim=3, hidden_units=[8], loss=loss,
                                search={"strategy": "none"})


class RetrainAndServeTest(tf.test.TestCase):

    def test_deepfm_trains_with_the_spec_and_serves_like_the_baseline(self):
        from components.base import train_model  # noqa: PLC0415 (loads TFT)

        ids, labels = _ids(256, 0)
        data = tf.data.Dataset.from_tensor_slices((ids, labels)).batch(64)
        arch = _arch(_trained_spec())
        result = train_model(arch, data, data, learning_rate=0.01, max_epochs=2, patience=2,
                             seed=0)
        self.assertIsInstance(result.model.loss, autoloss.AutoLossMix)
        self.assertLen(result.history["loss"], 2)
        self.assertTrue(np.all(np.isfinite(result.history["loss"])))
        inputs = {k: v[:5] for k, v in ids.items()}
        expected = result.model(inputs).numpy()
        path = os.path.join(self.get_temp_dir(), "deepfm_autoloss")
        result.model.save(path, save_format="tf")
        serving = tf.saved_model.load(path).signatures["serving_default"]
        baseline = build_ctr_model(_arch())
        self.assertEqual(list(serving.structured_outputs), ["probability"])
        self.assertEqual(sorted(serving.structured_input_signature[1]),
                         sorted(model_input_names(_arch())))
        outputs = serving(**{k: tf.constant(v) for k, v in inputs.items()})
        self.assertAllClose(outputs["probability"], expected, rtol=1e-5, atol=1e-6)
        self.assertEqual(result.model.count_params(), baseline.count_params())
        # export_serving_model saves a tf.Module holding the compiled model.
        module = tf.Module()
        module.model = result.model
        tf.saved_model.save(module, os.path.join(self.get_temp_dir(), "module"))


def _context(options: dict[str, Any], report_dir: str | None = None) -> SearchContext:
    dataset = split_datasets({"train": _ids(512, 0), "eval": _ids(256, 1)}, 128)

    return SearchContext(arch=_arch(), dataset=dataset, learning_rate=0.01, batch_size=128,
                         max_epochs=1, patience=1, seed=0, options=options,
                         report_dir=report_dir)


class SearchTest(tf.test.TestCase, parameterized.TestCase):

    def test_registered_for_ctr_families(self):
        self.assertEqual(METHODS["autoloss"][0], "models.search.autoloss")
        for family in ("fm", "deepfm"):
            check_applies("autoloss", family)
        with self.assertRaisesRegex(SearchError, "not 'mf'"):
            check_applies("autoloss", "mf")

    @parameterized.parameters(
        ({"tau": 1}, "unknown options \\['tau'\\]"),
        ({"epochs": 0}, "epochs=0"),
        ({"controller_learning_rate": 0}, "controller_learning_rate=0"),
        ({"candidates": ["mse", "focal"]}, "must include 'logloss'"),
        ({"temperature": -1}, "temperature=-1"),
        ({"prior_logloss": 1.0}, "prior_logloss=1.0"),
        ({"prior_weight": -0.5}, "prior_weight=-0.5"),
        ({"select": "best"}, "select='best'"),
    )
    def test_bad_options(self, options: dict[str, Any], message: str):
        with self.assertRaisesRegex(SearchError, message):
            autoloss_search.settings(_context(options))

    @pytest.mark.slow
    def test_short_search_writes_a_trained_controller_and_pictures(self):
        report_dir = self.get_temp_dir()
        ctx = _context({"epochs": 2, "batch_size": 64, "hidden_units": [4], "normalize": True},
                       report_dir)
        searched = autoloss_search.search(ctx)
        spec = searched.loss
        self.assertEqual(spec["kind"], "autoloss")
        self.assertEqual(autoloss.validate_spec(spec), spec)
        self.assertIsNone(ctx.arch.loss)
        record = searched.search["autoloss"]
        self.assertEqual(record["steps"], 16)
        self.assertLen(record["history"], 2)
        self.assertEqual([t["step"] for t in record["trace"]], list(range(1, 17)))
        for entry in record["history"]:
            for y in (0, 1):
                self.assertAlmostEqual(sum(entry[f"mix_y{y}"].values()), 1.0, places=4)
        # The controller moved off its uniform start.
        self.assertGreater(np.abs(np.asarray(spec["weights"][-2])).max(), 0.0)
        curve = record["curves"]["y1_m0.2"]
        self.assertAllClose(np.sum([curve[n] for n in spec["candidates"]], axis=0),
                            np.ones(len(record["curves"]["p"])), atol=1e-3)
        self.assertNotEqual(curve["logloss"][0], 0.25)
        json.dumps(record)
        for picture in (autoloss_search.PROBABILITIES_PICTURE, autoloss_search.MIX_PICTURE):
            self.assertGreater(os.path.getsize(os.path.join(report_dir, picture)), 1000)
        self.assertEqual(Architecture.from_json(searched.to_json()).loss, spec)
        # The kept controller is the one of the epoch with the best search-model eval AUC.
        aucs = [entry["eval_auc"] for entry in record["history"]]
        self.assertEqual(record["selected_epoch"], int(np.argmax(aucs)) + 1)
        self.assertEqual(record["selected_eval_auc"], max(aucs))
        self.assertAlmostEqual(record["prior"]["logloss"], 0.85)

    def test_prior_probabilities(self):
        self.assertAllClose(autoloss_search.prior_probabilities(
            ["logloss", "mse", "focal"], 0.8), [0.8, 0.1, 0.1])

    @pytest.mark.slow
    def test_strong_prior_keeps_the_controller_at_the_prior_and_last_selects_last(self):
        options = {"epochs": 2, "batch_size": 128, "hidden_units": [4], "select": "last"}
        strong = autoloss_search.search(_context({**options, "prior_weight": 1e4}))
        record = strong.search["autoloss"]
        self.assertEqual(record["selected_epoch"], 2)
        curves = record["curves"]
        for key in ("y0_m0.5", "y1_m0.05"):
            self.assertAllClose(curves[key]["logloss"], np.full(len(curves["p"]), 0.85),
                                atol=0.02)
        # Without the prior the controller starts uniform and moves freely.
        free = autoloss_search.search(_context({**options, "prior_weight": 0.0}))
        self.assertGreater(np.abs(np.asarray(free.search["autoloss"]["curves"]["y1_m0.05"][
            "logloss"]) - 0.85).max(), 0.3)


@pytest.mark.slow
def test_config_and_bench_names_reach_the_search():
    from benchmarks.bench import parse_model  # noqa: PLC0415 (loads Beam and TFT)
    from pipeline.configs import ConfigError, PipelineConfig  # noqa: PLC0415

    config = parse_model("deepfm+autoloss", PipelineConfig())
    assert config.search_strategy == "autoloss" and config.train.model == "deepfm"
    PipelineConfig.from_dict({"search_strategy": "autoloss",
                              "search_options": {"autoloss": {"epochs": 1}}})
    with pytest.raises(ConfigError, match="autolosss"):
        PipelineConfig.from_dict({"search_strategy": "autolosss"})
