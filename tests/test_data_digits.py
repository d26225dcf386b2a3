"""The bundled MNIST digits: file, fixed split, LMDB export."""
from __future__ import annotations

import numpy as np
import pytest

from dlsoft.data import digits
from dlsoft.data.lmdb_io import read_records
from dlsoft.errors import DataError


def test_bundled_file_is_small_and_complete():
    assert digits.DATA_FILE.stat().st_size < 1.5e6
    images, labels = digits.load_digits("all")
    assert images.shape == (5000, 1, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255 and images.min() == 0
    assert 0.05 < (images > 128).mean() < 0.3  # ink on a dark background, as MNIST


def test_split_counts_balance_and_disjointness():
    train, test = digits.split_indices("train"), digits.split_indices("test")
    assert len(train) == 4000 and len(test) == 1000
    assert not set(train) & set(test) and len(set(train) | set(test)) == 5000
    _, train_labels = digits.load_digits("train")
    _, test_labels = digits.load_digits("test")
    assert np.bincount(train_labels).tolist() == [400] * 10
    assert np.bincount(test_labels).tolist() == [100] * 10
    assert train_labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]  # interleaved by digit
    _, file_labels = digits._load_all()
    for d in range(10):  # per digit: first 400 rows in file order train, last 100 test
        rows = np.flatnonzero(file_labels == d)
        assert sorted(train[train_labels == d]) == rows[:400].tolist()
        assert sorted(test[test_labels == d]) == rows[400:].tolist()


def test_unknown_split():
    with pytest.raises(DataError, match="unknown digits split 'val'"):
        digits.load_digits("val")


def test_write_lmdb(tmp_path):
    assert digits.write_lmdb("test", tmp_path / "db") == 1000
    records = list(read_records(tmp_path / "db"))
    images, labels = digits.load_digits("test")
    assert records[0][0] == "00000000" and records[-1][0] == "00000999"
    np.testing.assert_array_equal(np.stack([p for _, p, _ in records]), images)
    assert [label for _, _, label in records] == labels.tolist()
