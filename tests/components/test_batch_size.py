"""``components.base.train_batch_size``: the batch size from a train split's record count."""

import os

import pytest
import tensorflow as tf

from components import base
from pipeline.configs import TrainConfig


def _write_records(path: str, count: int, compression: str) -> None:
    options = tf.io.TFRecordOptions(compression_type=compression)
    with tf.io.TFRecordWriter(path, options) as writer:
        for i in range(count):
            writer.write(f"record {i}".encode())


@pytest.mark.parametrize("compression", ["GZIP", ""])
def test_counts_records_across_files(tmp_path, compression):
    for name, count in (("a", 13), ("b", 7)):
        _write_records(os.path.join(tmp_path, f"part-{name}"), count, compression)
    train = TrainConfig(batch_size=64, min_steps_per_epoch=8)
    pattern = os.path.join(tmp_path, "part-*")
    assert base.train_batch_size(train, pattern, compression_type=compression) == 3  # ceil(20/8)
    train.min_steps_per_epoch = 0
    assert base.train_batch_size(train, pattern, compression_type=compression) == 64


def test_large_split_keeps_the_batch_size(tmp_path):
    _write_records(os.path.join(tmp_path, "part-0"), 100, "GZIP")
    train = TrainConfig(batch_size=4, min_steps_per_epoch=8)  # reads 32 records, not 100
    assert base.train_batch_size(train, [os.path.join(tmp_path, "part-*")]) == 4


def test_missing_train_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="No train examples match"):
        base.train_batch_size(TrainConfig(), os.path.join(tmp_path, "nothing-*"))
