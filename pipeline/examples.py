"""Prepared CSV splits -> validated TFRecord files of tf.Examples for ImportExampleGen.

Types come from the declared ``FeatureSpec``, never from inference: categorical fields are bytes,
numerical fields float32, the label int64 0/1. Every row is checked; the first bad row stops the
conversion with an error that names the file, the row (1-based, header = row 1) and the field.
Files are written into a temporary directory and renamed into place only when all splits passed,
so nothing half-written is ever read by the pipeline.
"""

from __future__ import annotations

import csv
import filecmp
import math
import os
import shutil
from collections.abc import Iterator

import tensorflow as tf

from pipeline.datasets.base import SPLITS, DatasetError, FeatureSpec, PreparedDataset

MISSING_CATEGORY = "__missing__"


class RowParser:
    """Parses and checks raw CSV rows against a ``FeatureSpec``.

    Args:
      spec: the declared columns.
      path: the file being read (named in errors).
      header: the file's header row.
      require_label: whether the label column must be present (False for prediction input).
    """

    def __init__(self, spec: FeatureSpec, path: str, header: list[str],
                 require_label: bool = True) -> None:
        self.spec = spec
        self.path = path
        self.header = header
        wanted = list(spec.columns if require_label else spec.columns[1:])
        missing = [c for c in wanted if c not in header]
        if missing:
            raise DatasetError(f"{path}: row 1 (header): missing column(s) {missing}; "
                               f"header has {header}.")
        self.has_label = spec.label in header
        self.index = {c: header.index(c) for c in spec.columns if c in header}

    def parse(self, row: list[str], row_number: int) -> dict[str, object]:
        """Returns ``{column: value}`` with label int, categorical str, numerical float."""
        where = f"{self.path}: row {row_number}"
        if len(row) != len(self.header):
            raise DatasetError(f"{where}: has {len(row)} fields, the header has "
                               f"{len(self.header)}.")
        values: dict[str, object] = {}
        if self.has_label:
            text = row[self.index[self.spec.label]].strip()
            try:
                label = float(text)
            except ValueError:
                label = math.nan
            if label not in (0.0, 1.0):
                raise DatasetError(f"{where}: field '{self.spec.label}' (label) must be 0 or 1, "
                                   f"got {text!r}.")
            values[self.spec.label] = int(label)
        for field in self.spec.categorical:
            text = row[self.index[field]].strip()
            values[field] = text if text else MISSING_CATEGORY
        for field in self.spec.numerical:
            text = row[self.index[field]].strip()
            try:
                number = float(text)
            except ValueError:
                raise DatasetError(
                    f"{where}: field '{field}' is numerical, got {text!r}.") from None
            if not math.isfinite(number):
                raise DatasetError(f"{where}: field '{field}' is {text!r}; numerical fields must "
                                   f"be finite.")
            values[field] = number
        return values


def read_rows(path: str, spec: FeatureSpec, require_label: bool = True
              ) -> Iterator[dict[str, object]]:
    """Yields parsed rows of a CSV file with header; raises DatasetError on the first bad row."""
    if not os.path.exists(path):
        raise DatasetError(f"{path}: file not found.")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise DatasetError(f"{path}: the file is empty (no header row).") from None
        except csv.Error as e:
            raise DatasetError(f"{path}: row 1: malformed CSV ({e}).") from None
        parser = RowParser(spec, path, [h.strip() for h in header], require_label)
        row_number = 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise DatasetError(f"{path}: row {row_number + 1}: malformed CSV ({e}).") from None
            row_number += 1
            if not row:
                continue
            yield parser.parse(row, row_number)
        if row_number == 1:
            raise DatasetError(f"{path}: the file has a header but no data rows.")


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
        feature[field] = tf.train.Feature(
            float_list=tf.train.FloatList(value=[float(values[field])]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def write_tfrecords(dataset: PreparedDataset, out_dir: str) -> dict[str, int]:
    """Converts ``dataset``'s three CSV splits into ``out_dir/<split>/data.tfrecord``.

    Returns:
      Rows written per split.
    """
    staging = out_dir.rstrip("/") + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    counts: dict[str, int] = {}
    try:
        for split in SPLITS:
            os.makedirs(os.path.join(staging, split))
            count = 0
            with tf.io.TFRecordWriter(os.path.join(staging, split, "data.tfrecord")) as writer:
                for values in read_rows(dataset.split_path(split), dataset.spec):
                    writer.write(to_example(values, dataset.spec).SerializeToString())
                    count += 1
            counts[split] = count
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


def _same_files(new_dir: str, old_dir: str) -> bool:
    for split in SPLITS:
        new, old = (os.path.join(d, split, "data.tfrecord") for d in (new_dir, old_dir))
        if not os.path.exists(old) or not filecmp.cmp(new, old, shallow=False):
            return False
    return True
