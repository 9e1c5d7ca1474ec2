"""Bring-your-own CSV: validate a user's CSV file(s) and lay them out as a prepared dataset.

CTR data (a 0/1 label, categorical and numerical columns): either one file is split 8:1:1 by the
seed, or ``train``/``eval``/``test`` files are given. Top-k data (an interaction log: ``user``
and ``item`` columns, optionally a label whose 0 rows are dropped): one file is split per user
(see :func:`split_per_user`), or the three files are given. Every problem raises a
:class:`DatasetError` naming the file and the 1-based row (the header is row 1). Output is written
to a staging directory and moved into place only when everything is valid.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.datasets._common import publish_dataset, require_both_labels, take_splits
from pipeline.datasets.base import DatasetError, FeatureSpec, PreparedDataset
from pipeline.datasets.rows import NO_LABEL, read_rows

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
    label: str | None = None,
    categorical: Sequence[str] = (),
    numerical: Sequence[str] = (),
    optional_numerical: Sequence[str] = (),
    user: str | None = None,
    item: str | None = None,
    seed: int = 2021,
    train: str | None = None,
    eval: str | None = None,
    test: str | None = None,
) -> PreparedDataset:
    """Validates a bring-your-own CSV dataset and writes it as a prepared dataset.

    Args:
      path: one CSV file to split (CTR: 8:1:1 by ``seed``; top-k: per user); None when
        ``train``/``eval``/``test`` are given.
      out_dir: output directory; written only when every row is valid.
      label: the 0/1 label column (required for CTR data; for top-k data optional, its 0 rows
        are dropped).
      categorical: categorical columns (empty values become ``__missing__``).
      numerical: numerical columns (must parse as finite floats).
      optional_numerical: numerical columns whose cells may also be empty (a missing value;
        the models learn an embedding for it).
      user: top-k data: the user id column (with ``item``; then no other feature columns).
      item: top-k data: the item id column.
      seed: split seed (single-file mode).
      train: training file (three-file mode).
      eval: evaluation file (three-file mode).
      test: test file (three-file mode).

    Returns:
      The prepared dataset at ``out_dir``.

    Raises:
      DatasetError: invalid arguments or data (see :func:`read_validated`), or a split
        without both labels (CTR) or without interactions (top-k).
    """
    given = {"train": train, "eval": eval, "test": test}
    if path is not None and any(given.values()):
        raise DatasetError("Give either one CSV path or train/eval/test files, not both.")
    if user is not None or item is not None:
        if user is None or item is None or categorical or numerical or optional_numerical:
            raise DatasetError("Top-k CSV data takes a user and an item column and no other "
                               f"feature columns. Received: user={user!r}, item={item!r}, "
                               f"categorical={list(categorical)}, numerical={list(numerical)}")
        return prepare_topk_csv(path, out_dir, user=user, item=item, label=label, seed=seed,
                                **given)
    if label is None:
        raise DatasetError("CTR CSV data needs a label column (for an interaction log, give "
                           "its user and item columns instead).")
    spec = FeatureSpec(label=label, categorical=tuple(categorical), numerical=tuple(numerical),
                       optional_numerical=tuple(optional_numerical))
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


def read_interactions(path: str, user: str, item: str, label: str | None = None
                      ) -> list[tuple[str, str]]:
    """The distinct ``(user, item)`` pairs of an interaction log, in file order.

    With ``label``, rows whose label is 0 are dropped (implicit feedback keeps the positives).
    An empty user or item cell raises a ``DatasetError`` naming the file, row and field.
    """
    if user == item:
        raise DatasetError(f"{path}: the user and item columns must differ; both are {user!r}.")
    spec = FeatureSpec(label=label or NO_LABEL, categorical=(user, item))
    pairs = dict.fromkeys(
        (str(row[user]), str(row[item]))
        for row in read_rows(path, spec, require_label=label is not None, required=(user, item))
        if row.get(spec.label, 1) == 1)
    if not pairs:
        raise DatasetError(f"{path}: no interactions (every row has {label} = 0).")
    return list(pairs)


def split_per_user(pairs: Sequence[tuple[str, str]], seed: int, fraction: float = 0.1
                   ) -> dict[str, list[tuple[str, str]]]:
    """Splits interactions per user, as LightGCN++'s and ``synthetic_topk``'s splits do.

    Each user's items are shuffled (one ``numpy`` generator seeded by ``seed``, users in order
    of first appearance); a user with 3 or more items gives ``max(1, round(fraction * n))`` to
    test, as many to eval and the rest to train; a user with fewer keeps them all in train.

    >>> split = split_per_user([("a", str(i)) for i in range(10)] + [("b", "0")], seed=1)
    >>> [len(split[s]) for s in ("train", "eval", "test")]
    [9, 1, 1]
    """
    by_user: dict[str, list[str]] = {}
    for u, i in pairs:
        by_user.setdefault(u, []).append(i)
    rng = np.random.default_rng(seed)
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "eval": [], "test": []}
    for u, items in by_user.items():
        order = [items[j] for j in rng.permutation(len(items))]
        n_held = max(1, round(fraction * len(order))) if len(order) >= 3 else 0
        parts = {"test": order[:n_held], "eval": order[n_held:2 * n_held],
                 "train": order[2 * n_held:]}
        for split, part in parts.items():
            splits[split] += [(u, i) for i in part]
    return splits


def prepare_topk_csv(path: str | None, out_dir: str, *, user: str, item: str,
                     label: str | None = None, seed: int = 2021, train: str | None = None,
                     eval: str | None = None, test: str | None = None) -> PreparedDataset:
    """An interaction log as a top-k dataset (see :func:`prepare_csv`): rows ``1,<user>,<item>``
    under the log's own column names (``autorecsys predict`` on the model then reads ``user``'s
    column), with ``label`` (or ``"label"``) as the label column."""
    spec = FeatureSpec(label=label or "label", categorical=(user, item), task="topk", user=user,
                       item=item)
    given = {"train": train, "eval": eval, "test": test}
    if path is not None:
        splits = split_per_user(read_interactions(path, user, item, label), seed)
        where = dict.fromkeys(splits, f"{path} (split per user by seed {seed}; only users with "
                                      f"3 or more items give eval and test items)")
        meta = {"source": os.path.abspath(path), "split": "per user 8:1:1, seeded",
                "seed": seed}
    else:
        absent = [s for s, p in given.items() if p is None]
        if absent:
            raise DatasetError(f"Bring-your-own top-k CSV needs a path or all of "
                               f"train/eval/test; no {absent}.")
        splits = {s: read_interactions(p, user, item, label) for s, p in given.items()}
        where = given
        meta = {"source": {s: os.path.abspath(p) for s, p in given.items()}, "split": "given"}
    for split, rows in splits.items():
        if not rows:
            raise DatasetError(f"{where[split]}: the {split} split has no interactions.")
    meta.update(label="1 = observed")
    rows = {s: (("1", u, i) for u, i in pairs) for s, pairs in splits.items()}
    return publish_dataset(NAME, out_dir, spec, rows, meta)
