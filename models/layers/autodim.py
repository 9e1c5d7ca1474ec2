"""AutoDim's searching embedding: a soft, Gumbel-softmax choice of each field's embedding size.

Zhao et al., "Memory-efficient Embedding for Recommendations" (AutoDim), WWW 2021,
arXiv:2006.14827, Sec. 2 (weight-sharing embedding, linear dimension unification, Gumbel-softmax
selection). The search algorithm that drives it is ``models.search.autodim``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf
import tf_keras as keras

from components.features import id_name
from models.layers.embeddings import FieldEmbedding, _as_vector, _clone_initializer


@keras.utils.register_keras_serializable(package="autorec")
class AutoDimEmbedding(keras.layers.Layer):
    """Per categorical field, a mixture of ``N`` candidate embedding sizes ``d_1 < ... < d_N``.

    Equations (AutoDim, Sec. 2.1-2.3), for field ``m`` with id ``x_m`` and candidate ``n``::

        e_m^n  = E_m[x_m, :d_n]                      weight sharing: E_m in R^{vocab_m x d_N}
        e_m^n  = E_m[x_m, o_n : o_n + d_n]           separate tables (``weight_sharing=False``):
                                                     E_m in R^{vocab_m x sum_n d_n},
                                                     o_n = d_1 + ... + d_{n-1}
        ê_m^n  = BN_n(W_n^T e_m^n + b_n)             W_n in R^{d_n x D}, shared by all fields;
                                                     BN without affine (statistics per field)
        p_m^n  = softmax_n((log α_m^n + g_m^n) / τ)  g = -log(-log u), u ~ U(0, 1), one draw
                                                     per batch (training only; g = 0 otherwise)
        e_m    = sum_n p_m^n ê_m^n                   in R^D

    ``log α`` is the architecture weight ``alpha_logits`` (``[M, N]``, zeros: uniform); ``τ`` is
    the non-trainable ``temperature``, annealed by the search. ``derive()`` is the hard choice
    ``argmax_n α_m^n`` per field. Numerical fields are not searched: they enter through a plain
    ``FieldEmbedding`` of size ``D``, after the categorical fields, so the output matches
    ``FieldEmbedding``'s (one ``[B, D]`` tensor per field).

    Example:

    >>> layer = AutoDimEmbedding(["user"], [], {"user": 10}, candidate_dims=[2, 4], output_dim=4)
    >>> out = layer({"user_id": tf.constant([1, 2], tf.int64)})
    >>> [tuple(e.shape) for e in out], layer.derive()
    ([(2, 4)], {'user': 2})

    Args:
      categorical: categorical field names (searched), in output order.
      numerical: numerical field names (fixed size ``output_dim``), after the categorical ones.
      vocab_sizes: per categorical field, the number of ids.
      candidate_dims: the candidate sizes ``d_n``, strictly increasing, each >= 1.
      output_dim: the unified size ``D`` (the paper uses ``d_N``).
      numeric_encoding: per numerical field ``"scaled"`` or ``"bucket"`` (see
        ``FieldEmbedding``).
      num_buckets: rows of a bucket-encoded field's table.
      l2: L2 strength on the tables.
      embeddings_initializer: initializer of the tables.
      temperature: the initial ``τ`` (> 0).
      weight_sharing: candidate ``n`` reads the first ``d_n`` columns of one ``d_N``-wide table
        (the paper's preferred option); False gives every candidate its own ``d_n`` columns
        (the paper's option (a), one table per candidate), so a large candidate does not also
        train the small candidates' columns.

    Input shape: a dict of ``f_id`` features (``[B]`` or ``[B, 1]``) plus the numerical fields'
      features (see ``FieldEmbedding``).
    Output shape: a list of ``[B, D]`` tensors, categorical fields first.
    """

    def __init__(self, categorical: Sequence[str], numerical: Sequence[str],
                 vocab_sizes: Mapping[str, int], candidate_dims: Sequence[int], output_dim: int,
                 numeric_encoding: Mapping[str, str] | None = None, num_buckets: int = 20,
                 l2: float = 0.0, embeddings_initializer: Any = "truncated_normal",
                 temperature: float = 1.0, weight_sharing: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.categorical = list(categorical)
        self.numerical = list(numerical)
        if not self.categorical:
            raise ValueError("AutoDimEmbedding searches categorical fields and needs at least "
                             "one. Received: categorical=[]")
        dims = [int(d) for d in candidate_dims]
        if not dims or min(dims) < 1 or any(b <= a for a, b in zip(dims, dims[1:], strict=False)):
            raise ValueError(f"candidate_dims must be strictly increasing sizes >= 1. "
                             f"Received: candidate_dims={list(candidate_dims)}")
        self.candidate_dims = dims
        if output_dim < 1:
            raise ValueError(f"output_dim must be >= 1. Received: output_dim={output_dim}")
        self.output_dim = int(output_dim)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0. Received: temperature={temperature}")
        self.initial_temperature = float(temperature)
        self.weight_sharing = bool(weight_sharing)
        # candidate n's first column in the table
        self.offsets = ([0] * len(dims) if self.weight_sharing
                        else [sum(dims[:n]) for n in range(len(dims))])
        self.vocab_sizes = {f: int(vocab_sizes.get(f, 0)) for f in self.categorical}
        for f, size in self.vocab_sizes.items():
            if size < 1:
                raise ValueError(f"Field {f!r} needs a vocab size >= 1. "
                                 f"Received: vocab_sizes={dict(vocab_sizes)}")
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0. Received: l2={l2}")
        self.l2 = float(l2)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.numeric_encoding = {f: (numeric_encoding or {}).get(f, "scaled")
                                 for f in self.numerical}
        self.num_buckets = int(num_buckets)
        self.numeric = None
        if self.numerical:
            self.numeric = FieldEmbedding(
                [], self.numerical, {}, {f: self.output_dim for f in self.numerical},
                numeric_encoding=self.numeric_encoding, num_buckets=self.num_buckets, l2=l2,
                embeddings_initializer=_clone_initializer(self.embeddings_initializer),
                name="numeric_embedding")
        self.projections = [keras.layers.Dense(self.output_dim, name=f"unify_{d}")
                            for d in self.candidate_dims]
        self.norms = [keras.layers.BatchNormalization(axis=[-2, -1], center=False, scale=False,
                                                      name=f"unify_{d}_bn")
                      for d in self.candidate_dims]
        self._tables: dict[str, tf.Variable] = {}

    @property
    def fields(self) -> list[str]:
        return self.categorical + self.numerical

    def build(self, input_shape: Any) -> None:
        regularizer = keras.regularizers.L2(self.l2) if self.l2 > 0 else None
        width = self.offsets[-1] + self.candidate_dims[-1]
        for f in self.categorical:
            self._tables[f] = self.add_weight(
                name=f"{f}_embedding", shape=(self.vocab_sizes[f], width),
                initializer=_clone_initializer(self.embeddings_initializer),
                regularizer=regularizer, trainable=True)
        num_fields = len(self.categorical)
        for dim, projection, norm in zip(self.candidate_dims, self.projections, self.norms,
                                         strict=True):
            projection.build((None, num_fields, dim))
            norm.build((None, num_fields, self.output_dim))
        if self.numeric is not None:
            self.numeric.build(input_shape)
        self.alpha_logits = self.add_weight(
            name="alpha_logits", shape=(num_fields, len(self.candidate_dims)),
            initializer="zeros", trainable=True)
        self.temperature = self.add_weight(
            name="temperature", shape=(), trainable=False,
            initializer=keras.initializers.Constant(self.initial_temperature))
        super().build(input_shape)

    @property
    def architecture_variables(self) -> list[tf.Variable]:
        """The architecture weights ``log α`` (updated on validation batches by the search)."""
        return [self.alpha_logits]

    def selection(self, training: bool = False) -> tf.Tensor:
        """``p`` of shape ``[M, N]``: Gumbel-softmax when training, plain softmax otherwise."""
        logits = tf.cast(self.alpha_logits, self.compute_dtype)
        if training:
            uniform = tf.random.uniform(tf.shape(logits), minval=1e-10, maxval=1.0,
                                        dtype=logits.dtype)
            logits = logits - tf.math.log(-tf.math.log(uniform))
        return tf.nn.softmax(logits / tf.cast(self.temperature, logits.dtype), axis=-1)

    def call(self, inputs: Mapping[str, tf.Tensor], training: bool | None = None
             ) -> list[tf.Tensor]:
        looked_up = tf.stack(
            [tf.gather(self._tables[f], _as_vector(inputs[id_name(f)], id_name(f)))
             for f in self.categorical], axis=1)
        looked_up = tf.cast(looked_up, self.compute_dtype)
        unified = tf.stack(
            [norm(projection(looked_up[..., start:start + dim]), training=training)
             for dim, start, projection, norm in zip(self.candidate_dims, self.offsets,
                                                     self.projections, self.norms, strict=True)],
            axis=2)
        weights = self.selection(bool(training))
        mixed = tf.einsum("bmnd,mn->bmd", unified, weights)
        outputs = tf.unstack(mixed, axis=1)
        if self.numeric is not None:
            outputs += self.numeric(inputs)
        return outputs

    def expected_dims(self) -> tf.Tensor:
        """``[M]``: each field's expected size ``sum_n p_m^n d_n`` under ``softmax(log α)``."""
        probabilities = tf.nn.softmax(self.alpha_logits, axis=-1)
        return tf.linalg.matvec(probabilities, tf.constant(self.candidate_dims, tf.float32))

    def derive(self) -> dict[str, int]:
        """The hard choice per categorical field: ``d_k``, ``k = argmax_n α_m^n``."""
        chosen = tf.argmax(self.alpha_logits, axis=-1).numpy()
        return {f: self.candidate_dims[int(k)] for f, k in zip(self.categorical, chosen,
                                                               strict=True)}

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "categorical": list(self.categorical),
            "numerical": list(self.numerical),
            "vocab_sizes": dict(self.vocab_sizes),
            "candidate_dims": list(self.candidate_dims),
            "output_dim": self.output_dim,
            "numeric_encoding": dict(self.numeric_encoding),
            "num_buckets": self.num_buckets,
            "l2": self.l2,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
            "temperature": self.initial_temperature,
            "weight_sharing": self.weight_sharing,
        }
