"""AutoLossGen search: an LSTM controller writes loss DAGs, REINFORCE rewards validation AUC.

Li, Ji, Ge, Zhang, "AutoLossGen: Automatic Loss Function Generation for Recommender Systems",
SIGIR 2022 (arXiv 2204.13160); official code ``rutgerswiselab/AutoLossGen`` (``controller.py``,
``runner/BaseRunner.py``, ``utils/loss_valid_check.py``). The losses are
``models.losses.formula`` specs; this module only searches them.

Per search epoch (``search_epochs``), from the current recommender ``M`` with validation AUC
``a0`` and the baseline ``b = a0``, for each of ``samples_per_epoch`` samples:

1. the controller samples a DAG (operators and inputs of ``num_nodes`` nodes) with
   ``log pi(arc)`` and entropy ``H``;
2. filters, no training: a zero gradient ``||dL/dy_hat||_inf < zero_gradient`` at
   ``proxy_points`` random ``(y_hat, y)`` gives reward -1; a gradient within ``zero_gradient`` of
   a loss already trained in this epoch reuses its reward (de-duplication); with
   ``check_before_training``, a loss failing the validity check (``formula.direction_check``)
   gets -1;
3. otherwise a copy of ``M`` trains one epoch with the loss; ``R`` = its validation AUC;
4. ``R < b - skip_lim`` -> ``R = -1``; else ``b <- b - (1 - baseline_decay)(b - R)``;
   ``R += entropy_weight * H``; every ``num_aggregate`` samples Adam steps on
   ``-sum log pi(arc) (R - b) / num_aggregate``.

Then ``M`` trains one epoch with the epoch's best loss when its reward beat ``a0 - rej_lim``.
The ``finalists`` best-rewarded distinct trained candidates (by their proxy gradient) that pass
the validity check then each train the model from scratch to early stopping, as the retrain
stage does (the official phase 3, "effectiveness test", run on validation only); the found loss
is the finalist with the best validation score, and the retrain stage trains the model from
scratch with it
(``Architecture.loss``). ``finalists: 0`` keeps the official choice, the best-rewarded valid
candidate (rewards grow with the warm start, so in practice one of the last epoch's, and a
one-epoch reward ranks losses by how fast they start, not where they end). With
``default_finalist`` (on by default) the model's own default loss (CTR: Keras' logloss; MF:
BPR) trains as one more finalist, and when it scores at least as well on validation the search
returns no loss: the model keeps its default, and the report says ``kept_default``. A production
run never ships a generated loss that did worse on validation than the loss it replaces. The best
finalist is the maximum of several noisy scores, so when it beats the default both retrain again
from ``confirm_seeds - 1`` more seeds (seed + 1, ...) and the means decide (report
``confirmation``; ``confirm_seeds: 1`` compares the single runs, the rule before session 14).

Deviations from the official code (all for a CPU budget of tens of trainings): the search space
(``space``) is not the official ``"free"`` one, where 0 of 300 controller samples passed the
validity check at 10 nodes (every node's clamp makes most DAGs flat or label-blind). ``"split"``
is ``y * f(y_hat) + g(y_hat)`` with two small controller-written DAGs ``f`` and ``g`` of
``num_nodes`` nodes each (``layout``; 14 of 300 valid with 2 nodes per branch). ``"mirror"``
(ours, the default) writes one DAG ``f`` and scores both labels with it,
``y * f(y_hat) + (1 - y) * f(1 - y_hat)`` (``mirror_nodes``; ``1 - a`` is the interpreter's
``complement``, an operator the controller never picks). Logloss is in it (``f = log(1/p)``);
the clamp keeps it out of the other two spaces, which cannot write ``1 - y_hat`` (17 of 200
untrained samples valid at 3 nodes, against 8 for ``"split"``). A fixed number of samples per
epoch, ended early after ``max_trainings_per_epoch`` trainings (official: 100+
samples, every one that passes the filters trains); the validity check runs before training
(``check_before_training``; official: after the search, on the logged formulas); when no
candidate beats ``a0`` the recommender keeps its weights (official: rejection-samples until one
does); the candidates train with the model's own L2 (official: none in candidate training);
the input nodes' anchors are learned vectors (official: LSTM steps with ignored operators); the
second input of a binary node is drawn without replacement with its exact log-probability.

Settings (``ctx.options``, defaults in ``DEFAULTS``): the ones above, plus ``lstm_size``,
``tanh_constant``, ``controller_lr`` (official 64, 1.5, 1e-3), ``check_points`` (1000),
``learning_rate`` and ``batch_size`` of the recommender's search epochs (None: the retrain's).
The space and the budget (``"mirror"``, 5 epochs of 400 samples, at most 12 trainings each, 5
finalists) were chosen on frappe86k's validation split (seed 2021: the best finalist's
validation AUC 0.9524, against 0.9231 with ``"split"``, 3 x 100 samples, 8 trainings and 3
finalists; README).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras
from sklearn.metrics import roc_auc_score

from models.architecture import Architecture
from models.losses import formula
from models.search import (
    SearchContext,
    SearchError,
    merge_options,
    require_at_least,
    require_bool,
    require_both_labels,
    retrain_val_auc,
)
from models.zoo.ctr import build_ctr_model, model_input_names

NAME = "autolossgen"
DEFAULTS: dict[str, Any] = {
    "num_nodes": 3, "search_epochs": 5, "samples_per_epoch": 400, "max_trainings_per_epoch": 12,
    "num_aggregate": 5, "lstm_size": 64, "tanh_constant": 1.5, "controller_lr": 1e-3,
    "entropy_weight": 1e-4, "baseline_decay": 0.99, "skip_lim": 1e-5, "rej_lim": 1e-5,
    "zero_gradient": 1e-4, "proxy_points": 20, "check_points": 1000,
    "check_before_training": True, "space": "mirror", "learning_rate": None, "batch_size": None,
    "finalists": 5, "default_finalist": True, "confirm_seeds": 2,
}
LOSS_FILE = "autolossgen_loss.json"
REWARDS_PICTURE = "autolossgen_rewards.png"
CURVES_PICTURE = "autolossgen_loss_curves.png"
MIN_REWARD = -1.0
OPERATORS = list(formula.OFFICIAL_OPERATORS)  # what the controller writes
SPACES = ("free", "split", "mirror")


def settings(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` completed with ``DEFAULTS``; errors name the bad option."""
    values = merge_options(NAME, DEFAULTS, options)
    require_at_least(NAME, values, ("num_nodes", "search_epochs", "samples_per_epoch",
                                    "max_trainings_per_epoch", "num_aggregate", "lstm_size",
                                    "proxy_points", "check_points"), 1)
    require_at_least(NAME, values, ("finalists",), 0)
    require_at_least(NAME, values, ("confirm_seeds",), 1)
    require_bool(NAME, values, "default_finalist")
    if values["space"] not in SPACES:
        raise SearchError(f"autolossgen: space must be one of {SPACES}. "
                          f"Received: space={values['space']!r}")
    if not 0.0 <= float(values["baseline_decay"]) < 1.0:
        raise SearchError(f"autolossgen: baseline_decay must be in [0, 1). "
                          f"Received: baseline_decay={values['baseline_decay']}")
    return values


class LossController(keras.Model):
    """The ENAS-style controller: an LSTM that writes a loss DAG node by node.

    For node ``k`` the LSTM output ``h`` gives operator logits ``c tanh(W_op h)``; after the
    chosen operator's embedding, its output ``h'`` scores every earlier node ``i`` by
    ``c tanh(v^T tanh(W_1 a_i + W_2 h'))`` (``a_i``: node ``i``'s anchor) and one (unary) or two
    distinct (binary) inputs are drawn. Weights start uniform in [-0.1, 0.1] (official).

    Args:
      num_nodes: chosen nodes per DAG (``"split"``: per branch; see ``layout``).
      lstm_size: LSTM width.
      tanh_constant: ``c``.
      space: ``"free"`` (official), ``"split"`` or ``"mirror"`` (``layout``).
    """

    def __init__(self, num_nodes: int = 10, lstm_size: int = 64, tanh_constant: float = 1.5,
                 space: str = "free", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}. Received: space={space!r}")
        self.num_nodes, self.lstm_size, self.tanh_constant = num_nodes, lstm_size, tanh_constant
        self.space = space
        def init() -> keras.initializers.Initializer:  # one per weight: distinct draws
            return keras.initializers.RandomUniform(-0.1, 0.1)

        self.cell = keras.layers.LSTMCell(lstm_size, kernel_initializer=init(),
                                          recurrent_initializer=init())
        self.start = self.add_weight("start", [1, lstm_size], initializer=init())
        self.input_anchors = self.add_weight("input_anchors", [formula.NUM_INPUTS, lstm_size],
                                             initializer=init())
        self.op_embedding = self.add_weight("op_embedding", [len(OPERATORS), lstm_size],
                                            initializer=init())
        self.op_logits = keras.layers.Dense(len(OPERATORS), use_bias=False,
                                            kernel_initializer=init())
        self.attn_1 = keras.layers.Dense(lstm_size, use_bias=False, kernel_initializer=init())
        self.attn_2 = keras.layers.Dense(lstm_size, use_bias=False, kernel_initializer=init())
        self.attn_v = keras.layers.Dense(1, use_bias=False, kernel_initializer=init())

    def run(self, arc: list[dict] | None = None, rng: np.random.Generator | None = None
            ) -> tuple[list[dict], tf.Tensor, tf.Tensor]:
        """Samples a DAG (``arc`` None, with ``rng``) or scores ``arc``; returns the nodes,
        ``log pi(arc)`` and the summed entropy of its choices."""
        if arc is None and rng is None:
            raise ValueError("LossController.run needs an arc to score or an rng to sample.")
        state = [tf.zeros([1, self.lstm_size]), tf.zeros([1, self.lstm_size])]
        anchors = [self.input_anchors[i:i + 1] for i in range(formula.NUM_INPUTS)]
        keys = [self.attn_1(a) for a in anchors]
        x = self.start
        nodes: list[dict] = []
        log_prob, entropy = tf.constant(0.0), tf.constant(0.0)
        for k, slot in enumerate(layout(self.num_nodes, self.space)):
            out, state = self.cell(x, state)
            if isinstance(slot, dict):  # a fixed node of the split layout: no choice
                nodes.append(slot)
                out, state = self.cell(self.op_embedding[OPERATORS.index(slot["op"])][None],
                                       state)
                x = out
                anchors.append(out)
                keys.append(self.attn_1(out))
                continue
            logits = self.tanh_constant * tf.tanh(self.op_logits(out))[0]
            op = (OPERATORS.index(arc[k]["op"]) if arc is not None
                  else _draw(rng, tf.nn.softmax(logits).numpy()))
            log_probs = tf.nn.log_softmax(logits)
            log_prob += log_probs[op]
            entropy -= tf.reduce_sum(tf.exp(log_probs) * log_probs)
            out, state = self.cell(self.op_embedding[op:op + 1], state)
            scores = self.attn_v(tf.tanh(tf.concat(keys, 0) + self.attn_2(out)))[:, 0]
            allowed = np.full(len(keys), -1e9, np.float32)
            allowed[slot] = 0.0
            in_log_probs = tf.nn.log_softmax(self.tanh_constant * tf.tanh(scores) + allowed)
            entropy -= tf.reduce_sum(tf.exp(in_log_probs) * in_log_probs)
            arity = formula.OPERATORS[OPERATORS[op]]
            if arc is not None:
                inputs = list(arc[k]["inputs"])
            else:
                probs = tf.exp(in_log_probs).numpy()
                inputs = [_draw(rng, probs)]
                if arity == 2:
                    rest = probs.copy()
                    rest[inputs[0]] = 0.0
                    inputs.append(_draw(rng, rest))
            log_prob += in_log_probs[inputs[0]]
            if arity == 2:  # the second draw excludes the first
                log_prob += in_log_probs[inputs[1]] - tf.math.log(
                    1.0 - tf.exp(in_log_probs[inputs[0]]) + 1e-12)
            nodes.append({"op": OPERATORS[op], "inputs": inputs})
            x = tf.add_n([anchors[i] for i in inputs]) / (1.0 + len(inputs))
            anchors.append(out)
            keys.append(self.attn_1(out))
        return nodes, log_prob, entropy


def layout(num_nodes: int, space: str) -> list[list[int] | dict]:
    """Per computed node, the node indices it may take as inputs, or the fixed node itself.

    ``"free"`` (official): every node picks among all earlier nodes; the loss is the last one.
    ``"split"``: ``num_nodes`` nodes write ``f(y_hat, 1)``, then ``y * f``, then ``num_nodes``
    nodes write ``g(y_hat, 1)``, then the loss ``y * f + g`` (two fixed nodes), so the loss
    depends on the label by construction (``2 num_nodes + 2`` nodes in all).
    ``"mirror"``: ``num_nodes`` nodes write ``f(p, 1)``; ``spec_of`` makes the loss
    ``y * f(y_hat) + (1 - y) * f(1 - y_hat)`` (``mirror_nodes``): both labels are scored alike,
    as by logloss (``f = log(1/p)``).
    """
    if space == "free":
        return [list(range(formula.NUM_INPUTS + k)) for k in range(num_nodes)]
    first = formula.NUM_INPUTS
    f_nodes = [[0, 2, *range(first, first + k)] for k in range(num_nodes)]
    if space == "mirror":  # the controller writes f only; ``spec_of`` mirrors it
        return f_nodes
    gated = first + num_nodes  # y * f
    g_first = gated + 1
    g_nodes = [[0, 2, *range(g_first, g_first + k)] for k in range(num_nodes)]
    return [*f_nodes, {"op": "multiply", "inputs": [1, gated - 1]}, *g_nodes,
            {"op": "add", "inputs": [gated, g_first + num_nodes - 1]}]


def _draw(rng: np.random.Generator, probs: np.ndarray) -> int:
    probs = np.asarray(probs, np.float64)
    return int(rng.choice(len(probs), p=probs / probs.sum()))


def spec_of(nodes: list[dict], space: str = "free") -> dict:
    """The loss spec of a controller sample (``"mirror"``: through ``mirror_nodes``)."""
    if space == "mirror":
        nodes = mirror_nodes(nodes)
    return formula.validate({"kind": formula.KIND, "nodes": nodes})


def mirror_nodes(f_nodes: list[dict]) -> list[dict]:
    """``y * f(y_hat) + (1 - y) * f(1 - y_hat)`` as one DAG, for ``f`` written over
    ``(y_hat, 1)`` as nodes ``3 ...`` (its last node is ``f``; it must not read ``y``).

    >>> formula.describe(spec_of([{"op": "reciprocal", "inputs": [0]},
    ...                           {"op": "log", "inputs": [3]}], "mirror"))
    'y * log(1/ŷ) + (1 - y) * log(1/(1 - ŷ))'
    """
    first, n = formula.NUM_INPUTS, len(f_nodes)
    if any(1 in node["inputs"] for node in f_nodes):
        raise ValueError(f"mirror: f reads only y_hat (0), 1 (2) and its own nodes. "
                         f"Received: {f_nodes}")
    complement_pred, complement_label = first + n, first + n + 1
    shift = {0: complement_pred, 2: 2, **{first + k: first + n + 2 + k for k in range(n)}}
    mirrored = [{"op": node["op"], "inputs": [shift[i] for i in node["inputs"]]}
                for node in f_nodes]
    f_out, mirror_out = first + n - 1, first + 2 * n + 1
    return [*f_nodes, {"op": "complement", "inputs": [0]}, {"op": "complement", "inputs": [1]},
            *mirrored, {"op": "multiply", "inputs": [1, f_out]},
            {"op": "multiply", "inputs": [complement_label, mirror_out]},
            {"op": "add", "inputs": [first + 2 * n + 2, first + 2 * n + 3]}]


class Reinforce:
    """REINFORCE with the official reward filtering: moving-average baseline ``b`` (reset to the
    epoch's starting AUC), rewards below ``b - skip_lim`` set to -1, an entropy bonus, and one
    Adam step (beta_1 0, eps 1e-3, gradient norm clipped at 5) every ``num_aggregate`` samples."""

    def __init__(self, controller: LossController, options: dict[str, Any]) -> None:
        self.controller, self.options = controller, options
        self.optimizer = keras.optimizers.Adam(float(options["controller_lr"]), beta_1=0.0,
                                               beta_2=0.999, epsilon=1e-3)
        self.baseline = 0.0
        self.pending: list[tuple[list[dict], float]] = []

    def reward(self, auc: float, entropy: float) -> tuple[float, bool]:
        """The filtered reward of a sample whose validation AUC (or -1) is ``auc``, and whether
        it was kept (not below the baseline); a kept reward moves the baseline."""
        o = self.options
        bonus = float(o["entropy_weight"]) * entropy
        if auc < self.baseline - float(o["skip_lim"]):
            return MIN_REWARD + bonus, False
        value = auc + bonus
        self.baseline -= (1.0 - float(o["baseline_decay"])) * (self.baseline - value)
        return value, True

    def add(self, nodes: list[dict], reward: float) -> bool:
        """Queues ``(arc, reward - b)``; steps the controller when ``num_aggregate`` are queued.
        Returns whether it stepped."""
        self.pending.append((nodes, reward - self.baseline))
        if len(self.pending) < int(self.options["num_aggregate"]):
            return False
        self.step()
        return True

    def step(self) -> None:
        if not self.pending:
            return
        variables = self.controller.trainable_variables
        with tf.GradientTape() as tape:
            loss = tf.add_n([-self.controller.run(arc)[1] * advantage
                             for arc, advantage in self.pending]) / len(self.pending)
        grads, _ = tf.clip_by_global_norm(tape.gradient(loss, variables), 5.0)
        self.optimizer.apply_gradients(zip(grads, variables, strict=True))
        self.pending = []


class ProxyFilter:
    """The official cheap pre-check: ``dL/dy_hat`` at fixed random points; zero gradients are
    rejected and gradients within ``tol`` (inf-norm) of a trained loss's reuse its reward."""

    def __init__(self, points: int, tol: float, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.y_pred = rng.uniform(0.1, 0.9, points).astype(np.float32)
        self.y_true = rng.uniform(0.0, 1.0, points).astype(np.float32)
        self.tol = tol
        self.seen: list[tuple[np.ndarray, float]] = []

    def gradient(self, spec: dict) -> np.ndarray:
        return formula.loss_gradient(spec, self.y_pred, self.y_true)

    def zero(self, grad: np.ndarray) -> bool:
        return not np.all(np.isfinite(grad)) or float(np.max(np.abs(grad))) < self.tol

    def cached(self, grad: np.ndarray) -> float | None:
        for seen, reward in self.seen:
            if float(np.max(np.abs(grad - seen))) < self.tol:
                return reward
        return None

    def remember(self, grad: np.ndarray, reward: float) -> None:
        self.seen.append((grad, reward))


@dataclasses.dataclass
class Learner:
    """The recommender ``M`` a search trains: its weights, one epoch with a loss, the reward.

    Attributes:
      get_weights: a snapshot of ``M``'s weights.
      set_weights: restores a snapshot.
      train_epoch: trains ``M`` one epoch (fresh optimizer) with a loss spec.
      validate: ``M``'s validation score (higher is better; AUC for CTR, Recall@k for top-k).
      retrain: ``retrain(spec, seed_offset)``, a fresh model trained with a loss spec (None: the
        model's default loss) to early stopping, as the retrain stage does, from the seed plus
        ``seed_offset``; returns its best validation score (the finalists' selection).
    """

    get_weights: Callable[[], Any]
    set_weights: Callable[[Any], None]
    train_epoch: Callable[[dict], None]
    validate: Callable[[], float]
    retrain: Callable[[dict | None, int], float]


def search(ctx: SearchContext) -> Architecture:
    """Searches a loss for ``ctx.arch``'s model; the result trains with it from scratch."""
    options = settings(ctx.options)
    keras.utils.set_random_seed(ctx.seed)
    arch = dataclasses.replace(ctx.arch, loss=None)
    model = build_ctr_model(arch)
    names = model_input_names(arch)
    train_ds = ctx.dataset("train", names, True)
    if options["batch_size"]:
        train_ds = train_ds.unbatch().batch(int(options["batch_size"]))
    eval_ds = ctx.dataset("eval", names, False)
    eval_labels = np.concatenate([y.numpy().ravel() for _, y in eval_ds])
    require_both_labels(NAME, eval_labels)
    learning_rate = float(options["learning_rate"] or ctx.learning_rate)

    def validation_auc() -> float:
        scores = model.predict(eval_ds, verbose=0).ravel()
        return float(roc_auc_score(eval_labels, scores)) if np.all(np.isfinite(scores)) else 0.0

    def train_epoch(spec: dict) -> None:
        model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                      loss=formula.keras_loss(spec))
        model.fit(train_ds, epochs=1, verbose=0)

    def retrain(spec: dict | None, seed_offset: int) -> float:
        return retrain_val_auc(dataclasses.replace(ctx, seed=ctx.seed + seed_offset),
                               dataclasses.replace(arch, loss=spec))[0]

    learner = Learner(model.get_weights, model.set_weights, train_epoch, validation_auc, retrain)
    spec, report = run_search(learner, options, ctx.seed, ctx.report_dir,
                              f"AutoLossGen loss for {ctx.arch.model}")
    return dataclasses.replace(ctx.arch, loss=spec, search={**ctx.arch.search, NAME: report})


def search_topk(data: Any, *, dim: int = 64, learning_rate: float = 1e-3,
                batch_size: int = 2048, l2: float = 1e-4, init_std: float = 0.1, seed: int = 0,
                options: dict[str, Any] | None = None, k: int = 20, max_epochs: int = 400,
                patience: int = 10, eval_every: int = 1, min_epochs: int = 0,
                report_dir: str | None = None) -> tuple[dict | None, dict[str, Any]]:
    """AutoLossGen for top-k MF (bench ``mf+autolossgen``) on ``components.topk.TopkData``.

    ``M`` is plain MF trained with each candidate as a pointwise loss on the train split's observed
    items (label 1) and one uniform sampled item each (label 0) (``models.zoo.mf.pointwise_loss``);
    the reward is the eval split's full-ranking Recall@k (the top-k path's validation metric, train
    items excluded). The finalists train with ``train_bpr`` (``max_epochs``, ``patience``,
    ``eval_every``, ``min_epochs``: the retrain's). Returns the found loss (None: none passed the
    validity check; MF keeps BPR) and the report.
    """
    from components.topk import (  # noqa: PLC0415
        epoch_runner,
        evaluate_topk,
        train_bpr,
        warn_if_past_map_limit,
    )
    from models.zoo.mf import MatrixFactorization  # noqa: PLC0415

    options = settings(options or {})
    warn_if_past_map_limit(
        int(options["search_epochs"]) * int(options["max_trainings_per_epoch"])
        + int(options["finalists"]) * int(options["confirm_seeds"]) + 1, "AutoLossGen for mf")
    keras.utils.set_random_seed(seed)
    model = MatrixFactorization(data.num_users, data.num_items, dim, l2=l2, init_std=init_std,
                                seed=seed)
    model.build()
    rng = np.random.default_rng(seed)
    learning_rate = float(options["learning_rate"] or learning_rate)
    batch_size = int(options["batch_size"] or batch_size)

    def train_epoch(spec: dict) -> None:
        epoch_runner(data, model, keras.optimizers.Adam(learning_rate), batch_size, rng,
                     loss=spec)(1)

    def validation_recall() -> float:
        tables = [t.numpy() for t in model.embedding_tables()]
        if not all(np.all(np.isfinite(t)) for t in tables):
            return 0.0
        return evaluate_topk(*tables, data.train_items_by_user, data.eval_items_by_user,
                             k)[f"recall@{k}"]

    def retrain(spec: dict | None, seed_offset: int) -> float:
        result = train_bpr(data, dim=dim, learning_rate=learning_rate, batch_size=batch_size,
                           l2=l2, init_std=init_std, max_epochs=max_epochs, patience=patience,
                           seed=seed + seed_offset, eval_every=eval_every, k=k, loss=spec,
                           min_epochs=min_epochs)
        return result.best_eval.get(f"recall@{k}", 0.0)

    learner = Learner(model.get_weights, model.set_weights, train_epoch, validation_recall,
                      retrain)
    return run_search(learner, options, seed, report_dir, "AutoLossGen loss for mf",
                      metric=f"eval Recall@{k}", default_name="BPR")


def run_search(learner: Learner, options: dict[str, Any], seed: int, report_dir: str | None,
               title: str, metric: str = "validation AUC",
               default_name: str = "logloss") -> tuple[dict | None, dict[str, Any]]:
    """The search loop of the module docstring over ``learner`` (``options``: :func:`settings`'
    result). Returns the found loss spec (None when no trained candidate passed the validity
    check, or when the model's default loss, ``default_name``, retrained as a finalist scored at
    least as well) and the report; writes the pictures and the loss file into ``report_dir``."""
    start_time = time.perf_counter()
    rng = np.random.default_rng(seed)
    controller = LossController(int(options["num_nodes"]), int(options["lstm_size"]),
                                float(options["tanh_constant"]), options["space"])
    reinforce = Reinforce(controller, options)

    def train_and_score(spec: dict) -> float:
        learner.train_epoch(spec)
        return learner.validate()

    candidates: dict[str, dict[str, Any]] = {}
    samples: list[dict[str, Any]] = []
    epochs: list[dict[str, Any]] = []
    for epoch in range(int(options["search_epochs"])):
        start_auc = learner.validate()
        snapshot = learner.get_weights()
        reinforce.baseline = start_auc
        # Rewards are relative to this epoch's model: the de-duplication cache starts afresh.
        proxy = ProxyFilter(int(options["proxy_points"]), float(options["zero_gradient"]), seed)
        best: tuple[float, dict | None] = (MIN_REWARD, None)
        trainings = 0
        for _ in range(int(options["samples_per_epoch"])):
            nodes, _, entropy = controller.run(rng=rng)
            spec = formula.pruned(spec_of(nodes, options["space"]))
            key = formula.canonical_key(spec)
            grad = proxy.gradient(spec)
            auc, status = MIN_REWARD, "trained"
            if proxy.zero(grad):
                status = "zero_gradient"
            elif (cached := proxy.cached(grad)) is not None:
                auc, status = cached, "duplicate"
            elif options["check_before_training"] and not _valid(spec, options):
                status = "invalid"
            else:
                learner.set_weights(snapshot)
                auc = train_and_score(spec)
                trainings += 1
                proxy.remember(grad, auc)
                if key not in candidates or auc > candidates[key]["reward"]:
                    candidates[key] = {"spec": spec, "formula": formula.describe(spec),
                                       "reward": auc, "epoch": epoch + 1, "gradient": grad}
            reward, kept = reinforce.reward(auc, float(entropy))
            if kept and auc > best[0]:
                best = (auc, spec)
            reinforce.add(nodes, reward)
            samples.append({"epoch": epoch + 1, "status": status, "auc": auc, "reward": reward,
                            "baseline": reinforce.baseline})
            if trainings >= int(options["max_trainings_per_epoch"]):
                break
        reinforce.step()
        learner.set_weights(snapshot)
        record = {"epoch": epoch + 1, "start_auc": start_auc, "best_reward": best[0],
                  "trainings": trainings, "updated": False}
        if best[1] is not None and best[0] > start_auc - float(options["rej_lim"]):
            record.update(updated=True, formula=formula.describe(best[1]),
                          auc_after=train_and_score(best[1]))
        epochs.append(record)
        logging.info("autolossgen epoch %d: %s", epoch + 1, record)
    checked = [c for c in sorted(candidates.values(), key=lambda c: -c["reward"])
               if _valid(c["spec"], options)]
    found = checked[0] if checked else None
    count = int(options["finalists"])
    finalists = _distinct(checked, count, float(options["zero_gradient"])) if count else []
    against_default = bool(options["default_finalist"]) and bool(finalists)
    if len(finalists) < 2 and not against_default:  # nothing to choose between
        finalists = []
    for candidate in finalists:
        candidate["retrain_score"] = learner.retrain(candidate["spec"], 0)
        logging.info("autolossgen finalist %s: retrained %s %.4f", candidate["formula"], metric,
                     candidate["retrain_score"])
    if finalists:
        found = max(finalists, key=lambda c: c["retrain_score"])
    default_score = learner.retrain(None, 0) if against_default else None
    confirmation = None
    if default_score is not None:
        logging.info("autolossgen finalist %s (the default): retrained %s %.4f",
                     default_name, metric, default_score)
        found_scores, default_scores = [found["retrain_score"]], [default_score]
        if found_scores[0] > default_score:  # the best of several noisy scores: confirm it
            for offset in range(1, int(options["confirm_seeds"])):
                found_scores.append(learner.retrain(found["spec"], offset))
                default_scores.append(learner.retrain(None, offset))
            confirmation = {"found": found_scores, "default": default_scores}
            logging.info("autolossgen: %s over %d seeds: found %s, default %s", metric,
                         len(found_scores), found_scores, default_scores)
        if np.mean(default_scores) >= np.mean(found_scores):  # a tie keeps the default
            logging.info("autolossgen: no found loss beats the default %s on %s; the model "
                         "keeps it.", default_name, metric)
            found = None
    report = {"formula": found and found["formula"], "loss": found and found["spec"],
              "reward": found and found["reward"], "reward_metric": metric,
              "default_loss": default_name, "default_retrain_score": default_score,
              "confirmation": confirmation,
              "kept_default": found is None and default_score is not None,
              "finalists": [{k: c[k] for k in ("formula", "reward", "retrain_score")}
                            for c in finalists],
              "valid_candidates": len(checked),
              "trained_candidates": len(candidates), "samples": samples, "epochs": epochs,
              "candidates": [{k: c[k] for k in ("formula", "reward", "epoch")}
                             for c in sorted(candidates.values(), key=lambda c: -c["reward"])],
              "settings": options, "seconds": time.perf_counter() - start_time}
    if found is None and default_score is None:
        logging.warning("autolossgen: no trained candidate passed the validity check; the model "
                        "keeps its default loss.")
    if report_dir:
        os.makedirs(report_dir, exist_ok=True)
        draw_rewards(samples, epochs, os.path.join(report_dir, REWARDS_PICTURE), metric)
        if found is not None:
            formula.write_loss_file(found["spec"], os.path.join(report_dir, LOSS_FILE))
            formula.draw_curves(found["spec"], os.path.join(report_dir, CURVES_PICTURE),
                                f"{title} (search reward {found['reward']:.4f})")
    return (found and found["spec"]), report


def _distinct(candidates: list[dict[str, Any]], count: int, tol: float) -> list[dict[str, Any]]:
    """The first ``count`` of ``candidates`` that are distinct functions: a candidate whose proxy
    gradient is within ``tol`` of an earlier pick's (``y * 1/ŷ`` and ``y * 1 * 1/ŷ``, found in
    different epochs) is skipped."""
    picked: list[dict[str, Any]] = []
    for candidate in candidates:
        if len(picked) == count:
            break
        if all(float(np.max(np.abs(candidate["gradient"] - p["gradient"]))) >= tol
               for p in picked):
            picked.append(candidate)
    return picked


def _valid(spec: dict, options: dict[str, Any]) -> bool:
    return formula.direction_check(spec, int(options["check_points"]))["valid"]


def draw_rewards(samples: list[dict[str, Any]], epochs: list[dict[str, Any]], path: str,
                 metric: str = "validation AUC") -> None:
    """The validation score (``metric``) of every trained candidate, the filtered reward and the
    moving baseline per sample, and each search epoch's starting score."""
    import matplotlib  # noqa: PLC0415 (plotting loads only when a report is written)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(8, 3.8))
    steps = np.arange(1, len(samples) + 1)
    trained = [(i, s["auc"]) for i, s in zip(steps, samples, strict=True)
               if s["status"] == "trained"]
    if trained:
        ax.scatter(*zip(*trained, strict=True), s=14, color="tab:blue",
                   label="candidate reward (trained)")
    ax.plot(steps, [s["baseline"] for s in samples], color="tab:orange", label="baseline b")
    starts = np.cumsum([0] + [sum(s["epoch"] == e["epoch"] for s in samples) for e in epochs])
    for e, (lo, hi) in zip(epochs, zip(starts[:-1], starts[1:], strict=True), strict=True):
        ax.hlines(e["start_auc"], lo + 0.5, hi + 0.5, colors="tab:gray", linestyles="--")
    ax.plot([], [], color="tab:gray", linestyle="--", label="epoch start")
    values = [a for _, a in trained] + [s["baseline"] for s in samples]
    if values:
        ax.set_ylim(min(values) - 0.01, max(values) + 0.01)
    filtered = sum(s["status"] != "trained" for s in samples)
    ax.set_xlabel(f"controller sample ({filtered} of {len(samples)} filtered without training: "
                  f"reward -1 or cached)")
    ax.set_ylabel(metric)
    ax.set_title("AutoLossGen search: rewards", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
