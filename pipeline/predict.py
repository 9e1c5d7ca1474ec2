"""Scoring raw CSV rows with an exported SavedModel (its ``serving_default`` signature)."""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

from components.base import ASSETS_EXTRA, RAW_FEATURES_ASSET
from pipeline.datasets.base import DatasetError, FeatureSpec
from pipeline.examples import read_rows, to_example

BATCH_SIZE = 4096


def load_raw_spec(model_dir: str) -> FeatureSpec:
    """The raw feature declaration saved with the model."""
    path = os.path.join(model_dir, ASSETS_EXTRA, RAW_FEATURES_ASSET)
    if not os.path.exists(path):
        raise DatasetError(f"{model_dir}: not an autorecsys SavedModel (no {path}).")
    with open(path) as f:
        raw = json.load(f)
    return FeatureSpec(label=raw["label"], categorical=raw["categorical"],
                       numerical=raw["numerical"])


def score_csv(model_dir: str, csv_path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities for every row of ``csv_path`` in input order, and the labels if present.

    Rows are validated like training data (the error names the file, row and field); the label
    column is optional.
    """
    spec = load_raw_spec(model_dir)
    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    probabilities: list[np.ndarray] = []
    labels: list[int] = []
    batch: list[bytes] = []

    def flush() -> None:
        if batch:
            out = serve(examples=tf.constant(batch))["probability"]
            probabilities.append(out.numpy().reshape(-1))
            batch.clear()

    for values in read_rows(csv_path, spec, require_label=False):
        if spec.label in values:
            labels.append(int(values[spec.label]))
            values = {k: v for k, v in values.items() if k != spec.label}
        batch.append(to_example(values, spec).SerializeToString())
        if len(batch) == BATCH_SIZE:
            flush()
    flush()
    scores = np.concatenate(probabilities) if probabilities else np.zeros(0)
    has_labels = len(labels) == scores.size and scores.size > 0
    return scores, (np.asarray(labels) if has_labels else None)
