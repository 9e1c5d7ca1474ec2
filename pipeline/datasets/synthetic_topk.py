"""A synthetic top-k (implicit feedback) dataset with planted structure, for pipeline tests.

Structure (all drawn from one seeded ``numpy.random.Generator``):

* Users and items each fall into ``n_clusters`` clusters (uniformly at random).
* Item popularity is Zipf: the item of popularity rank ``r`` has weight ``1 / r**zipf_exponent``
  (ranks are a random permutation of the items).
* User ``u`` interacts with ``n_u = min_items + Poisson(mean_items - min_items)`` distinct items
  (capped at half the catalogue), drawn without replacement with probability proportional to
  ``popularity(i) * (affinity if cluster(i) == cluster(u) else 1)``.
* Each user's items are shuffled and split ``test_fraction`` / ``eval_fraction`` / rest into
  test / eval / train (at least one test and one eval item per user).

Rows are ``1,u<user>,i<item>`` (label always 1, the top-k adapters' layout). The metadata's
``ground_truth`` records the clusters and the test Recall@20 of three rankings (training items
excluded): the planted preference (the oracle), popularity alone, and random (in expectation
``k / (items - train items)``), the bounds a learned model should land between.
"""

from __future__ import annotations

import numpy as np

from pipeline.datasets._common import publish_dataset
from pipeline.datasets.adapters import TOPK_SPEC
from pipeline.datasets.base import DatasetError, PreparedDataset

NAME = "synthetic_topk"
K = 20


def _recall_at_k(scores: np.ndarray, train: list[np.ndarray], test: list[np.ndarray],
                 k: int = K) -> float:
    """Mean Recall@k over users with test items, ranking all items but the user's train items."""
    recalls = []
    for u, (seen, held_out) in enumerate(zip(train, test, strict=True)):
        if not held_out.size:
            continue
        row = scores[u].astype(np.float64).copy()
        row[seen] = -np.inf
        top = np.argsort(-row, kind="stable")[:k]
        recalls.append(np.isin(top, held_out).sum() / held_out.size)
    return float(np.mean(recalls)) if recalls else 0.0


def _check_args(n_users: int, n_items: int, n_clusters: int, min_items: int,
                mean_items: float, fractions: tuple[float, float]) -> None:
    if n_users < 2 or n_items < 4 * K:
        raise DatasetError(f"{NAME}: need n_users >= 2 and n_items >= {4 * K}. Received: "
                           f"n_users={n_users}, n_items={n_items}")
    if not 1 <= n_clusters <= min(n_users, n_items):
        raise DatasetError(f"{NAME}: n_clusters must be in [1, min(n_users, n_items)]. "
                           f"Received: {n_clusters}")
    if min_items < 3 or mean_items < min_items or mean_items > n_items // 2:
        raise DatasetError(f"{NAME}: need 3 <= min_items <= mean_items <= n_items / 2. "
                           f"Received: min_items={min_items}, mean_items={mean_items}")
    if any(f <= 0 for f in fractions) or sum(fractions) >= 1:
        raise DatasetError(f"{NAME}: eval and test fractions must be > 0 and sum below 1. "
                           f"Received: {fractions}")


def generate_synthetic_topk(
    out_dir: str,
    *,
    seed: int = 2021,
    n_users: int = 300,
    n_items: int = 200,
    n_clusters: int = 10,
    mean_items: float = 27.0,
    min_items: int = 10,
    affinity: float = 20.0,
    zipf_exponent: float = 0.5,
    eval_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> PreparedDataset:
    """Generates the planted-structure top-k dataset into ``out_dir`` (see the module docstring).

    Returns:
      The prepared dataset; ``metadata["ground_truth"]`` holds the planted structure and the
      reference Recall@20 values.
    """
    _check_args(n_users, n_items, n_clusters, min_items, mean_items,
                (eval_fraction, test_fraction))
    rng = np.random.default_rng(seed)
    user_cluster = rng.integers(0, n_clusters, n_users)
    item_cluster = rng.integers(0, n_clusters, n_items)
    popularity = 1.0 / (rng.permutation(n_items) + 1.0) ** zipf_exponent
    preference = popularity[None, :] * np.where(
        user_cluster[:, None] == item_cluster[None, :], affinity, 1.0)
    counts = np.minimum(min_items + rng.poisson(mean_items - min_items, n_users), n_items // 2)
    splits: dict[str, list[tuple[str, str, str]]] = {"train": [], "eval": [], "test": []}
    held: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for u in range(n_users):
        p = preference[u] / preference[u].sum()
        items = rng.choice(n_items, size=int(counts[u]), replace=False, p=p)
        n_test = max(1, round(test_fraction * items.size))
        n_eval = max(1, round(eval_fraction * items.size))
        parts = {"test": items[:n_test], "eval": items[n_test:n_test + n_eval],
                 "train": items[n_test + n_eval:]}
        for split, part in parts.items():
            splits[split] += [("1", f"u{u}", f"i{i}") for i in part]
        held["train"].append(parts["train"])
        held["test"].append(parts["test"])
    ground_truth = {
        "n_users": n_users,
        "n_items": n_items,
        "n_clusters": n_clusters,
        "affinity": affinity,
        "zipf_exponent": zipf_exponent,
        "user_cluster": {f"u{u}": int(c) for u, c in enumerate(user_cluster)},
        "item_cluster": {f"i{i}": int(c) for i, c in enumerate(item_cluster)},
        f"oracle_test_recall@{K}": round(_recall_at_k(preference, held["train"],
                                                      held["test"]), 6),
        f"popularity_test_recall@{K}": round(_recall_at_k(
            np.broadcast_to(popularity, preference.shape), held["train"], held["test"]), 6),
        f"random_test_recall@{K}": round(float(np.mean(
            [min(1.0, K / (n_items - t.size)) for t in held["train"]])), 6),
        "interactions": int(counts.sum()),
        "seed": seed,
    }
    metadata = {"ground_truth": ground_truth, "split": "per user: test/eval/train",
                "label": "1 = observed"}
    return publish_dataset(NAME, out_dir, TOPK_SPEC, splits, metadata,
                           extra_json={"ground_truth.json": ground_truth})
