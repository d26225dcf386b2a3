"""Vision layers: gradients, PyTorch / closed-form references (forward and backward), shapes, kernels."""
from __future__ import annotations

import numpy as np
import pytest
import gradcheck
from gradcheck import (LayerCase, backward_with, case_tests, check_gradient, compare_devices, covers, normal, run_layer,
                       torch_reference)

from dlsoft.errors import NetDefinitionError
from dlsoft.layers import convolution
from dlsoft.layers.pooling import pooled_size

FILLERS = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'
RTOL, ATOL = 1e-4, 1e-5


def distinct(shape, seed=0):
    """Values 0.05 apart from -1, so a ±0.01 finite-difference step never changes a max."""
    return gradcheck.distinct(shape, seed=seed, low=-1.0)


def conv(num_output=6, extra="", kind="Convolution"):
    return f'type: "{kind}" convolution_param {{ num_output: {num_output} {extra} {FILLERS} }}'


def assert_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


# ---- Convolution / Deconvolution ----------------------------------------------------------------
CONV_CASES = [
    # (prototxt extra, torch kwargs)
    ("kernel_size: 3", dict()),
    ("kernel_size: 3 pad: 1 stride: 2", dict(stride=2, padding=1)),
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0", dict(stride=(2, 1), padding=(1, 0))),
    ("kernel_size: 3 kernel_size: 2 dilation: 2 pad: 1", dict(dilation=2, padding=1)),
    ("kernel_size: 3 group: 2 pad: 1", dict(groups=2, padding=1)),
    ("kernel_size: 1 group: 2 stride: 2 bias_term: false", dict(groups=2, stride=2)),
]


@covers("Convolution", "reference")
@pytest.mark.parametrize("extra, kwargs, batch", [(*case, 2) for case in CONV_CASES] + [  # one image: direct GEMMs
    pytest.param("kernel_size: 1", dict(), 1, id="1x1-batch1"),
    pytest.param("kernel_size: 1 group: 2 bias_term: false", dict(groups=2), 1, id="1x1-group-batch1"),
    pytest.param("kernel_size: 3 pad: 1 group: 2", dict(groups=2, padding=1), 1, id="3x3-group-batch1")])
def test_convolution_matches_torch(extra, kwargs, batch):
    torch = pytest.importorskip("torch")
    x = normal((batch, 4, 7, 6))
    layer, bottoms, tops = run_layer(conv(6, extra), [x])
    params = [b.data.copy() for b in layer.blobs]
    bias = len(params) > 1
    fn = lambda a, w, *b: torch.nn.functional.conv2d(a, w, b[0] if bias else None, **kwargs)
    expected, grads = torch_reference(fn, x, *params)
    assert_close(tops[0].data, expected)
    dy = backward_with(layer, bottoms, tops)[0]
    dx, *dparams = grads(dy)
    assert_close(bottoms[0].diff, dx)
    for blob, d in zip(layer.blobs, dparams):
        assert_close(blob.diff, d)


@covers("Convolution", "gradient")
@pytest.mark.parametrize("extra", [case[0] for case in CONV_CASES])
def test_convolution_gradient(extra):
    check_gradient(conv(4, extra), [normal((2, 4, 6, 5))])


def test_convolution_weight_shape_and_accumulation():
    layer, bottoms, tops = run_layer(conv(6, "kernel_h: 3 kernel_w: 2 group: 2"), [normal((1, 4, 5, 5))])
    assert layer.blobs[0].shape == (6, 2, 3, 2) and layer.blobs[1].shape == (6,)
    tops[0].diff[...] = 1
    layer.blobs[0].diff[...] = 0
    layer.blobs[1].diff[...] = 0
    layer.backward(tops, [True], bottoms)
    once = layer.blobs[0].diff.copy()
    layer.backward(tops, [True], bottoms)
    assert_close(layer.blobs[0].diff, 2 * once)  # parameter diffs accumulate
    assert_close(layer.blobs[1].diff, np.full(6, 2 * 3 * 4))  # 3x4 outputs, twice


@pytest.mark.parametrize("shape, text, per_image", [
    ((5, 4, 6, 6), conv(6, "kernel_size: 3 pad: 1 group: 2"), 4 * 9 * 36),
    ((5, 4, 5, 5), conv(6, "kernel_size: 4 stride: 2 pad: 1 group: 2", "Deconvolution"), 6 * 16 * 25),
], ids=["Convolution", "Deconvolution"])
def test_convolution_in_chunks_matches_one_chunk(monkeypatch, shape, text, per_image):
    """Chunks of 2, 2 and 1 images, split across threads (dlsoft.threads.split_work), give
    one chunk's numbers: the data gradient exactly, the parameter gradients to rounding.
    Fresh layers, several times: the first backward is where a blob's diff is allocated,
    which the worker threads once raced to (half of the runs lost a chunk's gradient)."""
    x = normal(shape)
    whole, wb, wt = run_layer(text, [x])
    dy = backward_with(whole, wb, wt)
    monkeypatch.setattr(convolution, "MAX_COL_ELEMENTS", per_image * 2)  # two images a chunk
    for _ in range(8):
        parts, pb, pt = run_layer(text, [x])
        assert parts.chunk == 2
        assert_close(pt[0].data, wt[0].data)
        assert backward_with(parts, pb, pt)[0].tolist() == dy[0].tolist()
        assert_close(pb[0].diff, wb[0].diff)
        for a, b in zip(parts.blobs, whole.blobs):
            assert_close(a.diff, b.diff)


def test_convolution_rejects_other_ranks():
    with pytest.raises(NetDefinitionError, match="2 spatial axes"):
        run_layer(conv(2, "kernel_size: 1"), [normal((2, 3, 4, 4, 4))])
    with pytest.raises(NetDefinitionError, match="group"):
        run_layer(conv(3, "kernel_size: 1 group: 2"), [normal((1, 4, 3, 3))])


DECONV_CASES = [
    ("kernel_size: 3", dict()),
    ("kernel_size: 4 stride: 2 pad: 1", dict(stride=2, padding=1)),
    ("kernel_size: 3 stride: 2 group: 2 dilation: 2", dict(stride=2, groups=2, dilation=2)),
]


@covers("Deconvolution", "reference")
@pytest.mark.parametrize("extra, kwargs", DECONV_CASES)
def test_deconvolution_matches_torch(extra, kwargs):
    torch = pytest.importorskip("torch")
    x = normal((2, 4, 4, 5))
    layer, bottoms, tops = run_layer(conv(6, extra, "Deconvolution"), [x])
    assert layer.blobs[0].shape[:2] == (4, 6 // kwargs.get("groups", 1))
    params = [b.data.copy() for b in layer.blobs]
    fn = lambda a, w, b: torch.nn.functional.conv_transpose2d(a, w, b, **kwargs)
    expected, grads = torch_reference(fn, x, *params)
    assert tops[0].shape == expected.shape
    assert_close(tops[0].data, expected)
    dx, *dparams = grads(backward_with(layer, bottoms, tops)[0])
    assert_close(bottoms[0].diff, dx)
    for blob, d in zip(layer.blobs, dparams):
        assert_close(blob.diff, d)


@covers("Deconvolution", "gradient")
@pytest.mark.parametrize("extra", [case[0] for case in DECONV_CASES])
def test_deconvolution_gradient(extra):
    check_gradient(conv(4, extra, "Deconvolution"), [normal((2, 4, 3, 4))])


# ---- Pooling -----------------------------------------------------------------------------------
def pool(method, extra):
    return f'type: "Pooling" pooling_param {{ pool: {method} {extra} }}'


def test_pooled_size_ceil_mode_and_pad_correction():
    assert pooled_size(55, 3, 0, 2) == 27  # AlexNet pool1
    assert pooled_size(13, 3, 0, 2) == 6  # AlexNet pool5
    assert pooled_size(112, 3, 0, 2) == 56  # GoogLeNet pool1/3x3_s2 (ceil)
    assert pooled_size(28, 3, 1, 1) == 28  # GoogLeNet inception pool 3x3 s1 p1
    assert pooled_size(14, 3, 1, 2) == 8  # ceil((14+2-3)/2)+1 = 8, last start 14 < 15 kept
    assert pooled_size(6, 2, 1, 4) == 2  # ceil gives 3, but the 3rd window would start in the padding
    assert pooled_size(6, 2, 1, 4, ceil_mode=False) == 2
    assert pooled_size(7, 2, 0, 2, ceil_mode=False) == 3
    layer, _, tops = run_layer(pool("MAX", "kernel_size: 3 stride: 2"), [normal((1, 2, 55, 55))])
    assert tops[0].shape == (1, 2, 27, 27)


POOL_CASES = [
    "kernel_size: 2 stride: 2",
    "kernel_size: 3 stride: 2",  # ceil rounding: windows overhang the input
    "kernel_size: 3 stride: 2 pad: 1",
    "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 1",
    "kernel_size: 2 stride: 4 pad: 1",  # the pad-correction case
]


@covers("Pooling", "reference")
@pytest.mark.parametrize("extra", POOL_CASES)
@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling_matches_torch(method, extra):
    torch = pytest.importorskip("torch")
    x = distinct((2, 3, 7, 6))
    layer, bottoms, tops = run_layer(pool(method, extra), [x])
    k, s, p = layer.kernel, layer.stride, layer.pad
    if method == "MAX":
        fn = lambda a: torch.nn.functional.max_pool2d(a, k, s, p, ceil_mode=True)
    else:  # torch's count_include_pad divisor is Caffe's: the window clipped to the padded input
        fn = lambda a: torch.nn.functional.avg_pool2d(a, k, s, p, ceil_mode=True, count_include_pad=True)
    expected, grads = torch_reference(fn, x)
    assert tops[0].shape == expected.shape
    assert_close(tops[0].data, expected)
    assert_close(bottoms[0].diff, grads(backward_with(layer, bottoms, tops)[0])[0])


# Windows inside the input (read in place), disjoint (written back directly), covering or not.
EXACT_POOL_CASES = [("kernel_size: 2 stride: 2", (2, 3, 8, 6)), ("kernel_size: 3 stride: 3", (2, 2, 6, 9)),
                    ("kernel_size: 2 stride: 3", (2, 2, 8, 8)), ("kernel_size: 3 stride: 1", (1, 2, 5, 6))]


@pytest.mark.parametrize("extra,shape", EXACT_POOL_CASES)
@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling_inside_the_input_matches_torch(method, extra, shape):
    torch = pytest.importorskip("torch")
    x = distinct(shape)
    layer, bottoms, tops = run_layer(pool(method, extra), [x])
    assert method == "MAX" or layer._direct  # MAX runs compiled loops, AVE reads in place
    k, s = layer.kernel, layer.stride
    if method == "MAX":
        fn = lambda a: torch.nn.functional.max_pool2d(a, k, s, ceil_mode=True)
    else:
        fn = lambda a: torch.nn.functional.avg_pool2d(a, k, s, ceil_mode=True)
    expected, grads = torch_reference(fn, x)
    assert_close(tops[0].data, expected)
    bottoms[0].diff[...] = np.nan  # stale values must be overwritten, not accumulated
    top_diffs = backward_with(layer, bottoms, tops)
    assert_close(bottoms[0].diff, grads(top_diffs[0])[0])
    check_gradient(pool(method, extra), [x], top_indices=[0])


def test_max_pooling_mask_top_is_the_torch_argmax():
    torch = pytest.importorskip("torch")
    x = distinct((2, 3, 7, 6), seed=4)
    _, _, tops = run_layer(pool("MAX", "kernel_size: 3 stride: 2 pad: 1"), [x], num_tops=2)
    _, indices = torch.nn.functional.max_pool2d(torch.tensor(x), 3, 2, 1, ceil_mode=True, return_indices=True)
    np.testing.assert_array_equal(tops[1].data, indices.numpy().astype(np.float32))


def test_max_pooling_ties_go_to_the_first_in_window_order():
    x = np.zeros((1, 1, 2, 2), np.float32)
    layer, bottoms, tops = run_layer(pool("MAX", "kernel_size: 2"), [x], num_tops=2)
    assert tops[1].data.ravel().tolist() == [0.0]
    tops[0].diff[...] = 1
    layer.backward(tops, [True], bottoms)
    assert bottoms[0].diff.ravel().tolist() == [1, 0, 0, 0]


def ave_pool_closed_form(x, k, s, p):
    """Caffe's AVE pooling written out with loops: divisor = window clipped to the padded input."""
    n, c, h, w = x.shape
    oh, ow = pooled_size(h, k, p, s), pooled_size(w, k, p, s)
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            ys, xs = i * s - p, j * s - p
            ye, xe = min(ys + k, h + p), min(xs + k, w + p)
            size = (ye - ys) * (xe - xs)
            window = x[:, :, max(ys, 0):min(ye, h), max(xs, 0):min(xe, w)]
            y[:, :, i, j] = window.sum(axis=(2, 3)) / size
    return y


def test_ave_pooling_closed_form_divisor():
    x = normal((1, 2, 5, 5))
    _, _, tops = run_layer(pool("AVE", "kernel_size: 3 stride: 2 pad: 1"), [x])
    assert_close(tops[0].data, ave_pool_closed_form(x, 3, 2, 1))
    # The corner window covers 4 valid pixels but is divided by 9 (padding included).
    assert_close(tops[0].data[0, 0, 0, 0], x[0, 0, :2, :2].sum() / 9)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_global_pooling(method):
    x = distinct((2, 3, 5, 4))
    _, _, tops = run_layer(pool(method, "global_pooling: true"), [x])
    assert tops[0].shape == (2, 3, 1, 1)
    expected = x.max(axis=(2, 3)) if method == "MAX" else x.mean(axis=(2, 3))
    assert_close(tops[0].data[:, :, 0, 0], expected)
    check_gradient(pool(method, "global_pooling: true"), [x])


@covers("Pooling", "gradient")
@pytest.mark.parametrize("extra", POOL_CASES)
@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling_gradient(method, extra):
    check_gradient(pool(method, extra), [distinct((2, 2, 7, 6))], top_indices=[0])


def test_pooling_rejects_unsupported_settings():
    with pytest.raises(NetDefinitionError, match="only MAX"):  # STOCHASTIC: tests/test_layers_spp.py
        run_layer('type: "Pooling" top: "p" top: "m" pooling_param { pool: STOCHASTIC kernel_size: 2 }',
                  [normal((1, 1, 4, 4))])
    with pytest.raises(NetDefinitionError, match="pad"):
        run_layer(pool("MAX", "kernel_size: 2 pad: 2"), [normal((1, 1, 4, 4))])
    with pytest.raises(NetDefinitionError, match="4-d"):
        run_layer(pool("MAX", "kernel_size: 2"), [normal((1, 4, 4))])


# ---- LRN ---------------------------------------------------------------------------------------
def lrn(extra):
    return f'type: "LRN" lrn_param {{ {extra} }}'


@covers("LRN", "reference")
def test_lrn_across_channels_matches_torch():
    torch = pytest.importorskip("torch")
    x = normal((2, 7, 3, 4))
    layer, bottoms, tops = run_layer(lrn("local_size: 5 alpha: 0.3 beta: 0.75 k: 2"), [x])
    fn = lambda a: torch.nn.functional.local_response_norm(a, 5, alpha=0.3, beta=0.75, k=2.0)
    expected, grads = torch_reference(fn, x)
    assert_close(tops[0].data, expected)
    assert_close(bottoms[0].diff, grads(backward_with(layer, bottoms, tops)[0])[0])


def lrn_within_closed_form(x, size, alpha, beta):
    half = (size - 1) // 2
    h, w = x.shape[2:]
    padded = np.pad(x.astype(np.float64) ** 2, ((0, 0), (0, 0), (half, half), (half, half)))
    box = sum(padded[:, :, i:i + h, j:j + w] for i in range(size) for j in range(size))
    return x * (1 + alpha / size ** 2 * box) ** -beta


def test_lrn_within_channel_closed_form_and_torch_backward():
    torch = pytest.importorskip("torch")
    x = normal((2, 3, 5, 4))
    layer, bottoms, tops = run_layer(lrn("local_size: 3 alpha: 2 beta: 0.75 k: 7 norm_region: WITHIN_CHANNEL"), [x])
    assert_close(tops[0].data, lrn_within_closed_form(x, 3, 2.0, 0.75))

    def fn(a):  # the same closed form, differentiated by torch
        sq = torch.nn.functional.pad(a * a, (1, 1, 1, 1))
        box = sum(sq[:, :, i:i + 5, j:j + 4] for i in range(3) for j in range(3))
        return a * (1 + 2.0 / 9 * box) ** -0.75

    _, grads = torch_reference(fn, x)
    assert_close(grads(backward_with(layer, bottoms, tops)[0])[0], bottoms[0].diff)


@covers("LRN", "gradient")
@pytest.mark.parametrize("extra", [
    "local_size: 3 alpha: 1 beta: 0.75",
    "local_size: 5 alpha: 0.5 beta: 0.6 k: 2",
    "local_size: 3 alpha: 1.5 beta: 0.75 norm_region: WITHIN_CHANNEL",
    "local_size: 5 alpha: 3 beta: 0.5 norm_region: WITHIN_CHANNEL",
])
def test_lrn_gradient(extra):
    check_gradient(lrn(extra), [normal((2, 7, 4, 5))])


def test_lrn_rejects_even_size():
    with pytest.raises(NetDefinitionError, match="odd"):
        run_layer(lrn("local_size: 4"), [normal((1, 4, 3, 3))])


# ---- Crop, Im2col -------------------------------------------------------------------------------
@covers("Crop", "reference", "gradient")
def test_crop_reference_and_gradient():
    x, like = normal((2, 3, 7, 6)), np.zeros((1, 1, 4, 3), np.float32)
    _, _, tops = run_layer('type: "Crop" crop_param { offset: 2 offset: 1 }', [x, like])
    np.testing.assert_array_equal(tops[0].data, x[:, :, 2:6, 1:4])
    _, _, tops = run_layer('type: "Crop" crop_param { axis: 1 offset: 1 }', [x, np.zeros((2, 2, 3, 3), np.float32)])
    np.testing.assert_array_equal(tops[0].data, x[:, 1:3, 1:4, 1:4])
    check_gradient('type: "Crop" crop_param { offset: 1 }', [x, like], check_bottoms=[0])
    with pytest.raises(NetDefinitionError, match="exceeds"):
        run_layer('type: "Crop" crop_param { offset: 4 }', [x, like])


@covers("Im2col", "reference")
def test_im2col_matches_torch_unfold():
    torch = pytest.importorskip("torch")
    x = normal((2, 3, 7, 6))
    layer, bottoms, tops = run_layer('type: "Im2col" convolution_param { kernel_size: 3 kernel_size: 2 '
                                     'pad: 1 stride: 2 dilation: 2 }', [x])
    fn = lambda a: torch.nn.functional.unfold(a, (3, 2), dilation=2, padding=1, stride=2)
    expected, grads = torch_reference(fn, x)
    assert tops[0].shape == (2, 18, 3, 3)
    assert_close(tops[0].data.reshape(2, 18, -1), expected)
    dy = backward_with(layer, bottoms, tops)[0]
    assert_close(bottoms[0].diff, grads(dy.reshape(2, 18, -1))[0])


@covers("Im2col", "gradient")
def test_im2col_gradient():
    check_gradient('type: "Im2col" convolution_param { kernel_size: 3 pad: 1 stride: 2 }', [normal((2, 2, 5, 4))])


# ---- GPU ----------------------------------------------------------------------------------------
def test_cuda_sources_compile_with_nvrtc():
    pytest.importorskip("cupy")
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc")
    from dlsoft.layers.kernels import SOURCES
    vision = [name for name in SOURCES if not name.startswith("dl_softmax")]
    assert len(vision) == 10
    for name in vision:
        source = SOURCES[name]
        assert f"void {name}(" in source
        program = nvrtc.createProgram(source, f"{name}.cu", [], [])
        try:
            nvrtc.compileProgram(program, ["-arch=compute_90"])
        except nvrtc.NVRTCError:
            raise AssertionError(f"{name}: {nvrtc.getProgramLog(program)}") from None


GPU_CASES = (
    [(conv(6, extra), normal((3, 4, 7, 6)), 1) for extra, _ in CONV_CASES]
    + [(conv(6, extra, "Deconvolution"), normal((2, 4, 4, 5)), 1) for extra, _ in DECONV_CASES]
    + [(pool(m, extra), distinct((2, 3, 7, 6)), 1) for m in ("MAX", "AVE") for extra in POOL_CASES]
    + [(pool("MAX", "kernel_size: 3 stride: 2 pad: 1"), distinct((2, 3, 7, 6)), 2),
       (pool("AVE", "global_pooling: true"), normal((2, 3, 5, 4)), 1),
       (lrn("local_size: 5 alpha: 0.5 beta: 0.75 k: 2"), normal((2, 7, 3, 4)), 1),
       (lrn("local_size: 3 alpha: 2 beta: 0.75 norm_region: WITHIN_CHANNEL"), normal((2, 3, 5, 4)), 1),
       ('type: "Im2col" convolution_param { kernel_size: 3 pad: 1 stride: 2 dilation: 2 }', normal((2, 3, 7, 6)), 1)]
)


# The GPU against the CPU, case by case.
CASES = [LayerCase(text, [x], gpu=True, num_tops=num_tops) for text, x, num_tops in GPU_CASES]
globals().update(case_tests(CASES))


@covers("Crop", "gpu")
@pytest.mark.gpu
def test_gpu_crop_matches_cpu():
    compare_devices('type: "Crop" crop_param { offset: 1 }', [normal((2, 3, 7, 6)), np.zeros((1, 1, 4, 3), np.float32)])


def test_max_pooling_at_test_skips_the_index_and_backward_finds_it_again():
    x = distinct((2, 3, 9, 8), seed=5)
    text = pool("MAX", "kernel_size: 3 stride: 2 pad: 1")
    train, train_bottoms, train_tops = run_layer(text, [x], phase="TRAIN")
    test, test_bottoms, test_tops = run_layer(text, [x], phase="TEST")
    np.testing.assert_array_equal(test_tops[0].data, train_tops[0].data)
    assert train._mask_fresh and not test._mask_fresh
    dy = np.random.default_rng(6).standard_normal(train_tops[0].shape).astype(np.float32)
    for layer, bottoms, tops in ((train, train_bottoms, train_tops), (test, test_bottoms, test_tops)):
        tops[0].diff[...] = dy
        layer.backward(tops, [True], bottoms)
    np.testing.assert_array_equal(test_bottoms[0].diff, train_bottoms[0].diff)
