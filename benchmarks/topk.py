"""Top-k rows of ``autorecsys bench``: MF-BPR with full-ranking Recall@20 / NDCG@20.

Models: ``mf`` (one size for every row; BPR, or ``config.loss_from``'s loss when set: a loss
transferred with ``--loss-from``), ``mf+esapn`` (ESAPN's per-id sizes, searched on the train and
eval splits by ``models.search.esapn.search_topk``, then retrained from scratch with those sizes)
and ``mf+autolossgen`` (a pointwise loss searched by ``models.search.autolossgen.search_topk``,
then MF retrained from scratch with it; BPR when no candidate passed the validity check). A
search's pictures go to ``<search_dir>/<dataset>-<model>-seed<seed>/``.

The LightGCN/BARS protocol: the published train/eval/test split, every item ranked for every
user with the user's training items excluded, early stopping on eval Recall@20, test read once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection
from typing import Any

from benchmarks.cache import data_root
from benchmarks.topk_lambdaopt import (
    EXPANSIONS,
    add_relative_costs,
    answer_request,
    in_fresh_process,
    is_expansion_row,
    run_rows,
)
from components.search import MF_INIT_STD
from components.topk import (
    evaluate_split,
    load_topk,
    ranked_test_metrics,
    refit_bpr,
    train_bpr,
)
from components.topk_trainer import mf_schedule
from models.architecture import TOPK_MODELS
from models.losses import describe_loss
from models.search.topk import search_topk
from pipeline.configs import ConfigError, PipelineConfig
from pipeline.datasets import CSV_DATASET, prepare_dataset
from pipeline.datasets.base import PreparedDataset

TOPK_DATASETS = ("gowalla", "ml1m_topk", "synthetic_topk")
TOPK_SEARCHES = ("esapn", "autolossgen")  # bench model "mf+<method>"


def is_topk(dataset: str, options: dict[str, Any] | None = None) -> bool:
    """Whether ``dataset`` is top-k data: a named top-k dataset, or bring-your-own data
    (``csv``) given as an interaction log (``options`` with a user column)."""
    if dataset == CSV_DATASET:
        return bool((options or {}).get("user"))
    return dataset in TOPK_DATASETS


def _prepare(name: str, work_dir: str, data_dir: str | None, seed: int | None = None,
             options: dict[str, Any] | None = None) -> PreparedDataset:
    """The prepared dataset, cached in work_dir. The named top-k datasets have one split, so
    ``seed`` only keys bring-your-own data (``csv``, with ``options``), whose one log is split
    per user by the seed."""
    own = name == CSV_DATASET
    directory = os.path.join(data_root(work_dir, name, seed if own else None, options), "data")
    if os.path.exists(os.path.join(directory, "feature_spec.json")):
        return PreparedDataset.load(directory)
    if own:
        return prepare_dataset(name, directory, seed=seed, **(options or {}))
    return prepare_dataset(name, directory, data_dir=data_dir)


def run_topk(dataset: str, models: list[str], seeds: list[int], config: PipelineConfig,
             work_dir: str, data_dir: str | None,
             search_dir: str | None = None, refit: bool = False,
             options: dict[str, Any] | None = None,
             done: Collection[tuple[str, str, int]] = ()) -> list[dict[str, Any]]:
    """One row per (model, seed) on a top-k dataset; the split is the published one (for
    bring-your-own data, ``csv`` with ``options``: the given files, or one log split per user
    by each seed).

    With ``refit``, each row also trains a fresh model of the same sizes and loss on train +
    eval for the early-stopped run's best epoch count (``components.topk.refit_bpr``) and adds
    its test metrics as ``recall@20_refit`` and ``ndcg@20_refit``: the training data of the
    LightGCN/BARS numbers (gowalla: 810,128 pairs), with the eval items excluded from the
    ranking as the train items are. The main columns stay the early-stopped model's.
    ``done``: ``(dataset, row model, seed)`` of rows not to train again (``bench --resume``).
    """
    known = [*TOPK_MODELS, *(f"mf+{m}" for m in TOPK_SEARCHES), *EXPANSIONS]
    unknown = [m for m in models if m not in known and not is_expansion_row(m, config)]
    if unknown:
        raise ConfigError(f"Dataset {dataset!r} is a top-k dataset; models {unknown} are CTR "
                          f"models. Top-k models: {known}.")
    # Every seed's split prepared here, before a row starts: bad input fails in this process
    # and before any training, and each row's child process loads the folder it is given.
    prepared = {seed: _prepare(dataset, work_dir, data_dir, seed, options) for seed in seeds}
    rows, loaded = [], {}
    for seed in seeds:
        directory = os.path.abspath(prepared[seed].directory)
        for model in models:
            # mf+l2grid, mf+lambdaopt (a row each) or one of their rows (e.g. mf[l2=0.001]),
            # each in a fresh process.
            if model in EXPANSIONS or model not in known:
                rows += run_rows(dataset, model, seed, config, directory, search_dir,
                                 skip=done)
            elif (dataset, model, seed) in done:
                continue
            elif model == "mf":  # in this process, on data loaded once per split
                if directory not in loaded:
                    loaded[directory] = load_topk(prepared[seed])
                rows.append(topk_row(dataset, model, seed, config.to_dict(), directory,
                                     search_dir, refit, data=loaded[directory]))
            else:  # a search: its many trainings in a process of their own (in_fresh_process)
                rows.append(in_fresh_process("benchmarks.topk", {
                    "dataset": dataset, "model": model, "seed": seed,
                    "config_data": config.to_dict(), "data_path": directory,
                    "search_dir": search_dir, "refit": refit}))
    add_relative_costs(rows, config)
    return rows


def topk_row(dataset: str, model: str, seed: int, config_data: dict[str, Any], data_path: str,
             search_dir: str | None = None, refit: bool = False,
             data: Any = None) -> dict[str, Any]:
    """One ``run_topk`` row (``mf`` or ``mf+<search>``), in the current process, on the prepared
    dataset at ``data_path``; ``data``: its ``TopkData`` when already loaded."""
    config = PipelineConfig.from_dict(config_data)
    if data is None:
        data = load_topk(PreparedDataset.load(data_path))
    # The pipeline's top-k settings (``PipelineConfig.topk``), so a bench row is a pipeline number.
    mf = config.topk
    # ``fit``: the retrain's early stopping; AutoLossGen's finalists train with the same.
    step, fit = mf_schedule(config, data)
    settings = {"dim": mf.embedding_dim, **step, "l2": mf.l2}
    start = time.perf_counter()
    report_dir = search_dir and os.path.join(search_dir, f"{dataset}-{model}-seed{seed}")
    search, id_dims, loss = _search(model, data, settings, fit, seed, config,
                                    report_dir)
    search_seconds = time.perf_counter() - start if model != "mf" else 0.0
    result = train_bpr(data, **settings, **fit, seed=seed, id_dims=id_dims, loss=loss)
    users, items = (t.numpy() for t in result.model.embedding_tables())
    test = ranked_test_metrics(data, users, items)
    if refit:
        test.update(_refit_metrics(data, result.best_epoch, settings, seed, id_dims,
                                   loss))
    return {
        "dataset": dataset, "model": model, "seed": seed,
        **test,
        "val_recall@20": result.best_eval.get("recall@20"),
        "best_epoch": result.best_epoch, "epochs": len(result.history),
        "embedding_params": result.embedding_params,
        "total_params": result.embedding_params,
        "search_seconds": search_seconds, "train_seconds": result.train_seconds,
        "batch_size": settings["batch_size"],
        "train_examples_per_second": result.examples_per_second,
        "loss": describe_loss(loss) if loss else "bpr",
        "architecture": {"model": "mf", "embedding_dim": settings["dim"],
                         "num_users": data.num_users, "num_items": data.num_items,
                         "l2": settings["l2"], "search": search,
                         "id_dims": id_dims or {}, "loss": loss},
    }


def _refit_metrics(data: Any, epochs: int, settings: dict[str, Any], seed: int,
                   id_dims: dict | None, loss: dict | None) -> dict[str, float]:
    """Test Recall/NDCG@20 of a refit on train + eval (``run_topk``'s ``refit``)."""
    model, merged, seconds = refit_bpr(data, epochs, **settings, seed=seed, id_dims=id_dims,
                                       loss=loss)
    users, items = (t.numpy() for t in model.embedding_tables())
    metrics = evaluate_split(merged, users, items, "test")
    return {"recall@20_refit": metrics["recall@20"], "ndcg@20_refit": metrics["ndcg@20"],
            "refit_epochs": epochs, "refit_seconds": seconds}


def _search(model: str, data: Any, settings: dict[str, Any], fit: dict[str, int], seed: int,
            config: PipelineConfig, report_dir: str | None
            ) -> tuple[dict[str, Any], dict | None, dict | None]:
    """``(search report, ESAPN id_dims, loss)`` of a top-k bench model (train and eval only)."""
    if model == "mf":
        loss = config.fixed_loss()
        return {"strategy": "none", **({"loss_from": config.loss_from} if loss else {})}, None, loss
    method = model.split("+", 1)[1]
    found = search_topk(method, data, settings={**settings, "init_std": MF_INIT_STD, "seed": seed},
                        fit=fit, options=config.search_options.get(method, {}),
                        report_dir=report_dir)
    id_dims = found.id_dims and {key: dims.tolist() for key, dims in found.id_dims.items()}
    return {"strategy": method, method: found.report}, id_dims, found.loss


if __name__ == "__main__":
    answer_request(topk_row)
