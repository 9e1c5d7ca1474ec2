"""Dimension unification: each field's embedding of its own size projected to one common size."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tensorflow as tf
import tf_keras as keras


@keras.utils.register_keras_serializable(package="autorec")
class FieldProjection(keras.layers.Layer):
    """A linear map per field from its size ``d_f`` to the unified size ``D``.

    Equation (AutoDim's linear dimension unification, Zhao et al., "Memory-efficient Embedding
    for Recommendations", WWW 2021, arXiv:2006.14827, Sec. 2.2; at retrain time, without batch
    normalisation)::

        ẽ_f = W_f^T e_f + b_f        W_f in R^{d_f x D},  b_f in R^D

    so that FM-style inner products ``<ẽ_i, ẽ_j>`` and stacked interactions accept fields of
    mixed sizes. It adds ``sum_f (d_f + 1) D`` parameters (``d_f D`` without bias).

    Example:

    >>> layer = FieldProjection(["a", "b"], {"a": 2, "b": 8}, output_dim=4)
    >>> [tuple(e.shape) for e in layer([tf.ones([3, 2]), tf.ones([3, 8])])]
    [(3, 4), (3, 4)]

    Args:
      fields: field names, in input order.
      embedding_dims: per field, its input size ``d_f``.
      output_dim: the unified size ``D``.
      use_bias: whether to add ``b_f``.
      l2: L2 strength on the kernels ``W_f``.
      kernel_initializer: initializer of the kernels (cloned per field).

    Input shape: a list of ``[B, d_f]`` tensors, one per field in ``fields`` order.
    Output shape: a list of ``[B, D]`` tensors.
    """

    def __init__(self, fields: Sequence[str], embedding_dims: Mapping[str, int], output_dim: int,
                 use_bias: bool = True, l2: float = 0.0,
                 kernel_initializer: Any = "glorot_uniform", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fields = list(fields)
        if not self.fields:
            raise ValueError("FieldProjection needs at least one field. Received: fields=[]")
        self.embedding_dims = {f: int(embedding_dims.get(f, 0)) for f in self.fields}
        for f, dim in self.embedding_dims.items():
            if dim < 1:
                raise ValueError(f"Field {f!r} needs an embedding dim >= 1. "
                                 f"Received: embedding_dims={dict(embedding_dims)}")
        if output_dim < 1:
            raise ValueError(f"output_dim must be >= 1. Received: output_dim={output_dim}")
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0. Received: l2={l2}")
        self.output_dim = int(output_dim)
        self.use_bias = bool(use_bias)
        self.l2 = float(l2)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        regularizer = keras.regularizers.L2(self.l2) if self.l2 > 0 else None
        self.maps = [keras.layers.Dense(
            self.output_dim, use_bias=self.use_bias, kernel_regularizer=regularizer,
            kernel_initializer=self.kernel_initializer.__class__.from_config(
                self.kernel_initializer.get_config()), name=f"{f}_projection")
            for f in self.fields]

    def build(self, input_shape: Any) -> None:
        for f, dense in zip(self.fields, self.maps, strict=True):
            dense.build((None, self.embedding_dims[f]))
        super().build(input_shape)

    def add_table_l2(self, tables: Mapping[str, tf.Variable], l2: float) -> None:
        """Adds ``l2 · |T_f W_f|^2`` per field ``f`` of ``tables`` (its whole table ``T_f``, or
        field vector as one row) as a loss: the L2 of the embeddings the model uses, which
        ``W_f`` cannot undo by shrinking ``T_f`` (``Architecture.projected_l2``). Call it once
        this layer is built, on tables that carry no L2 of their own. The penalty is not part
        of either layer's config: ``build_ctr_model`` adds it, and a model rebuilt from its
        config (or a loaded SavedModel) trains without it."""
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0. Received: l2={l2}")
        if not self.built:
            raise ValueError("add_table_l2 needs the built layer (call it on the embeddings "
                             "first).")
        maps = dict(zip(self.fields, self.maps, strict=True))
        for f, table in tables.items():
            if l2 > 0 and f in maps:
                self.add_loss(projected_l2_penalty(table, maps[f].kernel, l2))

    def call(self, inputs: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        if len(inputs) != len(self.fields):
            raise ValueError(f"FieldProjection expects {len(self.fields)} field embeddings. "
                             f"Received: {len(inputs)}")
        return [dense(tf.cast(e, self.compute_dtype)) for dense, e in zip(self.maps, inputs,
                                                                          strict=True)]

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "fields": list(self.fields),
            "embedding_dims": dict(self.embedding_dims),
            "output_dim": self.output_dim,
            "use_bias": self.use_bias,
            "l2": self.l2,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }


def projected_l2_penalty(table: tf.Variable, projection: tf.Variable,
                         l2: float) -> Callable[[], tf.Tensor]:
    """A zero-argument loss ``l2 · |T P|_F^2`` (``T``: a ``[n, d]`` table or ``[d]`` vector,
    ``P``: ``[d, D]``): Keras' ``L2(l2)`` applied to the projected table."""

    def penalty() -> tf.Tensor:
        rows = tf.reshape(table, [-1, projection.shape[0]])
        return l2 * tf.reduce_sum(tf.square(tf.matmul(rows, projection)))

    return penalty
