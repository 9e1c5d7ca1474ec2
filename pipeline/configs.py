"""Typed configuration of a run: dataset, model and training, search, pipeline and runner.

One ``PipelineConfig`` is built by the CLI or read from a JSON file, passed down explicitly, and
serialised into the TFX components' ``custom_config`` (which makes it part of the cache key).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from models.architecture import AUTODIS_DEFAULTS, MODELS, TOPK_MODELS
from models.search import (
    METHODS,
    SearchError,
    check_applies,
    parse_strategy,
    with_family_method,
)

RUNNERS = ("direct", "direct-multiprocess", "flink", "spark", "dataflow")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key."""


# Regularisation a model family gets unless the config sets it. Deep models follow the BARS
# recipe for small CTR data (embedding L2, batch norm, dropout); shallow models overfit less and
# lose their signal under a strong embedding L2. Chosen on frappe86k's validation split only
# (README, "Measured results").
PRESET_KEYS = ("l2", "dropout", "batch_norm")
_DEEP = {"l2": 0.2, "dropout": 0.3, "batch_norm": True}
_DEEPFM = {**_DEEP, "l2": 0.3}
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # DeepFM's embedding L2 was re-chosen on frappe86k's validation AUC (README, Measured).
    "deepfm": _DEEPFM, "dnn": _DEEP, "dcn": _DEEP,
    # AutoCTR's first trial and baseline finalist is DeepFM as a DAG: the same preset.
    "autoctr": _DEEPFM,
    # An MLP over its set interactions, like DeepFM's; L2 0.3 won on frappe86k's validation AUC
    # in every seed (0.9395 -> 0.9483, seeds 2021-2023; README, AutoGroup).
    "autogroup": _DEEPFM,
    "fm": {"l2": 0.0, "dropout": 0.0, "batch_norm": False},
    "lr": {"l2": 0.0, "dropout": 0.0, "batch_norm": False},
}


def lowered_batch_size(batch_size: int, min_steps_per_epoch: int, num_train: int) -> int:
    """``batch_size``, lowered to ``ceil(num_train / min_steps_per_epoch)`` when an epoch of
    ``num_train`` examples would otherwise take fewer than ``min_steps_per_epoch`` steps
    (0 disables it).

    >>> lowered_batch_size(2048, 100, 6500), lowered_batch_size(2048, 100, 810128)
    (65, 2048)
    """
    if min_steps_per_epoch <= 0 or num_train >= batch_size * min_steps_per_epoch:
        return batch_size
    return max(1, -(-num_train // min_steps_per_epoch))


@dataclass
class TrainConfig:
    """Model family and the training hyper-parameters (the search space's fixed point).

    Attributes:
      model: one of ``models.architecture.MODELS``.
      embedding_dim: embedding size of every field before any search.
      hidden_units: MLP widths of deep models.
      dropout: MLP dropout rate (None: the model's preset, ``MODEL_PRESETS``).
      batch_norm: batch normalisation in MLP blocks (None: the model's preset).
      l2: L2 strength on embedding tables (None: the model's preset).
      net_l2: L2 strength on network kernels.
      embedding_init_std: standard deviation of the embeddings' normal initialisation.
      learning_rate: Adam learning rate.
      batch_size: global batch size (split across replicas under MirroredStrategy); lowered
        for a small train split, see ``min_steps_per_epoch``.
      min_steps_per_epoch: the batch size is lowered to ``ceil(train examples / this)`` when an
        epoch would otherwise take fewer steps, so that early stopping and learning-rate decay,
        which count epochs, see some training between two evaluations (0 disables it).
      max_epochs: upper bound on epochs; early stopping usually ends sooner.
      patience: epochs in a row improving neither validation AUC nor logloss before stopping;
        the best-AUC epoch's weights are restored (``components.base.PlateauControl``).
      lr_decay: factor applied to the learning rate after ``lr_patience`` epochs in a row
        without improvement (1.0 disables it).
      lr_patience: non-improving epochs in a row before each learning-rate decay.
      numeric_encoding: how numerical fields enter the model (``scaled`` or ``bucket``).
      seed: seed of weight init and shuffling.
      deterministic: bit-reproducible training for a seed (TensorFlow op determinism; slower).
    """

    model: str = "deepfm"
    embedding_dim: int = 10
    hidden_units: list[int] = field(default_factory=lambda: [400, 400, 400])
    dropout: float | None = None
    batch_norm: bool | None = None
    l2: float | None = None
    net_l2: float = 0.0
    embedding_init_std: float = 1e-4
    learning_rate: float = 1e-3
    batch_size: int = 4096
    min_steps_per_epoch: int = 8
    max_epochs: int = 100
    patience: int = 3
    lr_decay: float = 0.1
    lr_patience: int = 1
    numeric_encoding: str = "scaled"
    cross_layers: int = 3
    seed: int = 2021
    deterministic: bool = False

    def resolved(self) -> TrainConfig:
        """A copy whose unset (None) regularisation settings come from the model's preset."""
        preset = MODEL_PRESETS.get(self.model, {})
        values = {k: preset[k] if getattr(self, k) is None else getattr(self, k)
                  for k in PRESET_KEYS}
        return dataclasses.replace(self, **values)

    def batch_size_for(self, num_train: int) -> int:
        """The batch size for a train split of ``num_train`` examples (``min_steps_per_epoch``).

        >>> TrainConfig().batch_size_for(8000), TrainConfig().batch_size_for(51950)
        (1000, 4096)
        """
        return lowered_batch_size(self.batch_size, self.min_steps_per_epoch, num_train)

    def validate(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"train.model: unknown model {self.model!r}; known: {list(MODELS)}.")
        for key in ("embedding_dim", "batch_size", "max_epochs", "patience", "lr_patience"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1. Received: {getattr(self, key)}")
        if self.min_steps_per_epoch < 0:
            raise ConfigError(f"train.min_steps_per_epoch must be >= 0. "
                              f"Received: {self.min_steps_per_epoch}")
        if not 0.0 < self.lr_decay <= 1.0:
            raise ConfigError(f"train.lr_decay must be in (0, 1]. Received: {self.lr_decay}")
        if self.learning_rate <= 0:
            raise ConfigError(f"train.learning_rate must be > 0. Received: {self.learning_rate}")
        if self.numeric_encoding not in ("scaled", "bucket"):
            raise ConfigError(f"train.numeric_encoding must be 'scaled' or 'bucket'. "
                              f"Received: {self.numeric_encoding!r}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"train.dropout must be in [0, 1). Received: {self.dropout}")
        for key in ("l2", "net_l2", "cross_layers"):
            if (getattr(self, key) or 0) < 0:
                raise ConfigError(f"train.{key} must be >= 0. Received: {getattr(self, key)}")
        if self.embedding_init_std <= 0:
            raise ConfigError(f"train.embedding_init_std must be > 0. "
                              f"Received: {self.embedding_init_std}")
        if any(units < 1 for units in self.hidden_units):
            raise ConfigError(f"train.hidden_units must all be >= 1. Received: {self.hidden_units}")


@dataclass
class TunerConfig:
    """keras-tuner search over the baseline's hyper-parameters (optional pipeline node)."""

    enabled: bool = False
    max_trials: int = 4
    epochs_per_trial: int = 2

    def validate(self) -> None:
        for key in ("max_trials", "epochs_per_trial"):
            if getattr(self, key) < 1:
                raise ConfigError(f"tuner.{key} must be >= 1. Received: {getattr(self, key)}")


@dataclass
class TopkConfig:
    """MF-BPR settings of top-k datasets (``task == "topk"``); the defaults are the bench's
    LightGCN MF baseline. The seed, and unless set here epochs and patience, come from
    ``train``.

    Attributes:
      embedding_dim: size of the user and item vectors.
      learning_rate: Adam learning rate.
      batch_size: BPR triples per step; lowered for a small train split, see
        ``min_steps_per_epoch``.
      min_steps_per_epoch: the batch size is lowered to ``ceil(train pairs / this)`` when an
        epoch would otherwise take fewer steps (0 disables it). Early stopping counts epochs:
        with a few steps an epoch, MF-BPR stops before it has learnt more than popularity
        (the embedded ``synthetic_topk``: 4 steps an epoch at 2,048). LightGCN's datasets
        (ml1m_topk, gowalla: 390-400 steps at 2,048) are unaffected.
      l2: LightGCN's L2 weight on the batch's embeddings.
      eval_every: epochs between two eval rankings (early stopping counts evaluations);
        0 picks 1, or 5 when users x items exceeds 5e8.
      patience: evaluations in a row without a better eval Recall@20 before stopping; 0 takes
        ``train.patience`` (at least 3).
      min_epochs: patience does not stop training before this epoch (the best evaluated epoch
        is still the one kept). From a random start eval Recall@20 can stay flat for a few
        epochs on small data (``synthetic_topk``: the first 6), and a chance high there
        would otherwise end the run; ml1m_topk and gowalla stop after epoch 30.
      max_epochs: upper bound on epochs; 0 takes ``train.max_epochs``.
      exclude_seen: the served top-k never holds items the user interacted with in train
        (with ``refit``, in train or eval).
      refit: after early stopping, train a fresh model on train + eval for the best epoch
        count and serve that one (what LightGCN and BARS train on). The blessing still reads the
        early-stopped model's eval Recall@20; its test metrics read
        ``test_recall@20_excluding_eval``. Not with λOpt, whose Λ learns from the eval split.
    """

    embedding_dim: int = 64
    learning_rate: float = 1e-3
    batch_size: int = 2048
    min_steps_per_epoch: int = 100
    l2: float = 1e-4
    eval_every: int = 0
    patience: int = 0
    min_epochs: int = 10
    max_epochs: int = 0
    exclude_seen: bool = True
    refit: bool = False

    def validate(self) -> None:
        for key in ("embedding_dim", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"topk.{key} must be >= 1. Received: {getattr(self, key)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"topk.learning_rate must be > 0. Received: {self.learning_rate}")
        if self.l2 < 0:
            raise ConfigError(f"topk.l2 must be >= 0. Received: {self.l2}")
        for key in ("eval_every", "patience", "max_epochs", "min_steps_per_epoch", "min_epochs"):
            if getattr(self, key) < 0:
                raise ConfigError(f"topk.{key} must be >= 0. Received: {getattr(self, key)}")

    def batch_size_for(self, num_train: int, batch_size: int | None = None) -> int:
        """The BPR batch size for ``num_train`` train pairs (``min_steps_per_epoch``), from
        ``batch_size`` (None: ``self.batch_size``).

        >>> TopkConfig().batch_size_for(6500), TopkConfig().batch_size_for(810128)
        (65, 2048)
        """
        return lowered_batch_size(batch_size or self.batch_size, self.min_steps_per_epoch,
                                  num_train)


@dataclass
class PipelineConfig:
    """Everything one pipeline run needs.

    Attributes:
      pipeline_name: TFX pipeline name (MLMD context).
      output_dir: run directory on this machine: prepared data, MLMD, summary; also the
        examples, pipeline root and serving dir unless ``artifact_root`` is set.
      artifact_root: where the examples, the pipeline root (every artifact) and the serving dir
        go instead: a URI (``gs://bucket/path``) that remote Beam workers (Dataflow) can read, or
        a local path; None: ``output_dir`` (see ``pipeline.storage``).
      dataset: registered dataset name, or ``csv`` for bring-your-own data.
      data_dir: where public datasets live (None: ``AUTORECSYS_DATA_DIR`` or ``../shared/data``).
      seed: data-split and training seed.
      train: model and training hyper-parameters.
      search_strategy: architecture search run before retraining: ``none`` (the fixed
        architecture), a method of ``models.search.METHODS`` or several joined by ``+``.
      search_options: per method name, its settings (see each method's module).
      tuner: optional keras-tuner node.
      min_eval_auc: the Evaluator blesses only above this validation AUC.
      min_eval_recall: top-k datasets: ``TopkBlessing`` blesses only from this validation
        Recall@20 on.
      topk: MF-BPR settings used on top-k datasets.
      slice_feature: raw feature the Evaluator slices by (None: first categorical field).
      runner: Beam runner for the components (see ``pipeline.runners``).
      beam_pipeline_args: extra Beam flags appended to the runner's.
      enable_cache: reuse MLMD-cached executions.
      beam_prep_min_bytes: inputs whose largest split has this many bytes or more are converted
        to TFRecords by a Beam job on ``runner`` (smaller ones in-process).
      dataset_options: adapter arguments (for ``csv``: path, label, categorical, numerical...).
      loss_from: a loss file (an AutoLossGen loss JSON, e.g. one a search wrote as
        ``autolossgen_loss.json``, or an ``architecture.json`` with a ``loss``) whose loss trains
        the model instead of logloss; None: logloss (or what the search finds).
    """

    pipeline_name: str = "autorecsys"
    output_dir: str = "runs/demo"
    artifact_root: str | None = None
    dataset: str = "synthetic"
    data_dir: str | None = None
    seed: int = 2021
    train: TrainConfig = field(default_factory=TrainConfig)
    search_strategy: str = "none"
    search_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    tuner: TunerConfig = field(default_factory=TunerConfig)
    min_eval_auc: float = 0.55
    min_eval_recall: float = 0.01
    topk: TopkConfig = field(default_factory=TopkConfig)
    slice_feature: str | None = None
    runner: str = "direct"
    beam_pipeline_args: list[str] = field(default_factory=list)
    enable_cache: bool = True
    beam_prep_min_bytes: int = 64 * 2**20
    dataset_options: dict[str, Any] = field(default_factory=dict)
    loss_from: str | None = None

    def validate(self) -> None:
        for prefix, section in (("", self), ("train.", self.train), ("tuner.", self.tuner),
                                ("topk.", self.topk)):
            _check_types(section, prefix)
        self.train.validate()
        self.tuner.validate()
        self.topk.validate()
        try:
            methods = parse_strategy(self.search_strategy)
            for method in methods:
                check_applies(method, self.train.model)
            if self.train.model in METHODS and self.train.model not in methods:
                example = with_family_method(self.train.model, self.search_strategy)
                raise SearchError(f"model {self.train.model!r} is found by the search method of "
                                  f"the same name: add it to the strategy (e.g. {example!r}).")
            if self.topk.refit and "lambdaopt" in methods:
                raise ConfigError("topk.refit does not apply to lambdaopt: its Λ learns from the "
                                  "eval split, which a refit would train on.")
        except SearchError as e:
            raise ConfigError(f"search_strategy: {e}") from e
        unknown = sorted(set(self.search_options) - set(METHODS))
        if unknown:
            raise ConfigError(f"search_options: unknown methods {unknown}; "
                              f"known: {sorted(METHODS)}.")
        for method, options in self.search_options.items():  # typos fail now, not mid-run
            known = search_option_names(method)
            unknown = sorted(set(options) - known)
            if unknown:
                raise ConfigError(f"search_options.{method}: unknown options {unknown}; "
                                  f"known: {sorted(known)}.")
        if self.runner not in RUNNERS:
            raise ConfigError(f"runner: unknown {self.runner!r}; known: {list(RUNNERS)}.")
        if not 0.0 <= self.min_eval_auc <= 1.0:
            raise ConfigError(f"min_eval_auc must be in [0, 1]. Received: {self.min_eval_auc}")
        if not 0.0 <= self.min_eval_recall <= 1.0:
            raise ConfigError(f"min_eval_recall must be in [0, 1]. "
                              f"Received: {self.min_eval_recall}")
        if self.artifact_root is not None and not self.artifact_root.strip():
            raise ConfigError("artifact_root must be a path or a URI (gs://bucket/path), or null.")
        if self.beam_prep_min_bytes < 0:
            raise ConfigError(f"beam_prep_min_bytes must be >= 0. "
                              f"Received: {self.beam_prep_min_bytes}")
        if self.loss_from is not None:
            self.fixed_loss()

    def check_storage(self) -> None:
        """Raises ``ConfigError`` unless the run's storage suits its runner and can be written;
        with an ``artifact_root``, normalises it and claims it for ``output_dir``
        (``pipeline.storage.check_storage``, which imports TensorFlow; without one nothing is
        imported). Entry points call it after their overrides, before preparing anything."""
        if self.runner == "dataflow" and not (self.artifact_root or "").startswith("gs://"):
            raise ConfigError(f"runner dataflow: its workers read and write the run's examples "
                              f"and artifacts, so artifact_root must be on Cloud Storage "
                              f"(gs://bucket/path). Received: {self.artifact_root!r}")
        if self.artifact_root is not None:
            from pipeline import storage  # noqa: PLC0415

            storage.check_storage(self)

    def check_task(self, dataset: str, task: str) -> None:
        """Raises ``ConfigError`` when this config cannot train on ``dataset``, whose task is
        ``ctr`` or ``topk``. The CLI checks it on the prepared data, before TFX is imported."""
        from models.search.topk import TOPK_STRATEGIES  # noqa: PLC0415 (NumPy only)

        if task != "topk":
            if self.train.model in TOPK_MODELS:
                raise ConfigError(f"train.model {self.train.model!r} is a top-k model; dataset "
                                  f"{dataset!r} is a CTR dataset (task {task!r}).")
            return
        if self.tuner.enabled:
            raise ConfigError("tuner.enabled: the Tuner tunes CTR models; top-k datasets train MF "
                              "with the topk settings.")
        methods = parse_strategy(self.search_strategy)
        if len(methods) > 1 or not set(methods) <= set(TOPK_STRATEGIES):
            raise ConfigError(f"search_strategy: top-k dataset {dataset!r} supports the search "
                              f"strategies {TOPK_STRATEGIES} (one at a time). "
                              f"Received: {self.search_strategy!r}")

    def fixed_loss(self) -> dict | None:
        """The validated loss spec of ``loss_from`` (None when unset)."""
        if self.loss_from is None:
            return None
        from models.losses.formula import LossFormulaError, load_loss_file  # noqa: PLC0415

        try:
            return load_loss_file(self.loss_from)
        except (OSError, LossFormulaError) as e:
            raise ConfigError(f"loss_from: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineConfig:
        data = dict(data)
        _reject_unknown(cls, data, "")
        for key in ("train", "tuner", "topk"):
            if not isinstance(data.get(key, {}), dict):
                raise ConfigError(f"{key} must be a mapping of settings. Received: {data[key]!r}")
        train = dict(data.pop("train", {}))
        tuner = dict(data.pop("tuner", {}))
        topk = dict(data.pop("topk", {}))
        _reject_unknown(TrainConfig, train, "train.")
        _reject_unknown(TunerConfig, tuner, "tuner.")
        _reject_unknown(TopkConfig, topk, "topk.")
        config = cls(train=TrainConfig(**train), tuner=TunerConfig(**tuner),
                     topk=TopkConfig(**topk), **data)
        config.validate()
        return config

    @classmethod
    def from_json_file(cls, path: str) -> PipelineConfig:
        try:
            with open(path) as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e}).") from e
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read the config file ({e}).") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config file holds one JSON object.")
        return cls.from_dict(data)


def _reject_unknown(cls: type, data: dict[str, Any], prefix: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"Unknown config keys {[prefix + k for k in unknown]}; "
                          f"known: {sorted(prefix + k for k in known)}.")


def _check_types(section: Any, prefix: str) -> None:
    """Raises ``ConfigError`` naming the first field of dataclass ``section`` whose value does not
    have the field's annotated type (JSON's types: an int is a float, a bool is neither)."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value, expected = getattr(section, f.name), hints[f.name]
        if dataclasses.is_dataclass(expected):
            continue  # a nested section, checked on its own
        if not _has_type(value, expected):
            raise ConfigError(f"{prefix}{f.name} must be of type {_type_name(expected)}. "
                              f"Received: {value!r}")


def _has_type(value: Any, expected: Any) -> bool:
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if expected is Any:
        return True
    if origin is types.UnionType:
        return any(_has_type(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(_has_type(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            _has_type(k, args[0]) and _has_type(v, args[1]) for k, v in value.items())
    if expected is type(None):
        return value is None
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _type_name(expected: Any) -> str:
    return str(expected) if typing.get_args(expected) else expected.__name__


def search_option_names(method: str) -> set[str]:
    """The options search method ``method`` reads: the keys of its module's ``DEFAULTS`` (and of
    each ``MODEL_DEFAULTS`` entry), read from the module's source so that validating a config
    does not import TensorFlow. AutoDis's are ``models.architecture.AUTODIS_DEFAULTS``.

    >>> sorted(search_option_names("esapn"))[:2]
    ['candidate_dims', 'episodes']
    """
    if method == "autodis":
        return set(AUTODIS_DEFAULTS)
    with open(importlib.util.find_spec(METHODS[method][0]).origin) as f:
        tree = ast.parse(f.read())
    dicts = {node.target.id: node.value for node in tree.body
             if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
             and isinstance(node.value, ast.Dict)}
    names = {key.value for key in dicts["DEFAULTS"].keys}
    for entry in getattr(dicts.get("MODEL_DEFAULTS"), "values", []):
        names.update(key.value for key in entry.keys)
    return names
