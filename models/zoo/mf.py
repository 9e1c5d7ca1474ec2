"""Matrix factorization for top-k retrieval, trained with the BPR pairwise loss.

Every user ``u`` and item ``i`` owns a vector; the preference score is their dot product::

    y(u, i) = <e_u, e_i>,    e_u = E_user[u],  e_i = E_item[i]

BPR (Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI 2009, Eq. 3)
ranks an observed item ``i`` above a sampled unobserved item ``j`` for each triple ``(u, i, j)``
of a batch ``B``. The L2 term is LightGCN's (He et al., SIGIR 2020, Eq. 15, and its reference
code): half the squared norm of the batch's embeddings, divided by the batch size::

    L = -1/|B| sum_{(u,i,j) in B} ln sigmoid(y(u, i) - y(u, j))
        + l2 * 1/2 * (||E_B^u||^2 + ||E_B^i||^2 + ||E_B^j||^2) / |B|

Initialization follows LightGCN's MF baseline: ``N(0, 0.1^2)`` for both tables.

λOpt's per-id strengths (``id_l2``: ``Λ[r] >= 0`` per row of a table, learned by
``models.search.lambdaopt`` and fixed here) replace that table's ``l2`` by ``Λ`` of each looked-up
row: ``1/2 · sum_{rows r of the batch} Λ[r] · |e_r|^2 / |B|``, the penalty λOpt trains with.

A learned pointwise loss ``l(y_hat, y)`` (AutoLossGen's, ``Architecture.loss``) replaces the BPR
term by ``1/(2|B|) sum_{(u,i,j) in B} [l(sigmoid(y(u, i)), 1) + l(sigmoid(y(u, j)), 0)]``: each
triple's observed item is a positive and its sampled item a negative (the official AutoLossGen
BiasedMF scores labelled pairs the same way, without the biases); the L2 term is unchanged.

Example:

>>> model = MatrixFactorization(num_users=3, num_items=4, embedding_dim=2)
>>> vectors = model({"user": tf.constant([0, 2]), "item": tf.constant([1, 3])})
>>> tuple(vectors["user"].shape), tuple(model.score(tf.constant([0]), tf.constant([1])).shape)
((2, 2), (1,))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tensorflow as tf
import tf_keras as keras

from models.architecture import id_dims_chain
from models.layers.esapn import ESAPNEmbedding

USER_KEY = "user"
ITEM_KEYS = ("item", "negative")


def bpr_loss(pos_scores: tf.Tensor, neg_scores: tf.Tensor, *,
             embeddings: Sequence[tf.Tensor] = (), l2: float = 0.0) -> tf.Tensor:
    """The BPR loss of a batch, plus LightGCN's L2 penalty on the batch's embeddings.

    ``-mean(ln sigmoid(pos - neg)) + l2 * 1/2 * sum_t ||t||^2 / B`` (see the module docstring),
    with ``ln sigmoid(x)`` computed stably as ``-softplus(-x)``.

    Args:
      pos_scores: ``[B]`` scores of the observed items.
      neg_scores: ``[B]`` scores of the sampled negatives, aligned with ``pos_scores``.
      embeddings: the ``[B, D]`` tensors the penalty covers (user, positive, negative vectors).
      l2: the penalty's weight; 0 disables it.

    Returns:
      A scalar.
    """
    pos_scores = tf.convert_to_tensor(pos_scores)
    neg_scores = tf.cast(neg_scores, pos_scores.dtype)
    loss = tf.reduce_mean(tf.nn.softplus(neg_scores - pos_scores))
    return loss + l2_penalty(embeddings, l2, tf.shape(pos_scores)[0], pos_scores.dtype)


def l2_penalty(embeddings: Sequence[tf.Tensor], l2: float, batch_size: tf.Tensor,
               dtype: tf.DType = tf.float32) -> tf.Tensor:
    """LightGCN's ``l2 * 1/2 * sum_t ||t||^2 / B`` over the batch's embeddings (0 when off)."""
    if not (l2 and embeddings):
        return tf.constant(0.0, dtype)
    squared = tf.add_n([tf.reduce_sum(tf.square(tf.cast(t, dtype))) for t in embeddings])
    return l2 * 0.5 * squared / tf.cast(batch_size, dtype)


def pointwise_loss(pos_scores: tf.Tensor, neg_scores: tf.Tensor,
                   loss_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor], *,
                   embeddings: Sequence[tf.Tensor] = (), l2: float = 0.0) -> tf.Tensor:
    """A pointwise loss over a batch of triples (see the module docstring): ``loss_fn(y_true,
    y_pred)`` (a tf_keras loss, reduced to the mean) on the ``[2B, 1]`` labels ``1...1 0...0``
    and probabilities ``sigmoid`` of the observed then the sampled items' scores, plus the same
    L2 term as :func:`bpr_loss`."""
    pos_scores = tf.convert_to_tensor(pos_scores)
    scores = tf.concat([pos_scores, tf.cast(neg_scores, pos_scores.dtype)], axis=0)
    labels = tf.concat([tf.ones_like(pos_scores), tf.zeros_like(pos_scores)], axis=0)
    loss = loss_fn(labels[:, None], tf.sigmoid(scores)[:, None])
    return loss + l2_penalty(embeddings, l2, tf.shape(pos_scores)[0], pos_scores.dtype)


@keras.utils.register_keras_serializable(package="autorec")
class MatrixFactorization(keras.Model):
    """User and item embedding tables scored by the dot product (see the module docstring).

    ``call`` looks up a dict of id tensors: ``"user"`` in the user table, ``"item"`` and
    ``"negative"`` in the item table, and returns the vectors under the same keys. ``score`` is the
    dot product of aligned users and items; ``embedding_tables`` returns both whole tables, what
    full ranking needs (a graph model such as LightGCN returns its propagated tables instead).

    Args:
      num_users: rows of the user table.
      num_items: rows of the item table.
      embedding_dim: the vectors' size ``D``.
      l2: weight of the L2 penalty in :meth:`triple_loss` (tables without ``id_l2``).
      init_std: standard deviation of the normal initializer of both tables.
      seed: initializer seed; ``None`` draws one.
      id_dims: ESAPN per-id sizes under ``"user"`` and/or ``"item"`` (one size <= ``D`` per
        id); such a table is an ``ESAPNEmbedding`` over the sizes it uses, zero-padded to ``D``
        (its maps frozen as identities: in MF a learned map shared by every id of a size cost
        eval Recall@20, see the README's ESAPN section), storing ``sum_i d_i`` parameters.
      candidate_dims: the ESAPN tables' size chain (ending at ``D``); None: the sizes that
        ``id_dims`` uses, then ``D`` (a search passes its whole candidate set).
      rescale_init: start an ESAPN table's id of size ``d`` at ``init_std * sqrt(D / d)``
        (``ESAPNEmbedding``'s ``rescale_init``: the norm of a ``D``-sized id, for ids that start
        small and grow, ESAPN's stream mode). False (default): every coordinate at
        ``init_std``, as in a plain MF, so that every id at one size ``d`` is a plain MF of
        size ``d`` (on gowalla the rescaled start cost a uniform size 16 0.012 eval Recall@20
        within the 100-epoch cap; README, ESAPN).
      id_l2: λOpt's fixed per-id L2 under ``"user"`` and/or ``"item"`` (one ``Λ >= 0`` per row);
        such a table's penalty uses ``Λ`` of the looked-up rows instead of ``l2``. Not with
        ``id_dims``.

    Input shape: a dict of ``[B]`` (or ``[B, N]``) integer ids under ``"user"``, ``"item"``,
      ``"negative"``; any subset.
    Output shape: a dict with the same keys of ``[B, D]`` (or ``[B, N, D]``) vectors.
    """

    def __init__(self, num_users: int, num_items: int, embedding_dim: int = 64,
                 l2: float = 1e-4, init_std: float = 0.1, seed: int | None = None,
                 id_dims: Mapping[str, Sequence[int]] | None = None,
                 candidate_dims: Sequence[int] | None = None,
                 id_l2: Mapping[str, Sequence[float]] | None = None,
                 rescale_init: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, value in (("num_users", num_users), ("num_items", num_items),
                            ("embedding_dim", embedding_dim)):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer. Received: {name}={value}")
        if l2 < 0:
            raise ValueError(f"l2 must be non-negative. Received: l2={l2}")
        if init_std <= 0:
            raise ValueError(f"init_std must be positive. Received: init_std={init_std}")
        self.num_users = int(num_users)
        self.num_items = int(num_items)
        self.embedding_dim = int(embedding_dim)
        self.l2 = float(l2)
        self.init_std = float(init_std)
        self.seed = seed
        self.id_dims = {key: [int(d) for d in dims] for key, dims in (id_dims or {}).items()}
        unknown = sorted(set(self.id_dims) - {USER_KEY, "item"})
        if unknown:
            raise ValueError(f"id_dims takes 'user' and 'item'. Received: keys {unknown}")
        self.candidate_dims = None if candidate_dims is None else [int(d) for d in candidate_dims]
        self.rescale_init = bool(rescale_init)
        self.id_l2 = self._check_id_l2(id_l2 or {})
        self.user_embedding = self._table(USER_KEY, self.num_users, seed)
        self.item_embedding = self._table("item", self.num_items,
                                          None if seed is None else seed + 1)

    def _check_id_l2(self, id_l2: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
        values = {key: [float(x) for x in strengths] for key, strengths in id_l2.items()}
        rows = {USER_KEY: self.num_users, "item": self.num_items}
        for key, strengths in values.items():
            if key not in rows:
                raise ValueError(f"id_l2 takes 'user' and 'item'. Received: key {key!r}")
            if len(strengths) != rows[key]:
                raise ValueError(f"id_l2[{key!r}] needs one strength per row ({rows[key]}). "
                                 f"Received: {len(strengths)}")
            if not all(math.isfinite(x) and x >= 0 for x in strengths):
                raise ValueError(f"id_l2[{key!r}] strengths must be finite and >= 0.")
        if values and self.id_dims:
            raise ValueError("id_l2 cannot be combined with id_dims (ESAPN tables).")
        self._id_l2_tensors = {key: tf.constant(v, tf.float32) for key, v in values.items()}
        return values

    def _table(self, key: str, rows: int, seed: int | None) -> keras.layers.Layer:
        initializer = keras.initializers.RandomNormal(stddev=self.init_std, seed=seed)
        if key not in self.id_dims:
            return keras.layers.Embedding(rows, self.embedding_dim, name=f"{key}_embedding",
                                          embeddings_initializer=initializer)
        dims = self.id_dims[key]
        chain = self.candidate_dims or id_dims_chain(dims, self.embedding_dim)
        # Zero-padding (frozen identity maps, no bias): a trained map shared by all the ids of a
        # size rescales them all at once (see the README's ESAPN section), and a shared bias
        # kept MF-BPR on the popularity-only solution for many epochs.
        return ESAPNEmbedding(rows, chain, dims, use_bias=False, trainable_maps=False,
                              rescale_init=self.rescale_init,
                              embeddings_initializer=initializer, name=f"{key}_embedding")

    def build(self, input_shape: Any = None) -> None:
        self.user_embedding.build((None,))
        self.item_embedding.build((None,))
        self.built = True  # Model.build would trace call on a placeholder; the tables suffice.

    def call(self, inputs: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        unknown = sorted(set(inputs) - {USER_KEY, *ITEM_KEYS})
        if unknown:
            raise ValueError(f"MatrixFactorization reads ids under {[USER_KEY, *ITEM_KEYS]}. "
                             f"Received: unknown keys {unknown}")
        return {key: (self.user_embedding if key == USER_KEY else self.item_embedding)(ids)
                for key, ids in inputs.items()}

    def score(self, user_ids: tf.Tensor, item_ids: tf.Tensor) -> tf.Tensor:
        """``<e_u, e_i>`` for aligned ``[B]`` user and item ids; returns ``[B]``."""
        vectors = self({USER_KEY: user_ids, "item": item_ids})
        return tf.reduce_sum(vectors[USER_KEY] * vectors["item"], axis=-1)

    def triple_loss(self, user_ids: tf.Tensor, pos_item_ids: tf.Tensor,
                    neg_item_ids: tf.Tensor,
                    loss_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None
                    ) -> tf.Tensor:
        """The training loss of ``[B]`` triples ``(u, i, j)``: :func:`bpr_loss`, or with
        ``loss_fn`` (a pointwise tf_keras loss) :func:`pointwise_loss`, each with this model's
        ``l2``; tables with ``id_l2`` are penalised by their rows' ``Λ`` instead."""
        vectors = self({USER_KEY: user_ids, "item": pos_item_ids, "negative": neg_item_ids})
        user, pos, neg = vectors[USER_KEY], vectors["item"], vectors["negative"]
        scores = tf.reduce_sum(user * pos, axis=-1), tf.reduce_sum(user * neg, axis=-1)
        rows = ((USER_KEY, user, user_ids), ("item", pos, pos_item_ids),
                ("item", neg, neg_item_ids))
        plain = tuple(vectors for key, vectors, _ in rows if key not in self.id_l2)
        if loss_fn is None:
            loss = bpr_loss(*scores, embeddings=plain, l2=self.l2)
        else:
            loss = pointwise_loss(*scores, loss_fn, embeddings=plain, l2=self.l2)
        if not self.id_l2:
            return loss
        weighted = [tf.reduce_sum(tf.gather(self._id_l2_tensors[key], ids)[..., None]
                                  * tf.square(vectors))
                    for key, vectors, ids in rows if key in self.id_l2]
        return loss + 0.5 * tf.add_n(weighted) / tf.cast(tf.shape(user)[0], loss.dtype)

    def embedding_tables(self) -> tuple[tf.Tensor, tf.Tensor]:
        """The whole ``[num_users, D]`` user and ``[num_items, D]`` item tables."""
        if not self.built:
            self.build()
        return tuple(tf.convert_to_tensor(layer.embeddings) if key not in self.id_dims
                     else layer(tf.range(rows))
                     for key, layer, rows in ((USER_KEY, self.user_embedding, self.num_users),
                                              ("item", self.item_embedding, self.num_items)))

    def embedding_params(self) -> int:
        """Stored embedding parameters: ``rows x D`` per plain table; an ESAPN table stores
        ``sum_i d_i`` plus its maps (``ESAPNEmbedding.stored_params``)."""
        if not self.built:
            self.build()
        return sum(layer.stored_params() if key in self.id_dims else int(layer.count_params())
                   for key, layer in ((USER_KEY, self.user_embedding),
                                      ("item", self.item_embedding)))

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            **super().get_config(),
            "num_users": self.num_users,
            "num_items": self.num_items,
            "embedding_dim": self.embedding_dim,
            "l2": self.l2,
            "init_std": self.init_std,
            "seed": self.seed,
            "id_dims": {key: getattr(self, f"{key}_embedding").id_dims() if self.built else dims
                        for key, dims in self.id_dims.items()},
            "candidate_dims": self.candidate_dims,
            "id_l2": self.id_l2,
            "rescale_init": self.rescale_init,
        }
