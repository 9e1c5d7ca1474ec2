"""Feature names shared by Transform, Trainer, Tuner, the bench and the serving signatures.

Transform turns each raw field into a fixed set of transformed features:

* categorical ``f``  -> ``f_id``     int64 id in [0, vocab + OOV), ordered by train frequency
* numerical ``f``    -> ``f_z``      float32, robust scaled: clip to train [q01, q99], log1p
                                      when the field is non-negative, then z-score
                     -> ``f_raw``    float32, raw value clipped to train [q01, q99] (for AutoDis)
                     -> ``f_bucket`` int64 equal-frequency bucket in [0, NUM_BUCKETS)
                     -> ``f_missing`` float32 1 where the value is absent, else 0 (where it
                                      is absent, ``f_z``, ``f_raw`` and ``f_bucket`` are 0; the
                                      statistics above use the present values only)
* label ``y``        -> ``y``        float32 0/1, kept untransformed (TFMA reads it from here)
"""

from __future__ import annotations

NUM_OOV_BUCKETS = 1
NUM_BUCKETS = 20
VOCAB_FREQUENCY_THRESHOLD = 1
CLIP_QUANTILES = (0.01, 0.99)

ID_SUFFIX = "_id"
SCALED_SUFFIX = "_z"
RAW_SUFFIX = "_raw"
BUCKET_SUFFIX = "_bucket"
MISSING_SUFFIX = "_missing"
# Transform's vocabulary of the numerical fields with absent values in the train split.
NUMERIC_MISSING_VOCAB = "numeric_missing"


def id_name(field: str) -> str:
    """Transformed name of a categorical field's integer id."""
    return field + ID_SUFFIX


def scaled_name(field: str) -> str:
    """Transformed name of a numerical field's robust-scaled value."""
    return field + SCALED_SUFFIX


def raw_name(field: str) -> str:
    """Transformed name of a numerical field's clipped raw value."""
    return field + RAW_SUFFIX


def bucket_name(field: str) -> str:
    """Transformed name of a numerical field's quantile bucket."""
    return field + BUCKET_SUFFIX


def missing_name(field: str) -> str:
    """Transformed name of a numerical field's 0/1 "value absent" indicator."""
    return field + MISSING_SUFFIX


def vocab_name(field: str) -> str:
    """Name of a categorical field's Transform vocabulary (with counts)."""
    return field + "_vocab"


def transformed_names(categorical: list[str], numerical: list[str]) -> list[str]:
    """All model input names, in a stable order."""
    names = [id_name(f) for f in categorical]
    for f in numerical:
        names += [scaled_name(f), raw_name(f), bucket_name(f), missing_name(f)]
    return names
