"""The Data layer's LEVELDB backend (plyvel, the optional extra ``leveldb``): the same
Datum records give the same batches from a LevelDB as from an LMDB; without plyvel the
error is one line saying what to install."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from gradcheck import run_layer

from dlsoft.data.lmdb_io import LMDBWriter, array_to_datum
from dlsoft.errors import DataError


def records(count=5, seed=0):
    rng = np.random.default_rng(seed)
    return [(f"{i:08d}", rng.integers(0, 256, (3, 4, 5), dtype=np.uint8), i % 3) for i in range(count)]


def text(source, backend, batch=2):
    return (f'type: "Data" top: "data" top: "label" transform_param {{ scale: 0.5 }} '
            f'data_param {{ source: "{source}" batch_size: {batch} backend: {backend} }}')


def test_leveldb_batches_equal_the_lmdb_ones(tmp_path):
    plyvel = pytest.importorskip("plyvel")
    db = plyvel.DB(str(tmp_path / "level"), create_if_missing=True)
    with LMDBWriter(tmp_path / "lmdb") as lmdb_db:
        for key, pixels, label in records():
            db.put(key.encode(), array_to_datum(pixels, label).SerializeToString())
            lmdb_db.put(key, array_to_datum(pixels, label))
    db.close()
    level, _, level_tops = run_layer(text(tmp_path / "level", "LEVELDB"), [], phase="TEST")
    lmdb, _, lmdb_tops = run_layer(text(tmp_path / "lmdb", "LMDB"), [], phase="TEST")
    for _ in range(4):                                   # 8 records from 5: wraps around
        for a, b in zip(level_tops, lmdb_tops):
            np.testing.assert_array_equal(a.data, b.data)
        level.forward([], level_tops)
        lmdb.forward([], lmdb_tops)
    expected = records()
    np.testing.assert_array_equal(level_tops[1].data, [expected[k][2] for k in (3, 4)])
    level.close()
    lmdb.close()


def test_leveldb_errors(tmp_path, monkeypatch):
    pytest.importorskip("plyvel")
    with pytest.raises(DataError, match=r"layer 'data' \(type Data\): LevelDB not found: .*nodb"):
        run_layer(text(tmp_path / "nodb", "LEVELDB"), [])
    monkeypatch.setitem(sys.modules, "plyvel", None)      # as if the extra were not installed
    with pytest.raises(DataError, match=r"needs the plyvel package: pip install 'dlsoft\[leveldb\]'"):
        run_layer(text(tmp_path / "nodb", "LEVELDB"), [])
