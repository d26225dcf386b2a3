"""One rank of a data-parallel run: communicator, seed, logging, heartbeat, solver hooks.

The training itself is the ordinary solver; :class:`DataParallel` only prepares the
rank around it::

    with DataParallel("mpi") as dp:                  # or "nccl"
        dp.agree_on_seed(solver_param.random_seed)
        solver = Solver(path, device=dp.device or device, shard=dp.shard)
        dp.attach(solver)                            # gradient averaging + SIGTERM handling
        solver.solve(resume=snapshot)

- every rank builds the same nets from the same seed (broadcast from rank 0 when the
  solver file sets none), so data layers shuffle and crop alike and only the shard
  differs; the weights are broadcast from rank 0 anyway;
- ranks other than 0 log warnings and errors only;
- a failure on any rank (a lost peer, a data error, a NaN) aborts the whole job once
  the error line is out, so the others never wait for a rank that has gone.
"""
from __future__ import annotations

import atexit
import logging
import os
import sys

import numpy as np

from ..data.shard import Shard
from ..errors import DistributedError
from ..solver.snapshot import global_batch
from . import launch
from .comm import Communicator, MPICommunicator, NCCLCommunicator, decode_nccl_id
from .heartbeat import Heartbeat, ParentWatch
from .sync import GradientSync

log = logging.getLogger(__name__)

KINDS = ("mpi", "nccl")
DEFAULT_HEARTBEAT_TIMEOUT_S = 20.0


class DataParallel:
    """This process's place in a data-parallel job (see the module docstring)."""

    def __init__(self, kind: str = "mpi", *, heartbeat_timeout: float | None = None,
                 bucket_bytes: int | None = None, gpus: list[int] | None = None):
        if kind not in KINDS:
            raise DistributedError(f"--distributed must be one of {', '.join(KINDS)}, got {kind!r}")
        timeout = heartbeat_timeout if heartbeat_timeout is not None else \
            float(os.environ.get("DLSOFT_HEARTBEAT_TIMEOUT", DEFAULT_HEARTBEAT_TIMEOUT_S))
        self.kind = kind
        if bucket_bytes is None and os.environ.get("DLSOFT_BUCKET_MIB"):
            bucket_bytes = int(float(os.environ["DLSOFT_BUCKET_MIB"]) * 2 ** 20)
        self.bucket_bytes = bucket_bytes
        self.device: str | None = None
        self.mpi: MPICommunicator | None = None
        self.heartbeat: Heartbeat | ParentWatch | None = None
        self.sync: GradientSync | None = None
        self._failed_code: int | None = None
        spawned = launch.spawned_rank()
        if spawned is not None:  # a child of `dlsoft train --gpu all`: NCCL, the parent watches
            rank, size, gpu, nccl_id = spawned
            self.device = f"gpu:{gpu}"
            self.comm: Communicator = _nccl(rank, size, decode_nccl_id(nccl_id), gpu)
            self.heartbeat = ParentWatch()
        else:
            self.mpi = MPICommunicator()
            if kind == "nccl":
                gpu = _gpu_of(launch.local_rank(), gpus)
                self.device = f"gpu:{gpu}"
                nccl_id = _nccl_unique_id() if self.mpi.rank == 0 else None
                nccl_id = self.mpi.broadcast_object(nccl_id)
                self.comm = _nccl(self.mpi.rank, self.mpi.size, nccl_id, gpu)
            else:
                self.comm = self.mpi
            if self.mpi.size > 1:
                self.heartbeat = Heartbeat(self.mpi.comm, timeout=timeout)
        self.rank, self.size = self.comm.rank, self.comm.size
        self.shard = Shard(self.rank, self.size)
        atexit.register(self._abort_if_failed)  # runs before mpi4py's MPI_Finalize (LIFO)
        if self.rank != 0:
            logging.getLogger("dlsoft").setLevel(logging.WARNING)

    @property
    def root(self) -> bool:
        return self.rank == 0

    def agree_on_seed(self, random_seed: int) -> None:
        """Seed every rank alike: the solver's ``random_seed``, or one drawn by rank 0."""
        from .. import random as dl_random  # noqa: PLC0415

        if random_seed is not None and random_seed >= 0:
            return  # the solver seeds itself with it on every rank
        seed = int(np.random.default_rng().integers(2 ** 31)) if self.rank == 0 else None
        if self.mpi is not None:
            seed = self.mpi.broadcast_object(seed)
        else:
            seed = int(os.environ.get("DLSOFT_SEED", "0"))  # the --gpu launcher chose it
        dl_random.set_seed(seed)

    def attach(self, solver) -> GradientSync:
        """Average ``solver``'s gradients over the ranks; SIGTERM (mpirun's Ctrl-C) stops as SIGINT does."""
        solver.sigterm_effect = solver.sigint_effect
        self.sync = GradientSync(self.comm, solver, self.bucket_bytes, heartbeat=self.heartbeat)
        if self.root:
            batch = global_batch(solver.net, 1)
            log.info("Data-parallel training on %d ranks (%s%s): %s per rank, %s per iteration", self.size,
                     self.kind.upper(), f", {_library()}" if self.mpi is not None else "",
                     f"batch {batch}" if batch else "the train data", f"{batch * self.size}" if batch else "all")
        return self.sync

    def fail(self, code: int = 2) -> None:
        """Mark the run failed: at exit (after the error line is printed) the whole job is aborted."""
        self._failed_code = code

    def _abort_if_failed(self) -> None:
        if self._failed_code is None or self.size == 1:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.abort(self._failed_code)

    def close(self) -> None:
        if self.sync is not None and self.root and self.sync.stats["iterations"]:
            log.info("rank 0: %s", self.sync.report())
        if self.heartbeat is not None:
            self.heartbeat.close()
            self.heartbeat = None
        if self.comm is not self.mpi:
            self.comm.close()

    def __enter__(self) -> "DataParallel":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not issubclass(exc_type, KeyboardInterrupt):
            self.fail(2)
        if self._failed_code is None:
            self.close()


def wanted(distributed: str | None, env=None) -> str | None:
    """The transport this process trains with: ``--distributed``, else what its launcher says, else None.

    ``mpirun -n N`` with N > 1 means MPI; a child of ``dlsoft train --gpu all`` means NCCL;
    ``--distributed none`` (or a 1-rank mpirun) trains as a single process.
    """
    env = os.environ if env is None else env
    if distributed == "none":
        return None
    if distributed:
        return distributed
    if launch.spawned_rank(env) is not None:
        return "nccl"
    if launch.mpi_world(env) and launch.world_size(env) != 1:
        return "mpi"
    return None


def _gpu_of(local: int, gpus: list[int] | None) -> int:
    if gpus:
        return gpus[local % len(gpus)]
    return local


def _nccl(rank: int, size: int, nccl_id, gpu: int) -> NCCLCommunicator:
    import cupy  # noqa: PLC0415

    cupy.cuda.Device(gpu).use()
    return NCCLCommunicator(rank, size, nccl_id)


def _nccl_unique_id():
    from cupy.cuda import nccl  # noqa: PLC0415

    return nccl.get_unique_id()


def _library() -> str:
    from mpi4py import MPI  # noqa: PLC0415

    return MPI.Get_library_version().split(",")[0].strip()


def train(kind: str, build, resume: str | None = None, *, random_seed: int = -1, report=None,
          heartbeat_timeout: float | None = None, gpus: list[int] | None = None) -> None:
    """Train as one rank of a ``kind`` job (what ``dlsoft train`` runs under mpirun or ``--gpu all``).

    ``build(shard, device)`` makes the rank's :class:`~dlsoft.solver.Solver` (``device``
    None: the caller's choice); ``report(solver)`` runs on rank 0 after training.
    """
    with DataParallel(kind, heartbeat_timeout=heartbeat_timeout, gpus=gpus) as dp:
        dp.agree_on_seed(random_seed)
        solver = build(dp.shard, dp.device)
        dp.attach(solver)
        with solver:
            solver.solve(resume=resume)
            if dp.root and report is not None:
                report(solver)


def spawn_for_gpus(gpus: list[int], argv: list[str]) -> int:
    """``dlsoft train --gpu all``: run ``dlsoft ARGV`` once per GPU with NCCL between them; the exit status."""
    from ..backend import gpu_count  # noqa: PLC0415
    from .comm import encode_nccl_id, has_nccl  # noqa: PLC0415

    present = gpu_count()
    missing = [g for g in gpus if g >= present]
    if missing:
        raise DistributedError(f"--gpu {','.join(map(str, gpus))}: GPU {missing[0]} is not present "
                               f"({present} GPU(s) here{'' if present else '; install dlsoft[gpu] on a machine with NVIDIA GPUs'})")
    if len(set(gpus)) != len(gpus):
        raise DistributedError(f"--gpu {','.join(map(str, gpus))}: a GPU is listed twice (one rank per GPU)")
    if not has_nccl():
        raise DistributedError(f"training on GPUs {', '.join(map(str, gpus))} needs NCCL, which cupy cannot load "
                               "here (pip install nvidia-nccl-cu13), or give one GPU (--gpu N)")
    env = dict(os.environ, DLSOFT_SEED=str(int(np.random.default_rng().integers(2 ** 31))))
    return launch.spawn_gpus(gpus, launch.self_command() + list(argv), encode_nccl_id(_nccl_unique_id()), env=env)
