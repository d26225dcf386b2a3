"""Blob: Caffe's unit of storage, a ``data`` array and a ``diff`` array of one shape."""
from __future__ import annotations

import math
import os
from typing import Iterable

import numpy as np

from .backend import CPU, Device, to_numpy
from .errors import NetDefinitionError

DTYPE = np.float32
#: Blobs below this many elements are allocated without asking how much memory is free.
_CHECK_ABOVE = 1 << 20
#: Environment variable: the most bytes of memory dlsoft may count on (default: what is free).
MEMORY_LIMIT_ENV = "DLSOFT_MEMORY_LIMIT"


def available_bytes(device: Device) -> int | None:
    """Memory free for new arrays on ``device`` (host: MemAvailable; GPU: free device memory),
    at most ``$DLSOFT_MEMORY_LIMIT`` bytes when that is set."""
    limit = os.environ.get(MEMORY_LIMIT_ENV, "")
    free = _free_bytes(device)
    if limit.isdigit():
        return int(limit) if free is None else min(free, int(limit))
    return free


def _free_bytes(device: Device) -> int | None:
    try:
        if device.is_gpu:
            with device.activate():
                return int(device.xp.cuda.runtime.memGetInfo()[0])
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):  # no way to tell: do not refuse
        return None


def format_bytes(count: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:,} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} EiB"


def check_allocation(count: int, device: Device, what: str) -> None:
    """NetDefinitionError if ``count`` float32 values cannot fit in ``device``'s free memory.

    Asked before allocating, so a net whose shapes ask for terabytes is refused with
    the numbers instead of ending in a MemoryError (or the kernel's OOM killer). A blob
    needs room for three times its data: its diff when training, and a filler's
    float64 draw while it is filled.
    """
    if count <= _CHECK_ABOVE:
        return
    needed = count * np.dtype(DTYPE).itemsize
    available = available_bytes(device)
    if needed >= 2 ** 62 or (available is not None and 3 * needed > available):
        have = f"{format_bytes(available)} available on {device}" if available is not None else "far too much"
        raise NetDefinitionError(f"{what} needs {format_bytes(needed)} ({count:,} float32 values), {have}: "
                                 "reduce the batch size, the input size, num_output or kernel_size")


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
        return math.prod(self._shape[start:end])

    def canonical_axis(self, axis: int) -> int:
        """Turn a possibly negative axis into 0..num_axes-1, checking the range."""
        n = len(self._shape)
        if not -n <= axis < max(n, 1):
            raise NetDefinitionError(f"axis {axis} out of range for blob '{self.name}' of shape {self._shape} "
                                     f"(axes are -{n}..{n - 1})")
        return axis % n if n else 0

    def reshape(self, *shape) -> "Blob":
        """Give the blob a new shape; storage is reused when it is large enough."""
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = tuple(shape[0])
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise NetDefinitionError(f"blob '{self.name}': negative dimension in shape {shape}")
        count = math.prod(shape)  # exact: numpy's int64 product wraps around silently
        if count > self._capacity:
            check_allocation(count, self.device, f"blob '{self.name}' of shape {shape}")
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

    @property
    def data_storage(self):
        """The flat array ``data`` is a view of (blobs sharing data share this object)."""
        return self._data_store

    def use_data_storage(self, storage) -> None:
        """Make ``data`` a view of the flat array ``storage`` (at least ``count`` elements),
        which other blobs may use too: the net's memory plan hands out buffers this way."""
        if storage.size < self.count:
            raise ValueError(f"blob {self.name!r}: storage of {storage.size} elements cannot hold {self.count}")
        self._data_store = storage
        self._capacity = storage.size
        self._data = storage[:self.count].reshape(self._shape)

    def share_diff(self, other: "Blob") -> None:
        """Make this blob use ``other``'s diff storage (same count required)."""
        self._check_same_count(other)
        self._diff_store = other.diff.reshape(-1)
        self._diff = other.diff.reshape(self._shape)

    def _check_same_count(self, other: "Blob") -> None:
        if other.count != self.count:
            raise ValueError(f"cannot share blob {other.name!r} {other.shape} with {self.name!r} {self.shape}")

    @property
    def storage(self):
        """The flat array this blob's data lives in (one object for blobs sharing storage)."""
        return self._data_store

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
        self.diff[...] = value  # through the getter: the diff is allocated on first use

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
