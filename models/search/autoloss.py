"""AutoLoss search: train the loss controller bi-level, write it frozen into ``Architecture.loss``.

Zhao et al., "AutoLoss: Automated Loss Function Search in Recommendations", KDD 2021 (arXiv
2106.06713); no official code exists. Losses, controller and Gumbel-softmax are in
``models.losses.autoloss``. The search alternates, on every step:

1. **Controller** ``V`` on a validation batch (DARTS-style, one virtual step): with
   ``W' = W - xi grad_W L_train(W, V)``, ``grad_V L_val(W') ~ -xi grad_V (grad_W L_train . v)``
   with ``v = grad_W L_val(W)`` (``L_val``: logloss, the metric early stopping watches).
   ``L_train = n(w) mean_i sum_k w_ik(V) l_ik(W)``, so ``grad_W L_train . v = n(w) mean_i
   sum_k w_ik d_ik`` with ``d_ik = grad_W l_ik . v``, the directional derivative of each
   example's candidate loss along the validation gradient, and ``n(w)`` the slope normaliser
   (``models.losses.autoloss``). One forward-mode pass (``tf.autodiff.ForwardAccumulator``)
   gives every ``d_ik``; the controller then maximises ``n(w) mean_i sum_k w_ik d_ik`` (``xi``
   is absorbed into its Adam rate): per example it favours the loss whose step helps
   validation most per unit of gradient. Our choices: ``v`` is taken at ``W``, not ``W'``
   (first order in ``v``), and the examples are the train batch of step 2.
2. **Model** ``W`` on that train batch with Adam on ``mean_i sum_k w_ik l_ik`` (``w``
   Gumbel-softmax samples of the current controller, ``stop_gradient``).

Two stabilisers (ours, not the paper's; the one-step objective alone favours the steepest
losses on misclassified examples and collapsed frappe86k seed 2022 onto the squared hinge):

* **Prior** (``prior_weight`` lambda > 0): the controller starts at, and is pulled toward, a
  logloss-heavy prior ``rho`` (``prior_logloss`` on logloss, the rest shared equally). Its
  objective becomes ``-n(w) mean_i sum_k w_ik d_ik / D + lambda mean_i KL(pi_i || rho)`` with
  ``D = stop_gradient(mean_i |d_i,logloss|)``, so the evidence is in units of logloss's own
  alignment and lambda is scale-free. Per example the optimum is the Gibbs posterior
  ``pi_k ~ rho_k exp(a_k / lambda)`` (``a_k`` the normalised alignment): the controller leaves
  logloss only where the evidence is consistently strong. ``prior_weight`` 0 gives the plain
  search (uniform start, unnormalised objective).
* **Snapshot selection** (``select``): after every epoch the search model's eval AUC is
  measured; ``"best_eval_auc"`` keeps the controller of the best epoch, ``"last"`` the last.

The model trained here is thrown away. The controller's weights (plain JSON lists; 132 numbers
for ``[16]``) go into ``Architecture.loss``; the retrain stage trains a fresh model from the
Architecture alone with ``models.losses.autoloss.keras_loss`` (the frozen controller's
probabilities mix the candidates per example; early stopping still watches AUC and logloss).

Settings (``ctx.options``; defaults in ``DEFAULTS``):

* ``epochs`` (5), ``batch_size`` (1024): passes and batch of the search (five passes at 1024 are
  about as many steps as a frappe86k retrain at 4096 takes to converge, so the controller sees
  examples from start to convergence); ``learning_rate`` (None: the retrain's Adam rate).
* ``controller_learning_rate`` (0.01), ``hidden_units`` ([16]), ``temperature`` (tau 1.0),
  ``candidates`` (all four), ``momentum`` (0.9), ``focal_gamma`` (2).
* ``sample`` (false): the retrain's mix: expected (``pi``) or Gumbel-sampled (``w``).
* ``normalize`` (true): the slope normaliser ``n`` in search and retrain. Chosen on the
  validation AUC of seed 2021: movielens1m_ctr 0.7675 with ``n``, 0.7545 without (deepfm
  0.7683); frappe86k 0.9490 with, 0.9526 without (deepfm 0.9496).
* ``prior_logloss`` (0.85), ``prior_weight`` (1.0), ``select`` (``"best_eval_auc"``): the
  stabilisers above (set a priori, not tuned).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from models.architecture import Architecture, ArchitectureError
from models.losses import autoloss as losses
from models.search import SearchContext, SearchError, eval_auc, merge_options, require_at_least
from models.zoo import build_ctr_model, model_input_names

NAME = "autoloss"
DEFAULTS: dict[str, Any] = {"epochs": 5, "batch_size": 1024, "learning_rate": None,
                            "controller_learning_rate": 0.01, "hidden_units": [16],
                            "temperature": 1.0, "candidates": list(losses.CANDIDATES),
                            "momentum": 0.9, "focal_gamma": 2.0, "sample": False,
                            "normalize": True, "prior_logloss": 0.85, "prior_weight": 1.0,
                            "select": "best_eval_auc"}
SELECT = ("best_eval_auc", "last")
SPEC_OPTIONS = ("hidden_units", "temperature", "candidates", "momentum", "focal_gamma", "sample",
                "normalize")
PROBABILITIES_PICTURE = "autoloss_probabilities.png"
MIX_PICTURE = "autoloss_mix.png"
GRID = np.linspace(0.01, 0.99, 50)
LOSS_LEVELS = (0.5, 0.2, 0.05)  # running batch logloss m: early, mid and late in training
TRACE_POINTS = 5


class _MixCounter:
    """Mean weight ``w`` of each candidate over the examples seen, per label."""

    def __init__(self, candidates: list[str]) -> None:
        self.candidates = candidates
        self.sums = np.zeros((2, len(candidates)))
        self.counts = np.zeros(2)

    def add(self, weights: np.ndarray, labels: np.ndarray) -> None:
        labels = labels.astype(int)
        for y in (0, 1):
            self.sums[y] += weights[labels == y].sum(axis=0)
            self.counts[y] += (labels == y).sum()

    def result(self) -> dict[str, dict[str, float]]:
        mean = self.sums / np.maximum(self.counts, 1)[:, None]
        return {f"mix_y{y}": dict(zip(self.candidates, mean[y].tolist(), strict=True))
                for y in (0, 1)}


def settings(ctx: SearchContext) -> dict[str, Any]:
    """``ctx.options`` completed with ``DEFAULTS``; raises ``SearchError`` naming a bad option."""
    values = merge_options(NAME, DEFAULTS, ctx.options)
    require_at_least(NAME, values, ("epochs", "batch_size"), 1)
    if not float(values["controller_learning_rate"]) > 0:
        raise SearchError(f"autoloss: controller_learning_rate must be > 0. Received: "
                          f"controller_learning_rate={values['controller_learning_rate']}")
    if not 0.0 < float(values["prior_logloss"]) < 1.0:
        raise SearchError(f"autoloss: prior_logloss must be in (0, 1). Received: "
                          f"prior_logloss={values['prior_logloss']}")
    if not float(values["prior_weight"]) >= 0:
        raise SearchError(f"autoloss: prior_weight must be >= 0. Received: "
                          f"prior_weight={values['prior_weight']}")
    if values["select"] not in SELECT:
        raise SearchError(f"autoloss: select must be one of {SELECT}. Received: "
                          f"select={values['select']!r}")
    if "logloss" not in values["candidates"]:
        raise SearchError(f"autoloss: candidates must include 'logloss' (the convergence "
                          f"signal). Received: candidates={values['candidates']}")
    try:
        losses.validate_spec(losses.default_spec(**{k: values[k] for k in SPEC_OPTIONS}))
    except ArchitectureError as e:
        raise SearchError(f"autoloss: {e}") from e
    return values


def search(ctx: SearchContext) -> Architecture:
    """Trains a model and the controller bi-level; returns ``ctx.arch`` with the frozen
    controller in ``loss`` and the search's record in ``search["autoloss"]``."""
    options = settings(ctx)
    start = time.perf_counter()
    keras.utils.set_random_seed(ctx.seed)
    model = build_ctr_model(ctx.arch)
    mix = losses.AutoLossMix(losses.default_spec(
        **{**{k: options[k] for k in SPEC_OPTIONS}, "sample": True}))
    controller = mix.controller
    prior = prior_probabilities(mix.candidates, float(options["prior_logloss"]))
    if float(options["prior_weight"]) > 0:  # start at the prior (else uniform, as before)
        controller.output_layer.bias.assign(np.log(prior).astype(np.float32))
    names = model_input_names(ctx.arch)
    batch = int(options["batch_size"])
    train_ds = ctx.dataset("train", names, True).unbatch().batch(batch)
    eval_iter = iter(ctx.dataset("eval", names, True).unbatch().batch(batch).repeat())
    model_step, controller_step = _steps(model, mix, options, ctx.learning_rate, prior)
    history: list[dict[str, Any]] = []
    trace: list[dict[str, Any]] = []  # the mix every 1 / TRACE_POINTS of an epoch
    points_every = max(1, sum(1 for _ in train_ds) // TRACE_POINTS)
    steps, best_auc, best = 0, -np.inf, None
    for epoch in range(int(options["epochs"])):
        epoch_mix, point_mix = _MixCounter(mix.candidates), _MixCounter(mix.candidates)
        for features, label in train_ds:
            eval_features, eval_label = next(eval_iter)
            controller_step(features, label, eval_features, eval_label)
            weights, labels = model_step(features, label)
            epoch_mix.add(weights.numpy(), labels.numpy())
            point_mix.add(weights.numpy(), labels.numpy())
            steps += 1
            if steps % points_every == 0:
                trace.append({"step": steps, **point_mix.result()})
                point_mix = _MixCounter(mix.candidates)
        history.append({"epoch": epoch + 1, "steps": steps, **epoch_mix.result(),
                        "eval_auc": eval_auc(model, ctx.dataset("eval", names, False))})
        logging.info("autoloss epoch %d: %s", epoch + 1, history[-1])
        if options["select"] == "last" or history[-1]["eval_auc"] > best_auc:
            best_auc, best = history[-1]["eval_auc"], (epoch + 1, controller.get_weights())
    selected_epoch, selected_weights = best
    controller.set_weights(selected_weights)
    spec = losses.spec_from_controller(controller, mix.candidates,
                                       **{k: options[k] for k in SPEC_OPTIONS
                                          if k not in ("candidates", "hidden_units")})
    curves = probability_curves(controller, mix.candidates)
    report = {"steps": steps, "history": history, "trace": trace, "curves": curves,
              "search_eval_auc": history[-1]["eval_auc"], "selected_epoch": selected_epoch,
              "selected_eval_auc": history[selected_epoch - 1]["eval_auc"],
              "prior": dict(zip(mix.candidates, prior.tolist(), strict=True)),
              "settings": options,
              "loss": losses.describe(spec), "seconds": time.perf_counter() - start}
    if ctx.report_dir:
        draw_probabilities(curves, mix.candidates,
                           os.path.join(ctx.report_dir, PROBABILITIES_PICTURE))
        draw_mix(trace, mix.candidates, os.path.join(ctx.report_dir, MIX_PICTURE))
    return dataclasses.replace(ctx.arch, loss=spec, search={**ctx.arch.search, NAME: report})


def prior_probabilities(candidates: list[str], logloss: float) -> np.ndarray:
    """The controller's prior: ``logloss`` on logloss, the rest shared equally by the others."""
    others = (1.0 - logloss) / (len(candidates) - 1)
    return np.array([logloss if name == "logloss" else others for name in candidates])


def _steps(model: keras.Model, mix: losses.AutoLossMix, options: dict[str, Any],
           learning_rate: float, prior: np.ndarray):
    """The model's and the controller's step functions (module docstring, steps 1 and 2)."""
    controller = mix.controller
    model_adam = keras.optimizers.Adam(options["learning_rate"] or learning_rate)
    controller_adam = keras.optimizers.Adam(float(options["controller_learning_rate"]))
    temperature = float(options["temperature"])
    logloss_column = mix.candidates.index("logloss")
    bce = keras.losses.BinaryCrossentropy()
    prior_weight = float(options["prior_weight"])
    log_prior = tf.constant(np.log(prior), tf.float32)

    @tf.function
    def model_step(features: dict[str, tf.Tensor], label: tf.Tensor):
        with tf.GradientTape() as tape:
            mixed, weights = mix.mixed(label, model(features, training=True))
            loss = tf.reduce_mean(mixed)
            if model.losses:
                loss += tf.add_n(model.losses)
        grads = tape.gradient(loss, model.trainable_variables)
        model_adam.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return weights, tf.reshape(label, [-1])

    @tf.function
    def controller_step(features, label, eval_features, eval_label) -> tf.Tensor:
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            eval_loss = bce(tf.cast(eval_label, tf.float32), model(eval_features, training=False))
        direction = [tf.convert_to_tensor(g) if g is not None else tf.zeros_like(v)
                     for g, v in zip(tape.gradient(eval_loss, variables), variables, strict=True)]
        with tf.autodiff.ForwardAccumulator(variables, direction) as accumulator:
            prob = model(features, training=False)
            per_example = losses.candidate_losses(label, prob, mix.candidates,
                                                  mix.spec["focal_gamma"])
        alignment = tf.stop_gradient(accumulator.jvp(per_example))  # d_ik, [B, K]
        logloss = per_example[:, logloss_column]
        average = tf.where(mix.average < 0.0, tf.reduce_mean(logloss), mix.average)
        inputs = losses.controller_features(label, prob, logloss, average)
        slopes = losses.candidate_slopes(label, prob, mix.candidates, mix.spec["focal_gamma"])
        with tf.GradientTape() as tape:
            log_probs = controller.log_probabilities(inputs)
            weights = losses.gumbel_softmax(log_probs, temperature)
            scale = losses.slope_normalizer(weights, slopes, slopes[:, logloss_column]) \
                if mix.spec["normalize"] else 1.0
            objective = -scale * tf.reduce_mean(tf.reduce_sum(weights * alignment, axis=1))
            if prior_weight > 0:  # evidence in units of logloss's alignment, + KL to the prior
                objective /= tf.reduce_mean(tf.abs(alignment[:, logloss_column])) + 1e-12
                kl = tf.reduce_sum(tf.exp(log_probs) * (log_probs - log_prior), axis=1)
                objective += prior_weight * tf.reduce_mean(kl)
        grads = tape.gradient(objective, controller.weights)
        controller_adam.apply_gradients(zip(grads, controller.weights, strict=True))
        return objective

    return model_step, controller_step


def probability_curves(controller: losses.LossController,
                       candidates: list[str]) -> dict[str, Any]:
    """The controller's probabilities over ``GRID`` predictions, per label and running batch
    logloss ``m`` in ``LOSS_LEVELS`` (an example's signal ``c`` follows from ``y``, ``p`` and
    ``m``): ``{"p": [...], "y0_m0.2": {loss: [...]}, ...}`` (plain JSON)."""
    curves: dict[str, Any] = {"p": GRID.tolist()}
    for y in (0, 1):
        logloss = losses.candidate_losses(np.full_like(GRID, y), GRID, ["logloss"])[:, 0]
        for m in LOSS_LEVELS:
            features = losses.controller_features(np.full_like(GRID, y), GRID, logloss,
                                                  tf.constant(m))
            probs = controller(features).numpy()
            curves[f"y{y}_m{m}"] = {name: probs[:, k].round(4).tolist()
                                    for k, name in enumerate(candidates)}
    return curves



def _pyplot():
    import matplotlib  # noqa: PLC0415 (plotting loads only when a report is written)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def draw_probabilities(curves: dict[str, Any], candidates: list[str], path: str) -> None:
    """Two panels (y = 0, y = 1): each loss's probability against the prediction ``p``, at
    the running batch logloss levels of ``LOSS_LEVELS`` (dotted early, dashed, solid late)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    styles = dict(zip(LOSS_LEVELS, (":", "--", "-"), strict=True))
    for y, ax in enumerate(axes):
        for k, name in enumerate(candidates):
            for m, style in styles.items():
                ax.plot(curves["p"], curves[f"y{y}_m{m}"][name], style, color=f"C{k}",
                        label=name if m == LOSS_LEVELS[-1] else None)
        ax.set_title(f"label y = {y}", fontsize=9)
        ax.set_xlabel("prediction p")
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("controller probability")
    levels = ", ".join(f"{m:g}" for m in LOSS_LEVELS)
    axes[1].legend(fontsize=7, title=f"running logloss m = {levels}\n(dotted, dashed, solid)",
                   title_fontsize=6)
    fig.suptitle("AutoLoss controller: loss probabilities per example", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw_mix(trace: list[dict[str, Any]], candidates: list[str], path: str) -> None:
    """The mean Gumbel-softmax weight of each loss over the search steps, for y = 0 and 1."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    steps = [t["step"] for t in trace]
    for y, ax in enumerate(axes):
        stacked = np.array([[t[f"mix_y{y}"][n] for n in candidates] for t in trace]).T
        ax.stackplot(steps, stacked, labels=candidates,
                     colors=[f"C{k}" for k in range(len(candidates))])
        ax.set_title(f"label y = {y}", fontsize=9)
        ax.set_xlabel("search step")
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("mean loss weight w")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle("AutoLoss search: loss mix over training", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
