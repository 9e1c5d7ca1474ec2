"""Search algorithms: each turns a starting ``Architecture`` into a searched one.

A method lives in its own module ``models.search.<name>``, registered in ``METHODS``
with the model families it can search, and exposes::

    def search(ctx: SearchContext) -> Architecture
    def report_trained(arch, model, report_dir) -> None    # optional: pictures of the retrained
                                                           # model (e.g. learned bucket weights)

``search`` reads train and validation batches only (``ctx.dataset``; never test), returns a new
``Architecture`` that the retrain stage builds alone, records what it found under
``arch.search[<name>]`` (plain JSON data) and may write pictures into ``ctx.report_dir``.
Layers live in ``models.layers``; the search algorithms here only drive them.

A strategy is one method name or several joined by ``+`` (``"autodis+autofis"``), applied in
order, each starting from the previous one's result; ``"none"`` is the fixed architecture.

Example:

>>> parse_strategy("autodis+autofis")
['autodis', 'autofis']
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from models.architecture import Architecture

if TYPE_CHECKING:
    import tensorflow as tf

# Method name -> (module, model families it searches). Modules are imported on use, so a
# method's dependencies load only when it runs.
METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "autofis": ("models.search.autofis", ("fm", "deepfm")),
    "autodis": ("models.search.autodis", ("fm", "deepfm", "dnn", "dcn")),
    "autodim": ("models.search.autodim", ("fm", "deepfm", "dnn", "dcn")),
    "nis": ("models.search.nis", ("fm", "deepfm", "dnn", "dcn")),
    "esapn": ("models.search.esapn", ("mf", "deepfm")),
    # Per-id L2 into Architecture.id_l2 (top-k MF: models.search.topk; bench mf+lambdaopt).
    "lambdaopt": ("models.search.lambdaopt", ("mf", "fm", "deepfm", "dnn", "dcn")),
    "autoloss": ("models.search.autoloss", ("lr", "fm", "deepfm", "dnn", "dcn")),
    "autolossgen": ("models.search.autolossgen", ("lr", "fm", "deepfm", "dnn", "dcn", "mf")),
    "autoctr": ("models.search.autoctr", ("autoctr",)),  # finds the autoctr family's DAG
    "autogroup": ("models.search.autogroup", ("autogroup",)),  # finds its feature sets
}


class SearchError(ValueError):
    """A strategy that cannot run on this model or data; the message names the method."""


@dataclass
class SearchContext:
    """What a search method may use.

    Attributes:
      arch: the starting architecture (the fixed baseline, or the previous method's result).
      dataset: ``dataset(split, input_names, shuffle)`` -> batches of ``(features, label)`` of
        Transform's features; ``split`` is ``"train"`` or ``"eval"`` (the test split is not
        reachable from here). ``input_names`` are transformed feature names
        (``models.zoo.model_input_names``).
      learning_rate: the model's Adam learning rate.
      batch_size: training batch size.
      max_epochs: the retrain stage's epoch bound (searches usually use fewer).
      patience: the retrain stage's early-stopping patience (in epochs).
      seed: seed of initialisation and sampling.
      options: this method's settings from ``PipelineConfig.search_options[<name>]``.
      vocab_counts: per categorical field, the train frequency of each id (Transform's counts,
        id order), for frequency-aware methods; None when unavailable.
      report_dir: a folder for the method's pictures and extra files; None writes none.
    """

    arch: Architecture
    dataset: Callable[[str, list[str], bool], tf.data.Dataset]
    learning_rate: float
    batch_size: int
    max_epochs: int
    patience: int
    seed: int
    options: dict[str, Any] = field(default_factory=dict)
    vocab_counts: dict[str, Any] | None = None
    report_dir: str | None = None


def merge_options(name: str, defaults: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Method ``name``'s settings: ``options`` over ``defaults``; an option not in ``defaults``
    raises ``SearchError`` naming it.

    >>> merge_options("nis", {"epochs": 1}, {"epochs": 2})
    {'epochs': 2}
    """
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise SearchError(f"{name}: unknown options {unknown}; known: {sorted(defaults)}. "
                          f"Received: options={options}")
    return {**defaults, **options}


def require_at_least(name: str, values: dict[str, Any], keys: tuple[str, ...],
                     minimum: int) -> None:
    """Raises ``SearchError`` naming the first of ``keys`` whose value is below ``minimum``."""
    for key in keys:
        if float(values[key]) < minimum:
            raise SearchError(f"{name}: {key} must be >= {minimum}. "
                              f"Received: {key}={values[key]}")


def require_bool(name: str, values: dict[str, Any], key: str) -> None:
    """Raises ``SearchError`` unless ``values[key]`` is ``True`` or ``False``."""
    if not isinstance(values[key], bool):
        raise SearchError(f"{name}: {key} must be true or false. Received: {key}={values[key]!r}")


def require_both_labels(name: str, labels: Any) -> None:
    """Raises ``SearchError`` unless the eval ``labels`` hold both classes: method ``name``
    scores candidates by their eval AUC, which one class leaves undefined (e.g. a rare positive
    label that no eval example has)."""
    import numpy as np  # noqa: PLC0415

    values = np.asarray(labels).ravel()
    if len(np.unique(values)) < 2:
        held = f"all {values[0]:g}" if values.size else "none"
        raise SearchError(f"{name}: the eval split needs positive and negative examples (the "
                          f"search scores candidates by eval AUC). Received: {values.size} eval "
                          f"labels, {held}")


def eval_auc(model: Any, dataset: tf.data.Dataset) -> float:
    """ROC AUC (1000 thresholds) of ``model``'s inference-mode outputs over ``dataset``'s
    ``(features, label)`` batches: how the searches score a model on the eval split."""
    import tf_keras as keras  # noqa: PLC0415 (TensorFlow loads only when a search runs)

    metric = keras.metrics.AUC(num_thresholds=1000)
    for features, label in dataset:
        metric.update_state(label, model(features, training=False))
    return float(metric.result())


def retrain(ctx: SearchContext, arch: Architecture) -> Any:
    """Trains ``arch`` from scratch exactly as the retrain stage will (``ctx``'s learning rate,
    epochs, patience and seed, early stopping on the eval split); ``components.base``'s
    ``TrainResult``."""
    from components.base import train_model  # noqa: PLC0415 (the retrain stage's loop)
    from models.zoo import model_input_names  # noqa: PLC0415 (TensorFlow loads only here)

    names = model_input_names(arch)
    return train_model(arch, ctx.dataset("train", names, True), ctx.dataset("eval", names, False),
                       learning_rate=ctx.learning_rate, max_epochs=ctx.max_epochs,
                       patience=ctx.patience, seed=ctx.seed)


def retrain_val_auc(ctx: SearchContext, arch: Architecture) -> tuple[float, int]:
    """``retrain``'s (best eval AUC, best epoch). The searches' full-fidelity finalists are
    scored with it."""
    result = retrain(ctx, arch)
    return max(result.history.get("val_auc", [0.0])), result.best_epoch


def retrain_record(ctx: SearchContext, arch: Architecture) -> dict[str, float | int]:
    """``retrain_val_auc`` as a finalist's report entry: ``retrained_val_auc``, ``best_epoch``
    and ``retrain_seconds`` (wall time of the training)."""
    start = time.perf_counter()
    auc, best_epoch = retrain_val_auc(ctx, arch)
    return {"retrained_val_auc": auc, "best_epoch": best_epoch,
            "retrain_seconds": time.perf_counter() - start}


def parse_strategy(strategy: str) -> list[str]:
    """Method names of a strategy string; ``"none"`` (or empty) is no method."""
    if strategy in ("", "none"):
        return []
    names = strategy.split("+")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise SearchError(f"Unknown search method(s) {unknown} in strategy {strategy!r}; "
                          f"known: {sorted(METHODS)}.")
    return names


def with_family_method(model: str, strategy: str) -> str:
    """``strategy`` with ``model``'s own method first when the family is found by a search of
    the same name (``autogroup``, ``autoctr``: their structure does not exist before it).

    >>> with_family_method("deepfm", "autodis")
    'autodis'
    """
    methods = [m for m in strategy.split("+") if m not in ("", "none")]  # validated later
    if model in METHODS and model not in methods:
        methods.insert(0, model)
    return "+".join(methods) or "none"


def method_module(name: str) -> Any:
    if name not in METHODS:
        raise SearchError(f"Unknown search method {name!r}; known: {sorted(METHODS)}.")
    return importlib.import_module(METHODS[name][0])


def check_applies(name: str, model: str) -> None:
    """Raises ``SearchError`` when method ``name`` cannot search model family ``model``."""
    if name not in METHODS:
        raise SearchError(f"Unknown search method {name!r}; known: {sorted(METHODS)}.")
    applies_to = METHODS[name][1]
    if model not in applies_to:
        raise SearchError(f"Search method {name!r} works on models {list(applies_to)}, "
                          f"not {model!r}.")


def run_strategy(strategy: str, make_context: Callable[[Architecture, str], SearchContext],
                 arch: Architecture) -> Architecture:
    """Applies the strategy's methods in order; ``make_context(arch, name)`` builds each one's
    context. The result's ``search["strategy"]`` is the strategy string."""
    for name in parse_strategy(strategy):
        check_applies(name, arch.model)
        arch = method_module(name).search(make_context(arch, name))
        if name not in arch.search:
            raise SearchError(f"Search method {name!r} did not record its result in "
                              f"arch.search[{name!r}].")
    arch.search["strategy"] = strategy or "none"
    return arch


def report_trained(arch: Architecture, model: Any, report_dir: str | None) -> None:
    """Lets each method of ``arch``'s strategy draw what the retrained ``model`` learned."""
    if not report_dir:
        return
    os.makedirs(report_dir, exist_ok=True)
    for name in parse_strategy(arch.search.get("strategy", "none")):
        hook = getattr(method_module(name), "report_trained", None)
        if hook is not None:
            hook(arch, model, report_dir)
