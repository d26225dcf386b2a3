"""The shape and plumbing layers, Softmax, BatchNorm, MVN, Scale/Bias, Dropout: gradients, reference
values against PyTorch or closed forms, in-place use, storage sharing, GPU vs CPU."""
from __future__ import annotations

import numpy as np
import pytest
from gradcheck import LayerCase, case_tests, check_gradient, covers, distinct, layer_param, make_layer, run_layer
from gradcheck import backward_with as backward
from gradcheck import uniform as rand

from dlsoft.backend import CPU, to_numpy
from dlsoft.blob import Blob
from dlsoft.errors import NetDefinitionError

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL, ATOL = 1e-4, 1e-6
GAUSS = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


def close(actual, expected, rtol=RTOL, atol=ATOL):
    if isinstance(expected, torch.Tensor):
        expected = expected.detach().numpy()
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def t(array, grad=True):
    return torch.tensor(np.asarray(array, dtype=np.float64), requires_grad=grad)


# ---- gradient checks -------------------------------------------------------------------

GRADIENT_CASES = [
    ("ip", f'type: "InnerProduct" inner_product_param {{ num_output: 5 {GAUSS} }}', [rand(2, 3, 4)], {}),
    ("ip-axis2", f'type: "InnerProduct" inner_product_param {{ num_output: 3 axis: 2 {GAUSS} }}', [rand(2, 3, 4)], {}),
    ("ip-transpose", f'type: "InnerProduct" inner_product_param {{ num_output: 4 transpose: true {GAUSS} }}',
     [rand(3, 6)], {}),
    ("ip-nobias", ('type: "InnerProduct" inner_product_param { num_output: 2 bias_term: false '
                   'weight_filler { type: "xavier" } }'), [rand(3, 2, 2)], {}),
    ("embed", f'type: "Embed" embed_param {{ input_dim: 5 num_output: 3 {GAUSS} }}',
     [np.array([[0, 4, 2], [2, 2, 1]], np.float32)], {"check_bottoms": []}),
    ("concat", 'type: "Concat"', [rand(2, 3, 2), rand(2, 1, 2)], {}),
    ("concat-axis0", 'type: "Concat" concat_param { axis: 0 }', [rand(2, 3), rand(1, 3), rand(3, 3)], {}),
    ("concat-dim-legacy", 'type: "Concat" concat_param { concat_dim: 2 }', [rand(2, 2, 1), rand(2, 2, 3)], {}),
    ("slice", 'type: "Slice" top: "a" top: "b" top: "c" slice_param { slice_point: 1 slice_point: 3 }',
     [rand(2, 5, 2)], {}),
    ("slice-equal", 'type: "Slice" top: "a" top: "b" slice_param { axis: -1 }', [rand(2, 3, 4)], {}),
    ("split", 'type: "Split" top: "a" top: "b" top: "c"', [rand(3, 4)], {}),
    ("flatten", 'type: "Flatten"', [rand(2, 3, 2, 2)], {}),
    ("reshape", 'type: "Reshape" reshape_param { shape { dim: 0 dim: -1 dim: 2 } }', [rand(2, 3, 4)], {}),
    ("eltwise-sum", 'type: "Eltwise"', [rand(2, 3), rand(2, 3, seed=1)], {}),
    ("eltwise-sum-coeff", 'type: "Eltwise" eltwise_param { operation: SUM coeff: 0.5 coeff: -2 coeff: 1 }',
     [rand(2, 3), rand(2, 3, seed=1), rand(2, 3, seed=2)], {}),
    ("eltwise-prod", 'type: "Eltwise" eltwise_param { operation: PROD }',
     [rand(2, 3), rand(2, 3, seed=1), rand(2, 3, seed=2)], {}),
    ("eltwise-prod-unstable", 'type: "Eltwise" eltwise_param { operation: PROD stable_prod_grad: false }',
     [rand(2, 3, low=0.5, high=1.5), rand(2, 3, seed=1, low=0.5, high=1.5)], {}),
    ("eltwise-max", 'type: "Eltwise" eltwise_param { operation: MAX }',
     list(distinct(3, 2, 4, seed=4)), {}),
    ("tile", 'type: "Tile" tile_param { axis: 1 tiles: 3 }', [rand(2, 2, 3)], {}),
    ("tile-axis0", 'type: "Tile" tile_param { axis: 0 tiles: 2 }', [rand(2, 3)], {}),
    ("reduction-sum", 'type: "Reduction" reduction_param { operation: SUM axis: 1 coeff: 2 }', [rand(2, 3, 2)], {}),
    ("reduction-asum", 'type: "Reduction" reduction_param { operation: ASUM axis: 1 }', [distinct(2, 3, 2) + 0.025], {}),
    ("reduction-sumsq", 'type: "Reduction" reduction_param { operation: SUMSQ axis: 2 coeff: -1 }', [rand(2, 3, 2)], {}),
    ("reduction-mean", 'type: "Reduction" reduction_param { operation: MEAN }', [rand(2, 3, 2)], {}),
    ("softmax", 'type: "Softmax"', [rand(2, 4, 3)], {}),
    ("softmax-axis2", 'type: "Softmax" softmax_param { axis: 2 }', [rand(2, 3, 4, low=-3, high=3)], {}),
    ("batchnorm-train", 'type: "BatchNorm"', [rand(3, 2, 3, 2)], {"check_params": False}),
    ("batchnorm-2d", 'type: "BatchNorm"', [rand(5, 3)], {"check_params": False}),
    ("scale", 'type: "Scale" scale_param { filler { type: "gaussian" } }', [rand(2, 3, 2)], {}),
    ("scale-bias", ('type: "Scale" scale_param { axis: 0 num_axes: 2 bias_term: true filler { type: "gaussian" } '
                    'bias_filler { type: "gaussian" } }'), [rand(2, 3, 2)], {}),
    ("scale-2bottoms", 'type: "Scale"', [rand(2, 3, 2), rand(3, seed=5)], {}),
    ("scale-2bottoms-bias", 'type: "Scale" scale_param { axis: 0 bias_term: true bias_filler { type: "gaussian" } }',
     [rand(2, 3, 2), rand(2, 3, seed=5)], {}),
    ("scale-scalar", 'type: "Scale" scale_param { num_axes: 0 filler { value: 1.5 } }', [rand(2, 3)], {}),
    ("bias", 'type: "Bias" bias_param { filler { type: "gaussian" } }', [rand(2, 3, 2)], {}),
    ("bias-2bottoms", 'type: "Bias" bias_param { axis: 1 }', [rand(2, 3, 2), rand(3, 2, seed=5)], {}),
    ("dropout", 'type: "Dropout" dropout_param { dropout_ratio: 0.3 }', [rand(4, 5)], {}),
    ("mvn", 'type: "MVN"', [rand(2, 3, 4, 4)], {}),
    ("mvn-across", 'type: "MVN" mvn_param { across_channels: true }', [rand(2, 3, 3, 3)], {}),
    ("mvn-mean-only", 'type: "MVN" mvn_param { normalize_variance: false }', [rand(2, 3, 4)], {}),
    ("filter", 'type: "Filter" top: "a" top: "b"', [rand(4, 3), rand(4, 2, 2), np.array([1, 0, 1, 1], np.float32)],
     {"check_bottoms": [0, 1]}),
    ("batchreindex", 'type: "BatchReindex"', [rand(3, 2, 2), np.array([2, 0, 2, 1, 2], np.float32)],
     {"check_bottoms": [0]}),
    ("parameter", 'type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }', [], {}),
]


GPU_ONLY_CASES = [  # no gradient check: forward only, or the phase/tops differ
    ("argmax", 'type: "ArgMax" argmax_param { top_k: 2 out_max_val: true }', [distinct(2, 3, 4)], {}),
    ("argmax-axis", 'type: "ArgMax" argmax_param { axis: 1 }', [distinct(2, 3, 4)], {}),
    ("batchnorm-test", 'type: "BatchNorm"', [rand(3, 2, 3, 2)], {"phase": "TEST"}),
    ("silence", 'type: "Silence"', [rand(2, 3)], {"num_tops": 0}),
]
# Every gradient case is also compared GPU-vs-CPU, except dropout (the GPU masks come
# from cupy's generator: test_gpu_dropout_mask_statistics checks those).
CASES = [LayerCase(text, bottoms, gradient=kwargs, gpu=name != "dropout", name=name)
         for name, text, bottoms, kwargs in GRADIENT_CASES] + \
        [LayerCase(text, bottoms, gpu=True, name=name, **kwargs) for name, text, bottoms, kwargs in GPU_ONLY_CASES]
globals().update(case_tests(CASES))


def test_gradient_batchnorm_global_stats():
    text = 'type: "BatchNorm" batch_norm_param { use_global_stats: true }'
    layer, bottoms, tops = run_layer(text, [rand(2, 3, 2)], phase="TRAIN")
    # Gradient checking reruns setup, so feed stats through a layer built here instead.
    layer.blobs[0].data[...] = [0.3, -0.6, 1.5]
    layer.blobs[1].data[...] = [1.2, 0.4, 2.0]
    layer.blobs[2].data[...] = 2.0
    std = np.sqrt(np.array([0.6, 0.2, 1.0]) + 1e-5)
    x = bottoms[0].data.copy()
    layer.forward(bottoms, tops)
    expected = (x - np.array([0.15, -0.3, 0.75])[None, :, None]) / std[None, :, None]
    close(tops[0].data, expected)
    dy = rand(2, 3, 2, seed=7)
    backward(layer, bottoms, tops, [dy])
    close(bottoms[0].diff, dy / std[None, :, None])
    # The same in TEST phase, where global stats are the default, with finite differences.
    check_gradient('type: "BatchNorm"', [rand(2, 3, 2)], phase="TEST", check_params=False)


# ---- reference values ------------------------------------------------------------------

@covers("InnerProduct", "reference")
@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product_matches_torch(transpose):
    text = f'type: "InnerProduct" inner_product_param {{ num_output: 4 transpose: {str(transpose).lower()} {GAUSS} }}'
    x = rand(3, 2, 5)
    layer, bottoms, tops = run_layer(text, [x])
    w, b = layer.blobs[0].data.copy(), layer.blobs[1].data.copy()
    assert w.shape == ((10, 4) if transpose else (4, 10))
    tx, tw, tb = t(x), t(w.T if transpose else w), t(b)
    ty = F.linear(tx.reshape(3, 10), tw, tb)
    close(tops[0].data, ty)
    dy = rand(3, 4, seed=3)
    ty.backward(t(dy, False))
    layer.blobs[0].diff[...] = 1.0  # parameter gradients accumulate
    layer.blobs[1].diff[...] = 1.0
    for top in tops:
        top.diff[...] = dy
    layer.backward(tops, [True], bottoms)
    close(bottoms[0].diff, tx.grad)
    close(layer.blobs[0].diff - 1, tw.grad.T if transpose else tw.grad)
    close(layer.blobs[1].diff - 1, tb.grad)


def test_inner_product_rejects_wrong_input_size():
    layer, bottoms, tops = run_layer('type: "InnerProduct" inner_product_param { num_output: 2 }', [rand(2, 3)])
    bottoms[0].reshape(2, 4)
    with pytest.raises(NetDefinitionError, match="does not match"):
        layer.reshape(bottoms, tops)


@covers("Embed", "reference")
def test_embed_matches_torch():
    idx = np.array([[3, 0], [1, 3], [4, 4]], np.float32)
    layer, bottoms, tops = run_layer(f'type: "Embed" embed_param {{ input_dim: 5 num_output: 2 {GAUSS} }}', [idx])
    w, b = t(layer.blobs[0].data), t(layer.blobs[1].data)
    ty = F.embedding(torch.tensor(idx.astype(np.int64)), w) + b
    close(tops[0].data, ty)
    dy = rand(3, 2, 2, seed=2)
    ty.backward(t(dy, False))
    backward(layer, bottoms, tops, [dy])
    close(layer.blobs[0].diff, w.grad)
    close(layer.blobs[1].diff, b.grad)
    bottoms[0].data[0, 0] = 5
    with pytest.raises(NetDefinitionError, match="out of range"):
        layer.forward(bottoms, tops)


@covers("Concat", "reference")
@covers("Slice", "reference")
def test_concat_and_slice_match_torch():
    a, b = rand(2, 3, 2), rand(2, 1, 2, seed=1)
    _, _, tops = run_layer('type: "Concat"', [a, b])
    close(tops[0].data, torch.cat([t(a), t(b)], dim=1))
    x = rand(2, 6, 3)
    _, _, tops = run_layer('type: "Slice" top: "a" top: "b" top: "c" slice_param { axis: 1 slice_point: 1 slice_point: 4 }', [x])
    for top, piece in zip(tops, torch.split(t(x), [1, 3, 2], dim=1)):
        close(top.data, piece)
    _, _, tops = run_layer('type: "Slice" top: "a" top: "b" slice_param { slice_dim: 2 }', [rand(2, 2, 4)])
    assert [top.shape for top in tops] == [(2, 2, 2), (2, 2, 2)]
    with pytest.raises(NetDefinitionError, match="equal parts"):
        run_layer('type: "Slice" top: "a" top: "b"', [rand(2, 3)])


@covers("Split", "reference")
def test_split_shares_data_and_sums_diffs():
    x = rand(2, 3)
    layer, bottoms, tops = run_layer('type: "Split" top: "a" top: "b"', [x])
    bottoms[0].data[0, 0] = 7.0
    assert tops[0].data[0, 0] == 7.0 and tops[1].data[0, 0] == 7.0  # no copy
    d1, d2 = rand(2, 3, seed=1), rand(2, 3, seed=2)
    backward(layer, bottoms, tops, [d1, d2])
    close(bottoms[0].diff, d1 + d2)


@covers("Flatten", "reference")
@covers("Reshape", "reference")
def test_flatten_and_reshape_shapes_and_sharing():
    x = rand(2, 3, 4, 5)
    _, bottoms, tops = run_layer('type: "Flatten"', [x])
    assert tops[0].shape == (2, 60)
    bottoms[0].data[1, 2, 3, 4] = 9.0
    assert tops[0].data[1, 59] == 9.0
    tops[0].diff[0, 1] = 3.0
    assert bottoms[0].diff[0, 0, 0, 1] == 3.0
    cases = {
        'flatten_param { axis: 1 end_axis: 2 }': (2, 12, 5),
        'flatten_param { axis: -2 }': (2, 3, 20),
    }
    for body, shape in cases.items():
        assert run_layer(f'type: "Flatten" {body}', [x])[2][0].shape == shape
    reshapes = {
        'shape { dim: 0 dim: -1 }': (2, 60),
        'shape { dim: -1 dim: 4 dim: 0 } axis: 1': (2, 3, 4, 5),  # the 0 copies axis 3
        'shape { dim: 6 dim: 1 } axis: 0 num_axes: 2': (6, 1, 4, 5),
        'shape { dim: 1 } axis: 1 num_axes: 0': (2, 1, 3, 4, 5),
        'shape { dim: 2 dim: 2 } axis: -3 num_axes: 1': (2, 3, 2, 2, 5),
        'shape { dim: 0 dim: 0 dim: 0 dim: 0 dim: 1 }': (2, 3, 4, 5, 1),
    }
    for body, shape in reshapes.items():
        _, bottoms, tops = run_layer(f'type: "Reshape" reshape_param {{ {body} }}', [x])
        assert tops[0].shape == shape, body
        close(tops[0].data.reshape(-1), x.reshape(-1))
    with pytest.raises(NetDefinitionError, match="has 21 elements"):
        run_layer('type: "Reshape" reshape_param { shape { dim: 7 dim: 3 } }', [x])
    with pytest.raises(NetDefinitionError, match="cannot infer"):
        run_layer('type: "Reshape" reshape_param { shape { dim: 7 dim: -1 } }', [x])
    with pytest.raises(NetDefinitionError, match="one -1"):
        run_layer('type: "Reshape" reshape_param { shape { dim: -1 dim: -1 } }', [x])


def test_reshape_at_test_phase_copies_diff_back():
    x = rand(2, 6)
    layer, bottoms, tops = run_layer('type: "Reshape" reshape_param { shape { dim: 3 dim: 4 } }', [x], phase="TEST")
    dy = rand(3, 4, seed=1)
    backward(layer, bottoms, tops, [dy], [True])
    close(bottoms[0].diff, dy.reshape(2, 6))


@covers("Eltwise", "reference")
def test_eltwise_matches_closed_forms():
    a, b, c = rand(2, 3), rand(2, 3, seed=1), rand(2, 3, seed=2)
    sum_text = 'type: "Eltwise" eltwise_param { coeff: 1 coeff: -0.5 coeff: 2 }'
    _, _, tops = run_layer(sum_text, [a, b, c])
    close(tops[0].data, a - 0.5 * b + 2 * c)
    _, _, tops = run_layer('type: "Eltwise" eltwise_param { operation: PROD }', [a, b, c])
    close(tops[0].data, a * b * c)
    layer, bottoms, tops = run_layer('type: "Eltwise" eltwise_param { operation: MAX }', [a, b, c])
    close(tops[0].data, np.maximum(np.maximum(a, b), c))
    dy = rand(2, 3, seed=3)
    backward(layer, bottoms, tops, [dy])
    winner = np.argmax(np.stack([a, b, c]), axis=0)
    for i in range(3):
        close(bottoms[i].diff, np.where(winner == i, dy, 0))
    with pytest.raises(NetDefinitionError, match="one per bottom"):
        run_layer('type: "Eltwise" eltwise_param { coeff: 1 }', [a, b])


def test_eltwise_max_ties_follow_caffe():
    x = np.ones((1, 3), np.float32)
    layer, bottoms, tops = run_layer('type: "Eltwise" eltwise_param { operation: MAX }', [x, x, x])
    backward(layer, bottoms, tops, [np.ones((1, 3), np.float32)])
    # Caffe: bottom 1 wins a tie with bottom 0; later bottoms must be strictly greater.
    assert [float(b.diff.sum()) for b in bottoms] == [0.0, 3.0, 0.0]


@covers("Tile", "reference")
def test_tile_matches_torch():
    x = rand(2, 3, 2)
    layer, bottoms, tops = run_layer('type: "Tile" tile_param { axis: 1 tiles: 3 }', [x])
    tx = t(x)
    ty = tx.repeat(1, 3, 1)
    close(tops[0].data, ty)
    dy = rand(2, 9, 2, seed=1)
    ty.backward(t(dy, False))
    backward(layer, bottoms, tops, [dy])
    close(bottoms[0].diff, tx.grad)


@covers("Reduction", "reference")
@pytest.mark.parametrize("op,axis,coeff", [("SUM", 0, 1.0), ("ASUM", 1, 2.0), ("SUMSQ", 2, 0.5), ("MEAN", 1, -1.0)])
def test_reduction_matches_torch(op, axis, coeff):
    x = rand(2, 3, 4)
    layer, bottoms, tops = run_layer(
        f'type: "Reduction" reduction_param {{ operation: {op} axis: {axis} coeff: {coeff} }}', [x])
    tx = t(x)
    dims = tuple(range(axis, 3))
    value = {"SUM": tx, "ASUM": tx.abs(), "SUMSQ": tx * tx, "MEAN": tx}[op]
    ty = coeff * (value.mean(dim=dims) if op == "MEAN" else value.sum(dim=dims))
    assert tops[0].shape == x.shape[:axis]
    close(tops[0].data, ty)
    dy = rand(*x.shape[:axis], seed=1) if axis else np.float32(0.7)
    ty.backward(t(dy, False))
    backward(layer, bottoms, tops, [dy])
    close(bottoms[0].diff, tx.grad)


@covers("ArgMax", "reference")
def test_argmax_matches_topk():
    x = distinct(2, 3, 4, seed=2)
    _, _, tops = run_layer('type: "ArgMax" argmax_param { top_k: 2 }', [x])
    values, indices = torch.topk(torch.tensor(x.reshape(2, -1)), 2, dim=1)
    assert tops[0].shape == (2, 1, 2)
    close(tops[0].data[:, 0], indices.numpy())
    _, _, tops = run_layer('type: "ArgMax" argmax_param { top_k: 3 out_max_val: true }', [x])
    values, indices = torch.topk(torch.tensor(x.reshape(2, -1)), 3, dim=1)
    assert tops[0].shape == (2, 2, 3)
    close(tops[0].data[:, 0], indices.numpy())
    close(tops[0].data[:, 1], values.numpy())
    _, _, tops = run_layer('type: "ArgMax" argmax_param { axis: 1 }', [x])
    assert tops[0].shape == (2, 1, 4)
    close(tops[0].data[:, 0], x.argmax(axis=1))
    _, _, tops = run_layer('type: "ArgMax" argmax_param { axis: -1 top_k: 2 out_max_val: true }', [x])
    close(tops[0].data, torch.topk(torch.tensor(x), 2, dim=2)[0].numpy())
    _, _, tops = run_layer('type: "ArgMax"', [np.array([[1, 3, 3, 0]], np.float32)])
    assert tops[0].data.reshape(-1).tolist() == [2.0]  # ties: the higher index, as Caffe's sort
    with pytest.raises(NetDefinitionError, match="top_k"):
        run_layer('type: "ArgMax" argmax_param { top_k: 5 axis: 1 }', [x])


@covers("Softmax", "reference")
@pytest.mark.parametrize("axis", [1, 2, -1])
def test_softmax_matches_torch(axis):
    x = rand(2, 3, 4, low=-20, high=20)
    layer, bottoms, tops = run_layer(f'type: "Softmax" softmax_param {{ axis: {axis} }}', [x])
    tx = t(x)
    ty = F.softmax(tx, dim=axis)
    close(tops[0].data, ty)
    dy = rand(2, 3, 4, seed=5)
    ty.backward(t(dy, False))
    backward(layer, bottoms, tops, [dy])
    close(bottoms[0].diff, tx.grad, atol=1e-6)


def test_softmax_is_stable_for_large_inputs():
    _, _, tops = run_layer('type: "Softmax"', [np.array([[1000.0, 1000.0, -1000.0]], np.float32)])
    close(tops[0].data, [[0.5, 0.5, 0.0]])


@covers("BatchNorm", "reference")
def test_batchnorm_train_matches_torch_and_caffe_running_stats():
    x = rand(4, 3, 2, 2, low=-2, high=3)
    layer, bottoms, tops = run_layer('type: "BatchNorm"', [x], phase="TRAIN")
    tx = t(x)
    running_mean, running_var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    ty = F.batch_norm(tx, running_mean, running_var, training=True, momentum=0.1, eps=1e-5)
    close(tops[0].data, ty, rtol=1e-4, atol=1e-5)
    dy = rand(4, 3, 2, 2, seed=3)
    ty.backward(t(dy, False))
    backward(layer, bottoms, tops, [dy])
    close(bottoms[0].diff, tx.grad, rtol=1e-4, atol=1e-5)
    # Caffe's running sums after one and two steps (moving_average_fraction f = 0.999).
    f, m = 0.999, 16
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    close(layer.blobs[2].data, [1.0])
    close(layer.blobs[0].data, mean, rtol=1e-5)
    close(layer.blobs[1].data, var * m / (m - 1), rtol=1e-5)
    # torch's unbiased running variance uses the same m/(m-1) correction.
    close(layer.blobs[1].data, (running_var - 0.9) / 0.1, rtol=1e-4)
    layer.forward(bottoms, tops)
    close(layer.blobs[2].data, [f + 1])
    close(layer.blobs[0].data, f * mean + mean, rtol=1e-5)
    # A TEST layer with these blobs normalises with mean/s and var/s.
    test_layer, test_bottoms, test_tops = run_layer('type: "BatchNorm"', [x], phase="TEST")
    for mine, trained in zip(test_layer.blobs, layer.blobs):
        mine.data[...] = trained.data
    test_layer.forward(test_bottoms, test_tops)
    ty = F.batch_norm(t(x, False), t(mean, False), t(var * m / (m - 1), False), training=False, eps=1e-5)
    close(test_tops[0].data, ty, rtol=1e-4, atol=1e-5)


def test_batchnorm_zero_scale_factor_means_zero_stats():
    x = rand(2, 3, 2)
    layer, _, tops = run_layer('type: "BatchNorm"', [x], phase="TEST")
    close(tops[0].data, x / np.sqrt(1e-5), rtol=1e-5)  # s == 0: mean 0 and variance 0 (as Caffe)
    assert layer.use_global_stats
    layer, _, _ = run_layer('type: "BatchNorm" batch_norm_param { use_global_stats: false }', [x], phase="TEST")
    assert not layer.use_global_stats


@covers("MVN", "reference")
def test_mvn_matches_closed_form():
    x = rand(2, 3, 4, 5, low=-2, high=2)
    for body, axes in (("", (2, 3)), ("mvn_param { across_channels: true }", (1, 2, 3))):
        layer, bottoms, tops = run_layer(f'type: "MVN" {body}', [x])
        tx = t(x)
        centred = tx - tx.mean(dim=axes, keepdim=True)
        ty = centred / (centred.pow(2).mean(dim=axes, keepdim=True).sqrt() + 1e-9)
        close(tops[0].data, ty, atol=1e-5)
        dy = rand(*x.shape, seed=2)
        ty.backward(t(dy, False))
        backward(layer, bottoms, tops, [dy])
        close(bottoms[0].diff, tx.grad, atol=1e-5)
    _, _, tops = run_layer('type: "MVN" mvn_param { normalize_variance: false }', [x])
    close(tops[0].data, x - x.mean(axis=(2, 3), keepdims=True), atol=1e-6)


@covers("Scale", "reference")
@covers("Bias", "reference")
def test_scale_and_bias_match_closed_forms():
    x, s, b = rand(2, 3, 4), rand(3, 4, seed=1), rand(3, 4, seed=2)
    layer, bottoms, tops = run_layer('type: "Scale" scale_param { num_axes: -1 bias_term: true }', [x])
    assert [blob.shape for blob in layer.blobs] == [(3, 4), (3, 4)]
    close(layer.blobs[0].data, np.ones((3, 4)))  # default filler: constant 1
    close(layer.blobs[1].data, np.zeros((3, 4)))
    layer.blobs[0].data[...] = s
    layer.blobs[1].data[...] = b
    layer.forward(bottoms, tops)
    close(tops[0].data, x * s + b)
    _, _, tops = run_layer('type: "Scale" scale_param { axis: 1 }', [x, rand(3, seed=3)])
    close(tops[0].data, x * rand(3, seed=3)[None, :, None])
    _, _, tops = run_layer('type: "Bias" bias_param { axis: 0 num_axes: 2 }', [x, rand(2, 3, seed=3)])
    close(tops[0].data, x + rand(2, 3, seed=3)[:, :, None])
    with pytest.raises(NetDefinitionError, match="does not match"):
        run_layer('type: "Scale"', [x, rand(4, seed=3)])


@covers("Dropout", "reference")
def test_dropout_statistics_and_test_phase():
    x = np.ones((200, 50), np.float32)
    layer, bottoms, tops = run_layer('type: "Dropout" dropout_param { dropout_ratio: 0.25 }', [x])
    y = tops[0].data
    assert set(np.unique(y).tolist()) <= {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.02
    dy = rand(200, 50, seed=1)
    backward(layer, bottoms, tops, [dy])
    close(bottoms[0].diff, dy * y)  # same mask and scale
    _, _, tops = run_layer('type: "Dropout"', [rand(3, 4)], phase="TEST")
    close(tops[0].data, rand(3, 4))


@covers("Silence", "reference", "gradient")  # its gradient is zero: checked in closed form
def test_silence_zeroes_diffs():
    layer, bottoms, tops = run_layer('type: "Silence"', [rand(2, 3), rand(4)], num_tops=0)
    for b in bottoms:
        b.diff[...] = 5.0
    layer.backward(tops, [True, False], bottoms)
    assert not bottoms[0].diff.any() and (bottoms[1].diff == 5.0).all()


@covers("Filter", "reference")
def test_filter_selects_items():
    x, y, sel = rand(4, 3), rand(4, 2), np.array([[0], [1], [0], [1]], np.float32)
    layer, bottoms, tops = run_layer('type: "Filter" top: "a" top: "b"', [x, y, sel])
    close(tops[0].data, x[[1, 3]])
    close(tops[1].data, y[[1, 3]])
    assert not layer.allow_backward_to(2)
    dy = rand(2, 3, seed=1)
    backward(layer, bottoms, tops, [dy, rand(2, 2)], [True, False, False])
    expected = np.zeros_like(x)
    expected[[1, 3]] = dy
    close(bottoms[0].diff, expected)


@covers("BatchReindex", "reference")
def test_batch_reindex_matches_index_select():
    x, idx = rand(3, 2), np.array([2, 2, 0], np.float32)
    layer, bottoms, tops = run_layer('type: "BatchReindex"', [x, idx])
    tx = t(x)
    ty = tx.index_select(0, torch.tensor([2, 2, 0]))
    close(tops[0].data, ty)
    dy = rand(3, 2, seed=1)
    ty.backward(t(dy, False))
    backward(layer, bottoms, tops, [dy])
    close(bottoms[0].diff, tx.grad)


@covers("Parameter", "reference")
def test_parameter_exposes_its_blob():
    layer, bottoms, tops = run_layer('type: "Parameter" parameter_param { shape { dim: 2 dim: 2 } }', [])
    assert tops[0].shape == (2, 2) and not tops[0].data.any()
    layer.blobs[0].data[...] = [[1, 2], [3, 4]]
    layer.forward(bottoms, tops)
    close(tops[0].data, [[1, 2], [3, 4]])


# ---- in place ----------------------------------------------------------------------------

def run_in_place(text, x, extra=(), phase="TRAIN", seed=1701):
    """Set up a layer whose top is its bottom blob; returns (layer, blob, other bottoms)."""
    from dlsoft import random as dl_random
    dl_random.set_seed(seed)
    layer = make_layer(text, phase=phase)
    blob = Blob(x.shape, CPU, name="x")
    blob.data[...] = x
    others = []
    for array in extra:
        other = Blob(array.shape, CPU)
        other.data[...] = array
        others.append(other)
    layer.setup([blob] + others, [blob])
    layer.reshape([blob] + others, [blob])
    dl_random.set_seed(seed)
    layer.forward([blob] + others, [blob])
    return layer, blob, others


IN_PLACE_CASES = [
    ('type: "BatchNorm"', "TRAIN", ()),
    ('type: "BatchNorm"', "TEST", ()),
    ('type: "Scale" scale_param { bias_term: true filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
     "TRAIN", ()),
    ('type: "Scale"', "TRAIN", (rand(3, seed=9),)),
    ('type: "Bias" bias_param { filler { type: "gaussian" } }', "TRAIN", ()),
    ('type: "Dropout" dropout_param { dropout_ratio: 0.4 }', "TRAIN", ()),
    ('type: "Dropout"', "TEST", ()),
    ('type: "MVN"', "TRAIN", ()),
    ('type: "Softmax"', "TRAIN", ()),
]


IN_PLACE_IDS = [c[0].split()[1].strip('"') + f"-{c[1]}-{i}" for i, c in enumerate(IN_PLACE_CASES)]


@pytest.mark.parametrize("text,phase,extra", IN_PLACE_CASES, ids=IN_PLACE_IDS)
def test_in_place_matches_out_of_place(text, phase, extra):
    x, dy = rand(4, 3, 2, 2), rand(4, 3, 2, 2, seed=11)
    layer, bottoms, tops = run_layer(text, [x, *extra], phase=phase)
    if text.startswith('type: "BatchNorm"') and phase == "TEST":
        for blob, values in zip(layer.blobs, ([0.1, 0.2, 0.3], [1.0, 2.0, 0.5], [2.0])):
            blob.data[...] = values
        layer.forward(bottoms, tops)
    expected_y = tops[0].data.copy()
    propagate = [True] + [True] * len(extra)
    backward(layer, bottoms, tops, [dy], propagate)
    in_layer, blob, others = run_in_place(text, x, extra, phase)
    for mine, theirs in zip(in_layer.blobs, layer.blobs):
        if text.startswith('type: "BatchNorm"'):
            mine.data[...] = theirs.data  # running sums advanced once in both (TRAIN) / set above (TEST)
    if text.startswith('type: "BatchNorm"') and phase == "TEST":
        blob.data[...] = x
        in_layer.forward([blob], [blob])
    close(blob.data, expected_y)
    blob.diff[...] = dy
    for b in in_layer.blobs:
        b.diff[...] = 0
    in_layer.backward([blob], propagate, [blob] + others)
    close(blob.diff, bottoms[0].diff, atol=1e-5)
    for mine, theirs in zip(in_layer.blobs, layer.blobs):
        close(mine.diff, theirs.diff, atol=1e-5)
    for mine, theirs in zip(others, bottoms[1:]):
        close(mine.diff, theirs.diff, atol=1e-5)


def test_unknown_axis_is_a_one_line_error():
    with pytest.raises(NetDefinitionError, match=r"layer 'concat' \(type Concat\): axis 5 out of range"):
        run_layer('type: "Concat" concat_param { axis: 5 }', [rand(2, 3), rand(2, 3)])


def test_layer_param_names():
    assert layer_param('type: "Softmax"').name == "softmax"


# ---- GPU ---------------------------------------------------------------------------------

def test_batchnorm_masks_its_statistics_from_the_solver():
    layer, _, _ = run_layer('type: "BatchNorm"', [rand(2, 3)])
    assert [spec.lr_mult for spec in layer.param.param] == [0.0, 0.0, 0.0]
    layer, _, _ = run_layer('type: "BatchNorm" param { lr_mult: 0 }', [rand(2, 3)])
    assert [spec.lr_mult for spec in layer.param.param] == [0.0, 0.0, 0.0]
    with pytest.raises(NetDefinitionError, match="lr_mult 1"):
        run_layer('type: "BatchNorm" param { lr_mult: 1 }', [rand(2, 3)])


@covers("Dropout", "gpu")
@pytest.mark.gpu
def test_gpu_dropout_mask_statistics():
    x = rand(200, 50, low=0.5, high=1.5)
    layer, bottoms, tops = run_layer('type: "Dropout" dropout_param { dropout_ratio: 0.25 }', [x], device="gpu")
    y = to_numpy(tops[0].data)
    kept = y != 0
    assert abs(1 - kept.mean() - 0.25) < 0.02
    close(y[kept], x[kept] / 0.75)
    dy = rand(200, 50, seed=1)
    tops[0].diff[...] = tops[0].xp.asarray(dy)
    layer.backward(tops, [True], bottoms)
    close(to_numpy(bottoms[0].diff), np.where(kept, dy / 0.75, 0))


def test_layers_in_a_net_with_split_and_in_place_chain():
    from google.protobuf import text_format

    import dlsoft
    from dlsoft.protos import caffe_pb2
    text = '''
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 dim: 2 dim: 2 } } }
    layer { name: "bn" type: "BatchNorm" bottom: "data" top: "data" }
    layer { name: "sc" type: "Scale" bottom: "data" top: "data" scale_param { bias_term: true } }
    layer { name: "fl" type: "Flatten" bottom: "data" top: "flat" }
    layer { name: "ip1" type: "InnerProduct" bottom: "flat" top: "a"
            inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
    layer { name: "ip2" type: "InnerProduct" bottom: "flat" top: "b"
            inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
    layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" }
    layer { name: "prob" type: "Softmax" bottom: "sum" top: "prob" }
    layer { name: "loss" type: "Reduction" bottom: "prob" top: "loss" reduction_param { operation: SUMSQ }
            loss_weight: 1 }
    '''
    net = dlsoft.Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase="TRAIN")
    assert "Split" in [layer.type for layer in net.layers]
    assert net.params_lr[:3] == [0.0, 0.0, 0.0]  # BatchNorm statistics are masked
    net.blobs["data"].data[...] = rand(4, 3, 2, 2)
    loss = net.forward_backward()
    prob = net.blobs["prob"].data
    assert np.isclose(loss, float((prob ** 2).sum()), rtol=1e-5)
    assert not net.params["bn"][0].diff.any()
    assert net.params["ip1"][0].diff.any()
    # Both branches share the split's input and get the same upstream diff: equal gradients.
    close(net.params["ip1"][0].diff, net.params["ip2"][0].diff)
