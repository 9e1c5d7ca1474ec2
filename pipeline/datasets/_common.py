"""Helpers shared by the dataset adapters: seeded splits, staged writes, file checks."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from pipeline.datasets.base import SPLITS, DatasetError, FeatureSpec, PreparedDataset

MISSING = "__missing__"
MANIFEST = "feature_spec.json"


def require_both_labels(split: str, labels: Iterable[object], where: str,
                        rows: int | None = None, hint: str = "") -> None:
    """Raises DatasetError unless a split's ``labels`` hold both 0 and 1: AUC, which ranks the
    models on eval and scores test, is undefined on one class (and a train split of one class
    teaches nothing). ``where`` names the split's source; ``rows``, when given, its size."""
    held_labels = sorted(set(labels))
    if len(held_labels) < 2:
        held = f"only label {held_labels[0]} rows" if held_labels else "no rows"
        size = "" if rows is None else f" ({rows} rows)"
        raise DatasetError(f"{where}: the {split} split{size} holds {held}; every split needs "
                           f"both labels 0 and 1 (AUC ranks the models on eval and scores "
                           f"test){hint}.")


def require_file(dataset: str, path: str) -> str:
    """Returns ``path`` if it is a file, else raises a DatasetError naming dataset and path.

    Args:
      dataset: the dataset name, for the message.
      path: the file that must exist.

    Returns:
      The path, unchanged.

    Raises:
      DatasetError: the file does not exist.
    """
    if not os.path.isfile(path):
        raise DatasetError(
            f"{dataset}: missing file {path}. Point the data dir (data_dir argument or "
            "AUTORECSYS_DATA_DIR) at the folder holding the raw datasets."
        )
    return path


def split_indices(
    n_rows: int, seed: int, ratios: Sequence[float] = (8, 1, 1)
) -> dict[str, np.ndarray]:
    """Splits ``range(n_rows)`` into train/eval/test by a seeded permutation.

    Sizes: eval = round(n * r_eval), test = floor(n * r_test), train = the rest (for the 7:2:1
    Frappe protocol this gives the published 202,027 / 57,722 / 28,860).

    Args:
      n_rows: number of rows.
      seed: seed for ``numpy.random.default_rng``.
      ratios: relative sizes of train, eval and test.

    Returns:
      Row indices per split name, each in permutation order.
    """
    total = float(sum(ratios))
    n_eval = round(n_rows * ratios[1] / total)
    n_test = int(n_rows * ratios[2] / total)
    n_train = n_rows - n_eval - n_test
    perm = np.random.default_rng(seed).permutation(n_rows)
    return {
        "train": perm[:n_train],
        "eval": perm[n_train : n_train + n_eval],
        "test": perm[n_train + n_eval :],
    }


def take_splits(
    rows: Sequence[Sequence[str]], seed: int, ratios: Sequence[float] = (8, 1, 1)
) -> dict[str, Iterator[Sequence[str]]]:
    """Returns lazy per-split iterators over ``rows`` split by :func:`split_indices`."""
    return {
        name: (rows[i] for i in idx.tolist())
        for name, idx in split_indices(len(rows), seed, ratios).items()
    }


def write_csv(path: str, header: Sequence[str], rows: Iterable[Sequence[str]]) -> int:
    """Writes a header and rows with the csv module; returns the number of data rows."""
    count = 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow(row)
            count += 1
    return count


@contextlib.contextmanager
def staging_dir(out_dir: str) -> Iterator[str]:
    """Yields a temporary sibling of ``out_dir``; on success its files are moved into ``out_dir``.

    On error the temporary directory is removed, so no half-written dataset is left behind.
    ``feature_spec.json`` is moved last, so a directory with a manifest is always complete.
    """
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", suffix=".tmp", dir=parent)
    try:
        yield tmp
        _publish(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: str, out_dir: str) -> None:
    if not os.path.exists(out_dir):
        os.chmod(tmp, 0o755)
        os.rename(tmp, out_dir)
        return
    if not os.path.isdir(out_dir):
        raise DatasetError(f"{out_dir}: output path exists and is not a directory.")
    stale = os.path.join(out_dir, MANIFEST)
    if os.path.exists(stale):
        os.remove(stale)
    names = sorted(os.listdir(tmp), key=lambda n: (n == MANIFEST, n))
    for name in names:
        os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))


def publish_dataset(
    name: str,
    out_dir: str,
    spec: FeatureSpec,
    splits: Mapping[str, Iterable[Sequence[str]]],
    metadata: dict | None = None,
    extra_json: Mapping[str, dict] | None = None,
) -> PreparedDataset:
    """Writes ``{train,eval,test}.csv`` plus the manifest into ``out_dir`` via a staging dir.

    Args:
      name: dataset name for the manifest.
      out_dir: output directory (created if needed).
      spec: the feature spec; its ``columns`` are the CSV header.
      splits: rows per split, each row already in ``spec.columns`` order.
      metadata: extra manifest metadata; ``rows`` (per-split counts) is added.
      extra_json: further files to write next to the data, file name -> JSON content.

    Returns:
      The prepared dataset located at ``out_dir``.
    """
    metadata = dict(metadata or {})
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise DatasetError(f"{name}: no rows given for splits {missing}.")
    if spec.optional_numerical:
        splits = {s: list(rows) for s, rows in splits.items()}
        index = {c: i for i, c in enumerate(spec.columns)}
        empty = [c for c in spec.optional_numerical
                 if not any(row[index[c]] for row in splits["train"])]
        if empty:  # Transform could compute no statistic for them
            raise DatasetError(f"{name}: optional numerical column(s) {empty} have no value in "
                               f"any train row.")
    with staging_dir(out_dir) as tmp:
        metadata["rows"] = {
            s: write_csv(os.path.join(tmp, f"{s}.csv"), spec.columns, splits[s]) for s in SPLITS
        }
        for file_name, content in (extra_json or {}).items():
            with open(os.path.join(tmp, file_name), "w", encoding="utf-8") as f:
                json.dump(content, f, indent=2, sort_keys=True)
        PreparedDataset(name=name, directory=tmp, spec=spec, metadata=metadata).write_manifest()
    return PreparedDataset(name=name, directory=out_dir, spec=spec, metadata=metadata)
