"""``autorecsys bench``: train and test every (dataset, model, seed), write JSON, Markdown, PNG.

Each row trains with the pipeline's own pieces: the adapter, the validated conversion, Transform's
``preprocessing_fn``, the search stage's ``fixed_architecture`` and ``components.base.train_model``
(early stopping on validation AUC). The test split is scored once, after training.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from typing import Any

import numpy as np
import tf_keras as keras

from benchmarks.cache import CSV_FILES, csv_key
from benchmarks.data import BenchData, prepare_bench_data, transformed_dataset
from benchmarks.report import write_report
from benchmarks.topk import TOPK_SEARCHES, is_topk, run_topk
from benchmarks.topk_lambdaopt import EXPANSIONS, add_relative_costs, expand, is_expansion_row
from components import base
from components.search import searched_architecture
from models.architecture import TOPK_MODELS
from models.losses import describe_loss
from models.search import METHODS, report_trained, with_family_method
from models.zoo import model_input_names
from pipeline import metrics
from pipeline.configs import ConfigError, PipelineConfig
from pipeline.datasets import CSV_DATASET, DATASETS, NEEDS_NO_DATA, resolve_data_dir

# Bench model names: a model family, then "+"-joined variants: "buckets" (quantile-bucket
# numerics) and search methods (models.search.METHODS), applied in the order given.
VARIANTS = {"buckets": {"numeric_encoding": "bucket"}}


def parse_model(name: str, config: PipelineConfig) -> PipelineConfig:
    """A copy of ``config`` whose train settings realise bench model ``name``."""
    family, *variants = name.split("+")
    data = config.to_dict()
    data["train"]["model"] = family
    methods = []
    for variant in variants:
        if variant in METHODS:
            methods.append(variant)
        elif variant in VARIANTS:
            data["train"].update(VARIANTS[variant])
        else:
            raise ConfigError(f"Unknown bench model {name!r}: variant {variant!r} not in "
                              f"{sorted(VARIANTS) + sorted(METHODS)}.")
    data["search_strategy"] = with_family_method(family, "+".join(methods) or "none")
    return PipelineConfig.from_dict(data)


def bench_row(data: BenchData, model_name: str, seed: int, config: PipelineConfig,
              export_dir: str | None = None, report_dir: str | None = None) -> dict[str, Any]:
    """Searches (when the model names methods), retrains and scores the test split once.

    The search sees the train and eval splits only; its pictures go to ``report_dir``.
    """
    config = parse_model(model_name, config)
    config.seed = config.train.seed = seed
    spec = data.spec
    batch = config.train.batch_size = base.train_batch_size(
        config.train, data.split_files("train"), compression_type="")

    def dataset(split: str, input_names: list[str], shuffle: bool):
        if split not in ("train", "eval"):
            raise ValueError(f"A search reads the train and eval splits only. Received: {split!r}")
        return transformed_dataset(data, split, input_names, batch, shuffle=shuffle, seed=seed)

    search_start = time.perf_counter()
    vocab = base.vocab_sizes(data.transform_output, spec["categorical"])
    if report_dir:
        os.makedirs(report_dir, exist_ok=True)
    arch = searched_architecture(
        config, spec, vocab, dataset,
        counts=base.vocab_counts(data.transform_output, spec["categorical"]),
        report_dir=report_dir,
        numeric_missing=base.numeric_missing(data.transform_output, spec["numerical"]))
    search_seconds = time.perf_counter() - search_start
    names = model_input_names(arch)
    # Seed before the datasets exist: a seeded shuffle combines its seed with the global one,
    # so a row would otherwise depend on what ran before it in this process.
    keras.utils.set_random_seed(seed)
    train_ds = transformed_dataset(data, "train", names, batch, shuffle=True, seed=seed)
    eval_ds = transformed_dataset(data, "eval", names, batch, shuffle=False, seed=seed)
    result = base.train_model(arch, train_ds, eval_ds, learning_rate=config.train.learning_rate,
                              max_epochs=config.train.max_epochs,
                              patience=config.train.patience,
                              lr_decay=config.train.lr_decay,
                              lr_patience=config.train.lr_patience, seed=seed,
                              deterministic=config.train.deterministic)
    report_trained(arch, result.model, report_dir)
    test_ds = transformed_dataset(data, "test", names, 8192, shuffle=False, seed=seed)
    labels = np.concatenate([y.numpy().ravel() for _, y in test_ds])
    scores = result.model.predict(test_ds, verbose=0).ravel()
    test_auc = metrics.roc_auc(labels, scores)
    if export_dir:
        base.export_serving_model(result.model, data.transform_output, arch, spec["label"],
                                  export_dir,
                                  optional_numerical=spec.get("optional_numerical", ()))
    return {
        "dataset": data.dataset.name,
        "model": model_name,
        "seed": seed,
        "test_auc": test_auc,
        "test_logloss": metrics.log_loss(labels, scores),
        "test_auc_se": metrics.auc_standard_error(test_auc, int(labels.sum()),
                                                  int(labels.size - labels.sum())),
        "test_examples": int(labels.size),
        "loss": describe_loss(arch.loss),
        "val_auc": max(result.history.get("val_auc", [float("nan")])),
        "best_epoch": result.best_epoch,
        "epochs": len(result.history.get("val_auc", [])),
        "batch_size": batch,
        "embedding_params": arch.embedding_params(),
        "total_params": int(result.model.count_params()),
        "search_seconds": search_seconds,
        "train_seconds": result.train_seconds,
        "train_wall_seconds": result.wall_seconds,
        "train_examples_per_second": result.examples_per_second,
        "architecture": json.loads(arch.to_json()),
    }


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the grid named by ``args`` and writes ``args.out`` plus its report files."""
    config = PipelineConfig.from_json_file(args.config) if args.config else PipelineConfig()
    if args.max_epochs is not None:
        config.train.max_epochs = args.max_epochs
    if getattr(args, "loss_from", None):
        config.loss_from = args.loss_from
    config.validate()
    datasets = _names("--datasets", args.datasets) if args.datasets else []
    options = own_data_options(args, config, datasets)
    if CSV_DATASET in datasets and not options:
        raise ConfigError(f"--datasets: {CSV_DATASET!r} is your own data; give --data FILE (or "
                          f"--train/--eval/--test) and its columns.")
    if options:  # first, so that a problem in the user's own file shows before other rows
        datasets = [CSV_DATASET, *(d for d in datasets if d != CSV_DATASET)]
    if not datasets:
        raise ConfigError("bench: give --datasets NAMES, or your own data: --data FILE (or "
                          "--train/--eval/--test) with its columns.")
    models = _names("--models", args.models)
    seed_names = _names("--seeds", args.seeds)
    try:
        seeds = [int(s) for s in seed_names]
    except ValueError as e:
        raise ConfigError(f"--seeds must be integers: {args.seeds!r}") from e
    out = os.path.abspath(args.out)
    _check_grid(datasets, models, config, args.data_dir, out, options)
    work_dir = args.work_dir or os.path.join(os.path.dirname(out), "bench-work")
    refit = bool(getattr(args, "refit", False))
    rows, serving = (_resumed(out, config, options, refit) if getattr(args, "resume", False)
                     else ([], []))
    done = {(r["dataset"], r["model"], r["seed"]) for r in rows}
    for dataset in datasets:
        own = options if dataset == CSV_DATASET else None
        if is_topk(dataset, own):
            rows += run_topk(dataset, models, seeds, config, work_dir, args.data_dir,
                             search_dir=os.path.splitext(out)[0] + "-search",
                             refit=refit, options=own, done=done)
            add_relative_costs(rows, config)  # also against a resumed row of the same seed
            _write(out, rows, serving, config, options, refit)
            continue
        todo = {seed: [m for m in models if (dataset, m, seed) not in done] for seed in seeds}
        # Every seed's split first: one that cannot be used (e.g. a split of the user's file
        # without both labels) fails before a row trains.
        prepared = {seed: prepare_bench_data(dataset, work_dir, args.data_dir, seed, own)
                    for seed in seeds if todo[seed]}
        for seed in seeds:
            data = prepared.get(seed)
            for model in todo[seed]:
                logging.info("bench: %s / %s / seed %d", dataset, model, seed)
                export_dir = None
                if args.serving and seed == seeds[0]:
                    export_dir = os.path.join(work_dir, "export", f"{dataset}-{model}")
                report_dir = os.path.join(os.path.splitext(out)[0] + "-search",
                                          f"{dataset}-{model}-seed{seed}")
                rows.append(bench_row(data, model, seed, config, export_dir, report_dir))
                if export_dir:
                    from benchmarks.serving import measure_in_fresh_process  # noqa: PLC0415

                    serving.append({"dataset": dataset, "model": model,
                                    **measure_in_fresh_process(export_dir,
                                                               data.dataset.split_path("test"))})
                _write(out, rows, serving, config, options, refit)
    return _write(out, rows, serving, config, options, refit)


def _resumed(out: str, config: PipelineConfig, options: dict[str, Any], refit: bool
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``--resume``: the rows and serving entries of the report at ``out`` (none when there is
    no report yet), which must record the same config, ``--refit`` and own data as this bench.

    Raises:
      ConfigError: the report is unreadable, older than ``config`` records, or was written with
        another config or other data (naming the config's differing top-level keys).
    """
    if not os.path.exists(out):
        return [], []
    try:
        with open(out) as f:
            report = json.load(f)
        rows, serving = list(report["results"]), list(report.get("serving", []))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"--resume: {out} is not a bench report ({e}).") from e
    if "config" not in report:
        raise ConfigError(f"--resume: {out} does not record its config (an older bench wrote "
                          f"it); run without --resume, or with another --out.")
    current = json.loads(json.dumps(config.to_dict()))
    if report["config"] != current:
        keys = sorted(k for k in set(report["config"]) | set(current)
                      if report["config"].get(k) != current.get(k))
        raise ConfigError(f"--resume: {out} was written with a different config ({keys} "
                          f"differ); its rows would not compare with new ones.")
    if bool(report.get("refit")) != refit:
        how = "with" if report.get("refit") else "without"
        raise ConfigError(f"--resume: {out} was written {how} --refit; resume it the same way.")
    if report.get("dataset_options", {}) != (options or {}):
        raise ConfigError(f"--resume: {out} was written for different data (its "
                          f"dataset_options: {report.get('dataset_options')}).")
    return rows, serving


def own_data_options(args: argparse.Namespace, config: PipelineConfig,
                     datasets: list[str]) -> dict[str, Any]:
    """The bring-your-own data of a bench (dataset ``csv``): ``--data`` or ``--train/--eval/
    --test`` and their columns, over the ``dataset_options`` of a ``--config`` whose dataset is
    ``csv`` (used when ``datasets`` is empty or names ``csv``: a config given for its train
    settings does not add its data to named datasets), checked as ``autorecsys run`` checks
    them, with the files' paths made absolute (the report names them, and each row's child
    process reads them). Empty when none is given."""
    from pipeline.cli import DATA_OPTIONS, data_options  # noqa: PLC0415

    wanted = not datasets or CSV_DATASET in datasets
    base = config.dataset_options if config.dataset == CSV_DATASET and wanted else {}
    if not base and all(getattr(args, key, None) is None for key in DATA_OPTIONS):
        return {}
    options = data_options(args, "bench", base)
    for key in CSV_FILES:
        if options.get(key):
            options[key] = os.path.abspath(options[key])
    return options


def _names(flag: str, text: str) -> list[str]:
    """The comma-separated names of ``flag``: at least one, none twice."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or len(set(names)) < len(names):
        raise ConfigError(f"{flag} needs one or more distinct comma-separated names. "
                          f"Received: {text!r}")
    return names


def _check_grid(datasets: list[str], models: list[str], config: PipelineConfig,
                data_dir: str | None, out: str, options: dict[str, Any] | None = None) -> None:
    """Raises ``ConfigError`` (``DatasetError`` for a missing data dir) for a grid that would
    fail part way: before its first row trains, not after."""
    topk_known = [*TOPK_MODELS, *(f"mf+{m}" for m in TOPK_SEARCHES), *EXPANSIONS]
    ctr_models = [m for m in models if m not in topk_known and not is_expansion_row(m, config)]
    topk_models = [m for m in models if m.split("+")[0] in TOPK_MODELS
                   or is_expansion_row(m, config)]
    for dataset in datasets:
        if dataset == CSV_DATASET:
            csv_key(options)  # its files exist (and are read once, to key the cache)
        elif dataset not in DATASETS:
            raise ConfigError(f"--datasets: unknown dataset {dataset!r}; known: "
                              f"{sorted(DATASETS)}.")
        elif dataset not in NEEDS_NO_DATA:
            resolve_data_dir(data_dir)
        if is_topk(dataset, options) and ctr_models:
            raise ConfigError(f"Dataset {dataset!r} is a top-k dataset; models {ctr_models} are "
                              f"CTR models. Top-k models: {topk_known}.")
        if not is_topk(dataset, options) and topk_models:
            raise ConfigError(f"Dataset {dataset!r} is a CTR dataset; models {topk_models} are "
                              f"top-k models.")
    for model in models:
        # EXPANSIONS and their rows (e.g. mf+lambdaopt[fixed]): top-k rows.
        if model not in TOPK_MODELS and not is_expansion_row(model, config):
            parse_model(model, config)
    rows = [name for model in models for name in (
        [row for row, _ in expand(model, config)] if is_expansion_row(model, config) else [model])]
    twice = sorted({row for row in rows if rows.count(row) > 1})
    if twice:
        raise ConfigError(f"--models: rows {twice} would be trained twice (an expansion such as "
                          f"mf+lambdaopt already holds them). Received: {models}")
    if os.path.isdir(out):
        raise ConfigError(f"--out {out} is a directory; give the JSON file to write.")
    try:
        os.makedirs(os.path.dirname(out), exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot create its folder ({e}).") from e
    if not os.access(os.path.dirname(out), os.W_OK):
        raise ConfigError(f"--out {out}: its folder is not writable.")


def _write(out: str, rows: list[dict[str, Any]], serving: list[dict[str, Any]],
           config: PipelineConfig, options: dict[str, Any] | None = None,
           refit: bool = False) -> dict[str, Any]:
    report = {"results": rows, "serving": serving, "train_config": config.to_dict()["train"],
              "config": config.to_dict(), "refit": refit}
    if options:  # what dataset "csv" was
        report["dataset_options"] = options
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".partial", "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    os.replace(out + ".partial", out)
    write_report(report, out)
    return report
