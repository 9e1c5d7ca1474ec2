"""What the Trainer, the search stage, the Tuner and the bench share: data, training, export.

Keeping one copy of these is what makes a bench number a pipeline number: the bench calls the same
``make_dataset``, ``train_model`` and ``export_serving_model`` as ``run_fn``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras

from components import features
from components.transform import counts_vocab_name
from models.architecture import Architecture
from models.losses import training_loss
from models.zoo import build_ctr_model

if TYPE_CHECKING:
    from pipeline.configs import TrainConfig

ARCHITECTURE_ASSET = "architecture.json"
RAW_FEATURES_ASSET = "raw_features.json"
ASSETS_EXTRA = "assets.extra"
# TF Serving replays the PredictionLog records of this file when it loads a model version, so
# the first real requests do not pay for graph and kernel initialisation.
WARMUP_ASSET = "tf_serving_warmup_requests"
UNSEEN_WARMUP_VALUE = b"__warmup_unseen__"


def choose_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over the visible GPUs, else the default (CPU) strategy."""
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        strategy: tf.distribute.Strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    logging.info("Training with %s on %d replica(s).", type(strategy).__name__,
                 strategy.num_replicas_in_sync)
    return strategy


def vocab_sizes(tf_transform_output: tft.TFTransformOutput,
                categorical: list[str]) -> dict[str, int]:
    """Id range of each categorical field: vocabulary plus OOV buckets."""
    return {f: tf_transform_output.vocabulary_size_by_name(features.vocab_name(f))
            + features.NUM_OOV_BUCKETS for f in categorical}


def numeric_missing(tf_transform_output: tft.TFTransformOutput,
                    numerical: list[str]) -> list[str]:
    """The numerical fields with absent values in the train split (Transform's
    ``NUMERIC_MISSING_VOCAB``), in ``numerical`` order; [] when Transform wrote none."""
    if not numerical:
        return []
    try:
        path = tf_transform_output.vocabulary_file_by_name(features.NUMERIC_MISSING_VOCAB)
    except (ValueError, KeyError):  # a Transform graph without it
        return []
    if not path or not tf.io.gfile.exists(path):  # None: no numerical field was analysed
        return []
    with tf.io.gfile.GFile(path) as lines:
        names = {line.strip().split(" ", 1)[1] for line in lines if " " in line.strip()}
    return [f for f in numerical if f in names]


def vocab_counts(tf_transform_output: tft.TFTransformOutput,
                 categorical: list[str]) -> dict[str, list[int]]:
    """Train frequency of each id per categorical field, in id order (OOV ids count 0)."""
    counts = {}
    for f in categorical:
        path = tf_transform_output.vocabulary_file_by_name(counts_vocab_name(f))
        with tf.io.gfile.GFile(path) as lines:
            values = [int(line.split(" ", 1)[0]) for line in lines if line.strip()]
        counts[f] = values + [0] * features.NUM_OOV_BUCKETS
    return counts


def train_batch_size(train: TrainConfig, file_patterns: list[str] | str,
                     compression_type: str = "GZIP") -> int:
    """``train.batch_size_for`` the number of records in the train split's TFRecord files.

    Reads at most ``batch_size * min_steps_per_epoch`` records: a large split is not counted.
    """
    if train.min_steps_per_epoch <= 0:
        return train.batch_size
    patterns = [file_patterns] if isinstance(file_patterns, str) else list(file_patterns)
    files = sorted(f for p in patterns for f in tf.io.gfile.glob(p))
    if not files:
        raise FileNotFoundError(f"No train examples match {patterns}.")
    limit = train.batch_size * train.min_steps_per_epoch
    ds = tf.data.TFRecordDataset(files, compression_type=compression_type).take(limit)
    count = int(ds.batch(8192).reduce(tf.constant(0, tf.int64),
                                      lambda n, b: n + tf.shape(b, out_type=tf.int64)[0]))
    batch_size = train.batch_size_for(count)
    if batch_size != train.batch_size:
        logging.info("Batch size %d instead of %d: the train split has %d examples and an epoch "
                     "takes at least train.min_steps_per_epoch = %d steps.", batch_size,
                     train.batch_size, count, train.min_steps_per_epoch)
    return batch_size


def make_dataset(file_patterns: list[str] | str, tf_transform_output: tft.TFTransformOutput,
                 label: str, batch_size: int, *, shuffle: bool, seed: int,
                 input_names: list[str] | None = None) -> tf.data.Dataset:
    """Batches of ``(transformed features, label)`` from Transform's gzipped TFRecords.

    One pass over the files (Keras' ``fit`` runs the epochs); batch size is dynamic downstream.
    """
    patterns = [file_patterns] if isinstance(file_patterns, str) else list(file_patterns)
    files = sorted(f for p in patterns for f in tf.io.gfile.glob(p))
    if not files:
        raise FileNotFoundError(f"No transformed examples match {patterns}.")
    spec = tf_transform_output.transformed_feature_spec()
    if input_names is not None:
        spec = {k: v for k, v in spec.items() if k in set(input_names) | {label}}
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP",
                                 num_parallel_reads=tf.data.AUTOTUNE)
    if shuffle:
        ds = ds.shuffle(200_000, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda x: tf.io.parse_example(x, spec),
                                  num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(lambda x: (x, tf.reshape(x.pop(label), [-1, 1])))
    return ds.cache().prefetch(tf.data.AUTOTUNE) if not shuffle else ds.prefetch(tf.data.AUTOTUNE)


class PlateauControl(keras.callbacks.Callback):
    """Early stopping and learning-rate decay on the validation split, FuxiCTR-style.

    An epoch *improves* when its validation AUC or its validation logloss beats the best seen so
    far. Every ``lr_patience`` non-improving epochs in a row multiply the learning rate by
    ``lr_decay``; ``patience`` of them in a row stop training. Judging by both keeps slow
    learners (LR, FM: AUC wobbles while logloss still falls) and batch-norm warm-up (logloss
    jumps while AUC rises) from being cut short. The weights of the best-AUC epoch are restored
    at the end.

    Args:
      patience: non-improving epochs in a row that stop training.
      lr_decay: factor applied to the learning rate after ``lr_patience`` non-improving epochs
        in a row (1: off).
      lr_patience: non-improving epochs in a row before each decay.
      min_lr: floor of the decayed learning rate.
    """

    def __init__(self, patience: int, lr_decay: float, lr_patience: int = 1,
                 min_lr: float = 1e-6) -> None:
        super().__init__()
        self.patience = patience
        self.lr_decay = lr_decay
        self.lr_patience = lr_patience
        self.min_lr = min_lr
        self.best_auc = -float("inf")
        self.best_logloss = float("inf")
        self.best_epoch = 0
        self.best_weights: list | None = None
        self.wait = 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        auc, logloss = logs["val_auc"], logs["val_logloss"]
        improved = auc > self.best_auc or logloss < self.best_logloss
        self.best_logloss = min(self.best_logloss, logloss)
        if auc > self.best_auc:
            self.best_auc, self.best_epoch = auc, epoch + 1
            self.best_weights = self.model.get_weights()
        if improved:
            self.wait = 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.model.stop_training = True
        elif self.lr_decay < 1.0 and self.wait % self.lr_patience == 0:
            lr = self.model.optimizer.learning_rate
            lr.assign(max(float(lr.numpy()) * self.lr_decay, self.min_lr))
            logging.info("Epoch %d did not improve; learning rate now %.2g.", epoch + 1,
                         float(lr.numpy()))

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


class _TrainClock(keras.callbacks.Callback):
    """Seconds spent in training steps only (validation inside ``fit`` excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.train_seconds = 0.0
        self.steps = 0
        self._start = 0.0

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.train_seconds += time.perf_counter() - self._start
        self.steps += 1


@dataclass
class TrainResult:
    """A trained model and how training went."""

    model: keras.Model
    history: dict[str, list[float]]
    best_epoch: int
    train_seconds: float
    wall_seconds: float
    train_examples: int

    @property
    def examples_per_second(self) -> float:
        return self.train_examples / self.train_seconds if self.train_seconds else 0.0


def count_examples(ds: tf.data.Dataset) -> int:
    return int(ds.reduce(tf.constant(0, tf.int64),
                         lambda n, batch: n + tf.shape(batch[1], out_type=tf.int64)[0]))


def train_model(arch: Architecture, train_ds: tf.data.Dataset, eval_ds: tf.data.Dataset, *,
                learning_rate: float, max_epochs: int, patience: int, seed: int,
                lr_decay: float = 0.1, lr_patience: int = 1, log_dir: str | None = None,
                strategy: tf.distribute.Strategy | None = None,
                deterministic: bool = False) -> TrainResult:
    """Builds the model from ``arch`` and fits it with ``PlateauControl`` on the eval split.

    ``train_seconds`` counts training steps only, which is what examples/second is measured over.
    With ``deterministic``, TensorFlow's op determinism is switched on for this process, so a
    seed gives bit-identical training (multi-threaded CPU kernels otherwise reduce in varying
    order, and runs of one seed differ by about 0.002 AUC); it can be slower.
    """
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)
    strategy = strategy or choose_strategy()
    with strategy.scope():
        model = build_ctr_model(arch)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                      loss=training_loss(arch.loss),
                      metrics=[keras.metrics.AUC(name="auc", num_thresholds=1000),
                               keras.metrics.BinaryCrossentropy(name="logloss")])
    clock = _TrainClock()
    plateau = PlateauControl(patience, lr_decay, lr_patience)
    callbacks: list[keras.callbacks.Callback] = [clock, plateau]
    if log_dir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch"))
    start = time.perf_counter()
    history = model.fit(train_ds, validation_data=eval_ds, epochs=max_epochs,
                        callbacks=callbacks, verbose=2)
    wall = time.perf_counter() - start
    epochs_run = len(history.history.get("val_auc", []))
    train_examples = count_examples(train_ds) * epochs_run
    return TrainResult(model=model, history={k: [float(v) for v in vs]
                                             for k, vs in history.history.items()},
                       best_epoch=plateau.best_epoch,
                       train_seconds=clock.train_seconds, wall_seconds=wall,
                       train_examples=train_examples)


def raw_feature_spec(label: str, categorical: list[str], numerical: list[str],
                     with_label: bool, optional_numerical: Sequence[str] = ()
                     ) -> dict[str, tf.io.FixedLenFeature | tf.io.VarLenFeature]:
    """The declared raw tf.Example spec: categorical bytes, numerical float, label int64; an
    optional numerical field (its value may be absent) is a ``VarLenFeature``, as SchemaGen
    infers for a feature missing from some examples."""
    spec = {f: tf.io.FixedLenFeature([], tf.string) for f in categorical}
    spec.update({f: tf.io.VarLenFeature(tf.float32) if f in optional_numerical
                 else tf.io.FixedLenFeature([], tf.float32) for f in numerical})
    if with_label:
        spec[label] = tf.io.FixedLenFeature([], tf.int64)
    return spec


def servable_optional(arch: Architecture, optional_numerical: Sequence[str]) -> list[str]:
    """The numerical fields whose value may be absent at serving, in ``arch.numerical`` order:
    those declared optional and those with a missing-value embedding."""
    return [f for f in arch.numerical if f in {*optional_numerical, *arch.numeric_missing}]


def parse_raw_examples(examples: tf.Tensor, spec: dict[str, Any],
                       optional_numerical: Sequence[str] = ()) -> dict[str, Any]:
    """``tf.io.parse_example`` with ``spec``, except that an optional numerical field that
    ``spec`` declares fixed-length may be absent: it is parsed as a ``VarLenFeature`` and
    densified to ``spec``'s shape with NaN where absent, which Transform reads as a missing value.

    The pipeline's ``spec`` is SchemaGen's inference from the data, so a field declared optional
    whose train split happens to hold a value in every row is fixed-length there.
    """
    fixed = [f for f in optional_numerical
             if isinstance(spec.get(f), tf.io.FixedLenFeature) and spec[f].dtype.is_floating]
    parse_spec = {k: tf.io.VarLenFeature(v.dtype) if k in fixed else v for k, v in spec.items()}
    raw = tf.io.parse_example(examples, parse_spec)
    for f in fixed:
        shape = [int(d) for d in spec[f].shape]
        if shape not in ([], [1]):
            raise ValueError(f"optional numerical field {f!r} must hold one value per example; "
                             f"the schema says shape {shape}.")
        values = tf.sparse.reset_shape(raw[f], [tf.shape(examples, out_type=tf.int64)[0], 1])
        dense = tf.sparse.to_dense(values, default_value=tf.constant(float("nan"),
                                                                     spec[f].dtype))
        raw[f] = tf.reshape(dense, [-1, *shape])
    return raw


class ServingModule(tf.Module):
    """The exported object: the Keras model, the Transform layer and the two signatures."""

    def __init__(self, model: keras.Model, tf_transform_output: tft.TFTransformOutput,
                 label: str, categorical: list[str], numerical: list[str],
                 optional_numerical: Sequence[str] = ()) -> None:
        super().__init__()
        self.model = model
        self.tft_layer = tf_transform_output.transform_features_layer()
        self._input_names = list(model.input_names) if hasattr(model, "input_names") else []
        # Parse with the shapes the Transform graph was traced with (the pipeline's inferred
        # schema says [1], the bench's declared one []); optional fields may be absent.
        eval_spec = {k: v for k, v in tf_transform_output.raw_feature_spec().items()
                     if k in {label, *categorical, *numerical}}
        serving_spec = {k: v for k, v in eval_spec.items() if k != label}
        signature = [tf.TensorSpec(shape=[None], dtype=tf.string, name="examples")]

        @tf.function(input_signature=signature)
        def serve(examples: tf.Tensor) -> dict[str, tf.Tensor]:
            raw = parse_raw_examples(examples, serving_spec, optional_numerical)
            transformed = self.tft_layer(raw)
            inputs = {k: transformed[k] for k in self._input_names}
            return {"probability": tf.reshape(self.model(inputs), [-1])}

        @tf.function(input_signature=signature)
        def transform_features(examples: tf.Tensor) -> dict[str, tf.Tensor]:
            return self.tft_layer(parse_raw_examples(examples, eval_spec, optional_numerical))

        self.serve = serve
        self.transform_features = transform_features


def export_serving_model(model: keras.Model, tf_transform_output: tft.TFTransformOutput,
                         arch: Architecture, label: str, export_dir: str,
                         extra_assets: dict[str, Any] | None = None,
                         optional_numerical: Sequence[str] = ()) -> None:
    """Writes the SavedModel with ``serving_default`` and ``transform_features`` signatures.

    ``serving_default`` takes serialized raw tf.Examples (label absent) and returns
    ``probability``; unseen categories map to OOV ids and numeric outliers are clipped by the
    Transform graph. The architecture and the raw feature declaration are saved under
    ``assets.extra`` so the model can be rebuilt and fed without the pipeline.

    ``optional_numerical``: the fields declared optional (their value may be absent). Those with
    absent train values have a learned missing-value embedding (``arch.numeric_missing``). The
    others are served too when absent, with the encoding Transform gives an absent value
    (``f_z = 0``, the centre of the scaled train values; ``f_bucket = 0``), since no
    missing-value embedding could be learned for them.
    """
    optional = servable_optional(arch, optional_numerical)
    unlearned = [f for f in optional if f not in arch.numeric_missing]
    if unlearned:
        logging.warning("Declared optional, but no absent value in the train split: %s. An "
                        "absent value is served with Transform's absent-value encoding (z-score "
                        "0, bucket 0), not a learned missing-value embedding.", unlearned)
    module = ServingModule(model, tf_transform_output, label, arch.categorical, arch.numerical,
                           optional)
    tf.saved_model.save(module, export_dir, signatures={
        "serving_default": module.serve,
        "transform_features": module.transform_features,
    })
    write_assets_extra(export_dir, arch, label, extra_assets, optional)
    write_warmup_requests(export_dir, tf_transform_output, arch.categorical, arch.numerical,
                          optional)


def warmup_examples(tf_transform_output: tft.TFTransformOutput, categorical: Sequence[str],
                    numerical: Sequence[str], optional_numerical: Sequence[str] = ()
                    ) -> list[bytes]:
    """Two serialized raw tf.Examples for serving warm-up: every categorical field at its most
    frequent train value and every number 0; then every category unseen (the OOV path) and the
    optional numbers absent (the missing-value path). The label is absent, as when serving."""
    typical, unusual = tf.train.Example(), tf.train.Example()
    for field in categorical:
        vocab = tf_transform_output.vocabulary_by_name(features.vocab_name(field))
        top = vocab[0] if len(vocab) else UNSEEN_WARMUP_VALUE
        typical.features.feature[field].bytes_list.value.append(
            top if isinstance(top, bytes) else str(top).encode())
        unusual.features.feature[field].bytes_list.value.append(UNSEEN_WARMUP_VALUE)
    for field in numerical:
        typical.features.feature[field].float_list.value.append(0.0)
        if field not in optional_numerical:
            unusual.features.feature[field].float_list.value.append(0.0)
    return [typical.SerializeToString(), unusual.SerializeToString()]


def write_warmup_requests(export_dir: str, tf_transform_output: tft.TFTransformOutput,
                          categorical: Sequence[str], numerical: Sequence[str],
                          optional_numerical: Sequence[str] = ()) -> str:
    """Writes ``assets.extra/tf_serving_warmup_requests``: ``serving_default`` PredictRequests
    (input ``examples``) of 1 and of 2 :func:`warmup_examples`, as TF Serving's model warm-up
    reads them. Returns the file's path."""
    from tensorflow_serving.apis import (  # noqa: PLC0415
        model_pb2,
        predict_pb2,
        prediction_log_pb2,
    )

    examples = warmup_examples(tf_transform_output, categorical, numerical, optional_numerical)
    path = os.path.join(export_dir, ASSETS_EXTRA, WARMUP_ASSET)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for batch in (examples[:1], examples):
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(signature_name="serving_default"))
            request.inputs["examples"].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
            writer.write(prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())
    return path


def write_assets_extra(export_dir: str, arch: Architecture, label: str,
                       extra_raw: dict[str, Any] | None = None,
                       optional_numerical: Sequence[str] = ()) -> str:
    """Writes ``architecture.json`` and ``raw_features.json`` (the raw declaration, updated with
    ``extra_raw``) under ``export_dir/assets.extra``; returns that folder. ``raw_features.json``
    lists as ``optional_numerical`` the fields whose value may be absent: those declared optional
    and those with a missing-value embedding."""
    assets = os.path.join(export_dir, ASSETS_EXTRA)
    tf.io.gfile.makedirs(assets)
    with tf.io.gfile.GFile(os.path.join(assets, ARCHITECTURE_ASSET), "w") as f:
        f.write(arch.to_json())
    raw = {"label": label, "categorical": arch.categorical, "numerical": arch.numerical}
    optional = servable_optional(arch, optional_numerical)
    if optional:  # their serving spec accepts an absent value
        raw["optional_numerical"] = optional
    raw.update(extra_raw or {})
    with tf.io.gfile.GFile(os.path.join(assets, RAW_FEATURES_ASSET), "w") as f:
        f.write(json.dumps(raw, indent=2))
    return assets

