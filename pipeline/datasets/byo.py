"""Bring-your-own CSV: validate a user's CSV file(s) and lay them out as a prepared dataset.

Either one file is split 8:1:1 by the seed, or ``train``/``eval``/``test`` files are given. Every
problem raises a :class:`DatasetError` naming the file and the 1-based row (the header is row 1).
Output is written to a staging directory and moved into place only when everything is valid.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from pipeline.datasets._common import publish_dataset, require_both_labels, take_splits
from pipeline.datasets.base import DatasetError, FeatureSpec, PreparedDataset
from pipeline.datasets.rows import read_rows

NAME = "csv"


def read_validated(path: str, spec: FeatureSpec) -> list[list[str]]:
    """Reads and validates one CSV file; returns its rows as text in ``spec.columns`` order.

    Empty categorical values become ``__missing__``, the label ``0``/``1``. Raises
    ``DatasetError`` naming the file, the 1-based row and the field (see ``rows.read_rows``).
    """
    return [[str(values[spec.label]), *(str(values[c]) for c in spec.categorical),
             *("" if values[c] is None else repr(values[c]) for c in spec.numerical)]
            for values in read_rows(path, spec)]


def _check_labels(splits: Mapping[str, Sequence[Sequence[str]]], where: Mapping[str, str],
                  hint: str = "") -> None:
    """``require_both_labels`` for every split's rows (label first); ``where`` names each
    split's source for the message."""
    for split, rows in splits.items():
        require_both_labels(split, (row[0] for row in rows), where[split], len(rows), hint)


def prepare_csv(
    path: str | None,
    out_dir: str,
    *,
    label: str,
    categorical: Sequence[str],
    numerical: Sequence[str] = (),
    optional_numerical: Sequence[str] = (),
    seed: int = 2021,
    train: str | None = None,
    eval: str | None = None,
    test: str | None = None,
) -> PreparedDataset:
    """Validates a bring-your-own CSV dataset and writes it as a prepared dataset.

    Args:
      path: one CSV file to split 8:1:1 by ``seed``; None when ``train``/``eval``/``test`` are
        given.
      out_dir: output directory; written only when every row is valid.
      label: the 0/1 label column.
      categorical: categorical columns (empty values become ``__missing__``).
      numerical: numerical columns (must parse as finite floats).
      optional_numerical: numerical columns whose cells may also be empty (a missing value;
        the models learn an embedding for it).
      seed: split seed (single-file mode).
      train: training file (three-file mode).
      eval: evaluation file (three-file mode).
      test: test file (three-file mode).

    Returns:
      The prepared dataset at ``out_dir``.

    Raises:
      DatasetError: invalid arguments or data (see :func:`read_validated`), or a split
        without both labels.
    """
    spec = FeatureSpec(label=label, categorical=tuple(categorical), numerical=tuple(numerical),
                       optional_numerical=tuple(optional_numerical))
    given = {"train": train, "eval": eval, "test": test}
    if path is not None and any(given.values()):
        raise DatasetError("Give either one CSV path or train/eval/test files, not both.")
    if path is not None:
        rows = read_validated(path, spec)
        splits = {s: list(r) for s, r in take_splits(rows, seed).items()}
        _check_labels(splits, dict.fromkeys(splits, f"{path}: {len(rows)} data rows split 8:1:1 "
                                                   f"by seed {seed}"),
                      "; give more rows, or --train/--eval/--test files")
        meta = {"source": os.path.abspath(path), "split": "8:1:1 seeded", "seed": seed}
        return publish_dataset(NAME, out_dir, spec, splits, meta)
    absent = [s for s, p in given.items() if p is None]
    if absent:
        raise DatasetError(
            f"Bring-your-own CSV needs a path or all of train/eval/test; no {absent}."
        )
    splits = {s: read_validated(p, spec) for s, p in given.items()}
    _check_labels(splits, given)
    meta = {"source": {s: os.path.abspath(p) for s, p in given.items()}, "split": "given"}
    return publish_dataset(NAME, out_dir, spec, splits, meta)
