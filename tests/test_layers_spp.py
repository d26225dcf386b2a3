"""STOCHASTIC pooling (TRAIN: sample by value, TEST: probability-weighted average) and SPP
(Caffe's spatial pyramid: Pooling per level, flattened, concatenated): closed forms, the
sampling frequencies, PyTorch for SPP's levels, gradients."""
from __future__ import annotations

import numpy as np
import pytest
from gradcheck import check_gradient, compare_devices, covers, run_layer



def positive(shape, seed=0):
    return np.random.default_rng(seed).uniform(0.1, 2.0, shape).astype(np.float32)


def stochastic(extra, top=""):
    return f'type: "Pooling" {top} pooling_param {{ pool: STOCHASTIC {extra} }}'


def windows(x, k, s, out):
    """Caffe's stochastic windows: start y*s, clipped to the input, pad ignored."""
    for y in range(out[0]):
        for x_ in range(out[1]):
            yield y, x_, x[:, :, y * s:min(y * s + k, x.shape[2]), x_ * s:min(x_ * s + k, x.shape[3])]


@covers("Pooling", "reference")
def test_stochastic_test_phase_is_the_weighted_average():
    x = positive((2, 3, 7, 6), seed=1)
    x[0, 0, :3, :3] = 0                                       # an all-zero window gives 0
    _, _, tops = run_layer(stochastic("kernel_size: 3 stride: 2"), [x], phase="TEST")
    assert tops[0].shape == (2, 3, 3, 3)                     # Caffe's ceil rule: ceil(4/2)+1, ceil(3/2)+1
    for y, x_, w in windows(x, 3, 2, (3, 3)):
        total = w.sum(axis=(2, 3))
        expected = np.where(total > 0, (w * w).sum(axis=(2, 3)) / np.where(total > 0, total, 1), 0)
        np.testing.assert_allclose(tops[0].data[:, :, y, x_], expected, rtol=1e-5)


def test_stochastic_train_samples_in_proportion_to_value():
    x = np.array([1, 2, 3, 4], np.float32).reshape(1, 1, 2, 2)
    big = np.repeat(x, 4000, axis=0)                          # 4000 independent windows
    _, _, tops = run_layer(stochastic("kernel_size: 2 stride: 2"), [big], seed=3)
    values, counts = np.unique(tops[0].data, return_counts=True)
    np.testing.assert_array_equal(values, [1, 2, 3, 4])
    np.testing.assert_allclose(counts / counts.sum(), [0.1, 0.2, 0.3, 0.4], atol=0.025)


def test_stochastic_train_backward_routes_to_the_sampled_element():
    x = positive((2, 2, 6, 6), seed=4)
    layer, bottoms, tops = run_layer(stochastic("kernel_size: 2 stride: 2"), [x])
    tops[0].diff[...] = 1
    layer.backward(tops, [True], bottoms)
    picked = bottoms[0].diff == 1
    assert picked.sum() == tops[0].count and (bottoms[0].diff[~picked] == 0).all()
    np.testing.assert_array_equal(np.sort(x[picked]), np.sort(tops[0].data.reshape(-1)))


@covers("Pooling", "gradient")
def test_stochastic_gradient():
    check_gradient(stochastic("kernel_size: 3 stride: 2"), [positive((2, 2, 5, 6), seed=5)], phase="TEST")
    # TRAIN: the same draws each forward (the checker reseeds); a small step rarely moves a pick
    check_gradient(stochastic("kernel_size: 2 stride: 2"), [positive((2, 2, 4, 4), seed=5)],
                   stepsize=1e-4, threshold=1e-2)


@covers("Pooling", "gpu")
@pytest.mark.gpu
@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_stochastic_gpu_matches_cpu(phase):
    # TRAIN draws from each device's generator: compare the TEST values, and TRAIN's shape and backward rule
    x = positive((2, 3, 6, 5), seed=6)
    if phase == "TEST":
        compare_devices(stochastic("kernel_size: 3 stride: 2"), [x], phase="TEST")
    else:
        layer, bottoms, tops = run_layer(stochastic("kernel_size: 2 stride: 2"), [x], device="gpu")
        from dlsoft.backend import to_numpy
        tops[0].diff[...] = 1
        layer.backward(tops, [True], bottoms)
        assert float(to_numpy(bottoms[0].diff).sum()) == tops[0].count


def torch_spp(x, levels, method):
    torch = pytest.importorskip("torch")
    F, t, parts = torch.nn.functional, torch.tensor(x), []
    for level in range(levels):
        bins = 2 ** level
        kernel = [-(-size // bins) for size in x.shape[2:]]
        pad = [(k * bins - size + 1) // 2 for k, size in zip(kernel, x.shape[2:])]
        pool = F.max_pool2d if method == "MAX" else F.avg_pool2d
        out = pool(t, kernel, kernel, pad, ceil_mode=True)
        assert out.shape[2:] == (bins, bins)
        parts.append(out.reshape(x.shape[0], -1))
    return torch.cat(parts, 1).numpy()


@covers("SPP", "reference")
@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("shape", [(2, 3, 7, 7), (1, 2, 10, 6)])
def test_spp_matches_torch_pooling_pyramid(method, shape):
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    _, _, tops = run_layer(f'type: "SPP" spp_param {{ pyramid_height: 3 pool: {method} }}', [x])
    assert tops[0].shape == (shape[0], shape[1] * (1 + 4 + 16))
    np.testing.assert_allclose(tops[0].data, torch_spp(x, 3, method), rtol=1e-5, atol=1e-6)


def test_spp_height_one_is_global_pooling_and_input_size_may_change():
    x = np.random.default_rng(8).standard_normal((2, 3, 5, 4)).astype(np.float32)
    layer, bottoms, tops = run_layer('type: "SPP" spp_param { pyramid_height: 1 }', [x])
    assert tops[0].shape == (2, 3, 1, 1)
    np.testing.assert_allclose(tops[0].data[:, :, 0, 0], x.max(axis=(2, 3)))
    layer, bottoms, tops = run_layer('type: "SPP" spp_param { pyramid_height: 2 }', [x])
    bottoms[0].reshape((1, 3, 8, 6))
    bottoms[0].data[...] = 1
    layer.reshape(bottoms, tops)
    layer.forward(bottoms, tops)
    assert tops[0].shape == (1, 15) and (tops[0].data == 1).all()


@covers("SPP", "gradient")
def test_spp_gradient():
    x = np.random.default_rng(9).permutation(2 * 2 * 7 * 6).reshape(2, 2, 7, 6).astype(np.float32) / 10
    check_gradient('type: "SPP" spp_param { pyramid_height: 3 }', [x])
    check_gradient('type: "SPP" spp_param { pyramid_height: 2 pool: AVE }', [x])


@covers("SPP", "gpu")
@pytest.mark.gpu
def test_spp_gpu_matches_cpu():
    x = np.random.default_rng(10).standard_normal((2, 3, 7, 6)).astype(np.float32)
    compare_devices('type: "SPP" spp_param { pyramid_height: 3 }', [x])
    compare_devices('type: "SPP" spp_param { pyramid_height: 2 pool: AVE }', [x])
