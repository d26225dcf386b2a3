"""Finding out whether this process is one rank of a job, and starting one rank per GPU.

- Under ``mpirun``/``mpiexec``/``srun`` the launcher sets its variables
  (``OMPI_COMM_WORLD_SIZE``, ``PMI_SIZE``, ``PMIX_RANK`` ...): :func:`mpi_world` reads the
  world size from them without importing MPI, so a plain ``dlsoft train`` never loads it.
- ``dlsoft train --gpu all`` (or ``--gpu 0,1``) on one machine runs :func:`spawn_gpus`:
  one child ``dlsoft train`` per GPU with ``DLSOFT_RANK``, ``DLSOFT_WORLD_SIZE``,
  ``DLSOFT_GPU`` and the NCCL id in its environment (Caffe's ``-gpu all``). The parent
  is their watchdog: a child that dies takes the others down at once, and the error
  names it; Ctrl-C is passed to every child (rank 0 snapshots) and they get a minute to end.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from ..errors import DistributedError

log = logging.getLogger(__name__)

#: variables that say "you are one of N ranks", by launcher
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_NTASKS")
_MPI_MARKERS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")
_LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK",
                         "SLURM_LOCALID")
#: how long children get to end after Ctrl-C, and after one of them died
STOP_GRACE_S = 60.0
LOST_GRACE_S = 5.0


def mpi_world(env=None) -> bool:
    """Whether an MPI launcher started this process (the size may be 1)."""
    env = os.environ if env is None else env
    return any(name in env for name in _MPI_MARKERS)


def world_size(env=None) -> int | None:
    """The number of ranks the launcher started, when its variables say (None: ask MPI)."""
    env = os.environ if env is None else env
    for name in _SIZE_VARIABLES:
        if name in env:
            return int(env[name])
    return None


def spawned_rank(env=None) -> tuple[int, int, int, str] | None:
    """``(rank, size, gpu, nccl_id_hex)`` when :func:`spawn_gpus` started this process."""
    env = os.environ if env is None else env
    if "DLSOFT_WORLD_SIZE" not in env:
        return None
    return (int(env["DLSOFT_RANK"]), int(env["DLSOFT_WORLD_SIZE"]), int(env["DLSOFT_GPU"]),
            env.get("DLSOFT_NCCL_ID", ""))


def local_rank(env=None) -> int:
    """This rank's index among the ranks of its machine (for picking its GPU)."""
    env = os.environ if env is None else env
    for name in _LOCAL_RANK_VARIABLES:
        if name in env:
            return int(env[name])
    return 0


def spawn_gpus(gpus: list[int], argv: list[str], nccl_id: str, env=None, grace: float = STOP_GRACE_S) -> int:
    """Run ``argv`` once per GPU (rank i on ``gpus[i]``), watch them, return the exit status.

    A child that fails ends the others (SIGTERM, then SIGKILL after a few seconds) and
    the failure is raised as a :class:`DistributedError` naming its rank and GPU.
    """
    base = dict(os.environ if env is None else env)
    children = []
    for rank, gpu in enumerate(gpus):
        child_env = dict(base, DLSOFT_RANK=str(rank), DLSOFT_WORLD_SIZE=str(len(gpus)), DLSOFT_GPU=str(gpu),
                         DLSOFT_NCCL_ID=nccl_id)
        # A session of its own: a terminal's Ctrl-C reaches the parent only, which passes it
        # on once (a second SIGINT would mean "interrupt at once" to the solver).
        children.append(subprocess.Popen(argv, env=child_env, start_new_session=True))
    log.info("started %d ranks (pids %s) on GPUs %s", len(children), ", ".join(str(c.pid) for c in children),
             ", ".join(map(str, gpus)))
    interrupted: list[float] = []  # when the first Ctrl-C came

    def forward(signum, frame):
        if not interrupted:
            interrupted.append(time.monotonic())
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            codes = [child.poll() for child in children]
            failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
            if failed and not interrupted:
                rank, code = failed[0]
                _stop(children, LOST_GRACE_S)
                how = f"signal {-code}" if code < 0 else f"status {code}"
                raise DistributedError(f"rank {rank} (GPU {gpus[rank]}, pid {children[rank].pid}) exited with "
                                       f"{how}: stopped the other {len(children) - 1} rank(s)")
            if all(code is not None for code in codes):
                return next((c for c in codes if c), 0)
            if interrupted and time.monotonic() - interrupted[0] > grace:
                _stop(children, LOST_GRACE_S)
                return 130
            time.sleep(0.1)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop(children, grace: float) -> None:
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def self_command() -> list[str]:
    """How to run this same dlsoft again (for the children of :func:`spawn_gpus`)."""
    return [sys.executable, "-m", "dlsoft"]
