"""AutoDis: the layer against a numpy transcription of the paper's equations, its settings and
serialisation, its place in FieldEmbedding and the zoo, and the search method around it."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from absl.testing import parameterized

from models.architecture import Architecture, ArchitectureError
from models.layers.autodis import LEAKY_SLOPE, AutoDis
from models.layers.embeddings import FieldEmbedding, FieldLinear
from models.search import SearchContext, SearchError
from models.search import autodis as autodis_search
from models.zoo import build_ctr_model, model_input_names

VALUES = np.array([[0.5, -1.0], [2.0, 0.0], [-0.3, 1.7]], np.float32)


def _numpy_autodis(x: np.ndarray, w: list[np.ndarray], w_matrix: list[np.ndarray],
                   tables: list[np.ndarray], alpha: float, tau: float, aggregation: str,
                   top_k: int, centres: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """The paper's equations, field by field and row by row (``centres``: our kink positions,
    ``None`` the paper's 0)."""
    out = []
    for j in range(x.shape[1]):
        rows = []
        for b in range(x.shape[0]):
            pre = w[j][0] * (x[b, j] - (0.0 if centres is None else centres[j][0]))
            h = np.where(pre > 0, pre, LEAKY_SLOPE * pre)
            x_tilde = w_matrix[j] @ h + alpha * h
            p = np.exp(x_tilde / tau - np.max(x_tilde / tau))
            p /= p.sum()
            if aggregation == "weighted_average":
                rows.append(p @ tables[j])
            elif aggregation == "max_pooling":
                rows.append(tables[j][np.argmax(p)])
            else:
                rows.append(tables[j][np.argsort(-p)[:top_k]].sum(axis=0))
        out.append(np.stack(rows))
    return out


def _layer(**overrides: Any) -> AutoDis:
    kwargs = {"embedding_dims": [3, 2], "num_meta_embeddings": 4, "temperature": 0.5,
              "skip_factor": 0.8, "top_k": 2, **overrides}
    layer = AutoDis(**kwargs)
    layer.build((None, len(kwargs["embedding_dims"])))
    return layer


class AutoDisLayerTest(tf.test.TestCase, parameterized.TestCase):

    def setUp(self):
        super().setUp()
        keras.utils.set_random_seed(0)

    @parameterized.product(aggregation=["weighted_average", "max_pooling", "top_k_sum"],
                           centres=[False, True])
    def test_matches_the_papers_equations(self, aggregation, centres):
        layer = _layer(aggregation=aggregation, centres=centres)
        rng = np.random.default_rng(1)
        w = [rng.normal(size=(1, 4)).astype(np.float32) for _ in range(2)]
        w_matrix = [rng.normal(size=(4, 4)).astype(np.float32) for _ in range(2)]
        tables = [rng.normal(size=(4, d)).astype(np.float32) for d in (3, 2)]
        shifts = [rng.normal(size=(1, 4)).astype(np.float32) for _ in range(2)]
        for j in range(2):
            layer._w[j].assign(w[j])
            layer._w_matrix[j].assign(w_matrix[j])
            layer._meta_embeddings[j].assign(tables[j])
            if centres:
                layer._centres[j].assign(shifts[j])
        expected = _numpy_autodis(VALUES, w, w_matrix, tables, 0.8, 0.5, aggregation, 2,
                                  shifts if centres else None)
        for got, want in zip(layer(VALUES), expected, strict=True):
            self.assertAllClose(got, want, rtol=1e-5, atol=1e-6)

    def test_centres_start_spread_over_the_z_range(self):
        layer = _layer(num_meta_embeddings=5)
        self.assertAllClose(layer._centres[0], [[-2.0, -1.0, 0.0, 1.0, 2.0]])
        self.assertEmpty(_layer(centres=False)._centres)

    @parameterized.parameters("max_pooling", "top_k_sum")
    def test_centres_let_hard_aggregations_vary_within_one_sign(self, aggregation):
        # Without centres the meta network is positively homogeneous in x: every x > 0 ranks the
        # buckets alike, so a hard aggregation gives one embedding for all positive values.
        positive = tf.constant(np.linspace(0.05, 3.0, 60)[:, None].repeat(2, 1), tf.float32)

        def distinct(centres: bool) -> int:
            keras.utils.set_random_seed(3)
            layer = _layer(num_meta_embeddings=20, aggregation=aggregation, centres=centres)
            return len(np.unique(np.round(layer(positive)[0].numpy(), 6), axis=0))

        self.assertEqual(distinct(False), 1)
        self.assertGreater(distinct(True), 2)

    def test_bucket_weights_are_a_distribution_per_field(self):
        weights = _layer().bucket_weights(VALUES)
        self.assertEqual(weights.shape, (3, 2, 4))
        self.assertAllClose(tf.reduce_sum(weights, axis=-1), np.ones((3, 2)))

    @parameterized.parameters("max_pooling", "top_k_sum")
    def test_hard_aggregations_still_train_the_meta_network(self, aggregation):
        layer = _layer(aggregation=aggregation)
        with tf.GradientTape() as tape:
            loss = tf.add_n([tf.reduce_sum(e ** 2) for e in layer(VALUES)])
        grads = tape.gradient(loss, layer._w + layer._w_matrix)
        self.assertTrue(all(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads))

    @parameterized.parameters("weighted_average", "max_pooling", "top_k_sum")
    def test_config_round_trip(self, aggregation):
        layer = _layer(aggregation=aggregation, l2=0.1, temperature=0.2)
        expected = layer(VALUES)
        clone = AutoDis.from_config(layer.get_config())
        self.assertEqual(clone.get_config(), layer.get_config())
        clone(VALUES)
        clone.set_weights(layer.get_weights())
        for got, want in zip(clone(VALUES), expected, strict=True):
            self.assertAllClose(got, want)
        self.assertLen(layer.losses, 2)

    @parameterized.parameters(
        ({"embedding_dims": []}, "embedding_dims=\\[\\]"),
        ({"embedding_dims": [2, 0]}, "embedding_dims=\\[2, 0\\]"),
        ({"num_meta_embeddings": 0}, "num_meta_embeddings=0"),
        ({"temperature": 0.0}, "temperature=0.0"),
        ({"aggregation": "mean"}, "aggregation='mean'"),
        ({"top_k": 5}, "top_k=5"),
        ({"top_k": 0}, "top_k=0"),
        ({"l2": -1.0}, "l2=-1.0"),
        ({"centres": "yes"}, "centres='yes'"),
    )
    def test_rejects_bad_settings(self, overrides, message):
        kwargs = {"embedding_dims": [2], "num_meta_embeddings": 4, **overrides}
        with self.assertRaisesRegex(ValueError, message):
            AutoDis(**kwargs)

    def test_rejects_a_wrong_number_of_columns(self):
        with self.assertRaisesRegex(ValueError, "Received: input_shape"):
            AutoDis([2, 2])(tf.zeros([3, 3]))


FIELDS = {"categorical": ["user"], "numerical": ["age", "price"], "vocab_sizes": {"user": 3},
          "numeric_encoding": {"age": "autodis", "price": "scaled"}}
FEATURES = {"user_id": tf.constant([0, 2, 1], tf.int64), "age_z": tf.constant([0.5, -2.0, 0.0]),
            "price_z": tf.constant([1.0, 0.0, -1.0])}


class FieldEmbeddingAutoDisTest(tf.test.TestCase):

    def test_autodis_fields_come_from_the_sub_layer_in_field_order(self):
        layer = FieldEmbedding(**FIELDS, embedding_dims={"user": 2, "age": 2, "price": 2},
                               autodis={"num_meta_embeddings": 3})
        out = layer(FEATURES)
        self.assertEqual(layer.input_dtypes(), {"user_id": tf.int64, "age_z": tf.float32,
                                                "price_z": tf.float32})
        self.assertEqual(layer.autodis_fields, ["age"])
        expected_age = layer.autodis_layer(tf.reshape(FEATURES["age_z"], [-1, 1]))[0]
        self.assertAllClose(out[1], expected_age)
        self.assertEqual(layer.autodis_layer.num_meta_embeddings, 3)

        clone = FieldEmbedding.from_config(layer.get_config())
        self.assertEqual(clone.get_config(), layer.get_config())
        clone(FEATURES)
        clone.set_weights(layer.get_weights())
        for got, want in zip(clone(FEATURES), out, strict=True):
            self.assertAllClose(got, want)

    def test_first_order_term_treats_autodis_fields_as_scaled(self):
        layer = FieldLinear(**FIELDS)
        self.assertEqual(layer.get_config()["numeric_encoding"],
                         {"age": "scaled", "price": "scaled"})
        self.assertEqual(layer(FEATURES).shape, (3, 1))


def _autodis_arch(model: str = "deepfm", **autodis: Any) -> Architecture:
    return Architecture.uniform(model, ["user", "item"], ["age", "price"],
                                {"user": 20, "item": 10}, embedding_dim=4, hidden_units=[8],
                                numeric_encoding={"age": "autodis", "price": "autodis"},
                                autodis={"num_meta_embeddings": 5, **autodis})


def _zoo_inputs(arch: Architecture, n: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    features = {"user_id": rng.integers(0, 20, n), "item_id": rng.integers(0, 10, n),
                "age_z": rng.normal(size=n).astype(np.float32),
                "price_z": rng.normal(size=n).astype(np.float32)}
    return {name: features[name] for name in model_input_names(arch)}


class ZooAutoDisTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters(("deepfm", "weighted_average"), ("fm", "top_k_sum"))
    def test_saved_model_round_trip(self, model_name, aggregation):
        arch = _autodis_arch(model_name, aggregation=aggregation, top_k=2)
        model = build_ctr_model(arch)
        inputs = _zoo_inputs(arch)
        expected = model(inputs).numpy()
        path = os.path.join(self.get_temp_dir(), model_name)
        model.save(path, save_format="tf")

        restored = keras.models.load_model(path)
        self.assertAllClose(restored(inputs), expected, rtol=1e-5, atol=1e-6)
        restored_autodis = restored.get_layer("field_embedding").autodis_layer
        self.assertEqual(restored_autodis.aggregation, aggregation)

        serving = tf.saved_model.load(path).signatures["serving_default"]
        outputs = serving(**{name: tf.constant(value) for name, value in inputs.items()})
        self.assertAllClose(outputs["probability"], expected, rtol=1e-5, atol=1e-6)

    def test_embedding_params_count_the_meta_embeddings(self):
        arch = _autodis_arch()
        # (20 + 10) ids x (4 + 1) + 2 numeric fields x (5 meta-embeddings x 4 + 1 linear weight)
        self.assertEqual(arch.embedding_params(), 30 * 5 + 2 * (5 * 4 + 1))
        model = build_ctr_model(arch)
        tables = [w for w in model.weights
                  if re.fullmatch(r".*(_embedding|_field_vector|meta_embeddings_\d+):0",
                                  w.name.split("/")[-1])]
        self.assertEqual(sum(int(np.prod(w.shape)) for w in tables), arch.embedding_params())

    def test_architecture_rejects_unknown_settings(self):
        with self.assertRaisesRegex(ArchitectureError, "unknown settings \\['buckets'\\]"):
            _autodis_arch(buckets=3)


def _context(arch: Architecture, options: dict | None = None, report_dir: str | None = None
             ) -> SearchContext:
    rng = np.random.default_rng(0)
    raw = rng.exponential(size=(64, 2)).astype(np.float32)
    columns = {"age_raw": raw[:, 0], "price_raw": raw[:, 1],
               "age_z": np.log1p(raw[:, 0]), "price_z": np.log1p(raw[:, 1])}
    # Transform writes 0 for an absent value; half of price is absent, with a huge raw stand-in
    # here, so that a range that read it would show.
    absent = np.arange(64) % 2 == 0
    columns["price_missing"] = absent.astype(np.float32)
    columns["price_raw"] = np.where(absent, 1e6, columns["price_raw"]).astype(np.float32)

    def dataset(split: str, input_names: list[str], shuffle: bool) -> tf.data.Dataset:
        assert split == "train" and not shuffle
        features = {n: columns[n] for n in input_names}
        return tf.data.Dataset.from_tensor_slices((features, np.zeros(64))).batch(16)

    return SearchContext(arch=arch, dataset=dataset, learning_rate=1e-3, batch_size=16,
                         max_epochs=1, patience=1, seed=0, options=options or {},
                         report_dir=report_dir)


class SearchTest(tf.test.TestCase):

    def test_switches_numeric_fields_and_records_settings_and_ranges(self):
        start = Architecture.uniform("deepfm", ["user"], ["age", "price"], {"user": 20},
                                     embedding_dim=4, hidden_units=[8])
        arch = autodis_search.search(_context(start, {"temperature": 0.5}))
        self.assertEqual(arch.numeric_encoding, {"age": "autodis", "price": "autodis"})
        self.assertEqual(arch.autodis["temperature"], 0.5)
        self.assertEqual(arch.autodis["num_meta_embeddings"], 20)
        record = arch.search["autodis"]
        self.assertEqual(record["note"], "end-to-end, no separate search")
        age = record["value_range"]["age"]
        self.assertAllClose(age["z"], np.log1p(age["raw"]), rtol=1e-5)
        self.assertEqual(Architecture.from_json(arch.to_json()), arch)
        self.assertEqual(start.numeric_encoding, {"age": "scaled", "price": "scaled"})

    def test_ranges_leave_absent_values_out(self):
        start = Architecture.uniform("deepfm", ["user"], ["age", "price"], {"user": 20},
                                     embedding_dim=4, hidden_units=[8], numeric_missing=["price"])
        ranges = autodis_search.search(_context(start)).search["autodis"]["value_range"]
        self.assertLess(max(ranges["price"]["raw"]), 1e6)
        plain = Architecture.uniform("deepfm", ["user"], ["age", "price"], {"user": 20},
                                     embedding_dim=4, hidden_units=[8])
        ranges = autodis_search.search(_context(plain)).search["autodis"]["value_range"]
        self.assertEqual(max(ranges["price"]["raw"]), 1e6)

    def test_refuses_data_without_numerical_fields(self):
        start = Architecture.uniform("fm", ["user"], [], {"user": 20}, embedding_dim=4)
        with self.assertRaisesRegex(SearchError, "numerical=\\[\\]"):
            autodis_search.search(_context(start))

    def test_refuses_unknown_and_bad_options(self):
        start = _autodis_arch()
        with self.assertRaisesRegex(SearchError, "unknown settings \\['tau'\\]"):
            autodis_search.search(_context(start, {"tau": 1.0}))
        with self.assertRaisesRegex(ValueError, "temperature=-1"):
            autodis_search.search(_context(start, {"temperature": -1}))

    def test_report_trained_draws_the_bucket_weights(self):
        start = Architecture.uniform("deepfm", ["user"], ["age", "price"], {"user": 20},
                                     embedding_dim=4, hidden_units=[8])
        report_dir = self.get_temp_dir()
        arch = autodis_search.search(_context(start, {"num_meta_embeddings": 4}))
        autodis_search.report_trained(arch, build_ctr_model(arch), report_dir)
        self.assertGreater(os.path.getsize(os.path.join(report_dir, autodis_search.PICTURE)),
                           1000)


@pytest.mark.slow
def test_bench_row_trains_and_draws_autodis(tmp_path):
    from benchmarks.bench import bench_row  # noqa: PLC0415
    from benchmarks.data import prepare_bench_data  # noqa: PLC0415
    from pipeline.configs import PipelineConfig  # noqa: PLC0415

    data = prepare_bench_data("synthetic", str(tmp_path / "work"), None, 1)
    config = PipelineConfig.from_dict({"train": {"max_epochs": 1, "batch_size": 1024,
                                                 "hidden_units": [16]}})
    row = bench_row(data, "deepfm+autodis", 1, config, export_dir=str(tmp_path / "export"),
                    report_dir=str(tmp_path / "report"))
    assert set(row["architecture"]["numeric_encoding"].values()) == {"autodis"}
    assert row["architecture"]["search"]["strategy"] == "autodis"
    assert 0.5 < row["test_auc"] <= 1.0
    assert (tmp_path / "report" / autodis_search.PICTURE).stat().st_size > 1000
    assets = tmp_path / "export" / "assets.extra" / "architecture.json"
    assert json.loads(assets.read_text())["autodis"] == row["architecture"]["autodis"]
    files = sorted(tf.io.gfile.glob(data.split_files("test")))
    raw_examples = next(iter(tf.data.TFRecordDataset(files).batch(5)))
    serve = tf.saved_model.load(str(tmp_path / "export")).signatures["serving_default"]
    probability = serve(examples=raw_examples)["probability"].numpy()
    assert probability.shape == (5,) and np.all((probability > 0) & (probability < 1))
