"""Batching and example building of ``pipeline.predict`` (no SavedModel needed)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from pipeline import predict
from pipeline.datasets.base import FeatureSpec

SPEC = FeatureSpec(label="y", categorical=("user",), numerical=("price",))


def test_csv_examples_drop_the_label_and_collect_it(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("y,user,price\n1,a,2.5\n0,b,1.0\n")
    labels: list[int] = []
    examples = [tf.train.Example.FromString(e)
                for e in predict.csv_examples(str(path), SPEC, labels)]
    assert labels == [1, 0]
    assert [sorted(e.features.feature) for e in examples] == [["price", "user"]] * 2
    assert examples[1].features.feature["user"].bytes_list.value == [b"b"]


def test_serve_in_batches_keeps_order_across_batches(monkeypatch):
    monkeypatch.setattr(predict, "BATCH_SIZE", 3)
    calls = []

    def serve(examples: tf.Tensor) -> dict[str, tf.Tensor]:
        calls.append(int(examples.shape[0]))
        return {"out": tf.strings.to_number(examples)}

    out = np.concatenate(list(predict.serve_in_batches(
        serve, (str(i).encode() for i in range(7)), "out")))
    assert calls == [3, 3, 1]
    np.testing.assert_array_equal(out, np.arange(7, dtype=np.float32))
