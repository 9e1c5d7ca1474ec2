"""preprocessing_fn run for real with tft_beam on a few rows."""

import os

import numpy as np
import pytest
import tensorflow as tf

from benchmarks.data import analyze
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
