"""Dataset adapters: a registry of named datasets and how to find the raw data.

Every entry of :data:`DATASETS` is a callable ``(data_dir, out_dir, seed) -> PreparedDataset``.
Use :func:`prepare_dataset` to look one up by name; bring-your-own CSV files go through
:func:`pipeline.datasets.byo.prepare_csv`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from pipeline.datasets.adapters import (
    prepare_criteo10k,
    prepare_frappe,
    prepare_frappe86k,
    prepare_gowalla,
    prepare_ml1m_topk,
    prepare_ml100k_ctr,
    prepare_movielens1m_ctr,
)
from pipeline.datasets.base import SPLITS, DatasetError, FeatureSpec, PreparedDataset
from pipeline.datasets.byo import prepare_csv
from pipeline.datasets.synthetic import generate_synthetic
from pipeline.datasets.synthetic_topk import generate_synthetic_topk

if TYPE_CHECKING:
    from pipeline.configs import PipelineConfig

DATA_DIR_ENV = "AUTORECSYS_DATA_DIR"
# Bring-your-own CSV: ``prepare_dataset("csv", out, data=FILE, label=..., categorical=[...])``.
CSV_DATASET = "csv"

Preparer = Callable[[str | None, str, int], PreparedDataset]


def _prepare_synthetic(data_dir: str | None, out_dir: str, seed: int) -> PreparedDataset:
    """Registry entry for the synthetic dataset (needs no data dir)."""
    del data_dir  # Generated, not read.
    return generate_synthetic(out_dir, seed=seed)


def _prepare_synthetic_topk(data_dir: str | None, out_dir: str, seed: int) -> PreparedDataset:
    """Registry entry for the synthetic top-k dataset (needs no data dir)."""
    del data_dir  # Generated, not read.
    return generate_synthetic_topk(out_dir, seed=seed)


DATASETS: dict[str, Preparer] = {
    "synthetic": _prepare_synthetic,
    "synthetic_topk": _prepare_synthetic_topk,
    "frappe86k": prepare_frappe86k,
    "frappe": prepare_frappe,
    "criteo10k": prepare_criteo10k,
    "movielens1m_ctr": prepare_movielens1m_ctr,
    "ml100k_ctr": prepare_ml100k_ctr,
    "gowalla": prepare_gowalla,
    "ml1m_topk": prepare_ml1m_topk,
}

NEEDS_NO_DATA = frozenset({"synthetic", "synthetic_topk"})
GENERATORS = {"synthetic": generate_synthetic, "synthetic_topk": generate_synthetic_topk}


def _default_data_dir() -> str:
    """``../shared/data`` relative to the repo root (the parent of the ``pipeline`` package)."""
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    repo_root = os.path.dirname(package_dir)
    return os.path.normpath(os.path.join(repo_root, "..", "shared", "data"))


def resolve_data_dir(data_dir: str | None = None) -> str:
    """Finds the folder holding the raw datasets.

    Args:
      data_dir: an explicit folder; wins when given.

    Returns:
      ``data_dir``, else ``$AUTORECSYS_DATA_DIR``, else ``../shared/data`` next to the repo root
      when that folder exists.

    Raises:
      DatasetError: the chosen folder does not exist, or none could be found.
    """
    candidates = (("data_dir argument", data_dir), (DATA_DIR_ENV, os.environ.get(DATA_DIR_ENV)))
    for source, candidate in candidates:
        if candidate:
            if not os.path.isdir(candidate):
                raise DatasetError(f"Data dir {candidate!r} (from {source}) is not a directory.")
            return candidate
    default = _default_data_dir()
    if os.path.isdir(default):
        return default
    raise DatasetError(
        f"No raw data dir found: pass data_dir or set {DATA_DIR_ENV} to the folder holding the "
        f"dataset folders (frappe86k/, criteo_10k/, ...); the default {default} does not exist."
    )


def prepare_dataset(
    name: str,
    out_dir: str,
    *,
    data_dir: str | None = None,
    seed: int = 2021,
    **kwargs,
) -> PreparedDataset:
    """Prepares the named dataset into ``out_dir``.

    Args:
      name: a key of :data:`DATASETS`.
      out_dir: output directory for ``{train,eval,test}.csv`` and ``feature_spec.json``.
      data_dir: raw data folder; see :func:`resolve_data_dir`. Unused for ``synthetic``.
      seed: seed of any random split or sampling.
      **kwargs: options of :func:`generate_synthetic` (``synthetic``),
        :func:`generate_synthetic_topk` (``synthetic_topk``) or of
        :func:`pipeline.datasets.byo.prepare_csv` (``csv``, the file given as ``data``).

    Returns:
      The prepared dataset.

    Raises:
      DatasetError: unknown name, options for a dataset that takes none, or missing raw data.
    """
    if name == CSV_DATASET:
        options = dict(kwargs)
        return prepare_csv(options.pop("data", None), out_dir, seed=seed, **options)
    if name not in DATASETS:
        raise DatasetError(f"Unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}.")
    if name in GENERATORS:
        return GENERATORS[name](out_dir, seed=seed, **kwargs)
    if kwargs:
        raise DatasetError(f"Dataset {name!r} takes no options; got {sorted(kwargs)}.")
    return DATASETS[name](resolve_data_dir(data_dir), out_dir, seed)


def prepare_run_dataset(config: PipelineConfig) -> PreparedDataset:
    """A run's dataset, prepared and validated into ``output_dir/data``: what
    ``pipeline.run.run`` trains on. It needs no TensorFlow or TFX, so the CLI calls it before
    importing them, and bad input is reported in about a second instead of half a minute.

    The last run's ``summary.json`` there, which names the data about to be replaced, is removed
    first, so that a run failing from here on leaves none beside data it does not describe.
    """
    summary = os.path.join(config.output_dir, "summary.json")
    if os.path.isfile(summary):
        os.remove(summary)
    return prepare_dataset(config.dataset,
                           os.path.join(os.path.abspath(config.output_dir), "data"),
                           data_dir=config.data_dir, seed=config.seed,
                           **config.dataset_options)


__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "NEEDS_NO_DATA",
    "SPLITS",
    "DatasetError",
    "FeatureSpec",
    "PreparedDataset",
    "generate_synthetic",
    "generate_synthetic_topk",
    "prepare_csv",
    "prepare_dataset",
    "prepare_run_dataset",
    "resolve_data_dir",
]

