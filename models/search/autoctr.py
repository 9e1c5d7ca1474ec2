"""AutoCTR search: multi-objective aging evolution over DAGs of virtual blocks, guided by a
learning-to-rank surrogate, with cheap low-fidelity trials.

Song et al., "Towards Automated Neural Interaction Discovery for Click-Through Rate
Prediction", KDD 2020 (arXiv 2007.06434); official code ``facebookresearch/AutoCTR``. The space
and the layer are ``models.autoctr_dag`` and ``models.layers.autoctr``; the evolution and the
ranker are ``models.search.autoctr_evolution``. A trial builds the ``autoctr`` model of a DAG,
trains it for ``epochs`` on a ``sample_fraction`` subsample of the train split (drawn once per
search) and scores it by AUC on the eval split; its cost is the number of network parameters
(embedding tables excluded). The ``finalists`` best-AUC distinct DAGs and the initial ones
(by default the baseline DeepFM as a DAG) then each train from scratch on the full train split
to early stopping, exactly as the retrain stage trains (same learning rate, epochs, patience and
seed), and the one with the best validation AUC goes into ``Architecture.autoctr``; the retrain
stage trains it on the full data like any model. A low-fidelity trial (a third of the data, a
few dozen steps) ranks DAGs by how fast they start; the finalists rank the few best, and the
baseline, by where they end, on the validation split only.

Settings (``ctx.options``, defaults in ``DEFAULTS``):

* ``max_trials``, ``max_seconds``: the budget; whichever comes first stops the search (a
  trial that started finishes). 600 s is under 20x a DeepFM train on frappe86k (50-170 s).
* ``population`` (10), ``tournament`` (5): the official thrift defaults.
* ``num_mutants`` (100), ``ranker_min_trials`` (10): children scored by the ranker per trial,
  and the trials it needs before it is used (before: the first unseen mutant).
* ``reward_weight``, ``age_weight``, ``cost_weight``: survival weights (official 0.1, 1, 0.1).
* ``max_blocks`` (7, the official script).
* ``sample_fraction`` (0.3), ``epochs`` (1), ``batch_size`` (512), ``learning_rate`` (0.002):
  the low-fidelity trial.
* ``min_steps`` (30): a trial runs more epochs over its sample when ``epochs`` would take fewer
  steps (criteo10k's 2,400-row sample is 5 steps an epoch; frappe86k's 31 steps are unchanged),
  so that on a small data set a trial's AUC says more than where its initialisation was.
* ``initial_dags`` (``"baseline"``): the first trials. ``"baseline"`` is DeepFM written as a
  DAG (``baseline_dag``: an FM scalar and an MLP of ``hidden_units``, both over every raw
  input), as keras-tuner's first trial uses the default hyper-parameters, so the evolution
  starts from the model the search should beat and mutates it like any member; ``[]``: only
  random DAGs (the official start); or a list of DAGs.
* ``finalists`` (3): how many of the best low-fidelity DAGs are trained at full fidelity
  before the choice, together with the ``initial_dags`` (the baseline: whatever the search
  found must beat it on validation, or the baseline DAG is the answer); 0: the best
  low-fidelity trial, no full training. Their seconds count in the search's.
* ``state_dir``: where the evolution state is saved after every trial and resumed from
  (default: ``<report_dir>/autoctr_state``; none when both are unset). The finalists' scores
  are saved there too (``autoctr_finalists.json``), so a resumed search does not train them
  again.

Pictures (``ctx.report_dir``): ``autoctr_dag.png`` (the winning DAG) and
``autoctr_best_so_far.png`` (every trial's AUC and the best so far).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from models.architecture import Architecture
from models.autoctr_dag import check_dag, describe
from models.search import (
    SearchContext,
    SearchError,
    merge_options,
    require_both_labels,
    retrain_record,
)
from models.search.autoctr_evolution import STATE_FILE, canonical, evolve, save_state
from models.search.autoctr_plots import draw_best_so_far, draw_dag
from models.zoo.ctr import build_ctr_model, model_input_names

NAME = "autoctr"
DEFAULTS: dict[str, Any] = {
    "max_trials": 40, "max_seconds": 600.0, "population": 10, "tournament": 5,
    "num_mutants": 100, "ranker_min_trials": 10, "reward_weight": 0.1, "age_weight": 1.0,
    "cost_weight": 0.1, "max_blocks": 7, "sample_fraction": 0.3, "epochs": 1,
    "batch_size": 512, "learning_rate": 0.002, "min_steps": 30, "finalists": 3,
    "initial_dags": "baseline", "state_dir": None}
# may change when resuming
BUDGET_OPTIONS = ("max_trials", "max_seconds", "state_dir", "finalists")
FINALISTS_FILE = "autoctr_finalists.json"
DAG_PICTURE = "autoctr_dag.png"
CURVE_PICTURE = "autoctr_best_so_far.png"


def settings(ctx: SearchContext) -> dict[str, Any]:
    """``ctx.options`` completed with ``DEFAULTS`` and checked; errors name the option."""
    values = merge_options(NAME, DEFAULTS, ctx.options)
    integers = {**dict.fromkeys(("max_trials", "population", "tournament", "num_mutants",
                                 "max_blocks", "epochs", "batch_size"), 1), "min_steps": 0,
                "finalists": 0}
    for key, minimum in integers.items():
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise SearchError(f"autoctr: {key} must be an integer >= {minimum}. "
                              f"Received: {key}={value!r}")
    for key in ("max_seconds", "learning_rate"):
        if not float(values[key]) > 0:
            raise SearchError(f"autoctr: {key} must be > 0. Received: {key}={values[key]!r}")
    if not 0.0 < float(values["sample_fraction"]) <= 1.0:
        raise SearchError(f"autoctr: sample_fraction must be in (0, 1]. "
                          f"Received: sample_fraction={values['sample_fraction']!r}")
    for key in ("reward_weight", "age_weight", "cost_weight"):
        if float(values[key]) < 0:
            raise SearchError(f"autoctr: {key} must be >= 0. Received: {key}={values[key]!r}")
    if int(values["ranker_min_trials"]) < 2:
        raise SearchError(f"autoctr: ranker_min_trials must be >= 2. "
                          f"Received: ranker_min_trials={values['ranker_min_trials']!r}")
    initial = values["initial_dags"]
    if initial != "baseline" and not isinstance(initial, list):
        raise SearchError(f"autoctr: initial_dags must be 'baseline' or a list of DAGs. "
                          f"Received: initial_dags={initial!r}")
    return values


def baseline_dag(raw: list[str], hidden_units: list[int]) -> dict:
    """DeepFM as an AutoCTR DAG: an FM scalar and an MLP of ``hidden_units`` over ``raw``.

    >>> baseline_dag(["sparse"], [400, 400])["blocks"][1]
    {'type': 'mlp', 'inputs': ['sparse'], 'units': [400, 400]}
    """
    return {"blocks": [{"type": "fm", "inputs": list(raw), "output": "scalar"},
                       {"type": "mlp", "inputs": list(raw), "units": [int(u) for u in
                                                                      hidden_units]}]}


def search(ctx: SearchContext) -> Architecture:
    """Evolves DAGs on low-fidelity trials and writes the best one into the Architecture."""
    options = settings(ctx)
    if ctx.arch.model != NAME:
        raise SearchError(f"autoctr searches the 'autoctr' family. Received: {ctx.arch.model!r}")
    names = model_input_names(ctx.arch)
    train = _arrays(ctx.dataset("train", names, False))
    evaluation = _arrays(ctx.dataset("eval", names, False))
    require_both_labels(NAME, evaluation[1])
    rng = np.random.default_rng(ctx.seed)
    rows = len(train[1])
    keep = np.sort(rng.choice(rows, max(1, int(round(rows * options["sample_fraction"]))),
                              replace=False))
    sample = ({k: v[keep] for k, v in train[0].items()}, train[1][keep])
    raw = ["sparse"] + (["dense"] if any(ctx.arch.numeric_encoding[f] != "bucket"
                                         for f in ctx.arch.numerical) else [])
    trial_seed = iter(range(ctx.seed, ctx.seed + 10**6))
    initial = (([baseline_dag(raw, ctx.arch.hidden_units)] if ctx.arch.hidden_units else [])
               if options["initial_dags"] == "baseline" else options["initial_dags"])
    for n, dag in enumerate(initial):
        try:
            check_dag(dag, has_dense="dense" in raw)
        except ValueError as e:
            raise SearchError(f"autoctr: initial_dags[{n}]: {e}") from e

    def score(dag: dict) -> tuple[float, float]:
        return _score(dataclasses.replace(ctx.arch, autoctr=dag), sample, evaluation, options,
                      next(trial_seed))

    state_dir = options["state_dir"] or (os.path.join(ctx.report_dir, "autoctr_state")
                                         if ctx.report_dir else None)
    fingerprint = {"options": {k: v for k, v in options.items() if k not in BUDGET_OPTIONS},
                   "seed": ctx.seed, "fields": ctx.arch.fields,
                   "embedding_dims": ctx.arch.embedding_dims, "rows": [rows, len(evaluation[1])],
                   "initial": initial}
    start = time.perf_counter()
    state = evolve(score, options, raw, ctx.seed, fingerprint,
                   os.path.join(state_dir, STATE_FILE) if state_dir else None, initial)
    trials = state["trials"]
    if not trials:
        raise SearchError("autoctr: the budget ended before the first trial; raise max_seconds "
                          "or max_trials.")
    finalists = _train_finalists(ctx, trials, int(options["finalists"]), state_dir, fingerprint)
    if finalists:
        best = max(finalists, key=lambda t: (t["retrained_val_auc"], t["reward"]))
    else:
        best = max(trials, key=lambda t: (t["reward"], -t["cost"]))
    logging.info("autoctr: chose trial %d of %d (low-fidelity val AUC %.4f%s):\n%s", best["trial"],
                 len(trials), best["reward"],
                 f", retrained val AUC {best['retrained_val_auc']:.4f}" if finalists else "",
                 describe(best["dag"]))
    report = {"best_trial": best["trial"], "best_eval_auc": best["reward"],
              "best_cost": best["cost"], "trials": len(trials), "stopped_by": state["stopped_by"],
              "resumed_at": state["resumed_at"], "seconds": state["seconds"],
              "chosen_by": "finalists' retrained val AUC" if finalists else "low-fidelity AUC",
              "finalists": [{k: t[k] for k in ("trial", "reward", "retrained_val_auc", "best_epoch",
                                               "retrain_seconds")} for t in finalists],
              "this_run_seconds": time.perf_counter() - start, "state_dir": state_dir,
              "sample_rows": len(keep), "trial_epochs": trial_epochs(len(keep), options),
              "settings": options,
              "ranker": "sklearn GradientBoostingClassifier on pairwise feature differences",
              "history": [{k: t[k] for k in ("trial", "reward", "cost", "seconds", "how",
                                             "best_so_far")} for t in trials]}
    if ctx.report_dir:
        draw_dag(best["dag"], os.path.join(ctx.report_dir, DAG_PICTURE),
                 f"AutoCTR: chosen DAG (trial {best['trial']}, low-fidelity val AUC "
                 f"{best['reward']:.4f}"
                 + (f", retrained {best['retrained_val_auc']:.4f})" if finalists else ")"))
        draw_best_so_far(report["history"], os.path.join(ctx.report_dir, CURVE_PICTURE))
    return dataclasses.replace(ctx.arch, autoctr=best["dag"],
                               search={**ctx.arch.search, NAME: report})


def _train_finalists(ctx: SearchContext, trials: list[dict], count: int, state_dir: str | None,
                     fingerprint: dict) -> list[dict]:
    """The ``count`` best low-fidelity trials and the initial ones (the baseline), each trained
    as the retrain stage will train it, with its best validation AUC (``retrained_val_auc``); []
    when ``count`` is 0 or there is only one to compare. Scores are
    saved to (and reused from) ``state_dir``, keyed by the DAG, the search's fingerprint and
    the training settings."""
    ranked = sorted(trials, key=lambda t: (-t["reward"], t["cost"]))[:count] if count else []
    pool = ranked + [t for t in trials if t["how"] == "initial" and t not in ranked]
    if not ranked or len(pool) < 2:
        return []
    path = os.path.join(state_dir, FINALISTS_FILE) if state_dir else None
    settings_key = {"search": fingerprint, "learning_rate": ctx.learning_rate,
                    "batch_size": ctx.batch_size, "max_epochs": ctx.max_epochs,
                    "patience": ctx.patience}
    saved: dict[str, dict] = {}
    if path and os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        if stored.get("settings") == settings_key:
            saved = stored["scores"]
    finalists = []
    for trial in pool:
        key = canonical(trial["dag"])
        if key not in saved:
            saved[key] = retrain_record(ctx, dataclasses.replace(ctx.arch, autoctr=trial["dag"]))
            if path:
                save_state(path, {"settings": settings_key, "scores": saved})
        finalists.append({**trial, **saved[key]})
        logging.info("autoctr finalist: trial %d (low-fidelity %.4f), retrained val AUC %.4f",
                     trial["trial"], trial["reward"], saved[key]["retrained_val_auc"])
    return finalists


def trial_epochs(rows: int, options: dict[str, Any]) -> int:
    """``epochs``, raised so that a trial takes at least ``min_steps`` steps over ``rows``.

    >>> trial_epochs(2400, {"epochs": 1, "batch_size": 512, "min_steps": 30})  # 5 steps/epoch
    6
    >>> trial_epochs(15585, {"epochs": 1, "batch_size": 512, "min_steps": 30})  # 31 steps
    1
    """
    steps_per_epoch = -(-rows // int(options["batch_size"]))
    return max(int(options["epochs"]), -(-int(options["min_steps"]) // steps_per_epoch))


def _arrays(dataset: tf.data.Dataset) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One pass over ``(features, label)`` batches as numpy arrays."""
    features: dict[str, list[np.ndarray]] = {}
    labels = []
    for batch, label in dataset:
        for name, value in batch.items():
            features.setdefault(name, []).append(value.numpy())
        labels.append(label.numpy())
    if not labels:
        raise SearchError("autoctr: a split has no examples.")
    return {k: np.concatenate(v) for k, v in features.items()}, np.concatenate(labels)


def _score(arch: Architecture, train: tuple[dict[str, np.ndarray], np.ndarray],
           evaluation: tuple[dict[str, np.ndarray], np.ndarray], options: dict[str, Any],
           seed: int) -> tuple[float, float]:
    """Low-fidelity trial: (eval AUC after ``epochs`` on the sample, network parameters)."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = build_ctr_model(arch)
    model.compile(optimizer=keras.optimizers.Adam(float(options["learning_rate"])),
                  loss=keras.losses.BinaryCrossentropy())
    model.fit(train[0], train[1], batch_size=int(options["batch_size"]),
              epochs=trial_epochs(len(train[1]), options), shuffle=True, verbose=0)
    metric = keras.metrics.AUC(num_thresholds=1000)
    metric.update_state(evaluation[1], model.predict(evaluation[0], batch_size=8192, verbose=0))
    return float(metric.result()), float(model.count_params() - arch.embedding_params())
