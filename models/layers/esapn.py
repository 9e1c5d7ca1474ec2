"""ESAPN's per-id embedding: every id has its own size, mapped up to one output size.

Liu, Zhao, Wang, Liu, Tang, "Automated Embedding Size Search in Deep Recommender Systems"
(ESAPN), SIGIR 2020, DOI 10.1145/3397271.3401436; official code ``zgahhblhc/ESAPN``
(``model/train.py``). The search algorithm that grows the sizes is ``models.search.esapn``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from models.architecture import id_dims_chain, id_dims_params
from models.layers.embeddings import PerFieldEmbedding, _clone_initializer

PAPER_CANDIDATE_DIMS = (2, 4, 8, 16, 64, 128)  # the official code's Emb_Size


@keras.utils.register_keras_serializable(package="autorec")
class ESAPNEmbedding(keras.layers.Layer):
    """One table whose id ``i`` uses its first ``d_{s_i}`` columns, mapped up to ``d_K``.

    Equations (ESAPN, Sec. 3.1; official ``RS_MLP.forward``), for candidate sizes
    ``d_1 < ... < d_K`` and id ``i`` of size index ``s_i``::

        x_i   = E[i, :d_{s_i}]                       E in R^{num_ids x d_K}
        z_{s_i} = x_i,   z_{k+1} = W_k^T z_k + b_k   W_k in R^{d_k x d_{k+1}}, k = s_i .. K-1
        e_i   = z_K                                  in R^{d_K}

    The chain of maps between consecutive sizes is shared by all ids of the table. Growing id
    ``i`` from ``d_k`` to ``d_{k+1}`` (``grow``) writes ``E[i, :d_{k+1}] = W_k^T x_i + b_k``, the
    official code's initialisation of the larger embedding, which leaves ``e_i`` unchanged. The
    official code adds batch norm and ``tanh`` after the chain for its MLP; this layer stops at
    the linear output so that it also serves dot-product models (MF). The maps start as
    zero-padding identities (``map_initializer="identity"``), so that a fresh id of size ``d``
    is its ``d`` free coordinates; with ``trainable_maps=False`` they stay so (a ragged table
    zero-padded to ``d_K``, what MF uses, ``models.zoo.mf``), and store no parameters;
    ``rescale_init`` multiplies those by ``sqrt(d_K / d)`` at build time, so that every id
    starts with the norm of a ``d_K``-sized one (small ids otherwise start with near-zero
    scores and learn slowly). It is mask-based (one dense
    table), so that training and XLA see fixed shapes; only the first ``d_{s_i}`` columns of
    row ``i`` are ever read, and ``stored_params`` counts those plus the maps.

    Example:

    >>> layer = ESAPNEmbedding(num_ids=3, candidate_dims=[2, 4], id_dims=[2, 4, 2])
    >>> tuple(layer(tf.constant([0, 1])).shape), layer.stored_params()
    ((2, 4), 20)

    Args:
      num_ids: rows of the table.
      candidate_dims: the sizes ``d_k``, strictly increasing, each >= 1; ``d_K`` is the output.
      id_dims: per id its size (one of ``candidate_dims``); None gives every id ``d_1``.
      use_bias: whether the maps have a bias ``b_k`` (the official ``nn.Linear`` does).
      l2: L2 strength on the table.
      embeddings_initializer: initializer of the table.
      map_initializer: initializer of the ``W_k`` (cloned per map).
      rescale_init: scale each id's initial coordinates by ``sqrt(d_K / d_{s_i})``.
      trainable_maps: whether the maps train; frozen identity maps are zero-padding, which
        ``stored_params`` does not count (a frozen map of another initializer is counted).

    Input shape: integer ids of any shape ``S``.
    Output shape: ``S + [d_K]``.
    """

    def __init__(self, num_ids: int, candidate_dims: Sequence[int],
                 id_dims: Sequence[int] | None = None, use_bias: bool = True, l2: float = 0.0,
                 embeddings_initializer: Any = "truncated_normal",
                 map_initializer: Any = "identity", rescale_init: bool = True,
                 trainable_maps: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(num_ids) < 1:
            raise ValueError(f"num_ids must be a positive integer. Received: num_ids={num_ids}")
        dims = [int(d) for d in candidate_dims]
        if not dims or dims[0] < 1 or any(b <= a for a, b in pairwise(dims)):
            raise ValueError(f"candidate_dims must be strictly increasing positive sizes. "
                             f"Received: candidate_dims={list(candidate_dims)}")
        self.num_ids = int(num_ids)
        self.candidate_dims = dims
        sizes = [dims[0]] * self.num_ids if id_dims is None else [int(d) for d in id_dims]
        if len(sizes) != self.num_ids:
            raise ValueError(f"id_dims needs one size per id ({self.num_ids}). "
                             f"Received: len(id_dims)={len(sizes)}")
        unknown = sorted(set(sizes) - set(dims))
        if unknown:
            raise ValueError(f"id_dims holds sizes outside candidate_dims {dims}. "
                             f"Received: {unknown}")
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0. Received: l2={l2}")
        self.initial_id_dims = sizes
        self.rescale_init = bool(rescale_init)
        self.use_bias = bool(use_bias)
        self.l2 = float(l2)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.map_initializer = keras.initializers.get(map_initializer)
        self.trainable_maps = bool(trainable_maps)
        self.maps = [keras.layers.Dense(
            out, use_bias=self.use_bias, name=f"map_{d}_{out}", trainable=self.trainable_maps,
            kernel_initializer=_clone_initializer(self.map_initializer))
            for d, out in pairwise(dims)]

    @property
    def output_dim(self) -> int:
        return self.candidate_dims[-1]

    def build(self, input_shape: Any = None) -> None:
        regularizer = keras.regularizers.L2(self.l2) if self.l2 > 0 else None
        self.embeddings = self.add_weight(
            name="embeddings", shape=(self.num_ids, self.output_dim),
            initializer=_clone_initializer(self.embeddings_initializer), regularizer=regularizer)
        index = {d: k for k, d in enumerate(self.candidate_dims)}
        self.size_index = self.add_weight(
            name="size_index", shape=(self.num_ids,), dtype=tf.int32, trainable=False,
            initializer=keras.initializers.Constant([index[d] for d in self.initial_id_dims]))
        if self.rescale_init:
            scale = np.sqrt(self.output_dim / np.array(self.initial_id_dims, np.float32))
            self.embeddings.assign(self.embeddings * scale[:, np.newaxis])
        for d, dense in zip(self.candidate_dims[:-1], self.maps, strict=True):
            dense.build((None, d))
        super().build(input_shape)

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        ids = tf.cast(ids, tf.int32)
        vectors = tf.cast(tf.gather(self.embeddings, ids), self.compute_dtype)
        index = tf.gather(self.size_index, ids)[..., tf.newaxis]
        z = None
        for k, d in enumerate(self.candidate_dims):
            own = tf.cast(tf.equal(index, k), self.compute_dtype) * vectors[..., :d]
            if z is None:
                z = own
            else:
                below = tf.cast(tf.less(index, k), self.compute_dtype)
                z = below * self.maps[k - 1](z) + own
        return z

    def id_dims(self) -> list[int]:
        """The current size of every id."""
        if not self.built:
            return list(self.initial_id_dims)
        return [self.candidate_dims[k] for k in self.size_index.numpy()]

    def stored_params(self) -> int:
        """``sum_i d_{s_i}`` plus the maps the current sizes go through (what a ragged store
        of this table holds); frozen identity maps (zero-padding) add nothing."""
        if not self.trainable_maps and isinstance(self.map_initializer,
                                                  keras.initializers.Identity):
            return int(sum(self.id_dims()))
        return id_dims_params(self.id_dims(), self.candidate_dims, self.use_bias)

    def grow(self, ids: np.ndarray) -> None:
        """Moves each of ``ids`` (distinct) one size up, ``E[i, :d_{k+1}] = W_k^T E[i, :d_k] +
        b_k``; ids already at ``d_K`` stay."""
        ids = np.asarray(ids, np.int64)
        index = self.size_index.numpy()[ids]
        growing = index < len(self.maps)
        ids, index = ids[growing], index[growing]
        if not ids.size:
            return
        rows = tf.gather(self.embeddings, ids).numpy()
        new_rows = np.zeros_like(rows)
        for k, dense in enumerate(self.maps):
            chosen = index == k
            if chosen.any():
                grown = dense(rows[chosen, :self.candidate_dims[k]]).numpy()
                new_rows[chosen, :grown.shape[1]] = grown
        self.embeddings.scatter_update(tf.IndexedSlices(new_rows, ids))
        self.size_index.scatter_update(tf.IndexedSlices(index.astype(np.int32) + 1, ids))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_ids": self.num_ids,
            "candidate_dims": list(self.candidate_dims),
            "id_dims": self.id_dims(),
            "use_bias": self.use_bias,
            "l2": self.l2,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
            "map_initializer": keras.initializers.serialize(self.map_initializer),
            "rescale_init": self.rescale_init,
            "trainable_maps": self.trainable_maps,
        }


@keras.utils.register_keras_serializable(package="autorec")
class ESAPNFieldEmbedding(PerFieldEmbedding):
    """``FieldEmbedding`` whose categorical fields named in ``id_dims`` are ``ESAPNEmbedding``s.

    Field ``f`` of ``id_dims`` is embedded as ``ESAPNEmbedding(vocab_f, candidates_f)`` with
    ``candidates_f = id_dims_chain(id_dims[f], d_f)`` (the sizes it uses, up to its
    ``embedding_dims[f]``); the other fields go through a plain ``FieldEmbedding``. The output
    is ``FieldEmbedding``'s: one ``[B, d_f]`` tensor per field, categorical fields first.

    Example:

    >>> layer = ESAPNFieldEmbedding(["user"], [], {"user": 3}, {"user": 4},
    ...                             id_dims={"user": [2, 4, 2]})
    >>> [tuple(e.shape) for e in layer({"user_id": tf.constant([0, 1], tf.int64)})]
    [(2, 4)]

    Args:
      categorical, numerical, vocab_sizes, embedding_dims, numeric_encoding, num_buckets, l2,
        embeddings_initializer: as in ``FieldEmbedding``.
      id_dims: per ESAPN field, one size per id; every size is <= ``embedding_dims[f]``.
      candidate_dims: per ESAPN field, the size chain; None derives it from ``id_dims`` (what
        a retrain from the architecture does). A search passes the full candidate set.

    Input shape: as ``FieldEmbedding``.
    Output shape: a list with one ``[B, d_f]`` tensor per field.
    """

    def __init__(self, categorical: Sequence[str], numerical: Sequence[str],
                 vocab_sizes: Mapping[str, int], embedding_dims: Mapping[str, int],
                 id_dims: Mapping[str, Sequence[int]],
                 candidate_dims: Mapping[str, Sequence[int]] | None = None,
                 numeric_encoding: Mapping[str, str] | None = None, num_buckets: int = 20,
                 l2: float = 0.0, embeddings_initializer: Any = "truncated_normal",
                 autodis: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        unknown = sorted(set(id_dims) - set(categorical))
        if unknown:
            raise ValueError(f"id_dims names fields that are not categorical: {unknown}. "
                             f"Received: categorical={list(categorical)}")
        self._init_plain(categorical, numerical, vocab_sizes, embedding_dims, numeric_encoding,
                         num_buckets, l2, embeddings_initializer, autodis)
        self.id_dims = {f: [int(d) for d in dims] for f, dims in id_dims.items()}
        candidates = dict(candidate_dims or {})
        self.candidate_dims = {f: [int(d) for d in candidates.get(f) or id_dims_chain(
            self.id_dims[f], self.embedding_dims[f])] for f in self.id_dims}
        self.esapn = {f: ESAPNEmbedding(
            self.vocab_sizes[f], self.candidate_dims[f], self.id_dims[f], l2=self.l2,
            embeddings_initializer=_clone_initializer(self.embeddings_initializer),
            name=f"{f}_esapn") for f in self.categorical if f in self.id_dims}
        for f, layer in self.esapn.items():
            if layer.output_dim != self.embedding_dims[f]:
                raise ValueError(f"Field {f!r}: the largest candidate size must equal its "
                                 f"embedding dim {self.embedding_dims[f]}. "
                                 f"Received: candidate_dims={self.candidate_dims[f]}")
        self.special = self.esapn
        self._build_plain()

    def current_id_dims(self) -> dict[str, list[int]]:
        """Per ESAPN field, the current size of every id."""
        return {f: layer.id_dims() for f, layer in self.esapn.items()}

    def get_config(self) -> dict[str, Any]:
        return {
            **self._shared_config(),
            "id_dims": self.current_id_dims() if self.built else dict(self.id_dims),
            "candidate_dims": dict(self.candidate_dims),
        }
