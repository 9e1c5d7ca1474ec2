"""Scoring raw CSV rows with an exported SavedModel (its ``serving_default`` signature).

CTR models return a click probability per row (:func:`score_csv`); top-k models (architecture
``mf``) return each row's user's top-20 items (:func:`recommend_csv`), and
:func:`topk_test_metrics` ranks a prepared dataset's test split with the exported tables.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator

import numpy as np
import tensorflow as tf

from components.base import ASSETS_EXTRA, RAW_FEATURES_ASSET
from pipeline.datasets.base import DatasetError, FeatureSpec, PreparedDataset
from pipeline.datasets.rows import NO_LABEL
from pipeline.examples import read_rows, to_example

BATCH_SIZE = 4096


def load_raw_spec(model_dir: str) -> FeatureSpec:
    """The raw feature declaration saved with the model."""
    path = os.path.join(model_dir, ASSETS_EXTRA, RAW_FEATURES_ASSET)
    if not tf.io.gfile.exists(path):
        raise DatasetError(f"{model_dir}: not an autorecsys SavedModel (no {path}).")
    try:
        with tf.io.gfile.GFile(path) as f:
            raw = json.load(f)
        return FeatureSpec(label=raw["label"], categorical=raw["categorical"],
                           numerical=raw["numerical"],
                           optional_numerical=raw.get("optional_numerical", ()),
                           task=raw.get("task", "ctr"),
                           user=raw.get("user"), item=raw.get("item"))
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{path}: not a raw feature declaration "
                           f"({type(e).__name__}: {e}).") from None


def load_serving(model_dir: str):
    """``model_dir``'s ``serving_default`` signature; a DatasetError naming ``model_dir`` when
    the SavedModel cannot be loaded."""
    try:
        return tf.saved_model.load(model_dir).signatures["serving_default"]
    except (OSError, KeyError, tf.errors.OpError) as e:
        raise DatasetError(f"{model_dir}: cannot load the SavedModel "
                           f"({type(e).__name__}: {e}).") from None


def csv_examples(csv_path: str, spec: FeatureSpec,
                 labels: list[int] | None = None) -> Iterator[bytes]:
    """Serialized raw tf.Examples (label removed) of the validated rows of ``csv_path``, in
    order; the labels of rows that have one are appended to ``labels`` when given."""
    for values in read_rows(csv_path, spec, require_label=False):
        label = values.pop(spec.label, None)
        if label is not None and labels is not None:
            labels.append(int(label))
        yield to_example(values, spec).SerializeToString()


def serve_in_batches(serve, examples: Iterable[bytes], *outputs: str
                     ) -> Iterator[tuple[np.ndarray, ...]]:
    """Runs ``serve`` over serialized tf.Examples, ``BATCH_SIZE`` at a time, in input order,
    yielding each batch's ``outputs`` as numpy arrays."""
    batch: list[bytes] = []
    for example in examples:
        batch.append(example)
        if len(batch) == BATCH_SIZE:
            result = serve(examples=tf.constant(batch))
            yield tuple(result[o].numpy() for o in outputs)
            batch = []
    if batch:
        result = serve(examples=tf.constant(batch))
        yield tuple(result[o].numpy() for o in outputs)


def is_topk_model(model_dir: str) -> bool:
    """Whether ``model_dir`` holds a top-k (``mf``) export."""
    return load_raw_spec(model_dir).task == "topk"


def recommend_csv(model_dir: str, csv_path: str) -> tuple[list[str], list[list[str]]]:
    """Each row's user and that user's top-k items (best first), in input order.

    Only the user column is read (others, label included, are ignored); unseen users get the
    most frequent train items. Items the model scores -inf (the user's train items) are left
    out, so a row holds fewer than k items when fewer than k are left.
    """
    spec = load_raw_spec(model_dir)
    user_spec = FeatureSpec(label=NO_LABEL, categorical=(spec.user,))
    serve = load_serving(model_dir)
    users: list[str] = []

    def examples() -> Iterator[bytes]:
        for values in read_rows(csv_path, user_spec, require_label=False):
            users.append(str(values[spec.user]))
            yield to_example({spec.user: values[spec.user]}, user_spec).SerializeToString()

    items = [[i.decode() for i, s in zip(row_items, row_scores, strict=True) if s > -np.inf]
             for batch_items, batch_scores in serve_in_batches(serve, examples(), "items",
                                                                "scores")
             for row_items, row_scores in zip(batch_items, batch_scores, strict=True)]
    return users, items


def topk_test_metrics(model_dir: str, dataset: PreparedDataset, k: int = 20) -> dict[str, float]:
    """Recall@k and NDCG@k of the exported top-k model on ``dataset``'s test split.

    The LightGCN++ protocol: every user with test items ranks all train-vocabulary items by the
    exported vectors, the user's train items (the raw train CSV) excluded; test interactions
    whose user or item the train vocabulary lacks are dropped (counted in ``test_dropped``).
    ``test_recall@k_excluding_eval`` and ``test_ndcg@k_excluding_eval`` also exclude the user's
    eval items (the original LightGCN protocol, whose train split holds them; gowalla's
    published numbers).
    """
    from components.topk import UserItems, evaluate_topk, read_split  # noqa: PLC0415
    from components.topk_trainer import load_topk_assets  # noqa: PLC0415

    user_table, item_table, vocab = load_topk_assets(model_dir)
    index = {f: {v: i for i, v in enumerate(vocab[f])} for f in ("user", "item")}
    tables = {}
    dropped = 0
    for split in ("train", "eval", "test"):
        users, items = read_split(dataset, split)
        u = np.array([index["user"].get(x, -1) for x in users], np.int64)
        i = np.array([index["item"].get(x, -1) for x in items], np.int64)
        seen = (u >= 0) & (i >= 0)
        if split == "test":
            dropped = int((~seen).sum())
        tables[split] = UserItems.from_pairs(u[seen], i[seen], len(user_table))
    items = item_table[:len(vocab["item"])]
    result = evaluate_topk(user_table, items, tables["train"], tables["test"], k=k)
    strict = evaluate_topk(user_table, items, tables["train"].union(tables["eval"]),
                           tables["test"], k=k)
    return {f"test_recall@{k}": result[f"recall@{k}"], f"test_ndcg@{k}": result[f"ndcg@{k}"],
            f"test_recall@{k}_excluding_eval": strict[f"recall@{k}"],
            f"test_ndcg@{k}_excluding_eval": strict[f"ndcg@{k}"],
            "test_users": int(result["users"]), "test_dropped": dropped}


def score_csv(model_dir: str, csv_path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities for every row of ``csv_path`` in input order, and the labels if present.

    Rows are validated like training data (the error names the file, row and field); the label
    column is optional.
    """
    spec = load_raw_spec(model_dir)
    serve = load_serving(model_dir)
    labels: list[int] = []
    probabilities = [out.reshape(-1) for (out,) in serve_in_batches(
        serve, csv_examples(csv_path, spec, labels), "probability")]
    scores = np.concatenate(probabilities) if probabilities else np.zeros(0)
    has_labels = len(labels) == scores.size and scores.size > 0
    return scores, (np.asarray(labels) if has_labels else None)
