"""Shared by the searches' tiny-data tests: a ``SearchContext.dataset`` over in-memory arrays."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import tensorflow as tf


def split_datasets(splits: Mapping[str, tuple[Mapping[str, Any], Any]], batch_size: int
                   ) -> Callable[[str, list[str], bool], tf.data.Dataset]:
    """``dataset(split, names, shuffle)`` for a ``SearchContext``: ``splits[split]``'s
    ``(features, labels)`` with only the features ``names``, in order, in batches of
    ``batch_size``. A split not in ``splits`` (a search reading ``"test"``) fails the test."""

    def dataset(split: str, names: list[str], shuffle: bool) -> tf.data.Dataset:
        assert split in splits, f"the search read the {split!r} split"
        features, labels = splits[split]
        return tf.data.Dataset.from_tensor_slices(
            ({n: features[n] for n in names}, labels)).batch(batch_size)

    return dataset
