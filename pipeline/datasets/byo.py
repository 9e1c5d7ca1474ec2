"""Bring-your-own CSV: validate a user's CSV file(s) and lay them out as a prepared dataset.

Either one file is split 8:1:1 by the seed, or ``train``/``eval``/``test`` files are given. Every
problem raises a :class:`DatasetError` naming the file and the 1-based row (the header is row 1).
Output is written to a staging directory and moved into place only when everything is valid.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence

from pipeline.datasets._common import MISSING, publish_dataset, take_splits
from pipeline.datasets.base import DatasetError, FeatureSpec, PreparedDataset

NAME = "csv"


def _error(path: str, row: int, message: str) -> DatasetError:
    return DatasetError(f"{path}, row {row}: {message}")


def _header_index(path: str, header: list[str], spec: FeatureSpec) -> list[int]:
    """Column positions of ``spec.columns`` in ``header``; raises naming any missing column."""
    names = [h.strip() for h in header]
    missing = [c for c in spec.columns if c not in names]
    if missing:
        raise _error(path, 1, f"header lacks declared columns {missing}; header is {names}")
    duplicated = sorted({c for c in spec.columns if names.count(c) > 1})
    if duplicated:
        raise _error(path, 1, f"header names columns more than once: {duplicated}")
    return [names.index(c) for c in spec.columns]


def _label(path: str, row: int, value: str) -> str:
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if number not in (0.0, 1.0):
        raise _error(path, row, f"label {value!r} is not 0 or 1")
    return "1" if number == 1.0 else "0"


def _number(path: str, row: int, column: str, value: str) -> str:
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        raise _error(
            path, row, f"numerical column {column!r} holds non-numeric text {value!r}"
        ) from None
    if not math.isfinite(number):
        raise _error(path, row, f"numerical column {column!r} holds {value!r} (NaN/inf)")
    return text


def _convert(path: str, row_no: int, fields: list[str], spec: FeatureSpec) -> list[str]:
    """One row in ``spec.columns`` order, validated; ``fields`` is already in that order."""
    n_cat = len(spec.categorical)
    out = [_label(path, row_no, fields[0])]
    out += [v if v.strip() else MISSING for v in fields[1 : 1 + n_cat]]
    out += [
        _number(path, row_no, column, value)
        for column, value in zip(spec.numerical, fields[1 + n_cat :], strict=True)
    ]
    return out


def read_validated(path: str, spec: FeatureSpec) -> list[list[str]]:
    """Reads and validates one CSV file; returns its rows in ``spec.columns`` order.

    Args:
      path: the CSV file (comma separated, header row, UTF-8 with or without BOM).
      spec: the declared columns.

    Returns:
      Data rows; empty categorical values become ``__missing__``, the label ``0``/``1``.

    Raises:
      DatasetError: missing/empty file, missing header columns, ragged rows, non-numeric or
        non-finite numerical values, labels other than 0/1, or no data rows. The message names
        the file and the 1-based row number (header = row 1).
    """
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: file not found.")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise _error(path, 1, "file is empty (no header row)")
        index = _header_index(path, header, spec)
        rows = []
        for row_no, fields in enumerate(reader, start=2):
            if not fields:
                continue  # A blank line.
            if len(fields) != len(header):
                raise _error(
                    path,
                    row_no,
                    f"expected {len(header)} fields as in the header, got {len(fields)}",
                )
            rows.append(_convert(path, row_no, [fields[i] for i in index], spec))
    if not rows:
        raise _error(path, 2, "no data rows after the header")
    return rows


def prepare_csv(
    path: str | None,
    out_dir: str,
    *,
    label: str,
    categorical: Sequence[str],
    numerical: Sequence[str] = (),
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
      seed: split seed (single-file mode).
      train: training file (three-file mode).
      eval: evaluation file (three-file mode).
      test: test file (three-file mode).

    Returns:
      The prepared dataset at ``out_dir``.

    Raises:
      DatasetError: invalid arguments or data; see :func:`read_validated`.
    """
    spec = FeatureSpec(label=label, categorical=tuple(categorical), numerical=tuple(numerical))
    given = {"train": train, "eval": eval, "test": test}
    if path is not None and any(given.values()):
        raise DatasetError("Give either one CSV path or train/eval/test files, not both.")
    if path is not None:
        rows = read_validated(path, spec)
        meta = {"source": os.path.abspath(path), "split": "8:1:1 seeded", "seed": seed}
        return publish_dataset(NAME, out_dir, spec, take_splits(rows, seed), meta)
    absent = [s for s, p in given.items() if p is None]
    if absent:
        raise DatasetError(
            f"Bring-your-own CSV needs a path or all of train/eval/test; no {absent}."
        )
    splits = {s: read_validated(p, spec) for s, p in given.items()}
    meta = {"source": {s: os.path.abspath(p) for s, p in given.items()}, "split": "given"}
    return publish_dataset(NAME, out_dir, spec, splits, meta)
