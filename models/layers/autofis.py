"""AutoFIS: field interactions behind batch-normalised trainable gates, one per interaction."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import tensorflow as tf
import tf_keras as keras

GATE_INIT = 0.6  # the official code's ``weight_base``


@keras.utils.register_keras_serializable(package="autorec")
class GatedInteraction(keras.layers.Layer):
    """Gated pairwise (and optionally third-order) field interactions of AutoFIS.

    Reference: Bin Liu, Chenxu Zhu, Guilin Li, Weinan Zhang, Jincai Lai, Ruiming Tang, Xiuqiang
    He, Zhenguo Li, Yong Yu, "AutoFIS: Automatic Feature Interaction Selection in Factorization
    Models for Click-Through Rate Prediction", KDD 2020 (arXiv 2003.11235), Eq. 5-8; official
    code ``zhuchenxv/AutoFIS`` (``tf_models.py``).

    Equations, over field embeddings ``e_1 .. e_F`` and the interactions ``S`` (every pair
    ``i < j``, plus every triple ``i < j < k`` with ``third_order``, or a kept subset)::

        p_(i,j)   = <e_i, e_j>
        p_(i,j,k) = sum_d e_{i,d} e_{j,d} e_{k,d}
        y         = sum_{s in S} alpha_s BN(p_s)

    ``BN`` is batch normalisation per interaction without scale and shift (``center=False,
    scale=False``): it decouples a gate ``alpha_s`` from the size of the embeddings, so gates are
    comparable across interactions. In the search stage a sparse optimizer (``GRDA``) drives
    many ``alpha_s`` to exactly 0; ``derive()`` returns the rest. In the retrain stage the layer
    is built over the kept interactions only, with fresh gates trained as attention units.
    Third-order terms reuse the pairwise embeddings (the official code uses a second table).

    Example:

    >>> layer = GatedInteraction()
    >>> y = layer(tf.random.normal([4, 3, 2]), training=True)
    >>> tuple(y.shape), layer.interactions, layer.derive()
    ((4, 1), [(0, 1), (0, 2), (1, 2)], [(0, 1), (0, 2), (1, 2)])

    Args:
      interactions: field index tuples (pairs ``(i, j)`` or triples ``(i, j, k)``, distinct
        indices, each set at most once) to gate; ``None`` gates every pair (and every triple with
        ``third_order``); ``[]`` gates none (the output is then zero).
      third_order: with ``interactions=None``, also gate every triple of fields.
      gate_init: initial value of every gate (official: 0.6).
      epsilon: the batch normalisation's variance epsilon.
      momentum: the batch normalisation's moving-average momentum.

    Input shape: ``[B, F, D]`` field embeddings (see ``stack_embeddings``).
    Output shape: ``[B, 1]``.
    """

    def __init__(self, interactions: Sequence[Sequence[int]] | None = None,
                 third_order: bool = False, gate_init: float = GATE_INIT,
                 epsilon: float = 1e-3, momentum: float = 0.99, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if interactions is not None and third_order:
            raise ValueError(f"third_order applies to interactions=None only; list the triples "
                             f"in interactions instead. Received: third_order={third_order}, "
                             f"interactions={[list(s) for s in interactions]}")
        self.requested: list[tuple[int, ...]] | None = None
        if interactions is not None:
            self.requested = _check_interactions(interactions)
        self.third_order = bool(third_order)
        self.gate_init = float(gate_init)
        self.epsilon = float(epsilon)
        self.momentum = float(momentum)
        self.interactions: list[tuple[int, ...]] = list(self.requested or [])
        self.batch_norm = keras.layers.BatchNormalization(
            center=False, scale=False, epsilon=epsilon, momentum=momentum, name="batch_norm")

    def build(self, input_shape: Any) -> None:
        shape = tf.TensorShape(input_shape)
        if shape.rank != 3 or shape[1] is None:
            raise ValueError(f"GatedInteraction expects [B, F, D] inputs with a known F. "
                             f"Received: shape={shape}")
        num_fields = int(shape[1])
        if self.requested is None:
            self.interactions = list(itertools.combinations(range(num_fields), 2))
            if self.third_order:
                self.interactions += list(itertools.combinations(range(num_fields), 3))
        elif self.interactions and max(max(s) for s in self.interactions) >= num_fields:
            raise ValueError(f"interactions name field {max(max(s) for s in self.interactions)}"
                             f", but the input has {num_fields} fields. "
                             f"Received: interactions={self.interactions}")
        self.gates = self.add_weight(
            name="gates", shape=[len(self.interactions)],
            initializer=keras.initializers.Constant(self.gate_init), trainable=True)
        if self.interactions:
            self.batch_norm.build(tf.TensorShape([None, len(self.interactions)]))
        super().build(input_shape)

    def interaction_terms(self, inputs: tf.Tensor) -> tf.Tensor:
        """``[B, |S|]`` raw interaction values ``p_s`` (before batch norm and gates)."""
        embeddings = tf.cast(inputs, self.compute_dtype)
        terms = []
        for order in (2, 3):
            chosen = [s for s in self.interactions if len(s) == order]
            if not chosen:
                continue
            product = tf.gather(embeddings, [s[0] for s in chosen], axis=1)
            for position in range(1, order):
                product *= tf.gather(embeddings, [s[position] for s in chosen], axis=1)
            terms.append(tf.reduce_sum(product, axis=2))
        # Terms come out pairs first, then triples: the order of ``self.interactions``, whose
        # pairs precede its triples (``_check_interactions``).
        return tf.concat(terms, axis=1)

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        if not self.interactions:
            return tf.zeros_like(tf.cast(inputs, self.compute_dtype)[:, 0, :1])
        normed = self.batch_norm(self.interaction_terms(inputs), training=training)
        gates = tf.cast(self.gates, self.compute_dtype)
        return tf.reduce_sum(normed * gates, axis=1, keepdims=True)

    def derive(self) -> list[tuple[int, ...]]:
        """The interactions whose gate is not exactly zero, in ``interactions`` order."""
        values = self.gates.numpy()
        return [s for s, gate in zip(self.interactions, values, strict=True) if gate != 0.0]

    def get_config(self) -> dict[str, Any]:
        requested = None if self.requested is None else [list(s) for s in self.requested]
        return {**super().get_config(), "interactions": requested,
                "third_order": self.third_order, "gate_init": self.gate_init,
                "epsilon": self.epsilon, "momentum": self.momentum}


def _check_interactions(interactions: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Validated index tuples, pairs first then triples, each in the order given."""
    checked: list[tuple[int, ...]] = []
    seen: set[frozenset[int]] = set()
    for item in interactions:
        indices = tuple(int(i) for i in item)
        if len(indices) not in (2, 3) or min(indices) < 0 or len(set(indices)) != len(indices):
            raise ValueError(f"Each interaction needs 2 or 3 distinct non-negative field indices."
                             f" Received: interaction={list(item)}")
        if frozenset(indices) in seen:
            raise ValueError(f"interactions holds {list(indices)} twice. "
                             f"Received: interactions={[list(s) for s in interactions]}")
        seen.add(frozenset(indices))
        checked.append(indices)
    return sorted(checked, key=len)
