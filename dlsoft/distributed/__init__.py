"""Data-parallel training over processes and machines (MPI) and the GPUs of a machine (NCCL).

Every rank trains the same net on its own shard of the data (:mod:`dlsoft.data.shard`:
rank r of N reads batches r, r+N, r+2N, ... of what one process would read), averages
the gradients with the others each iteration (:class:`GradientSync`: flat buckets,
allreduces started while backward still runs), and applies the same update; rank 0
alone logs, tests and snapshots. The pieces:

- :mod:`.comm`: the communicator interface and its MPI (mpi4py) and NCCL (cupy) transports;
- :mod:`.sync`: bucketed, overlapped gradient averaging (a solver callback);
- :mod:`.heartbeat`: lost-rank detection between MPI ranks;
- :mod:`.launch`: launcher detection and ``--gpu all``'s one-process-per-GPU spawner;
- :mod:`.runner`: :class:`DataParallel`, one rank's set-up around an ordinary Solver.

Nothing here is imported by a single-process run; MPI is loaded only when a launcher
(``mpirun``) or ``--distributed`` asks for it.
"""
from __future__ import annotations

from .comm import (Communicator, LocalCommunicator, MPICommunicator, NCCLCommunicator, has_mpi,
                   has_nccl)
from .sync import GradientSync

__all__ = ["Communicator", "LocalCommunicator", "MPICommunicator", "NCCLCommunicator", "GradientSync",
           "DataParallel", "has_mpi", "has_nccl"]


def __getattr__(name: str):
    if name == "DataParallel":  # imports MPI-facing modules only when asked for
        from .runner import DataParallel
        return DataParallel
    raise AttributeError(name)
