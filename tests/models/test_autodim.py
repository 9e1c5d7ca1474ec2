"""AutoDim: the searching layer's equations, the retrain projection, serialisation, and a search
that gives the synthetic data's pure-noise fields smaller sizes than its informative ones."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from absl.testing import parameterized

from models.architecture import Architecture, ArchitectureError
from models.layers.autodim import AutoDimEmbedding
from models.layers.projection import FieldProjection
from models.search import SearchError
from models.search.autodim import _with_dims, settings, within_budget
from models.zoo import build_ctr_model, model_input_names

BN_EPSILON = 1e-3  # keras BatchNormalization's default
FEATURES = {"user_id": tf.constant([0, 2, 1], tf.int64),
            "item_id": tf.constant([1, 0, 1], tf.int64),
            "age_z": tf.constant([0.5, -2.0, 0.0])}


def _layer(**overrides: Any) -> AutoDimEmbedding:
    args = {"categorical": ["user", "item"], "numerical": ["age"],
            "vocab_sizes": {"user": 3, "item": 2}, "candidate_dims": [1, 2], "output_dim": 2}
    return AutoDimEmbedding(**{**args, **overrides})


def _assert_config_round_trip(layer: keras.layers.Layer, inputs: Any) -> None:
    expected = layer(inputs)
    clone = layer.__class__.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    clone(inputs)
    clone.set_weights(layer.get_weights())
    tf.nest.map_structure(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                          clone(inputs), expected)


class AutoDimEmbeddingTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters(True, False)
    def test_inference_matches_the_papers_equations(self, weight_sharing):
        layer = _layer(temperature=0.5, weight_sharing=weight_sharing)
        layer(FEATURES)
        rng = np.random.default_rng(0)
        width = 2 if weight_sharing else 3  # separate tables: columns [0:1] and [1:3]
        starts = (0, 0) if weight_sharing else (0, 1)
        tables = {f: rng.normal(size=(v, width)) for f, v in (("user", 3), ("item", 2))}
        kernels = [rng.normal(size=(1, 2)), rng.normal(size=(2, 2))]
        biases = [rng.normal(size=2), rng.normal(size=2)]
        alpha = rng.normal(size=(2, 2))
        layer._tables["user"].assign(tables["user"])
        layer._tables["item"].assign(tables["item"])
        for projection, kernel, bias in zip(layer.projections, kernels, biases, strict=True):
            projection.kernel.assign(kernel)
            projection.bias.assign(bias)
        layer.alpha_logits.assign(alpha)

        out = layer(FEATURES, training=False)

        p = np.exp(alpha / 0.5) / np.exp(alpha / 0.5).sum(axis=1, keepdims=True)
        for m, (f, ids) in enumerate((("user", [0, 2, 1]), ("item", [1, 0, 1]))):
            e = tables[f][ids]
            unified = [(e[:, o:o + d] @ k + b) / np.sqrt(1 + BN_EPSILON)
                       for d, o, k, b in zip((1, 2), starts, kernels, biases, strict=True)]
            self.assertAllClose(out[m], p[m, 0] * unified[0] + p[m, 1] * unified[1], rtol=1e-5)
        self.assertEqual([tuple(e.shape) for e in out], [(3, 2)] * 3)

    def test_training_selection_is_a_gumbel_softmax(self):
        layer = _layer()
        layer(FEATURES)
        layer.alpha_logits.assign([[0.0, 3.0], [0.0, 0.0]])
        soft = layer.selection(training=True).numpy()
        self.assertAllClose(soft.sum(axis=1), [1.0, 1.0])
        layer.temperature.assign(0.01)
        hard = layer.selection(training=True).numpy()
        self.assertAllClose(np.sort(hard, axis=1), [[0.0, 1.0], [0.0, 1.0]], atol=1e-3)
        self.assertAllClose(layer.selection(training=False), [[0.0, 1.0], [0.5, 0.5]])

    def test_derive_and_expected_dims_follow_alpha(self):
        layer = _layer(candidate_dims=[2, 4, 8], output_dim=8)
        layer(FEATURES)
        layer.alpha_logits.assign([[0.0, 0.0, 5.0], [5.0, 0.0, 0.0]])
        self.assertEqual(layer.derive(), {"user": 8, "item": 2})
        expected = layer.expected_dims().numpy()
        self.assertGreater(expected[0], 7.5)
        self.assertLess(expected[1], 2.5)
        self.assertEqual(layer.architecture_variables, [layer.alpha_logits])

    def test_config_round_trip(self):
        _assert_config_round_trip(_layer(l2=0.1, temperature=0.7,
                                         numeric_encoding={"age": "scaled"}), FEATURES)
        separate = _layer(candidate_dims=[1, 2, 4], output_dim=4, weight_sharing=False)
        _assert_config_round_trip(separate, FEATURES)
        self.assertEqual(separate._tables["user"].shape, (3, 7))
        self.assertFalse(separate.get_config()["weight_sharing"])

    @parameterized.parameters(
        ({"candidate_dims": [4, 2]}, "candidate_dims=\\[4, 2\\]"),
        ({"candidate_dims": [0, 2]}, "candidate_dims=\\[0, 2\\]"),
        ({"output_dim": 0}, "output_dim=0"),
        ({"temperature": 0.0}, "temperature=0.0"),
        ({"categorical": []}, "categorical=\\[\\]"),
        ({"vocab_sizes": {"user": 3}}, "vocab_sizes="),
        ({"l2": -1.0}, "l2=-1.0"),
    )
    def test_validation_errors_name_the_value(self, overrides, message):
        with self.assertRaisesRegex(ValueError, message):
            _layer(**overrides)


class FieldProjectionTest(tf.test.TestCase):

    def test_golden_values_and_config_round_trip(self):
        layer = FieldProjection(["a", "b"], {"a": 1, "b": 2}, output_dim=2)
        inputs = [tf.constant([[2.0]]), tf.constant([[1.0, -1.0]])]
        layer(inputs)
        layer.maps[0].kernel.assign([[1.0, 2.0]])
        layer.maps[1].kernel.assign([[1.0, 0.0], [0.0, 3.0]])
        layer.maps[1].bias.assign([0.5, 0.5])
        out = layer(inputs)
        self.assertAllClose(out[0], [[2.0, 4.0]])
        self.assertAllClose(out[1], [[1.5, -2.5]])
        _assert_config_round_trip(FieldProjection(["a", "b"], {"a": 1, "b": 2}, 3,
                                                  use_bias=False, l2=0.1), inputs)

    def test_validation_errors_name_the_value(self):
        with self.assertRaisesRegex(ValueError, "embedding_dims="):
            FieldProjection(["a"], {"a": 0}, 2)
        with self.assertRaisesRegex(ValueError, "output_dim=0"):
            FieldProjection(["a"], {"a": 1}, 0)
        with self.assertRaisesRegex(ValueError, "fields=\\[\\]"):
            FieldProjection([], {}, 2)


def _retrain_arch(model: str) -> Architecture:
    arch = Architecture.uniform(model, ["user", "item"], ["age"], {"user": 20, "item": 10},
                                embedding_dim=4, hidden_units=[8], unified_dim=6)
    arch.embedding_dims.update(user=2, item=8)
    return arch


class RetrainModelTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters("fm", "deepfm", "dcn")
    def test_mixed_dims_with_unified_dim_build_and_count_honestly(self, model_name):
        arch = _retrain_arch(model_name)
        model = build_ctr_model(arch)
        counted = sum(int(np.prod(w.shape)) for layer in ("field_embedding", "field_projection")
                      for w in model.get_layer(layer).weights)
        if model_name != "dcn":
            counted += model.get_layer("field_linear").count_params() - 1  # the bias
        self.assertEqual(arch.embedding_params(), counted)

    def test_fm_refuses_mixed_dims_without_unified_dim(self):
        arch = _retrain_arch("fm")
        arch.unified_dim = None
        with self.assertRaisesRegex(ValueError, "unified_dim=None"):
            build_ctr_model(arch)

    def test_saved_model_round_trip(self):
        arch = _retrain_arch("deepfm")
        model = build_ctr_model(arch)
        rng = np.random.default_rng(0)
        inputs = {"user_id": rng.integers(0, 20, 5), "item_id": rng.integers(0, 10, 5),
                  "age_z": rng.normal(size=5).astype(np.float32)}
        inputs = {k: inputs[k] for k in model_input_names(arch)}
        expected = model(inputs).numpy()
        path = os.path.join(self.get_temp_dir(), "deepfm_autodim")
        model.save(path, save_format="tf")
        restored = keras.models.load_model(path)
        self.assertAllClose(restored(inputs), expected, rtol=1e-5, atol=1e-6)
        self.assertEqual(type(restored.get_layer("field_projection")).__name__,
                         "FieldProjection")
        serving = tf.saved_model.load(path).signatures["serving_default"]
        outputs = serving(**{k: tf.constant(v) for k, v in inputs.items()})
        self.assertAllClose(outputs["probability"], expected, rtol=1e-5, atol=1e-6)

    def test_projected_l2_penalises_the_projected_tables(self):
        """With ``projected_l2`` the tables' L2 is ``l2 |T_f W_f|^2``, which a projection
        cannot shrink by scaling (``T_f / c``, ``W_f c``); without it, ``l2 |T_f|^2``."""
        arch = dataclasses.replace(_retrain_arch("deepfm"), l2=0.5)
        on, off = (build_ctr_model(dataclasses.replace(arch, projected_l2=flag))
                   for flag in (True, False))
        off.set_weights(on.get_weights())
        tables = on.get_layer("field_embedding").tables
        maps = dict(zip(arch.fields, on.get_layer("field_projection").maps, strict=True))
        projected = sum(float(tf.reduce_sum(tf.square(
            tf.reshape(t, [-1, maps[f].kernel.shape[0]]) @ maps[f].kernel)))
            for f, t in tables.items())
        raw = sum(float(tf.reduce_sum(tf.square(t))) for t in tables.values())
        self.assertAllClose(float(tf.add_n(on.losses)) - float(tf.add_n(off.losses)),
                            0.5 * (projected - raw), rtol=1e-4)
        before = float(tf.add_n(on.losses))
        for f, t in tables.items():
            t.assign(t / 4.0)
            maps[f].kernel.assign(maps[f].kernel * 4.0)
        self.assertAllClose(float(tf.add_n(on.losses)), before, rtol=1e-4)

    def test_projected_l2_survives_the_json_and_is_checked(self):
        arch = dataclasses.replace(_retrain_arch("deepfm"), projected_l2=False)
        self.assertFalse(Architecture.from_json(arch.to_json()).projected_l2)
        with self.assertRaisesRegex(ArchitectureError, "projected_l2='yes'"):
            dataclasses.replace(arch, projected_l2="yes")

    def test_search_model_takes_the_searching_layer(self):
        arch = Architecture.uniform("deepfm", ["user", "item"], ["age"],
                                    {"user": 3, "item": 2}, embedding_dim=2, hidden_units=[4])
        model = build_ctr_model(arch, field_embedding=_layer())
        self.assertEqual(model(dict(FEATURES)).shape, (3, 1))
        self.assertIn("alpha_logits", [w.name.split("/")[-1].split(":")[0]
                                       for w in model.trainable_weights])


def test_settings_reject_unknown_and_bad_options():
    arch = _retrain_arch("deepfm")
    with pytest.raises(SearchError, match="unknown options \\['dims'\\]"):
        settings({"dims": [2]}, arch)
    with pytest.raises(SearchError, match="update_every=0"):
        settings({"update_every": 0}, arch)
    with pytest.raises(SearchError, match="projected_l2=1"):
        settings({"projected_l2": 1}, arch)
    with pytest.raises(SearchError, match="weight_sharing='no'"):
        settings({"weight_sharing": "no"}, arch)
    values = settings({"candidate_dims": [8, 2]}, arch)
    assert values["candidate_dims"] == [2, 8]
    assert values["unified_dim"] == 8  # the starting architecture's largest size


def test_within_budget_maximises_log_probability_under_the_budget():
    arch = Architecture.uniform("fm", ["a", "b"], [], {"a": 100, "b": 10}, embedding_dim=8)
    values = settings({"candidate_dims": [2, 4, 8]}, arch)
    probabilities = [[0.1, 0.2, 0.7], [0.1, 0.2, 0.7]]
    assert within_budget(arch, values, probabilities, 2000) == {"a": 8, "b": 8}
    # a=4, b=8 needs 702; a=2, b=8 (486) beats a=4, b=4 (630) on log-probability.
    assert within_budget(arch, values, probabilities, 700) == {"a": 2, "b": 8}
    assert within_budget(arch, values, probabilities, 10) == {"a": 2, "b": 2}


def test_within_budget_spends_what_the_relaxation_leaves():
    # a's gain per parameter is the highest, so any multiplier that drops a (too large for the
    # budget) also drops b and c: the relaxation alone returns every field at 2.
    arch = Architecture.uniform("fm", ["a", "b", "c"], [], {"a": 100, "b": 10, "c": 10},
                                embedding_dim=8)
    values = settings({"candidate_dims": [2, 8]}, arch)
    probabilities = [[0.1, 0.9], [0.45, 0.55], [0.45, 0.55]]
    budget = _with_dims(arch, {"a": 2, "b": 8, "c": 8}, 8).embedding_params()
    assert _with_dims(arch, {"a": 8, "b": 2, "c": 2}, 8).embedding_params() > budget
    assert within_budget(arch, values, probabilities, budget) == {"a": 2, "b": 8, "c": 8}
    # one parameter less: only one of b and c fits at 8
    chosen = within_budget(arch, values, probabilities, budget - 1)
    assert chosen["a"] == 2 and sorted([chosen["b"], chosen["c"]]) == [2, 8]


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason="Not met with the defaults (seed 2021): informative c1 "
                   "gets size 2 (its argmax); on 4x the rows the noise fields are confidently at "
                   "2 but so are 1-2 informative fields (README, AutoDim, session 16).")
def test_search_gives_noise_fields_smaller_sizes(tmp_path):
    from benchmarks.data import prepare_bench_data, transformed_dataset  # noqa: PLC0415
    from components import base  # noqa: PLC0415
    from components.search import searched_architecture  # noqa: PLC0415
    from pipeline.configs import PipelineConfig  # noqa: PLC0415
    from pipeline.datasets.synthetic import INFORMATIVE, NOISE  # noqa: PLC0415

    data = prepare_bench_data("synthetic", str(tmp_path / "work"), None, 2021)
    config = PipelineConfig.from_dict({"search_strategy": "autodim",
                                       "train": {"model": "deepfm"}})

    def dataset(split: str, input_names: list[str], shuffle: bool) -> tf.data.Dataset:
        return transformed_dataset(data, split, input_names, config.train.batch_size,
                                   shuffle=shuffle, seed=2021)

    vocab = base.vocab_sizes(data.transform_output, data.spec["categorical"])
    arch = searched_architecture(config, data.spec, vocab, dataset,
                                 report_dir=str(tmp_path / "report"))
    found = arch.search["autodim"]
    chosen = found["chosen"]
    assert max(chosen[f] for f in NOISE) < min(chosen[f] for f in INFORMATIVE), chosen
    assert arch.unified_dim == found["settings"]["unified_dim"]
    assert found["params_after"] == arch.embedding_params() < found["params_before"]
    assert (tmp_path / "report" / "autodim_dims.png").stat().st_size > 1000
    assert build_ctr_model(Architecture.from_json(arch.to_json())).count_params() > 0
