"""λOpt: per-user and per-item L2 strengths learned on validation data while MF-BPR trains.

Chen, Chen, He, Gao, Li, Lou, Wang, "λOpt: Learn to Regularize Recommender Models in Finer
Levels", KDD 2019 (arXiv 1905.11596); official code ``yihong-chen/lambda-opt`` at commit
``e6182df`` (``engine.py``, ``regularizer/modules/lambda_network_mf.py``). The strengths are
``models.layers.lambdaopt.IdL2Regularizer`` tables; this module drives them.

The problem is bi-level, ``min_Λ L_val(argmin_Θ L_train(Θ) + Ω(Θ; Λ))``, solved greedily by
alternating, every step ``t`` on a train batch ``b_t`` and a validation batch ``v_t``:

1. **Λ step.** Simulate the model's next Adam update as a differentiable function of ``Λ``::

       g'(Λ)      = g_t + ∂Ω/∂Θ (Θ_t; Λ)           (g_t: the BPR gradient on b_t at Θ_t)
       m'         = β1 m_t + (1 - β1) g'            v' = β2 v_t + (1 - β2) g'²
       Θ_{t+1}(Λ) = Θ_t - η √(1 - β2^t) / (1 - β1^t) · m' / (√v' + ε)

   and take one Adam step (AMSGrad, global gradient-norm clip 100, as the official code) on
   ``∇_Λ L_val(Θ_{t+1}(Λ); v_t)``, then clamp ``Λ >= 0``.
2. **Model step.** The real Adam update of ``Θ`` on ``b_t`` with BPR + ``Ω(Λ)`` and the new ``Λ``.

Two variants of the Λ step (``options["variant"]``):

- ``truncated`` (the official method): ``Θ_t``, ``m_t``, ``v_t`` and ``g_t`` are constants; ``Λ``
  acts on the validation loss only through the current step's penalty gradient. Written out by
  hand on the validation batch's rows only.
- ``full``: the simulation starts one step earlier, at ``Θ_{t-1}`` with its moments, so ``Θ_t``,
  ``m_t``, ``v_t`` are functions of ``Λ`` too and ``g_t = ∇L_train(Θ_t(Λ))`` is recomputed under
  an inner ``GradientTape`` inside the outer one: the hypergradient includes the second-order
  term ``∂²L_train/∂Θ² · ∂Θ_t/∂Λ`` (Hessian-vector products through the nested tapes), over whole
  tables. At ``Λ`` unchanged since step ``t-1`` the simulated ``Θ_t`` equals the real one.

Deviations from the official code, and why:

- The look-ahead uses the gradient of the penalty that the model step actually applies
  (``c_r Λ_r ⊙ θ_r / |B|`` on the batch's rows, ``models.layers.lambdaopt``), where the official
  one adds ``2 Λ ⊙ Θ`` to every row of the table while its real penalty covers only the batch:
  here ``Λ`` means the same in both halves, and ``Λ = l2`` (constant) is plain MF's L2.
- Adam is Keras' (``ε`` outside the square root, the real optimizer's formula); the official
  look-ahead puts ``ε`` inside to avoid the infinite derivative of ``√v`` at 0, handled here by
  ``√max(v', 1e-30)`` (rows with ``v' = 0`` do not depend on ``Λ``).
- The MF update is dense (every row's moments decay each step, as PyTorch's Adam on a dense
  embedding gradient); no dropout on the simulated embeddings (official ``dp_prob``); no MF
  gradient clipping (``train_bpr`` has none). The validation batch is a fresh sample of eval
  interactions with negatives outside the user's train and eval items.
- The validation split is the pipeline's eval split, which also early-stops training (the
  official code has no model selection; the paper's slides note the validation advantage).

The final model is the jointly trained one (the paper has no retrain): its weights at the best
eval epoch, with ``Λ`` as it was then. The per-id ``Λ`` goes to the report (summary, a picture
against id frequency, and ``lambdas.npz``). In the pipeline, the top-k ``lambdaopt`` strategy
writes the settings into ``Architecture.lambdaopt`` and the Trainer runs this joint training:
``Λ`` depends on the training trajectory, and MF retrained from scratch with the final ``Λ``
fixed (:func:`fixed_lambdas`, bench ``mf+lambdaopt[fixed]``) fell below plain MF on ml1m_topk.

CTR models (fm, deepfm, dnn, dcn) run the truncated variant through :func:`search`
(``models.search.lambdaopt_ctr``): ``Λ`` per categorical field goes into ``Architecture.id_l2``
and the retrain stage applies it.

Options (``PipelineConfig.search_options["lambdaopt"]``): see ``DEFAULTS``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from models.architecture import TOPK_MODELS, Architecture
from models.layers.lambdaopt import IdL2Regularizer
from models.search import (
    SearchContext,
    SearchError,
    merge_options,
    require_at_least,
    require_bool,
)
from models.search.lambdaopt_lookahead import (
    adam_update,
    batch_scales,
    bpr_gradients,
    full_val_loss,
    truncated_val_loss,
)

NAME = "lambdaopt"
VARIANTS = ("truncated", "full")
PLOT_FILE = "lambdaopt_lambdas.png"
LAMBDA_FILE = "lambdas.npz"
# MF's defaults; CTR models replace a few (``models.search.lambdaopt_ctr.CTR_DEFAULTS``).
DEFAULTS: dict[str, Any] = {
    "variant": "truncated",
    "per_dimension": False,       # True: the official ml1m "dimension+user+item" (DUI)
    "lambda_learning_rate": 1e-3,  # official ml1m
    "lambda_init": 0.0,            # official
    "lambda_clipnorm": 100.0,      # official
    "lambda_epsilon": 1e-7,        # the λ AMSGrad's ε (Keras' default)
    "val_batch_size": None,        # None: the train batch size
    "jit_compile": True,
    # Bench only (``mf+l2grid``): the fixed-λ MF baselines (official ``fixed_lambda_candidate``
    # has {10, 1, 0.1, 0.01, 1e-3, 1e-4, 1e-5, 0}; these are around this MF's default 1e-4).
    "l2_grid": [0.0, 1e-5, 1e-4, 1e-3],
    # CTR only (``search``): the epoch budget of the joint training; it also stops after the
    # retrain's ``patience`` epochs without a better eval AUC (MF: ``train_lambdaopt``'s own).
    "search_epochs": 30,
    # CTR only: learn Λ on one half of the eval split, then retrain the model with the learned
    # Λ and with the starting architecture's fixed L2 (both early-stopped on that half) and
    # keep Λ only if it scores higher on the other half (``search_ctr``).
    "held_out_check": True,
}
CTR_ONLY = ("search_epochs", "held_out_check")


def settings(options: dict[str, Any] | None) -> dict[str, Any]:
    """``DEFAULTS`` updated with ``options``; raises ``SearchError`` naming a bad option."""
    options = dict(options or {})
    values = merge_options(NAME, DEFAULTS, options)
    if values["variant"] not in VARIANTS:
        raise SearchError(f"lambdaopt: variant must be one of {VARIANTS}. "
                          f"Received: variant={values['variant']!r}")
    for key in ("lambda_learning_rate", "lambda_clipnorm", "lambda_epsilon"):
        if not float(values[key]) > 0:
            raise SearchError(f"lambdaopt: {key} must be > 0. Received: {key}={values[key]}")
    if not float(values["lambda_init"]) >= 0:
        raise SearchError(f"lambdaopt: lambda_init must be >= 0. "
                          f"Received: lambda_init={values['lambda_init']}")
    require_at_least(NAME, values, ("search_epochs",), 1)
    require_bool(NAME, values, "held_out_check")
    if values["val_batch_size"] is not None and int(values["val_batch_size"]) < 1:
        raise SearchError(f"lambdaopt: val_batch_size must be >= 1 or None. "
                          f"Received: val_batch_size={values['val_batch_size']}")
    grid = values["l2_grid"]
    if not isinstance(grid, list | tuple) or not grid or any(
            not float(v) >= 0 for v in grid):
        raise SearchError(f"lambdaopt: l2_grid must be a non-empty list of values >= 0. "
                          f"Received: l2_grid={grid!r}")
    values["l2_grid"] = [float(v) for v in grid]
    return values


# ---------------------------------------------------------------------------------------------
# The alternating trainer.

class LambdaOptTrainer:
    """MF-BPR trained by hand-written Adam with per-id penalties ``Λ`` learned by λOpt.

    Args:
      model: a built ``MatrixFactorization`` without ``id_dims`` (its ``l2`` is not used).
      learning_rate: the model's Adam learning rate.
      values: :func:`settings`.
    """

    def __init__(self, model: Any, learning_rate: float, values: dict[str, Any]) -> None:
        self.model, self.lr, self.values = model, float(learning_rate), values
        self.tables = (model.user_embedding.embeddings, model.item_embedding.embeddings)
        dim = int(self.tables[0].shape[1])
        self.regularizers = tuple(
            IdL2Regularizer(int(t.shape[0]), dim, per_dimension=values["per_dimension"],
                            initial_value=values["lambda_init"], name=f"{key}_lambda")
            for key, t in zip(("user", "item"), self.tables, strict=True))
        for reg in self.regularizers:
            reg.build()
        self.lambdas = tuple(reg.lambdas for reg in self.regularizers)

        def copy(t: tf.Variable, name: str) -> tf.Variable:
            return tf.Variable(tf.zeros_like(t), trainable=False, name=name)

        self.moments = tuple((copy(t, "m"), copy(t, "v")) for t in self.tables)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.full = values["variant"] == "full"
        if self.full:  # step t-1's state
            self.prev = {"tables": tuple(copy(t, "prev") for t in self.tables),
                         "moments": tuple((copy(t, "m"), copy(t, "v")) for t in self.tables),
                         "grads": tuple(copy(t, "g") for t in self.tables),
                         "scales": tuple(tf.Variable(tf.zeros([int(t.shape[0]), 1]),
                                                     trainable=False) for t in self.tables),
                         "step": tf.Variable(0, dtype=tf.int64, trainable=False)}
        self.optimizer = keras.optimizers.Adam(values["lambda_learning_rate"], amsgrad=True,
                                               global_clipnorm=values["lambda_clipnorm"],
                                               epsilon=values["lambda_epsilon"])
        ids = tf.TensorSpec([None], tf.int64)
        jit = bool(values["jit_compile"])
        self.train_step = tf.function(self._train_step, input_signature=[ids] * 6,
                                      jit_compile=jit)
        self.model_step = tf.function(self._model_step, input_signature=[ids] * 3,
                                      jit_compile=jit)
        if self.full:
            self.full_step = tf.function(self._full_train_step, input_signature=[ids] * 6,
                                         jit_compile=jit)

    def _gradients(self, u: tf.Tensor, i: tf.Tensor, j: tf.Tensor) -> tuple[Any, ...]:
        loss, g_users, g_items = bpr_gradients(*(tf.convert_to_tensor(t) for t in self.tables),
                                               u, i, j)
        return loss, (g_users, g_items), batch_scales(u, i, j, *(int(t.shape[0])
                                                                 for t in self.tables))

    def _apply(self, grads: tuple[tf.Tensor, tf.Tensor], scales: tuple[tf.Tensor, tf.Tensor],
               ) -> tf.Tensor:
        """The real update with the current ``Λ``; returns the penalty ``Ω``."""
        step = self.step + 1
        penalty = tf.constant(0.0)
        for index, (table, (m, v), g, scale, lam) in enumerate(zip(
                self.tables, self.moments, grads, scales, self.lambdas, strict=True)):
            if self.full:
                self.prev["tables"][index].assign(table)
                self.prev["moments"][index][0].assign(m)
                self.prev["moments"][index][1].assign(v)
                self.prev["grads"][index].assign(g)
                self.prev["scales"][index].assign(scale)
            penalty += 0.5 * tf.reduce_sum(scale * lam * tf.square(table))
            new, m_new, v_new = adam_update(table, m, v, g + scale * lam * table, step, self.lr)
            table.assign(new)
            m.assign(m_new)
            v.assign(v_new)
        if self.full:
            self.prev["step"].assign(step)
        self.step.assign(step)
        return penalty

    def _model_step(self, u: tf.Tensor, i: tf.Tensor, j: tf.Tensor) -> tf.Tensor:
        """Only the model step (``Λ`` fixed); returns BPR + ``Ω``."""
        loss, grads, scales = self._gradients(u, i, j)
        return loss + self._apply(grads, scales)

    def _lambda_update(self, grads: list[tf.Tensor]) -> None:
        self.optimizer.apply_gradients(zip(grads, self.lambdas, strict=True))
        for lam in self.lambdas:
            lam.assign(tf.maximum(lam, 0.0))

    def _train_step(self, u: tf.Tensor, i: tf.Tensor, j: tf.Tensor, vu: tf.Tensor,
                    vi: tf.Tensor, vj: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Truncated Λ step, then the model step; returns (train BPR + Ω, look-ahead val loss)."""
        loss, grads, scales = self._gradients(u, i, j)
        state = {"tables": tuple(tf.convert_to_tensor(t) for t in self.tables),
                 "moments": tuple((tf.convert_to_tensor(m), tf.convert_to_tensor(v))
                                  for m, v in self.moments),
                 "grads": grads, "scales": scales, "step": self.step + 1}
        with tf.GradientTape() as tape:
            val_loss = truncated_val_loss(self.lambdas, state, (vu, vi, vj), self.lr)
        self._lambda_update(tape.gradient(val_loss, list(self.lambdas)))
        return loss + self._apply(grads, scales), val_loss

    def _full_train_step(self, u: tf.Tensor, i: tf.Tensor, j: tf.Tensor, vu: tf.Tensor,
                         vi: tf.Tensor, vj: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Full Λ step (two simulated updates, nested tapes), then the model step."""
        prev = {"tables": tuple(tf.convert_to_tensor(t) for t in self.prev["tables"]),
                "moments": tuple((tf.convert_to_tensor(m), tf.convert_to_tensor(v))
                                 for m, v in self.prev["moments"]),
                "grads": tuple(tf.convert_to_tensor(g) for g in self.prev["grads"]),
                "scales": tuple(tf.convert_to_tensor(s) for s in self.prev["scales"]),
                "step": self.prev["step"]}
        with tf.GradientTape() as tape:
            val_loss = full_val_loss(self.lambdas, prev, (u, i, j), (vu, vi, vj), self.lr)
        self._lambda_update(tape.gradient(val_loss, list(self.lambdas)))
        loss, grads, scales = self._gradients(u, i, j)
        return loss + self._apply(grads, scales), val_loss

    def step_fn(self) -> Any:
        """The step to call now: ``full`` needs a previous step (the first one is truncated)."""
        return self.full_step if self.full and int(self.step.numpy()) > 0 else self.train_step


@dataclass
class LambdaOptResult:
    """What :func:`train_lambdaopt` returns: ``result`` is a ``components.topk.TopkResult``
    (the jointly trained model at its best eval epoch); ``lambdas`` the ``Λ`` of that epoch
    (``{"user": [U, w], "item": [I, w]}``); ``report`` what ``arch.search["lambdaopt"]`` holds."""

    result: Any
    lambdas: dict[str, np.ndarray]
    report: dict[str, Any]


def _val_triples(data: Any, count: int, rng: np.random.Generator) -> np.ndarray:
    """``[count, 3]`` eval (user, item, negative) triples; negatives avoid train and eval items."""
    from components.topk import sample_negatives  # noqa: PLC0415

    users, items = data.eval_items_by_user.pairs()
    pick = rng.integers(0, len(users), size=count)
    seen = data.train_items_by_user.union(data.eval_items_by_user)
    negatives = sample_negatives(seen, users[pick], data.num_items, rng)
    return np.stack([users[pick], items[pick], negatives], axis=1)


def train_lambdaopt(data: Any, *, dim: int = 64, learning_rate: float = 1e-3,
                    batch_size: int = 2048, init_std: float = 0.1, seed: int = 0,
                    options: dict[str, Any] | None = None, max_epochs: int = 400,
                    patience: int = 10, eval_every: int = 1, max_seconds: float | None = None,
                    k: int = 20, report_dir: str | None = None,
                    min_epochs: int = 0) -> LambdaOptResult:
    """λOpt on MF-BPR over ``components.topk.TopkData``: alternating Λ and model steps, early
    stopping on eval Recall@k like ``train_bpr`` (train and eval splits only; never test)."""
    from components.topk import fit_with_early_stopping, sample_negatives  # noqa: PLC0415
    from models.zoo.mf import MatrixFactorization  # noqa: PLC0415

    values = settings(options)
    if data.eval_items_by_user.counts.sum() == 0:
        raise ValueError("λOpt needs eval interactions; the eval split has none left.")
    for name, value in (("batch_size", batch_size), ("max_epochs", max_epochs),
                        ("patience", patience), ("eval_every", eval_every)):
        if value < 1:
            raise ValueError(f"{name} must be positive. Received: {name}={value}")
    keras.utils.set_random_seed(seed)
    model = MatrixFactorization(data.num_users, data.num_items, dim, l2=0.0, init_std=init_std,
                                seed=seed)
    model.build()
    trainer = LambdaOptTrainer(model, learning_rate, values)
    val_batch = int(values["val_batch_size"] or batch_size)
    rng = np.random.default_rng(seed)
    num_pairs = len(data.train_pairs)
    steps = -(-num_pairs // batch_size)

    def run_epoch(epoch: int) -> dict[str, float]:
        order = rng.permutation(num_pairs)
        users, positives = data.train_pairs[order, 0], data.train_pairs[order, 1]
        negatives = sample_negatives(data.train_items_by_user, users, data.num_items, rng)
        val = _val_triples(data, steps * val_batch, rng)
        loss_sum = val_sum = 0.0
        for n, s in enumerate(range(0, num_pairs, batch_size)):
            b, vb = slice(s, s + batch_size), slice(n * val_batch, (n + 1) * val_batch)
            loss, val_loss = trainer.step_fn()(users[b], positives[b], negatives[b],
                                               val[vb, 0], val[vb, 1], val[vb, 2])
            loss_sum += float(loss)
            val_sum += float(val_loss)
        record = {"epoch": epoch, "loss": loss_sum / steps, "lookahead_val_loss": val_sum / steps}
        for key, lam in zip(("user", "item"), trainer.lambdas, strict=True):
            record[f"{key}_lambda_mean"] = float(tf.reduce_mean(lam))
        return record

    result, best_lambdas = fit_with_early_stopping(
        data, model, run_epoch, max_epochs=max_epochs, patience=patience,
        eval_every=eval_every, max_seconds=max_seconds, k=k, log_name="lambdaopt",
        snapshot=lambda: [lam.numpy() for lam in trainer.lambdas], min_epochs=min_epochs)
    lambdas = dict(zip(("user", "item"), best_lambdas, strict=True))
    frequency = {"user": data.train_items_by_user.counts.astype(float),
                 "item": np.bincount(data.train_pairs[:, 1], minlength=data.num_items)}
    recorded = {k: v for k, v in values.items() if k not in ("l2_grid", *CTR_ONLY)}
    report = lambda_report(recorded, lambdas, frequency, result.best_epoch)
    if report_dir:
        os.makedirs(report_dir, exist_ok=True)
        np.savez_compressed(os.path.join(report_dir, LAMBDA_FILE), **lambdas)
        plot_lambdas(lambdas, frequency, values["variant"], os.path.join(report_dir, PLOT_FILE))
    return LambdaOptResult(result=result, lambdas=lambdas, report=report)


def joint_training_settings(options: dict[str, Any] | None) -> dict[str, Any]:
    """The validated settings :func:`train_lambdaopt` runs with (``DEFAULTS`` updated with
    ``options``, without the bench's and CTR's own keys): what the top-k ``lambdaopt``
    strategy writes into ``Architecture.lambdaopt`` for the retrain's joint training."""
    return {k: v for k, v in settings(options).items() if k not in ("l2_grid", *CTR_ONLY)}


def fixed_lambdas(data: Any, *, options: dict[str, Any] | None, report_dir: str | None = None,
                  **fit: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(Λ, report)`` of :func:`train_lambdaopt` (``fit``: its other arguments), ``Λ`` one
    strength per ``data`` row (``"user"``/``"item"``, the best eval epoch's), for a retrain with
    ``Λ`` fixed (``train_bpr(id_l2=...)``; the bench's ``mf+lambdaopt[fixed]``). The
    per-dimension variant is refused: ``id_l2`` holds one strength per id."""
    if settings(options)["per_dimension"]:
        raise SearchError("lambdaopt: a fixed per-id Λ holds one strength per id. "
                          "Received: per_dimension=True")
    found = train_lambdaopt(data, options=options, report_dir=report_dir, **fit)
    return {key: lam[:, 0] for key, lam in found.lambdas.items()}, found.report


def lambda_report(recorded: dict[str, Any], lambdas: dict[str, np.ndarray],
                  frequency: dict[str, np.ndarray], best_epoch: int) -> dict[str, Any]:
    """The settings ``recorded`` and a per-table summary of ``Λ`` (``[num_ids, width]`` per
    table): quantiles, and the mean ``λ`` per frequency quartile (least frequent first) with the
    Spearman correlation of ``λ`` and frequency."""
    from scipy.stats import spearmanr  # noqa: PLC0415

    summary = {}
    for key, lam in lambdas.items():
        per_id = lam.mean(axis=1)
        quartile = np.searchsorted(np.quantile(frequency[key], [0.25, 0.5, 0.75]),
                                   frequency[key], side="right")
        varies = per_id.std() > 0 and np.std(frequency[key]) > 0
        rho = spearmanr(per_id, frequency[key]).statistic if varies else None
        summary[key] = {
            "quantiles": dict(zip(("min", "p25", "median", "p75", "max"),
                                  np.quantile(per_id, [0, .25, .5, .75, 1]).tolist(), strict=True)),
            "mean": float(per_id.mean()), "zero_fraction": float((lam == 0).mean()),
            "mean_by_frequency_quartile": [float(per_id[quartile == q].mean())
                                           if np.any(quartile == q) else None for q in range(4)],
            "spearman_with_frequency": None if rho is None else float(rho)}
    return {"settings": recorded, "best_epoch": best_epoch, "lambda": summary}


def plot_lambdas(lambdas: dict[str, np.ndarray], frequency: dict[str, np.ndarray], variant: str,
                 path: str) -> None:
    """Per table (a panel each, four per row), each id's ``λ`` (mean over dims) against its train
    frequency, with the median per log-frequency bin."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    cols = min(len(lambdas), 4)
    rows = -(-len(lambdas) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[len(lambdas):]:
        ax.axis("off")
    for ax, (key, lam) in zip(axes.flat, lambdas.items(), strict=False):
        per_id, freq = lam.mean(axis=1), np.maximum(frequency[key], 1)
        ax.scatter(freq, per_id, s=2, alpha=0.3)
        edges = np.unique(np.geomspace(1, freq.max() + 1, 16).astype(int))
        bins = np.digitize(freq, edges)
        centers = [np.sqrt(edges[b - 1] * edges[min(b, len(edges) - 1)])
                   for b in np.unique(bins)]
        ax.plot(centers, [np.median(per_id[bins == b]) for b in np.unique(bins)], "r-",
                label="median per bin")
        ax.set_xscale("log")
        ax.set_xlabel(f"{key} train frequency")
        ax.set_ylabel("learned λ (mean over dims)")
        ax.set_title(f"λOpt [{variant}]: {key}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def search(ctx: SearchContext) -> Architecture:
    """CTR models: per-id ``Λ`` for every categorical table, into ``Architecture.id_l2``
    (``models.search.lambdaopt_ctr.search_ctr``). Top-k MF trains through
    :func:`train_lambdaopt` (the pipeline's retrain with ``Architecture.lambdaopt``; bench
    ``mf+lambdaopt``)."""
    if ctx.arch.model in TOPK_MODELS:
        raise SearchError(f"lambdaopt on top-k MF is a joint training (models.search.topk), not "
                          f"the CTR search. Received: model {ctx.arch.model!r}")
    from models.search.lambdaopt_ctr import search_ctr  # noqa: PLC0415 (imports this module)

    return search_ctr(ctx)
