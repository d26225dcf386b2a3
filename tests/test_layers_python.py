"""The Python layer: user classes with pycaffe's interface, loaded from a file outside the package."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from dlsoft.errors import NetDefinitionError
from gradcheck import check_gradient, compare_devices, covers, run_layer

GPU_COVERS = {"Python"}  # test_gpu_matches_cpu builds its text with python_layer()

LAYERS_DIR = Path(__file__).resolve().parent / "data" / "python_layers"
RNG = np.random.default_rng(0)
A = RNG.uniform(-1, 1, (4, 3)).astype(np.float32)
B = RNG.uniform(-1, 1, (4, 3)).astype(np.float32)


@pytest.fixture(autouse=True)
def user_layers_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(LAYERS_DIR))


def python_layer(cls, param_str=""):
    return f'type: "Python" python_param {{ module: "my_layers" layer: "{cls}" param_str: "{param_str}" }}'


@covers("Python", "reference")
def test_scale_layer_forward_and_blobs():
    layer, _, (top,) = run_layer(python_layer("LearnableScale", "2.5"), [A])
    assert [b.shape for b in layer.blobs] == [(1,)]
    np.testing.assert_allclose(top.data, 2.5 * A)
    assert layer.user.phase == "TRAIN"


def test_euclidean_loss_forward():
    _, _, (top,) = run_layer(python_layer("EuclideanLoss"), [A, B])
    np.testing.assert_allclose(top.data[0], ((A - B) ** 2).sum() / 4 / 2, rtol=1e-6)


@covers("Python", "gradient")
def test_scale_layer_gradient():
    check_gradient(python_layer("LearnableScale", "1.5"), [A])


def test_euclidean_loss_gradient():
    check_gradient(python_layer("EuclideanLoss"), [A, B])


def test_module_found_in_current_directory(monkeypatch):
    monkeypatch.chdir(LAYERS_DIR)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in (str(LAYERS_DIR), "")])
    sys.modules.pop("my_layers", None)
    _, _, (top,) = run_layer(python_layer("LearnableScale", "3"), [A])
    np.testing.assert_allclose(top.data, 3 * A)


def test_missing_module_is_one_line_error():
    with pytest.raises(NetDefinitionError, match="module 'no_such_module', class 'X'.*not found") as info:
        run_layer('type: "Python" python_param { module: "no_such_module" layer: "X" }', [A])
    assert "\n" not in str(info.value) and "python" in str(info.value)


def test_missing_class_is_one_line_error():
    with pytest.raises(NetDefinitionError, match="class 'Nope'.*has no class") as info:
        run_layer(python_layer("Nope"), [A])
    assert "\n" not in str(info.value)


def test_trains_inside_a_net(tmp_path):
    try:
        from dlsoft import Net
    except ImportError as exc:
        pytest.skip(f"dlsoft.Net cannot be imported yet ({exc})")
    net_file = tmp_path / "net.prototxt"
    net_file.write_text("""
        layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 4 dim: 3 } } }
        layer { name: "scale" type: "Python" bottom: "x" top: "scaled"
                python_param { module: "my_layers" layer: "LearnableScale" param_str: "0.5" } }
        layer { name: "loss" type: "Python" bottom: "scaled" bottom: "y" top: "loss" loss_weight: 1
                python_param { module: "my_layers" layer: "EuclideanLoss" } }
    """)
    net = Net(str(net_file), phase="TRAIN")
    assert len(net.learnable_params) == 1
    net.blobs["x"].data[...] = A
    net.blobs["y"].data[...] = 2.0 * A  # the scale to learn is 2
    losses = []
    for _ in range(30):
        net.clear_param_diffs()
        losses.append(net.forward_backward())
        for blob in net.learnable_params:
            blob.data[...] -= 0.5 * blob.diff
    assert losses[-1] < 0.01 * losses[0]
    np.testing.assert_allclose(net.params["scale"][0].data, [2.0], atol=0.05)


@covers("Python", "gpu")
@pytest.mark.gpu
def test_gpu_matches_cpu():
    compare_devices(python_layer("LearnableScale", "1.5"), [A])
