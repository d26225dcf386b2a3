"""Every CUDA kernel source runs on the CPU (marker ``kernels``; needs g++, no GPU).

Each case runs one layer twice, on the CPU (numpy) and on ``gpu:0`` with
``kernel_emulation.fakecupy`` as cupy: the layer's own GPU methods make their own
launches, so the arguments and the grid are exactly what a device would get, and the
kernels (compiled as C++ under ``kernel_emulation/cuda_emulation.h``) compute the result,
which must equal the numpy path's. The shapes are the awkward ones: ceil-mode pooling
windows that start in the padding, pads, groups, dilation, rectangular kernels and
strides, ignore_label, both LRN modes, softmax axes. Each case names the kernels it must
launch; ``test_every_kernel_source_has_a_case`` fails for a source no case launches.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from gradcheck import compare_devices, layer_param, run_layer

pytest.importorskip("cupy")  # for its API lists only
from kernel_emulation import EmulatedKernel, KernelArgumentError, fakecupy  # noqa: E402

pytestmark = [pytest.mark.kernels,
              pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ to compile the kernels as C++")]


def normal(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def distinct(shape, seed=0):
    """Values 0.05 apart: max pooling's argmax is unambiguous."""
    n = int(np.prod(shape))
    return (np.random.default_rng(seed).permutation(n).reshape(shape) * 0.05 - n * 0.025).astype(np.float32)


def conv(extra, filler='weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" }'):
    return f'type: "Convolution" convolution_param {{ {extra} {filler} }}'


def deconv(extra):
    return (f'type: "Deconvolution" convolution_param {{ {extra} weight_filler {{ type: "gaussian" std: 0.3 }} '
            'bias_filler { type: "gaussian" } }')


def pool(extra, tops=""):
    return f'type: "Pooling" {tops} pooling_param {{ {extra} }}'


LABELS = np.array([[0, 2, 1], [3, 1, 0]], np.float32)  # (2, 3) positions for scores (2, 4, 3)
IGNORED = np.array([[0, -1, 1], [3, -1, 0]], np.float32)

#: (id, layer text, bottoms, options, the kernels the layer's GPU methods must launch)
CASES = [
    ("conv-pad-stride", conv("num_output: 4 kernel_size: 3 pad: 1 stride: 2"), [normal((2, 3, 7, 6))], {},
     {"dl_im2col", "dl_col2im"}),
    ("conv-groups-dilation", conv("num_output: 6 kernel_size: 3 pad: 2 dilation: 2 group: 3"),
     [normal((2, 3, 6, 7))], {}, {"dl_im2col", "dl_col2im"}),
    ("conv-rect", conv("num_output: 2 kernel_h: 2 kernel_w: 3 pad_h: 1 pad_w: 0 stride_h: 1 stride_w: 2"),
     [normal((1, 2, 5, 8))], {}, {"dl_im2col", "dl_col2im"}),
    ("conv-1x1", conv("num_output: 3 kernel_size: 1"), [normal((3, 4, 2, 3))], {}, {"dl_im2col", "dl_col2im"}),
    ("deconv", deconv("num_output: 4 kernel_size: 4 stride: 2 pad: 1 group: 2"), [normal((2, 2, 3, 4))], {},
     {"dl_im2col", "dl_col2im"}),
    ("im2col-layer", 'type: "Im2col" convolution_param { kernel_size: 3 pad: 1 stride: 2 dilation: 2 }',
     [normal((2, 3, 7, 6))], {}, {"dl_im2col", "dl_col2im"}),
    ("maxpool-ceil-pad", pool("pool: MAX kernel_size: 3 stride: 2 pad: 1"), [distinct((2, 3, 7, 7))], {},
     {"dl_max_pool_forward", "dl_max_pool_backward"}),
    ("maxpool-ceil-overhang", pool("pool: MAX kernel_size: 3 stride: 2"), [distinct((1, 2, 6, 8))], {},
     {"dl_max_pool_forward", "dl_max_pool_backward"}),
    ("maxpool-mask-top", pool("pool: MAX kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 1",
                              'top: "y" top: "mask"'), [distinct((2, 2, 5, 6))], {"num_tops": 2},
     {"dl_max_pool_forward", "dl_max_pool_backward"}),
    ("maxpool-floor", pool("pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR"), [distinct((1, 2, 6, 8))], {},
     {"dl_max_pool_forward", "dl_max_pool_backward"}),
    ("avepool-floor-pad", pool("pool: AVE kernel_size: 2 stride: 2 pad: 1 round_mode: FLOOR"), [normal((1, 2, 5, 7))],
     {}, {"dl_ave_pool_forward", "dl_ave_pool_backward"}),
    ("maxpool-global", pool("pool: MAX global_pooling: true"), [distinct((2, 3, 4, 5))], {},
     {"dl_max_pool_forward", "dl_max_pool_backward"}),
    ("avepool-ceil-pad", pool("pool: AVE kernel_size: 3 stride: 2 pad: 1"), [normal((2, 3, 7, 7))], {},
     {"dl_ave_pool_forward", "dl_ave_pool_backward"}),
    ("avepool-overlap-rect", pool("pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 2 pad_h: 2 pad_w: 1"),
     [normal((1, 2, 5, 6))], {}, {"dl_ave_pool_forward", "dl_ave_pool_backward"}),
    ("avepool-global", pool("pool: AVE global_pooling: true"), [normal((2, 3, 3, 5))], {},
     {"dl_ave_pool_forward", "dl_ave_pool_backward"}),
    ("lrn-across", 'type: "LRN" lrn_param { local_size: 5 alpha: 0.5 beta: 0.75 k: 2 }', [normal((2, 7, 3, 4))],
     {}, {"dl_lrn_fill_scale", "dl_lrn_output", "dl_lrn_backward"}),
    ("lrn-across-few-channels", 'type: "LRN" lrn_param { local_size: 7 alpha: 3 beta: 0.6 }', [normal((2, 3, 2, 2))],
     {}, {"dl_lrn_fill_scale", "dl_lrn_output", "dl_lrn_backward"}),
    ("lrn-within", 'type: "LRN" lrn_param { local_size: 3 alpha: 2 beta: 0.75 norm_region: WITHIN_CHANNEL }',
     [normal((2, 3, 5, 4))], {}, {"dl_lrn_window_sum"}),
    ("lrn-within-large-window", 'type: "LRN" lrn_param { local_size: 5 norm_region: WITHIN_CHANNEL }',
     [normal((1, 2, 3, 3))], {}, {"dl_lrn_window_sum"}),
    ("softmax", 'type: "Softmax"', [normal((2, 4, 3))], {}, {"dl_softmax_forward", "dl_softmax_backward"}),
    ("softmax-axis2", 'type: "Softmax" softmax_param { axis: 2 }', [normal((2, 3, 5, 2)) * 4], {},
     {"dl_softmax_forward", "dl_softmax_backward"}),
    ("softmax-axis-last", 'type: "Softmax" softmax_param { axis: -1 }', [normal((3, 6))], {},
     {"dl_softmax_forward", "dl_softmax_backward"}),
    ("softmax-loss", 'type: "SoftmaxWithLoss"', [normal((2, 4, 3)), LABELS], {},
     {"dl_softmax_forward", "dl_softmax_loss_forward", "dl_softmax_loss_backward"}),
    ("softmax-loss-ignore", 'type: "SoftmaxWithLoss" loss_param { ignore_label: -1 }', [normal((2, 4, 3)), IGNORED],
     {}, {"dl_softmax_forward", "dl_softmax_loss_forward", "dl_softmax_loss_backward"}),
    ("softmax-loss-ignore-full", 'type: "SoftmaxWithLoss" loss_param { ignore_label: 3 normalization: FULL }',
     [normal((2, 4, 3)), LABELS], {}, {"dl_softmax_forward", "dl_softmax_loss_forward", "dl_softmax_loss_backward"}),
    ("softmax-loss-axis2-prob-top", ('type: "SoftmaxWithLoss" top: "l" top: "p" softmax_param { axis: 2 } '
                                     'loss_param { normalization: BATCH_SIZE }'),
     [normal((2, 3, 4)), np.array([[0, 3, 1], [2, 2, 0]], np.float32)], {"num_tops": 2},
     {"dl_softmax_forward", "dl_softmax_loss_forward", "dl_softmax_loss_backward"}),
]


@pytest.mark.parametrize("text,bottoms,options,kernels", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_kernels_match_the_numpy_path(text, bottoms, options, kernels):
    with fakecupy.installed():
        start = len(fakecupy.LAUNCHES)
        compare_devices(text, bottoms, **options)
        launched = {name for name, _, _ in fakecupy.LAUNCHES[start:]}
    assert kernels <= launched, f"expected launches of {sorted(kernels - launched)}; launched {sorted(launched)}"


@pytest.mark.parametrize("text,bottoms,options,kernels", [c[1:] for c in CASES[::3]], ids=[c[0] for c in CASES[::3]])
def test_kernels_cover_every_index_with_a_grid_smaller_than_the_work(text, bottoms, options, kernels, monkeypatch):
    """Launches of 2 blocks of 7 threads: every grid-stride loop wraps many times (on a
    device, 65535 blocks of 256 do for blobs over 16M elements) and must still visit each
    index once."""
    from dlsoft.layers import kernels as launcher
    monkeypatch.setattr(launcher, "THREADS", 7)
    monkeypatch.setattr(launcher, "MAX_BLOCKS", 2)
    with fakecupy.installed():
        start = len(fakecupy.LAUNCHES)
        compare_devices(text, bottoms, **options)
        grids = {grid for name, grid, _ in fakecupy.LAUNCHES[start:] if grid is not None}
    assert grids and max(g[0] for g in grids) <= 2


def kernel_sources() -> dict[str, str]:
    """Every RawKernel source, by kernel name: the registry of ``dlsoft.layers.kernels``."""
    from dlsoft.layers import kernels
    return dict(kernels.SOURCES)


def test_every_kernel_source_has_a_case():
    covered = set().union(*(c[4] for c in CASES))
    missing = sorted(set(kernel_sources()) - covered)
    assert not missing, f"kernel sources no CPU-run case launches: {missing}"


@pytest.mark.parametrize("name", sorted(kernel_sources()))
def test_kernel_compiles_as_cpp(name):
    EmulatedKernel(kernel_sources()[name], name)  # raises with g++'s message


def test_grid_stride_loop_visits_every_index_once_with_a_short_grid():
    """Two blocks of 3 threads over 20 elements: each thread strides over the rest."""
    source = kernel_sources()["dl_lrn_output"]
    kernel = EmulatedKernel(source, "dl_lrn_output")
    x, scale = normal((20,)), np.abs(normal((20,), seed=1)) + 1
    y = np.full(20, np.nan, np.float32)
    kernel((2,), (3,), (x, scale, y, np.int64(20), np.float32(-0.75)))
    np.testing.assert_allclose(y, x * scale ** -0.75, rtol=1e-6)


def test_max_pool_kernel_matches_torch_ceil_mode():
    """The kernel alone against an independent reference, with the launch written out."""
    torch = pytest.importorskip("torch")
    kernel = EmulatedKernel(kernel_sources()["dl_max_pool_forward"], "dl_max_pool_forward")
    x = normal((2, 3, 8, 7))
    y, mask = np.zeros((2, 3, 5, 4), np.float32), np.zeros((2, 3, 5, 4), np.float32)
    kernel((1,), (256,), (x, y, mask, np.int64(y.size), *map(np.int32, (8, 7, 5, 4, 3, 3, 2, 2, 1, 1))))
    values, indices = torch.nn.functional.max_pool2d(torch.tensor(x), 3, 2, 1, ceil_mode=True, return_indices=True)
    np.testing.assert_array_equal(y, values.numpy())
    np.testing.assert_array_equal(mask, indices.numpy().astype(np.float32))


def test_argument_binding_errors_name_the_parameter():
    kernel = EmulatedKernel(kernel_sources()["dl_lrn_output"], "dl_lrn_output")
    x = normal((4,))
    with pytest.raises(KernelArgumentError, match=r"argument 3 \(const long long total\) needs a numpy int64"):
        kernel((1,), (4,), (x, x, x.copy(), np.int32(4), np.float32(1)))
    with pytest.raises(KernelArgumentError, match="argument 4 .* needs a numpy float32 scalar, got float"):
        kernel((1,), (4,), (x, x, x.copy(), np.int64(4), 1.0))
    with pytest.raises(KernelArgumentError, match="not C-contiguous"):
        kernel((1,), (4,), (normal((4, 2))[:, 0], x, x.copy(), np.int64(4), np.float32(1)))
    with pytest.raises(KernelArgumentError, match="launched with 4 arguments"):
        kernel((1,), (4,), (x, x, x.copy(), np.int64(4)))


def test_emulation_header_has_cuda_atomics_and_math():
    """For kernels to come: atomicAdd accumulates (sequential run), and CUDA's float math
    (rsqrtf, __expf, fmaxf, min/max of mixed types) means what it means on a device."""
    source = r"""
extern "C" __global__ void dl_test_header(const float* x, float* out, const long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)blockDim.x * gridDim.x) {
    atomicAdd(out, x[i]);
    atomicAdd(out + 1, rsqrtf(x[i]) + __expf(-x[i]) + fmaxf(x[i], 2.f) + (float)min(i, 3));
  }
}"""
    x = np.abs(normal((50,))) + 0.5
    out = np.zeros(2, np.float32)
    EmulatedKernel(source, "dl_test_header")((3,), (4,), (x, out, np.int64(50)))
    expected = (1 / np.sqrt(x) + np.exp(-x) + np.maximum(x, 2) + np.minimum(np.arange(50), 3)).sum()
    np.testing.assert_allclose(out, [x.sum(), expected], rtol=1e-5)


def test_shared_memory_kernels_are_refused_by_name():
    source = ('extern "C" __global__ void k(float* y) { __shared__ float tile[32]; tile[threadIdx.x] = 1; '
              '__syncthreads(); y[threadIdx.x] = tile[0]; }')
    with pytest.raises(AssertionError, match="HAS_NO_SHARED_MEMORY"):
        EmulatedKernel(source, "k")


def test_layer_param_helper_is_shared():  # the cases are plain layer texts, as in the layer tests
    assert layer_param(CASES[0][1]).type == "Convolution"
    assert run_layer(CASES[0][1], CASES[0][2])[2][0].shape == (2, 4, 4, 3)
