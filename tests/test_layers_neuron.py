"""Activation layers: gradients, PyTorch/closed-form references, in place, GPU kernels."""
from __future__ import annotations

import numpy as np
import pytest
from gradcheck import LayerCase, case_tests, check_gradient, compare_devices, covers, make_layer, run_layer

from dlsoft import random as dl_random
from dlsoft.backend import CPU
from dlsoft.blob import Blob
from dlsoft.layers import neuron

torch = pytest.importorskip("torch")
F = torch.nn.functional

def data(shape=(2, 3, 4, 5), seed=0, low=-3.0, high=3.0, away_from=None):
    x = np.random.default_rng(seed).uniform(low, high, size=shape).astype(np.float32)
    for kink in away_from or ():  # keep finite differences off non-differentiable points
        near = np.abs(x - kink) < 0.05
        x[near] = kink + 0.1
    return x


def pos_data(shape=(2, 3, 4, 5), seed=0):
    return data(shape, seed, 0.5, 3.0)


def run_forward_backward(text, x, w, in_place=False, num_params=None):
    """Our forward and backward (with top diff w) for bottom x, separate or in-place blobs."""
    dl_random.set_seed(1701)  # the seed run_layer uses, so fillers agree
    layer = make_layer(text)
    bottom = Blob(x.shape, CPU, name="x")
    bottom.data[...] = x
    top = bottom if in_place else Blob((), CPU, name="y")
    layer.setup([bottom], [top])
    layer.reshape([bottom], [top])
    layer.param_propagate_down = [True] * len(layer.blobs)
    for blob in layer.blobs:
        blob.diff[...] = 0
    layer.forward([bottom], [top])
    y = top.data.copy()
    top.diff[...] = w
    layer.backward([top], [True], [bottom])
    return y, bottom.diff.copy(), [b.diff.copy() for b in layer.blobs]


ELEMENTWISE_CASES = [
    ('type: "ReLU"', lambda t: F.relu(t), data(away_from=[0])),
    ('type: "ReLU" relu_param { negative_slope: 0.1 }', lambda t: F.leaky_relu(t, 0.1), data(away_from=[0])),
    ('type: "ELU"', lambda t: F.elu(t), data(away_from=[0])),
    ('type: "ELU" elu_param { alpha: 0.5 }', lambda t: F.elu(t, 0.5), data(away_from=[0])),
    ('type: "Sigmoid"', torch.sigmoid, data()),
    ('type: "TanH"', torch.tanh, data()),
    ('type: "AbsVal"', torch.abs, data(away_from=[0])),
    ('type: "BNLL"', F.softplus, data(low=-20, high=20)),
    ('type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }', lambda t: (1 + 0.5 * t) ** 2, data()),
    ('type: "Power" power_param { power: 0.5 scale: 2 shift: 0 }', lambda t: (2 * t) ** 0.5, pos_data()),
    ('type: "Power" power_param { power: -1.5 scale: 1 shift: 1 }', lambda t: (1 + t) ** -1.5, pos_data()),
    ('type: "Exp"', torch.exp, data()),
    ('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }', lambda t: 2 ** (1 + 0.5 * t), data()),
    ('type: "Log"', torch.log, pos_data()),
    ('type: "Log" log_param { base: 10 scale: 2 shift: 1 }', lambda t: torch.log10(1 + 2 * t), pos_data()),
    ('type: "Swish"', F.silu, data()),
    ('type: "Swish" swish_param { beta: 1.7 }', lambda t: t * torch.sigmoid(1.7 * t), data()),
    ('type: "Clip" clip_param { min: -1 max: 2 }', lambda t: t.clamp(-1, 2), data(away_from=[-1, 2])),
]
IDS = [text.split('"')[1] + str(i) for i, (text, _, _) in enumerate(ELEMENTWISE_CASES)]

# Each: forward and backward against torch (float64), the gradient check on a corner of
# the input, and the GPU against the CPU.
CASES = [LayerCase(text, [x], torch=fn, gradient={"bottoms": [x[:1, :2]]}, gpu=True)
         for text, fn, x in ELEMENTWISE_CASES]
globals().update(case_tests(CASES))


@pytest.mark.parametrize("text,fn,x", ELEMENTWISE_CASES, ids=IDS)
def test_in_place_equals_separate_blobs(text, fn, x):
    w = np.random.default_rng(2).uniform(-1, 1, size=x.shape).astype(np.float32)
    y, dx, _ = run_forward_backward(text, x, w)
    y_in, dx_in, _ = run_forward_backward(text, x, w, in_place=True)
    np.testing.assert_array_equal(y_in, y)
    np.testing.assert_allclose(dx_in, dx, rtol=1e-6, atol=1e-7)


@covers("PReLU", "reference")
@pytest.mark.parametrize("shared", [False, True])
def test_prelu_matches_torch_including_slope_gradient(shared):
    x = data((2, 3, 4, 5), away_from=[0])
    w = np.random.default_rng(3).uniform(-1, 1, size=x.shape).astype(np.float32)
    text = 'type: "PReLU" prelu_param { channel_shared: %s filler { type: "uniform" min: 0.1 max: 0.4 } }' % (
        "true" if shared else "false")
    layer, _, _ = run_layer(text, [x])
    slope = layer.blobs[0].data.copy()
    assert slope.shape == (() if shared else (3,))
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ta = torch.tensor(slope.reshape(-1), dtype=torch.float64, requires_grad=True)
    ty = F.prelu(tx, ta)
    (ty * torch.tensor(w, dtype=torch.float64)).sum().backward()
    for in_place in (False, True):
        y, dx, (da,) = run_forward_backward(text, x, w, in_place=in_place)
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(da.reshape(-1), ta.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_prelu_default_slope_is_a_quarter():
    layer, _, tops = run_layer('type: "PReLU"', [np.full((1, 2, 3), -4, np.float32)])
    np.testing.assert_array_equal(layer.blobs[0].data, [0.25, 0.25])
    np.testing.assert_array_equal(tops[0].data, -1)


@covers("PReLU", "gradient")
@pytest.mark.parametrize("shared", ["false", "true"])
def test_prelu_gradient(shared):
    text = f'type: "PReLU" prelu_param {{ channel_shared: {shared} filler {{ type: "gaussian" std: 0.5 }} }}'
    check_gradient(text, [data((2, 3, 2, 3), seed=4)], kink=0, kink_range=0.02)


def test_relu_gradient_skipping_the_kink():
    check_gradient('type: "ReLU"', [data((2, 3, 3), seed=5)], kink=0, kink_range=0.02)
    check_gradient('type: "AbsVal"', [data((2, 3, 3), seed=5)], kink=0, kink_range=0.02)


@covers("Threshold", "reference")
def test_threshold_closed_form_and_no_backward():
    x = np.array([[-1, 0.2, 0.5, 0.7, 3]], np.float32)
    _, _, tops = run_layer('type: "Threshold" threshold_param { threshold: 0.5 }', [x])
    np.testing.assert_array_equal(tops[0].data, [[0, 0, 0, 1, 1]])
    layer, bottoms, tops = run_layer('type: "Threshold"', [x])
    np.testing.assert_array_equal(tops[0].data, [[0, 1, 1, 1, 1]])
    assert layer.forward_only
    with pytest.raises(NotImplementedError):
        layer.backward(tops, [True], bottoms)


def test_bnll_is_stable_for_large_inputs():
    x = np.array([-100, -30, 0, 30, 100], np.float32)
    y, dx, _ = run_forward_backward('type: "BNLL"', x, np.ones_like(x))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    np.testing.assert_allclose(y, F.softplus(torch.tensor(x, dtype=torch.float64)).numpy(), rtol=1e-4, atol=1e-30)
    np.testing.assert_allclose(dx, torch.sigmoid(torch.tensor(x, dtype=torch.float64)).numpy(), rtol=1e-4, atol=1e-30)


def test_power_zero_scale_gives_zero_gradient():
    x = data((3, 4))
    y, dx, _ = run_forward_backward('type: "Power" power_param { power: 3 scale: 0 shift: 2 }', x, np.ones_like(x))
    np.testing.assert_array_equal(y, 8)
    np.testing.assert_array_equal(dx, 0)


@pytest.mark.parametrize("text", ['type: "Exp" exp_param { base: -2 }', 'type: "Log" log_param { base: 0 }',
                                  'type: "Clip" clip_param { min: 1 max: 0 }'])
def test_bad_parameters_are_refused(text):
    from dlsoft.errors import NetDefinitionError
    with pytest.raises(NetDefinitionError, match="layer"):
        run_layer(text, [data((2, 3))])


def test_kernel_bodies_compile_with_nvrtc():
    """ElementwiseKernel bodies wrapped as device functions (float parameters, float& outputs)."""
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc")
    specs = []
    for cls in vars(neuron).values():
        if isinstance(cls, type) and issubclass(cls, neuron.NeuronLayer) and cls is not neuron.NeuronLayer:
            specs += [(f"{cls.type}_{attr}", getattr(cls, attr)) for attr in
                      ("forward_kernel", "backward_kernel", "slope_grad_kernel") if getattr(cls, attr, None)]
    assert len(specs) >= 25
    for name, (inputs, outputs, body) in specs:
        params = [f"float {n}" for n in neuron.param_names(inputs)] + \
                 [f"float& {n}" for n in neuron.param_names(outputs)]
        source = f'extern "C" __device__ void k({", ".join(params)}) {{ {body}; }}'
        program = nvrtc.createProgram(source, f"{name}.cu", [], [])
        try:
            nvrtc.compileProgram(program, ["-arch=compute_90"])
        except nvrtc.NVRTCError:
            raise AssertionError(f"{name}: {nvrtc.getProgramLog(program)}") from None


@covers("PReLU", "gpu")
@covers("Threshold", "gpu")
@pytest.mark.gpu
@pytest.mark.parametrize("text", ['type: "PReLU"', 'type: "PReLU" prelu_param { channel_shared: true }',
                                  'type: "Threshold" threshold_param { threshold: 0.3 }'])
def test_gpu_matches_cpu_prelu_threshold(text):
    compare_devices(text, [data(seed=6)])
