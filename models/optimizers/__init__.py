"""Optimizers that the Keras library lacks (e.g. GRDA, which AutoFIS trains its gates with)."""

from models.optimizers.grda import GRDA

__all__ = ["GRDA"]
