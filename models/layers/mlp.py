"""A multi-layer perceptron: the deep tower of DeepFM, DCN and plain DNN models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf
import tf_keras as keras

# Moving-average momentum of batch norm. Keras' default 0.99 needs hundreds of steps before the
# inference statistics are usable; CTR datasets of ~50k rows give ~13 steps an epoch at batch
# 4096, so validation sees badly calibrated outputs for many epochs. 0.9 is PyTorch's default.
BATCH_NORM_MOMENTUM = 0.9

@keras.utils.register_keras_serializable(package="autorec")
class MLP(keras.layers.Layer):
    """A stack of fully connected blocks.

    Equation, per block ``l = 1..L`` with ``h_0 = x``::

        h_l = Dropout_p( act( BN( W_l h_{l-1} + b_l ) ) )

    BN only when ``batch_norm`` (then ``b_l`` is dropped, BN's shift replaces it). This is the
    "deep component" of Wide & Deep (Cheng et al., DLRS 2016) and DeepFM (Guo et al., IJCAI
    2017, Sec. 2.1). With no hidden units the block is the identity.

    Example:

    >>> tuple(MLP([8, 4], dropout=0.1)(tf.ones([3, 5])).shape)
    (3, 4)

    Args:
      hidden_units: width of each block, in order; each >= 1.
      activation: activation after each block (name or callable).
      dropout: dropout rate in ``[0, 1)`` after each block, during training only.
      batch_norm: whether to batch-normalise each block's pre-activation.
      l2: L2 strength on the kernels; 0 adds no loss.
      kernel_initializer: initializer of the kernels (cloned per block).

    Input shape: ``[B, n]``.
    Output shape: ``[B, hidden_units[-1]]``, or ``[B, n]`` with no hidden units.
    """

    def __init__(self, hidden_units: Sequence[int], activation: Any = "relu",
                 dropout: float = 0.0, batch_norm: bool = False, l2: float = 0.0,
                 kernel_initializer: Any = "glorot_uniform", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hidden_units = [int(units) for units in hidden_units]
        if any(units < 1 for units in self.hidden_units):
            raise ValueError(f"Every hidden layer needs >= 1 unit. "
                             f"Received: hidden_units={list(hidden_units)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout}")
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0. Received: l2={l2}")
        self.activation = keras.activations.get(activation)
        self.dropout = float(dropout)
        self.batch_norm = bool(batch_norm)
        self.l2 = float(l2)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.blocks: list[keras.layers.Layer] = []

    def build(self, input_shape: Any) -> None:
        regularizer = keras.regularizers.L2(self.l2) if self.l2 > 0 else None
        for index, units in enumerate(self.hidden_units):
            initializer = self.kernel_initializer.__class__.from_config(
                self.kernel_initializer.get_config())
            self.blocks.append(keras.layers.Dense(
                units, use_bias=not self.batch_norm, kernel_initializer=initializer,
                kernel_regularizer=regularizer, dtype=self.dtype_policy, name=f"dense_{index}"))
            if self.batch_norm:
                self.blocks.append(keras.layers.BatchNormalization(
                    momentum=BATCH_NORM_MOMENTUM, dtype=self.dtype_policy,
                    name=f"batch_norm_{index}"))
            self.blocks.append(keras.layers.Activation(
                self.activation, dtype=self.dtype_policy, name=f"activation_{index}"))
            if self.dropout > 0:
                self.blocks.append(keras.layers.Dropout(
                    self.dropout, dtype=self.dtype_policy, name=f"dropout_{index}"))
        shape = tf.TensorShape(input_shape)
        for block in self.blocks:
            block.build(shape)
            shape = block.compute_output_shape(shape)
        super().build(input_shape)

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        hidden = tf.cast(inputs, self.compute_dtype)
        for block in self.blocks:
            hidden = block(hidden, training=training)
        return hidden

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "hidden_units": list(self.hidden_units),
            "activation": keras.activations.serialize(self.activation),
            "dropout": self.dropout,
            "batch_norm": self.batch_norm,
            "l2": self.l2,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }
