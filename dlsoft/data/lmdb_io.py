"""Caffe's LMDB data sets: keys -> serialized ``Datum`` records.

A Datum holds one example: ``channels/height/width``, the pixels as raw uint8 ``data``
bytes (C x H x W), or as ``float_data``, or as an ``encoded`` JPEG/PNG file, and an
int ``label``. Keys are ``%08d`` (convert_mnist_data) or ``%08d_<path>`` (convert_imageset);
records are read in key order, as Caffe's cursor does.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import lmdb
import numpy as np

from ..errors import DataError, one_line
from ..protos import caffe_pb2
from .images import decode_image

MAP_SIZE = 1 << 40  # LMDB reserves address space, not disk: 1 TiB as Caffe does


def array_to_datum(pixels: np.ndarray, label: int = 0) -> caffe_pb2.Datum:
    """A Datum for a (C, H, W) array: raw bytes for uint8, ``float_data`` otherwise."""
    c, h, w = pixels.shape
    datum = caffe_pb2.Datum(channels=c, height=h, width=w, label=int(label))
    if pixels.dtype == np.uint8:
        datum.data = np.ascontiguousarray(pixels).tobytes()
    else:
        datum.float_data.extend(np.asarray(pixels, dtype=np.float32).ravel().tolist())
    return datum


def datum_to_array(datum: caffe_pb2.Datum, where: str = "<datum>", is_color: bool | None = None) -> np.ndarray:
    """The pixels of a Datum: uint8 (C, H, W) for raw or encoded records, float32 for float_data.

    ``is_color`` (True/False) forces encoded images to 3 or 1 channels (force_color / force_gray).
    """
    if datum.encoded:
        return decode_image(datum.data, is_color, where)
    shape = (datum.channels, datum.height, datum.width)
    if min(shape) < 0:
        raise DataError(f"{where}: Datum has a negative dimension (channels, height, width) = {shape}")
    count = shape[0] * shape[1] * shape[2]
    if datum.data:
        if len(datum.data) != count:
            raise DataError(f"{where}: Datum of shape {shape} holds {len(datum.data)} bytes, expected {count}")
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    if len(datum.float_data) != count:
        raise DataError(f"{where}: Datum of shape {shape} holds {len(datum.float_data)} floats, expected {count}")
    return np.asarray(datum.float_data, dtype=np.float32).reshape(shape)


def parse_datum(value: bytes, where: str) -> caffe_pb2.Datum:
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError or RuntimeError
        raise DataError(f"{where}: corrupt Datum record ({type(exc).__name__})") from None
    return datum


# LMDB allows one Environment per file and process, so readers of one database (a train
# and a test net, say) share it: real path -> [environment, number of open readers].
_envs: dict[str, list] = {}
_envs_lock = threading.Lock()


def open_env(path: str | os.PathLike) -> lmdb.Environment:
    """Open an existing LMDB read-only (works on read-only folders without lock.mdb).

    Pair every call with :func:`release_env`.
    """
    path = Path(path)
    if not (path / "data.mdb").is_file():
        raise DataError(f"LMDB not found: {path} (expected a folder holding data.mdb)")
    key = os.path.realpath(path)
    with _envs_lock:
        if key not in _envs:
            try:
                env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, max_readers=126)
            except lmdb.Error as exc:
                raise DataError(f"cannot open LMDB {path}: {one_line(exc)}") from None
            try:
                check_not_truncated(env, path)
            except DataError:
                env.close()
                raise
            _envs[key] = [env, 0]
        _envs[key][1] += 1
        return _envs[key][0]


def needed_size(env: lmdb.Environment) -> int:
    """The bytes data.mdb must hold: every page up to the last one the B-tree uses."""
    return (env.info()["last_pgno"] + 1) * env.stat()["psize"]


def check_not_truncated(env: lmdb.Environment, path, needed: int | None = None) -> None:
    """DataError if data.mdb is shorter than the pages its B-tree refers to.

    LMDB reads through a memory map: touching a page past the end of a cut file (an
    interrupted copy) is a SIGBUS that kills the interpreter, so check before reading.
    """
    data = Path(path) / "data.mdb"
    needed = needed_size(env) if needed is None else needed
    try:
        actual = data.stat().st_size
    except OSError as exc:
        raise DataError(f"LMDB {path}: cannot read data.mdb ({exc.strerror})") from None
    if actual < needed:
        raise DataError(f"LMDB {path} is truncated: data.mdb holds {actual:,} bytes but its records "
                        f"reach byte {needed:,} (an interrupted copy?); copy or convert it again")


def release_env(env: lmdb.Environment) -> None:
    """Close ``env`` once no reader uses it any more."""
    with _envs_lock:
        for key, entry in list(_envs.items()):
            if entry[0] is env:
                entry[1] -= 1
                if entry[1] == 0:
                    del _envs[key]
                    env.close()
                return


class LMDBReader:
    """Datum records of an LMDB in key order, wrapping around at the end.

    ``read()`` returns ``(key, pixels, label)``. The cursor is created by the thread that
    reads first (LMDB read transactions belong to one thread), so the prefetch worker
    can own it while setup reads the first record from the main thread.
    """

    def __init__(self, path: str | os.PathLike, is_color: bool | None = None):
        self.path = str(path)
        self.is_color = is_color
        self.env = open_env(path)
        self.size = self.env.stat()["entries"]
        self._needed = needed_size(self.env)
        self._txn = None
        if self.size == 0:
            self.close()
            raise DataError(f"LMDB {self.path} is empty")
        self._cursor = None

    def first(self) -> tuple[str, np.ndarray, int]:
        """The first record, read in a transaction of its own."""
        check_not_truncated(self.env, self.path, self._needed)
        with self.env.begin() as txn:
            key, value = next(iter(txn.cursor()))
        return self._decode(key, value)

    def skip(self, n: int) -> None:
        for _ in range(n % self.size):
            self._advance()

    def read(self) -> tuple[str, np.ndarray, int]:
        """The next ``(where, pixels, label)``; ``where`` names the database and key."""
        key, pixels, label = self.read_keyed()
        return f"LMDB {self.path} key {key!r}", pixels, label

    def read_keyed(self) -> tuple[str, np.ndarray, int]:
        """The next ``(key, pixels, label)``."""
        key, value = self._advance()
        return self._decode(key, value)

    def _advance(self) -> tuple[bytes, bytes]:
        # The file may be cut while we train (a copy over it): one stat per record is
        # cheap next to decoding it, and a SIGBUS cannot be caught.
        check_not_truncated(self.env, self.path, self._needed)
        if self._cursor is None:
            self._txn = self.env.begin(buffers=False)
            self._cursor = self._txn.cursor()
            self._cursor.first()
            return self._cursor.item()
        if not self._cursor.next():
            self._cursor.first()  # wrap around, as Caffe's DataReader does
        return self._cursor.item()

    def _decode(self, key: bytes, value: bytes) -> tuple[str, np.ndarray, int]:
        where = f"LMDB {self.path} key {key.decode(errors='replace')!r}"
        datum = parse_datum(value, where)
        return key.decode(errors="replace"), datum_to_array(datum, where, self.is_color), datum.label

    def __len__(self) -> int:
        return self.size

    def close(self) -> None:
        if self._txn is not None:
            self._txn.abort()
            self._txn = self._cursor = None
        if self.env is not None:
            release_env(self.env)
            self.env = None


def read_records(path: str | os.PathLike):
    """Yield every ``(key, pixels, label)`` of an LMDB once, in key order."""
    reader = LMDBReader(path)
    try:
        for _ in range(len(reader)):
            yield reader.read_keyed()
    finally:
        reader.close()


class LMDBWriter:
    """Write Datum records into a new LMDB, committing every ``commit_every`` records.

    Refuses an existing database (as Caffe's tools do) so nothing is silently mixed.
    """

    def __init__(self, path: str | os.PathLike, commit_every: int = 1000):
        self.path = Path(path)
        if (self.path / "data.mdb").exists():
            raise DataError(f"LMDB {self.path} already exists: remove it or choose another path")
        self.path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(self.path), map_size=MAP_SIZE, subdir=True)
        self.commit_every = commit_every
        self.count = 0
        self._txn = self.env.begin(write=True)

    def put(self, key: str, datum: caffe_pb2.Datum) -> None:
        self._txn.put(key.encode(), datum.SerializeToString())
        self.count += 1
        if self.count % self.commit_every == 0:
            self._txn.commit()
            self._txn = self.env.begin(write=True)

    def close(self) -> None:
        if self._txn is not None:
            self._txn.commit()
            self._txn = None
            self.env.close()

    def __enter__(self) -> LMDBWriter:  # noqa: PYI034 (no typing.Self on Python 3.10)
        return self

    def __exit__(self, *exc) -> None:
        self.close()
