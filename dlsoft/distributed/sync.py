"""Gradient averaging for data-parallel training: bucketed, overlapped with backward.

:class:`GradientSync` is a solver callback (see :mod:`dlsoft.solver.solver`). At set-up
it orders the learnable blobs as backward completes them (the blob of the last layer
first; a shared blob when its owner, the first layer using it, is done) and packs them
into flat float32 *buckets* of about ``bucket_bytes`` (default: 1 MiB, or a sixteenth of
the gradients when that is more; a blob is never split). A Net hook after each layer's
backward (:meth:`Net.add_after_backward`) copies every bucket whose blobs are all final
into its buffer and starts a non-blocking allreduce of it, so the sums travel while
backward goes on for the layers below; the hook also polls the requests in flight,
which is what makes an MPI library progress them. Once backward ends,
``on_gradients_ready`` waits for the rest, also sums the loss, and writes
``sum / size`` back into the diffs: every rank then holds the gradient of the global
batch and applies the same update. With ``iter_size > 1`` only the last pass's backward
starts allreduces (the diffs accumulate locally before that).

Statistics (:attr:`GradientSync.stats`) say how much of the communication was hidden:
``overlap_s`` sums each bucket's time in flight while backward still ran (until the hook
saw it complete, or backward ended), ``wait_s`` is the time the rank waited after
backward (the allreduce's exposed cost).

Initial weights (and solver history) are broadcast from rank 0 at the first
``on_start``, so every rank starts from rank 0's fillers, fine-tuning weights or snapshot.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from .. import random as dl_random
from ..errors import DistributedError
from ..solver.signals import StopNow

log = logging.getLogger(__name__)

#: buckets of at least 1 MiB, and at most about MAX_BUCKETS of them (each costs latency)
DEFAULT_BUCKET_BYTES = 1 << 20
MAX_BUCKETS = 16


class _Bucket:
    def __init__(self, indices: list[int], sizes: list[int], ready_layer: int, xp):
        self.indices = indices
        self.offsets = np.cumsum([0, *sizes]).tolist()
        self.ready_layer = ready_layer
        self.buffer = xp.zeros(self.offsets[-1], dtype=np.float32)
        self.request = None
        self.started = self.completed = 0.0  # perf_counter times, for the overlap statistics


class GradientSync:
    """Averages ``solver.net``'s gradients over ``comm`` every iteration (a solver callback)."""

    def __init__(self, comm, solver, bucket_bytes: int | None = None, heartbeat=None):
        self.comm = comm
        self.solver = solver
        self.net = net = solver.net
        self.heartbeat = heartbeat
        self.iter_size = max(int(solver.param.iter_size), 1)
        xp = net.device.xp
        owners = net.param_layers()
        # lr_mult 0 blobs (BatchNorm statistics, frozen layers) get no update: not summed.
        order = sorted((i for i, lr in enumerate(net.params_lr) if lr != 0), key=lambda i: -owners[i])
        if bucket_bytes is None:  # 1 MiB, or 1/16 of the gradients: latency stays bounded on big nets
            total = sum(net.learnable_params[i].count for i in order) * 4
            bucket_bytes = max(DEFAULT_BUCKET_BYTES, total // MAX_BUCKETS)
        limit = max(int(bucket_bytes) // 4, 1)
        self.buckets: list[_Bucket] = []
        group: list[int] = []
        for i in order:
            group.append(i)
            if sum(net.learnable_params[j].count for j in group) >= limit:
                self.buckets.append(self._bucket(group, owners, xp))
                group = []
        if group:
            self.buckets.append(self._bucket(group, owners, xp))
        self._loss = xp.zeros(1, dtype=np.float32)
        self._passes = 0
        self._started = False
        self.stats = {"iterations": 0, "overlap_s": 0.0, "wait_s": 0.0, "pack_s": 0.0,
                      "buckets": len(self.buckets), "floats": sum(b.offsets[-1] for b in self.buckets)}
        net.add_after_backward(self._after_backward)
        solver.add_callback(self)

    def _bucket(self, group: list[int], owners: list[int], xp) -> _Bucket:
        params = self.net.learnable_params
        return _Bucket(list(group), [params[j].count for j in group], min(owners[j] for j in group), xp)

    # ---- the solver callback ----------------------------------------------------------------
    def on_start(self, solver) -> None:
        """Once: every rank takes rank 0's weights and solver history, and its own random stream."""
        if self._started:
            return
        self._started = True
        dl_random.split(self.comm.rank)  # after any restore: dropout masks differ between ranks
        blobs = [blob.data for blob in self.net.learnable_params] + list(solver.rule.history)
        xp = self.net.device.xp
        sizes = [int(a.size) for a in blobs]
        flat = xp.empty(sum(sizes), dtype=np.float32)
        offset = 0
        for array, n in zip(blobs, sizes):
            flat[offset:offset + n] = array.reshape(-1)
            offset += n
        self.comm.broadcast(flat, 0, check=self.check)
        offset = 0
        for array, n in zip(blobs, sizes):
            array[...] = flat[offset:offset + n].reshape(array.shape)
            offset += n
        log.info("rank %d of %d: weights and solver history broadcast from rank 0 (%d buckets, %.2f MiB "
                 "of gradients per iteration)", self.comm.rank, self.comm.size, len(self.buckets),
                 self.stats["floats"] * 4 / 2**20)

    def _after_backward(self, layer_index: int) -> None:
        armed = self._passes == self.iter_size - 1
        if layer_index == 0:
            self._passes += 1
        if not armed:
            return
        for bucket in self.buckets:
            if bucket.ready_layer == layer_index and bucket.request is None:
                self._start(bucket)
        for bucket in self.buckets:  # give the library a chance to progress what is in flight
            if bucket.request is not None and not bucket.completed and bucket.request.test():
                bucket.completed = time.perf_counter()
        if self.solver.stop_requested():
            raise StopNow

    def _start(self, bucket: _Bucket) -> None:
        start = time.perf_counter()
        params = self.net.learnable_params
        for k, j in enumerate(bucket.indices):
            bucket.buffer[bucket.offsets[k]:bucket.offsets[k + 1]] = params[j].diff.reshape(-1)
        bucket.request = self.comm.iallreduce(bucket.buffer)
        bucket.started, bucket.completed = time.perf_counter(), 0.0
        self.stats["pack_s"] += bucket.started - start

    def on_gradients_ready(self, solver, loss: float) -> float:
        """Finish the allreduces, write the mean gradients into the diffs, return the mean loss."""
        self._passes = 0
        backward_done = time.perf_counter()
        for bucket in self.buckets:  # a net whose backward never reached a bucket's layer
            if bucket.request is None:
                self._start(bucket)
        self._loss[0] = loss
        requests = [b.request for b in self.buckets] + [self.comm.iallreduce(self._loss)]
        try:
            self.comm.wait(requests, "gradient allreduce", self.check)
        finally:
            for bucket in self.buckets:
                bucket.request = None
        done = time.perf_counter()
        for bucket in self.buckets:  # each bucket's time in flight while backward still ran
            self.stats["overlap_s"] += max(min(bucket.completed or backward_done, backward_done) - bucket.started, 0.0)
        scale = np.float32(1.0 / self.comm.size)
        params = self.net.learnable_params
        for bucket in self.buckets:
            for k, j in enumerate(bucket.indices):
                diff = params[j].diff
                diff[...] = bucket.buffer[bucket.offsets[k]:bucket.offsets[k + 1]].reshape(diff.shape)
                diff *= scale
        self.stats["wait_s"] += done - backward_done
        self.stats["iterations"] += 1
        return float(self._loss[0]) / self.comm.size

    # ---- the watchdog -------------------------------------------------------------------------
    def check(self) -> None:
        """Called between polls of a wait: stop on a signal, fail on a lost rank.

        ``heartbeat`` is anything with ``problem() -> str | None`` (:mod:`.heartbeat`).
        """
        if self.solver.stop_requested():
            raise StopNow
        problem = self.heartbeat.problem() if self.heartbeat is not None else None
        if problem:
            kept = self.solver.last_snapshot or "none written by this rank"
            raise DistributedError(f"rank {self.comm.rank} of {self.comm.size}: {problem}; stopping all ranks "
                                   f"at iteration {self.solver.iter}; last snapshot: {kept}")

    def report(self) -> str:
        s = self.stats
        n = max(s["iterations"], 1)
        hidden = s["overlap_s"] / (s["overlap_s"] + s["wait_s"]) if s["overlap_s"] + s["wait_s"] else 0.0
        return (f"allreduce of {s['floats'] * 4 / 2**20:.2f} MiB in {s['buckets']} bucket(s): "
                f"{s['wait_s'] / n * 1e3:.2f} ms/iter waited after backward, "
                f"{s['overlap_s'] / n * 1e3:.2f} ms/iter of bucket time in flight during backward "
                f"({hidden:.0%} hidden)")
