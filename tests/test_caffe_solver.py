"""caffe.SGDSolver ... caffe.AdamSolver and caffe.get_solver: pycaffe's solver interface.

The reference is dlsoft's Solver on the same files (itself checked against Caffe's update
rules and PyTorch in test_solver*.py): a pycaffe solver must take the same steps.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import caffe
import dlsoft
from dlsoft.netdef import io

MLP = Path(__file__).resolve().parent.parent / "dlsoft" / "model_zoo" / "entries" / "mlp_digits"
CLASSES = {"SGD": caffe.SGDSolver, "Nesterov": caffe.NesterovSolver, "AdaGrad": caffe.AdaGradSolver,
           "RMSProp": caffe.RMSPropSolver, "AdaDelta": caffe.AdaDeltaSolver, "Adam": caffe.AdamSolver}


@pytest.fixture
def mlp(tmp_path, monkeypatch):
    """The mlp_digits entry's solver and net in a fresh folder (its paths are relative)."""
    for name in ("solver.prototxt", "train_val.prototxt"):
        shutil.copy(MLP / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "solver.prototxt"


def with_type(path: Path, solver_type: str) -> str:
    param = io.read_solver(path)
    param.type = solver_type
    if solver_type in ("AdaGrad", "RMSProp"):
        param.momentum = 0
    if solver_type == "AdaDelta":
        param.base_lr, param.momentum, param.delta = 1.0, 0.95, 1e-6
    if solver_type == "Adam":
        param.base_lr, param.momentum2 = 0.001, 0.999
    out = path.with_name(f"solver_{solver_type}.prototxt")
    io.write_solver(param, out)
    return str(out)


@pytest.mark.parametrize("solver_type", list(CLASSES))
def test_each_class_is_its_rule_and_steps_as_dlsoft(mlp, solver_type):
    path = with_type(mlp, solver_type)
    solver = CLASSES[solver_type](path)
    assert solver.type == solver_type and isinstance(solver.net, caffe.Net)
    solver.step(3)
    reference = dlsoft.get_solver(path, progress_bar=False, metrics=False)
    reference.step(3)
    for mine, theirs in zip(solver.net.learnable_params, reference.net.learnable_params):
        np.testing.assert_array_equal(mine.data, theirs.data)
    assert solver.iter == reference.iter == 3
    solver.close()
    reference.close()


def test_class_overrides_the_files_type_and_get_solver_keeps_it(mlp):
    path = with_type(mlp, "Adam")
    assert caffe.SGDSolver(path).type == "SGD"  # as pycaffe: the class decides
    assert caffe.get_solver(path).type == "Adam"


def test_pycaffe_attributes_and_methods(mlp, tmp_path):
    solver = caffe.get_solver(str(mlp))
    assert len(solver.test_nets) == 1 and isinstance(solver.test_nets[0], caffe.Net)
    assert solver.net._layer_names[0] == "digits" and solver.test_nets[0].phase == "TEST"
    assert solver.param.base_lr == pytest.approx(0.05)
    solver.param.base_lr = 0.01  # pycaffe lets scripts change base_lr between steps
    assert solver.lr == pytest.approx(0.01)
    calls = []
    solver.add_callback(lambda: calls.append(("start", solver.iter)),
                        lambda: calls.append(("gradients", solver.iter,
                                              float(np.abs(solver.net.params["ip1"][0].diff).sum()) > 0)))
    solver.step(2)
    assert calls == [("start", 0), ("gradients", 0, True), ("start", 1), ("gradients", 1, True)]
    assert not list(tmp_path.glob("*metrics*"))  # pycaffe writes no metrics file
    # the hand-written loop of the 01-learning-lenet notebook
    before = solver.net.params["ip1"][0].data.copy()
    solver.net.forward()
    solver.net.backward()
    solver.apply_update()
    assert not np.array_equal(before, solver.net.params["ip1"][0].data)
    solver.test_nets[0].share_with(solver.net)
    solver.test_nets[0].forward()
    deploy = caffe.Net(str(MLP / "deploy.prototxt"), caffe.TEST)
    solver.share_weights(deploy)
    assert np.shares_memory(deploy.params["ip1"][0].data, solver.net.params["ip1"][0].data)
    solver.snapshot()
    state = tmp_path / "mlp_digits_iter_2.solverstate"
    assert state.exists() and (tmp_path / "mlp_digits_iter_2.caffemodel").exists()
    solver.step(3)
    resumed = caffe.get_solver(str(mlp))
    resumed.restore(str(state))
    assert resumed.iter == 2
    np.testing.assert_array_equal(resumed.net.params["ip1"][0].data,
                                  caffe.Net("train_val.prototxt", caffe.TRAIN,
                                            weights="mlp_digits_iter_2.caffemodel").params["ip1"][0].data)


def test_solve_runs_to_max_iter(mlp):
    param = io.read_solver(mlp)
    param.max_iter, param.test_interval, param.display = 20, 10, 0
    io.write_solver(param, mlp)
    solver = caffe.SGDSolver(str(mlp))
    solver.solve()
    assert solver.iter == 20
    assert (mlp.parent / "mlp_digits_iter_20.caffemodel").exists()  # snapshot_after_train
    again = caffe.SGDSolver(str(mlp))
    again.solve(str(mlp.parent / "mlp_digits_iter_20.solverstate"))  # pycaffe's solve(resume_file)
    assert again.iter == 20
