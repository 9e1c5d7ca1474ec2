"""AutoGroup search: learn feature sets per interaction order, then keep the hard sets.

Liu et al., "AutoGroup: Automatic Feature Grouping for Modelling Explicit High-Order Feature
Interactions in CTR Prediction", SIGIR 2020; Huawei Vega's ``AutoGroupModel`` and
``AutoGroupTrainerCallback``. For every order ``p = 1 .. max_order`` the searching model has
``num_groups[p]`` sets over every field, each field in or out of each set by a straight-through
Gumbel-softmax over structure logits (``models.layers.autogroup.FeatureGroupInteraction``).
Like Vega, every train batch is used twice: first a weight step (embeddings, set weights, LR
term, MLP; Adam, no Gumbel noise), then a structure step on the same batch (the structure
logits only; Adam, with Gumbel noise). The temperature falls geometrically from
``initial_temperature`` to ``final_temperature`` over the search (Vega keeps 0.01). The hard
sets (``in`` logit > ``out`` logit) become ``Architecture.feature_groups``, without the empty
sets and, for ``p >= 2``, the one-field sets (whose interaction is 0); the retrain stage builds
them as fixed sets with fresh weights.

Settings (``ctx.options``, defaults in ``DEFAULTS``), scaled down from Vega's Avazu setting
(24 fields, ``embed_dims`` [40, 60, 100], ``bucket_nums`` [15, 130, 180], 1 epoch of 40M rows)
to our data sets of 10-40 fields and 10k-50k rows on two CPUs:

* ``max_order``: highest interaction order ``P`` (Vega 3).
* ``num_groups``: sets per order, a list of ``P`` ints; ``None`` is ``[ceil(F/2), F, F]`` for
  ``F`` fields (Vega's ratio to the field count is about [0.6, 5, 7.5]).
* ``embedding_dims``: per-order embedding sizes, a list of ``P`` ints; ``None`` uses the
  architecture's embedding dim for every order (Vega grows them with the order).
* ``epochs``, ``batch_size``: passes over the train split and the search's batch (2, 512).
* ``learning_rate``: the weight step's Adam rate (``None``: the retrain stage's).
* ``structure_learning_rate``: the structure step's Adam rate (0.05; Vega's 1e2 moves a
  logit by about 1e2 per step, so its Gumbel noise stops mattering after one step; not tried).
* ``initial_temperature``, ``final_temperature``: the Gumbel-softmax ``tau`` schedule (1, 0.01).
* ``embedding_init_std``: the searching model's embedding initialisation (0.01).
* ``group_logit`` (True): the model's set interactions of orders >= 2 also reach the logit
  through a linear layer (``Architecture.group_logit``), beside the MLP, as DeepFM adds its FM
  term; searching model, finalists and retrain alike. Not in Vega. Chosen on frappe86k's
  validation AUC (README, AutoGroup).
* ``baseline_finalist`` (True): the found sets and the baseline sets (``baseline_groups``: each
  field its own order-1 set, one order-2 set of every field, i.e. DeepFM's inputs to the MLP
  and a weighted FM) each train from scratch as the retrain stage trains them; the found sets
  are kept only when their validation AUC is higher, as AutoCTR's baseline DAG and
  AutoLossGen's default loss are finalists. The report says which (``chosen``) and both scores
  (``finalists``); their seconds count in ``search_seconds``. A production search never
  returns sets that did worse on validation than the plain sets they replace.
* ``linear_finalist`` (True): one more finalist, the baseline sets without the MLP
  (``hidden_units`` ``[]``: the set terms go to the logit through one linear layer, so it is
  LR plus a field-weighted FM). It is chosen when its validation AUC is the highest (a tie
  with the baseline sets keeps their MLP); then the architecture has no MLP. Small data sets,
  where the MLP overfits (criteo10k's 8,000 rows), get the simpler model when validation says
  so.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from models.architecture import Architecture
from models.layers.autogroup import FeatureGroupInteraction
from models.search import (
    SearchContext,
    SearchError,
    eval_auc,
    merge_options,
    require_at_least,
    require_bool,
    retrain_record,
)
from models.zoo.autogroup import GroupSearch, autogroup_parts, order_layer_name
from models.zoo.ctr import LOGIT_LAYER, PROBABILITY_LAYER, model_input_dtypes

NAME = "autogroup"
DEFAULTS: dict[str, Any] = {"max_order": 3, "num_groups": None, "embedding_dims": None,
                            "epochs": 2, "batch_size": 512, "learning_rate": None,
                            "structure_learning_rate": 0.05, "initial_temperature": 1.0,
                            "final_temperature": 0.01, "embedding_init_std": 0.01,
                            "baseline_finalist": True, "linear_finalist": True,
                            "group_logit": True}
GROUPS_PICTURE = "autogroup_groups.png"
RETRAINED_PICTURE = "autogroup_retrained_weights.png"


def settings(ctx: SearchContext) -> dict[str, Any]:
    """``ctx.options`` completed with the defaults, the per-order lists resolved."""
    values = merge_options(NAME, DEFAULTS, ctx.options)
    require_at_least(NAME, values, ("max_order", "epochs", "batch_size"), 1)
    require_bool(NAME, values, "baseline_finalist")
    require_bool(NAME, values, "linear_finalist")
    require_bool(NAME, values, "group_logit")
    for key in ("structure_learning_rate", "initial_temperature", "final_temperature",
                "embedding_init_std"):
        if not float(values[key]) > 0:
            raise SearchError(f"autogroup: {key} must be > 0. Received: {key}={values[key]}")
    order = int(values["max_order"])
    num_fields = len(ctx.arch.fields)
    default_groups = [math.ceil(num_fields / 2)] + [num_fields] * (order - 1)
    default_dims = [max(ctx.arch.embedding_dims.values())] * order
    for key, default in (("num_groups", default_groups), ("embedding_dims", default_dims)):
        value = default if values[key] is None else values[key]
        if (not isinstance(value, list | tuple) or len(value) != order
                or any(int(v) < 1 for v in value)):
            raise SearchError(f"autogroup: {key} needs {order} ints >= 1 (one per order up to "
                              f"max_order). Received: {key}={values[key]}")
        values[key] = [int(v) for v in value]
    return values


def search(ctx: SearchContext) -> Architecture:
    """Trains the searching model (weights and structure alternately) and keeps the hard sets."""
    options = settings(ctx)
    orders = [str(p) for p in range(1, int(options["max_order"]) + 1)]
    spec = GroupSearch(num_groups=dict(zip(orders, options["num_groups"], strict=True)),
                       dims=dict(zip(orders, options["embedding_dims"], strict=True)),
                       temperature=float(options["initial_temperature"]))
    arch = dataclasses.replace(ctx.arch, group_logit=options["group_logit"])
    searching = dataclasses.replace(arch, embedding_init_std=options["embedding_init_std"])
    keras.utils.set_random_seed(ctx.seed)
    model = build_search_model(searching, spec)
    layers = {p: model.get_layer(order_layer_name(p)) for p in orders}
    names = list(model_input_dtypes(searching))
    train_ds = ctx.dataset("train", names, True).unbatch().batch(int(options["batch_size"]))
    eval_ds = ctx.dataset("eval", names, False)
    total_steps = sum(1 for _ in train_ds) * int(options["epochs"])
    step = _train_step(model, list(layers.values()),
                       keras.optimizers.Adam(options["learning_rate"] or ctx.learning_rate),
                       keras.optimizers.Adam(float(options["structure_learning_rate"])))
    first, last = float(options["initial_temperature"]), float(options["final_temperature"])
    history: list[dict[str, Any]] = []
    done = 0
    for epoch in range(int(options["epochs"])):
        losses = []
        for features, label in train_ds:
            tau = first * (last / first) ** (done / max(total_steps - 1, 1))
            weight_loss, _ = step(features, label, tf.constant(tau, tf.float32))
            losses.append(float(weight_loss))
            done += 1
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                        "eval_auc": eval_auc(model, eval_ds), "temperature": tau,
                        "set_sizes": {p: [len(g) for g in layers[p].derive()] for p in orders}})
        logging.info("autogroup epoch %d: %s", epoch + 1, history[-1])
    fields = ctx.arch.fields
    groups = {p: [[fields[i] for i in g] for g in layers[p].derive()
                  if len(g) >= (1 if p == "1" else 2)] for p in orders}
    if not any(groups.values()):
        raise SearchError("autogroup: the search left every set empty; try more epochs or a "
                          "smaller structure_learning_rate.")
    membership = {p: layers[p].membership_probabilities().round(4).tolist() for p in orders}
    report = {"groups": groups, "membership": membership,
              "field_counts": {p: {f: sum(f in g for g in groups[p]) for f in fields}
                               for p in orders},
              "epochs": int(options["epochs"]), "steps": total_steps,
              "search_eval_auc": history[-1]["eval_auc"], "history": history,
              "settings": options}
    dims = {p: spec.dims[p] for p in orders}
    found = dataclasses.replace(arch, feature_groups=groups, group_dims=dims)
    baseline = dataclasses.replace(found, feature_groups=baseline_groups(fields, orders))
    candidates = {"searched": found}
    if options["baseline_finalist"]:
        candidates["baseline"] = baseline
    if options["linear_finalist"]:
        candidates["baseline_linear"] = dataclasses.replace(baseline, hidden_units=[])
    chosen = found
    if len(candidates) > 1:
        chosen, report["chosen"], report["finalists"] = _choose_finalist(ctx, candidates)
    if ctx.report_dir:
        draw_groups(fields, membership, os.path.join(ctx.report_dir, GROUPS_PICTURE),
                    "AutoGroup search: P(field in set) per order; dots = kept sets"
                    + (f" (chosen: {report['chosen']} sets)" if "chosen" in report else ""),
                    kept=groups)
    return dataclasses.replace(chosen, search={**ctx.arch.search, NAME: report})


def baseline_groups(fields: list[str], orders: list[str]) -> dict[str, list[list[str]]]:
    """The plain sets: each field its own order-1 set, one order-2 set of every field (a
    weighted FM), no set of a higher order.

    >>> baseline_groups(["a", "b", "c"], ["1", "2", "3"])
    {'1': [['a'], ['b'], ['c']], '2': [['a', 'b', 'c']], '3': []}
    """
    return {p: [[f] for f in fields] if p == "1" else
            [list(fields)] if p == "2" and len(fields) >= 2 else [] for p in orders}


def _choose_finalist(ctx: SearchContext, candidates: dict[str, Architecture],
                     ) -> tuple[Architecture, str, list[dict[str, Any]]]:
    """Trains each candidate architecture from scratch as the retrain stage will and returns
    the one with the best validation AUC, its name and every candidate's score. Ties go to the
    earlier candidate, except that the first (the searched sets) must be strictly better."""
    scores = []
    for name, candidate in candidates.items():
        scores.append({"sets": name, **retrain_record(ctx, candidate)})
        logging.info("autogroup finalist %s: retrained val AUC %.4f", name,
                     scores[-1]["retrained_val_auc"])
    first, *rest = scores
    best = max(rest, key=lambda s: s["retrained_val_auc"], default=first)
    if first["retrained_val_auc"] > best["retrained_val_auc"]:
        best = first
    return candidates[best["sets"]], best["sets"], scores


def build_search_model(arch: Architecture, spec: GroupSearch) -> keras.Model:
    """The searching AutoGroup model (every field in every order), with the serving model's
    inputs and its ``logit`` and ``probability`` layers."""
    inputs = {name: keras.Input(shape=(), dtype=dtype, name=name)
              for name, dtype in model_input_dtypes(arch).items()}
    logit = keras.layers.Identity(name=LOGIT_LAYER)(
        keras.layers.Add(name="logit_sum")(autogroup_parts(arch, inputs, spec)))
    probability = keras.layers.Activation("sigmoid", dtype="float32",
                                          name=PROBABILITY_LAYER)(logit)
    return keras.Model(inputs=inputs, outputs=probability, name="autogroup_search")


def report_trained(arch: Architecture, model: keras.Model, report_dir: str) -> None:
    """Draws ``|w_ij|`` of the retrained model's fixed sets, per order (blank: not a member)."""
    weights = {}
    for order in arch.feature_groups:
        if not arch.feature_groups[order]:
            continue
        layer = model.get_layer(order_layer_name(order))
        used = arch.group_fields(order)
        values = np.where(layer.membership_probabilities() > 0,
                          np.abs(layer.group_weights.numpy()), np.nan)
        rows = {f: values[used.index(f)] if f in used else np.full(values.shape[1], np.nan)
                for f in arch.fields}
        weights[order] = [rows[f].tolist() for f in arch.fields]
    draw_groups(arch.fields, weights, os.path.join(report_dir, RETRAINED_PICTURE),
                "AutoGroup retrain: |set weight| of each member", label="|w|")


def _train_step(model: keras.Model, layers: list[FeatureGroupInteraction],
                weight_optimizer: keras.optimizers.Optimizer,
                structure_optimizer: keras.optimizers.Optimizer):
    """One batch: a weight step without Gumbel noise, then a structure step with it."""
    structure = [layer.structure_logits for layer in layers]
    structure_ids = {id(v) for v in structure}
    weights = [v for v in model.trainable_variables if id(v) not in structure_ids]
    loss_fn = keras.losses.BinaryCrossentropy()

    def loss_of(features: dict[str, tf.Tensor], label: tf.Tensor) -> tf.Tensor:
        loss = loss_fn(label, model(features, training=True))
        return loss + tf.add_n(model.losses) if model.losses else loss

    @tf.function
    def step(features: dict[str, tf.Tensor], label: tf.Tensor,
             temperature: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        for layer in layers:
            layer.temperature.assign(temperature)
            layer.noise_scale.assign(0.0)
        with tf.GradientTape() as tape:
            weight_loss = loss_of(features, label)
        weight_optimizer.apply_gradients(
            zip(tape.gradient(weight_loss, weights), weights, strict=True))
        for layer in layers:
            layer.noise_scale.assign(1.0)
        with tf.GradientTape() as tape:
            structure_loss = loss_of(features, label)
        structure_optimizer.apply_gradients(
            zip(tape.gradient(structure_loss, structure), structure, strict=True))
        for layer in layers:
            layer.noise_scale.assign(0.0)
        return weight_loss, structure_loss

    return step



def draw_groups(fields: list[str], values: dict[str, list[list[float]]], path: str, title: str,
                kept: dict[str, list[list[str]]] | None = None, label: str = "P(in)") -> None:
    """One panel per order: a field x set heatmap of ``values[order]`` (``[F][G]``); with
    ``kept``, a dot marks each member of a kept set (sets that ``kept`` drops stay blank)."""
    import matplotlib  # noqa: PLC0415 (plotting loads only when a report is written)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    orders = [p for p in sorted(values, key=int) if values[p]]
    widths = [max(2.0, 0.22 * len(values[p][0]) + 1.2) for p in orders]
    height = max(3.0, 0.22 * len(fields) + 1.5)
    fig, axes = plt.subplots(1, len(orders), figsize=(sum(widths) + 1.5, height),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    for ax, order in zip(axes[0], orders, strict=True):
        grid = np.asarray(values[order], dtype=float)
        image = ax.imshow(grid, cmap="viridis", vmin=0.0, aspect="auto",
                          vmax=1.0 if kept is not None else max(float(np.nanmax(grid)), 1e-9))
        if kept is not None:
            kept_sets = {tuple(g) for g in kept.get(order, [])}
            for j in range(grid.shape[1]):
                members = tuple(f for i, f in enumerate(fields) if grid[i, j] > 0.5)
                if members in kept_sets:
                    for i, f in enumerate(fields):
                        if f in members:
                            ax.plot(j, i, "o", color="white", markersize=3)
            subtitle = f"order {order}: {len(kept_sets)} of {grid.shape[1]} sets kept"
        else:
            subtitle = f"order {order}"
        ax.set_title(subtitle, fontsize=8)
        ax.set_xlabel("set", fontsize=7)
        ax.set_yticks(range(len(fields)), fields, fontsize=6)
        ax.tick_params(axis="x", labelsize=6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(image, ax=ax, label=label, shrink=0.8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
