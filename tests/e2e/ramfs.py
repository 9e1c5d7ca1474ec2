"""A Beam filesystem for TensorFlow's in-memory ``ram://`` scheme, so one process can run the
whole pipeline with its storage somewhere that is not a local path.

TensorFlow (``tf.io.gfile``, SavedModel, TFRecord) knows ``ram://``; Beam does not, and Beam
finds a filesystem by its scheme among ``FileSystem``'s subclasses: importing this module
registers it, and mends two places where TensorFlow's ``ram://`` differs from ``gs://``
(``_rename``, ``_get_children``; a third, writes that append instead of overwriting, is
avoided by ``storage.publish_examples``). Every operation goes through ``tf.io.gfile``, so Beam
and TensorFlow see the same files. Only for tests on the in-process runner (``direct``): the
files live in this process.
"""

from __future__ import annotations

import posixpath

import tensorflow as tf
from apache_beam.io.filesystem import (
    BeamIOError,
    CompressedFile,
    CompressionTypes,
    FileMetadata,
    FileSystem,
)
from tensorflow.python.lib.io import file_io

SCHEME = "ram"
_TF_RENAME = tf.io.gfile.rename


def _rename(src: str, dst: str, overwrite: bool = False) -> None:
    """``tf.io.gfile.rename`` that also moves a ``ram://`` folder's files.

    TensorFlow's ``ram://`` renames a folder's own entry only, leaving its files behind; its
    ``gs://`` filesystem renames every object under the folder, which is what TFT relies on when
    it moves a finished ``transform_fn`` into place. This gives ``ram://`` the same behaviour.
    """
    if str(src).startswith(f"{SCHEME}://") and tf.io.gfile.isdir(src):
        for root, _, files in tf.io.gfile.walk(src):
            target_dir = dst + root[len(src):]
            tf.io.gfile.makedirs(target_dir)
            for name in files:
                tf.io.gfile.copy(posixpath.join(root, name), posixpath.join(target_dir, name),
                                 overwrite=overwrite)
        tf.io.gfile.rmtree(src)
        return
    _TF_RENAME(src, dst, overwrite)


tf.io.gfile.rename = _rename

_GET_CHILDREN = file_io._pywrap_file_io.GetChildren  # noqa: SLF001


def _get_children(path: bytes) -> list[str]:
    """Children of a folder, without ``ram://``'s prefix matches.

    TensorFlow's ``ram://`` lists every entry whose name starts with the folder's, so the
    children of ``assets`` include ``.extra`` (from ``assets.extra``), which does not exist;
    ``gs://`` lists by ``folder/`` and has no such entries. Keeps the children that exist.
    """
    children = _GET_CHILDREN(path)
    prefix = f"{SCHEME}://"
    if not (path.startswith(prefix.encode()) if isinstance(path, bytes)
            else str(path).startswith(prefix)):
        return children
    text = path.decode() if isinstance(path, bytes) else str(path)
    return [c for c in children if _TF_EXISTS(posixpath.join(text, c))]


_TF_EXISTS = tf.io.gfile.exists
file_io._pywrap_file_io.GetChildren = _get_children  # noqa: SLF001


class _Writer:
    """A binary write channel over ``tf.io.gfile.GFile`` that counts its bytes: Beam's
    compressed files ask ``tell()``, which TensorFlow's ``ram://`` writers do not implement."""

    def __init__(self, path: str) -> None:
        self._file = tf.io.gfile.GFile(path, "wb")
        self._written = 0
        self.mode = "wb"

    def write(self, data: bytes) -> int:
        self._file.write(data)
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed


class RamFileSystem(FileSystem):
    """``ram://`` for Beam, on top of TensorFlow's in-memory filesystem."""

    @classmethod
    def scheme(cls) -> str:
        return SCHEME

    def join(self, basepath: str, *paths: str) -> str:
        return posixpath.join(basepath, *paths)

    def split(self, path: str) -> tuple[str, str]:
        head, tail = posixpath.split(path.rstrip("/"))
        return head, tail

    def mkdirs(self, path: str) -> None:
        tf.io.gfile.makedirs(path)

    def has_dirs(self) -> bool:
        return True

    def _list(self, dir_or_prefix: str):
        if not tf.io.gfile.isdir(dir_or_prefix):
            return
        for root, _, files in tf.io.gfile.walk(dir_or_prefix):
            for name in files:
                path = posixpath.join(root, name)
                yield FileMetadata(path, tf.io.gfile.stat(path).length, 0.0)

    def _open(self, path: str, mode: str, compression_type: str):
        compression_type = FileSystem._get_compression_type(path, compression_type)
        raw = _Writer(path) if mode == "wb" else tf.io.gfile.GFile(path, "rb")
        if compression_type == CompressionTypes.UNCOMPRESSED:
            return raw
        return CompressedFile(raw, compression_type=compression_type)

    def create(self, path: str, mime_type: str = "application/octet-stream",
               compression_type: str = CompressionTypes.AUTO):
        tf.io.gfile.makedirs(posixpath.dirname(path))
        return self._open(path, "wb", compression_type)

    def open(self, path: str, mime_type: str = "application/octet-stream",
             compression_type: str = CompressionTypes.AUTO):
        return self._open(path, "rb", compression_type)

    def _each(self, name: str, operation, pairs) -> None:
        failed = {}
        for pair in pairs:
            try:
                operation(*pair)
            except Exception as e:  # noqa: BLE001 (reported per path, as Beam's own filesystems do)
                failed[pair] = e
        if failed:
            raise BeamIOError(f"{name} operation failed", failed)

    def copy(self, source_file_names, destination_file_names) -> None:
        self._each("Copy", lambda s, d: tf.io.gfile.copy(s, d, overwrite=True),
                   zip(source_file_names, destination_file_names, strict=True))

    def rename(self, source_file_names, destination_file_names) -> None:
        def move(source: str, destination: str) -> None:
            tf.io.gfile.makedirs(posixpath.dirname(destination))
            tf.io.gfile.rename(source, destination, overwrite=True)

        self._each("Rename", move, zip(source_file_names, destination_file_names, strict=True))

    def exists(self, path: str) -> bool:
        return tf.io.gfile.exists(path)

    def size(self, path: str) -> int:
        return tf.io.gfile.stat(path).length

    def last_updated(self, path: str) -> float:
        return tf.io.gfile.stat(path).mtime_nsec / 1e9

    def checksum(self, path: str) -> str:
        return str(self.size(path))

    def metadata(self, path: str) -> FileMetadata:
        return FileMetadata(path, self.size(path), self.last_updated(path))

    def delete(self, paths) -> None:
        def remove(path: str) -> None:
            if tf.io.gfile.isdir(path):
                tf.io.gfile.rmtree(path)
            else:
                tf.io.gfile.remove(path)

        self._each("Delete", remove, ((p,) for p in paths))
