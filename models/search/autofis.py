"""AutoFIS search: gate every FM field pair, train the gates sparse with GRDA, keep the non-zero.

Liu et al., "AutoFIS: Automatic Feature Interaction Selection in Factorization Models for
Click-Through Rate Prediction", KDD 2020 (arXiv 2003.11235), Sec. 3; official code
``zhuchenxv/AutoFIS``. One-level search on the train split: every pair ``(i, j)`` enters the
model as ``alpha_ij BN(<e_i, e_j>)`` (``models.layers.autofis.GatedInteraction``); in one
gradient step Adam updates every other weight and GRDA (``models.optimizers.GRDA``) the gates,
whose growing L1 threshold sets most of them to exactly zero. The kept pairs (``alpha != 0``)
become ``Architecture.kept_interactions``; the retrain stage builds only those, behind fresh
gates that Adam trains as attention units.

Settings (``ctx.options``; defaults in ``DEFAULTS`` and ``MODEL_DEFAULTS``). Like the official
search (``n_epoch`` 5 of 1/5 of the data) the search is one pass over the train split, so every
gate gradient comes from examples the model has not memorised yet; a second pass lets noise
pairs look useful on the train split. A small data set gives few steps in one pass, so the
search uses smaller batches, a larger Adam learning rate and a larger embedding initialisation
than the retrain stage (the official code uses Xavier-initialised embeddings; our retrain's
1e-4 keeps ``BN(<e_i, e_j>)`` under the batch norm's epsilon for many steps) and no embedding
L2 (the official ``l2`` is 0):

* ``c``, ``mu``: GRDA's threshold ``l1(t) = c gamma^(1/2 + mu) t^mu``. ``mu`` is the official
  value (FM 0.6, DeepFM 0.8). Unless ``c`` is set, it is chosen so that the threshold reaches
  ``final_threshold`` at the last step: the official ``c`` (FM 0.005, DeepFM 0.0005) assumes
  tens of thousands of steps (a pass over Criteo at batch 2000, where it ends near 1.4-1.9)
  and prunes nothing in the hundreds of steps of a small data set.
* ``final_threshold``: ``l1`` at the last step when ``c`` is not set (1.0).
* ``grda_learning_rate``: GRDA's ``gamma`` (official 1.0).
* ``epochs``: passes over the train split (1).
* ``batch_size``, ``learning_rate``, ``embedding_init_std``, ``l2``: the searching model's
  batch, Adam learning rate, embedding initialisation and embedding L2 (256, 0.01, 0.01, 0);
  ``None`` takes the retrain stage's value.
* ``gate_init``: initial gate value (official 0.6).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from models.architecture import Architecture
from models.layers.autofis import GatedInteraction
from models.optimizers import GRDA
from models.search import SearchContext, SearchError, eval_auc, merge_options
from models.zoo.ctr import FM_INTERACTION_LAYER, build_ctr_model, model_input_names

NAME = "autofis"
DEFAULTS: dict[str, Any] = {"c": None, "final_threshold": 1.0, "grda_learning_rate": 1.0,
                            "epochs": 1, "batch_size": 256, "learning_rate": 0.01,
                            "embedding_init_std": 0.01, "l2": 0.0, "gate_init": 0.6}
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {"fm": {"mu": 0.6}, "deepfm": {"mu": 0.8}}
GATES_PICTURE = "autofis_gates.png"
RETRAINED_GATES_PICTURE = "autofis_retrained_gates.png"


def settings(ctx: SearchContext) -> dict[str, Any]:
    """``ctx.options`` completed with the defaults of ``ctx.arch.model``."""
    values = merge_options(NAME, {**DEFAULTS, **MODEL_DEFAULTS.get(ctx.arch.model, {})},
                           ctx.options)
    if int(values["epochs"]) < 1:
        raise SearchError(f"autofis: epochs must be >= 1. Received: epochs={values['epochs']}")
    if values["c"] is None and not float(values["final_threshold"]) > 0:
        raise SearchError(f"autofis: final_threshold must be > 0. "
                          f"Received: final_threshold={values['final_threshold']}")
    return values


def search(ctx: SearchContext) -> Architecture:
    """Trains the all-pairs gated model on the train split and keeps the pairs with a gate."""
    options = settings(ctx)
    if len(ctx.arch.fields) < 2:
        raise SearchError(f"autofis selects pairs of fields and needs at least two fields. "
                          f"Received: fields={ctx.arch.fields}")
    searching = dataclasses.replace(
        ctx.arch, kept_interactions=None, gated_interactions=True,
        l2=ctx.arch.l2 if options["l2"] is None else float(options["l2"]),
        embedding_init_std=options["embedding_init_std"] or ctx.arch.embedding_init_std)
    keras.utils.set_random_seed(ctx.seed)
    model = build_ctr_model(searching)
    layer = model.get_layer(FM_INTERACTION_LAYER)
    if not isinstance(layer, GatedInteraction):
        raise SearchError(f"autofis: model {ctx.arch.model!r} has no gated interaction layer.")
    layer.gates.assign(tf.fill(tf.shape(layer.gates), float(options["gate_init"])))
    names = model_input_names(searching)
    train_ds = ctx.dataset("train", names, True)
    if options["batch_size"]:
        train_ds = train_ds.unbatch().batch(int(options["batch_size"]))
    eval_ds = ctx.dataset("eval", names, False)
    steps_per_epoch = sum(1 for _ in train_ds)
    total_steps = steps_per_epoch * int(options["epochs"])
    gamma, mu = float(options["grda_learning_rate"]), float(options["mu"])
    c = options["c"]
    if c is None:
        last_step = max(total_steps - 1, 1)
        c = float(options["final_threshold"]) / (gamma ** (0.5 + mu) * last_step ** mu)
    adam = keras.optimizers.Adam(options["learning_rate"] or ctx.learning_rate)
    step = _train_step(model, layer.gates, adam, GRDA(learning_rate=gamma, c=c, mu=mu))
    history: list[dict[str, float]] = []
    for epoch in range(int(options["epochs"])):
        losses = [float(step(features, label)) for features, label in train_ds]
        kept_now = int(np.count_nonzero(layer.gates.numpy()))
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                        "eval_auc": eval_auc(model, eval_ds), "kept": kept_now})
        logging.info("autofis epoch %d: %s", epoch + 1, history[-1])
    fields = ctx.arch.fields
    gates = {",".join(fields[i] for i in pair): float(value)
             for pair, value in zip(layer.interactions, layer.gates.numpy(), strict=True)}
    kept = [[fields[i], fields[j]] for i, j in layer.derive()]
    report = {"gates": gates, "kept": len(kept), "total": len(gates),
              "epochs": int(options["epochs"]), "steps": total_steps,
              "search_eval_auc": history[-1]["eval_auc"], "history": history,
              "settings": {**options, "c": c}}
    if ctx.report_dir:
        draw_gates(fields, gates, os.path.join(ctx.report_dir, GATES_PICTURE),
                   "AutoFIS search: |gate| per field pair (0 = pruned)")
    return dataclasses.replace(ctx.arch, kept_interactions=kept, gated_interactions=True,
                               search={**ctx.arch.search, NAME: report})


def report_trained(arch: Architecture, model: keras.Model, report_dir: str) -> None:
    """Draws the retrained model's gates (attention units) of the kept pairs."""
    layer = model.get_layer(FM_INTERACTION_LAYER)
    if not isinstance(layer, GatedInteraction):
        return
    gates = {",".join(arch.fields[i] for i in pair): float(value)
             for pair, value in zip(layer.interactions, layer.gates.numpy(), strict=True)}
    draw_gates(arch.fields, gates, os.path.join(report_dir, RETRAINED_GATES_PICTURE),
               "AutoFIS retrain: |gate| of the kept pairs")


def _train_step(model: keras.Model, gates: tf.Variable, adam: keras.optimizers.Optimizer,
                grda: GRDA):
    """One step: the same loss drives Adam on every weight but the gates and GRDA on them."""
    others = [v for v in model.trainable_variables if v is not gates]
    loss_fn = keras.losses.BinaryCrossentropy()

    @tf.function
    def step(features: dict[str, tf.Tensor], label: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(label, model(features, training=True))
            if model.losses:
                loss += tf.add_n(model.losses)
        *other_grads, gate_grad = tape.gradient(loss, [*others, gates])
        adam.apply_gradients(zip(other_grads, others, strict=True))
        grda.apply_gradients([(gate_grad, gates)])
        return loss

    return step



def draw_gates(fields: list[str], gates: dict[str, float], path: str, title: str) -> None:
    """A field x field heatmap of ``|gate|`` (``gates`` keyed ``"a,b"``); blank = not built."""
    import matplotlib  # noqa: PLC0415 (plotting loads only when a report is written)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    index = {f: i for i, f in enumerate(fields)}
    grid = np.full((len(fields), len(fields)), np.nan)
    for key, value in gates.items():
        a, b = key.split(",")
        grid[index[a], index[b]] = grid[index[b], index[a]] = abs(value)
    size = max(4.0, 0.35 * len(fields) + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(grid, cmap="viridis", vmin=0.0)
    fig.colorbar(image, ax=ax, label="|gate|")
    ax.set_xticks(range(len(fields)), fields, rotation=90, fontsize=7)
    ax.set_yticks(range(len(fields)), fields, fontsize=7)
    if len(fields) <= 16:
        for (i, j), value in np.ndenumerate(grid):
            if i < j and not np.isnan(value):
                ax.text(j, i, "0" if value == 0 else f"{value:.2f}", ha="center", va="center",
                        fontsize=6, color="white" if value < np.nanmax(grid) / 2 else "black")
    kept = sum(1 for v in gates.values() if v != 0)
    ax.set_title(f"{title}\n{kept} of {len(gates)} pairs kept", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
