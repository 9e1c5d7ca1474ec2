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

Example:

>>> reg = IdL2Regularizer(num_ids=3, embedding_dim=2, initial_value=0.5)
>>> ids = tf.constant([0, 2]); vectors = tf.ones([2, 2])
>>> float(reg(ids, vectors)), float(reg.penalty(ids, vectors, batch_size=2))
(2.0, 1.0)

Args:
  num_ids: rows of the table being regularised.
  embedding_dim: the table's width ``D``.
  per_dimension: one strength per (id, dim) instead of per id.
  initial_value: the starting strength of every entry (official: 0).

Input shape: ``ids`` ``[N]`` integers and ``vectors`` ``[N, D]`` (the looked-up rows).
Output shape: a scalar, ``1/2 · sum Λ[ids] ⊙ vectors^2`` (not divided by the batch size).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras as keras


@keras.utils.register_keras_serializable(package="autorec")
class IdL2Regularizer(keras.layers.Layer):
    """Per-id (or per-id-and-dim) L2 strengths ``Λ >= 0`` (see the module docstring)."""

    def __init__(self, num_ids: int, embedding_dim: int, per_dimension: bool = False,
                 initial_value: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, value in (("num_ids", num_ids), ("embedding_dim", embedding_dim)):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer. Received: {name}={value}")
        if not initial_value >= 0:
            raise ValueError(f"initial_value must be >= 0. Received: initial_value="
                             f"{initial_value}")
        self.num_ids = int(num_ids)
        self.embedding_dim = int(embedding_dim)
        self.per_dimension = bool(per_dimension)
        self.initial_value = float(initial_value)

    @property
    def width(self) -> int:
        return self.embedding_dim if self.per_dimension else 1

    def build(self, input_shape: Any = None) -> None:
        self.lambdas = self.add_weight(
            name="lambdas", shape=(self.num_ids, self.width),
            initializer=keras.initializers.Constant(self.initial_value),
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


def penalty_gradient(lambdas: tf.Tensor, table: tf.Tensor, ids: tf.Tensor,
                     batch_size: tf.Tensor | int) -> tf.Tensor:
    """``∂Ω/∂table`` for a whole ``[N, D]`` table: ``c_r · Λ[r] ⊙ table[r] / |B|`` per row, ``c_r``
    the number of occurrences of row ``r`` in ``ids`` (rows not looked up get 0)."""
    counts = tf.math.unsorted_segment_sum(tf.ones_like(ids, table.dtype), ids,
                                          tf.shape(table)[0])
    return counts[:, None] * lambdas * table / tf.cast(batch_size, table.dtype)
