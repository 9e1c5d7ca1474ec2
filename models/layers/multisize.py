"""NIS multi-size embeddings: a field's ids, sorted by frequency, cut into blocks of own sizes.

Joglekar et al., "Neural Input Search for Large Scale Recommendation Models" (NIS), KDD 2020,
arXiv:1907.04471, Sec. 3 ("Embedding Blocks", "Multi-size Embedding"). The search algorithm that
picks the block sizes is ``models.search.nis``; these layers only embed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from models.architecture import BLOCK_PROJECTIONS, multisize_params
from models.layers.embeddings import PerFieldEmbedding, _clone_initializer
from models.layers.projection import projected_l2_penalty


def _identity_projection(shape: Sequence[int], dtype: Any = None, **kwargs: Any) -> tf.Tensor:
    """``[I_d | 0]`` of shape ``[d, D]``: a fresh projection starts as zero-padding."""
    return tf.eye(shape[0], shape[1], dtype=dtype or tf.float32)


@keras.utils.register_keras_serializable(package="autorec")
class MultiSizeEmbedding(keras.layers.Layer):
    """One field's Multi-size Embedding: vocabulary block ``v`` holds ``n_v`` ids of size ``d_v``.

    Equations (NIS, Sec. 3.2). Ids are sorted by train frequency and cut into blocks
    ``[s_v, s_v + n_v)``; id ``i`` in block ``v`` is embedded as::

        e_i = P_v^T E_v[i - s_v]       E_v in R^{n_v x d_v},  P_v in R^{d_v x D}   (0 < d_v < D)
        e_i = E_v[i - s_v]                                                         (d_v = D)
        e_i = 0                                                                    (d_v = 0)

    ``P_v`` is the paper's projection of a smaller block to the common size ``D``; it starts as
    ``[I | 0]`` (zero-padding, what the search trained). The layer stores
    ``sum_v n_v d_v + sum_{0 < d_v < D} d_v D`` parameters (``stored_params``). With
    ``projection="pad"`` every ``P_v`` stays ``[I | 0]`` (not a weight): a block's vectors are
    zero-padded to ``D``, exactly the search's super-network, and only ``sum_v n_v d_v`` is
    stored (README, NIS: on frappe86k's validation split the learned ``P_v`` scored higher).

    With ``search=True`` the layer is the weight-sharing super-network of the NIS search: one
    table ``E in R^{num_ids x D}`` and ``e_i = E[i] * 1[j < d_v]_{j < D}``, a block using the
    first ``d_v`` columns of its rows. The sizes ``d_v`` are a non-trainable variable
    ``block_dims`` that the controller assigns per step (``set_block_dims``).

    Example:

    >>> layer = MultiSizeEmbedding(blocks=[[2, 4], [3, 2], [1, 0]], output_dim=4)
    >>> tuple(layer(tf.constant([0, 3, 5])).shape), layer.stored_params()
    ((3, 4), 22)

    Args:
      blocks: ``[[n_v, d_v], ...]`` in id order; ``n_v >= 1``, ``0 <= d_v <= output_dim``.
      output_dim: the common size ``D``.
      search: one masked super-table instead of per-block tables.
      projection: ``"learned"`` (trainable ``P_v``) or ``"pad"`` (fixed zero-padding).
      l2: L2 strength. On a block's table ``E_v``; with ``projected_l2`` and a learned
        ``P_v``, on the projected block ``E_v P_v`` instead (what the model uses), so that
        ``P_v`` cannot undo it by shrinking ``E_v``.
      projected_l2: see ``l2`` (``Architecture.projected_l2``).
      embeddings_initializer: initializer of the tables (cloned per block).

    Input shape: integer ids of any shape ``S``, in ``[0, sum_v n_v)``.
    Output shape: ``S + [D]``.
    """

    def __init__(self, blocks: Sequence[Sequence[int]], output_dim: int, search: bool = False,
                 l2: float = 0.0, embeddings_initializer: Any = "truncated_normal",
                 projection: str = "learned", projected_l2: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(output_dim) < 1:
            raise ValueError(f"output_dim must be >= 1. Received: output_dim={output_dim}")
        self.output_dim = int(output_dim)
        self.blocks = [[int(n), int(d)] for n, d in blocks]
        if not self.blocks or any(n < 1 or not 0 <= d <= self.output_dim for n, d in self.blocks):
            raise ValueError(f"blocks need n >= 1 ids and a size in [0, {self.output_dim}] each. "
                             f"Received: blocks={[list(b) for b in blocks]}")
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0. Received: l2={l2}")
        if projection not in BLOCK_PROJECTIONS:
            raise ValueError(f"projection must be one of {BLOCK_PROJECTIONS}. "
                             f"Received: projection={projection!r}")
        self.projection = projection
        self.search = bool(search)
        self.l2 = float(l2)
        self.projected_l2 = bool(projected_l2)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        counts = [n for n, _ in self.blocks]
        self.num_ids = sum(counts)
        self.starts = [int(s) for s in np.cumsum([0, *counts[:-1]])]

    def build(self, input_shape: Any = None) -> None:
        regularizer = keras.regularizers.L2(self.l2) if self.l2 > 0 else None
        if self.search:
            self.table = self.add_weight(
                name="embeddings", shape=(self.num_ids, self.output_dim), regularizer=regularizer,
                initializer=_clone_initializer(self.embeddings_initializer))
            self.block_dims = self.add_weight(
                name="block_dims", shape=(len(self.blocks),), dtype=tf.int32, trainable=False,
                initializer=keras.initializers.Constant([d for _, d in self.blocks]))
        else:
            # Keyed by the block's index as text (checkpoints need string keys).
            self.tables, self.projections = {}, {}
            for v, (n, d) in enumerate(self.blocks):
                if d == 0:
                    continue
                projected = d < self.output_dim and self.projection == "learned"
                own_l2 = projected and self.projected_l2 and self.l2 > 0
                self.tables[str(v)] = self.add_weight(
                    name=f"block_{v}_embeddings", shape=(n, d),
                    regularizer=None if own_l2 else regularizer,
                    initializer=_clone_initializer(self.embeddings_initializer))
                if projected:
                    self.projections[str(v)] = self.add_weight(
                        name=f"block_{v}_projection", shape=(d, self.output_dim),
                        initializer=_identity_projection)
                if own_l2:
                    self.add_loss(projected_l2_penalty(self.tables[str(v)],
                                                       self.projections[str(v)], self.l2))
        super().build(input_shape)

    def block_index(self, ids: tf.Tensor) -> tf.Tensor:
        """The vocabulary block of every id."""
        starts = tf.constant(self.starts[1:], tf.int64)
        return tf.cast(tf.searchsorted(starts, tf.reshape(ids, [-1]), side="right"), tf.int32)

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        ids = tf.cast(ids, tf.int64)
        flat_shape = tf.concat([tf.shape(ids), [self.output_dim]], axis=0)
        block = self.block_index(ids)
        if self.search:
            vectors = tf.gather(tf.cast(self.table, self.compute_dtype), tf.reshape(ids, [-1]))
            mask = tf.sequence_mask(tf.gather(self.block_dims, block), self.output_dim,
                                    dtype=self.compute_dtype)
            return tf.reshape(vectors * mask, flat_shape)
        flat = tf.reshape(ids, [-1])
        out = tf.zeros([tf.size(flat), self.output_dim], self.compute_dtype)
        for key, table in self.tables.items():
            v = int(key)
            n = self.blocks[v][0]
            local = tf.clip_by_value(flat - self.starts[v], 0, n - 1)
            vectors = tf.gather(tf.cast(table, self.compute_dtype), local)
            if key in self.projections:
                vectors = tf.matmul(vectors, tf.cast(self.projections[key], self.compute_dtype))
            elif self.blocks[v][1] < self.output_dim:
                vectors = tf.pad(vectors, [[0, 0], [0, self.output_dim - self.blocks[v][1]]])
            out += tf.cast(tf.equal(block, v), self.compute_dtype)[:, tf.newaxis] * vectors
        return tf.reshape(out, flat_shape)

    def set_block_dims(self, dims: Sequence[int]) -> None:
        """Search mode: the sizes ``d_v`` the next steps use."""
        self.block_dims.assign(np.asarray(dims, np.int32))

    def stored_params(self) -> int:
        """Parameters of the retrain-mode tables and projections."""
        return multisize_params(self.blocks, self.output_dim, self.projection)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "blocks": [list(b) for b in self.blocks],
            "output_dim": self.output_dim,
            "search": self.search,
            "projection": self.projection,
            "l2": self.l2,
            "projected_l2": self.projected_l2,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
        }


@keras.utils.register_keras_serializable(package="autorec")
class MultiSizeFieldEmbedding(PerFieldEmbedding):
    """``FieldEmbedding`` whose fields named in ``embedding_blocks`` are ``MultiSizeEmbedding``s.

    Field ``f`` of ``embedding_blocks`` is embedded as
    ``MultiSizeEmbedding(embedding_blocks[f], embedding_dims[f])``; the other fields go through a
    plain ``FieldEmbedding``. The output is ``FieldEmbedding``'s: one ``[B, d_f]`` tensor per
    field, categorical fields first.

    Example:

    >>> layer = MultiSizeFieldEmbedding(["user"], [], {"user": 3}, {"user": 4},
    ...                                 embedding_blocks={"user": [[1, 4], [2, 2]]})
    >>> [tuple(e.shape) for e in layer({"user_id": tf.constant([0, 2], tf.int64)})]
    [(2, 4)]

    Args:
      categorical, numerical, vocab_sizes, embedding_dims, numeric_encoding, num_buckets, l2,
        embeddings_initializer, autodis: as in ``FieldEmbedding``.
      embedding_blocks: per multi-size field, ``[[n_v, d_v], ...]`` whose ``n_v`` sum to its
        vocab size and whose ``d_v`` are at most ``embedding_dims[f]``.
      search: the multi-size fields are search-mode super-tables.
      block_projection: the multi-size fields' ``projection`` (``MultiSizeEmbedding``).
      projected_l2: the multi-size fields' ``projected_l2`` (``MultiSizeEmbedding``).

    Input shape: as ``FieldEmbedding``.
    Output shape: a list with one ``[B, d_f]`` tensor per field.
    """

    def __init__(self, categorical: Sequence[str], numerical: Sequence[str],
                 vocab_sizes: Mapping[str, int], embedding_dims: Mapping[str, int],
                 embedding_blocks: Mapping[str, Sequence[Sequence[int]]], search: bool = False,
                 numeric_encoding: Mapping[str, str] | None = None, num_buckets: int = 20,
                 l2: float = 0.0, embeddings_initializer: Any = "truncated_normal",
                 autodis: Mapping[str, Any] | None = None, block_projection: str = "learned",
                 projected_l2: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        unknown = sorted(set(embedding_blocks) - set(categorical))
        if unknown:
            raise ValueError(f"embedding_blocks names fields that are not categorical: "
                             f"{unknown}. Received: categorical={list(categorical)}")
        self._init_plain(categorical, numerical, vocab_sizes, embedding_dims, numeric_encoding,
                         num_buckets, l2, embeddings_initializer, autodis)
        checked = {f: [[int(n), int(d)] for n, d in blocks]
                   for f, blocks in embedding_blocks.items()}
        for f, blocks in checked.items():
            if sum(n for n, _ in blocks) != self.vocab_sizes[f]:
                raise ValueError(f"Field {f!r}: block sizes must sum to its vocab size "
                                 f"{self.vocab_sizes[f]}. Received: blocks={blocks}")
        self.embedding_blocks = checked
        self.search = bool(search)
        self.block_projection = block_projection
        self.projected_l2 = bool(projected_l2)
        self.multisize = {f: MultiSizeEmbedding(
            self.embedding_blocks[f], self.embedding_dims[f], search=self.search, l2=self.l2,
            embeddings_initializer=_clone_initializer(self.embeddings_initializer),
            projection=block_projection, projected_l2=self.projected_l2, name=f"{f}_multisize")
            for f in self.categorical if f in self.embedding_blocks}
        self.special = self.multisize
        self._build_plain()

    def get_config(self) -> dict[str, Any]:
        return {
            **self._shared_config(),
            "embedding_blocks": {f: [list(b) for b in bs]
                                 for f, bs in self.embedding_blocks.items()},
            "search": self.search,
            "block_projection": self.block_projection,
            "projected_l2": self.projected_l2,
        }
