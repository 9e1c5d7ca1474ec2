"""Adapters from the public raw datasets in the shared data dir to prepared CSV splits.

Each ``prepare_<name>(data_dir, out_dir, seed)`` reads ``data_dir/<folder>/...`` (see the folder's
``SOURCE.md``), writes ``out_dir/{train,eval,test}.csv`` plus ``feature_spec.json`` and returns the
:class:`PreparedDataset`. Categorical values keep their raw text. Missing files raise a
:class:`DatasetError` naming the dataset and the path. The raw data is never copied elsewhere.
"""

from __future__ import annotations

import csv
import gzip
import os
from collections import defaultdict
from collections.abc import Iterator

import numpy as np

from pipeline.datasets._common import MISSING, publish_dataset, require_file, take_splits
from pipeline.datasets.base import DatasetError, FeatureSpec, PreparedDataset

FRAPPE_FIELDS = (
    "user",
    "item",
    "daytime",
    "weekday",
    "isweekend",
    "homework",
    "cost",
    "weather",
    "country",
    "city",
)
FRAPPE_NEGATIVES = 2
CRITEO_NUMERICAL = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CATEGORICAL = tuple(f"C{i}" for i in range(1, 27))
MOVIELENS_FIELDS = ("user_id", "movie_id", "gender", "age", "occupation", "zip", "genres")
TOPK_SPEC = FeatureSpec(
    label="label", categorical=("user", "item"), task="topk", user="user", item="item"
)


def _bad_row(dataset: str, path: str, row: int, message: str) -> DatasetError:
    return DatasetError(f"{dataset}: {path}, row {row}: {message}")


def _read_lines(dataset: str, path: str, sep: str, n_fields: int, encoding: str) -> list[list[str]]:
    """Reads a separator-delimited text file without header, checking the field count."""
    rows = []
    with open(require_file(dataset, path), encoding=encoding) as f:
        for row_no, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split(sep)
            if len(fields) != n_fields:
                raise _bad_row(
                    dataset, path, row_no, f"expected {n_fields} fields, got {len(fields)}"
                )
            rows.append(fields)
    return rows


def _read_csv_with_header(dataset: str, path: str, expected: tuple[str, ...]) -> list[list[str]]:
    """Reads a comma-separated file whose header must equal ``expected``."""
    with open(require_file(dataset, path), newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = tuple(next(reader, ()))
        if header != expected:
            raise _bad_row(dataset, path, 1, f"header {list(header)} != {list(expected)}")
        rows = []
        for row_no, row in enumerate(reader, start=2):
            if len(row) != len(expected):
                raise _bad_row(dataset, path, row_no, f"expected {len(expected)} fields")
            if row[0] not in ("0", "1"):
                raise _bad_row(dataset, path, row_no, f"label {row[0]!r} is not 0/1")
            rows.append(row)
    return rows


def prepare_frappe86k(data_dir: str, out_dir: str, seed: int) -> PreparedDataset:
    """Frappe86k: the fixed NFM-derived split ``frappe86k/{train,valid,test}.csv`` as it is.

    ``valid`` becomes ``eval``; ``seed`` is unused (the split is fixed). Columns: ``label`` then 10
    categorical fields, each value a global libfm feature index as text.
    """
    del seed  # The split is published, not drawn.
    spec = FeatureSpec(label="label", categorical=FRAPPE_FIELDS)
    folder = os.path.join(data_dir, "frappe86k")
    files = {"train": "train.csv", "eval": "valid.csv", "test": "test.csv"}
    splits = {
        s: _read_csv_with_header("frappe86k", os.path.join(folder, f), spec.columns)
        for s, f in files.items()
    }
    meta = {"source": folder, "split": "published (valid -> eval)"}
    return publish_dataset("frappe86k", out_dir, spec, splits, meta)


def _frappe_negatives(rows: list[list[str]], seed: int) -> list[list[str]]:
    """For each positive: FRAPPE_NEGATIVES distinct random items unused by the user in that context.

    Args:
      rows: raw positives, ``FRAPPE_FIELDS`` order (item at index 1, context after it).
      seed: sampling seed.

    Returns:
      Label-0 rows, label first, the two negatives right after each positive's index.
    """
    items = sorted({r[1] for r in rows}, key=lambda s: (len(s), s))
    used: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for r in rows:
        used[(r[0], *r[2:])].add(r[1])
    rng = np.random.default_rng(seed)
    pool: list[int] = []
    negatives = []
    for r in rows:
        taken = used[(r[0], *r[2:])]
        chosen: list[str] = []
        while len(chosen) < FRAPPE_NEGATIVES:
            if not pool:
                pool = rng.integers(len(items), size=65536).tolist()[::-1]
            candidate = items[pool.pop()]
            if candidate not in taken and candidate not in chosen:
                chosen.append(candidate)
        negatives.extend(["0", r[0], negative, *r[2:]] for negative in chosen)
    return negatives


def prepare_frappe(data_dir: str, out_dir: str, seed: int) -> PreparedDataset:
    """Frappe, NFM protocol rebuilt from the raw log ``frappe/frappe.csv.gz``.

    Every log row is a positive; each gets 2 negatives with the same user and context (daytime,
    weekday, isweekend, homework, cost, weather, country, city) and a random item the user never
    used in that exact context; 96,203 x 3 = 288,609 rows, split 7:2:1 by ``seed``. ``cnt`` is
    dropped. Values keep the raw text (e.g. ``morning``, ``United States``).
    """
    path = require_file("frappe", os.path.join(data_dir, "frappe", "frappe.csv.gz"))
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, [])
        missing = [c for c in FRAPPE_FIELDS if c not in header]
        if missing:
            raise _bad_row("frappe", path, 1, f"missing columns {missing}")
        index = [header.index(c) for c in FRAPPE_FIELDS]
        positives = []
        for row_no, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise _bad_row("frappe", path, row_no, f"expected {len(header)} fields")
            positives.append([row[i] for i in index])
    rows = [["1", *r] for r in positives] + _frappe_negatives(positives, seed)
    spec = FeatureSpec(label="label", categorical=FRAPPE_FIELDS)
    meta = {
        "source": path,
        "protocol": "NFM: 2 negatives per positive, 7:2:1 seeded split",
        "seed": seed,
        "positives": len(positives),
    }
    return publish_dataset("frappe", out_dir, spec, take_splits(rows, seed, (7, 2, 1)), meta)


def _criteo_row(dataset: str, path: str, row_no: int, fields: list[str]) -> list[str]:
    label, numeric, categorical = fields[0], fields[1:14], fields[14:]
    if label not in ("0", "1"):
        raise _bad_row(dataset, path, row_no, f"label {label!r} is not 0/1")
    for name, value in zip(CRITEO_NUMERICAL, numeric, strict=True):
        if value:
            try:
                float(value)
            except ValueError:
                raise _bad_row(dataset, path, row_no, f"{name}={value!r} is not numeric") from None
    return [label, *(c or MISSING for c in categorical), *numeric]


def prepare_criteo10k(data_dir: str, out_dir: str, seed: int) -> PreparedDataset:
    """Criteo (Kaggle DAC), the first 10,000 rows ``criteo_10k/train-10k.txt``, split 8:1:1.

    Columns: ``label``, ``C1..C26`` (hashed hex text; empty -> ``__missing__``), ``I1..I13``
    (integer text; an empty cell stays empty: the I fields are optional numerical fields, so
    an absent value reaches the models as Transform's ``f_missing`` indicator and gets its own
    learned embedding, instead of sharing the value 0's).
    """
    path = os.path.join(data_dir, "criteo_10k", "train-10k.txt")
    raw = _read_lines("criteo10k", path, "\t", 40, "utf-8")
    rows = [_criteo_row("criteo10k", path, i, r) for i, r in enumerate(raw, start=1)]
    spec = FeatureSpec(label="label", categorical=CRITEO_CATEGORICAL, numerical=CRITEO_NUMERICAL,
                       optional_numerical=CRITEO_NUMERICAL)
    meta = {"source": path, "numeric_missing": "absent", "categorical_missing": MISSING,
            "seed": seed}
    return publish_dataset("criteo10k", out_dir, spec, take_splits(rows, seed), meta)


def _movielens_rows(
    ratings: list[tuple[str, str, str]],
    users: dict[str, tuple[str, str, str, str]],
    genres: dict[str, str],
    where: tuple[str, str],
) -> list[list[str]]:
    """Joins (user, movie, rating) with user (gender, age, occupation, zip) and movie genres."""
    dataset, path = where
    rows = []
    for row_no, (user, movie, rating) in enumerate(ratings, start=1):
        if user not in users or movie not in genres:
            raise _bad_row(dataset, path, row_no, f"user {user} or movie {movie} not found")
        if rating not in ("1", "2", "3", "4", "5"):
            raise _bad_row(dataset, path, row_no, f"rating {rating!r} is not 1..5")
        label = "1" if int(rating) >= 4 else "0"
        rows.append([label, user, movie, *users[user], genres[movie]])
    return rows


def prepare_movielens1m_ctr(data_dir: str, out_dir: str, seed: int) -> PreparedDataset:
    """MovieLens-1M CTR: the 100k-rating subset joined with users and movies, split 8:1:1.

    Label ``rating >= 4``. Categorical: user_id, movie_id, gender, age (ML-1M age code),
    occupation (code), zip, genres (the whole ``|``-joined genre string as one value).
    """
    folder = os.path.join(data_dir, "movielens_1m")
    name = "movielens1m_ctr"
    ratings_path = os.path.join(folder, "sample_movielens_rating.dat")
    ratings = [(r[0], r[1], r[2]) for r in _read_lines(name, ratings_path, "::", 4, "latin-1")]
    users = {
        r[0]: (r[1], r[2], r[3], r[4])
        for r in _read_lines(name, os.path.join(folder, "users.dat"), "::", 5, "latin-1")
    }
    movies = _read_lines(name, os.path.join(folder, "movies.dat"), "::", 3, "latin-1")
    genres = {r[0]: r[2] for r in movies}
    rows = _movielens_rows(ratings, users, genres, (name, ratings_path))
    return _publish_movielens(name, out_dir, folder, rows, seed, "full |-joined string")


def _ml100k_genres(name: str, folder: str) -> dict[str, str]:
    """Movie id -> ``|``-joined genre names from u.item's 19 flags (u.genre order)."""
    genre_rows = _read_lines(name, os.path.join(folder, "u.genre"), "|", 2, "latin-1")
    names = [g for g, _ in sorted(genre_rows, key=lambda r: int(r[1]))]
    items = _read_lines(name, os.path.join(folder, "u.item"), "|", 5 + len(names), "latin-1")
    return {
        r[0]: "|".join(g for g, flag in zip(names, r[5:], strict=True) if flag == "1") or MISSING
        for r in items
    }


def prepare_ml100k_ctr(data_dir: str, out_dir: str, seed: int) -> PreparedDataset:
    """MovieLens-100K CTR: ``u.data`` joined with ``u.user`` and ``u.item``, split 8:1:1.

    Label ``rating >= 4``. Same columns as :func:`prepare_movielens1m_ctr`; here age is the raw age
    in years (as text), occupation a name, genres the ``|``-joined names of the flagged genres.
    """
    folder = os.path.join(data_dir, "movielens_100k")
    name = "ml100k_ctr"
    data_path = os.path.join(folder, "u.data")
    ratings = [(r[0], r[1], r[2]) for r in _read_lines(name, data_path, "\t", 4, "latin-1")]
    users = {
        r[0]: (r[2], r[1], r[3], r[4])
        for r in _read_lines(name, os.path.join(folder, "u.user"), "|", 5, "latin-1")
    }
    rows = _movielens_rows(ratings, users, _ml100k_genres(name, folder), (name, data_path))
    return _publish_movielens(name, out_dir, folder, rows, seed, "|-joined genre names")


def _publish_movielens(name: str, out_dir: str, folder: str, rows: list[list[str]], seed: int,
                       genres: str) -> PreparedDataset:
    """Splits the joined MovieLens CTR rows 8:1:1 by ``seed`` and publishes them."""
    spec = FeatureSpec(label="label", categorical=MOVIELENS_FIELDS)
    meta = {"source": folder, "label": "rating >= 4", "genres": genres, "seed": seed}
    return publish_dataset(name, out_dir, spec, take_splits(rows, seed), meta)


def _adjacency_rows(dataset: str, path: str) -> Iterator[tuple[str, str, str]]:
    """Yields ``("1", user, item)`` for each line ``user item item ...`` of an adjacency list."""
    with open(path, encoding="utf-8") as f:
        for row_no, line in enumerate(f, start=1):
            tokens = line.split()
            if not all(t.isdigit() for t in tokens):
                raise _bad_row(dataset, path, row_no, "expected 'user item item ...' integer ids")
            for item in tokens[1:]:
                yield ("1", tokens[0], item)


def _prepare_topk(dataset: str, folder: str, out_dir: str) -> PreparedDataset:
    files = {
        s: require_file(dataset, os.path.join(folder, f"{f}.txt"))
        for s, f in (("train", "train"), ("eval", "valid"), ("test", "test"))
    }
    splits = {s: _adjacency_rows(dataset, p) for s, p in files.items()}
    meta = {"source": folder, "split": "published (valid -> eval)", "label": "1 = observed"}
    return publish_dataset(dataset, out_dir, TOPK_SPEC, splits, meta)


def prepare_gowalla(data_dir: str, out_dir: str, seed: int) -> PreparedDataset:
    """Gowalla check-ins, LightGCN split (``gowalla_lightgcn/{train,valid,test}.txt``).

    One row ``1,user,item`` per observed interaction; ``seed`` is unused (the split is fixed).
    """
    del seed  # The split is published, not drawn.
    return _prepare_topk("gowalla", os.path.join(data_dir, "gowalla_lightgcn"), out_dir)


def prepare_ml1m_topk(data_dir: str, out_dir: str, seed: int) -> PreparedDataset:
    """MovieLens-1M implicit top-k, LightGCN++ split (``movielens_1m_topk_lightgcnpp``).

    One row ``1,user,item`` per rating >= 3; ``seed`` is unused (the split is fixed).
    """
    del seed  # The split is published, not drawn.
    folder = os.path.join(data_dir, "movielens_1m_topk_lightgcnpp")
    return _prepare_topk("ml1m_topk", folder, out_dir)
