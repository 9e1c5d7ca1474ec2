"""NIS's search: a REINFORCE controller picks each field's multi-size embedding blocks.

Joglekar et al., "Neural Input Search for Large Scale Recommendation Models" (NIS), KDD 2020,
arXiv:1907.04471, Sec. 3-4. The searching layer is ``models.layers.multisize``'s
``MultiSizeFieldEmbedding(search=True)``; this module only drives it:

1. Embedding blocks: the ids of every field with at least ``min_vocab`` ids (Transform sorts
   them by train frequency, ``ctx.vocab_counts``) are cut into ``vocab_blocks`` blocks of equal
   id counts, and its size ``D`` into ``dim_blocks`` column blocks: the candidate sizes of a
   vocabulary block are ``{0, D/dim_blocks, ..., D}`` (0 drops the block's ids; the most
   frequent block keeps at least one column block).
2. Controller: a categorical policy ``π_θ`` per (field, vocabulary block) over its candidate
   sizes; a configuration ``a`` is one sample of each (single- or multi-size per field).
3. Weight-sharing training: every train step samples ``a ~ π_θ`` and trains the shared
   super-network (each block uses the first ``d_v`` columns of its rows) on a train batch.
   The first ``warmup_epochs`` train the full-size super-network only (every block at
   ``D``), so that the rarer blocks' embeddings exist before their sizes are judged.
4. Controller step after each weight step: ``samples`` configurations are scored on the
   validation ("eval") split with the reward::

       R(a) = AUC_val(a) - λ * C_M(a),   C_M(a) = params(a) / params(all blocks at D)

   over the searched fields (``params`` counts block tables and any learned projections), and
   ``θ`` takes an Adam step on REINFORCE's ``(R(a) - b) ∇_θ log π_θ(a)`` with a
   moving-average baseline ``b <- β b + (1 - β) R(a)``.
5. Derive: the most probable size of every block, within NIS's memory constraint: while the
   embedding parameters exceed ``max_params_fraction`` of the starting architecture's, the
   block reduction that loses the least log-probability per parameter saved is applied.
   Adjacent blocks of equal size merge. The retrain stage builds fresh per-block tables
   (``embedding_blocks``) whose smaller blocks reach ``D`` by ``projection``: ``"learned"``
   (default) trains the paper's ``d_v x D`` projections; ``"pad"`` zero-pads them, the very
   model the super-network scored, and stores no projection. On frappe86k's validation split
   (seeds 2021-2023, README) the learned projections scored higher (mean AUC 0.9490 vs 0.9484).

Options (``PipelineConfig.search_options["nis"]``): ``vocab_blocks``, ``dim_blocks``,
``min_vocab``, ``memory_weight`` (λ), ``max_params_fraction``, ``warmup_epochs``, ``epochs``,
``samples``, ``controller_learning_rate``, ``baseline_decay``, ``batch_size``,
``reward_examples``, ``projection``. The
defaults were picked on frappe86k's validation split (README).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from models.architecture import BLOCK_PROJECTIONS, Architecture, multisize_params
from models.layers.multisize import MultiSizeFieldEmbedding
from models.search import (
    SearchContext,
    SearchError,
    merge_options,
    require_at_least,
    require_bool,
    require_both_labels,
)
from models.zoo import build_ctr_model, model_input_names

NAME = "nis"
PLOT_FILE = "nis_blocks.png"
DEFAULTS: dict[str, Any] = {
    "vocab_blocks": 4,
    "dim_blocks": 5,
    "min_vocab": 50,  # smaller fields hold few parameters; they keep one full-size block
    "memory_weight": 0.002,
    "max_params_fraction": 0.7,  # NIS's memory constraint, of the start's embedding params
    "warmup_epochs": 4,
    "epochs": 3,
    "samples": 4,
    "controller_learning_rate": 0.05,
    "baseline_decay": 0.9,
    "batch_size": 1024,
    "reward_examples": 8192,
    "projection": "learned",  # how a smaller block reaches D in the retrain: or "pad"
    "projected_l2": True,  # the retrain's L2 on E_v P_v, not on E_v (Architecture.projected_l2)
}


def settings(options: dict[str, Any]) -> dict[str, Any]:
    """``DEFAULTS`` updated with ``options``; raises ``SearchError`` on unknown or bad values."""
    values = merge_options(NAME, DEFAULTS, options)
    require_at_least(NAME, values, ("vocab_blocks", "dim_blocks", "min_vocab", "samples",
                                    "batch_size", "reward_examples"), 1)
    require_at_least(NAME, values, ("memory_weight", "warmup_epochs", "epochs",
                                    "controller_learning_rate"), 0)
    if not 0 < values["max_params_fraction"] <= 1:
        raise SearchError(f"nis: max_params_fraction must be in (0, 1]. "
                          f"Received: max_params_fraction={values['max_params_fraction']}")
    require_bool(NAME, values, "projected_l2")
    if values["projection"] not in BLOCK_PROJECTIONS:
        raise SearchError(f"nis: projection must be one of {BLOCK_PROJECTIONS}. "
                          f"Received: projection={values['projection']!r}")
    if not 0 <= values["baseline_decay"] < 1:
        raise SearchError(f"nis: baseline_decay must be in [0, 1). "
                          f"Received: baseline_decay={values['baseline_decay']}")
    return values


class ReinforceController:
    """Independent categorical policies ``π_θ`` with REINFORCE and a moving-average baseline.

    Decision ``k`` chooses among ``allowed[k]`` (indices into ``num_choices`` candidates);
    ``update(actions, reward)`` ascends ``(R - b) ∇_θ log π_θ(a)`` with Adam, where
    ``∇_θk log π_θ(a) = onehot(a_k) - π_θk``, then moves ``b <- β b + (1 - β) R`` (``b``
    starts at the first reward).

    Example:

    >>> controller = ReinforceController([[0, 1], [1, 2]], num_choices=3, seed=0)
    >>> controller.sample().shape, controller.probabilities()[0, 2]
    ((2,), 0.0)
    """

    def __init__(self, allowed: list[list[int]], num_choices: int, learning_rate: float = 0.05,
                 baseline_decay: float = 0.9, seed: int = 0) -> None:
        self.mask = np.zeros((len(allowed), num_choices), bool)
        for k, choices in enumerate(allowed):
            self.mask[k, choices] = True
        if not self.mask.any(axis=1).all():
            raise ValueError(f"Every decision needs an allowed choice. Received: {allowed}")
        self.logits = np.zeros(self.mask.shape)
        self.learning_rate = float(learning_rate)
        self.baseline_decay = float(baseline_decay)
        self.baseline: float | None = None
        self._moments = (np.zeros(self.mask.shape), np.zeros(self.mask.shape))
        self._steps = 0
        self._rng = np.random.default_rng(seed)

    def probabilities(self) -> np.ndarray:
        logits = np.where(self.mask, self.logits, -np.inf)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    def sample(self) -> np.ndarray:
        cumulative = np.cumsum(self.probabilities(), axis=1)
        draws = self._rng.random((len(cumulative), 1))
        return np.minimum((draws > cumulative).sum(axis=1), cumulative.shape[1] - 1)

    def most_probable(self) -> np.ndarray:
        return np.argmax(self.probabilities(), axis=1)

    def update(self, actions: np.ndarray, reward: float) -> float:
        """One REINFORCE step; returns the advantage ``R - b`` it used."""
        if self.baseline is None:
            self.baseline = float(reward)
        advantage = float(reward) - self.baseline
        onehot = np.zeros(self.mask.shape)
        onehot[np.arange(len(actions)), actions] = 1.0
        gradient = advantage * (onehot - self.probabilities())
        self._steps += 1
        first, second = self._moments
        first = 0.9 * first + 0.1 * gradient
        second = 0.999 * second + 0.001 * gradient ** 2
        self._moments = (first, second)
        step = (first / (1 - 0.9 ** self._steps)) / (
            np.sqrt(second / (1 - 0.999 ** self._steps)) + 1e-8)
        self.logits = np.where(self.mask, self.logits + self.learning_rate * step, 0.0)
        self.baseline = self.baseline_decay * self.baseline + (1 - self.baseline_decay) * reward
        return advantage


def vocab_block_sizes(num_ids: int, num_blocks: int) -> list[int]:
    """``num_blocks`` (at most ``num_ids``) nearly equal id counts summing to ``num_ids``."""
    blocks = min(num_blocks, num_ids)
    return [len(part) for part in np.array_split(np.arange(num_ids), blocks)]


def merge_blocks(blocks: list[list[int]]) -> list[list[int]]:
    """Adjacent blocks of equal size become one."""
    merged: list[list[int]] = []
    for n, d in blocks:
        if merged and merged[-1][1] == d:
            merged[-1][0] += n
        else:
            merged.append([n, d])
    return merged


def search(ctx: SearchContext) -> Architecture:
    """Searches the multi-size blocks of the large categorical fields; returns ``ctx.arch`` with
    ``embedding_blocks`` and ``search["nis"]``."""
    arch = ctx.arch
    values = settings(ctx.options)
    fields = [f for f in arch.categorical if arch.vocab_sizes[f] >= int(values["min_vocab"])
              and f not in arch.id_dims]
    if not fields:
        raise SearchError(f"nis: no categorical field has >= {values['min_vocab']} ids "
                          f"(min_vocab). Received: vocab_sizes={arch.vocab_sizes}")
    if ctx.vocab_counts is None:
        logging.warning("nis: no vocabulary counts; assuming Transform's frequency order.")
    keras.utils.set_random_seed(ctx.seed)
    id_blocks = {f: vocab_block_sizes(arch.vocab_sizes[f], int(values["vocab_blocks"]))
                 for f in fields}
    candidates = {f: [round(arch.embedding_dims[f] * k / int(values["dim_blocks"]))
                      for k in range(int(values["dim_blocks"]) + 1)] for f in fields}
    decisions = [(f, v) for f in fields for v in range(len(id_blocks[f]))]
    num_choices = int(values["dim_blocks"]) + 1
    controller = ReinforceController(
        [list(range(1 if v == 0 else 0, num_choices)) for _, v in decisions], num_choices,
        float(values["controller_learning_rate"]), float(values["baseline_decay"]), ctx.seed)
    layer = MultiSizeFieldEmbedding(
        arch.categorical, arch.numerical, arch.vocab_sizes, arch.embedding_dims,
        embedding_blocks={f: [[n, arch.embedding_dims[f]] for n in id_blocks[f]]
                          for f in fields},
        search=True, numeric_encoding=arch.numeric_encoding, num_buckets=arch.num_buckets,
        l2=arch.l2, autodis=arch.autodis, name="nis_embedding",
        embeddings_initializer=keras.initializers.RandomNormal(stddev=arch.embedding_init_std))
    model = build_ctr_model(dataclasses.replace(arch, embedding_blocks={}, search={}),
                            field_embedding=layer)

    def blocks_of(actions: np.ndarray) -> dict[str, list[list[int]]]:
        chosen: dict[str, list[list[int]]] = {f: [] for f in fields}
        for (f, v), a in zip(decisions, actions, strict=True):
            chosen[f].append([id_blocks[f][v], candidates[f][a]])
        return chosen

    full = sum(arch.vocab_sizes[f] * arch.embedding_dims[f] for f in fields)

    def memory_cost(blocks: dict[str, list[list[int]]]) -> float:
        return sum(multisize_params(merge_blocks(b), arch.embedding_dims[f],
                                    values["projection"]) for f, b in blocks.items()) / full

    curve = _search_loop(ctx, model, layer, controller, blocks_of, memory_cost, values)

    fixed = arch.embedding_params() - full

    def total_params(actions: np.ndarray) -> int:
        return fixed + round(memory_cost(blocks_of(actions)) * full)

    budget = float(values["max_params_fraction"]) * arch.embedding_params()
    actions = most_probable_within(controller, total_params, budget)
    chosen = {f: merge_blocks(b) for f, b in blocks_of(actions).items()}
    found = dataclasses.replace(arch, embedding_blocks={**arch.embedding_blocks, **chosen},
                                block_projection=values["projection"],
                                projected_l2=values["projected_l2"], search=dict(arch.search))
    probabilities = controller.probabilities()
    found.search[NAME] = {
        "policy": {f"{f}[{v}]": [round(float(p), 4) for p in probabilities[k]]
                   for k, (f, v) in enumerate(decisions)},
        "candidate_dims": candidates,
        "vocab_blocks": id_blocks,
        "block_frequency": _block_frequency(ctx.vocab_counts, id_blocks),
        "chosen": chosen,
        "reward_curve": curve,
        "params_before": arch.embedding_params(),
        "params_most_probable": total_params(controller.most_probable()),
        "params_after": found.embedding_params(),
        "settings": values,
    }
    logging.info("nis: chose %s; embedding params %d -> %d", chosen,
                 found.search[NAME]["params_before"], found.search[NAME]["params_after"])
    if ctx.report_dir:
        plot_blocks(found, os.path.join(ctx.report_dir, PLOT_FILE))
    return found


def most_probable_within(controller: ReinforceController, params, budget: float) -> np.ndarray:
    """The most probable configuration, then, while ``params(actions)`` exceeds ``budget``, the
    one-step size reduction that loses the least log-probability per parameter saved."""
    actions = controller.most_probable()
    log_p = np.log(np.maximum(controller.probabilities(), 1e-12))
    while params(actions) > budget:
        best = None
        for k, a in enumerate(actions):
            smaller = np.flatnonzero(controller.mask[k, :a])
            if not smaller.size:
                continue
            trial = actions.copy()
            trial[k] = smaller[-1]
            saved = params(actions) - params(trial)
            if saved > 0:
                score = (log_p[k, a] - log_p[k, trial[k]]) / saved
                if best is None or score < best[0]:
                    best = (score, trial)
        if best is None:
            raise SearchError(f"nis: no configuration fits the budget of {budget:.0f} embedding "
                              f"parameters (max_params_fraction).")
        actions = best[1]
    return actions


def _block_frequency(counts: dict[str, Any] | None,
                     id_blocks: dict[str, list[int]]) -> dict[str, list[float]] | None:
    """Per searched field, the share of train occurrences of each vocabulary block."""
    if counts is None:
        return None
    shares = {}
    for f, sizes in id_blocks.items():
        field_counts = np.asarray(counts[f], np.float64)
        ends = np.cumsum(sizes)
        totals = [field_counts[e - n:e].sum() for n, e in zip(sizes, ends, strict=True)]
        shares[f] = [round(float(t / max(field_counts.sum(), 1.0)), 4) for t in totals]
    return shares


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (ties broken by order: scores are continuous)."""
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="stable")] = np.arange(1, len(scores) + 1)
    positives = labels.sum()
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2)
                 / (positives * (len(labels) - positives)))


def _search_loop(ctx: SearchContext, model: keras.Model, layer: MultiSizeFieldEmbedding,
                 controller: ReinforceController, blocks_of, memory_cost,
                 values: dict[str, Any]) -> list[dict[str, float]]:
    """Warm-up, then weight steps each followed by a controller step; returns per epoch the
    mean reward, validation AUC and memory cost of the sampled configurations."""
    names = model_input_names(ctx.arch)
    train_ds = ctx.dataset("train", names, True).unbatch().batch(int(values["batch_size"]))
    reward_ds = ctx.dataset("eval", names, False).unbatch().take(int(values["reward_examples"]))
    x_val, y_val = next(iter(reward_ds.batch(int(values["reward_examples"]))))
    y_val = y_val.numpy().ravel()
    require_both_labels(NAME, y_val)  # the reward's AUC
    model(x_val)  # builds every weight before the optimiser sees them
    optimizer = keras.optimizers.Adam(ctx.learning_rate)
    bce = keras.losses.BinaryCrossentropy()
    memory_weight = float(values["memory_weight"])

    @tf.function
    def weight_step(x: dict[str, tf.Tensor], y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = bce(y, model(x, training=True)) + tf.add_n([0.0, *model.losses])
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    @tf.function
    def predict(x: dict[str, tf.Tensor]) -> tf.Tensor:
        return model(x, training=False)

    def use(actions: np.ndarray) -> dict[str, list[list[int]]]:
        blocks = blocks_of(actions)
        for f, field_blocks in blocks.items():
            layer.multisize[f].set_block_dims([d for _, d in field_blocks])
        return blocks

    full_size = np.full(len(controller.mask), controller.mask.shape[1] - 1)
    curve = []
    epochs = int(values["warmup_epochs"]) + int(values["epochs"])
    for epoch in range(epochs):
        searching = epoch >= int(values["warmup_epochs"])
        scores = []
        for x, y in train_ds:
            use(controller.sample() if searching else full_size)
            weight_step(x, y)
            if not searching:
                continue
            for _ in range(int(values["samples"])):
                actions = controller.sample()
                cost = memory_cost(use(actions))
                auc = _auc(y_val, predict(x_val).numpy().ravel())
                controller.update(actions, auc - memory_weight * cost)
                scores.append((auc - memory_weight * cost, auc, cost))
        if searching:
            reward, auc, cost = np.mean(scores, axis=0)
            curve.append({"epoch": epoch, "reward": float(reward), "val_auc": float(auc),
                          "memory": float(cost)})
            logging.info("nis: epoch %d reward %.4f val AUC %.4f memory %.3f", epoch, reward,
                         auc, cost)
    return curve


def plot_blocks(arch: Architecture, path: str) -> None:
    """Draws the chosen size of every id block per field and the embedding memory before/after."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    found = arch.search[NAME]
    chosen = found["chosen"]
    fig, axes = plt.subplots(1, len(chosen) + 1, figsize=(3.2 * (len(chosen) + 1), 3.6),
                             gridspec_kw={"width_ratios": [3] * len(chosen) + [2]})
    for ax, (f, blocks) in zip(axes, chosen.items(), strict=False):
        start = 0
        for n, d in blocks:
            ax.bar(start, d, width=n, align="edge", color="#4C72B0", edgecolor="white")
            ax.text(start + n / 2, d, f"{d}", ha="center", va="bottom", fontsize=8)
            start += n
        ax.set_xlim(0, arch.vocab_sizes[f])
        ax.set_ylim(0, arch.embedding_dims[f] + 1)
        ax.set_xlabel("id (by train frequency)")
        ax.set_title(f"{f}: size per id block")
    axes[0].set_ylabel("embedding size")
    before, after = found["params_before"], found["params_after"]
    axes[-1].bar([0, 1], [before, after], color=["#999999", "#DD8452"])
    axes[-1].set_xticks([0, 1], ["before", "after"])
    axes[-1].set_title("embedding params")
    for x, value in enumerate((before, after)):
        axes[-1].text(x, value, f"{value:,}", ha="center", va="bottom", fontsize=8)
    fig.suptitle("NIS multi-size embedding")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
