"""AutoLoss: a per-example mix of candidate losses, weighted by a controller network.

Reference: Xiangyu Zhao, Haochen Liu, Wenqi Fan, Hui Liu, Jiliang Tang, Chong Wang, "AutoLoss:
Automated Loss Function Search in Recommendations", KDD 2021 (arXiv 2106.06713). No official
code exists; the choices below are ours and are documented where made.

For an example with label ``y`` in {0, 1} and predicted probability ``p`` (logit ``z``), the
candidate losses ``l_k(y, p)`` are (``CANDIDATES``; ``p`` clipped to ``[1e-7, 1 - 1e-7]``)::

    logloss        -y log p - (1 - y) log(1 - p)
    mse            (y - p)^2
    squared_hinge  max(0, 1 - s z)^2,          s = 2y - 1, z = log p - log(1 - p)
    focal          -(1 - p_t)^gamma log p_t,   p_t = p if y = 1 else 1 - p   (gamma = 2)

Each candidate's slope in the logit, ``s_k = |dl_k / dz|`` (``candidate_slopes``), is what a
loss contributes to a gradient step: ``|p - y|`` for logloss, ``2 |y - p| p (1 - p)`` for MSE,
``2 max(0, 1 - s z)`` for the squared hinge and ``(1 - p_t)^gamma ((1 - p_t) - gamma p_t log
p_t)`` for focal loss.

The controller ``g_V`` (``LossController``, a small MLP) maps the example's features
``x = [y, p, c]`` to probabilities ``pi = softmax(g_V(x))`` over the candidates, where ``c`` is
the example's *convergence signal*: its logloss relative to a running average of the batch
logloss, ``c = clip(log(l_log + eps) - log(m + eps), -5, 5)``, ``m <- mu m + (1 - mu) mean_b
l_log`` (momentum ``mu`` = 0.9). ``c > 0``: the example is learnt worse than the average one.
The paper's Gumbel-softmax turns ``pi`` into a near-hard choice::

    w_k = exp((log pi_k + g_k) / tau) / sum_j exp((log pi_j + g_j) / tau),  g = -log(-log u)
    L_i = n sum_k w_ik l_k(y_i, p_i),   n = stop_gradient(mean_i s_log,i / mean_i sum_k w_ik s_ik)

The batch factor ``n`` is our choice (the paper has none; ``"normalize": false`` drops it): it
keeps the mixed loss's mean slope equal to logloss's, so a controller cannot help by inflating
the step size (the steepest loss, the squared hinge on confidently wrong examples, wins a
one-step validation objective: without ``n`` the searches put 50-90 % of the weight on it, and
the retrained models lost validation AUC on movielens1m_ctr), and all-logloss ``w`` gives
exactly logloss. The mix then only redistributes logloss's gradient over examples.

``p`` enters the controller through ``stop_gradient``: the model learns from the losses, not by
steering the controller. The controller is trained by the search (``models.search.autoloss``)
and travels frozen in ``Architecture.loss``; ``keras_loss(spec)`` rebuilds it for the retrain.
There, ``"sample": false`` (the default) mixes by ``pi`` itself: the expectation of the
Gumbel-max hard choice, without its noise; ``"sample": true`` draws ``w`` as in the search.
The loss is used in training only: serving returns the model's probabilities unchanged.

Spec (``Architecture.loss``, plain JSON)::

    {"kind": "autoloss", "candidates": ["logloss", "mse", "squared_hinge", "focal"],
     "hidden_units": [16], "weights": [...controller weights as nested lists...],
     "temperature": 1.0, "sample": false, "momentum": 0.9, "focal_gamma": 2.0,
     "normalize": true}

Example:

>>> spec = default_spec()
>>> loss = keras_loss(spec)
>>> float(loss(tf.constant([[1.0]]), tf.constant([[0.8]]))) > 0
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from models.architecture import ArchitectureError

CANDIDATES = ("logloss", "mse", "squared_hinge", "focal")
NUM_FEATURES = 3  # the controller's input: [y, p, c]
EPSILON = 1e-7
SIGNAL_CLIP = 5.0
SPEC_DEFAULTS: dict[str, Any] = {"candidates": list(CANDIDATES), "hidden_units": [16],
                                 "temperature": 1.0, "sample": False, "momentum": 0.9,
                                 "focal_gamma": 2.0, "normalize": True}
SPEC_KEYS = {"kind", "weights", *SPEC_DEFAULTS}


def candidate_losses(y_true: tf.Tensor, y_pred: tf.Tensor, candidates: Sequence[str] = CANDIDATES,
                     focal_gamma: float = 2.0) -> tf.Tensor:
    """Per-example candidate losses: ``[B]`` (or ``[B, 1]``) labels and probabilities ->
    ``[B, K]``, column ``k`` being ``candidates[k]`` (equations in the module docstring)."""
    y = tf.reshape(tf.cast(y_true, tf.float32), [-1])
    p = tf.clip_by_value(tf.reshape(tf.cast(y_pred, tf.float32), [-1]), EPSILON, 1.0 - EPSILON)
    log_p, log_not_p = tf.math.log(p), tf.math.log(1.0 - p)
    p_t = y * p + (1.0 - y) * (1.0 - p)
    log_p_t = y * log_p + (1.0 - y) * log_not_p
    sign = 2.0 * y - 1.0
    losses = {
        "logloss": lambda: -log_p_t,
        "mse": lambda: tf.square(y - p),
        "squared_hinge": lambda: tf.square(tf.nn.relu(1.0 - sign * (log_p - log_not_p))),
        "focal": lambda: -tf.pow(1.0 - p_t, focal_gamma) * log_p_t,
    }
    return tf.stack([losses[name]() for name in candidates], axis=1)


def candidate_slopes(y_true: tf.Tensor, y_pred: tf.Tensor, candidates: Sequence[str] = CANDIDATES,
                     focal_gamma: float = 2.0) -> tf.Tensor:
    """Per-example ``|d l_k / d z|`` in the logit ``z`` (``[B, K]``, formulas in the module
    docstring): how hard each candidate pushes the example."""
    y = tf.reshape(tf.cast(y_true, tf.float32), [-1])
    p = tf.clip_by_value(tf.reshape(tf.cast(y_pred, tf.float32), [-1]), EPSILON, 1.0 - EPSILON)
    p_t = y * p + (1.0 - y) * (1.0 - p)
    error = 1.0 - p_t  # = |y - p|
    margin = (2.0 * y - 1.0) * (tf.math.log(p) - tf.math.log(1.0 - p))
    slopes = {
        "logloss": lambda: error,
        "mse": lambda: 2.0 * error * p * (1.0 - p),
        "squared_hinge": lambda: 2.0 * tf.nn.relu(1.0 - margin),
        "focal": lambda: tf.pow(error, focal_gamma) * (
            error - focal_gamma * p_t * tf.math.log(p_t)),
    }
    return tf.stack([slopes[name]() for name in candidates], axis=1)


def slope_normalizer(weights: tf.Tensor, slopes: tf.Tensor, logloss_slope: tf.Tensor) -> tf.Tensor:
    """``n = mean_i s_log,i / mean_i sum_k w_ik s_ik`` (a scalar; differentiable in ``w``)."""
    mixed = tf.reduce_mean(tf.reduce_sum(weights * slopes, axis=1))
    return tf.reduce_mean(logloss_slope) / (mixed + EPSILON)


def gumbel_softmax(log_probs: tf.Tensor, temperature: float | tf.Tensor,
                   uniform: tf.Tensor | None = None) -> tf.Tensor:
    """``softmax((log pi + g) / tau)`` with Gumbel noise ``g = -log(-log u)``, ``u ~ U(0, 1)``
    (``uniform`` fixes ``u``, for tests). Small ``tau``: near one-hot; large: near uniform."""
    if uniform is None:
        uniform = tf.random.uniform(tf.shape(log_probs), EPSILON, 1.0 - EPSILON)
    gumbel = -tf.math.log(-tf.math.log(uniform))
    return tf.nn.softmax((log_probs + gumbel) / temperature, axis=-1)


@keras.utils.register_keras_serializable(package="autorec")
class LossController(keras.layers.Layer):
    """AutoLoss's controller ``g_V``: per-example features -> probabilities over the losses.

    ``pi = softmax(W_L act(... act(W_1 x + b_1) ...) + b_L)`` with ``x = [y, p, c]`` (label,
    predicted probability, convergence signal; see the module docstring). The output layer
    starts at zero, so every candidate starts equally likely.

    Example:

    >>> controller = LossController(num_losses=4)
    >>> tuple(controller(tf.zeros([5, 3])).shape)
    (5, 4)

    Args:
      num_losses: number of candidate losses ``K`` (>= 2).
      hidden_units: widths of the hidden layers (each >= 1; ``[]``: a linear controller).
      activation: activation of the hidden layers.

    Input shape: ``[B, 3]``. Output shape: ``[B, K]`` probabilities (rows sum to 1).
    """

    def __init__(self, num_losses: int = len(CANDIDATES), hidden_units: Sequence[int] = (16,),
                 activation: str = "tanh", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(num_losses) < 2:
            raise ValueError(f"LossController needs num_losses >= 2. Received: "
                             f"num_losses={num_losses}")
        if any(int(u) < 1 for u in hidden_units):
            raise ValueError(f"LossController hidden_units must be >= 1. Received: "
                             f"hidden_units={list(hidden_units)}")
        self.num_losses = int(num_losses)
        self.hidden_units = [int(u) for u in hidden_units]
        self.activation = activation
        self.hidden = [keras.layers.Dense(u, activation=activation, name=f"hidden_{i}")
                       for i, u in enumerate(self.hidden_units)]
        self.output_layer = keras.layers.Dense(self.num_losses, kernel_initializer="zeros",
                                               name="loss_logits")

    def build(self, input_shape: Any) -> None:
        shape = tf.TensorShape(input_shape)
        if shape.rank != 2 or shape[-1] != NUM_FEATURES:
            raise ValueError(f"LossController expects [B, {NUM_FEATURES}] inputs [y, p, c]. "
                             f"Received: shape={shape}")
        for layer in self.hidden:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.output_layer.build(shape)
        super().build(input_shape)

    def log_probabilities(self, features: tf.Tensor) -> tf.Tensor:
        x = tf.cast(features, self.compute_dtype)
        for layer in self.hidden:
            x = layer(x)
        return tf.nn.log_softmax(self.output_layer(x), axis=-1)

    def call(self, features: tf.Tensor) -> tf.Tensor:
        return tf.exp(self.log_probabilities(features))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_losses": self.num_losses,
                "hidden_units": list(self.hidden_units), "activation": self.activation}


def controller_features(y_true: tf.Tensor, y_pred: tf.Tensor, logloss: tf.Tensor,
                        average: tf.Tensor) -> tf.Tensor:
    """``[y, p, c]`` per example; ``average`` is the running batch logloss ``m``."""
    y = tf.reshape(tf.cast(y_true, tf.float32), [-1])
    p = tf.reshape(tf.stop_gradient(tf.cast(y_pred, tf.float32)), [-1])
    signal = tf.math.log(tf.stop_gradient(logloss) + EPSILON) - tf.math.log(average + EPSILON)
    return tf.stack([y, p, tf.clip_by_value(signal, -SIGNAL_CLIP, SIGNAL_CLIP)], axis=1)


@keras.utils.register_keras_serializable(package="autorec")
class AutoLossMix(keras.losses.Loss):
    """The per-example loss ``sum_k w_k l_k(y, p)`` of a (frozen) ``LossController``.

    Keeps the running batch logloss ``m`` of the convergence signal in a variable: every batch
    the loss sees updates it (in ``fit`` that includes the validation batches, a few per epoch).

    Args:
      spec: an ``Architecture.loss`` of kind ``"autoloss"`` (``validate_spec`` checks it); its
        ``weights`` (``LossController.get_weights()`` as lists) are loaded into the controller.
    """

    def __init__(self, spec: dict[str, Any], name: str = "autoloss", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.spec = validate_spec(spec)
        self.candidates = list(self.spec["candidates"])
        self.controller = LossController(len(self.candidates), self.spec["hidden_units"],
                                         name="loss_controller", trainable=False)
        self.controller.build((None, NUM_FEATURES))
        if self.spec.get("weights") is not None:
            self.controller.set_weights([np.asarray(w, np.float32)
                                         for w in self.spec["weights"]])
        self.average = tf.Variable(-1.0, trainable=False, name="running_logloss",
                                   synchronization=tf.VariableSynchronization.ON_READ,
                                   aggregation=tf.VariableAggregation.MEAN)

    def weights_for(self, y_true: tf.Tensor, y_pred: tf.Tensor,
                    losses: tf.Tensor) -> tf.Tensor:
        """``w`` (``[B, K]``) for these examples; updates the running logloss."""
        logloss = losses[:, self.candidates.index("logloss")] if "logloss" in self.candidates \
            else candidate_losses(y_true, y_pred, ["logloss"])[:, 0]
        batch = tf.reduce_mean(tf.stop_gradient(logloss))
        previous = tf.where(self.average < 0.0, batch, self.average)
        momentum = float(self.spec["momentum"])
        self.average.assign(momentum * previous + (1.0 - momentum) * batch)
        features = controller_features(y_true, y_pred, logloss, previous)
        if self.spec["sample"]:
            return gumbel_softmax(self.controller.log_probabilities(features),
                                  float(self.spec["temperature"]))
        return self.controller(features)

    def mixed(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Per-example ``L_i`` (``[B]``) and the weights ``w`` used (``[B, K]``)."""
        gamma = self.spec["focal_gamma"]
        losses = candidate_losses(y_true, y_pred, self.candidates, gamma)
        weights = tf.stop_gradient(self.weights_for(y_true, y_pred, losses))
        slopes = tf.stop_gradient(candidate_slopes(y_true, y_pred, self.candidates, gamma))
        logloss_slope = candidate_slopes(y_true, y_pred, ["logloss"])[:, 0]
        scale = tf.stop_gradient(slope_normalizer(weights, slopes, logloss_slope)) \
            if self.spec["normalize"] else 1.0
        return scale * tf.reduce_sum(weights * losses, axis=1), weights

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        return self.mixed(y_true, y_pred)[0]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "spec": self.spec}


def validate_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` completed with ``SPEC_DEFAULTS``; raises ``ArchitectureError`` naming the bad
    key."""
    if not isinstance(spec, dict) or spec.get("kind") != "autoloss":
        raise ArchitectureError(f"loss: an autoloss spec needs kind 'autoloss'. "
                                f"Received: loss={spec!r:.200}")
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise ArchitectureError(f"loss: unknown autoloss keys {unknown}; known: "
                                f"{sorted(SPEC_KEYS)}.")
    full = {**SPEC_DEFAULTS, **spec}
    candidates = list(full["candidates"])
    if len(candidates) < 2 or len(set(candidates)) != len(candidates) or not set(
            candidates) <= set(CANDIDATES):
        raise ArchitectureError(f"loss.candidates must be >= 2 distinct names of {CANDIDATES}. "
                                f"Received: candidates={candidates}")
    if not float(full["temperature"]) > 0:
        raise ArchitectureError(f"loss.temperature must be > 0. "
                                f"Received: temperature={full['temperature']}")
    if not 0.0 <= float(full["momentum"]) < 1.0:
        raise ArchitectureError(f"loss.momentum must be in [0, 1). "
                                f"Received: momentum={full['momentum']}")
    if float(full["focal_gamma"]) < 0:
        raise ArchitectureError(f"loss.focal_gamma must be >= 0. "
                                f"Received: focal_gamma={full['focal_gamma']}")
    for key in ("sample", "normalize"):
        if not isinstance(full[key], bool):
            raise ArchitectureError(f"loss.{key} must be true or false. "
                                    f"Received: {key}={full[key]!r}")
    weights = full.get("weights")
    if weights is not None:
        shapes = [np.shape(w) for w in weights]
        expected = _weight_shapes(len(candidates), full["hidden_units"])
        if shapes != expected:
            raise ArchitectureError(f"loss.weights do not fit a controller {NUM_FEATURES} -> "
                                    f"{full['hidden_units']} -> {len(candidates)}: expected "
                                    f"shapes {expected}. Received: {shapes}")
    return full


def _weight_shapes(num_losses: int, hidden_units: Sequence[int]) -> list[tuple[int, ...]]:
    sizes = [NUM_FEATURES, *[int(u) for u in hidden_units], num_losses]
    return [s for a, b in zip(sizes, sizes[1:], strict=False) for s in ((a, b), (b,))]


def default_spec(**overrides: Any) -> dict[str, Any]:
    """An untrained (uniform) controller's spec, with ``overrides``."""
    return {"kind": "autoloss", **SPEC_DEFAULTS, **overrides}


def spec_from_controller(controller: LossController, candidates: Sequence[str],
                         **settings: Any) -> dict[str, Any]:
    """The plain-JSON spec of a trained controller (weights as nested lists)."""
    spec = default_spec(candidates=list(candidates), hidden_units=list(controller.hidden_units),
                        weights=[w.tolist() for w in controller.get_weights()], **settings)
    return validate_spec(spec)


def keras_loss(spec: dict[str, Any]) -> keras.losses.Loss:
    """The tf_keras loss of an ``autoloss`` spec (``models.losses.training_loss``)."""
    return AutoLossMix(spec)


def describe(spec: dict[str, Any]) -> str:
    """E.g. ``autoloss(logloss, mse, squared_hinge, focal; controller 3-16-4, expected mix)``."""
    full = validate_spec(spec)
    sizes = "-".join(str(s) for s in [NUM_FEATURES, *full["hidden_units"],
                                      len(full["candidates"])])
    mix = f"Gumbel tau={full['temperature']:g}" if full["sample"] else "expected mix"
    trained = "" if full.get("weights") is not None else ", untrained"
    return f"autoloss({', '.join(full['candidates'])}; controller {sizes}, {mix}{trained})"
