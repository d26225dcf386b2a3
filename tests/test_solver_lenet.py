"""LeNet: restoring real Caffe's solverstate, and training on the bundled digits (slow)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest

from dlsoft.netdef.io import blob_proto_to_array, read_net, read_solver
from dlsoft.solver import Solver

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "mnist"
LENET_SHAPES = [(20, 1, 5, 5), (20,), (50, 20, 5, 5), (50,), (500, 800), (500,), (10, 500), (10,)]


def lenet_solver(tmp_path, testing: bool = True, **fields) -> Solver:
    """examples/mnist/lenet_solver.prototxt with absolute paths and snapshots under tmp_path."""
    param = read_solver(EXAMPLE / "lenet_solver.prototxt")
    param.net = str(EXAMPLE / "lenet_train_test.prototxt")
    if not testing:
        param.ClearField("test_iter")
        param.ClearField("test_interval")
    param.snapshot_prefix = str(tmp_path / "lenet")
    for name, value in fields.items():
        setattr(param, name, value)
    return Solver(param, metrics=False)


def test_example_files_keep_caffe_settings(shared_caffe):
    ours, caffe = read_solver(EXAMPLE / "lenet_solver.prototxt"), read_solver(
        shared_caffe / "examples/mnist/lenet_solver.prototxt")
    for field in ("net", "test_interval", "base_lr", "momentum", "weight_decay", "lr_policy", "gamma", "power",
                  "display", "max_iter", "snapshot", "snapshot_prefix", "type"):
        assert getattr(ours, field) == getattr(caffe, field), field
    assert list(ours.test_iter) == [10]
    net, caffe_net = read_net(EXAMPLE / "lenet_train_test.prototxt"), read_net(
        shared_caffe / "examples/mnist/lenet_train_test.prototxt")
    assert [(l.name, l.type) for l in net.layer] == [(l.name, l.type) for l in caffe_net.layer]
    assert [l.data_param.source for l in net.layer[:2]] == ["builtin:digits/train", "builtin:digits/test"]
    assert [l.data_param.batch_size for l in net.layer[:2]] == [64, 100]
    for mine, theirs in zip(net.layer[2:], caffe_net.layer[2:]):
        assert mine == theirs


def test_restore_real_caffe_solverstate(shared_caffe, tmp_path):
    reference = shared_caffe / "reference" / "fashion_lenet"
    with lenet_solver(tmp_path, testing=False) as solver:
        solver.restore(str(reference / "lenet_iter_5000.solverstate"))
        assert solver.iter == 5000
        assert [tuple(h.shape) for h in solver.history] == LENET_SHAPES
        assert all(np.abs(h).max() > 0 for h in solver.history)  # momentum history carried over
        model = read_net(reference / "lenet_iter_5000.caffemodel")
        for layer in model.layer:
            for i, blob in enumerate(layer.blobs):
                np.testing.assert_array_equal(solver.net.params[layer.name][i].data, blob_proto_to_array(blob))
        assert solver.lr == pytest.approx(0.01 * (1 + 0.0001 * 5000) ** -0.75, rel=1e-6)
        conv1 = solver.net.params["conv1"][0].data.copy()
        solver.step(1)  # training goes on from Caffe's state
        assert solver.iter == 5001 and not np.array_equal(conv1, solver.net.params["conv1"][0].data)


@pytest.mark.slow
def test_lenet_on_bundled_digits_reaches_96_5_percent(tmp_path, caplog):
    with lenet_solver(tmp_path) as solver, caplog.at_level(logging.INFO, logger="dlsoft.solver"):
        start = time.perf_counter()
        solver.solve()
        wall = time.perf_counter() - start
        accuracy = solver.test_scores[0]["accuracy"]
        print(f"LeNet on the bundled digits: {solver.iter} iterations, {wall:.0f} s, test accuracy {accuracy:.4f}")
        assert solver.iter == 10000
        assert accuracy >= 0.965
        assert (tmp_path / "lenet_iter_10000.caffemodel").is_file()
