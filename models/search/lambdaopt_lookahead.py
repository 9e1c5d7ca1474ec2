"""λOpt's look-ahead: the model's next Adam update simulated as a differentiable function of ``Λ``.

Pure functions of tensors (the tests differentiate them numerically), used by
``models.search.lambdaopt``'s trainer (MF) and ``models.search.lambdaopt_ctr`` (CTR tables); the
method, its variants and where they deviate from the official code are described in
``models.search.lambdaopt``.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from models.layers.lambdaopt import row_scales

_TINY = 1e-30
ADAM = {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}  # tf_keras Adam's defaults


def adam_update(theta: tf.Tensor, m: tf.Tensor, v: tf.Tensor, grad: tf.Tensor,
                step: tf.Tensor | int, learning_rate: float) -> tuple[tf.Tensor, ...]:
    """One Keras Adam update; ``step`` is this update's 1-based index. Returns
    ``(theta', m', v')``; ``√v'`` is taken as ``√max(v', 1e-30)`` (see
    ``models.search.lambdaopt``'s docstring)."""
    b1, b2, eps = ADAM["beta_1"], ADAM["beta_2"], ADAM["epsilon"]
    m = b1 * m + (1.0 - b1) * grad
    v = b2 * v + (1.0 - b2) * tf.square(grad)
    t = tf.cast(step, theta.dtype)
    alpha = learning_rate * tf.sqrt(1.0 - tf.pow(b2, t)) / (1.0 - tf.pow(b1, t))
    return theta - alpha * m / (tf.sqrt(tf.maximum(v, _TINY)) + eps), m, v


def bpr_mean(users: tf.Tensor, items: tf.Tensor, u: tf.Tensor, i: tf.Tensor,
             j: tf.Tensor) -> tf.Tensor:
    """``mean softplus(<p_u, q_j> - <p_u, q_i>)`` over tables ``users``, ``items``."""
    pu = tf.gather(users, u)
    return tf.reduce_mean(tf.nn.softplus(tf.reduce_sum(pu * tf.gather(items, j), -1)
                                         - tf.reduce_sum(pu * tf.gather(items, i), -1)))


def batch_scales(u: tf.Tensor, i: tf.Tensor, j: tf.Tensor, num_users: int, num_items: int,
                 dtype: tf.DType = tf.float32) -> tuple[tf.Tensor, tf.Tensor]:
    """``c_r / |B|`` per row (``[N, 1]``): the penalty gradient is ``scale ⊙ Λ ⊙ θ``."""
    size = tf.shape(u)[0]
    return (row_scales(u, num_users, size, dtype),
            row_scales(tf.concat([i, j], 0), num_items, size, dtype))


def bpr_gradients(users: tf.Tensor, items: tf.Tensor, u: tf.Tensor, i: tf.Tensor,
                  j: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """``(loss, dense ∂/∂users, dense ∂/∂items)`` of :func:`bpr_mean` (differentiable again)."""
    with tf.GradientTape() as tape:
        tape.watch([users, items])
        loss = bpr_mean(users, items, u, i, j)
    g_users, g_items = tape.gradient(loss, [users, items])
    return loss, tf.convert_to_tensor(g_users), tf.convert_to_tensor(g_items)


def truncated_val_loss(lambdas: tuple[tf.Tensor, tf.Tensor], state: dict[str, Any],
                       val: tuple[tf.Tensor, tf.Tensor, tf.Tensor],
                       learning_rate: float) -> tf.Tensor:
    """``L_val(Θ_{t+1}(Λ))`` of the official one-step look-ahead, on the validation rows only.

    ``state`` holds step ``t``: ``tables`` ``(P, Q)``, ``moments`` ``((m_P, v_P), (m_Q, v_Q))``,
    ``grads`` (BPR gradients on ``b_t``), ``scales`` (:func:`batch_scales` of ``b_t``) and
    ``step`` (the update's 1-based index)."""
    vu, vi, vj = val
    vitems = tf.concat([vi, vj], 0)
    nxt = []
    for lam, table, (m, v), grad, scale, rows in zip(
            lambdas, state["tables"], state["moments"], state["grads"], state["scales"],
            (vu, vitems), strict=True):
        theta = tf.gather(table, rows)
        g = tf.gather(grad, rows) + tf.gather(scale, rows) * tf.gather(lam, rows) * theta
        nxt.append(adam_update(theta, tf.gather(m, rows), tf.gather(v, rows), g, state["step"],
                               learning_rate)[0])
    pu, (qi, qj) = nxt[0], tf.split(nxt[1], 2)
    return tf.reduce_mean(tf.nn.softplus(tf.reduce_sum(pu * qj, -1) - tf.reduce_sum(pu * qi, -1)))


def full_val_loss(lambdas: tuple[tf.Tensor, tf.Tensor], prev: dict[str, Any],
                  batch: tuple[tf.Tensor, tf.Tensor, tf.Tensor],
                  val: tuple[tf.Tensor, tf.Tensor, tf.Tensor],
                  learning_rate: float) -> tf.Tensor:
    """``L_val(Θ_{t+1}(Λ))`` with ``Θ_t(Λ)`` simulated from step ``t-1`` (``prev``, the same keys
    as :func:`truncated_val_loss`'s ``state``) and ``g_t`` recomputed on ``batch`` (nested
    tapes)."""
    current, moments = [], []
    for lam, table, (m, v), grad, scale in zip(lambdas, prev["tables"], prev["moments"],
                                               prev["grads"], prev["scales"], strict=True):
        theta, m, v = adam_update(table, m, v, grad + scale * lam * table, prev["step"],
                                  learning_rate)
        current.append(theta)
        moments.append((m, v))
    u, i, j = batch
    _, g_users, g_items = bpr_gradients(current[0], current[1], u, i, j)
    scales = batch_scales(u, i, j, *(int(t.shape[0]) for t in current), dtype=current[0].dtype)
    nxt = [adam_update(theta, m, v, g + scale * lam * theta, prev["step"] + 1, learning_rate)[0]
           for lam, theta, (m, v), g, scale in zip(lambdas, current, moments, (g_users, g_items),
                                                   scales, strict=True)]
    return bpr_mean(nxt[0], nxt[1], *val)
