"""λOpt on CTR models: a per-id L2 strength for every categorical table, learned on eval batches.

Chen et al., "λOpt: Learn to Regularize Recommender Models in Finer Levels", KDD 2019. The method,
its two alternating halves and our deviations from the official code are in
``models.search.lambdaopt`` (read that first); this module runs its truncated variant on any
family that ``models.zoo.build_ctr_model`` builds with a ``FieldEmbedding`` (fm, deepfm, dnn, dcn).

The search builds the retrain's own model from ``ctx.arch`` with ``id_l2`` on every categorical
field (``Λ`` starts at ``lambda_init``; those tables get ``Ω(Λ)`` instead of ``l2``), and trains
it, at every step ``t`` on a train batch ``b_t`` and an eval batch ``v_t``:

1. One forward and backward pass on ``b_t`` in training mode (dropout, batch statistics) of the
   training loss plus the model's other losses: ``g``. For table ``E_f``, ``g_f`` leaves ``Ω``
   out (the layer's ``Ω(Λ_t)`` term ``s_f ⊙ Λ_f ⊙ E_f`` is subtracted; ``s_f = c_r / |b_t|``,
   ``models.layers.lambdaopt.row_scales``).
2. **Λ step.** Every table's next Adam update as a function of ``Λ`` (moments and ``g_f``
   constant)::

       E'_f(Λ_f) = adam(E_f, m_f, v_f, g_f + s_f ⊙ Λ_f ⊙ E_f)

   and ``L_val(Λ)``: the logloss of the model's logit on ``v_t`` in inference mode (no dropout,
   moving batch statistics) with every ``E'_f`` substituted for ``E_f``
   (``FieldEmbedding.substituted_tables``, differentiable) and every other weight at its current
   value. One AMSGrad step on ``∇_Λ L_val`` (global-norm clip), then ``Λ >= 0``. Whole tables
   are simulated (elementwise, the cost of the Adam update itself); only ``v_t``'s rows reach
   ``L_val``.
3. **Model step.** The tables by the same hand-written Adam with ``g_f + s_f ⊙ Λ_new ⊙ E_f``
   (step 2 simulates exactly the update taken), every other weight by Keras Adam with ``g``.

After every epoch, the model's eval AUC (``models.search.eval_auc``). The search ends after
``search_epochs`` epochs or ``ctx.patience`` epochs in a row without a better AUC, and keeps ``Λ``
of the best epoch, rounded to 7 significant digits (float32's), as ``Architecture.id_l2``. The
model trained here is thrown away: the retrain trains a fresh one with those fixed strengths.

Held-out check (``held_out_check``, default on; our addition): per-id strengths learned on a
validation split fit that split (README, λOpt), so the eval split is cut into two fixed halves
(``eval_half``). ``Λ`` is learned and its epoch chosen on the first; then the model is retrained
from scratch twice, with the learned ``Λ`` and with the starting architecture's fixed ``l2``,
each early-stopped on the first half, and ``Λ`` is kept only if its model scores a higher AUC on
the second half. Otherwise the starting architecture goes to the retrain unchanged.

Options: ``models.search.lambdaopt.DEFAULTS`` with ``CTR_DEFAULTS`` in place of MF's values (a
scale-free Λ step). Not supported (``SearchError``): ``variant: "full"`` (it would need the
previous step's whole model and optimizer state and a train pass at simulated tables inside nested
tapes), ``per_dimension`` (``id_l2`` holds one strength per id), and architectures with
``id_dims`` or ``embedding_blocks``.
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

from components.features import id_name
from models.architecture import Architecture
from models.layers.embeddings import FieldEmbedding
from models.layers.lambdaopt import row_scales
from models.losses import training_loss
from models.search import SearchContext, SearchError, eval_auc, retrain
from models.search.lambdaopt import (
    LAMBDA_FILE,
    NAME,
    PLOT_FILE,
    lambda_report,
    plot_lambdas,
    settings,
)
from models.search.lambdaopt_lookahead import adam_update
from models.zoo import LOGIT_LAYER, build_ctr_model, model_input_names
from models.zoo.ctr import FIELD_EMBEDDING_LAYER

# Where CTR's defaults differ from MF's (``models.search.lambdaopt.DEFAULTS``); options override
# them. The look-ahead's hypergradients on CTR tables (initial std 1e-4) are 1e-12 to 1e-6, below
# Keras' ε = 1e-7, which then freezes AMSGrad (frappe86k: mean Λ <= 0.02 after 10 epochs); with
# ε = 1e-16 the Λ step is scale-free (a smaller ε let Λ explode: float32 squares of gradients
# below ~1e-19 are 0). The rate 0.1 was the best of {1e-3 (with ε 1e-7), 0.1, 1, 10, 100} on
# frappe86k seed 2021 when Λ learned on one half of the eval split and the retrain was scored on
# the other: larger rates fit Λ to the half it learns on (README, λOpt). XLA was slower on CPU
# (compilation) and ignores the dropout seeds.
CTR_DEFAULTS: dict[str, Any] = {"lambda_learning_rate": 0.1, "lambda_epsilon": 1e-16,
                                "jit_compile": False}


def lookahead_val_loss(logit_model: keras.Model, layer: FieldEmbedding,
                       lambdas: dict[str, tf.Tensor], state: dict[str, Any],
                       features: dict[str, tf.Tensor], labels: tf.Tensor,
                       learning_rate: float) -> tf.Tensor:
    """``L_val(E'(Λ))`` (module docstring, step 2): the mean logloss of ``logit_model``'s logits
    (inference mode) on ``(features, labels)``, each table ``f`` of ``lambdas`` replaced by its
    simulated next Adam update. ``state`` holds per field ``tables``, ``moments`` (``(m, v)``),
    ``grads`` (without ``Ω``) and ``scales`` (``row_scales`` of the train batch), and ``step`` (the
    update's 1-based index)."""
    simulated = {}
    for f, lam in lambdas.items():
        table = state["tables"][f]
        grad = state["grads"][f] + state["scales"][f] * lam * table
        simulated[f] = adam_update(table, *state["moments"][f], grad, state["step"],
                                   learning_rate)[0]
    with layer.substituted_tables(simulated):
        logits = logit_model(features, training=False)
    labels = tf.cast(tf.reshape(labels, tf.shape(logits)), logits.dtype)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits))


class CTRLambdaOptTrainer:
    """A CTR model trained jointly with its per-id ``Λ`` (module docstring, steps 1-3).

    Args:
      model: ``build_ctr_model`` of an architecture with ``id_l2`` on the fields to learn; their
        ``Λ`` are the ``FieldEmbedding``'s non-trainable ``IdL2Regularizer`` weights.
      loss: the training loss on probabilities (``models.losses.training_loss``).
      learning_rate: the model's Adam learning rate.
      values: ``models.search.lambdaopt.settings``.
    """

    def __init__(self, model: keras.Model, loss: keras.losses.Loss, learning_rate: float,
                 values: dict[str, Any]) -> None:
        self.model, self.loss, self.lr = model, loss, float(learning_rate)
        self.layer = model.get_layer(FIELD_EMBEDDING_LAYER)
        self.logit_model = keras.Model(model.inputs, model.get_layer(LOGIT_LAYER).output)
        self.fields = list(self.layer.id_l2_regularizers)
        self.tables = {f: self.layer.tables[f] for f in self.fields}
        self.lambdas = {f: self.layer.id_l2_regularizers[f].lambdas for f in self.fields}
        table_ids = {id(t) for t in self.tables.values()}
        self.others = [v for v in model.trainable_variables if id(v) not in table_ids]
        self.moments = {f: tuple(tf.Variable(tf.zeros_like(t), trainable=False, name=name)
                                 for name in ("m", "v")) for f, t in self.tables.items()}
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.model_optimizer = keras.optimizers.Adam(self.lr)
        self.model_optimizer.build(self.others)
        self.lambda_optimizer = keras.optimizers.Adam(
            values["lambda_learning_rate"], amsgrad=True,
            global_clipnorm=values["lambda_clipnorm"], epsilon=values["lambda_epsilon"])
        self.lambda_optimizer.build(list(self.lambdas.values()))
        self.train_step = tf.function(self._train_step, jit_compile=bool(values["jit_compile"]),
                                      reduce_retracing=True)

    def _train_step(self, features: dict[str, tf.Tensor], labels: tf.Tensor,
                    val_features: dict[str, tf.Tensor], val_labels: tf.Tensor
                    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Steps 1-3; returns (train loss with ``Ω``, look-ahead val loss)."""
        tables = [self.tables[f] for f in self.fields]
        with tf.GradientTape() as tape:
            loss = self.loss(labels, self.model(features, training=True))
            loss += tf.add_n([0.0, *self.model.losses])  # Ω(Λ_t) included
        grads = tape.gradient(loss, tables + self.others)
        size = tf.shape(labels)[0]
        state: dict[str, Any] = {"tables": {}, "moments": {}, "grads": {}, "scales": {},
                                 "step": self.step + 1}
        for f, table, grad in zip(self.fields, tables, grads[:len(tables)], strict=True):
            table = tf.convert_to_tensor(table)
            scale = row_scales(tf.reshape(features[id_name(f)], [-1]), table.shape[0], size,
                               table.dtype)
            state["tables"][f], state["scales"][f] = table, scale
            state["moments"][f] = tuple(tf.convert_to_tensor(x) for x in self.moments[f])
            state["grads"][f] = tf.convert_to_tensor(grad) - scale * self.lambdas[f] * table
        lambdas = list(self.lambdas.values())
        with tf.GradientTape() as tape:
            tape.watch(lambdas)
            val_loss = lookahead_val_loss(self.logit_model, self.layer, self.lambdas, state,
                                          val_features, val_labels, self.lr)
        self.lambda_optimizer.apply_gradients(zip(tape.gradient(val_loss, lambdas), lambdas,
                                                  strict=True))
        for lam in lambdas:
            lam.assign(tf.maximum(lam, 0.0))
        for f, table in zip(self.fields, tables, strict=True):
            value = state["tables"][f]
            grad = state["grads"][f] + state["scales"][f] * self.lambdas[f] * value
            new, m, v = adam_update(value, *state["moments"][f], grad, state["step"], self.lr)
            table.assign(new)
            self.moments[f][0].assign(m)
            self.moments[f][1].assign(v)
        self.model_optimizer.apply_gradients(
            [(g, w) for g, w in zip(grads[len(tables):], self.others, strict=True)
             if g is not None])
        self.step.assign(state["step"])
        return loss, val_loss


def _check_supported(arch: Architecture, values: dict[str, Any]) -> None:
    if values["variant"] != "truncated":
        raise SearchError(f"lambdaopt: variant {values['variant']!r} runs on top-k MF only; CTR "
                          f"models take 'truncated' (the full look-ahead would need the previous "
                          f"step's whole model and optimizer state). Received: model "
                          f"{arch.model!r}")
    if values["per_dimension"]:
        raise SearchError(f"lambdaopt: per_dimension runs on top-k MF only (Architecture.id_l2 "
                          f"holds one strength per id). Received: model {arch.model!r}")
    if not arch.categorical:
        raise SearchError("lambdaopt learns per-id strengths of categorical fields; this "
                          "dataset has none.")
    if arch.id_dims or arch.embedding_blocks:
        raise SearchError("lambdaopt: architectures with id_dims (ESAPN) or embedding_blocks "
                          "(NIS) are not supported; run lambdaopt on the fixed embeddings.")


def _id_frequencies(ctx: SearchContext, arch: Architecture) -> dict[str, np.ndarray]:
    """Train frequency per id and field: ``ctx.vocab_counts``, else counted over the train
    split."""
    if ctx.vocab_counts:
        return {f: np.asarray(ctx.vocab_counts[f], dtype=float) for f in arch.categorical}
    counts = {f: np.zeros(arch.vocab_sizes[f]) for f in arch.categorical}
    for features, _ in ctx.dataset("train", [id_name(f) for f in arch.categorical], False):
        for f in arch.categorical:
            ids = features[id_name(f)].numpy().ravel()
            counts[f] += np.bincount(ids, minlength=arch.vocab_sizes[f])
    return counts


def eval_half(dataset: Any, part: int, batch_size: int, seed: int) -> Any:
    """``SearchContext.dataset`` whose eval split is every other example of the eval split
    (``part`` 0 or 1, in the unshuffled order): the two halves are disjoint and fixed."""

    def half(split: str, input_names: list[str], shuffle: bool) -> tf.data.Dataset:
        if split != "eval":
            return dataset(split, input_names, shuffle)
        rows = (dataset("eval", input_names, False).unbatch().enumerate()
                .filter(lambda i, _: i % 2 == part).map(lambda _, row: row))
        if shuffle:
            rows = rows.shuffle(100_000, seed=seed, reshuffle_each_iteration=True)
        return rows.batch(batch_size)

    return half


def held_out_auc(ctx: SearchContext, arch: Architecture, check: Any) -> dict[str, float]:
    """``arch`` trained from scratch as the retrain stage trains it (``retrain``), early-stopped
    on ``ctx``'s eval split; its AUC on ``check``'s eval split, which it never saw."""
    start = time.perf_counter()
    result = retrain(ctx, arch)
    names = model_input_names(arch)
    return {"held_out_auc": eval_auc(result.model, check("eval", names, False)),
            "best_epoch": result.best_epoch, "seconds": time.perf_counter() - start}


def search_ctr(ctx: SearchContext) -> Architecture:
    """Trains ``ctx.arch``'s model jointly with per-id ``Λ`` (module docstring); returns
    ``ctx.arch`` with ``id_l2`` (``Λ`` of the best eval-AUC epoch) and ``search["lambdaopt"]``.

    With ``held_out_check`` (the default), ``Λ`` is learned on one half of the eval split, and
    kept only if the model retrained with it scores a higher AUC on the other half than the
    model retrained with the starting architecture's fixed ``l2`` (each early-stopped on the
    first half); otherwise the starting architecture is returned (``search["lambdaopt"]``
    records both AUCs and ``kept``). Per-id strengths learned on a validation split fit that
    split, so the split that judges them must be another.
    """
    values = settings({**CTR_DEFAULTS, **ctx.options})
    _check_supported(ctx.arch, values)
    if not values["held_out_check"]:
        return _search_ctr(ctx, values)
    learn = dataclasses.replace(ctx, dataset=eval_half(ctx.dataset, 0, ctx.batch_size, ctx.seed))
    check = eval_half(ctx.dataset, 1, ctx.batch_size, ctx.seed)
    found = _search_ctr(learn, values)
    learned = held_out_auc(learn, dataclasses.replace(found, search={}), check)
    default = held_out_auc(learn, dataclasses.replace(ctx.arch, search={}), check)
    kept = learned["held_out_auc"] > default["held_out_auc"]
    logging.info("lambdaopt: held-out AUC %.4f with the learned strengths, %.4f with l2 %g: %s",
                 learned["held_out_auc"], default["held_out_auc"], ctx.arch.l2,
                 "kept" if kept else "the fixed l2 kept")
    report = {**found.search[NAME], "held_out_check": {
        "learned": learned, "fixed_l2": {**default, "l2": ctx.arch.l2}, "kept": kept}}
    result = found if kept else ctx.arch
    return dataclasses.replace(result, search={**ctx.arch.search, NAME: report})


def _search_ctr(ctx: SearchContext, values: dict[str, Any]) -> Architecture:
    """The joint training of the model and ``Λ`` (module docstring) on ``ctx``'s splits."""
    arch = ctx.arch
    start = time.perf_counter()
    keras.utils.set_random_seed(ctx.seed)
    initial = float(values["lambda_init"])
    model = build_ctr_model(dataclasses.replace(
        arch, id_l2={f: [initial] * arch.vocab_sizes[f] for f in arch.categorical}, search={}))
    trainer = CTRLambdaOptTrainer(model, training_loss(arch.loss), ctx.learning_rate, values)
    names = model_input_names(arch)
    train_ds = ctx.dataset("train", names, True)
    val_batch = int(values["val_batch_size"] or ctx.batch_size)
    val_batches = iter(ctx.dataset("eval", names, True).unbatch().repeat().batch(val_batch))
    history: list[dict[str, Any]] = []
    best_auc, best_epoch, best_lambdas, steps = -np.inf, 0, {}, 0
    for epoch in range(1, int(values["search_epochs"]) + 1):
        sums = np.zeros(2)
        count = 0
        for features, labels in train_ds:
            sums += [float(x) for x in trainer.train_step(features, labels, *next(val_batches))]
            count += 1
        steps += count
        auc = eval_auc(model, ctx.dataset("eval", names, False))
        history.append({"epoch": epoch, "loss": float(sums[0] / count),
                        "lookahead_val_loss": float(sums[1] / count), "eval_auc": auc,
                        **{f"{f}_lambda_mean": float(tf.reduce_mean(lam))
                           for f, lam in trainer.lambdas.items()}})
        logging.info("lambdaopt epoch %d: %s", epoch, history[-1])
        if auc > best_auc:
            best_auc, best_epoch = auc, epoch
            best_lambdas = {f: lam.numpy() for f, lam in trainer.lambdas.items()}
        elif epoch - best_epoch >= ctx.patience:
            break
    frequency = _id_frequencies(ctx, arch)
    recorded = {k: v for k, v in values.items() if k != "l2_grid"}
    report = {**lambda_report(recorded, best_lambdas, frequency, best_epoch),
              "best_eval_auc": best_auc, "steps": steps, "history": history,
              "seconds": time.perf_counter() - start}
    if ctx.report_dir:
        os.makedirs(ctx.report_dir, exist_ok=True)
        np.savez_compressed(os.path.join(ctx.report_dir, LAMBDA_FILE), **best_lambdas)
        plot_lambdas(best_lambdas, frequency, values["variant"],
                     os.path.join(ctx.report_dir, PLOT_FILE))
    id_l2 = {f: [float(f"{x:.7g}") for x in lam[:, 0]] for f, lam in best_lambdas.items()}
    return dataclasses.replace(arch, id_l2=id_l2, search={**arch.search, NAME: report})
