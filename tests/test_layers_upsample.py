"""Upsample (SegNet's max-unpooling by a pooling mask, and the one-bottom repeat form):
sizes by the fork's rules, values against PyTorch's max_unpool2d, gradients."""
from __future__ import annotations

import numpy as np
import pytest
from gradcheck import check_gradient, compare_devices, covers, run_layer

from dlsoft.errors import DataError, NetDefinitionError



def normal(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def pooled_with_mask(x, kernel=2, stride=2):
    """Caffe's MAX Pooling values and mask top for x, from our Pooling layer."""
    _, _, tops = run_layer(f'type: "Pooling" top: "p" top: "m" pooling_param {{ pool: MAX kernel_size: {kernel} '
                           f'stride: {stride} }}', [x])
    return tops[0].data.copy(), tops[1].data.copy()


@pytest.mark.parametrize("shape, params, size", [
    ((2, 3, 6, 8), "scale: 2", (6, 8)),
    ((1, 2, 7, 5), "scale: 2 pad_out_h: true pad_out_w: true", (7, 5)),    # odd input: 2·4 - 1
    ((1, 2, 7, 5), "upsample_h: 7 upsample_w: 5", (7, 5)),
    ((1, 2, 6, 6), "scale_h: 2 scale_w: 2", (6, 6)),
])
@covers("Upsample", "reference")
def test_upsample_unpools_like_torch(shape, params, size):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = normal(shape, seed=1)
    values, mask = pooled_with_mask(x)
    _, _, tops = run_layer(f'type: "Upsample" upsample_param {{ {params} }}', [values, mask])
    assert tops[0].shape[2:] == size
    pooled, index = F.max_pool2d(torch.tensor(x), 2, 2, ceil_mode=True, return_indices=True)
    np.testing.assert_array_equal(index.numpy(), mask.astype(np.int64))   # Caffe's mask is torch's index
    expected = F.max_unpool2d(pooled, index, 2, 2, output_size=size).numpy()
    np.testing.assert_array_equal(tops[0].data, expected)


@covers("Upsample", "reference")
def test_upsample_backward_matches_torch():
    torch = pytest.importorskip("torch")
    x = normal((2, 2, 6, 4), seed=2)
    values, mask = pooled_with_mask(x)
    layer, bottoms, tops = run_layer('type: "Upsample" upsample_param { scale: 2 }', [values, mask])
    dy = normal(tops[0].shape, seed=3)
    tops[0].diff[...] = dy
    layer.backward(tops, [True, False], bottoms)
    v = torch.tensor(values, requires_grad=True)
    y = torch.nn.functional.max_unpool2d(v, torch.tensor(mask.astype(np.int64)), 2, 2, output_size=(6, 4))
    (y * torch.tensor(dy)).sum().backward()
    np.testing.assert_allclose(bottoms[0].diff, v.grad.numpy(), rtol=1e-6)


def test_segnet_pool_unpool_net_runs(tmp_path):
    import dlsoft
    proto = tmp_path / "net.prototxt"
    proto.write_text(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 5 dim: 7 } } }\n'
        'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask" '
        'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
        'layer { name: "up" type: "Upsample" bottom: "pool" bottom: "mask" top: "up" '
        'upsample_param { upsample_h: 5 upsample_w: 7 } }\n')
    net = dlsoft.Net(str(proto), phase="TEST")
    x = normal((1, 2, 5, 7), seed=4)
    up = net.forward(data=x)["up"]
    kept = up != 0                                         # each window's maximum, in place
    np.testing.assert_array_equal(up[kept], x[kept])
    assert kept.sum() == 2 * 3 * 4


def test_upsample_repeat_form_with_one_bottom():
    x = normal((1, 2, 3, 2), seed=5)
    _, _, tops = run_layer('type: "Upsample" upsample_param { scale_h: 2 scale_w: 3 }', [x])
    np.testing.assert_array_equal(tops[0].data, np.kron(x, np.ones((2, 3), np.float32)))


def test_upsample_errors():
    x = normal((1, 1, 4, 4))
    values, mask = pooled_with_mask(x)
    with pytest.raises(NetDefinitionError, match="pad_out_h needs scale_h 2"):
        run_layer('type: "Upsample" upsample_param { scale: 3 pad_out_h: true }', [values, mask])
    with pytest.raises(NetDefinitionError, match="together"):
        run_layer('type: "Upsample" upsample_param { upsample_h: 4 }', [values, mask])
    with pytest.raises(DataError, match="out of range"):
        run_layer('type: "Upsample" upsample_param { upsample_h: 2 upsample_w: 2 }', [values, mask])
    with pytest.raises(NetDefinitionError, match="shape"):
        run_layer('type: "Upsample"', [values, normal((1, 1, 3, 3))])


@covers("Upsample", "gradient")
def test_upsample_gradient():
    values, mask = pooled_with_mask(normal((2, 2, 5, 5), seed=6))
    check_gradient('type: "Upsample" upsample_param { scale: 2 pad_out_h: true pad_out_w: true }',
                   [values, mask], check_bottoms=[0])
    check_gradient('type: "Upsample" upsample_param { scale: 2 }', [normal((1, 2, 3, 3), seed=7)])


@covers("Upsample", "gpu")
@pytest.mark.gpu
def test_upsample_gpu_matches_cpu():
    values, mask = pooled_with_mask(normal((2, 3, 6, 4), seed=8))
    compare_devices('type: "Upsample" upsample_param { scale: 2 }', [values, mask])
    compare_devices('type: "Upsample" upsample_param { scale: 2 }', [normal((1, 2, 3, 3), seed=9)])
