"""Training losses an ``Architecture`` names: logloss by default, or a learned one.

``Architecture.loss`` is ``None`` (binary cross-entropy for CTR models, BPR for ``mf``) or a
plain-JSON spec ``{"kind": KIND, ...}`` that the module registered for ``KIND`` in ``LOSSES``
turns into a tf_keras loss. Such a module exposes::

    def keras_loss(spec: dict) -> keras.losses.Loss   # per-example loss, reduced by Keras
    def describe(spec: dict) -> str                   # a human-readable formula / summary

The loss is used in training only; serving is unchanged (the exported model returns
probabilities whatever loss trained it).

Example:

>>> training_loss(None).name
'binary_crossentropy'
"""

from __future__ import annotations

import importlib
from typing import Any

import tf_keras as keras

from models.architecture import ArchitectureError

# Loss kind -> module (imported on use). Every kind of ``models.architecture.LOSS_KINDS``.
LOSSES: dict[str, str] = {
    "autoloss": "models.losses.autoloss",
    "autolossgen": "models.losses.formula",
}


def loss_module(kind: str) -> Any:
    if kind not in LOSSES:
        raise ArchitectureError(f"Unknown loss kind {kind!r}; known: {sorted(LOSSES)}.")
    return importlib.import_module(LOSSES[kind])


def training_loss(spec: dict | None) -> keras.losses.Loss:
    """The tf_keras loss for ``Architecture.loss`` (``None``: binary cross-entropy)."""
    if spec is None:
        return keras.losses.BinaryCrossentropy()
    return loss_module(spec["kind"]).keras_loss(spec)


def describe_loss(spec: dict | None) -> str:
    """A readable name of the loss (``"logloss"`` when ``spec`` is ``None``)."""
    if spec is None:
        return "logloss"
    return loss_module(spec["kind"]).describe(spec)
