"""Bench data: the pipeline's adapters, example conversion and ``preprocessing_fn``, without MLMD.

Transform's analysis runs as the same Beam job the Transform component runs (``tft_beam`` over the
train split only); the bench then applies the resulting Transform graph in ``tf.data`` through
``transform_features_layer`` -- the graph the SavedModel serves with.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils
from tfx_bsl.public import tfxio

from benchmarks.cache import data_root
from components import base
from components.transform import preprocessing_fn
from pipeline.datasets import prepare_dataset
from pipeline.datasets.base import PreparedDataset
from pipeline.examples import write_tfrecords
from pipeline.runners import beam_pipeline_args


@dataclass
class BenchData:
    """A prepared dataset with its Transform graph and raw TFRecord splits."""

    dataset: PreparedDataset
    examples_dir: str
    transform_output: tft.TFTransformOutput

    @property
    def spec(self) -> dict:
        return self.dataset.spec.component_spec()

    def split_files(self, split: str) -> str:
        return os.path.join(self.examples_dir, split, "*")


def analyze(examples_dir: str, spec: dict, transform_dir: str) -> tft.TFTransformOutput:
    """Runs Transform's analysis on the train split and writes the Transform graph."""
    raw_schema = schema_utils.schema_from_feature_spec(
        base.raw_feature_spec(spec["label"], spec["categorical"], spec["numerical"], True,
                              spec.get("optional_numerical", ())))
    source = tfxio.TFExampleRecord(file_pattern=os.path.join(examples_dir, "train", "*"),
                                   telemetry_descriptors=["autorecsys", "bench"],
                                   schema=raw_schema)
    fn = functools.partial(preprocessing_fn, custom_config={"spec": spec})
    with tempfile.TemporaryDirectory() as tmp:
        with beam.Pipeline(argv=beam_pipeline_args("direct")) as pipeline:
            with tft_beam.Context(temp_dir=tmp, force_tf_compat_v1=False):
                raw = pipeline | "ReadTrain" >> source.BeamSource()
                transform_fn = (raw, source.TensorAdapterConfig()) | tft_beam.AnalyzeDataset(fn)
                _ = transform_fn | tft_beam.WriteTransformFn(transform_dir)
    # The raw schema too, as the Transform component writes it: the serving signature parses
    # raw examples with it.
    metadata_io.write_metadata(dataset_metadata.DatasetMetadata(raw_schema),
                               os.path.join(transform_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
    return tft.TFTransformOutput(transform_dir)


# Bumped when the adapters' output or the preprocessing_fn changes, so that a work_dir cache
# written by older code is rebuilt (2: absent numerical values and ``f_missing``, session 17).
CACHE_VERSION = 2


def prepare_bench_data(name: str, work_dir: str, data_dir: str | None, seed: int,
                       options: dict[str, Any] | None = None) -> BenchData:
    """Adapter -> validated TFRecords -> Transform graph, cached per (dataset, seed) in work_dir
    (rebuilt when written by code of another ``CACHE_VERSION``). ``options``: bring-your-own
    data's (``name`` ``csv``; see ``pipeline.datasets.byo.prepare_csv``)."""
    root = data_root(work_dir, name, seed, options)
    transform_dir = os.path.join(root, "transform")
    examples_dir = os.path.join(root, "examples")
    stamp = os.path.join(root, "cache_version")
    current = False
    if os.path.exists(stamp):
        with open(stamp) as f:
            current = f.read().strip() == str(CACHE_VERSION)
    if current and os.path.exists(os.path.join(transform_dir, "transform_fn")):
        dataset = PreparedDataset.load(os.path.join(root, "data"))
        return BenchData(dataset, examples_dir, tft.TFTransformOutput(transform_dir))
    dataset = prepare_dataset(name, os.path.join(root, "data"), data_dir=data_dir, seed=seed,
                              **(options or {}))
    if dataset.spec.task != "ctr":
        raise NotImplementedError(f"Dataset {name!r} is a top-k dataset; the bench trains CTR "
                                  f"models only so far.")
    write_tfrecords(dataset, examples_dir)
    spec = dataset.spec.component_spec()
    shutil.rmtree(transform_dir, ignore_errors=True)
    data = BenchData(dataset, examples_dir, analyze(examples_dir, spec, transform_dir))
    with open(stamp, "w") as f:
        f.write(str(CACHE_VERSION))
    return data


def transformed_dataset(data: BenchData, split: str, input_names: list[str], batch_size: int,
                        *, shuffle: bool, seed: int) -> tf.data.Dataset:
    """``(transformed features, label)`` batches of a split through the Transform graph.

    The transformed split is cached in memory, so the Transform graph runs once per split and
    training steps are not slowed by it.
    """
    spec = data.spec
    raw_spec = base.raw_feature_spec(spec["label"], spec["categorical"], spec["numerical"], True,
                                     spec.get("optional_numerical", ()))
    layer = data.transform_output.transform_features_layer()
    files = sorted(tf.io.gfile.glob(data.split_files(split)))

    def transform(serialized: tf.Tensor) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        out = layer(tf.io.parse_example(serialized, raw_spec))
        return ({k: out[k] for k in input_names}, tf.reshape(out[spec["label"]], [-1, 1]))

    ds = tf.data.TFRecordDataset(files).batch(8192).map(transform).unbatch().cache()
    if shuffle:
        ds = ds.shuffle(300_000, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
