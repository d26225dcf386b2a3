"""SegNet's BN (bn_mode LEARN / INFERENCE, scale and shift blobs): values and gradients
against PyTorch's batch_norm, the folded inference form in closed form."""
from __future__ import annotations

import numpy as np
import pytest
from gradcheck import check_gradient, compare_devices, covers, run_layer


FILLERS = ('scale_filler { type: "uniform" min: 0.5 max: 1.5 } '
           'shift_filler { type: "uniform" min: -1 max: 1 }')


def normal(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@covers("BN", "reference")
def test_bn_learn_matches_torch_forward_and_backward():
    torch = pytest.importorskip("torch")
    x = normal((3, 4, 5, 2), seed=1) * 2 + 1
    layer, bottoms, tops = run_layer(f'type: "BN" top: "y" top: "mean" top: "var" bn_param {{ {FILLERS} }}', [x])
    scale, shift = (b.data.reshape(-1).copy() for b in layer.blobs)
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    st, bt = (torch.tensor(v.astype(np.float64), requires_grad=True) for v in (scale, shift))
    yt = torch.nn.functional.batch_norm(xt, None, None, st, bt, training=True, eps=1e-9)
    np.testing.assert_allclose(tops[0].data, yt.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(tops[1].data.reshape(-1), x.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tops[2].data.reshape(-1), x.var(axis=(0, 2, 3)), rtol=1e-4)
    dy = normal(x.shape, seed=2)
    tops[0].diff[...] = dy
    for b in layer.blobs:
        b.diff[...] = 0
    layer.backward(tops, [True], bottoms)
    (yt * torch.tensor(dy, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(bottoms[0].diff, xt.grad.numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(layer.blobs[0].diff.reshape(-1), st.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.blobs[1].diff.reshape(-1), bt.grad.numpy(), rtol=1e-4, atol=1e-4)


@covers("BN", "reference")
def test_bn_inference_is_the_folded_affine_form():
    x = normal((2, 3, 4, 4), seed=3)
    layer, _, tops = run_layer(f'type: "BN" bn_param {{ bn_mode: INFERENCE {FILLERS} }}', [x])
    scale, shift = (b.data for b in layer.blobs)
    assert scale.shape == shift.shape == (1, 3, 1, 1)
    np.testing.assert_allclose(tops[0].data, x * scale + shift, rtol=1e-6)


def test_bn_default_fillers_are_caffes_constant_zero_and_eps_is_read():
    layer, _, tops = run_layer('type: "BN"', [normal((2, 2, 3, 3))])
    assert not layer.blobs[0].data.any() and not tops[0].data.any()
    layer, _, _ = run_layer('type: "BN" bn_param { eps: 0.001 slope_filler { value: 2 } }', [normal((2, 2, 3, 3))])
    assert layer.eps == pytest.approx(1e-3) and (layer.blobs[0].data == 2).all()


@covers("BN", "gradient")
def test_bn_gradient():
    x = normal((3, 2, 3, 2), seed=4)
    check_gradient(f'type: "BN" bn_param {{ {FILLERS} }}', [x], stepsize=1e-3, threshold=2e-2)
    check_gradient(f'type: "BN" bn_param {{ bn_mode: INFERENCE {FILLERS} }}', [x])


@covers("BN", "gpu")
@pytest.mark.gpu
def test_bn_gpu_matches_cpu():
    x = normal((3, 4, 3, 5), seed=5)
    compare_devices(f'type: "BN" top: "y" top: "m" top: "v" bn_param {{ {FILLERS} }}', [x])
    compare_devices(f'type: "BN" bn_param {{ bn_mode: INFERENCE {FILLERS} }}', [x])
