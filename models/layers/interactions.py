"""Second-order feature interactions over stacked field embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf
import tf_keras as keras


@keras.utils.register_keras_serializable(package="autorec")
class FMInteraction(keras.layers.Layer):
    """The factorization machine's pairwise term, over all field pairs or a kept subset.

    Equation (Rendle, "Factorization Machines", ICDM 2010, Eq. 1 and Lemma 3.1)::

        y_fm = sum_{i < j} <v_i, v_j>
             = 1/2 * sum_k [ (sum_i v_{i,k})^2 - sum_i v_{i,k}^2 ]

    The right-hand side costs ``O(F D)`` and is used when every pair is kept. With ``pair_mask``
    (the kept pairs ``P``, e.g. the interactions AutoFIS keeps, Liu et al., KDD 2020) the sum runs
    over ``P`` only, computed directly by gathering both sides of each pair::

        y_fm = sum_{(i, j) in P} <v_i, v_j>

    Example:

    >>> v = tf.random.normal([2, 3, 4])
    >>> tuple(FMInteraction()(v).shape), tuple(FMInteraction(pair_mask=[(0, 2)])(v).shape)
    ((2, 1), (2, 1))

    Args:
      pair_mask: kept field index pairs ``(i, j)``, ``i != j``, each unordered pair at most
        once; ``None`` keeps all pairs, ``[]`` keeps none (the output is then zero).

    Input shape: ``[B, F, D]`` field embeddings (see ``stack_embeddings``).
    Output shape: ``[B, 1]``.
    """

    def __init__(self, pair_mask: Sequence[Sequence[int]] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pair_mask: list[tuple[int, int]] | None = None
        if pair_mask is not None:
            pairs: list[tuple[int, int]] = []
            for pair in pair_mask:
                if len(pair) != 2:
                    raise ValueError(f"Each pair in pair_mask must have two field indices. "
                                     f"Received: pair={list(pair)}")
                i, j = int(pair[0]), int(pair[1])
                if i < 0 or j < 0 or i == j:
                    raise ValueError(f"A pair needs two distinct non-negative field indices. "
                                     f"Received: pair={[i, j]}")
                if (i, j) in pairs or (j, i) in pairs:
                    raise ValueError(f"pair_mask holds the pair {[i, j]} twice. "
                                     f"Received: pair_mask={[list(p) for p in pair_mask]}")
                pairs.append((i, j))
            self.pair_mask = pairs

    def build(self, input_shape: Any) -> None:
        shape = tf.TensorShape(input_shape)
        if shape.rank != 3:
            raise ValueError(f"FMInteraction expects [B, F, D] inputs. Received: shape={shape}")
        num_fields = shape[1]
        if self.pair_mask and num_fields is not None:
            largest = max(max(pair) for pair in self.pair_mask)
            if largest >= num_fields:
                raise ValueError(f"pair_mask names field {largest}, but the input has "
                                 f"{num_fields} fields. Received: pair_mask={self.pair_mask}")
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        embeddings = tf.cast(inputs, self.compute_dtype)
        if self.pair_mask is None:
            sum_then_square = tf.square(tf.reduce_sum(embeddings, axis=1))
            square_then_sum = tf.reduce_sum(tf.square(embeddings), axis=1)
            return 0.5 * tf.reduce_sum(sum_then_square - square_then_sum, axis=1, keepdims=True)
        if not self.pair_mask:
            return tf.zeros_like(embeddings[:, 0, :1])
        left = tf.gather(embeddings, [i for i, _ in self.pair_mask], axis=1)
        right = tf.gather(embeddings, [j for _, j in self.pair_mask], axis=1)
        return tf.reduce_sum(left * right, axis=[1, 2])[:, tf.newaxis]

    def get_config(self) -> dict[str, Any]:
        pairs = None if self.pair_mask is None else [list(pair) for pair in self.pair_mask]
        return {**super().get_config(), "pair_mask": pairs}
