"""Replays a SavedModel's TF Serving warm-up file the way the model server does at load."""

from __future__ import annotations

import os

import tensorflow as tf


def replay_warmup(model_dir: str) -> list[dict[str, tf.Tensor]]:
    """The outputs of every PredictionLog request in ``assets.extra/tf_serving_warmup_requests``,
    each run through the signature it names with its ``inputs``."""
    from tensorflow_serving.apis import prediction_log_pb2  # noqa: PLC0415

    loaded = tf.saved_model.load(model_dir)
    path = os.path.join(model_dir, "assets.extra", "tf_serving_warmup_requests")
    outputs = []
    for record in tf.data.TFRecordDataset(path):
        request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
        signature = loaded.signatures[request.model_spec.signature_name]
        outputs.append(signature(**{k: tf.constant(tf.make_ndarray(v))
                                    for k, v in request.inputs.items()}))
    return outputs
