"""preprocessing_fn run for real with tft_beam on a few rows."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from benchmarks.data import BenchData, analyze, transformed_dataset
from components import base, features
from components.transform import counts_vocab_name
from pipeline.datasets.base import FeatureSpec, PreparedDataset
from pipeline.examples import write_tfrecords

SPEC = {"label": "y", "categorical": ["city"], "numerical": ["price"]}


@pytest.fixture(scope="module")
def transform_output(tmp_path_factory):
    root = tmp_path_factory.mktemp("tft")
    data = root / "data"
    data.mkdir()
    rows = ["y,city,price"]
    cities = ["paris"] * 6 + ["rome"] * 3 + ["oslo"]
    for i, city in enumerate(cities):
        rows.append(f"{i % 2},{city},{float(i * 10)}")
    for split in ("train", "eval", "test"):
        (data / f"{split}.csv").write_text("\n".join(rows) + "\n")
    dataset = PreparedDataset("toy", str(data), FeatureSpec("y", ("city",), ("price",)))
    write_tfrecords(dataset, str(root / "examples"))
    return analyze(str(root / "examples"), SPEC, str(root / "transform"))


def _transform(output, cities, prices):
    layer = output.transform_features_layer()
    return layer({"city": tf.constant(cities), "price": tf.constant(prices, tf.float32),
                  "y": tf.constant([0] * len(cities), tf.int64)})


def test_vocabulary_is_ordered_by_frequency_with_oov(transform_output):
    out = _transform(transform_output, [b"paris", b"rome", b"oslo", b"tokyo"], [0.0] * 4)
    np.testing.assert_array_equal(out[features.id_name("city")].numpy(), [0, 1, 2, 3])
    assert base.vocab_sizes(transform_output, ["city"]) == {"city": 3 + features.NUM_OOV_BUCKETS}


def test_counts_vocabulary_matches_id_order(transform_output):
    path = transform_output.vocabulary_file_by_name(counts_vocab_name("city"))
    with open(path) as f:
        lines = [line.split() for line in f.read().splitlines()]
    assert [(int(c), v) for c, v in lines] == [(6, "paris"), (3, "rome"), (1, "oslo")]
    assert os.path.basename(path).startswith("city_vocab_counts")


def test_numeric_outliers_are_clipped_and_scaled(transform_output):
    out = _transform(transform_output, [b"paris"] * 3, [-1e9, 45.0, 1e9])
    raw = out[features.raw_name("price")].numpy()
    assert raw[0] >= 0.0 and raw[2] <= 90.0
    assert raw[1] == pytest.approx(45.0)
    scaled = out[features.scaled_name("price")].numpy()
    assert np.all(np.isfinite(scaled)) and scaled[0] < scaled[1] < scaled[2]
    buckets = out[features.bucket_name("price")].numpy()
    assert buckets[0] == 0 and buckets[2] == buckets.max() and buckets.max() < features.NUM_BUCKETS


def test_present_values_name_no_missing_field(transform_output):
    out = _transform(transform_output, [b"paris"] * 2, [10.0, 20.0])
    np.testing.assert_array_equal(out[features.missing_name("price")].numpy(), [0.0, 0.0])
    assert base.numeric_missing(transform_output, ["price"]) == []


OPTIONAL_SPEC = {"label": "y", "categorical": ["city"], "numerical": ["price", "size"],
                 "optional_numerical": ["price", "size"]}


@pytest.fixture(scope="module")
def optional_data(tmp_path_factory):
    """``price`` has empty cells in train (0, 10, 20, 30 and 4 absent), ``size`` none."""
    root = tmp_path_factory.mktemp("tft_optional")
    data = root / "data"
    data.mkdir()
    rows = ["y,city,price,size"]
    for i in range(8):
        price = "" if i >= 4 else str(float(i * 10))
        rows.append(f"{i % 2},paris,{price},{float(i)}")
    for split in ("train", "eval", "test"):
        (data / f"{split}.csv").write_text("\n".join(rows) + "\n")
    spec = FeatureSpec("y", ("city",), ("price", "size"), optional_numerical=("price", "size"))
    dataset = PreparedDataset("toy", str(data), spec)
    write_tfrecords(dataset, str(root / "examples"))
    return BenchData(dataset, str(root / "examples"),
                     analyze(str(root / "examples"), OPTIONAL_SPEC, str(root / "transform")))


def test_absent_values_get_an_indicator_and_present_only_statistics(optional_data):
    optional_output = optional_data.transform_output
    assert base.numeric_missing(optional_output, ["size", "price"]) == ["price"]
    raw = base.raw_feature_spec("y", ["city"], ["price", "size"], True, ["price", "size"])
    examples = [tf.train.Example(features=tf.train.Features(feature={
        "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[0])),
        "city": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"paris"])),
        "size": tf.train.Feature(float_list=tf.train.FloatList(value=[1.0])),
        **({} if price is None else {
            "price": tf.train.Feature(float_list=tf.train.FloatList(value=[price]))}),
    })).SerializeToString() for price in (None, 0.0, 30.0, 15.0)]
    out = optional_output.transform_features_layer()(tf.io.parse_example(examples, raw))
    np.testing.assert_array_equal(out[features.missing_name("price")].numpy(), [1, 0, 0, 0])
    np.testing.assert_array_equal(out[features.missing_name("size")].numpy(), [0, 0, 0, 0])
    scaled = out[features.scaled_name("price")].numpy()
    # The z-score is over the present train values 0, 10, 20, 30 only (log1p-shaped): 0 and
    # 30 lie on either side of 0, and the absent value is 0, not the z of the value 0.
    assert scaled[0] == 0.0 and scaled[1] < 0.0 < scaled[2]
    assert out[features.raw_name("price")].numpy()[0] == 0.0
    buckets = out[features.bucket_name("price")].numpy()
    assert buckets[0] == 0 and buckets[1] <= buckets[3] <= buckets[2]


def test_a_model_trains_exports_and_serves_examples_without_the_value(optional_data, tmp_path):
    from components.search import fixed_architecture  # noqa: PLC0415
    from models.zoo import model_input_names  # noqa: PLC0415
    from pipeline.configs import PipelineConfig  # noqa: PLC0415

    output = optional_data.transform_output
    config = PipelineConfig()
    config.train.model, config.train.hidden_units = "deepfm", [4]
    vocab = base.vocab_sizes(output, ["city"])
    arch = fixed_architecture(config, OPTIONAL_SPEC, vocab,
                              numeric_missing=base.numeric_missing(output, ["price", "size"]))
    assert arch.numeric_missing == ["price"]
    names = model_input_names(arch)
    assert "price_missing" in names and "size_missing" not in names
    train = transformed_dataset(optional_data, "train", names, 4, shuffle=True, seed=0)
    result = base.train_model(arch, train, train, learning_rate=0.01, max_epochs=1,
                              patience=1, seed=0)
    export = str(tmp_path / "model")
    base.export_serving_model(result.model, output, arch, "y", export)
    serve = tf.saved_model.load(export).signatures["serving_default"]

    def example(price):
        feature = {"city": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"paris"])),
                   "size": tf.train.Feature(float_list=tf.train.FloatList(value=[2.0]))}
        if price is not None:
            feature["price"] = tf.train.Feature(float_list=tf.train.FloatList(value=[price]))
        return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()

    probability = serve(examples=tf.constant([example(None), example(10.0)]))["probability"]
    assert probability.shape == (2,) and np.all((probability > 0) & (probability < 1))


@pytest.mark.parametrize("shape", [[], [1]])
def test_an_optional_field_declared_fixed_length_may_be_absent(shape):
    # SchemaGen infers a fixed-length [1] field when every train row holds a value; the bench
    # declares []. Either way an optional field's absent value parses as NaN (Transform: missing).
    spec = {"size": tf.io.FixedLenFeature(shape, tf.float32),
            "city": tf.io.FixedLenFeature(shape, tf.string)}

    def example(size):
        feature = {"city": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"paris"]))}
        if size is not None:
            feature["size"] = tf.train.Feature(float_list=tf.train.FloatList(value=[size]))
        return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()

    batch = tf.constant([example(2.0), example(None), example(3.0)])
    raw = base.parse_raw_examples(batch, spec, ["size"])
    assert raw["size"].shape == (3, *shape) and raw["city"].shape == (3, *shape)
    np.testing.assert_array_equal(np.isnan(raw["size"].numpy().ravel()), [False, True, False])
    assert raw["size"].numpy().ravel()[2] == 3.0
    all_absent = base.parse_raw_examples(tf.constant([example(None)] * 2), spec, ["size"])
    assert all_absent["size"].shape == (2, *shape) and np.isnan(all_absent["size"]).all()
    with pytest.raises(tf.errors.InvalidArgumentError):  # a required field stays required
        base.parse_raw_examples(batch, spec, [])


def test_a_declared_optional_field_without_absent_train_values_is_served_absent(
        optional_data, tmp_path):
    # ``size`` is declared optional but has a value in every train row: Transform's schema (as
    # SchemaGen's) makes it fixed-length and the model has no missing-value embedding for it.
    # The exported model still serves, and `predict` still reads, a row without it.
    from components.search import fixed_architecture  # noqa: PLC0415
    from models.zoo import model_input_names  # noqa: PLC0415
    from pipeline.configs import PipelineConfig  # noqa: PLC0415
    from pipeline.predict import load_raw_spec, score_csv  # noqa: PLC0415

    spec = {**OPTIONAL_SPEC, "optional_numerical": ["price"]}
    root = tmp_path / "fixed_size"
    output = analyze(optional_data.examples_dir, spec, str(root / "transform"))
    assert isinstance(output.raw_feature_spec()["size"], tf.io.FixedLenFeature)
    declared = dataclasses.replace(optional_data.dataset, spec=dataclasses.replace(
        optional_data.dataset.spec, optional_numerical=("price",)))  # the inferred schema's
    data = BenchData(declared, optional_data.examples_dir, output)
    config = PipelineConfig()
    config.train.model, config.train.hidden_units = "deepfm", [4]
    arch = fixed_architecture(config, spec, base.vocab_sizes(output, ["city"]),
                              numeric_missing=base.numeric_missing(output, ["price", "size"]))
    assert arch.numeric_missing == ["price"]
    train = transformed_dataset(data, "train", model_input_names(arch), 4, shuffle=True, seed=0)
    result = base.train_model(arch, train, train, learning_rate=0.01, max_epochs=1,
                              patience=1, seed=0)
    export = str(root / "model")
    base.export_serving_model(result.model, output, arch, "y", export,
                              optional_numerical=["price", "size"])
    assert load_raw_spec(export).optional_numerical == ("price", "size")
    rows = root / "rows.csv"
    rows.write_text("y,city,price,size\n1,paris,10.0,\n0,paris,,2.0\n1,paris,,\n0,rome,5.0,1.0\n")
    scores, labels = score_csv(export, str(rows))
    assert scores.shape == (4,) and np.all((scores > 0) & (scores < 1))
    np.testing.assert_array_equal(labels, [1, 0, 1, 0])


def test_a_dataset_without_numerical_fields_has_no_missing_fields(tmp_path):
    # frappe86k and movielens1m_ctr have no numerical field: Transform writes no missing-value
    # vocabulary, and reading it must not fail (it did in session 17's code).
    data = tmp_path / "data"
    data.mkdir()
    rows = "y,city\n" + "".join(f"{i % 2},{city}\n" for i, city in enumerate(["a", "b"] * 4))
    for split in ("train", "eval", "test"):
        (data / f"{split}.csv").write_text(rows)
    dataset = PreparedDataset("toy", str(data), FeatureSpec("y", ("city",)))
    write_tfrecords(dataset, str(tmp_path / "examples"))
    output = analyze(str(tmp_path / "examples"), dataset.spec.component_spec(),
                     str(tmp_path / "transform"))
    assert base.numeric_missing(output, []) == []
    assert base.numeric_missing(output, list(dataset.spec.numerical)) == []
