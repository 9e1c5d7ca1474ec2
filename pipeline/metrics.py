"""Test metrics computed outside TensorFlow: exact ROC AUC (ties averaged) and log loss."""

from __future__ import annotations

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney U) formula, ties averaged."""
    labels = np.asarray(labels, dtype=np.float64).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = labels.sum()
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError("AUC needs both positive and negative labels.")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty_like(sorted_scores)
    start = 0
    while start < sorted_scores.size:
        end = start
        while end + 1 < sorted_scores.size and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[start:end + 1] = (start + end) / 2.0 + 1.0
        start = end + 1
    rank_of = np.empty_like(ranks)
    rank_of[order] = ranks
    return float((rank_of[labels == 1].sum() - positives * (positives + 1) / 2.0)
                 / (positives * negatives))


def log_loss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy with probabilities clipped to [eps, 1 - eps]."""
    labels = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probabilities, dtype=np.float64).ravel(), eps, 1.0 - eps)
    return float(-np.mean(labels * np.log(p) + (1.0 - labels) * np.log(1.0 - p)))
