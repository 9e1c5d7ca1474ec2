"""AutoDim's search: a bi-level (first-order DARTS) search of each field's embedding size.

Zhao et al., "Memory-efficient Embedding for Recommendations" (AutoDim), WWW 2021,
arXiv:2006.14827, Sec. 3. The searching layer is ``models.layers.autodim.AutoDimEmbedding``;
this module only drives it:

1. Warm-up: ``warmup_epochs`` of the weights ``W`` (tables, unification maps, the model) with
   ``α`` uniform (the paper's pre-training trick).
2. Search: ``epochs`` more of ``W``-steps on train batches; every ``update_every`` ``W``-steps,
   one ``α``-step on a validation ("eval") batch, first order (``ξ = 0``). The paper's
   ``f = 10`` assumes thousands of steps per epoch (Criteo); on frappe86k (26 steps of 2,000)
   it leaves about ten ``α``-steps in the whole search and the choice is noise, so ``f = 2``.
   The temperature anneals as ``τ_t = max(τ_min, 1 - rate * t)`` with the paper's
   ``rate = 5e-5`` per ``W``-step, so on small data ``τ`` stays near 1: annealing to ``τ_min``
   within a few hundred steps saturates the softmax, the ``α`` gradients of the validation loss
   vanish, and the memory term alone decided (tried on frappe86k).
3. Derive: the hard size per categorical field, ``argmax_n α_m^n``, or, under the memory budget
   ``max_params_fraction`` of the starting architecture's embedding parameters, the choice that
   maximises ``sum_m log p_m^{n_m}`` within the budget (``within_budget``). The retrain stage
   builds fresh ``vocab_m x d_m`` tables, each projected to ``unified_dim`` by its own linear
   map (no batch norm; ``models.layers.projection.FieldProjection``).

The architecture objective adds a memory term to the validation loss::

    L_α = L_val(W, α) + λ * sum_m V_m * E_p[d_m] / (d_N * sum_m V_m),   E_p[d_m] = sum_n p_m^n d_n

(``V_m`` the vocabulary of field ``m``, ``p = softmax(log α)``): the expected share of the
largest tables that the choice keeps; ``λ = memory_weight``, ``λ = 0`` is the paper's search.

The unified size defaults to the starting architecture's size (the baseline's 10), not the
paper's ``d_N = 32``: a candidate is then stored small and the interaction and MLP parts stay
the baseline's. On frappe86k's validation split (seed 2021, fixed sizes user/item 4, others 8)
unifying to 10 gave AUC 0.9496 and to 32 gave 0.9458. Every default here was chosen on
validation AUC and parameter counts only (README, "AutoML methods").

Options (``PipelineConfig.search_options["autodim"]``): the keys of ``DEFAULTS``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable
from typing import Any

import tensorflow as tf
import tf_keras as keras

from models.architecture import Architecture
from models.layers.autodim import AutoDimEmbedding
from models.search import (
    SearchContext,
    SearchError,
    merge_options,
    require_at_least,
    require_bool,
)
from models.zoo import build_ctr_model, model_input_names

NAME = "autodim"
PLOT_FILE = "autodim_dims.png"
DEFAULTS: dict[str, Any] = {
    "candidate_dims": [2, 4, 8, 16, 32],  # the paper's N = 5 (powers of two, as Hetu)
    "unified_dim": None,  # None: the starting architecture's largest size (the baseline's)
    "warmup_epochs": 2,
    "epochs": 6,
    "update_every": 2,  # the paper's f = 10 assumes thousands of steps per epoch
    "alpha_learning_rate": 0.05,
    "memory_weight": 0.1,
    "temperature_floor": 0.01,  # the paper's
    "anneal_rate": 5e-5,  # the paper's, per W-step at its batch of 2000
    "batch_size": 2000,  # the paper's
    "max_params_fraction": 0.5,  # memory budget: share of the starting embedding params
    "projected_l2": True,  # the retrain's L2 on E_f W_f, not on E_f (Architecture.projected_l2)
    "weight_sharing": True,  # candidates share one table's first columns (the paper's choice)
}


def settings(options: dict[str, Any], arch: Architecture) -> dict[str, Any]:
    """``DEFAULTS`` updated with ``options``; raises ``SearchError`` on unknown or bad values."""
    values = merge_options(NAME, DEFAULTS, options)
    values["candidate_dims"] = sorted(int(d) for d in values["candidate_dims"])
    if values["unified_dim"] is None:
        values["unified_dim"] = max(arch.embedding_dims[f] for f in arch.categorical)
    require_at_least(NAME, values, ("unified_dim", "update_every", "batch_size"), 1)
    require_at_least(NAME, values, ("warmup_epochs", "epochs", "memory_weight", "anneal_rate"), 0)
    require_bool(NAME, values, "projected_l2")
    require_bool(NAME, values, "weight_sharing")
    if not 0 < values["temperature_floor"] <= 1:
        raise SearchError(f"autodim: temperature_floor must be in (0, 1]. "
                          f"Received: temperature_floor={values['temperature_floor']}")
    return values


def search(ctx: SearchContext) -> Architecture:
    """Searches each categorical field's size; returns ``ctx.arch`` with the chosen
    ``embedding_dims``, ``unified_dim`` and ``search["autodim"]``."""
    arch = ctx.arch
    if not arch.categorical:
        raise SearchError("autodim searches categorical fields; this dataset has none.")
    if "autodis" in arch.numeric_encoding.values():
        raise SearchError("autodim: AutoDis-encoded numerical fields are not supported in the "
                          "searching model yet; run autodim before autodis.")
    values = settings(ctx.options, arch)
    keras.utils.set_random_seed(ctx.seed)
    layer = AutoDimEmbedding(
        arch.categorical, arch.numerical, arch.vocab_sizes, values["candidate_dims"],
        values["unified_dim"], numeric_encoding=arch.numeric_encoding,
        num_buckets=arch.num_buckets, l2=arch.l2,
        embeddings_initializer=keras.initializers.RandomNormal(stddev=arch.embedding_init_std),
        weight_sharing=values["weight_sharing"], name="autodim_embedding")
    search_arch = dataclasses.replace(
        arch, embedding_dims={f: values["unified_dim"] for f in arch.fields}, unified_dim=None,
        search={})
    model = build_ctr_model(search_arch, field_embedding=layer)
    alpha_history = _bilevel_search(ctx, model, layer, values)

    probabilities = tf.nn.softmax(layer.alpha_logits, axis=-1).numpy()
    argmax = layer.derive()
    chosen = argmax
    if values["max_params_fraction"] is not None:
        budget = int(values["max_params_fraction"] * arch.embedding_params())
        chosen = within_budget(arch, values, probabilities, budget)
    found = dataclasses.replace(_with_dims(arch, chosen, values["unified_dim"]),
                                projected_l2=values["projected_l2"])
    found.search[NAME] = {
        "alpha": {f: [round(float(p), 4) for p in row]
                  for f, row in zip(arch.categorical, probabilities, strict=True)},
        "argmax": argmax,
        "chosen": chosen,
        "params_before": arch.embedding_params(),
        "params_after": found.embedding_params(),
        "alpha_steps": len(alpha_history),
        "settings": values,
    }
    logging.info("autodim: chose %s; embedding params %d -> %d", chosen,
                 found.search[NAME]["params_before"], found.search[NAME]["params_after"])
    if ctx.report_dir:
        plot_dims(found, os.path.join(ctx.report_dir, PLOT_FILE))
    return found


def _with_dims(arch: Architecture, dims: dict[str, int], unified_dim: int) -> Architecture:
    return dataclasses.replace(arch, embedding_dims={**arch.embedding_dims, **dims},
                               unified_dim=int(unified_dim), search=dict(arch.search))


def within_budget(arch: Architecture, values: dict[str, Any], probabilities: Any,
                  budget: int) -> dict[str, int]:
    """The hard choice under a memory budget: per field ``n_m`` maximising
    ``sum_m log p_m^{n_m}`` subject to ``embedding_params <= budget``.

    Solved by Lagrangian relaxation: with multiplier ``μ``, each field independently takes
    ``argmax_n log p_m^n - μ V_m d_n``; ``μ`` is the smallest (bisection) that meets the budget.
    ``μ = 0`` is the plain argmax. The relaxation can stop well short of the budget (its choice
    jumps as ``μ`` crosses a field's threshold), so its choice is then improved greedily: while
    some single field's change of size raises ``sum log p`` and stays within the budget, the
    one that raises it most is made. When even the smallest sizes exceed the budget, those are
    returned.
    """
    dims = values["candidate_dims"]
    log_p = {f: [float(x) for x in row] for f, row in zip(arch.categorical, probabilities,
                                                           strict=True)}
    log_p = {f: [math.log(max(x, 1e-12)) for x in row] for f, row in log_p.items()}

    def choice(mu: float) -> dict[str, int]:
        return {f: dims[max(range(len(dims)),
                            key=lambda n, f=f: log_p[f][n] - mu * arch.vocab_sizes[f] * dims[n])]
                for f in arch.categorical}

    def cost(chosen: dict[str, int]) -> int:
        return _with_dims(arch, chosen, values["unified_dim"]).embedding_params()

    def params(mu: float) -> int:
        return cost(choice(mu))

    if params(0.0) <= budget:
        return choice(0.0)
    low, high = 0.0, 1e-6
    while params(high) > budget and high < 1e6:
        high *= 2
    if params(high) > budget:
        return {f: dims[0] for f in arch.categorical}
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if params(mid) > budget else (low, mid)
    return _fill_budget(dims, log_p, choice(high), cost, budget)


def _fill_budget(dims: list[int], log_p: dict[str, list[float]], chosen: dict[str, int],
                 cost: Callable[[dict[str, int]], int], budget: int) -> dict[str, int]:
    """Greedy single-field moves from a choice within the budget: each step takes the change of
    one field's size that raises ``sum log p`` most and keeps ``cost <= budget``; stops when
    none does (``sum log p`` rises strictly, so it ends)."""
    while True:
        best, best_gain = None, 0.0
        for f, size in chosen.items():
            current = log_p[f][dims.index(size)]
            for n, d in enumerate(dims):
                gain = log_p[f][n] - current
                if gain > best_gain:
                    move = {**chosen, f: d}
                    if cost(move) <= budget:
                        best, best_gain = move, gain
        if best is None:
            return chosen
        chosen = best


def _bilevel_search(ctx: SearchContext, model: keras.Model, layer: AutoDimEmbedding,
                    values: dict[str, Any]) -> list[float]:
    """Runs warm-up and search; returns the architecture loss of every ``α``-step."""
    names = model_input_names(ctx.arch)
    batch = int(values["batch_size"])
    train_ds = ctx.dataset("train", names, True).unbatch().batch(batch)
    eval_ds = ctx.dataset("eval", names, True).unbatch().batch(batch).repeat()
    model(next(iter(train_ds))[0])  # builds every weight before the optimisers see them
    alpha_vars = layer.architecture_variables
    alpha_ids = {id(v) for v in alpha_vars}
    weight_vars = [v for v in model.trainable_variables if id(v) not in alpha_ids]
    weight_opt = keras.optimizers.Adam(ctx.learning_rate)
    alpha_opt = keras.optimizers.Adam(float(values["alpha_learning_rate"]))
    bce = keras.losses.BinaryCrossentropy()
    vocab = tf.constant([ctx.arch.vocab_sizes[f] for f in ctx.arch.categorical], tf.float32)
    full_size = float(tf.reduce_sum(vocab)) * values["candidate_dims"][-1]
    memory_weight = float(values["memory_weight"])

    @tf.function
    def weight_step(x: dict[str, tf.Tensor], y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = bce(y, model(x, training=True)) + tf.add_n([0.0, *model.losses])
        weight_opt.apply_gradients(zip(tape.gradient(loss, weight_vars), weight_vars, strict=True))
        return loss

    @tf.function
    def alpha_step(x: dict[str, tf.Tensor], y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            memory = tf.reduce_sum(vocab * layer.expected_dims()) / full_size
            loss = bce(y, model(x, training=True)) + memory_weight * memory
        alpha_opt.apply_gradients(zip(tape.gradient(loss, alpha_vars), alpha_vars, strict=True))
        return loss

    floor = float(values["temperature_floor"])
    rate = float(values["anneal_rate"])
    eval_batches = iter(eval_ds)
    history: list[float] = []
    for _ in range(int(values["warmup_epochs"])):
        for x, y in train_ds:
            weight_step(x, y)
    step = 0
    for _ in range(int(values["epochs"])):
        for x, y in train_ds:
            layer.temperature.assign(max(floor, 1.0 - rate * step))
            weight_step(x, y)
            step += 1
            if step % int(values["update_every"]) == 0:
                history.append(float(alpha_step(*next(eval_batches))))
    return history


def plot_dims(arch: Architecture, path: str) -> None:
    """Draws the chosen size per categorical field and the embedding memory before/after."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    found = arch.search[NAME]
    fields = list(found["chosen"])
    fig, (dims_ax, memory_ax) = plt.subplots(1, 2, figsize=(max(8, 0.8 * len(fields) + 4), 4),
                                             gridspec_kw={"width_ratios": [3, 1]})
    dims_ax.bar(range(len(fields)), [found["chosen"][f] for f in fields], color="#4C72B0")
    dims_ax.set_xticks(range(len(fields)), [f"{f}\n({arch.vocab_sizes[f]:,})" for f in fields],
                       fontsize=8)
    dims_ax.set_yticks(found["settings"]["candidate_dims"])
    dims_ax.set_ylabel("chosen embedding size")
    dims_ax.set_title("AutoDim: size per field (vocabulary)")
    before, after = found["params_before"], found["params_after"]
    memory_ax.bar([0, 1], [before, after], color=["#999999", "#DD8452"])
    memory_ax.set_xticks([0, 1], ["before", "after"])
    memory_ax.set_title("embedding params")
    for x, value in enumerate((before, after)):
        memory_ax.text(x, value, f"{value:,}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
