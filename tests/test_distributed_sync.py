"""Gradient averaging without MPI: the NCCL communicator against a fake that records its calls,
bucketing and overlap, and the one-process-per-GPU launcher's fault handling.

The fake NCCL plays rank 0 of 4 identical ranks: its allreduce multiplies the buffer by 4
(the sum of four equal gradients), so a run through GradientSync must give exactly the
weights of a plain single-process run (x·4/4 is exact in float32).
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dlsoft.distributed import GradientSync, NCCLCommunicator, has_nccl
from dlsoft.distributed.launch import spawn_gpus
from dlsoft.errors import DistributedError
from dlsoft.netdef import io
from dlsoft.solver import Solver

HERE = Path(__file__).parent / "data" / "distributed"
SIZE = 4


class FakeNccl:
    """Stands in for ``cupy.cuda.nccl``: records every call; allReduce sums SIZE equal buffers."""

    NCCL_FLOAT32 = 7
    NCCL_SUM = 0

    def __init__(self):
        self.calls: list[tuple] = []

    def NcclCommunicator(self, ndev, unique_id, rank):  # noqa: N802 - cupy's name
        self.calls.append(("NcclCommunicator", ndev, unique_id, rank))
        return _FakeComm(self)


class _FakeComm:
    def __init__(self, nccl):
        self.nccl = nccl

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):  # noqa: N802
        self.nccl.calls.append(("allReduce", sendbuf, recvbuf, count, datatype, op, stream))
        view = np.ctypeslib.as_array((ctypes.c_float * count).from_address(recvbuf))
        view *= SIZE

    def bcast(self, buff, count, datatype, root, stream):
        self.nccl.calls.append(("bcast", buff, count, datatype, root, stream))

    def abort(self):
        self.nccl.calls.append(("abort",))

    def destroy(self):
        self.nccl.calls.append(("destroy",))


class FakeCuda:
    """Stands in for ``cupy.cuda``: streams and events that are always done."""

    class Stream:
        def __init__(self, non_blocking=False):
            self.ptr = 0xC0FFEE
            self.waited = []

        def wait_event(self, event):
            self.waited.append(event)

        def synchronize(self):
            pass

    class Event:
        def __init__(self, block=False, disable_timing=False):
            self.recorded_on = None

        def record(self, stream=None):
            self.recorded_on = stream

        @property
        def done(self):
            return True

    @staticmethod
    def get_current_stream():
        return FakeCuda.Stream()


def make_solver(max_iter: int = 8, batch: int = 16, iter_size: int = 1) -> Solver:
    param = io.read_solver(HERE / "solver.prototxt")
    net = io.read_net(HERE / "net.prototxt")
    for layer in net.layer:
        if layer.type == "Data" and layer.include[0].phase == 0:
            layer.data_param.batch_size = batch
    param.ClearField("net")
    param.net_param.CopyFrom(net)
    param.max_iter, param.snapshot, param.test_interval, param.display = max_iter, 0, 0, 0
    param.ClearField("test_iter")
    param.snapshot_after_train = False
    param.iter_size = iter_size
    return Solver(param, metrics=False, progress_bar=False)


def test_nccl_communicator_calls_and_training_equal_to_one_process():
    plain = make_solver()
    plain.solve()
    nccl = FakeNccl()
    comm = NCCLCommunicator(0, SIZE, b"unique-id", nccl=nccl, cuda=FakeCuda)
    solver = make_solver()
    sync = GradientSync(comm, solver, bucket_bytes=16 << 10)
    solver.net.add_after_backward(lambda i: nccl.calls.append(("after_backward", i)))
    solver.solve()
    for a, b in zip(plain.net.learnable_params, solver.net.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)

    assert nccl.calls[0] == ("NcclCommunicator", SIZE, b"unique-id", 0)
    bcast = nccl.calls[1]  # the weights and history of rank 0, once, before the first iteration
    n_weights = sum(p.count for p in solver.net.learnable_params)
    assert bcast[0] == "bcast" and bcast[2:] == (2 * n_weights, FakeNccl.NCCL_FLOAT32, 0, 0xC0FFEE)
    reduces = [c for c in nccl.calls if c[0] == "allReduce"]
    assert len(sync.buckets) > 1
    assert len(reduces) == 8 * (len(sync.buckets) + 1)  # every bucket, and the loss, each iteration
    for call in reduces:
        assert call[1] == call[2] and call[4:] == (FakeNccl.NCCL_FLOAT32, FakeNccl.NCCL_SUM, 0xC0FFEE)
    sizes = {call[3] for call in reduces}
    assert sizes == {b.offsets[-1] for b in sync.buckets} | {1}
    # Overlap: in the first iteration a bucket is sent while backward still has layers to do.
    first_iteration = nccl.calls[2:nccl.calls.index(("after_backward", 0)) + 1]
    first_send = next(k for k, c in enumerate(first_iteration) if c[0] == "allReduce")
    assert ("after_backward", 1) in first_iteration[first_send:]
    assert sync.stats["iterations"] == 8


def test_buckets_follow_backward_order_and_skip_frozen_blobs():
    solver = make_solver()
    solver.net.params_lr[0] = 0.0  # conv1's weights frozen: not summed
    sync = GradientSync(_Recorder(), solver, bucket_bytes=1)
    owners = solver.net.param_layers()
    order = [j for b in sync.buckets for j in b.indices]
    assert 0 not in order and sorted(order) == list(range(1, len(owners)))
    assert [owners[j] for j in order] == sorted((owners[j] for j in order), reverse=True)


def test_iter_size_sums_only_after_the_last_pass():
    plain = make_solver(max_iter=4, iter_size=3)
    plain.solve()
    nccl = FakeNccl()
    solver = make_solver(max_iter=4, iter_size=3)
    sync = GradientSync(NCCLCommunicator(0, SIZE, b"id", nccl=nccl, cuda=FakeCuda), solver, bucket_bytes=16 << 10)
    solver.solve()
    for a, b in zip(plain.net.learnable_params, solver.net.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)
    assert sum(c[0] == "allReduce" for c in nccl.calls) == 4 * (len(sync.buckets) + 1)


def test_stop_now_abandons_the_iteration_and_resumes_exactly(tmp_path):
    """A callback's StopNow (a stop signal while waiting for the other ranks) keeps iteration k whole."""
    from dlsoft.solver.signals import StopNow

    class StopAt:
        def on_start(self, solver):
            pass

        def on_gradients_ready(self, solver, loss):
            if solver.iter == 5:
                raise StopNow
            return loss

    def solver_at(prefix):
        s = make_solver(max_iter=8)
        s.param.snapshot_after_train, s.param.snapshot_prefix = True, str(tmp_path / prefix)
        return s

    whole = solver_at("whole")
    whole.solve()
    stopped = solver_at("stopped")
    stopped.add_callback(StopAt())
    stopped.solve()
    assert stopped.iter == 5 and stopped.last_snapshot.endswith("stopped_iter_5.solverstate")
    resumed = solver_at("resumed")
    resumed.solve(resume=stopped.last_snapshot)
    for a, b in zip(whole.net.learnable_params, resumed.net.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)


class _Recorder:
    rank, size = 0, 1


def test_has_nccl_answers_without_warnings(recwarn):
    assert has_nccl() in (True, False)
    assert not recwarn.list


def test_gpu_launcher_names_the_lost_rank_and_stops_the_others(tmp_path):
    script = tmp_path / "child.py"
    script.write_text("import os, sys, time\n"
                      "if os.environ['DLSOFT_RANK'] == '1':\n    time.sleep(0.5); sys.exit(3)\n"
                      "open(os.environ['OUT'] + os.environ['DLSOFT_RANK'], 'w').write(os.environ['DLSOFT_GPU'])\n"
                      "time.sleep(60)\n")
    start = time.monotonic()
    with pytest.raises(DistributedError, match=r"rank 1 \(GPU 5, pid \d+\) exited with status 3: stopped the "
                                               r"other 2 rank\(s\)"):
        spawn_gpus([4, 5, 6], [sys.executable, str(script)], "00", env={"OUT": str(tmp_path / "gpu"),
                                                                         "PATH": "/usr/bin:/bin"})
    assert time.monotonic() - start < 20
    assert (tmp_path / "gpu0").read_text() == "4" and (tmp_path / "gpu2").read_text() == "6"
    left = subprocess.run(["pgrep", "-f", str(script)], capture_output=True, text=True).stdout.split()
    assert not left


def test_resume_with_another_global_batch_finds_its_place_by_records(tmp_path):
    """A snapshot at batch 16 (3 iterations: 48 records) resumed at batch 8 goes on at record 48."""
    first = make_solver(max_iter=3, batch=16)
    first.param.snapshot_after_train, first.param.snapshot_prefix = True, str(tmp_path / "b16")
    first.solve()
    resumed = make_solver(max_iter=3, batch=8)
    resumed.restore(first.last_snapshot)
    assert resumed._forwards[0] == 6
    resumed.net.forward_prefilled()
    from dlsoft.data import digits
    _, labels = digits.load_digits("train")
    np.testing.assert_array_equal(resumed.net.blobs["label"].data, labels[48:56])


def test_nccl_close_aborts_when_an_operation_is_pending():
    class PendingCuda(FakeCuda):
        class Event(FakeCuda.Event):
            done = False

    nccl = FakeNccl()
    comm = NCCLCommunicator(1, 2, b"id", nccl=nccl, cuda=PendingCuda)
    comm.iallreduce(np.zeros(3, dtype=np.float32))
    comm.close()  # a wait was given up (stop signal, lost peer): destroy would wait for ever
    assert nccl.calls[-1] == ("abort",)
    done = NCCLCommunicator(1, 2, b"id", nccl=nccl, cuda=FakeCuda)
    done.iallreduce(np.zeros(3, dtype=np.float32))
    done.close()
    assert nccl.calls[-1] == ("destroy",)


def test_a_spawned_rank_gives_up_when_its_launcher_is_gone():
    from dlsoft.distributed.heartbeat import ParentWatch

    watch = ParentWatch()
    assert watch.problem() is None
    watch._getppid = lambda: 1
    assert watch.problem() == f"the launcher (pid {watch.parent}) is gone"


def test_gpu_launcher_passes_ctrl_c_once_to_every_rank(tmp_path):
    """Ctrl-C on ``dlsoft train --gpu all`` reaches each rank once (rank 0 then snapshots), and all end."""
    child = tmp_path / "child.py"
    child.write_text("import os, signal, sys, time\n"
                     "got = []\n"
                     "signal.signal(signal.SIGINT, lambda s, f: got.append(s))\n"
                     "open(os.environ['OUT'] + os.environ['DLSOFT_RANK'] + '.up', 'w').close()\n"
                     "while not got: time.sleep(0.05)\n"
                     "time.sleep(0.5)\n"
                     "open(os.environ['OUT'] + os.environ['DLSOFT_RANK'], 'w').write(str(len(got)))\n")
    parent = tmp_path / "parent.py"
    parent.write_text("import sys\nfrom dlsoft.distributed.launch import spawn_gpus\n"
                      f"sys.exit(spawn_gpus([0, 1], [sys.executable, {str(child)!r}], '00'))\n")
    env = dict(os.environ, OUT=str(tmp_path / "rank"),
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    process = subprocess.Popen([sys.executable, str(parent)], env=env)
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"rank{r}.up").exists() for r in (0, 1)) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["1", "1"]


def test_ranks_split_the_random_stream_for_dropout():
    from dlsoft import random as dl_random

    draws = []
    for rank in range(3):
        dl_random.set_seed(5)
        dl_random.split(rank)
        draws.append(dl_random.rng().random(4))
    dl_random.set_seed(5)
    np.testing.assert_array_equal(draws[0], dl_random.rng().random(4))  # rank 0: the snapshot's stream
    assert not np.allclose(draws[1], draws[0]) and not np.allclose(draws[2], draws[1])
