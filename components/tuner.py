"""The Tuner's ``tuner_fn``: keras-tuner over the baseline's hyper-parameters.

keras-tuner 1.4's built-in tuners reject tf_keras models, so ``BaselineTuner`` uses keras-tuner's
"tune any function" pattern: ``run_trial`` builds the architecture the search stage would build
with the trial's values, trains it with the shared training code on train, and returns the best
eval AUC. The search space is defined once, in ``tuning_space``; the search stage applies the
winning values (``components.search.fixed_architecture``).
"""

from typing import Any

import keras_tuner
import tensorflow_transform as tft
from tfx import v1 as tfx

from components import base
from components.search import fixed_architecture
from models.zoo import model_input_names
from pipeline.configs import PipelineConfig, TrainConfig

OBJECTIVE = keras_tuner.Objective("val_auc", direction="max")


def tuning_space(hp: keras_tuner.HyperParameters, train: TrainConfig) -> dict[str, Any]:
    """Registers the tuned hyper-parameters around ``train``'s values and returns them."""
    train = train.resolved()
    return {
        "learning_rate": hp.Choice("learning_rate", sorted({1e-3, 3e-3, train.learning_rate})),
        "embedding_dim": hp.Choice("embedding_dim", sorted({8, 16, train.embedding_dim})),
        "dropout": hp.Choice("dropout", sorted({0.0, 0.2, train.dropout})),
        "l2": hp.Choice("l2", sorted({0.0, 1e-3, 1e-2, train.l2})),
    }


class BaselineTuner(keras_tuner.RandomSearch):
    """Random search whose trials train the pipeline's own model on transformed examples."""

    def __init__(self, fn_args: tfx.components.FnArgs, **kwargs: Any) -> None:
        super().__init__(objective=OBJECTIVE, **kwargs)
        self.fn_args = fn_args
        self.config = PipelineConfig.from_dict(fn_args.custom_config["config"])
        self.spec = fn_args.custom_config["spec"]
        self.transform_output = tft.TFTransformOutput(fn_args.transform_graph_path)
        self.vocab = base.vocab_sizes(self.transform_output, self.spec["categorical"])
        self.numeric_missing = base.numeric_missing(self.transform_output,
                                                    self.spec["numerical"])
        self.config.train.batch_size = base.train_batch_size(self.config.train,
                                                             fn_args.train_files)

    def run_trial(self, trial: keras_tuner.engine.trial.Trial, *args: Any,
                  **kwargs: Any) -> float:
        values = tuning_space(trial.hyperparameters, self.config.train)
        arch = fixed_architecture(self.config, self.spec, self.vocab, tuned=values,
                                  numeric_missing=self.numeric_missing)
        names = model_input_names(arch)
        train = self.config.train
        datasets = [base.make_dataset(files, self.transform_output, self.spec["label"],
                                      train.batch_size, shuffle=shuffle, seed=train.seed,
                                      input_names=names)
                    for files, shuffle in ((self.fn_args.train_files, True),
                                           (self.fn_args.eval_files, False))]
        result = base.train_model(arch, *datasets, learning_rate=values["learning_rate"],
                                  max_epochs=self.config.tuner.epochs_per_trial,
                                  patience=train.patience, lr_decay=train.lr_decay,
                                  lr_patience=train.lr_patience, seed=train.seed,
                                  deterministic=train.deterministic)
        return max(result.history["val_auc"])


def tuner_fn(fn_args: tfx.components.FnArgs) -> tfx.components.TunerFnResult:
    """TFX Tuner entry point (``tuner_fn='components.tuner.tuner_fn'``)."""
    config = PipelineConfig.from_dict(fn_args.custom_config["config"])
    tuner = BaselineTuner(fn_args, max_trials=config.tuner.max_trials,
                          directory=fn_args.working_dir, project_name="baseline",
                          seed=config.train.seed, overwrite=True)
    tuning_space(tuner.oracle.hyperparameters, config.train)
    return tfx.components.TunerFnResult(tuner=tuner, fit_kwargs={})
