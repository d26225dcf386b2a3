"""The GPU path against cupy's API, without a GPU (marker ``cupy_api``).

Every ``@pytest.mark.gpu`` test also runs as a "cupy_api" case (tests/conftest.py):
``kernel_emulation.fakecupy`` stands in for cupy, so blobs on ``gpu:0`` hold arrays that
behave like numpy but expose only what the installed cupy 14 exposes, RawKernels run as
C++ on the CPU and ElementwiseKernel bodies as C loops, and each GPU result is compared
with the numpy path by the test itself. This module checks that those cases cover every
registered layer and every ElementwiseKernel body, and pins the host synchronisation of
a training iteration.
"""
from __future__ import annotations

import importlib
import inspect
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from dlsoft.layers import layer_class, registered_types

pytestmark = pytest.mark.cupy_api

TESTS = Path(__file__).resolve().parent


def gpu_test_texts() -> str:
    """What the gpu tests of the layer test modules run, as one text: each test's source and
    parameters, the module-level strings and helper functions it names (``DW.format(...)``,
    ``normalize_text(...)``), and the types a module declares in ``GPU_COVERS``."""
    parts = []
    for path in sorted(TESTS.glob("test_layers_*.py")):
        module = importlib.import_module(path.stem)
        parts += [f'type: "{name}"' for name in getattr(module, "GPU_COVERS", ())]
        for name, function in vars(module).items():
            marks = getattr(function, "pytestmark", [])
            if callable(function) and name.startswith("test") and any(m.name == "gpu" for m in marks):
                parts.append(inspect.getsource(function))
                parts += [repr(m.args) for m in marks if m.name == "parametrize"]
                for used in function.__code__.co_names:
                    value = getattr(module, used, None)
                    if isinstance(value, str):
                        parts.append(value)
                    elif inspect.isfunction(value) and value.__module__ == module.__name__:
                        parts.append(inspect.getsource(value))
    return "\n".join(parts)


def test_every_registered_layer_has_a_gpu_case():
    text = gpu_test_texts().replace('\\"', '"')
    missing = [t for t in registered_types() if not re.search(rf'type: "{t}"|["\']{t}["\']', text)]
    assert not missing, f"layers whose GPU methods no gpu test (and so no cupy_api run) exercises: {missing}"


def kernel_specs():
    """(layer type, direction, spec) of every ElementwiseKernel spec a registered layer declares."""
    specs = []
    for type_name in registered_types():
        cls = layer_class(type_name)
        for attribute in sorted(dir(cls)):
            spec = getattr(cls, attribute, None)
            if attribute.endswith("_kernel") and isinstance(spec, tuple) and len(spec) == 3 \
                    and all(isinstance(s, str) for s in spec):
                specs.append((type_name, attribute[:-len("_kernel")], spec))
    return specs


def test_elementwise_bodies_are_one_line_expressions():
    specs = kernel_specs()
    assert len(specs) >= 20
    long = [f"{t}.{d}: {body!r}" for t, d, (_, _, body) in specs
            if "\n" in body or re.search(r"\b(for|while|if)\s*\(|[{}]", body)]
    assert not long, f"ElementwiseKernel bodies must stay one-line expressions: {long}"


NEURON_INPUT = np.random.default_rng(3).uniform(0.1, 2.0, (2, 3, 4)).astype(np.float32)


needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ to compile the kernels as C++")


def _run_in_place(text, x, w, device):
    """Forward and backward with the top *being* the bottom blob (Caffe's in-place use)."""
    from gradcheck import make_layer

    from dlsoft import random as dl_random
    from dlsoft.backend import parse_device, to_numpy
    from dlsoft.blob import Blob
    device = parse_device(device)
    dl_random.set_seed(1701)
    layer = make_layer(text, device=device)
    blob = Blob(x.shape, device, name="x")
    blob.data[...] = device.xp.asarray(x)
    layer.setup([blob], [blob])
    layer.reshape([blob], [blob])
    layer.param_propagate_down = [True] * len(layer.blobs)
    for param in layer.blobs:
        param.diff[...] = 0
    layer.forward([blob], [blob])
    y = to_numpy(blob.data).copy()
    if layer.forward_only:
        return [y]
    blob.diff[...] = device.xp.asarray(w)
    layer.backward([blob], [True], [blob])
    return [y, to_numpy(blob.diff).copy(), *[to_numpy(p.diff).copy() for p in layer.blobs]]


@needs_gxx
@pytest.mark.parametrize("type_name", sorted({t for t, _, _ in kernel_specs()}))
def test_every_elementwise_body_runs_and_matches_its_numpy_twin(type_name):
    """Each layer with ElementwiseKernels launches every one of them on the cupy stand-in
    (the C body compiled and run on the CPU) and agrees with its numpy code, with separate
    blobs and in place."""
    from gradcheck import compare_devices
    from kernel_emulation import fakecupy
    expected = {f"dl_{type_name.lower()}_{d}" for t, d, _ in kernel_specs() if t == type_name}
    text = f'type: "{type_name}"'
    x = NEURON_INPUT * np.where(np.arange(NEURON_INPUT.size).reshape(NEURON_INPUT.shape) % 3, 1, -1)
    if type_name in ("Log", "Power"):
        x = NEURON_INPUT  # log of negative numbers / fractional powers of them are NaN on both sides
    w = np.random.default_rng(4).uniform(-1, 1, x.shape).astype(np.float32)
    cpu = _run_in_place(text, x, w, "cpu") if layer_class(type_name).supports_in_place else None
    with fakecupy.installed():
        start = len(fakecupy.LAUNCHES)
        compare_devices(text, [x], rtol=1e-5, atol=1e-6)
        launched = {name for name, _, _ in fakecupy.LAUNCHES[start:]}
        gpu = _run_in_place(text, x, w, "gpu") if cpu is not None else None
    assert expected <= launched, f"{type_name}: never launched {sorted(expected - launched)}"
    for c, g in zip(cpu or [], gpu or []):
        np.testing.assert_allclose(g, c, rtol=1e-5, atol=1e-6)


@needs_gxx
def test_one_lenet_training_iteration_syncs_only_for_the_loss():
    """Host synchronisation of LeNet training on the GPU: the summed loss once per iteration
    (the solver's NaN guard and smoothed display need it on the host), plus one copy per
    train-net output on a display iteration. Nothing else leaves the device."""
    from kernel_emulation import fakecupy

    from dlsoft.netdef.io import read_solver
    from dlsoft.solver.solver import Solver

    root = TESTS.parent
    param = read_solver(root / "examples/mnist/lenet_solver.prototxt")
    param.net = str(root / param.net)
    param.display, param.test_interval, param.snapshot, param.test_initialization = 2, 10_000, 0, False
    param.snapshot_prefix = ""
    with fakecupy.installed():
        with Solver(param, device="gpu", metrics=False, progress_bar=False) as solver:
            fakecupy.TRANSFERS.reset()
            solver.step(1)  # iteration 0: displayed
            displayed = (fakecupy.TRANSFERS.count, fakecupy.TRANSFERS.summary())
            fakecupy.TRANSFERS.reset()
            solver.step(1)  # iteration 1: not displayed
            plain = (fakecupy.TRANSFERS.count, fakecupy.TRANSFERS.summary())
    assert plain[0] == 1 and "net.py" in plain[1], f"a training iteration made {plain[0]} transfers: {plain[1]}"
    assert displayed[0] == 2, f"a displayed iteration made {displayed[0]} transfers: {displayed[1]}"


# ---- the stand-in itself: it refuses what cupy refuses ------------------------------------------

def test_the_stand_in_refuses_what_cupy_refuses():
    from kernel_emulation import fakecupy
    with fakecupy.installed() as cp:
        a = cp.zeros((2, 3), dtype=np.float32)
        assert not isinstance(a, np.ndarray) and isinstance(a.sum(), cp.ndarray)  # 0-d device array
        with pytest.raises(fakecupy.CupyAPIError, match="does not exist in cupy"):
            cp.errstate  # noqa: B018 - numpy has it, cupy does not
        with pytest.raises(fakecupy.CupyAPIError, match="unexpected keyword argument 'initial'"):
            cp.amax(a, initial=0)
        with pytest.raises(fakecupy.CupyAPIError, match="numpy array"):
            a + np.ones(3, np.float32)
        with pytest.raises(TypeError, match="Implicit conversion"):
            np.asarray(a)
        with pytest.raises(fakecupy.CupyAPIError, match="no object arrays"):
            cp.array([None, 1])
        with pytest.raises(fakecupy.CupyAPIError, match="has no attribute 'ctypes'"):
            a.ctypes  # noqa: B018
        np.multiply(a, 2, out=a)  # numpy functions dispatch to cupy's, as cupy's __array_ufunc__ does
        cp.add.at(a, (0, 1), 1.0)  # np.add.at's cupy spelling
        fakecupy.TRANSFERS.reset()
        float(a[0, 1]), a.get(), a[a > 0]  # noqa: B018
        assert [kind for kind, _ in fakecupy.TRANSFERS.events] == ["float()", ".get()", "boolean-mask index"]


def test_a_layer_calling_what_cupy_lacks_fails_with_the_layer_and_the_call_named():
    from gradcheck import layer_param
    from kernel_emulation import fakecupy
    from kernel_emulation.report import layer_in_traceback

    from dlsoft.backend import Device
    from dlsoft.blob import Blob
    from dlsoft.layers.base import Layer

    class HostHabitLayer(Layer):
        type = "HostHabit"

        def reshape(self, bottoms, tops):
            tops[0].reshape(bottoms[0].shape)

        def forward_cpu(self, bottoms, tops):
            with self.xp.errstate(divide="ignore"):
                self.xp.divide(1, bottoms[0].data, out=tops[0].data)

    with fakecupy.installed():
        gpu = Device("gpu", 0)
        layer = HostHabitLayer(layer_param('name: "habit" type: "HostHabit"'), device=gpu)
        bottom, top = Blob((2,), gpu), Blob((), gpu)
        layer.reshape([bottom], [top])
        with pytest.raises(fakecupy.CupyAPIError, match=r"cupy\.errstate does not exist") as caught:
            layer.forward([bottom], [top])
    assert layer_in_traceback(caught.value.__traceback__) == \
        "layer 'habit' (type HostHabit, HostHabitLayer.forward_cpu)"


@needs_gxx
def test_cifar10_quick_training_on_the_stand_in_matches_the_cpu():
    """Two SGD iterations of BVLC's cifar10_quick (its Data layers replaced by an Input
    layer) give the same weights on the CPU and on the cupy stand-in: convolution kernels,
    MAX and AVE pooling, softmax loss and the update rule, at the net's real shapes."""
    from kernel_emulation import fakecupy

    from dlsoft.backend import to_numpy
    from dlsoft.netdef.io import read_net
    from dlsoft.protos import caffe_pb2
    from dlsoft.solver.solver import Solver

    net = read_net(TESTS.parent / "dlsoft/model_zoo/entries/cifar10_quick/train_val.prototxt")
    layers = [layer for layer in net.layer if layer.type != "Data"]
    data = caffe_pb2.LayerParameter(name="data", type="Input", top=["data", "label"])
    data.input_param.shape.add().dim.extend([4, 3, 32, 32])
    data.input_param.shape.add().dim.extend([4])
    del net.layer[:]
    net.layer.extend([data, *layers])
    param = caffe_pb2.SolverParameter(base_lr=0.01, momentum=0.9, weight_decay=0.004, lr_policy="fixed",
                                      max_iter=10, display=0, random_seed=5, snapshot_after_train=False)
    param.net_param.CopyFrom(net)
    rng = np.random.default_rng(0)
    x, labels = rng.standard_normal((4, 3, 32, 32)).astype(np.float32), np.array([1, 7, 3, 3], np.float32)
    results = []
    for device in ("cpu", "gpu"):
        with fakecupy.installed():
            with Solver(param, device=device, metrics=False, progress_bar=False) as solver:
                xp = solver.net.blobs["data"].xp
                solver.net.blobs["data"].data[...] = xp.asarray(x)
                solver.net.blobs["label"].data[...] = xp.asarray(labels)
                solver.step(2)
                results.append([to_numpy(blob.data).copy() for blob in solver.net.learnable_params])
    for cpu, gpu in zip(*results):
        np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-5)
