"""GRDA: generalized regularized dual averaging, an optimizer whose solutions are exactly sparse."""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras as keras


@keras.utils.register_keras_serializable(package="autorec")
class GRDA(keras.optimizers.Optimizer):
    """Generalized regularized dual averaging (Chao and Cheng, 2019), as AutoFIS trains its gates.

    Reference: Shih-Kang Chao, Guang Cheng, "A generalization of regularized dual averaging and
    its dynamics", arXiv 1909.10072; used for the architecture parameters of AutoFIS (Liu et al.,
    KDD 2020, Eq. 9-10; official ``grda_tensorflow.py``).

    Update at step ``t = 0, 1, ...`` (``t`` = ``iterations`` before the step), learning rate
    ``gamma``::

        v_t     = v_{t-1} + 1[t = 0] theta_0 - gamma g_t            (v_{-1} = 0)
        l1(t)   = c gamma^(1/2 + mu) t^mu
        theta_t = sign(v_t) max(|v_t| - l1(t), 0)

    The accumulator ``v`` sums all gradient steps from the initial value; the soft threshold
    ``l1(t)`` grows with ``t``, so a weight whose accumulated gradient does not keep pace with
    it becomes exactly zero. ``l1(t)`` is the closed form of the official code's increments
    ``c gamma^(1/2 + mu) ((t + 1)^mu - t^mu)`` (equal for a constant ``gamma``).

    Example:

    >>> gate = tf.Variable([0.6, 0.6])
    >>> opt = GRDA(learning_rate=1.0, c=0.5, mu=0.5)
    >>> for _ in range(3):
    ...     _ = opt.apply_gradients([(tf.constant([-0.1, 0.0]), gate)])
    >>> [round(float(x), 4) for x in gate.numpy()]
    [0.1929, 0.0]

    Args:
      learning_rate: ``gamma`` > 0 (AutoFIS: 1.0), a float or a schedule.
      c: ``c`` >= 0, the strength of the growing L1 threshold (AutoFIS: 0.005 for FM, 0.0005
        for DeepFM).
      mu: ``mu`` in ``[0, 1)``, how fast the threshold grows with ``t`` (AutoFIS: 0.6 for FM,
        0.8 for DeepFM).
      name: the optimizer's name.
      **kwargs: the base optimizer's arguments (``clipnorm``, ``jit_compile``, ...).
    """

    def __init__(self, learning_rate: float | Any = 1.0, c: float = 0.005, mu: float = 0.6,
                 name: str = "GRDA", **kwargs: Any) -> None:
        if not isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule) and \
                not float(learning_rate) > 0:
            raise ValueError(f"learning_rate must be > 0. Received: learning_rate="
                             f"{learning_rate}")
        if not c >= 0:
            raise ValueError(f"c must be >= 0. Received: c={c}")
        if not 0 <= mu < 1:
            raise ValueError(f"mu must be in [0, 1). Received: mu={mu}")
        kwargs.setdefault("jit_compile", False)
        super().__init__(name=name, **kwargs)
        self._learning_rate = self._build_learning_rate(learning_rate)
        self.c = float(c)
        self.mu = float(mu)

    def build(self, var_list: list[tf.Variable]) -> None:
        super().build(var_list)
        if getattr(self, "_built", False):
            return
        self._built = True
        self._accumulators = [self.add_variable_from_reference(var, "accumulator")
                              for var in var_list]

    def update_step(self, gradient: tf.Tensor, variable: tf.Variable) -> None:
        dtype = variable.dtype
        lr = tf.cast(self.learning_rate, dtype)
        step = tf.cast(self.iterations, dtype)
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.convert_to_tensor(gradient)
        accumulator = self._accumulators[self._index_dict[self._var_key(variable)]]
        first = tf.cast(tf.equal(self.iterations, 0), dtype)
        accumulator.assign_add(first * variable - lr * tf.cast(gradient, dtype))
        threshold = self.c * tf.pow(lr, 0.5 + self.mu) * tf.pow(step, self.mu)
        variable.assign(tf.sign(accumulator) * tf.nn.relu(tf.abs(accumulator) - threshold))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(),
                "learning_rate": self._serialize_hyperparameter(self._learning_rate),
                "c": self.c, "mu": self.mu}
