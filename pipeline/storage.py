"""Where a run's files live: this machine's disk, or storage that remote workers can read.

A run keeps its prepared CSVs, MLMD (SQLite) and ``summary.json`` under the local
``output_dir``. Its examples, pipeline root (every artifact) and serving dir go under
``artifact_root`` when one is set: a URI such as ``gs://bucket/path`` (any scheme that both
TensorFlow's ``tf.io.gfile`` and Beam's ``FileSystems`` know), which a runner whose workers do not
share this disk (Dataflow) needs. Everything here goes through ``tf.io.gfile``, so a local path
and a URI take the same code (joined with ``os.path.join``, as the rest of the project does for
``tf.io.gfile`` paths: POSIX joins are ``/``-joins, right for URIs).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import tensorflow as tf

COMPLETE_MARKER = "_COMPLETE"
OWNER_FILE = "_AUTORECSYS_OUTPUT_DIR"  # under artifact_root: the output_dir whose MLMD indexes it


def normalise_root(root: str) -> str:
    """An absolute local path (``file://`` dropped), or the URI unchanged."""
    if root.startswith("file://"):
        root = root[len("file://"):]
    return root if "://" in root else os.path.abspath(root)


def check_storage(config: Any) -> None:
    """Checks and prepares ``config.artifact_root`` (not None) before a run prepares anything:
    normalises it, checks that TensorFlow can create it and that Beam has a filesystem for its
    scheme, and claims it for ``config.output_dir``. Called by
    ``PipelineConfig.check_storage``, which also holds the runner's requirements.

    The claim: TFX names an artifact's folder by its MLMD execution id, and MLMD (SQLite) lives
    in ``output_dir``, so a second ``output_dir`` writing to the same root would restart the ids
    and write into folders that hold another run's files. The root records the ``output_dir``
    that owns it (``_AUTORECSYS_OUTPUT_DIR``) and refuses others.

    Raises:
      ConfigError: naming ``artifact_root`` and what is wrong.
    """
    from pipeline.configs import ConfigError  # noqa: PLC0415

    root = config.artifact_root = normalise_root(config.artifact_root)
    try:
        check_root(root)
    except ValueError as e:
        raise ConfigError(f"artifact_root: {e}") from None
    owner_file, owner = os.path.join(root, OWNER_FILE), os.path.abspath(config.output_dir)
    if tf.io.gfile.exists(owner_file):
        claimed = read_text(owner_file).strip()
        if claimed != owner:
            raise ConfigError(f"artifact_root {root} holds the artifacts of the run in "
                              f"{claimed}, whose MLMD indexes them: run with that output_dir, "
                              f"or give this one its own artifact_root.")
    else:
        write_text(owner_file, owner + "\n")


def is_local(path: str) -> bool:
    """True for a path on this machine's disk (no ``scheme://``, or ``file://``)."""
    return "://" not in path or path.startswith("file://")


def check_root(root: str) -> None:
    """Raises ``ValueError`` unless TensorFlow and, for a URI, Beam can write under ``root``
    (``s3://`` needs TensorFlow I/O's filesystems, ``hdfs://`` Beam's hadoop extra, and so on).
    Creates ``root``."""
    if not is_local(root):
        from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415

        try:
            FileSystems.get_filesystem(root)
        except Exception as e:  # noqa: BLE001 (Beam raises ValueError or BeamIOError)
            raise ValueError(f"Beam cannot write to {root}: {e}") from None
    try:
        tf.io.gfile.makedirs(root)
    except tf.errors.OpError as e:
        raise ValueError(f"TensorFlow cannot write to {root}: {e.message}") from None


def copy_tree(source_dir: str, dest_dir: str) -> list[str]:
    """Copies every file under ``source_dir`` to the same relative path under ``dest_dir``
    (either may be a URI), overwriting; returns the destination files."""
    copied = []
    for root, _, files in tf.io.gfile.walk(source_dir):
        relative = os.path.relpath(root, source_dir)
        target_dir = dest_dir if relative == "." else os.path.join(dest_dir, relative)
        tf.io.gfile.makedirs(target_dir)
        for name in sorted(files):
            target = os.path.join(target_dir, name)
            tf.io.gfile.copy(os.path.join(root, name), target, overwrite=True)
            copied.append(target)
    return copied


def tree_digest(local_dir: str) -> str:
    """SHA-256 over the relative paths and bytes of the files under ``local_dir`` (16 hex)."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(local_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            name_bytes = os.path.relpath(path, local_dir).encode()
            digest.update(len(name_bytes).to_bytes(8, "big") + name_bytes)
            digest.update(os.path.getsize(path).to_bytes(8, "big"))
            with open(path, "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def publish_examples(local_dir: str, examples_root: str) -> str:
    """Copies the converted examples in ``local_dir`` to ``examples_root/<digest>`` and returns
    that folder, the input of ImportExampleGen.

    Remote storage has no atomic folder rename, so the folder is named by its content and marked
    complete (``_COMPLETE``, beside the split folders) only after every file is copied: a run
    reuses a folder that carries the marker, and replaces one that does not (an earlier copy that
    was cut off). One run at a time per ``artifact_root`` (``check_storage``'s claim): two runs
    publishing the same data at once could remove each other's copy. The same data keeps its
    folder and with it ExampleGen's cache.
    """
    dest = os.path.join(examples_root, tree_digest(local_dir))
    marker = os.path.join(dest, COMPLETE_MARKER)
    if not tf.io.gfile.exists(marker):
        if tf.io.gfile.exists(dest):  # an earlier copy, cut off: start afresh
            tf.io.gfile.rmtree(dest)
        copy_tree(local_dir, dest)
        write_text(marker, "")
    return dest


def write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` (a local path or a URI), creating its folder."""
    parent = os.path.dirname(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


def read_text(path: str) -> str:
    with tf.io.gfile.GFile(path) as f:
        return f.read()


@contextlib.contextmanager
def local_dir_for(uri: str) -> Iterator[str]:
    """A local folder that ends up at ``uri``: ``uri`` itself when it is local, else a temporary
    folder whose files are copied to ``uri`` when the block completes (for writers that need a
    path on disk, such as Matplotlib's ``savefig``)."""
    if is_local(uri):
        os.makedirs(uri, exist_ok=True)
        yield uri
        return
    staging = tempfile.mkdtemp(prefix="autorecsys-")
    try:
        yield staging
        copy_tree(staging, uri)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
