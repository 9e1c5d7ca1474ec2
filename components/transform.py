"""Transform's ``preprocessing_fn``: vocabularies, OOV, robust numeric scaling, quantile buckets.

Per categorical field: a vocabulary ordered by train frequency (ids 0..V-1, most frequent first)
plus ``NUM_OOV_BUCKETS`` ids for unseen values, and a second vocabulary file with the per-id counts
(``<field>_vocab_counts``) that frequency-aware embedding methods read. Per numerical field:
the value clipped to the train [q01, q99], ``log1p`` when the field is non-negative, a z-score, the
clipped raw value (AutoDis), an equal-frequency bucket id and a 0/1 "absent" indicator. A
numerical value may be absent from an example (an empty CSV cell of a field the dataset declares
optional); every statistic is computed over the present train values, the absent ones get 0 in
the three value features, and the names of the fields with absent train values are written as
the vocabulary ``NUMERIC_MISSING_VOCAB`` (with counts), which tells the model builders which
fields need a learned "missing" embedding. The label passes through as float.
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
    absent_names = []
    for field in spec["numerical"]:
        x = tf.cast(_dense(inputs[field], float("nan")), tf.float32)
        missing = tf.math.is_nan(x)
        present = tf.boolean_mask(x, tf.logical_not(missing))
        low_q, high_q = features.CLIP_QUANTILES
        boundaries = tft.quantiles(present, num_buckets=100, epsilon=0.005)[0]
        low, high = boundaries[int(low_q * 100) - 1], boundaries[int(high_q * 100) - 1]
        filled = tf.where(missing, tf.zeros_like(x), x)
        clipped = tf.clip_by_value(filled, low, high)
        non_negative = tft.min(present) >= 0.0

        def shape(v: tf.Tensor, non_negative: tf.Tensor = non_negative) -> tf.Tensor:
            return tf.where(non_negative, tf.math.log1p(tf.maximum(v, 0.0)), v)

        shaped_present = shape(tf.clip_by_value(present, low, high))
        mean, var = tft.mean(shaped_present), tft.var(shaped_present)
        centred = shape(clipped) - mean
        deviation = tf.sqrt(var)  # as tft.scale_to_z_score: unscaled where the variance is 0
        scaled = tf.where(deviation > 0.0, tf.math.divide_no_nan(centred, deviation), centred)
        bucket_boundaries = tft.quantiles(present, num_buckets=features.NUM_BUCKETS,
                                          epsilon=0.005)
        buckets = tft.apply_buckets(filled, bucket_boundaries)
        outputs[features.scaled_name(field)] = tf.where(missing, tf.zeros_like(scaled), scaled)
        outputs[features.raw_name(field)] = tf.where(missing, tf.zeros_like(clipped), clipped)
        outputs[features.bucket_name(field)] = tf.where(missing, tf.zeros_like(buckets), buckets)
        outputs[features.missing_name(field)] = tf.cast(missing, tf.float32)
        absent_names.append(tf.boolean_mask(tf.fill(tf.shape(x), field), missing))
    if absent_names:
        tft.vocabulary(tf.concat(absent_names, axis=0),
                       vocab_filename=features.NUMERIC_MISSING_VOCAB, store_frequency=True)
    return outputs
