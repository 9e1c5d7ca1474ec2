"""Transform's ``preprocessing_fn``: vocabularies, OOV, robust numeric scaling, quantile buckets.

Per categorical field: a vocabulary ordered by train frequency (ids 0..V-1, most frequent first)
plus ``NUM_OOV_BUCKETS`` ids for unseen values, and a second vocabulary file with the per-id counts
(``<field>_vocab_counts``) that frequency-aware embedding methods read. Per numerical field:
the value clipped to the train [q01, q99], ``log1p`` when the field is non-negative, a z-score, the
clipped raw value (AutoDis), and an equal-frequency bucket id. The label passes through as float.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tensorflow_transform as tft

from components import features


def counts_vocab_name(field: str) -> str:
    """Vocabulary file holding ``count value`` lines in id order."""
    return features.vocab_name(field) + "_counts"


def _dense(x: tf.Tensor | tf.SparseTensor, default: Any) -> tf.Tensor:
    """Rank-1 dense tensor; a SparseTensor (schema without shapes) is filled with ``default``."""
    if isinstance(x, tf.SparseTensor):
        x = tf.sparse.to_dense(
            tf.SparseTensor(x.indices, x.values, [x.dense_shape[0], 1]), default_value=default)
    return tf.reshape(x, [-1])


def preprocessing_fn(inputs: dict[str, Any], custom_config: dict[str, Any]) -> dict[str, Any]:
    """Maps raw features to the model's transformed features (names in ``components.features``).

    Args:
      inputs: raw features, as parsed by Transform from the Examples.
      custom_config: ``{"spec": {"label": str, "categorical": [...], "numerical": [...]}}``
        (the pipeline adds the run config and code version, which only key the cache).

    Returns:
      The transformed features and the label.
    """
    spec = custom_config["spec"]
    outputs: dict[str, Any] = {}
    label = spec["label"]
    outputs[label] = tf.cast(_dense(inputs[label], 0), tf.float32)
    for field in spec["categorical"]:
        x = _dense(inputs[field], b"")
        if x.dtype != tf.string:
            x = tf.strings.as_string(x)
        tft.vocabulary(x, vocab_filename=counts_vocab_name(field), store_frequency=True,
                       frequency_threshold=features.VOCAB_FREQUENCY_THRESHOLD)
        outputs[features.id_name(field)] = tft.compute_and_apply_vocabulary(
            x,
            num_oov_buckets=features.NUM_OOV_BUCKETS,
            frequency_threshold=features.VOCAB_FREQUENCY_THRESHOLD,
            vocab_filename=features.vocab_name(field),
        )
    for field in spec["numerical"]:
        x = tf.cast(_dense(inputs[field], 0.0), tf.float32)
        low_q, high_q = features.CLIP_QUANTILES
        boundaries = tft.quantiles(x, num_buckets=100, epsilon=0.005)[0]
        low, high = boundaries[int(low_q * 100) - 1], boundaries[int(high_q * 100) - 1]
        clipped = tf.clip_by_value(x, low, high)
        non_negative = tft.min(x) >= 0.0
        shaped = tf.where(non_negative, tf.math.log1p(tf.maximum(clipped, 0.0)), clipped)
        outputs[features.scaled_name(field)] = tft.scale_to_z_score(shaped)
        outputs[features.raw_name(field)] = clipped
        outputs[features.bucket_name(field)] = tft.bucketize(
            x, num_buckets=features.NUM_BUCKETS, epsilon=0.005)
    return outputs
