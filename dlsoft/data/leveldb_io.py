"""Caffe's LevelDB data sets (``data_param.backend: LEVELDB``): keys -> serialized ``Datum``.

The same records as the LMDB ones (:mod:`.lmdb_io`), read in key order with wrap-around,
through plyvel, the optional extra ``leveldb`` (``pip install 'dlsoft[leveldb]'``).
LevelDB lets one process open a database once, so readers of one folder share a handle.
"""
from __future__ import annotations

import os
import threading

import numpy as np

from ..errors import DataError, one_line
from .lmdb_io import datum_to_array, parse_datum

_dbs: dict[str, list] = {}
_dbs_lock = threading.Lock()


def _plyvel():
    try:
        import plyvel  # noqa: PLC0415 - optional extra
    except ImportError:
        raise DataError("backend LEVELDB needs the plyvel package: pip install 'dlsoft[leveldb]' "
                        "(or pip install plyvel), or convert the data to LMDB") from None
    return plyvel


def _open(path: str):
    key = os.path.realpath(path)
    with _dbs_lock:
        if key not in _dbs:
            plyvel = _plyvel()
            if not os.path.isfile(os.path.join(path, "CURRENT")):
                raise DataError(f"LevelDB not found: {path} (expected a folder holding CURRENT)")
            try:
                _dbs[key] = [plyvel.DB(path, create_if_missing=False), 0]
            except plyvel.Error as exc:
                raise DataError(f"cannot open LevelDB {path}: {one_line(exc)}") from None
        _dbs[key][1] += 1
        return _dbs[key][0]


def _release(db) -> None:
    with _dbs_lock:
        for key, entry in list(_dbs.items()):
            if entry[0] is db:
                entry[1] -= 1
                if entry[1] == 0:
                    del _dbs[key]
                    db.close()
                return


class LevelDBReader:
    """Datum records of a LevelDB in key order, wrapping around; the LMDBReader interface."""

    def __init__(self, path: str | os.PathLike, is_color: bool | None = None):
        self.path = str(path)
        self.is_color = is_color
        self.db = _open(self.path)
        self._iterator = None
        if next(self.db.iterator(include_value=False), None) is None:
            self.close()
            raise DataError(f"LevelDB {self.path} is empty")

    def first(self) -> tuple[str, np.ndarray, int]:
        key, value = next(self.db.iterator())
        return self._decode(key, value)

    def skip(self, n: int) -> None:
        for _ in range(n):
            self._advance()

    def read(self) -> tuple[str, np.ndarray, int]:
        key, pixels, label = self._decode(*self._advance())
        return f"LevelDB {self.path} key {key!r}", pixels, label

    def _advance(self) -> tuple[bytes, bytes]:
        if self._iterator is not None:
            item = next(self._iterator, None)
            if item is not None:
                return item
        self._iterator = self.db.iterator()  # (re)start: wrap around, as Caffe's DataReader does
        return next(self._iterator)

    def _decode(self, key: bytes, value: bytes) -> tuple[str, np.ndarray, int]:
        where = f"LevelDB {self.path} key {key.decode(errors='replace')!r}"
        datum = parse_datum(value, where)
        return key.decode(errors="replace"), datum_to_array(datum, where, self.is_color), datum.label

    def close(self) -> None:
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None
        if self.db is not None:
            _release(self.db)
            self.db = None
