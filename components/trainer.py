"""The Trainer's ``run_fn``: the retrain stage, built from the searched Architecture alone.

Reads ``fn_args.hyperparameters`` (the search stage's ``architecture.json``), trains on the
transformed train split with early stopping on the eval split, writes TensorBoard logs and a
``training_report.json`` into the ModelRun artifact, and exports the serving SavedModel. A top-k
architecture (``mf``) is trained with BPR instead (``components.topk_trainer``).
"""

from __future__ import annotations

import json
import logging
import os

import tensorflow_transform as tft
import tf_keras as keras
from tfx import v1 as tfx

from components import base
from models.architecture import TOPK_MODELS, Architecture
from models.search import report_trained
from models.zoo import model_input_names
from pipeline import storage
from pipeline.configs import PipelineConfig

TRAINING_REPORT = "training_report.json"
SEARCH_PICTURES = "search"  # ModelRun subfolder for the search methods' pictures of the model


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    """TFX Trainer entry point (``run_fn='components.trainer.run_fn'``)."""
    config = PipelineConfig.from_dict(fn_args.custom_config["config"])
    label = fn_args.custom_config["spec"]["label"]
    if not fn_args.hyperparameters or "architecture" not in fn_args.hyperparameters:
        raise ValueError("The Trainer needs the search stage's architecture.json in its "
                         "hyperparameters channel.")
    arch = Architecture.from_json(json.dumps(fn_args.hyperparameters["architecture"]))
    training = fn_args.hyperparameters.get("training", {})
    if arch.model in TOPK_MODELS:
        from components.topk_trainer import run_topk_fn  # noqa: PLC0415

        run_topk_fn(fn_args, config, arch, training, label)
        return
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    strategy = base.choose_strategy()
    batch_size = base.train_batch_size(config.train, fn_args.train_files)
    input_names = model_input_names(arch)
    keras.utils.set_random_seed(config.train.seed)  # a seeded shuffle also reads the global seed
    train_ds = base.make_dataset(fn_args.train_files, tf_transform_output, label, batch_size,
                                 shuffle=True, seed=config.train.seed, input_names=input_names)
    eval_ds = base.make_dataset(fn_args.eval_files, tf_transform_output, label, batch_size,
                                shuffle=False, seed=config.train.seed, input_names=input_names)
    logging.info("Retraining %s from the searched architecture (%d embedding parameters).",
                 arch.model, arch.embedding_params())
    result = base.train_model(
        arch, train_ds, eval_ds,
        learning_rate=float(training.get("learning_rate", config.train.learning_rate)),
        max_epochs=config.train.max_epochs, patience=config.train.patience,
        lr_decay=config.train.lr_decay, lr_patience=config.train.lr_patience,
        deterministic=config.train.deterministic,
        seed=config.train.seed, log_dir=os.path.join(fn_args.model_run_dir, "tensorboard"),
        strategy=strategy)
    with storage.local_dir_for(os.path.join(fn_args.model_run_dir, SEARCH_PICTURES)) as pictures:
        report_trained(arch, result.model, pictures)
    base.export_serving_model(
        result.model, tf_transform_output, arch, label, fn_args.serving_model_dir,
        optional_numerical=fn_args.custom_config["spec"].get("optional_numerical", ()))
    report = {
        "best_epoch": result.best_epoch,
        "batch_size": batch_size,
        "history": result.history,
        "train_seconds": result.train_seconds,
        "wall_seconds": result.wall_seconds,
        "train_examples_per_second": result.examples_per_second,
        "embedding_params": arch.embedding_params(),
        "total_params": int(result.model.count_params()),
    }
    storage.write_text(os.path.join(fn_args.model_run_dir, TRAINING_REPORT),
                       json.dumps(report, indent=2))
