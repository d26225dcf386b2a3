"""Devices and array modules.

A Net runs on one device, chosen once: ``"cpu"`` (numpy) or ``"gpu"``/``"gpu:N"``
(cupy). Layer code never imports cupy; it asks a blob or array for its module with
:func:`array_module`, so the CPU path works on machines without cupy.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .errors import DeviceError


@dataclass(frozen=True)
class Device:
    """Where a net's blobs live: ``kind`` is ``"cpu"`` or ``"gpu"``; ``index`` is the GPU ordinal."""

    kind: str = "cpu"
    index: int = 0

    @property
    def is_gpu(self) -> bool:
        return self.kind == "gpu"

    @property
    def xp(self):
        """The array module of this device: numpy or cupy."""
        return cupy_module() if self.is_gpu else np

    def __str__(self) -> str:
        return f"gpu:{self.index}" if self.is_gpu else "cpu"

    def activate(self):
        """A context manager that makes this device current (a no-op on the CPU)."""
        if self.is_gpu:
            return cupy_module().cuda.Device(self.index)
        return _NullContext()


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


CPU = Device("cpu", 0)


def parse_device(spec: "str | Device | None") -> Device:
    """Turn ``"cpu"``, ``"gpu"``, ``"gpu:1"`` or ``"cuda:1"`` into a :class:`Device`.

    Raises :class:`DeviceError` when a GPU is asked for and cupy or the GPU is missing.
    """
    if spec is None:
        return CPU
    if isinstance(spec, Device):
        device = spec
    else:
        text = str(spec).strip().lower()
        if text == "cpu":
            return CPU
        kind, _, index = text.partition(":")
        if kind not in ("gpu", "cuda") or (index and not index.isdigit()):
            raise DeviceError(f"unknown device {spec!r}: expected 'cpu', 'gpu' or 'gpu:N'")
        device = Device("gpu", int(index or 0))
    if device.is_gpu:
        count = gpu_count()
        if count == 0:
            raise DeviceError(f"device {device} requested but no GPU is available "
                              "(install dlsoft[gpu] on a machine with an NVIDIA GPU)")
        if device.index >= count:
            raise DeviceError(f"device {device} requested but only {count} GPU(s) are present")
    return device


@functools.lru_cache(maxsize=None)
def cupy_module():
    """Import cupy, or raise DeviceError saying how to get it."""
    try:
        import cupy  # noqa: PLC0415 - optional dependency, imported only for GPU work
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise DeviceError("cupy is not installed: pip install 'dlsoft[gpu]'") from exc
    return cupy


def gpu_count() -> int:
    """Number of usable CUDA GPUs (0 when cupy or a driver is missing)."""
    try:
        cp = cupy_module()
        return int(cp.cuda.runtime.getDeviceCount())
    except Exception:  # noqa: BLE001 - any failure means "no GPU here"
        return 0


def array_module(array):
    """numpy for numpy arrays, cupy for cupy arrays (without importing cupy otherwise)."""
    if isinstance(array, np.ndarray) or np.isscalar(array):
        return np
    return cupy_module().get_array_module(array)


def to_numpy(array) -> np.ndarray:
    """A host (numpy) copy or view of ``array``, whichever device it lives on."""
    if isinstance(array, np.ndarray):
        return array
    return array.get()
