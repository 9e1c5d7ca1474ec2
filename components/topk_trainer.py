"""The Trainer's top-k branch: MF-BPR on Transform's user and item ids, exported for serving.

``run_fn`` hands over here when the searched architecture is ``mf``. The transformed train and
eval splits are read as ``(user_id, item_id)`` pairs; :func:`components.topk.train_bpr` trains
with early stopping on the eval split's Recall@20 (full ranking, training items excluded), or,
when ``arch.lambdaopt`` is set, ``models.search.lambdaopt.train_lambdaopt`` learns per-id L2
jointly with the model under the same early stopping (its ``Λ`` summary goes into the training
report, its picture and ``lambdas.npz`` into the model run directory); the test split is never
read here. The export is a SavedModel whose ``serving_default`` signature
takes serialized raw tf.Examples holding the user field and returns the user's top-k items
(``items``, strings) and their ``scores``. Unseen users map to Transform's OOV id, whose vector is
zero: every item ties, and ``top_k`` then returns the most frequent train items (Transform's
vocabulary order). Items the user interacted with in the train split are never recommended to
that user (``topk.exclude_seen``; the served ranking then matches the offline protocol).

Under ``assets.extra`` the export also holds ``topk_tables.npz`` (``user`` and ``item`` matrices
indexed by Transform id, OOV rows zero) and ``topk_vocab.json`` (the raw user and item ids by
Transform id), so the test split can be ranked offline with the exact served vectors.
"""

from __future__ import annotations

import io
import json
import logging
import os
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx

from components import base, features
from components.topk import TopkResult, refit_bpr, topk_data_from_interactions, train_bpr
from models.architecture import Architecture
from pipeline import storage
from pipeline.configs import PipelineConfig

K = 20
TABLES_ASSET = "topk_tables.npz"
VOCAB_ASSET = "topk_vocab.json"
TRAINING_REPORT = "training_report.json"
# Full ranking costs users x items per evaluation; on large catalogues evaluate less often.
LARGE_RANKING = 5e8


def early_stopping(config: PipelineConfig, num_users: int, num_items: int) -> dict[str, int]:
    """MF training's ``max_epochs``, ``patience``, ``eval_every`` and ``min_epochs``:
    ``config.topk``'s, else ``config.train``'s epochs and patience (the patience at least 3
    evaluations) and an eval ranking every epoch, or every 5 when users x items exceeds
    ``LARGE_RANKING``."""
    large = num_users * num_items > LARGE_RANKING
    return {"max_epochs": config.topk.max_epochs or config.train.max_epochs,
            "patience": config.topk.patience or max(config.train.patience, 3),
            "eval_every": config.topk.eval_every or (5 if large else 1),
            "min_epochs": config.topk.min_epochs}


def mf_schedule(config: PipelineConfig, data, *, learning_rate: float | None = None,
                batch_size: int | None = None) -> tuple[dict[str, Any], dict[str, int]]:
    """``(step, fit)`` of an MF training on ``data`` (a ``TopkData``), the one rule for the
    Trainer, the search component and the bench: ``step`` holds the ``learning_rate`` and the
    ``batch_size`` (``topk.batch_size_for`` the train pairs, so small data gets
    ``topk.min_steps_per_epoch`` steps an epoch), ``fit`` the :func:`early_stopping`.
    ``learning_rate``/``batch_size`` override ``config.topk``'s (the Tuner's choice)."""
    step = {"learning_rate": float(config.topk.learning_rate if learning_rate is None
                                   else learning_rate),
            "batch_size": config.topk.batch_size_for(
                len(data.train_pairs), None if batch_size is None else int(batch_size))}
    return step, early_stopping(config, data.num_users, data.num_items)


def read_id_pairs(file_patterns: list[str] | str, tf_transform_output: tft.TFTransformOutput,
                  user: str, item: str) -> tuple[np.ndarray, np.ndarray]:
    """All ``(user_id, item_id)`` Transform ids of Transform's gzipped TFRecords, in file order."""
    names = [features.id_name(user), features.id_name(item)]
    spec = {k: v for k, v in tf_transform_output.transformed_feature_spec().items() if k in names}
    patterns = [file_patterns] if isinstance(file_patterns, str) else list(file_patterns)
    files = sorted(f for p in patterns for f in tf.io.gfile.glob(p))
    if not files:
        raise FileNotFoundError(f"No transformed examples match {patterns}.")
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(65536).map(
        lambda x: tf.io.parse_example(x, spec))
    columns: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for batch in ds.as_numpy_iterator():
        for n in names:
            columns[n].append(batch[n].reshape(-1))
    return tuple(np.concatenate(columns[n]) if columns[n] else np.zeros(0, np.int64)
                 for n in names)


def table_by_transform_id(vectors: np.ndarray, ids: np.ndarray, rows: int) -> np.ndarray:
    """``[rows, D]`` matrix with ``vectors[r]`` at row ``int(ids[r])``, other rows zero."""
    table = np.zeros((rows, vectors.shape[1]), np.float32)
    table[ids.astype(np.int64)] = vectors
    return table


class TopkServingModule(tf.Module):
    """The exported object: the Transform layer, both tables and the ``serve`` signature."""

    def __init__(self, tf_transform_output: tft.TFTransformOutput, user: str,
                 user_table: np.ndarray, item_table: np.ndarray, item_vocab: list[str],
                 k: int = K, seen: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """``seen``: ``(user_ids, item_ids)`` Transform-id pairs never to recommend."""
        super().__init__()
        self.tft_layer = tf_transform_output.transform_features_layer()
        self.user_table = tf.Variable(user_table, trainable=False, name="user_table")
        self.item_table = tf.Variable(item_table, trainable=False, name="item_table")
        self.item_vocab = tf.Variable(np.array(item_vocab, dtype=object), trainable=False,
                                      name="item_vocab")
        cut = min(k, len(item_vocab))
        seen_users, seen_items = seen if seen is not None else (np.zeros(0), np.zeros(0))
        order = np.argsort(seen_users, kind="stable")
        splits = np.concatenate([[0], np.cumsum(np.bincount(
            seen_users.astype(np.int64), minlength=len(user_table)))]).astype(np.int64)
        self.seen_splits = tf.Variable(splits, trainable=False, name="seen_row_splits")
        self.seen_items = tf.Variable(seen_items.astype(np.int64)[order], trainable=False,
                                      name="seen_items")
        user_spec = {user: tf_transform_output.raw_feature_spec()[user]}
        user_id = features.id_name(user)
        signature = [tf.TensorSpec(shape=[None], dtype=tf.string, name="examples")]

        @tf.function(input_signature=signature)
        def serve(examples: tf.Tensor) -> dict[str, tf.Tensor]:
            transformed = self.tft_layer(tf.io.parse_example(examples, user_spec))
            users = tf.gather(self.user_table, tf.reshape(transformed[user_id], [-1]))
            items = self.item_table[:len(item_vocab)]  # OOV rows are never recommended.
            scores = tf.matmul(users, items, transpose_b=True)
            user_ids = tf.reshape(transformed[user_id], [-1])
            seen_rows = tf.gather(tf.RaggedTensor.from_row_splits(
                self.seen_items, self.seen_splits, validate=False), user_ids)
            hide = tf.stack([seen_rows.value_rowids(), seen_rows.values], axis=1)
            hide = tf.boolean_mask(hide, hide[:, 1] < len(item_vocab))
            scores = tf.tensor_scatter_nd_update(
                scores, hide, tf.fill([tf.shape(hide)[0]], tf.constant(-np.inf, scores.dtype)))
            top = tf.math.top_k(scores, k=cut)
            return {"items": tf.gather(self.item_vocab, top.indices), "scores": top.values}

        self.serve = serve


def export_topk_model(export_dir: str, tf_transform_output: tft.TFTransformOutput,
                      arch: Architecture, label: str, user_table: np.ndarray,
                      item_table: np.ndarray,
                      seen: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Writes the SavedModel and its ``assets.extra`` (see the module docstring)."""
    user, item = arch.categorical
    vocab = {f: [v.decode() if isinstance(v, bytes) else str(v) for v in
                 tf_transform_output.vocabulary_by_name(features.vocab_name(f))]
             for f in (user, item)}
    module = TopkServingModule(tf_transform_output, user, user_table, item_table, vocab[item],
                               seen=seen)
    tf.saved_model.save(module, export_dir, signatures={"serving_default": module.serve})
    assets = base.write_assets_extra(export_dir, arch, label,
                                     {"task": "topk", "user": user, "item": item, "k": K})
    base.write_warmup_requests(export_dir, tf_transform_output, [user], [])
    buffer = io.BytesIO()  # np.savez seeks, which a GFile opened for writing cannot.
    np.savez(buffer, user=user_table, item=item_table)
    with tf.io.gfile.GFile(os.path.join(assets, TABLES_ASSET), "wb") as f:
        f.write(buffer.getvalue())
    with tf.io.gfile.GFile(os.path.join(assets, VOCAB_ASSET), "w") as f:
        json.dump({"user": vocab[user], "item": vocab[item]}, f)


def load_topk_assets(model_dir: str) -> tuple[np.ndarray, np.ndarray, dict[str, list[str]]]:
    """The exported user and item tables (by Transform id) and the raw ids by Transform id."""
    assets = os.path.join(model_dir, base.ASSETS_EXTRA)
    with tf.io.gfile.GFile(os.path.join(assets, TABLES_ASSET), "rb") as f:
        buffer = io.BytesIO(f.read())
    with np.load(buffer) as tables:
        user_table, item_table = tables["user"], tables["item"]
    vocab = json.loads(storage.read_text(os.path.join(assets, VOCAB_ASSET)))
    return user_table, item_table, vocab


def _report(result: TopkResult, data_dropped: dict[str, int], arch: Architecture,
            training: dict[str, Any]) -> dict[str, Any]:
    return {
        "best_epoch": result.best_epoch,
        f"eval_recall@{K}": result.best_eval.get(f"recall@{K}"),
        f"eval_ndcg@{K}": result.best_eval.get(f"ndcg@{K}"),
        "eval_users": result.best_eval.get("users"),
        "eval_dropped_interactions": data_dropped.get("eval", 0),
        "history": result.history,
        "stop_reason": result.stop_reason,
        "train_seconds": result.train_seconds,
        "train_examples_per_second": result.examples_per_second,
        "embedding_params": arch.embedding_params(),
        "training": training,
    }


def run_topk_fn(fn_args: tfx.components.FnArgs, config: PipelineConfig, arch: Architecture,
                training: dict[str, Any], label: str) -> dict[str, Any]:
    """Trains MF-BPR from ``arch``, exports it to ``fn_args.serving_model_dir`` and writes
    ``training_report.json`` into ``fn_args.model_run_dir``; returns the report."""
    user, item = arch.categorical
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    train_ids = read_id_pairs(fn_args.train_files, tf_transform_output, user, item)
    eval_ids = read_id_pairs(fn_args.eval_files, tf_transform_output, user, item)
    empty = np.zeros(0, np.int64)
    data = topk_data_from_interactions(train_ids, eval_ids, (empty, empty))
    step, fit = mf_schedule(config, data, learning_rate=training.get("learning_rate"),
                            batch_size=training.get("batch_size"))
    training = {**step, **fit}
    logging.info("Training MF-BPR on %d users x %d items (%d train pairs; eval pairs with a "
                 "user or item unseen in train: %d); %s.", data.num_users, data.num_items,
                 len(data.train_pairs), data.dropped.get("eval", 0), training)
    # ESAPN's per-id sizes and λOpt's per-id L2 are indexed by Transform id; TopkData rows hold
    # Transform ids as text.
    rows = (("user", user, data.user_ids), ("item", item, data.item_ids))
    id_dims, id_l2 = ({key: [per_id[field][int(t)] for t in ids]
                       for key, field, ids in rows if field in per_id} or None
                      for per_id in (arch.id_dims, arch.id_l2))
    # ``training``: the learning rate, the batch size and the early stopping, all passed on
    common = {"dim": arch.embedding_dims[user], "init_std": arch.embedding_init_std,
              "seed": config.train.seed, "k": K, **training}
    lambdaopt_report = None
    if arch.lambdaopt is not None:  # λOpt: Λ learned jointly with the model (the paper's way)
        from models.search.lambdaopt import train_lambdaopt  # noqa: PLC0415

        with storage.local_dir_for(fn_args.model_run_dir) as report_dir:
            found = train_lambdaopt(data, **common, options=arch.lambdaopt,
                                    report_dir=report_dir)
        result, lambdaopt_report = found.result, found.report
    else:
        result = train_bpr(data, **common, l2=arch.l2, id_dims=id_dims, loss=arch.loss,
                           id_l2=id_l2)
    model, seen, refit = result.model, train_ids, None
    if config.topk.refit:  # a fresh model on train + eval for the early-stopped epoch count
        model, merged, seconds = refit_bpr(
            data, result.best_epoch, dim=common["dim"], learning_rate=common["learning_rate"],
            batch_size=common["batch_size"], l2=arch.l2, init_std=common["init_std"],
            seed=common["seed"], id_dims=id_dims, loss=arch.loss)
        seen = tuple(np.concatenate(pair) for pair in zip(train_ids, eval_ids, strict=True))
        refit = {"epochs": result.best_epoch, "seconds": seconds,
                 "train_pairs": len(merged.train_pairs)}
        logging.info("Refit on train + eval: %s.", refit)
    users, items = (t.numpy() for t in model.embedding_tables())
    # TopkData indexes Transform ids given as text; map its rows back to the ids.
    user_table = table_by_transform_id(users, data.user_ids, arch.vocab_sizes[user])
    item_table = table_by_transform_id(items, data.item_ids, arch.vocab_sizes[item])
    export_topk_model(fn_args.serving_model_dir, tf_transform_output, arch, label, user_table,
                      item_table, seen=seen if config.topk.exclude_seen else None)
    report = _report(result, data.dropped, arch, training)
    if refit is not None:
        report["refit"] = refit
    if lambdaopt_report is not None:
        report["lambdaopt"] = lambdaopt_report
    storage.write_text(os.path.join(fn_args.model_run_dir, TRAINING_REPORT),
                       json.dumps(report, indent=2))
    return report
