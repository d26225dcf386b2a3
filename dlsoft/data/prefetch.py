"""The prefetch pipeline: a worker thread keeps ready batches queued so compute never waits.

A *batch source* knows the shapes of one batch (one array per top) and fills
preallocated float32 arrays with the next batch. A :class:`Prefetcher` owns ``depth``
slots of such arrays: the worker takes a free slot, fills it, queues it as ready; the
layer's forward takes a ready slot, copies it into its top blobs and hands the slot back.
Steady state allocates nothing.

On a GPU the slots' host arrays are pinned, and the worker also copies them to
device buffers on a stream of its own (and waits for that copy), so the host-to-device
transfer overlaps compute; forward then only does a device-to-device copy on the
compute stream, and records an event the worker waits on before reusing that buffer.

Shutdown: the worker is a daemon thread polling a stop event, :meth:`Prefetcher.close`
joins it. An exception in the worker is queued in place of a batch and raised in the
main thread by the next :meth:`Prefetcher.next_into` as a one-line :class:`DataError`.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ..backend import CPU, Device
from ..errors import DataError, DlsoftError, one_line

log = logging.getLogger(__name__)

_POLL_S = 0.05


class BatchSource(Protocol):
    """What a Prefetcher reads from."""

    #: the shape of one batch, per top
    shapes: list[tuple[int, ...]]

    def fill(self, arrays: list[np.ndarray]) -> None:
        """Write the next batch into ``arrays`` (float32, ``shapes``). Runs in the worker thread."""

    def close(self) -> None:
        """Release files and cursors (called after the worker has stopped)."""


class _Slot:
    """One batch in flight: host arrays, and on a GPU device buffers plus a 'consumed' event."""

    def __init__(self, shapes, device: Device):
        self.device_arrays = None
        self.consumed = None
        if device.is_gpu:
            xp = device.xp
            self.host = [_pinned_empty(xp, shape) for shape in shapes]
            self.device_arrays = [xp.empty(shape, dtype=np.float32) for shape in shapes]
            self.consumed = xp.cuda.Event(block=False, disable_timing=True)
            self.consumed.record()
        else:
            self.host = [np.empty(shape, dtype=np.float32) for shape in shapes]


def _pinned_empty(xp, shape) -> np.ndarray:
    """A float32 numpy array in page-locked memory (so async host-to-device copies overlap)."""
    count = int(np.prod(shape, dtype=np.int64))
    memory = xp.cuda.alloc_pinned_memory(max(count, 1) * 4)
    return np.frombuffer(memory, dtype=np.float32, count=count).reshape(shape)  # keeps memory alive


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class Prefetcher:
    """Runs ``source.fill`` in a background thread, ``depth`` batches ahead."""

    def __init__(self, source: BatchSource, depth: int = 4, device: Device = CPU, name: str = "data"):
        self.source = source
        self.name = name
        self.device = device
        self.shapes = [tuple(shape) for shape in source.shapes]
        self.depth = depth = max(int(depth), 1)
        with device.activate():
            slots = [_Slot(self.shapes, device) for _ in range(depth)]
        self._free: queue.Queue = queue.Queue()
        self._ready: queue.Queue = queue.Queue()
        for slot in slots:
            self._free.put(slot)
        self._failure: DataError | None = None
        self._stop = threading.Event()
        self._closed = False
        #: seconds forward spent waiting for a batch, and batches delivered (for profiling)
        self.wait_seconds = 0.0
        self.batches = 0
        self._thread = threading.Thread(target=self._run, name=f"dlsoft-prefetch-{name}", daemon=True)
        self._thread.start()

    # ---- worker thread ------------------------------------------------------------------
    def _run(self) -> None:
        try:
            with self.device.activate():
                stream = self.device.xp.cuda.Stream(non_blocking=True) if self.device.is_gpu else None
                while not self._stop.is_set():
                    try:
                        slot = self._free.get(timeout=_POLL_S)
                    except queue.Empty:
                        continue
                    self.source.fill(slot.host)
                    if stream is not None:
                        stream.wait_event(slot.consumed)  # forward's copy out of this slot is done
                        for dst, src in zip(slot.device_arrays, slot.host):
                            dst.set(src, stream=stream)
                        stream.synchronize()
                    self._ready.put(slot)
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the main thread
            self._ready.put(_Failure(exc))

    # ---- main thread --------------------------------------------------------------------
    def next_into(self, tops: Sequence) -> None:
        """Copy the next ready batch into the top blobs (waiting only if none is ready yet)."""
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise DataError(f"{self.name}: the data source was closed")
        start = time.perf_counter()
        while True:
            try:
                item = self._ready.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._ready.empty():
                    raise DataError(f"{self.name}: the prefetch thread stopped") from None
        self.wait_seconds += time.perf_counter() - start
        if isinstance(item, _Failure):
            self._failure = _as_data_error(self.name, item.exc)
            raise self._failure from item.exc
        for top, shape in zip(tops, self.shapes):
            if tuple(top.shape) != shape:
                self._free.put(item)
                raise DataError(f"{self.name}: batch of shape {shape} does not fit top "
                                f"'{top.name}' of shape {tuple(top.shape)}")
        if item.device_arrays is not None:
            for top, array in zip(tops, item.device_arrays):
                top.data[...] = array
            item.consumed.record()
        else:
            for top, array in zip(tops, item.host):
                np.copyto(top.data, array)
        self.batches += 1
        self._free.put(item)

    def skip(self, n: int) -> None:
        """Drop the next ``n`` batches, letting the source skip what it has not read yet.

        Resuming a run fast-forwards every data layer: batches already prefetched are
        dropped, and the source skips the rest without decoding (``skip_batches``); a
        source that cannot skip fills and drops them.
        """
        if n <= 0:
            return
        if self._failure is not None:
            raise self._failure
        self._stop.set()  # pause the worker: the source is only touched by one thread at a time
        self._thread.join()
        self._stop.clear()
        kept = []
        while not self._ready.empty():
            item = self._ready.get()
            if isinstance(item, _Failure) or n == 0:
                kept.append(item)
                continue
            n -= 1
            if item.consumed is not None:
                item.consumed.record()
            self._free.put(item)
        for item in kept:
            self._ready.put(item)
        if n and not kept:
            try:
                if not getattr(self.source, "skip_batches", lambda _: False)(n):
                    slot = self._free.get()
                    try:
                        for _ in range(n):
                            self.source.fill(slot.host)
                    finally:
                        self._free.put(slot)
            except BaseException as exc:  # noqa: BLE001 - reported by next_into, as the worker's are
                self._ready.put(_Failure(exc))
        self._thread = threading.Thread(target=self._run, name=self._thread.name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop and join the worker, then close the source. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._thread.join(timeout=10)
        if self._thread.is_alive():  # pragma: no cover - a source stuck in a system call
            log.warning("%s: prefetch thread did not stop within 10 s", self.name)
            return
        self.source.close()

    def __del__(self):
        self._stop.set()


def _as_data_error(name: str, exc: BaseException) -> DataError:
    if isinstance(exc, DlsoftError):
        detail = exc.args[0] if exc.args else str(exc)
    else:
        detail = f"{type(exc).__name__}: {exc}"
    return DataError(f"{name}: {one_line(detail)}")
