"""Work buffers that the layers of every net on one device share, per thread.

Layers run one at a time, so the im2col buffers of all convolutions can be one buffer,
sized for the largest (Caffe 1.0 gave each layer its own, which costs hundreds of MiB on
CaffeNet-sized nets). A layer asks for a buffer by purpose each time it needs one (never
keeping it past the call), and may check whether it is still the last layer that
wrote it (:func:`owner`), to reuse what it left there.
"""
from __future__ import annotations

import threading

import numpy as np

_local = threading.local()


def _table() -> dict:
    table = getattr(_local, "buffers", None)
    if table is None:
        table = _local.buffers = {}
    return table


def buffer(device, purpose: str, size: int, owner=None):
    """A flat float32 array of ``size`` elements for ``purpose`` on ``device``; ``owner``
    (a layer) is recorded as its last writer. Grows, never shrinks."""
    table, key = _table(), (device.kind, device.index, purpose)
    entry = table.get(key)
    if entry is None or entry[0].size < size:
        with device.activate():
            entry = [device.xp.empty(max(size, 1), dtype=np.float32), None]
        table[key] = entry
    entry[1] = owner
    return entry[0][:size]


def owner(device, purpose: str):
    """The layer that last took the ``purpose`` buffer on this thread (None if none)."""
    entry = _table().get((device.kind, device.index, purpose))
    return None if entry is None else entry[1]
