"""A heartbeat between MPI ranks, so that a lost rank ends the job instead of hanging it.

A collective never completes when a rank has died or hung, and it cannot say which one.
So each rank runs a daemon thread that sends a tiny message to every other rank every
``interval`` seconds, on a duplicate of the communicator (so it never mixes with the
gradients), and records when it last heard from each. A rank not heard from for
``timeout`` seconds is *lost*; the training loop's waits check :meth:`Heartbeat.lost`
between polls and stop with an error naming it. A busy rank (rank 0 testing or writing
a snapshot) keeps beating, so a long test is not mistaken for a death.

mpi4py initialises MPI with ``MPI_THREAD_MULTIPLE``, which lets this thread talk while
the main thread waits on its own requests.
"""
from __future__ import annotations

import logging
import threading
import time

import numpy as np

log = logging.getLogger(__name__)

TAG = 7177


class Heartbeat:
    """Beats to and listens for every other rank of an mpi4py communicator, in a thread."""

    def __init__(self, comm, interval: float = 0.5, timeout: float = 20.0):
        from mpi4py import MPI  # noqa: PLC0415

        self.MPI = MPI
        self.comm = comm.Dup()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.interval, self.timeout = float(interval), float(timeout)
        now = time.monotonic()
        self.last_seen = {r: now for r in range(self.size) if r != self.rank}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dlsoft-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        MPI = self.MPI
        inbox = np.zeros(1, dtype=np.int64)
        status = MPI.Status()
        receive = self.comm.Irecv(inbox, source=MPI.ANY_SOURCE, tag=TAG)
        beat = np.full(1, self.rank, dtype=np.int64)
        sends: dict[int, list] = {r: [] for r in self.last_seen}
        next_beat = 0.0
        try:
            while not self._stop.is_set():
                while receive.Test(status):
                    self.last_seen[status.Get_source()] = time.monotonic()
                    receive = self.comm.Irecv(inbox, source=MPI.ANY_SOURCE, tag=TAG)
                now = time.monotonic()
                if now >= next_beat:
                    for peer, pending in sends.items():
                        pending[:] = [r for r in pending if not r.Test()]
                        if len(pending) < 8:  # a dead peer's queue does not grow without bound
                            pending.append(self.comm.Isend(beat, dest=peer, tag=TAG))
                    next_beat = now + self.interval
                self._stop.wait(min(0.05, self.interval / 4))
        finally:
            receive.Cancel()
            receive.Wait()

    def lost(self) -> list[int]:
        """The ranks not heard from for ``timeout`` seconds."""
        now = time.monotonic()
        return sorted(r for r, seen in self.last_seen.items() if now - seen > self.timeout)

    def silence(self, rank: int) -> float:
        return time.monotonic() - self.last_seen[rank]

    def problem(self) -> str | None:
        """Why the job cannot go on (a lost rank), or None."""
        lost = self.lost()
        if not lost:
            return None
        silent = max(self.silence(r) for r in lost)
        return (f"lost rank {', '.join(map(str, lost))} (no heartbeat for {silent:.0f} s: the process died, "
                "hung or its machine is unreachable)")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class ParentWatch:
    """For the children of ``dlsoft train --gpu all``: the launcher watches them, they watch it.

    If the launcher itself dies, nobody would end a child waiting for a lost peer, so a
    child whose parent is gone (it has been re-parented) gives up.
    """

    def __init__(self):
        import os  # noqa: PLC0415

        self._getppid = os.getppid
        self.parent = os.getppid()

    def problem(self) -> str | None:
        if self._getppid() != self.parent:
            return f"the launcher (pid {self.parent}) is gone"
        return None

    def close(self) -> None:
        pass
