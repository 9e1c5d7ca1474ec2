"""Models assembled from ``models.layers``, each built from an ``Architecture``."""

from models.zoo.ctr import (
    LOGIT_LAYER,
    PROBABILITY_LAYER,
    build_ctr_model,
    model_input_dtypes,
    model_input_names,
    model_input_specs,
)
from models.zoo.mf import MatrixFactorization, bpr_loss

__all__ = [
    "LOGIT_LAYER",
    "MatrixFactorization",
    "PROBABILITY_LAYER",
    "bpr_loss",
    "build_ctr_model",
    "model_input_dtypes",
    "model_input_names",
    "model_input_specs",
]
