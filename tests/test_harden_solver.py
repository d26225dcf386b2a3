"""Hardening of training runs: prefix locks, temp files, full disks, bad state files,
fast-forward by skipping, lr-policy validation (issue 12)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import lmdb
import numpy as np
import pytest

from google.protobuf import text_format

from dlsoft.errors import DlsoftError, SolverError, WeightsError
from dlsoft.netdef.io import parse_solver_text
from dlsoft.netdef.net import Net
from dlsoft.solver import Solver
from dlsoft.solver import snapshot as snap
from test_harden_data import make_lmdb

ROOT = Path(__file__).resolve().parent.parent

NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "target"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }
"""


def solver_file(tmp_path: Path, extra: str = "", name: str = "solver.prototxt") -> Path:
    """A solver file for the tiny net; fields in ``extra`` replace the defaults."""
    (tmp_path / "net.prototxt").write_text(NET)
    param = parse_solver_text(f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.01 lr_policy: "fixed" '
                              f'max_iter: 4 snapshot_prefix: "{tmp_path / "run"}" random_seed: 1')
    text_format.Merge(extra, param)  # later values win
    path = tmp_path / name
    path.write_text(text_format.MessageToString(param))
    return path


LONG_RUN = """
import sys
sys.path.insert(0, {root!r})
from dlsoft.solver import Solver
solver = Solver({solver!r}, metrics=False)
print("started", flush=True)
solver.solve()
"""


def test_second_run_on_a_prefix_is_refused_and_a_stale_lock_taken_over(tmp_path):
    path = solver_file(tmp_path, "max_iter: 100000000 snapshot: 0 snapshot_after_train: false")
    script = tmp_path / "long.py"
    script.write_text(LONG_RUN.format(root=str(ROOT), solver=str(path)))
    other = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "started"
        lock = tmp_path / "run.lock"
        for _ in range(200):
            if lock.exists() and lock.read_text().strip():
                break
            time.sleep(0.05)
        assert lock.read_text().strip() == str(other.pid)
        solver = Solver(str(path), metrics=False)
        solver.param.max_iter = 2
        solver.param.snapshot_after_train = True
        with pytest.raises(SolverError) as info:
            solver.solve()
        message = str(info.value)
        assert f"pid {other.pid}" in message and "run.lock" in message and "\n" not in message
    finally:
        other.kill()  # kill -9: the lock stays behind, stale
        other.wait()
    assert lock.exists()
    leftover = tmp_path / ".run_iter_7.caffemodel.abc123.tmp"  # a killed snapshot write's temp file
    leftover.write_bytes(b"half")
    unrelated = tmp_path / ".other_iter_7.caffemodel.abc123.tmp"
    unrelated.write_bytes(b"not ours")
    solver.solve()
    assert solver.iter == 2 and os.path.isfile(tmp_path / "run_iter_2.solverstate")
    assert not leftover.exists() and unrelated.exists()
    solver.close()
    assert not lock.exists()  # released by close (or at exit)


def test_solvers_of_one_process_share_a_prefix(tmp_path):
    path = solver_file(tmp_path)
    first = Solver(str(path), metrics=False)
    second = Solver(str(path), metrics=False)
    first.step(1)
    second.step(1)  # one process: a run and its resumption, say
    lock = tmp_path / "run.lock"
    first.close()
    assert lock.read_text().strip() == str(os.getpid())
    second.close()
    assert not lock.exists()


DISK_FULL = """
import resource, signal, sys
sys.path.insert(0, {root!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
from google.protobuf import text_format

from dlsoft.errors import DlsoftError
from dlsoft.solver import Solver
solver = Solver({solver!r}, metrics=False)
solver.step(1)
first = solver.snapshot()
resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))  # the next caffemodel does not fit
try:
    solver.solve()
except DlsoftError as exc:
    print("error:", exc)
print("first", first)
"""


def test_full_disk_error_names_the_file_and_keeps_the_last_snapshot(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET.replace("num_output: 2", "num_output: 2 bias_term: true"))
    path = solver_file(tmp_path, "snapshot: 2")
    (tmp_path / "net.prototxt").write_text(NET.replace("dim: 3 }", "dim: 300 }"))
    script = tmp_path / "full.py"
    script.write_text(DISK_FULL.format(root=str(ROOT), solver=str(path)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-800:]
    error, first = result.stdout.strip().splitlines()
    assert error.startswith("error: snapshot at iteration 2 failed: cannot write ")
    assert str(tmp_path / "run_iter_2.caffemodel") in error and "File too large" in error
    assert f"the last good one is {tmp_path / 'run_iter_1.solverstate'}" in error
    assert os.path.isfile(first.split(" ", 1)[1])
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_bad_hdf5_weights_are_one_line_errors(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    net = Net(str(tmp_path / "net.prototxt"))
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5 at all" * 10)
    no_data = tmp_path / "nodata.h5"
    with h5py.File(no_data, "w") as f:
        f.create_dataset("weights", data=np.zeros(3))
    flat = tmp_path / "flat.h5"
    with h5py.File(flat, "w") as f:
        f.create_dataset("data/ip", data=np.zeros(3))  # a dataset where a group of blobs belongs
    holes = tmp_path / "holes.h5"
    with h5py.File(holes, "w") as f:
        f.create_dataset("data/ip/1", data=np.zeros(2))  # blob 1 without blob 0
    for path in (garbage, no_data, flat, holes):
        with pytest.raises(WeightsError) as info:
            net.copy_from(str(path))
        assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_bad_hdf5_solverstate_and_sidecar_are_one_line_errors(tmp_path):
    solver = Solver(str(solver_file(tmp_path)), metrics=False)
    solver.step(1)
    state = solver.snapshot()
    states = {}
    states["garbage.solverstate.h5"] = lambda f: None
    for name, fill in [("history_dataset.solverstate.h5", lambda f: (f.create_dataset("iter", data=1),
                                                                    f.create_dataset("history", data=[1.0]))),
                       ("iter_group.solverstate.h5", lambda f: f.create_group("iter"))]:
        with h5py.File(tmp_path / name, "w") as f:
            fill(f)
    (tmp_path / "garbage.solverstate.h5").write_bytes(b"\0" * 100)
    for name in ("garbage.solverstate.h5", "history_dataset.solverstate.h5", "iter_group.solverstate.h5"):
        with pytest.raises(SolverError) as info:
            Solver(str(solver_file(tmp_path)), metrics=False).restore(str(tmp_path / name))
        assert str(info.value).startswith(str(tmp_path / name)) and "\n" not in str(info.value)
    sidecar = Path(snap.sidecar_path(state))
    good = json.loads(sidecar.read_text())
    for content in ("[1, 2]", json.dumps({**good, "random_state": 5}),
                    json.dumps({**good, "batches": {"train": "many"}}), json.dumps({"format": 1}),
                    json.dumps({**good, "random_state": {"bit_generator": "PCG64", "state": {"x": 1}}})):
        sidecar.write_text(content)
        with pytest.raises(SolverError) as info:
            Solver(str(solver_file(tmp_path)), metrics=False).restore(state)
        assert str(sidecar) in str(info.value) and "\n" not in str(info.value)


def corrupt_records(db: Path, first: int, last: int) -> None:
    """Overwrite records first..last (key order) with bytes that are no Datum."""
    env = lmdb.open(str(db), map_size=1 << 30)
    with env.begin(write=True) as txn:
        keys = [key for key, _ in txn.cursor()]
        for key in keys[first:last + 1]:
            txn.put(key, b"\xff\xff\xff garbage")
    env.close()


def test_resume_skips_records_without_decoding_them(tmp_path):
    """The snapshot is taken on a good LMDB; its records 4..23 are then ruined. A resume that
    decoded the skipped batches would fail on them; skipping continues exactly."""
    db = make_lmdb(tmp_path, count=40, size=10)
    (tmp_path / "net.prototxt").write_text(textwrap.dedent(f"""
        layer {{ name: "data" type: "Data" top: "data" top: "label"
                transform_param {{ crop_size: 8 mirror: true scale: 0.01 }}
                data_param {{ source: "{db}" batch_size: 4 backend: LMDB prefetch: 1 }} }}
        layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                inner_product_param {{ num_output: 10 weight_filler {{ type: "xavier" }} }} }}
        layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
        """))

    def make(max_iter):
        return Solver(parse_solver_text(
            f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 '
            f'max_iter: {max_iter} random_seed: 3 snapshot: 6 snapshot_prefix: "{tmp_path / "r"}" '
            'snapshot_after_train: false'), metrics=False)
    with make(8) as straight:
        straight.solve()
        expected = [blob.data.copy() for blob in straight.net.learnable_params]
    corrupt_records(db, 4, 23)  # batches 1..5: read by the first 6 iterations, skipped on resume
    with make(8) as resumed:
        resumed.solve(resume=str(tmp_path / "r_iter_6.solverstate"))
        assert resumed.iter == 8
        for a, b in zip(expected, resumed.net.learnable_params):
            np.testing.assert_array_equal(a, b.data)


@pytest.mark.parametrize("fields, field", [
    ('lr_policy: "inv" gamma: -0.01 power: 0.75', "gamma"),
    ('lr_policy: "exp" gamma: 10', "gamma"),
    ('lr_policy: "poly" power: -1', "power"),
    ('lr_policy: "multistep" gamma: 0.1 stepvalue: 3 stepvalue: 1', "stepvalue"),
    ('lr_policy: "step" gamma: -2 stepsize: 1', "gamma"),
])
def test_bad_lr_policy_parameters_fail_up_front(tmp_path, fields, field):
    path = solver_file(tmp_path, fields + " max_iter: 1000", name="s.prototxt")
    with pytest.raises(SolverError) as info:
        Solver(str(path), metrics=False)
    assert f"{path}:" in str(info.value) and f"{field}:" in str(info.value)


def test_sigmoid_policy_far_from_its_step_does_not_overflow(tmp_path):
    path = solver_file(tmp_path, 'lr_policy: "sigmoid" gamma: -1 stepsize: 0 max_iter: 2000', name="s.prototxt")
    solver = Solver(str(path), metrics=False)
    solver.iter = 1500
    assert solver.lr == 0.0
