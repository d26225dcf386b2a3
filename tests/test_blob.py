"""Blob: storage reuse, lazy diffs, sharing, pycaffe's accessors."""
from __future__ import annotations

import numpy as np
import pytest

from dlsoft.blob import Blob


def test_reshape_reuses_storage_when_it_fits():
    blob = Blob((4, 5))
    data = blob.data
    blob.reshape(2, 5)
    assert np.shares_memory(blob.data, data) and blob.count == 10
    blob.reshape((3, 10))
    assert not np.shares_memory(blob.data, data) and blob.shape == (3, 10)


def test_diff_is_allocated_on_first_use_and_zero():
    blob = Blob((2, 3))
    assert blob._diff_store is None
    np.testing.assert_array_equal(blob.diff, 0)
    assert blob.diff.shape == (2, 3)


def test_assignment_writes_into_the_existing_buffer():
    blob = Blob((2, 2))
    view = blob.data
    blob.data = np.ones((2, 2))
    assert view.sum() == 4


def test_shared_blobs_see_each_others_data_and_diff():
    a, b = Blob((3,)), Blob((3,))
    b.share_data(a)
    b.share_diff(a)
    a.data[...] = [1, 2, 3]
    a.diff[...] = 7
    np.testing.assert_array_equal(b.data, [1, 2, 3])
    np.testing.assert_array_equal(b.diff, 7)
    with pytest.raises(ValueError):
        Blob((4,)).share_data(a)


def test_pycaffe_legacy_accessors():
    blob = Blob((2, 3, 4, 5))
    assert (blob.num, blob.channels, blob.height, blob.width) == (2, 3, 4, 5)
    assert (Blob((6, 7)).height, Blob((6, 7)).width) == (1, 1)
