"""A synthetic CTR dataset with planted structure, for testing that the search finds it.

Structure (all drawn from one seeded ``numpy.random.Generator``):

* 8 categorical fields ``c0..c7`` with Zipf-distributed ids written as ``c<j>_<id>``;
  ``c0..c3`` have a main effect on the logit, ``c4..c7`` are pure noise.
* Two pairwise interactions, ``(c0, c1)`` and ``(c2, c3)``, each a random table of pair effects.
* ``n0 ~ Uniform[0, 10]`` with the non-monotone effect ``numeric_scale * sin(pi * n0 / 5)``;
  ``n1 ~ LogNormal(0, 1)`` is pure noise.
* ``label ~ Bernoulli(sigmoid(bias + main + pair + f(n0)))`` with ``bias`` solved so that the
  expected CTR equals ``target_ctr``.

``ground_truth.json`` (also in the manifest metadata) records the planted structure and the AUC
that the true logits reach on the test split (the Bayes-optimal AUC, up to sampling noise).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.datasets._common import publish_dataset, split_indices
from pipeline.datasets.base import DatasetError, FeatureSpec, PreparedDataset

NAME = "synthetic"
N_FIELDS = 8
INFORMATIVE = ("c0", "c1", "c2", "c3")
NOISE = ("c4", "c5", "c6", "c7")
INTERACTIONS = (("c0", "c1"), ("c2", "c3"))
DEFAULT_VOCAB_SIZES = (200, 100, 300, 80, 500, 150, 60, 250)
NUMERIC_SHAPE = "sin: numeric_scale * sin(pi * n0 / 5), n0 ~ Uniform[0, 10] (up, down, up)"


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (ties averaged); None when only one class is present.

    Args:
      scores: real-valued scores, higher means more likely positive.
      labels: 0/1 labels.

    Returns:
      The AUC, or None if ``labels`` has a single class.
    """
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(np.asarray(scores), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mean_rank = (ends - counts + 1 + ends) / 2.0
    rank_sum = float(mean_rank[inverse][labels].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _zipf_ids(rng: np.random.Generator, vocab: int, exponent: float, n: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, vocab + 1, dtype=np.float64) ** exponent
    return rng.choice(vocab, size=n, p=weights / weights.sum())


def _solve_bias(logits: np.ndarray, target_ctr: float) -> float:
    """Bisection for ``b`` with ``mean(sigmoid(logits + b)) == target_ctr``."""
    low, high = -30.0, 30.0
    for _ in range(80):
        mid = (low + high) / 2.0
        if _sigmoid(logits + mid).mean() < target_ctr:
            low = mid
        else:
            high = mid
    return (low + high) / 2.0


def _check_args(n_rows: int, vocab_sizes: Sequence[int], target_ctr: float) -> None:
    if n_rows < 10:
        raise DatasetError(f"{NAME}: n_rows must be at least 10, got {n_rows}.")
    if len(vocab_sizes) != N_FIELDS or min(vocab_sizes) < 2:
        raise DatasetError(f"{NAME}: need {N_FIELDS} vocab sizes >= 2, got {list(vocab_sizes)}.")
    if not 0.0 < target_ctr < 1.0:
        raise DatasetError(f"{NAME}: target_ctr must be in (0, 1), got {target_ctr}.")


def _draw(
    rng: np.random.Generator,
    n_rows: int,
    vocab_sizes: Sequence[int],
    zipf_exponent: float,
    scales: tuple[float, float, float],
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Draws ids, numerics and the bias-free logit, in a fixed order of random draws."""
    main_scale, pair_scale, numeric_scale = scales
    ids = [_zipf_ids(rng, v, zipf_exponent, n_rows) for v in vocab_sizes]
    n0 = np.round(rng.uniform(0.0, 10.0, n_rows), 4)
    n1 = np.round(rng.lognormal(0.0, 1.0, n_rows), 4)
    logit = numeric_scale * np.sin(np.pi * n0 / 5.0)
    for field in INFORMATIVE:
        j = int(field[1:])
        logit += rng.normal(0.0, main_scale, vocab_sizes[j])[ids[j]]
    for a, b in INTERACTIONS:
        ja, jb = int(a[1:]), int(b[1:])
        table = rng.normal(0.0, pair_scale, (vocab_sizes[ja], vocab_sizes[jb]))
        logit += table[ids[ja], ids[jb]]
    return ids, n0, n1, logit


def generate_synthetic(
    out_dir: str,
    *,
    seed: int = 2021,
    n_rows: int = 40000,
    vocab_sizes: Sequence[int] = DEFAULT_VOCAB_SIZES,
    zipf_exponent: float = 1.1,
    target_ctr: float = 0.27,
    main_scale: float = 0.8,
    pair_scale: float = 1.0,
    numeric_scale: float = 1.5,
) -> PreparedDataset:
    """Generates the planted-structure CTR dataset into ``out_dir``.

    Args:
      out_dir: output directory for ``{train,eval,test}.csv``, the manifest and
        ``ground_truth.json``.
      seed: seed for every random draw and for the 8:1:1 split.
      n_rows: total number of rows.
      vocab_sizes: vocabulary size of ``c0..c7``.
      zipf_exponent: Zipf exponent of the id frequencies.
      target_ctr: expected click rate, reached by solving for the bias.
      main_scale: standard deviation of the per-id main effects of ``c0..c3``.
      pair_scale: standard deviation of the pair effects of the planted interactions.
      numeric_scale: amplitude of the ``n0`` effect.

    Returns:
      The prepared dataset; ``metadata["ground_truth"]`` holds the planted structure.
    """
    _check_args(n_rows, vocab_sizes, target_ctr)
    rng = np.random.default_rng(seed)
    ids, n0, n1, logit = _draw(
        rng, n_rows, vocab_sizes, zipf_exponent, (main_scale, pair_scale, numeric_scale)
    )
    bias = _solve_bias(logit, target_ctr)
    logit = logit + bias
    labels = (rng.random(n_rows) < _sigmoid(logit)).astype(np.int64)
    splits = split_indices(n_rows, seed)

    columns = [labels.astype(str)]
    columns += [np.char.add(f"c{j}_", ids[j].astype(str)) for j in range(N_FIELDS)]
    columns += [np.char.mod("%.4f", n0), np.char.mod("%.4f", n1)]
    table = np.stack(columns, axis=1).tolist()
    test = splits["test"]
    auc = roc_auc(logit[test], labels[test])
    ground_truth = {
        "informative_fields": list(INFORMATIVE),
        "noise_fields": list(NOISE),
        "interactions": [list(pair) for pair in INTERACTIONS],
        "numeric_effect": {"field": "n0", "shape": NUMERIC_SHAPE, "scale": numeric_scale},
        "numeric_noise_fields": ["n1"],
        "bayes_auc_test": None if auc is None else round(auc, 6),
        "bias": round(bias, 6),
        "ctr": round(float(labels.mean()), 6),
        "vocab_sizes": [int(v) for v in vocab_sizes],
        "zipf_exponent": zipf_exponent,
        "main_scale": main_scale,
        "pair_scale": pair_scale,
        "seed": seed,
        "n_rows": n_rows,
    }
    spec = FeatureSpec(
        label="label",
        categorical=tuple(f"c{j}" for j in range(N_FIELDS)),
        numerical=("n0", "n1"),
    )
    return publish_dataset(
        NAME,
        out_dir,
        spec,
        {name: (table[i] for i in idx.tolist()) for name, idx in splits.items()},
        metadata={"ground_truth": ground_truth},
        extra_json={"ground_truth.json": ground_truth},
    )
