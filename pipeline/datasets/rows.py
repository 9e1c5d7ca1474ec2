"""Reading raw CSV rows against a declared ``FeatureSpec``, checking every row.

The one place where raw rows are validated: the bring-your-own adapter, the TFRecord conversion,
``autorecsys predict`` and the serving bench all read through ``read_rows``. The first bad row
raises a ``DatasetError`` naming the file, the row (1-based, header = row 1) and the field.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator

from pipeline.datasets._common import MISSING
from pipeline.datasets.base import DatasetError, FeatureSpec

# A label name no header cell is (``RowParser`` strips them): a spec with it and
# ``require_label=False`` reads no label (prediction input, an interaction log without one).
NO_LABEL = " "
# Numerical fields become float32 (tf.train.FloatList): a larger magnitude would be stored as inf.
FLOAT32_MAX = 3.4028234663852886e38


class RowParser:
    """Parses and checks raw CSV rows against a ``FeatureSpec``.

    Args:
      spec: the declared columns.
      path: the file being read (named in errors).
      header: the file's header row.
      require_label: whether the label column must be present (False for prediction input).
      required: categorical fields whose cells must not be empty (a top-k log's user and item).
    """

    def __init__(self, spec: FeatureSpec, path: str, header: list[str],
                 require_label: bool = True, required: tuple[str, ...] = ()) -> None:
        self.spec = spec
        self.path = path
        self.header = header
        wanted = list(spec.columns if require_label else spec.columns[1:])
        missing = [c for c in wanted if c not in header]
        if missing:
            raise DatasetError(f"{path}: row 1: header lacks column(s) {missing}; "
                               f"header has {header}.")
        duplicated = sorted({c for c in spec.columns if header.count(c) > 1})
        if duplicated:
            raise DatasetError(f"{path}: row 1: header names column(s) {duplicated} more "
                               f"than once.")
        self.has_label = spec.label in header
        self.index = {c: header.index(c) for c in spec.columns if c in header}
        self.optional = set(spec.optional_numerical)
        self.required = set(required)

    def parse(self, row: list[str], row_number: int) -> dict[str, object]:
        """Returns ``{column: value}`` with label int, categorical str, numerical float (None
        for an empty cell of an optional numerical field)."""
        where = f"{self.path}: row {row_number}"
        if len(row) != len(self.header):
            raise DatasetError(f"{where}: has {len(row)} fields, the header has "
                               f"{len(self.header)}.")
        values: dict[str, object] = {}
        if self.has_label:
            text = row[self.index[self.spec.label]].strip()
            try:
                label = float(text)
            except ValueError:
                label = math.nan
            if label not in (0.0, 1.0):
                raise DatasetError(f"{where}: field '{self.spec.label}' (label) must be 0 or 1, "
                                   f"got {text!r}.")
            values[self.spec.label] = int(label)
        for field in self.spec.categorical:
            text = row[self.index[field]].strip()
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:  # undecodable bytes, kept by surrogateescape
                    raise DatasetError(f"{where}: field '{field}' holds bytes that are not "
                                       f"UTF-8 ({text!r}); save the file as UTF-8.") from None
            if not text and field in self.required:
                raise DatasetError(f"{where}: field '{field}' is empty; every interaction needs "
                                   f"a {field!r} id.")
            values[field] = text if text else MISSING
        for field in self.spec.numerical:
            text = row[self.index[field]].strip()
            if not text and field in self.optional:
                values[field] = None  # absent: Transform's f_missing
                continue
            try:
                number = float(text)
            except ValueError:
                hint = ("" if text else " (an empty cell is allowed only in optional numerical "
                        "fields, e.g. `autorecsys run --optional-numerical`)")
                raise DatasetError(f"{where}: field '{field}' is numerical but holds "
                                   f"non-numeric text {text!r}{hint}.") from None
            if not math.isfinite(number):
                raise DatasetError(f"{where}: field '{field}' holds {text!r} (NaN/inf); "
                                   f"numerical fields must be finite.")
            if abs(number) > FLOAT32_MAX:
                raise DatasetError(f"{where}: field '{field}' holds {text!r}, beyond the float32 "
                                   f"range (+-3.4e38) numerical fields are stored in.")
            values[field] = number
        return values


def read_rows(path: str, spec: FeatureSpec, require_label: bool = True,
              required: tuple[str, ...] = ()) -> Iterator[dict[str, object]]:
    """Yields parsed rows of a CSV file with header; raises DatasetError on the first bad row."""
    if not os.path.exists(path):
        raise DatasetError(f"{path}: file not found.")
    # surrogateescape: a non-UTF-8 byte fails in the cell that holds it (RowParser.parse names
    # the row and field), not in a decoded block of the file far from it.
    try:
        f = open(path, newline="", encoding="utf-8-sig", errors="surrogateescape")
    except OSError as e:  # a directory, no read permission
        raise DatasetError(f"{path}: cannot be read ({e.strerror}).") from None
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise DatasetError(f"{path}: row 1: the file is empty (no header row).") from None
        except csv.Error as e:
            raise DatasetError(f"{path}: row 1: malformed CSV ({e}).") from None
        parser = RowParser(spec, path, [h.strip() for h in header], require_label, required)
        row_number, data_rows = 1, 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise DatasetError(f"{path}: row {row_number + 1}: malformed CSV ({e}).") from None
            row_number += 1
            if not row:
                continue
            data_rows += 1
            yield parser.parse(row, row_number)
        if data_rows == 0:
            raise DatasetError(f"{path}: row 2: no data rows after the header.")
