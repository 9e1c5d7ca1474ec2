"""Where ``autorecsys bench`` caches prepared data in its work dir (no TensorFlow imported)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any

from pipeline.datasets import CSV_DATASET
from pipeline.datasets.base import DatasetError

CSV_FILES = ("data", "train", "eval", "test")  # bring-your-own data's file options


def csv_key(options: dict[str, Any] | None) -> str:
    """A short digest of bring-your-own data: its options and every given file's bytes, so a
    cache of prepared data is not reused for other columns or an edited file.

    Raises:
      DatasetError: a given file does not exist or is not a file.
    """
    options = options or {}
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for key in CSV_FILES:
        path = options.get(key)
        if path is None:
            continue
        if not os.path.isfile(path):
            what = "is not a file" if os.path.exists(path) else "no such file"
            raise DatasetError(f"--{key} {path}: {what}.")
        stat = os.stat(path)
        digest.update(_file_digest(os.path.abspath(path), stat.st_size, stat.st_mtime_ns))
    return digest.hexdigest()[:12]


@functools.lru_cache(maxsize=32)
def _file_digest(path: str, size: int, mtime_ns: int) -> bytes:
    """SHA-256 of a file's bytes, read once per (path, size, modification time) in a process
    (a bench keys its cache for every seed)."""
    del size, mtime_ns  # the cache key only
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.digest()


def data_root(work_dir: str, name: str, seed: int | None,
              options: dict[str, Any] | None = None) -> str:
    """The cache folder of one dataset (and seed, when its split depends on it) in work_dir;
    bring-your-own data (``name`` ``csv``) is keyed by :func:`csv_key` as well, and by the seed
    only when one ``data`` file is split by it (given train/eval/test files are not)."""
    own = name == CSV_DATASET
    if own and not (options or {}).get("data"):
        seed = None
    parts = [name, *([csv_key(options)] if own else []),
             *([str(seed)] if seed is not None else [])]
    return os.path.join(work_dir, "-".join(parts))
