"""AutoGroup: order-p interactions of learned feature sets (Gumbel-softmax membership)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

STRUCTURE_INIT_RANGE = 1e-3  # Vega: structure logits ~ U(-0.001, 0.001)
GUMBEL_EPSILON = 1e-20


@keras.utils.register_keras_serializable(package="autorec")
class FeatureGroupInteraction(keras.layers.Layer):
    """The order-``p`` interactions of ``G`` feature sets, searched or fixed (AutoGroup).

    Reference: Bin Liu, Niannan Xue, Huifeng Guo, Ruiming Tang, Stefanos Zafeiriou, Xiuqiang
    He, Zhenguo Li, "AutoGroup: Automatic Feature Grouping for Modelling Explicit High-Order
    Feature Interactions in CTR Prediction", SIGIR 2020 (DOI 10.1145/3397271.3401082); the
    author organisation's code is Huawei Vega's ``FeatureGroupLayer`` (``fis/layers.py``).

    Equations, over the (batch-normalised, no scale or shift) field embeddings ``e_1 .. e_F``
    of this order, a membership ``c_ij in {0, 1}`` of field ``i`` in set ``j`` and a learned
    weight ``w_ij`` per (field, set)::

        g_j   = sum_i c_ij w_ij e_i                                   (set representation)
        I_j   = sum_d [ g_{j,d}^p - lambda_c sum_i (c_ij w_ij e_{i,d})^p ]   for p >= 2
        I_j   = g_j                                                   for p = 1

    Powers are element-wise. For ``p = 2`` and ``lambda_c = 1`` this is an FM inside set
    ``j``: ``I_j = 2 sum_{i < k in j} w_ij w_kj <e_i, e_k>``. Searching (``num_groups``): the
    membership is a straight-through Gumbel-softmax over {in, out} per (field, set)::

        y_ij = softmax((pi_ij + noise_scale * gumbel) / tau)        pi_ij in R^2
        c_ij = onehot(argmax y_ij)[in] + y_ij[in] - stop_gradient(y_ij[in])

    ``noise_scale`` (0 or 1) and ``tau`` are non-trainable variables that the search sets
    (Vega: noise only in the structure step, ``tau`` 0.01). ``derive()`` returns the hard sets
    ``{i : pi_ij[in] > pi_ij[out]}``. Fixed (``groups``): ``c`` is the 0/1 matrix of the given
    sets, and only ``w`` (and the embeddings) are trained. Vega's ``lambda_c`` is 0.01; the
    default 1 removes the self-interaction terms fully, as in the equation above.

    Example:

    >>> layer = FeatureGroupInteraction(order=2, groups=[[0, 1], [1, 2]])
    >>> tuple(layer(tf.random.normal([4, 3, 5])).shape)
    (4, 2)
    >>> tuple(FeatureGroupInteraction(order=1, num_groups=3)(tf.ones([4, 3, 5])).shape)
    (4, 15)

    Args:
      order: the interaction order ``p >= 1``.
      num_groups: searching mode: the number of sets ``G``, each over every field.
      groups: fixed mode: the sets as lists of field indices (distinct, non-empty; at least 2
        fields for ``p >= 2``, whose single-field interaction is 0). Give exactly one of
        ``num_groups`` and ``groups``.
      temperature: the initial Gumbel-softmax temperature ``tau`` (searching mode).
      compensation: ``lambda_c``, the share of the self-interaction terms removed.
      batch_norm: batch-normalise the flattened ``[B, F * D]`` embeddings (no scale or shift).
      momentum, epsilon: the batch normalisation's moving-average momentum and epsilon.
      weights_initializer: initializer of ``w`` (Vega: Xavier uniform).

    Input shape: ``[B, F, D]`` field embeddings.
    Output shape: ``[B, G * D]`` for ``p = 1`` (the set vectors ``g_j`` side by side), else
    ``[B, G]``.
    """

    def __init__(self, order: int, num_groups: int | None = None,
                 groups: Sequence[Sequence[int]] | None = None, temperature: float = 1.0,
                 compensation: float = 1.0, batch_norm: bool = True, momentum: float = 0.9,
                 epsilon: float = 1e-3, weights_initializer: Any = "glorot_uniform",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(order) < 1:
            raise ValueError(f"order must be >= 1. Received: order={order}")
        self.order = int(order)
        if (num_groups is None) == (groups is None):
            raise ValueError(f"Give exactly one of num_groups (search) and groups (fixed sets). "
                             f"Received: num_groups={num_groups}, groups={groups}")
        if num_groups is not None and int(num_groups) < 1:
            raise ValueError(f"num_groups must be >= 1. Received: num_groups={num_groups}")
        self.groups = None if groups is None else _check_groups(groups, self.order)
        self.num_groups = int(num_groups) if groups is None else len(self.groups)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0. Received: temperature={temperature}")
        self.initial_temperature = float(temperature)
        if not 0.0 <= compensation <= 1.0:
            raise ValueError(f"compensation must be in [0, 1]. Received: "
                             f"compensation={compensation}")
        self.compensation = float(compensation)
        self.use_batch_norm = bool(batch_norm)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.weights_initializer = keras.initializers.get(weights_initializer)
        self.batch_norm = None
        if self.use_batch_norm:
            self.batch_norm = keras.layers.BatchNormalization(
                center=False, scale=False, momentum=momentum, epsilon=epsilon, name="batch_norm")

    @property
    def searching(self) -> bool:
        return self.groups is None

    def build(self, input_shape: Any) -> None:
        shape = tf.TensorShape(input_shape)
        if shape.rank != 3 or shape[1] is None or shape[2] is None:
            raise ValueError(f"FeatureGroupInteraction expects [B, F, D] inputs with known F and "
                             f"D. Received: shape={shape}")
        self.num_fields, self.dim = int(shape[1]), int(shape[2])
        if self.groups and max(max(g) for g in self.groups) >= self.num_fields:
            raise ValueError(f"groups name field {max(max(g) for g in self.groups)}, but the "
                             f"input has {self.num_fields} fields. Received: groups={self.groups}")
        self.group_weights = self.add_weight(
            name="group_weights", shape=[self.num_fields, self.num_groups],
            initializer=self.weights_initializer, trainable=True)
        if self.searching:
            self.structure_logits = self.add_weight(
                name="structure_logits", shape=[self.num_fields, self.num_groups, 2],
                initializer=keras.initializers.RandomUniform(-STRUCTURE_INIT_RANGE,
                                                             STRUCTURE_INIT_RANGE),
                trainable=True)
            self.temperature = self.add_weight(
                name="temperature", shape=[],
                initializer=keras.initializers.Constant(self.initial_temperature),
                trainable=False)
            self.noise_scale = self.add_weight(name="noise_scale", shape=[],
                                               initializer="zeros", trainable=False)
        else:
            mask = np.zeros([self.num_fields, self.num_groups], np.float32)
            for j, group in enumerate(self.groups):
                mask[group, j] = 1.0
            self.fixed_membership = tf.constant(mask)
        if self.batch_norm is not None:
            self.batch_norm.build(tf.TensorShape([None, self.num_fields * self.dim]))
        super().build(input_shape)

    def membership(self) -> tf.Tensor:
        """``[F, G]`` membership ``c``: the fixed 0/1 sets, or the straight-through sample."""
        if not self.searching:
            return tf.cast(self.fixed_membership, self.compute_dtype)
        uniform = tf.random.uniform(tf.shape(self.structure_logits), dtype=self.compute_dtype)
        gumbel = -tf.math.log(-tf.math.log(uniform + GUMBEL_EPSILON) + GUMBEL_EPSILON)
        logits = (tf.cast(self.structure_logits, self.compute_dtype)
                  + tf.cast(self.noise_scale, self.compute_dtype) * gumbel)
        soft = tf.nn.softmax(logits / tf.cast(self.temperature, self.compute_dtype), axis=-1)
        hard = tf.one_hot(tf.argmax(soft, axis=-1), 2, dtype=self.compute_dtype)
        return (soft + tf.stop_gradient(hard - soft))[..., 0]

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        embeddings = tf.cast(inputs, self.compute_dtype)
        if self.batch_norm is not None:
            flat = tf.reshape(embeddings, [-1, self.num_fields * self.dim])
            embeddings = tf.reshape(self.batch_norm(flat, training=training),
                                    [-1, self.num_fields, self.dim])
        weights = self.membership() * tf.cast(self.group_weights, self.compute_dtype)
        sets = tf.einsum("bfd,fg->bdg", embeddings, weights)  # g_j, [B, D, G]
        if self.order == 1:
            return tf.reshape(tf.transpose(sets, [0, 2, 1]), [-1, self.num_groups * self.dim])
        self_terms = tf.einsum("bfd,fg->bdg", tf.pow(embeddings, self.order),
                               tf.pow(weights, self.order))
        return tf.reduce_sum(tf.pow(sets, self.order) - self.compensation * self_terms, axis=1)

    def membership_probabilities(self) -> np.ndarray:
        """``[F, G]`` ``softmax(pi)[in]`` at temperature 1 (searching), or the fixed 0/1 sets."""
        if not self.searching:
            return self.fixed_membership.numpy()
        return tf.nn.softmax(self.structure_logits, axis=-1).numpy()[..., 0]

    def derive(self) -> list[list[int]]:
        """The hard sets: per set, the fields whose "in" logit beats "out" (may be empty)."""
        if not self.searching:
            return [list(g) for g in self.groups]
        logits = self.structure_logits.numpy()
        inside = logits[..., 0] > logits[..., 1]
        return [np.flatnonzero(inside[:, j]).tolist() for j in range(self.num_groups)]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "order": self.order,
                "num_groups": self.num_groups if self.searching else None,
                "groups": None if self.groups is None else [list(g) for g in self.groups],
                "temperature": self.initial_temperature, "compensation": self.compensation,
                "batch_norm": self.use_batch_norm, "momentum": self.momentum,
                "epsilon": self.epsilon,
                "weights_initializer": keras.initializers.serialize(self.weights_initializer)}


def _check_groups(groups: Sequence[Sequence[int]], order: int) -> list[list[int]]:
    checked = []
    smallest = 1 if order == 1 else 2
    for group in groups:
        indices = [int(i) for i in group]
        if len(indices) < smallest or len(set(indices)) != len(indices) or min(indices) < 0:
            raise ValueError(f"Each set of order {order} needs at least {smallest} distinct "
                             f"non-negative field indices. Received: group={list(group)}")
        checked.append(indices)
    if not checked:
        raise ValueError("groups must hold at least one set. Received: groups=[]")
    return checked
