"""λOpt's fine-grained L2 regulariser: one non-negative strength per id (and optionally per dim).

Reference: Yihong Chen, Bei Chen, Xiangnan He, Chen Gao, Yong Li, Jian-Guang Lou, Yue Wang,
"λOpt: Learn to Regularize Recommender Models in Finer Levels", KDD 2019 (arXiv 1905.11596);
official code ``yihong-chen/lambda-opt`` at commit ``e6182df`` (``factorizer/modules.py``
``MF.l2_penalty``, ``regularizer/modules/lambda_network_mf.py``).

The penalty covers only the rows a batch ``B`` looks up (as the official ``l2_penalty`` and
LightGCN's L2), with LightGCN's ``1/2`` and ``1/|B|`` so that a constant ``Λ = l2`` is exactly
``models.zoo.mf.bpr_loss``'s L2 term::

    Ω(Λ) = 1/2 · sum_{occurrences r in B} sum_d Λ[r, d] · e[r, d]^2 / |B|,      Λ >= 0

``Λ`` is ``[num_ids, 1]`` (per id: the paper's user-wise / item-wise) or ``[num_ids, D]``
(``per_dimension``: the paper's dimension+user / dimension+item). Its gradient with respect to a
row is ``c_r · Λ[r] ⊙ e_r / |B|`` (``c_r``: how often row ``r`` occurs in the batch), which
``penalty_gradient`` returns for whole tables (what λOpt's look-ahead differentiates).

Fixed strengths (``trainable=False``, the Keras layer argument; ``initial_value`` one value per
id) are how a retrained model applies a searched ``Architecture.id_l2``
(``models.layers.embeddings.FieldEmbedding``).

Example:

>>> reg = IdL2Regularizer(num_ids=3, embedding_dim=2, initial_value=0.5)
>>> ids = tf.constant([0, 2]); vectors = tf.ones([2, 2])
>>> float(reg(ids, vectors)), float(reg.penalty(ids, vectors, batch_size=2))
(2.0, 1.0)

Args:
  num_ids: rows of the table being regularised.
  embedding_dim: the table's width ``D``.
  per_dimension: one strength per (id, dim) instead of per id.
  initial_value: the starting strength of every entry (official: 0), or a sequence of
    ``num_ids`` strengths, one per id (the same for each of its dims).

Input shape: ``ids`` ``[N]`` integers and ``vectors`` ``[N, D]`` (the looked-up rows).
Output shape: a scalar, ``1/2 · sum Λ[ids] ⊙ vectors^2`` (not divided by the batch size).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras


@keras.utils.register_keras_serializable(package="autorec")
class IdL2Regularizer(keras.layers.Layer):
    """Per-id (or per-id-and-dim) L2 strengths ``Λ >= 0`` (see the module docstring)."""

    def __init__(self, num_ids: int, embedding_dim: int, per_dimension: bool = False,
                 initial_value: float | Sequence[float] = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, value in (("num_ids", num_ids), ("embedding_dim", embedding_dim)):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer. Received: {name}={value}")
        values = np.asarray(initial_value, dtype=np.float64)
        if values.ndim > 1 or (values.ndim == 1 and len(values) != int(num_ids)):
            raise ValueError(f"initial_value must be a number or one value per id ({num_ids}). "
                             f"Received: shape {values.shape}")
        if not np.all(values >= 0):  # NaN fails too
            raise ValueError(f"initial_value must be >= 0. Received: initial_value="
                             f"{values.min() if values.ndim else values}")
        self.num_ids = int(num_ids)
        self.embedding_dim = int(embedding_dim)
        self.per_dimension = bool(per_dimension)
        self.initial_value = float(values) if values.ndim == 0 else values.tolist()

    @property
    def width(self) -> int:
        return self.embedding_dim if self.per_dimension else 1

    def build(self, input_shape: Any = None) -> None:
        initial = np.broadcast_to(np.reshape(self.initial_value, (-1, 1)),
                                  (self.num_ids, self.width))
        self.lambdas = self.add_weight(
            name="lambdas", shape=(self.num_ids, self.width),
            initializer=keras.initializers.Constant(initial),
            constraint=keras.constraints.NonNeg(), trainable=True)
        self.built = True

    def clamp(self) -> None:
        """Projects ``Λ`` back onto ``Λ >= 0`` (after an optimizer step; official ``clamp_(0)``)."""
        self.lambdas.assign(tf.maximum(self.lambdas, 0.0))

    def call(self, ids: tf.Tensor, vectors: tf.Tensor) -> tf.Tensor:
        if not self.built:
            self.build()
        lam = tf.gather(tf.cast(self.lambdas, vectors.dtype), ids)
        return 0.5 * tf.reduce_sum(lam * tf.square(vectors))

    def penalty(self, ids: tf.Tensor, vectors: tf.Tensor, batch_size: tf.Tensor | int
                ) -> tf.Tensor:
        """``Ω``: :meth:`call` divided by the batch size."""
        return self(ids, vectors) / tf.cast(batch_size, vectors.dtype)

    def per_id(self) -> tf.Tensor:
        """``[num_ids]`` strength per id (the mean over dims when ``per_dimension``)."""
        return tf.reduce_mean(self.lambdas, axis=1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_ids": self.num_ids,
                "embedding_dim": self.embedding_dim, "per_dimension": self.per_dimension,
                "initial_value": self.initial_value}


def row_scales(ids: tf.Tensor, num_rows: tf.Tensor | int, batch_size: tf.Tensor | int,
               dtype: tf.DType = tf.float32) -> tf.Tensor:
    """``c_r / |B|`` per row, ``[num_rows, 1]``: ``c_r`` the number of occurrences of row ``r`` in
    ``ids``. The penalty gradient of a table is ``row_scales ⊙ Λ ⊙ table``."""
    # A segment sum, not ``bincount``: XLA would compile ``bincount`` once per id *value*.
    counts = tf.math.unsorted_segment_sum(tf.ones_like(ids, dtype), ids, num_rows)
    return (counts / tf.cast(batch_size, dtype))[:, None]


def penalty_gradient(lambdas: tf.Tensor, table: tf.Tensor, ids: tf.Tensor,
                     batch_size: tf.Tensor | int) -> tf.Tensor:
    """``∂Ω/∂table`` for a whole ``[N, D]`` table: ``c_r · Λ[r] ⊙ table[r] / |B|`` per row, ``c_r``
    the number of occurrences of row ``r`` in ``ids`` (rows not looked up get 0)."""
    return row_scales(ids, tf.shape(table)[0], batch_size, table.dtype) * lambdas * table
