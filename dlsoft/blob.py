"""Blob: Caffe's unit of storage, a ``data`` array and a ``diff`` array of one shape."""
from __future__ import annotations

from typing import Iterable

import numpy as np

from .backend import CPU, Device, to_numpy

DTYPE = np.float32


class Blob:
    """An N-d float32 array with a gradient twin, on one device.

    ``data`` and ``diff`` are allocated when the blob is (re)shaped and reused from
    then on; :meth:`reshape` only allocates when the element count grows, as Caffe's
    Blob does, so a net reshaped to a smaller batch keeps its memory.
    """

    __slots__ = ("name", "device", "_shape", "_count", "_data", "_diff", "_capacity", "_data_store", "_diff_store")

    def __init__(self, shape: Iterable[int] = (), device: Device = CPU, name: str = ""):
        self.name = name
        self.device = device
        self._shape: tuple[int, ...] = ()
        self._capacity = -1
        self._data_store = None
        self._diff_store = None
        self._data = None
        self._diff = None
        self.reshape(shape)

    @property
    def xp(self):
        """numpy or cupy: the array module of this blob's device."""
        return self.device.xp

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def count(self) -> int:
        return self._count

    @property
    def num_axes(self) -> int:
        return len(self._shape)

    # pycaffe's legacy 4-d accessors (Caffe's LegacyShape: 1 for missing axes).
    @property
    def num(self) -> int:
        return self._legacy(0)

    @property
    def channels(self) -> int:
        return self._legacy(1)

    @property
    def height(self) -> int:
        return self._legacy(2)

    @property
    def width(self) -> int:
        return self._legacy(3)

    def _legacy(self, index: int) -> int:
        if len(self._shape) > 4:
            raise ValueError(f"blob {self.name!r} of shape {self._shape} has more than 4 axes")
        return self._shape[index] if index < len(self._shape) else 1

    def count_from(self, start: int, end: int | None = None) -> int:
        """Product of the dimensions in ``shape[start:end]`` (Caffe's ``count(start, end)``)."""
        return int(np.prod(self._shape[start:end], dtype=np.int64))

    def canonical_axis(self, axis: int) -> int:
        """Turn a possibly negative axis into 0..num_axes-1, checking the range."""
        n = len(self._shape)
        if not -n <= axis < max(n, 1):
            raise IndexError(f"axis {axis} out of range for blob {self.name!r} of shape {self._shape}")
        return axis % n if n else 0

    def reshape(self, *shape) -> "Blob":
        """Give the blob a new shape; storage is reused when it is large enough."""
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = tuple(shape[0])
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"blob {self.name!r}: negative dimension in shape {shape}")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count > self._capacity:
            with self.device.activate():
                self._data_store = self.xp.zeros(count, dtype=DTYPE)
            self._diff_store = None  # allocated on first use: inference nets never need it
            self._capacity = count
        self._shape = shape
        self._count = count
        self._data = self._data_store[:count].reshape(shape)
        self._diff = None
        return self

    def reshape_like(self, other: "Blob") -> "Blob":
        return self.reshape(other.shape)

    def share_data(self, other: "Blob") -> None:
        """Make this blob use ``other``'s data storage (same count required)."""
        self._check_same_count(other)
        self._data_store = other._data_store
        self._data = other._data.reshape(self._shape)

    def share_diff(self, other: "Blob") -> None:
        """Make this blob use ``other``'s diff storage (same count required)."""
        self._check_same_count(other)
        self._diff_store = other.diff.reshape(-1)
        self._diff = other.diff.reshape(self._shape)

    def _check_same_count(self, other: "Blob") -> None:
        if other.count != self.count:
            raise ValueError(f"cannot share blob {other.name!r} {other.shape} with {self.name!r} {self.shape}")

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value) -> None:
        # Assign into the existing buffer so that layers holding references keep seeing it.
        self._data[...] = value

    @property
    def diff(self):
        if self._diff is None:
            count = self.count
            if self._diff_store is None or self._diff_store.size < count:
                with self.device.activate():
                    self._diff_store = self.xp.zeros(max(count, self._capacity), dtype=DTYPE)
            self._diff = self._diff_store[:count].reshape(self._shape)
        return self._diff

    @diff.setter
    def diff(self, value) -> None:
        self._diff[...] = value

    def to(self, device: Device) -> "Blob":
        """Move storage to ``device`` (keeping contents)."""
        if device == self.device:
            return self
        data = to_numpy(self._data)
        diff = None if self._diff is None else to_numpy(self._diff)
        self.device = device
        self._capacity = -1
        self.reshape(self._shape)
        self._data[...] = self.xp.asarray(data)
        if diff is not None:
            self.diff[...] = self.xp.asarray(diff)
        return self

    def __repr__(self) -> str:
        return f"Blob({self.name!r}, shape={self._shape}, device={self.device})"
