"""Top-k retrieval on implicit feedback: indexed data, full-ranking metrics and BPR training.

The protocol is LightGCN's (He et al., SIGIR 2020), which BARS (Zhu et al., SIGIR 2022) adopts:
every user is ranked against *all* items, the user's training items are removed from the ranking,
and for the users with at least one held-out item ``T_u``::

    Recall@k = |top_k(u) & T_u| / |T_u|
    NDCG@k   = DCG / IDCG,  DCG = sum_{r=1..k} [top_k(u)_r in T_u] / log2(r + 1),
               IDCG = sum_{r=1..min(|T_u|, k)} 1 / log2(r + 1)

both averaged over those users. Training early-stops on the *eval* split; the test split is only
read by the caller, once, after training.

Example, on a prepared dataset:

>>> data = load_topk(PreparedDataset.load("/tmp/topk/ml1m"))
>>> result = train_bpr(data, max_epochs=40)
>>> users, items = (t.numpy() for t in result.model.embedding_tables())
>>> evaluate_split(data, users, items, "test")["recall@20"]
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from models.losses import training_loss
from models.zoo.mf import MatrixFactorization
from pipeline.datasets.base import SPLITS, DatasetError, PreparedDataset

HELD_OUT_SPLITS = ("eval", "test")
# Memory maps one XLA-compiled MF training step keeps until the process exits (TensorFlow 2.x
# never frees JIT code; measured on synthetic_topk: 400-440 per new ``epoch_runner``).
XLA_MAPS_PER_TRAINING = 440


@dataclass(frozen=True)
class UserItems:
    """Each user's items as CSR rows: user ``u`` holds ``indices[indptr[u]:indptr[u + 1]]``.

    Rows are sorted and free of duplicates; ``table[u]`` returns user ``u``'s row.
    """

    indptr: np.ndarray
    indices: np.ndarray

    @classmethod
    def from_pairs(cls, users: np.ndarray, items: np.ndarray, num_users: int) -> UserItems:
        """Builds the rows from aligned ``[N]`` user and item indices (duplicates merged)."""
        users = np.asarray(users, np.int64)
        items = np.asarray(items, np.int64)
        if users.size and (users.min() < 0 or users.max() >= num_users):
            raise ValueError(f"User indices must lie in [0, {num_users}). "
                             f"Received: range [{users.min()}, {users.max()}]")
        order = np.lexsort((items, users))
        users, items = users[order], items[order]
        distinct = np.ones(users.size, bool)
        distinct[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
        users, items = users[distinct], items[distinct]
        indptr = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=num_users))])
        return cls(indptr=indptr.astype(np.int64), indices=items)

    @classmethod
    def from_lists(cls, rows: Sequence[Sequence[int]]) -> UserItems:
        """Builds the rows from one sequence of item indices per user."""
        users = np.repeat(np.arange(len(rows)), [len(r) for r in rows])
        items = np.concatenate([np.asarray(r, np.int64) for r in rows]) if rows else users
        return cls.from_pairs(users, items, len(rows))

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def __getitem__(self, user: int) -> np.ndarray:
        return self.indices[self.indptr[user]:self.indptr[user + 1]]

    @property
    def counts(self) -> np.ndarray:
        """``[num_users]`` number of items per user."""
        return np.diff(self.indptr)

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """All ``(user, item)`` pairs as two aligned arrays, by user then item."""
        return np.repeat(np.arange(len(self)), self.counts), self.indices

    def union(self, other: UserItems) -> UserItems:
        """Each user's items of either table (same number of users)."""
        if len(other) != len(self):
            raise ValueError(f"Tables cover {len(self)} and {len(other)} users; they must agree.")
        (u1, i1), (u2, i2) = self.pairs(), other.pairs()
        return UserItems.from_pairs(np.concatenate([u1, u2]), np.concatenate([i1, i2]), len(self))

    def rows_of(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(row, item)`` of every item of ``users``, ``row`` indexing into ``users``."""
        counts = self.counts[users]
        rows = np.repeat(np.arange(len(users)), counts)
        first = np.repeat(self.indptr[users] - (np.cumsum(counts) - counts), counts)
        return rows, self.indices[first + np.arange(counts.sum())]


@dataclass
class TopkData:
    """Interactions indexed by the train split's users and items.

    Attributes:
      num_users: distinct users of the train split.
      num_items: distinct items of the train split.
      user_ids: ``[num_users]`` raw user ids (text), by index: ids ordered by (length, text),
        which is numeric order for non-negative integer ids.
      item_ids: ``[num_items]`` raw item ids, ordered the same way.
      train_pairs: ``[N, 2]`` distinct ``(user, item)`` index pairs of the train split.
      train_items_by_user: the train pairs per user.
      eval_items_by_user: the eval split's interactions per user.
      test_items_by_user: the test split's interactions per user.
      dropped: per held-out split, its interactions whose user or item the train split lacks.
    """

    num_users: int
    num_items: int
    user_ids: np.ndarray
    item_ids: np.ndarray
    train_pairs: np.ndarray
    train_items_by_user: UserItems
    eval_items_by_user: UserItems
    test_items_by_user: UserItems
    dropped: dict[str, int] = field(default_factory=dict)

    def items_by_user(self, split: str) -> UserItems:
        """The interactions of ``"train"``, ``"eval"`` or ``"test"`` per user."""
        tables = {"train": self.train_items_by_user, "eval": self.eval_items_by_user,
                  "test": self.test_items_by_user}
        if split not in tables:
            raise ValueError(f"Unknown split {split!r}; expected one of {sorted(tables)}.")
        return tables[split]


def _vocabulary(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (lexicographically sorted distinct ids, their index, ids in index order)."""
    lexical = np.unique(ids)
    order = np.lexsort((lexical, np.char.str_len(lexical)))
    index = np.empty(len(lexical), np.int64)
    index[order] = np.arange(len(lexical))
    return lexical, index, lexical[order]


def _lookup(vocabulary: tuple[np.ndarray, np.ndarray], ids: np.ndarray) -> np.ndarray:
    """Index of each id, -1 for ids not in the vocabulary."""
    lexical, index = vocabulary
    position = np.minimum(np.searchsorted(lexical, ids), len(lexical) - 1)
    return np.where(lexical[position] == ids, index[position], -1)


def topk_data_from_interactions(train_ids: tuple[np.ndarray, np.ndarray],
                                eval_ids: tuple[np.ndarray, np.ndarray],
                                test_ids: tuple[np.ndarray, np.ndarray]) -> TopkData:
    """Indexes each split's aligned ``(user ids, item ids)`` raw arrays (see :class:`TopkData`).

    Held-out interactions whose user or item is unseen in train are dropped and counted.
    """
    train_users, train_items = (np.asarray(a).astype(str) for a in train_ids)
    if not train_users.size:
        raise ValueError("The train split holds no interactions.")
    user_lexical, user_index, user_ids = _vocabulary(train_users)
    item_lexical, item_index, item_ids = _vocabulary(train_items)
    users_vocab, items_vocab = (user_lexical, user_index), (item_lexical, item_index)
    num_users, num_items = len(user_ids), len(item_ids)
    tables, dropped = {}, {}
    for split, (users, items) in (("train", train_ids), ("eval", eval_ids), ("test", test_ids)):
        u = _lookup(users_vocab, np.asarray(users).astype(str))
        i = _lookup(items_vocab, np.asarray(items).astype(str))
        seen = (u >= 0) & (i >= 0)
        if split != "train":
            dropped[split] = int((~seen).sum())
        tables[split] = UserItems.from_pairs(u[seen], i[seen], num_users)
    return TopkData(num_users=num_users, num_items=num_items, user_ids=user_ids,
                    item_ids=item_ids, train_pairs=np.stack(tables["train"].pairs(), axis=1),
                    train_items_by_user=tables["train"], eval_items_by_user=tables["eval"],
                    test_items_by_user=tables["test"], dropped=dropped)


def read_split(dataset: PreparedDataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``(user, item)`` raw ids of the positive-label rows of one split's CSV."""
    spec = dataset.spec
    path = dataset.split_path(split)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        missing = [c for c in (spec.label, spec.user, spec.item) if c not in header]
        if missing:
            raise DatasetError(f"{dataset.name}: {path} lacks the columns {missing}.")
        label, user, item = (header.index(c) for c in (spec.label, spec.user, spec.item))
        pairs = [(row[user], row[item]) for row in reader if float(row[label]) > 0]
    array = np.array(pairs, dtype=str).reshape(-1, 2)
    return array[:, 0], array[:, 1]


def load_topk(dataset: PreparedDataset) -> TopkData:
    """Reads a prepared top-k dataset's three CSV splits into :class:`TopkData`.

    Rows with label 0 are not interactions and are skipped; duplicates are merged.

    Raises:
      DatasetError: the dataset is not a top-k dataset or a split lacks a column.
    """
    spec = dataset.spec
    if spec.task != "topk" or spec.user is None or spec.item is None:
        raise DatasetError(f"{dataset.name}: load_topk needs task 'topk' with user and item "
                           f"columns. Received: task={spec.task!r}")
    return topk_data_from_interactions(*(read_split(dataset, s) for s in SPLITS))


def _as_user_items(table: UserItems | Sequence[Sequence[int]]) -> UserItems:
    return table if isinstance(table, UserItems) else UserItems.from_lists(table)


def evaluate_topk(user_emb: np.ndarray, item_emb: np.ndarray,
                  exclude_items_by_user: UserItems | Sequence[Sequence[int]],
                  target_items_by_user: UserItems | Sequence[Sequence[int]],
                  k: int = 20, batch_users: int = 1024) -> dict[str, float]:
    """Recall@k and NDCG@k by full ranking (see the module docstring).

    Scores are ``user_emb @ item_emb.T``; each user's ``exclude`` items get ``-inf`` and never
    count as hits. The LightGCN protocol excludes the train items for both eval and test; pass
    ``train.union(eval)`` to also exclude eval items when ranking for test.

    Args:
      user_emb: ``[U, D]`` user vectors.
      item_emb: ``[I, D]`` item vectors.
      exclude_items_by_user: per user, the items removed from the ranking.
      target_items_by_user: per user, the held-out items; users without any are skipped.
      k: the cut-off; clipped to ``I``.
      batch_users: users scored per matmul.

    Returns:
      ``{"recall@k": ..., "ndcg@k": ..., "users": n}`` averaged over the ``n`` users with targets
      (0 when there are none).
    """
    target = _as_user_items(target_items_by_user)
    batches = _ranked_batches(user_emb, item_emb, exclude_items_by_user, target, k, batch_users)
    cut = min(k, np.shape(item_emb)[0])
    discounts = 1.0 / np.log2(np.arange(2, cut + 2))
    ideal = np.concatenate([[1.0], np.cumsum(discounts)])  # ideal[0] only guards a 0/0.
    users = np.flatnonzero(target.counts > 0)
    recall_sum = ndcg_sum = 0.0
    for batch, hits, _ in batches:
        num_targets = target.counts[batch]
        recall_sum += float((hits.sum(axis=1) / num_targets).sum())
        ndcg_sum += float(((hits @ discounts) / ideal[np.minimum(num_targets, cut)]).sum())
    n = max(len(users), 1)
    return {f"recall@{k}": recall_sum / n, f"ndcg@{k}": ndcg_sum / n, "users": len(users)}


def target_hits(user_emb: np.ndarray, item_emb: np.ndarray,
                exclude_items_by_user: UserItems | Sequence[Sequence[int]],
                target_items_by_user: UserItems | Sequence[Sequence[int]],
                k: int = 20, batch_users: int = 1024) -> np.ndarray:
    """Whether each held-out pair is ranked in its user's top ``k`` (the ranking of
    :func:`evaluate_topk`): a bool per pair of ``target_items_by_user.pairs()``, in that order.
    A user's Recall@k is the mean of their pairs' values."""
    target = _as_user_items(target_items_by_user)
    chunks = [np.zeros(0, bool)]
    for batch, hits, top_items in _ranked_batches(user_emb, item_emb, exclude_items_by_user,
                                                  target, k, batch_users):
        found = np.zeros((len(batch), np.shape(item_emb)[0]), bool)
        np.put_along_axis(found, top_items, hits, axis=1)  # the targets in the top k
        rows, items = target.rows_of(batch)
        chunks.append(found[rows, items])
    return np.concatenate(chunks)


def _ranked_batches(user_emb: np.ndarray, item_emb: np.ndarray,
                    exclude_items_by_user: UserItems | Sequence[Sequence[int]],
                    target: UserItems, k: int, batch_users: int
                    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Full ranking of the users with targets, ``batch_users`` at a time: yields ``(users,
    hits, top_items)``, ``[b, min(k, items)]`` arrays: the top items in rank order and whether
    each is one of the user's targets (items scored ``-inf``, the excluded ones, never hit)."""
    exclude = _as_user_items(exclude_items_by_user)
    user_emb = np.asarray(user_emb, np.float32)
    item_emb_t = np.ascontiguousarray(np.asarray(item_emb, np.float32).T)
    if not len(exclude) == len(target) == user_emb.shape[0]:
        raise ValueError(f"Tables must cover all {user_emb.shape[0]} users. Received: "
                         f"exclude {len(exclude)}, target {len(target)}")
    if k < 1:
        raise ValueError(f"k must be positive. Received: k={k}")
    cut = min(k, item_emb_t.shape[1])
    users = np.flatnonzero(target.counts > 0)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for start in range(0, len(users), batch_users):
            batch = users[start:start + batch_users]
            scores = user_emb[batch] @ item_emb_t
            scores[exclude.rows_of(batch)] = -np.inf
            top_scores, top_items = (t.numpy() for t in tf.math.top_k(scores, cut, sorted=True))
            relevant = np.zeros(scores.shape, bool)
            relevant[target.rows_of(batch)] = True
            hits = np.take_along_axis(relevant, top_items, axis=1) & np.isfinite(top_scores)
            yield batch, hits, top_items

    return batches()


def evaluate_split(data: TopkData, user_emb: np.ndarray, item_emb: np.ndarray, split: str, *,
                   k: int = 20, exclude_eval: bool = False,
                   batch_users: int = 1024) -> dict[str, float]:
    """:func:`evaluate_topk` on ``"eval"`` or ``"test"``, excluding train items.

    ``exclude_eval=True`` also excludes the eval items when ranking for ``"test"`` (LightGCN does
    not, since its train split includes them; LightGCN++ carved eval out of that train split).
    """
    if split not in HELD_OUT_SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {HELD_OUT_SPLITS}.")
    exclude = data.train_items_by_user
    if exclude_eval and split == "test":
        exclude = exclude.union(data.eval_items_by_user)
    return evaluate_topk(user_emb, item_emb, exclude, data.items_by_user(split), k=k,
                         batch_users=batch_users)


def ranked_test_metrics(data: TopkData, user_emb: np.ndarray, item_emb: np.ndarray, *,
                        k: int = 20) -> dict[str, float]:
    """The test split's ``recall@k`` and ``ndcg@k`` ranked without the train items (the
    LightGCN++ protocol), and ``recall@k_excluding_eval``, ``ndcg@k_excluding_eval`` ranked
    without the train and the eval items: the original LightGCN protocol, whose train split still
    holds the interactions LightGCN++ carved out as eval (gowalla's published numbers)."""
    plain = evaluate_split(data, user_emb, item_emb, "test", k=k)
    strict = evaluate_split(data, user_emb, item_emb, "test", k=k, exclude_eval=True)
    return {**{m: plain[m] for m in (f"recall@{k}", f"ndcg@{k}")},
            **{f"{m}_excluding_eval": strict[m] for m in (f"recall@{k}", f"ndcg@{k}")}}


def sample_negatives(train_items_by_user: UserItems, users: np.ndarray, num_items: int,
                     rng: np.random.Generator) -> np.ndarray:
    """One uniform item per user that the user has no train interaction with.

    Vectorised rejection sampling: draw all, redraw the rejected ones, repeat. Every user needs
    at least one item outside their train items.
    """
    users = np.asarray(users, np.int64)
    train_users, train_items = train_items_by_user.pairs()
    known = train_users * num_items + train_items  # Sorted: pairs() runs by user, then item.
    if np.any(train_items_by_user.counts[users] >= num_items):
        raise ValueError("A user has interacted with every item; no negative exists.")
    negatives = rng.integers(0, num_items, size=users.size)
    todo = np.arange(users.size)
    while todo.size:
        keys = users[todo] * num_items + negatives[todo]
        position = np.minimum(np.searchsorted(known, keys), max(known.size - 1, 0))
        todo = todo[known[position] == keys] if known.size else todo[:0]
        negatives[todo] = rng.integers(0, num_items, size=todo.size)
    return negatives


@dataclass
class TopkResult:
    """What :func:`train_bpr` returns.

    Attributes:
      model: the trained model, holding the weights of the best eval epoch.
      history: one dict per epoch: ``epoch``, ``loss``, ``seconds`` and, on evaluated epochs,
        ``eval_recall@k`` and ``eval_ndcg@k``.
      best_epoch: the evaluated epoch with the highest eval Recall@k.
      best_eval: that epoch's eval metrics.
      train_seconds: seconds spent in epochs (negative sampling and steps), not in evaluation.
      examples_per_second: training triples processed per train second.
      embedding_params: the model's stored embedding parameters
        (:meth:`MatrixFactorization.embedding_params`).
      stop_reason: ``"patience"``, ``"max_epochs"`` or ``"max_seconds"``.
    """

    model: MatrixFactorization
    history: list[dict[str, float]]
    best_epoch: int
    best_eval: dict[str, float]
    train_seconds: float
    examples_per_second: float
    embedding_params: int
    stop_reason: str


def train_bpr(data: TopkData, *, dim: int = 64, learning_rate: float = 1e-3,
              batch_size: int = 2048, l2: float = 1e-4, init_std: float = 0.1,
              max_epochs: int = 400, patience: int = 10, max_seconds: float | None = None,
              seed: int = 0, eval_every: int = 1, k: int = 20, min_epochs: int = 0,
              jit_compile: bool = True, id_dims: dict[str, list[int]] | None = None,
              loss: dict | None = None,
              id_l2: dict[str, list[float]] | None = None) -> TopkResult:
    """Trains :class:`MatrixFactorization` with BPR and Adam, early-stopping on eval Recall@k.

    Each epoch visits every train pair once in a seeded random order, each with one fresh uniform
    negative (:func:`sample_negatives`). Every ``eval_every`` epochs the eval split is ranked;
    training stops after ``patience`` evaluations without a better eval Recall@k (not before epoch
    ``min_epochs``), after ``max_epochs``, or once ``max_seconds`` of wall time (training and
    evaluation) have passed. The best evaluated weights are restored. Adam updates every row of both
    tables each step (as PyTorch's Adam in LightGCN does); ``jit_compile`` lets XLA fuse that dense
    update (about 2.7x faster steps on Gowalla's 71k x 64 tables on CPU). ``id_dims``
    (``"user"``/``"item"``: one size per id) trains ESAPN's per-id sizes instead of ``dim`` for
    every row. ``loss`` (an ``Architecture.loss`` spec, e.g. an AutoLossGen formula) trains with
    that pointwise loss on each triple's observed and sampled item instead of BPR
    (``models.zoo.mf.pointwise_loss``). ``id_l2`` (``"user"``/``"item"``: one fixed ``Λ`` per id,
    λOpt's) replaces ``l2`` on those tables by each looked-up row's own strength.

    Raises:
      ValueError: the eval split has no usable interaction, or a setting is out of range.
    """
    if data.eval_items_by_user.counts.sum() == 0:
        raise ValueError("Early stopping needs eval interactions; the eval split has none left.")
    for name, value in (("batch_size", batch_size), ("max_epochs", max_epochs),
                        ("patience", patience), ("eval_every", eval_every)):
        if value < 1:
            raise ValueError(f"{name} must be positive. Received: {name}={value}")
    model, run_epoch = _mf_and_epochs(data, dim=dim, learning_rate=learning_rate,
                                      batch_size=batch_size, l2=l2, init_std=init_std, seed=seed,
                                      jit_compile=jit_compile, id_dims=id_dims, loss=loss,
                                      id_l2=id_l2)
    result, _ = fit_with_early_stopping(
        data, model, run_epoch, max_epochs=max_epochs, patience=patience,
        eval_every=eval_every, max_seconds=max_seconds, k=k, log_name="train_bpr",
        min_epochs=min_epochs)
    return result


def with_eval_in_train(data: TopkData) -> TopkData:
    """``data`` whose train split also holds the eval interactions: what LightGCN and BARS train
    on (gowalla: 719,081 + 91,047 = 810,128 pairs), for a refit after early stopping."""
    merged = data.train_items_by_user.union(data.eval_items_by_user)
    users, items = merged.pairs()
    return dataclasses.replace(data, train_pairs=np.stack([users, items], axis=1),
                               train_items_by_user=merged)


def refit_bpr(data: TopkData, epochs: int, *, dim: int = 64, learning_rate: float = 1e-3,
              batch_size: int = 2048, l2: float = 1e-4, init_std: float = 0.1, seed: int = 0,
              jit_compile: bool = True, id_dims: dict[str, list[int]] | None = None,
              loss: dict | None = None) -> tuple[MatrixFactorization, TopkData, float]:
    """A fresh MF trained on train + eval for ``epochs`` (the early-stopped run's best epoch).

    Nothing is chosen here: the epoch count comes from early stopping on the eval split, which
    this model then trains on. Returns ``(model, merged data, train seconds)``; rank the test
    split with the merged data, so that the eval items are excluded like the train items.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be positive. Received: epochs={epochs}")
    merged = with_eval_in_train(data)
    model, run_epoch = _mf_and_epochs(merged, dim=dim, learning_rate=learning_rate,
                                      batch_size=batch_size, l2=l2, init_std=init_std, seed=seed,
                                      jit_compile=jit_compile, id_dims=id_dims, loss=loss)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        logging.info("refit_bpr epoch %d/%d: %s", epoch, epochs, run_epoch(epoch))
    return model, merged, time.perf_counter() - start


def _mf_and_epochs(data: TopkData, *, dim: int, learning_rate: float, batch_size: int,
                   l2: float, init_std: float, seed: int, jit_compile: bool,
                   id_dims: dict[str, list[int]] | None, loss: dict | None,
                   id_l2: dict[str, list[float]] | None = None
                   ) -> tuple[MatrixFactorization, Callable[[int], dict[str, float]]]:
    """A fresh, built MF on ``data`` and its ``run_epoch`` (Adam, a ``seed``-ed pair order):
    what :func:`train_bpr` early-stops and :func:`refit_bpr` runs for a fixed epoch count."""
    model = MatrixFactorization(data.num_users, data.num_items, dim, l2=l2, init_std=init_std,
                                seed=seed, id_dims=id_dims, id_l2=id_l2)
    model.build()
    run_epoch = epoch_runner(data, model, keras.optimizers.Adam(learning_rate), batch_size,
                             np.random.default_rng(seed), loss=loss, jit_compile=jit_compile)
    return model, run_epoch


def warn_if_past_map_limit(trainings: int, what: str) -> bool:
    """Logs a warning, and returns True, when ``trainings`` more XLA-compiled MF trainings in this
    process would pass Linux's ``vm.max_map_count`` (``XLA_MAPS_PER_TRAINING`` maps each), where
    LLVM then fails with "Cannot allocate memory"; False when they fit or the limit is unknown."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read())
        with open("/proc/self/maps") as f:
            used = sum(1 for _ in f)
    except (OSError, ValueError):
        return False
    needed = trainings * XLA_MAPS_PER_TRAINING
    if used + needed <= limit:
        return False
    logging.warning("%s plans up to %d MF trainings; each keeps about %d memory maps of XLA code "
                    "for the life of the process, and %d more maps would pass vm.max_map_count "
                    "(%d; %d in use), where LLVM fails with 'Cannot allocate memory'. Lower the "
                    "search budget, or raise vm.max_map_count (sysctl).", what, trainings,
                    XLA_MAPS_PER_TRAINING, needed, limit, used)
    return True


def epoch_runner(data: TopkData, model: MatrixFactorization, optimizer: keras.optimizers.Optimizer,
                 batch_size: int, rng: np.random.Generator, *, loss: dict | None = None,
                 jit_compile: bool = True) -> Callable[[int], dict[str, float]]:
    """``run_epoch(epoch)``: one epoch of ``model`` on every train pair in an ``rng`` order, each
    with one fresh uniform negative, by ``optimizer`` steps on BPR (or ``loss``'s pointwise loss,
    see :func:`train_bpr`); returns ``{"epoch", "loss"}`` (the mean batch loss)."""
    loss_fn = None if loss is None else training_loss(loss)
    ids = tf.TensorSpec([None], tf.int64)

    @tf.function(input_signature=[ids, ids, ids], jit_compile=jit_compile)
    def train_step(users: tf.Tensor, positives: tf.Tensor, negatives: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            value = model.triple_loss(users, positives, negatives, loss_fn)
        gradients = tape.gradient(value, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return value

    num_pairs = len(data.train_pairs)

    def run_epoch(epoch: int) -> dict[str, float]:
        order = rng.permutation(num_pairs)
        users, positives = data.train_pairs[order, 0], data.train_pairs[order, 1]
        negatives = sample_negatives(data.train_items_by_user, users, data.num_items, rng)
        loss_sum = tf.constant(0.0)
        for s in range(0, num_pairs, batch_size):
            batch = slice(s, s + batch_size)
            loss_sum += train_step(users[batch], positives[batch], negatives[batch])
        return {"epoch": epoch, "loss": float(loss_sum) / -(-num_pairs // batch_size)}

    return run_epoch


def fit_with_early_stopping(data: TopkData, model: MatrixFactorization,
                            run_epoch: Callable[[int], dict[str, float]], *, max_epochs: int,
                            patience: int, eval_every: int, max_seconds: float | None, k: int,
                            log_name: str, snapshot: Callable[[], Any] | None = None,
                            min_epochs: int = 0) -> tuple[TopkResult, Any]:
    """The epoch loop of :func:`train_bpr` and λOpt: ``run_epoch(epoch)`` trains one epoch and
    returns its history record (timed here as ``seconds``); every ``eval_every`` epochs the eval
    split is ranked, and training stops after ``patience`` evaluations without a better eval
    Recall@k, after ``max_epochs`` or once ``max_seconds`` have passed. Patience does not end
    training before epoch ``min_epochs``: from a random start, eval Recall@k can stay flat for
    a few epochs while an epoch holds few updates per id (the embedded ``synthetic_topk``, about
    20 pairs per user), and a chance high in that stretch would otherwise stop the run. The best
    evaluated weights are restored into ``model``.

    Returns the result and ``snapshot()`` (default: the model's weights) taken at the best
    evaluated epoch, for state a trainer keeps beside the model (λOpt's Λ).
    """
    snapshot = snapshot or model.get_weights
    history: list[dict[str, float]] = []
    best_epoch, best_eval, best_weights, best_state = 0, {}, model.get_weights(), snapshot()
    train_seconds, waited, stop_reason = 0.0, 0, "max_epochs"
    started = time.perf_counter()
    for epoch in range(1, max_epochs + 1):
        epoch_start = time.perf_counter()
        record = run_epoch(epoch)
        record["seconds"] = time.perf_counter() - epoch_start
        train_seconds += record["seconds"]
        out_of_time = max_seconds is not None and time.perf_counter() - started >= max_seconds
        if epoch % eval_every == 0 or epoch == max_epochs or out_of_time:
            tables = [t.numpy() for t in model.embedding_tables()]
            metrics = evaluate_topk(*tables, data.train_items_by_user, data.eval_items_by_user, k)
            record.update({f"eval_{name}": value for name, value in metrics.items()
                           if name != "users"})
            if metrics[f"recall@{k}"] > best_eval.get(f"recall@{k}", -1.0):
                best_epoch, best_eval, best_weights = epoch, metrics, model.get_weights()
                best_state = snapshot()
                waited = 0
            else:
                waited += 1
        history.append(record)
        logging.info("%s epoch %d: %s", log_name, epoch, record)
        patience_ends = waited >= patience and epoch >= min_epochs
        if patience_ends or out_of_time:
            stop_reason = "patience" if patience_ends else "max_seconds"
            break
    model.set_weights(best_weights)
    examples = len(data.train_pairs) * len(history)
    result = TopkResult(model=model, history=history, best_epoch=best_epoch, best_eval=best_eval,
                        train_seconds=train_seconds,
                        examples_per_second=examples / max(train_seconds, 1e-9),
                        embedding_params=model.embedding_params(), stop_reason=stop_reason)
    return result, best_state
