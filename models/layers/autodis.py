"""AutoDis: numerical field embeddings by a learned soft discretisation over meta-embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf
import tf_keras as keras

from models.architecture import AUTODIS_AGGREGATIONS, AUTODIS_DEFAULTS

# LeakyReLU's slope for negative inputs in the meta network (PyTorch's default, as in the
# TorchEasyRec and Gorishniy et al. reimplementations of the paper).
LEAKY_SLOPE = 0.01
# The learned kink centres c_j start evenly spread over [-CENTRE_SPAN, CENTRE_SPAN] (z-scores).
CENTRE_SPAN = 2.0


@keras.utils.register_keras_serializable(package="autorec")
class AutoDis(keras.layers.Layer):
    """AutoDis embeddings of numerical fields (Guo et al., KDD 2021).

    Reference: Huifeng Guo, Bo Chen, Ruiming Tang, Weinan Zhang, Zhenguo Li, Xiuqiang He, "An
    Embedding Learning Framework for Numerical Features in CTR Prediction", KDD 2021
    (arXiv 2012.08986 v2), Sec. 3: meta-embeddings, automatic discretisation, aggregation.

    Equations, per numerical field ``j`` with scalar value ``x_j`` and ``H`` meta-embeddings
    ``ME_j in R^{H x d_j}``::

        h_j     = LeakyReLU(w_j * (x_j - c_j))              w_j, c_j in R^H
        x~_j    = W_j h_j + alpha h_j                       W_j in R^{H x H}, alpha skip factor
        x^_j^h  = exp(x~_j^h / tau) / sum_l exp(x~_j^l / tau)          (soft bucket weights)

        weighted_average:  e_j = sum_h x^_j^h ME_j^h
        max_pooling:       e_j = ME_j^k,  k = argmax_h x^_j^h
        top_k_sum:         e_j = sum_{h in top-K(x^_j)} ME_j^h

    ``c_j`` (``centres``, on by default) is our addition; the paper's equation is ``c_j = 0``. Its
    meta network has no bias, so ``x~_j`` is positively homogeneous in ``x_j``: for every
    ``x_j > 0`` the buckets rank the same (and for every ``x_j < 0``). On the paper's inputs,
    ``x / max`` in ``[0, 1]``, only the weighted average's sharpness then depends on the value;
    on our z-scored inputs max-pooling and top-K-sum give each field just two embeddings, one
    per sign of ``x_j``. The learned centres put the ``H`` kinks of ``h_j`` at ``x_j = c_j^h``,
    initialised evenly over ``[-2, 2]`` (the bulk of a z-score), so the bucket ranking changes
    along the value range. ``centres=False`` is the paper's network.

    Max-pooling and top-K-sum select meta-embeddings by a hard mask; their forward value is the
    paper's, and their gradient reaches the meta network ``w, W`` through the straight-through
    estimator (the mask's gradient taken as that of ``x^_j``), so the discretisation still learns.

    Example:

    >>> layer = AutoDis(embedding_dims=[4, 4], num_meta_embeddings=5)
    >>> out = layer(tf.constant([[0.5, -1.0], [2.0, 0.0], [0.1, 0.3]]))
    >>> [tuple(e.shape) for e in out], tuple(layer.bucket_weights(tf.zeros([3, 2])).shape)
    ([(3, 4), (3, 4)], (3, 2, 5))

    Args:
      embedding_dims: per field, in input column order, its embedding size ``d_j``.
      num_meta_embeddings: ``H``, meta-embeddings (soft buckets) per field.
      temperature: ``tau`` > 0 of the softmax; small values make the discretisation harder.
      skip_factor: ``alpha``, the weight of the skip connection ``alpha h_j``.
      aggregation: one of ``"weighted_average"``, ``"max_pooling"``, ``"top_k_sum"``.
      top_k: ``K`` of ``top_k_sum``, in ``[1, H]``.
      l2: L2 strength on the meta-embeddings; 0 adds no loss.
      embeddings_initializer: initializer of the meta-embeddings.
      kernel_initializer: initializer of ``w_j`` (as a ``[1, H]`` kernel) and ``W_j``.
      centres: learn the kink positions ``c_j`` (``True``) or fix them at 0 (the paper's).

    Input shape: ``[B, J]``, one (scaled) value per field.
    Output shape: a list with one ``[B, d_j]`` tensor per field.
    """

    def __init__(self, embedding_dims: Sequence[int],
                 num_meta_embeddings: int = AUTODIS_DEFAULTS["num_meta_embeddings"],
                 temperature: float = AUTODIS_DEFAULTS["temperature"],
                 skip_factor: float = AUTODIS_DEFAULTS["skip_factor"],
                 aggregation: str = AUTODIS_DEFAULTS["aggregation"],
                 top_k: int = AUTODIS_DEFAULTS["top_k"], l2: float = 0.0,
                 embeddings_initializer: Any = "truncated_normal",
                 kernel_initializer: Any = "glorot_uniform",
                 centres: bool = AUTODIS_DEFAULTS["centres"], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embedding_dims = [int(d) for d in embedding_dims]
        if not self.embedding_dims or min(self.embedding_dims) < 1:
            raise ValueError(f"AutoDis needs at least one field and every embedding dim >= 1. "
                             f"Received: embedding_dims={list(embedding_dims)}")
        if num_meta_embeddings < 1:
            raise ValueError(f"num_meta_embeddings must be >= 1. "
                             f"Received: num_meta_embeddings={num_meta_embeddings}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0. Received: temperature={temperature}")
        if aggregation not in AUTODIS_AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AUTODIS_AGGREGATIONS}. "
                             f"Received: aggregation={aggregation!r}")
        if not 1 <= top_k <= num_meta_embeddings:
            raise ValueError(f"top_k must be in [1, num_meta_embeddings={num_meta_embeddings}]. "
                             f"Received: top_k={top_k}")
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0. Received: l2={l2}")
        if not isinstance(centres, bool):
            raise ValueError(f"centres must be true or false. Received: centres={centres!r}")
        self.centres = centres
        self.num_meta_embeddings = int(num_meta_embeddings)
        self.temperature = float(temperature)
        self.skip_factor = float(skip_factor)
        self.aggregation = aggregation
        self.top_k = int(top_k)
        self.l2 = float(l2)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self._w: list[tf.Variable] = []
        self._w_matrix: list[tf.Variable] = []
        self._meta_embeddings: list[tf.Variable] = []
        self._centres: list[tf.Variable] = []

    def build(self, input_shape: Any) -> None:
        width = tf.TensorShape(input_shape)[-1]
        if width is not None and width != len(self.embedding_dims):
            raise ValueError(f"AutoDis expects [B, {len(self.embedding_dims)}] values, one per "
                             f"field. Received: input_shape={input_shape}")
        h = self.num_meta_embeddings
        regularizer = keras.regularizers.L2(self.l2) if self.l2 > 0 else None
        for j, dim in enumerate(self.embedding_dims):
            self._w.append(self.add_weight(name=f"w_{j}", shape=(1, h),
                                           initializer=_clone(self.kernel_initializer)))
            self._w_matrix.append(self.add_weight(name=f"W_{j}", shape=(h, h),
                                                  initializer=_clone(self.kernel_initializer)))
            if self.centres:
                spread = ([CENTRE_SPAN * (2 * k / (h - 1) - 1) for k in range(h)] if h > 1
                          else [0.0])
                self._centres.append(self.add_weight(
                    name=f"c_{j}", shape=(1, h),
                    initializer=keras.initializers.Constant([spread])))
            self._meta_embeddings.append(self.add_weight(
                name=f"meta_embeddings_{j}", shape=(h, dim),
                initializer=_clone(self.embeddings_initializer), regularizer=regularizer))
        super().build(input_shape)

    def bucket_weights(self, values: tf.Tensor) -> tf.Tensor:
        """The soft discretisation ``x^``: ``[B, J]`` values -> ``[B, J, H]`` softmax weights."""
        x = tf.cast(values, self.compute_dtype)
        w = tf.cast(tf.concat(self._w, axis=0), self.compute_dtype)  # [J, H]
        w_matrix = tf.cast(tf.stack(self._w_matrix), self.compute_dtype)  # [J, H, H]
        shifted = x[:, :, tf.newaxis]
        if self.centres:
            shifted = shifted - tf.cast(tf.concat(self._centres, axis=0), self.compute_dtype)
        hidden = tf.nn.leaky_relu(shifted * w, alpha=LEAKY_SLOPE)
        # x~_j^k = sum_l W_j[k, l] h_j^l + alpha h_j^k
        projected = tf.einsum("bjl,jkl->bjk", hidden, w_matrix) + self.skip_factor * hidden
        return tf.nn.softmax(projected / self.temperature, axis=-1)

    def call(self, inputs: tf.Tensor) -> list[tf.Tensor]:
        weights = self.bucket_weights(inputs)
        if self.aggregation != "weighted_average":
            k = 1 if self.aggregation == "max_pooling" else self.top_k
            chosen = tf.math.top_k(weights, k=k).indices  # exactly k, even among ties
            mask = tf.reduce_sum(tf.one_hot(chosen, self.num_meta_embeddings,
                                            dtype=weights.dtype), axis=-2)
            weights = mask + weights - tf.stop_gradient(weights)
        return [tf.matmul(weights[:, j, :], tf.cast(table, self.compute_dtype))
                for j, table in enumerate(self._meta_embeddings)]

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "embedding_dims": list(self.embedding_dims),
            "num_meta_embeddings": self.num_meta_embeddings,
            "temperature": self.temperature,
            "skip_factor": self.skip_factor,
            "aggregation": self.aggregation,
            "top_k": self.top_k,
            "l2": self.l2,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "centres": self.centres,
        }


def _clone(initializer: keras.initializers.Initializer) -> keras.initializers.Initializer:
    """A fresh initializer per weight, so unseeded random weights do not share values."""
    return initializer.__class__.from_config(initializer.get_config())
