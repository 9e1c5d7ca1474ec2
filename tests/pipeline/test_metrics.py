"""Exact AUC and logloss against brute force."""

import itertools

import numpy as np
import pytest

from pipeline.metrics import auc_standard_error, log_loss, roc_auc


def _brute_auc(labels, scores):
    pos = [s for y, s in zip(labels, scores, strict=True) if y == 1]
    neg = [s for y, s in zip(labels, scores, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = rng.integers(0, 10, 200) / 10.0
    assert roc_auc(labels, scores) == pytest.approx(_brute_auc(labels, scores))


def test_auc_needs_both_classes():
    with pytest.raises(ValueError, match="both positive and negative"):
        roc_auc(np.ones(3), np.array([0.1, 0.2, 0.3]))


def test_auc_refuses_nan_scores():
    # A diverged model's NaN scores would be ranked by row order: AUC 1.0 here.
    with pytest.raises(ValueError, match="2 NaN of 4"):
        roc_auc(np.array([0, 1, 0, 1]), np.array([0.1, np.nan, 0.2, np.nan]))


def test_log_loss_golden():
    assert log_loss(np.array([1, 0]), np.array([0.8, 0.4])) == pytest.approx(
        -(np.log(0.8) + np.log(0.6)) / 2)


def test_auc_standard_error_matches_the_bootstrap():
    rng = np.random.default_rng(0)
    labels = (rng.random(1000) < 0.25).astype(float)
    scores = labels * 0.9 + rng.normal(0.0, 1.0, labels.size)  # AUC about 0.74
    auc = roc_auc(labels, scores)
    boot = []
    for _ in range(400):
        pick = rng.integers(0, labels.size, labels.size)
        boot.append(roc_auc(labels[pick], scores[pick]))
    se = auc_standard_error(auc, int(labels.sum()), int(labels.size - labels.sum()))
    assert 0.012 < se < 0.025
    assert se == pytest.approx(np.std(boot), rel=0.2)
    with pytest.raises(ValueError, match="both positive and negative"):
        auc_standard_error(0.7, 0, 10)
