"""Prepared CSV splits -> validated TFRecord files of tf.Examples for ImportExampleGen.

Types come from the declared ``FeatureSpec``, never from inference: categorical fields are bytes,
numerical fields float32, the label int64 0/1. Every row is checked; the first bad row stops the
conversion with an error that names the file, the row (1-based, header = row 1) and the field.
Files are written into a temporary directory and renamed into place only when all splits passed,
so nothing half-written is ever read by the pipeline.
"""

from __future__ import annotations

import filecmp
import os
import shutil

import tensorflow as tf

from pipeline.datasets.base import SPLITS, FeatureSpec, PreparedDataset
from pipeline.datasets.rows import read_rows


def to_example(values: dict[str, object], spec: FeatureSpec) -> tf.train.Example:
    """One parsed row as a tf.Example with the declared feature types."""
    feature: dict[str, tf.train.Feature] = {}
    if spec.label in values:
        feature[spec.label] = tf.train.Feature(
            int64_list=tf.train.Int64List(value=[int(values[spec.label])]))
    for field in spec.categorical:
        feature[field] = tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[str(values[field]).encode()]))
    for field in spec.numerical:
        if values.get(field) is None:  # an absent optional value (or prediction input)
            continue
        feature[field] = tf.train.Feature(
            float_list=tf.train.FloatList(value=[float(values[field])]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


# Inputs from this size on are converted by a Beam job (``pipeline.prepare_beam``).
LARGE_INPUT_BYTES = 64 * 2**20


def write_tfrecords(dataset: PreparedDataset, out_dir: str, beam_args: list[str] | None = None,
                    beam_min_bytes: int = LARGE_INPUT_BYTES) -> dict[str, int]:
    """Converts ``dataset``'s three CSV splits into TFRecords under ``out_dir/<split>/``.

    Args:
      dataset: the prepared CSV splits.
      out_dir: destination; replaced only when every split converted without error.
      beam_args: Beam flags; with them, inputs of ``beam_min_bytes`` or more are converted by a
        Beam job on that runner instead of in this process.
      beam_min_bytes: the size of the largest split from which the Beam job is used.

    Returns:
      Rows written per split.
    """
    staging = out_dir.rstrip("/") + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    largest = max(os.path.getsize(dataset.split_path(s)) if os.path.exists(dataset.split_path(s))
                  else 0 for s in SPLITS)
    try:
        if beam_args is not None and largest >= beam_min_bytes:
            from pipeline.prepare_beam import convert_with_beam  # noqa: PLC0415

            counts = convert_with_beam(dataset, staging, beam_args)
        else:
            counts = _convert_in_process(dataset, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if _same_files(staging, out_dir):
        # Unchanged data keeps its files (and mtimes), so ExampleGen's fingerprint, and with it
        # every cached execution downstream, stays valid.
        shutil.rmtree(staging)
    else:
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(staging, out_dir)
    return counts


def _convert_in_process(dataset: PreparedDataset, staging: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for split in SPLITS:
        os.makedirs(os.path.join(staging, split))
        count = 0
        with tf.io.TFRecordWriter(os.path.join(staging, split, "data.tfrecord")) as writer:
            for values in read_rows(dataset.split_path(split), dataset.spec):
                writer.write(to_example(values, dataset.spec).SerializeToString(deterministic=True))
                count += 1
        counts[split] = count
    return counts


def _same_files(new_dir: str, old_dir: str) -> bool:
    for split in SPLITS:
        new_split, old_split = (os.path.join(d, split) for d in (new_dir, old_dir))
        if not os.path.isdir(old_split):
            return False
        names = sorted(os.listdir(new_split))
        if names != sorted(os.listdir(old_split)):
            return False
        if not all(filecmp.cmp(os.path.join(new_split, n), os.path.join(old_split, n),
                               shallow=False) for n in names):
            return False
    return True
