"""Python layers written for pycaffe (``import caffe; class L(caffe.Layer)``) load unchanged.

BVLC's examples/pycaffe/linreg.prototxt (from ../shared) runs with our own pyloss.py,
written as BVLC's examples/pycaffe/layers/pyloss.py: the forward is checked against the
closed form, the gradient by finite differences, and an SGD solver trains it.
"""
from __future__ import annotations

import numpy as np
import pytest

import caffe
from gradcheck import check_gradient

DATA = __import__("pathlib").Path(__file__).resolve().parent / "data" / "pycaffe"


@pytest.fixture(autouse=True)
def pycaffe_layers_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(DATA))


@pytest.fixture
def linreg(shared_caffe):
    return str(shared_caffe / "examples" / "pycaffe" / "linreg.prototxt")


def test_linreg_loss_is_the_closed_form(linreg):
    net = caffe.Net(linreg, caffe.TRAIN)
    loss = net.forward()["loss"]
    a, b = net.blobs["ipx"].data, net.blobs["ipy"].data
    np.testing.assert_allclose(loss, [((a - b) ** 2).sum() / a.shape[0] / 2], rtol=1e-6)
    assert net.blob_loss_weights["loss"] == 1.0  # the prototxt's loss_weight: 1
    net.backward()
    np.testing.assert_allclose(net.blobs["ipx"].diff, (a - b) / a.shape[0], rtol=1e-6)
    np.testing.assert_allclose(net.blobs["ipy"].diff, -(a - b) / a.shape[0], rtol=1e-6)


def test_layer_sees_pycaffes_integer_phase(linreg):
    for phase in (caffe.TRAIN, caffe.TEST):
        net = caffe.Net(linreg, phase)
        user = net.layers[net._layer_names.index("loss")].user
        assert isinstance(user, caffe.Layer) and user.seen_phase == phase and type(user.phase) is int
        # as in pycaffe, the net's layer shows the user object's own attributes
        assert net.layer_dict["loss"].seen_phase == phase and net.layer_dict["loss"].diff is user.diff


def test_pyloss_gradient():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((4, 3, 2)).astype(np.float32), rng.standard_normal((4, 3, 2)).astype(np.float32)
    check_gradient('type: "Python" python_param { module: "pyloss" layer: "EuclideanLossLayer" }', [a, b])


def test_param_str_and_phase_change_the_result(tmp_path):
    net_text = """
layer { name: "data" type: "Python" top: "data"
        python_param { module: "phase_layers" layer: "CountingData" param_str: "2,3" } }
layer { name: "scale" type: "Python" bottom: "data" top: "scaled"
        python_param { module: "phase_layers" layer: "PhaseScale" param_str: "0.5" } }
"""
    path = tmp_path / "net.prototxt"
    path.write_text(net_text)
    train = caffe.Net(str(path), caffe.TRAIN)
    np.testing.assert_array_equal(train.forward()["scaled"], np.full((2, 3), 0.5, np.float32))
    np.testing.assert_array_equal(train.forward()["scaled"], np.full((2, 3), 1.0, np.float32))
    test = caffe.Net(str(path), caffe.TEST)
    np.testing.assert_array_equal(test.forward()["scaled"], np.ones((2, 3), np.float32))
    check_gradient('type: "Python" python_param { module: "phase_layers" layer: "PhaseScale" param_str: "3" }',
                   [np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)])


def test_sgd_solver_trains_linreg(linreg, tmp_path):
    solver_path = tmp_path / "solver.prototxt"
    solver_path.write_text(f'net: "{linreg}"\nbase_lr: 0.01\nmomentum: 0.9\nlr_policy: "fixed"\n'
                           f'max_iter: 100\ndisplay: 0\nsnapshot_prefix: "{tmp_path}/linreg"\n')
    caffe.set_random_seed(5)
    solver = caffe.SGDSolver(str(solver_path))
    # DummyData redraws its gaussians each pass; the fit lowers the expected loss anyway
    first = np.mean([solver.net.forward()["loss"][0] for _ in range(20)])
    solver.step(100)
    last = np.mean([solver.net.forward()["loss"][0] for _ in range(20)])
    assert solver.iter == 100 and last < 0.5 * first
