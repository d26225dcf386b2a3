"""The forks' small layers: ConvolutionDepthwise (MobileNet), ShuffleChannel (ShuffleNet),
Axpy (SENet), SeLu and SeLuDropout (self-normalising nets).

Each: a finite-difference gradient check, a reference (PyTorch, OpenCV's Caffe importer
where it has the layer, or the closed form), and the GPU path against the CPU.
"""
from __future__ import annotations

import numpy as np
import pytest
from gradcheck import check_gradient, compare_devices, covers, run_layer

#: Reached by gpu tests through the DW template (test_cupy_api looks for the type's name).
GPU_COVERS = ("ConvolutionDepthwise",)

RTOL, ATOL = 1e-4, 1e-5
LAMBDA, ALPHA = 1.050700987, 1.67326324


def normal(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def run_backward(layer, bottoms, tops, seed=3):
    dy = np.random.default_rng(seed).uniform(-1, 1, tops[0].shape).astype(np.float32)
    tops[0].diff[...] = dy
    for blob in layer.blobs:
        blob.diff[...] = 0
    layer.backward(tops, [True] * len(bottoms), bottoms)
    return dy


def opencv_outputs(tmp_path, layer_text, input_shape, x, weights=None):
    """Run a one-layer deploy net through OpenCV's Caffe importer (None if OpenCV refuses it)."""
    cv2 = pytest.importorskip("cv2")
    import dlsoft
    dims = " ".join(f"dim: {d}" for d in input_shape)
    proto = tmp_path / "net.prototxt"
    proto.write_text(f'name: "t" layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'
                     f'layer {{ name: "probe" bottom: "data" top: "out" {layer_text} }}\n')
    net = dlsoft.Net(str(proto), phase="TEST")
    if weights is not None:
        for blob, value in zip(net.params["probe"], weights):
            blob.data[...] = value
    ours = net.forward(data=x)["out"].copy()
    model = tmp_path / "net.caffemodel"
    net.save(str(model))
    try:
        reference = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    except cv2.error:
        return ours, None
    reference.setInput(x)
    return ours, reference.forward()


# ---- ConvolutionDepthwise -------------------------------------------------------------------
DW = ('type: "ConvolutionDepthwise" convolution_param {{ num_output: {n} group: {n} {extra} '
      'weight_filler {{ type: "gaussian" std: 0.5 }} bias_filler {{ type: "gaussian" std: 0.5 }} }}')


@covers("ConvolutionDepthwise", "reference")
@pytest.mark.parametrize("extra, kwargs", [
    ("kernel_size: 3 pad: 1", dict(padding=1)),
    ("kernel_size: 3 stride: 2", dict(stride=2)),
    ("kernel_h: 3 kernel_w: 1 pad_h: 1 dilation: 2", dict(padding=(1, 0), dilation=2)),
    ("kernel_size: 3 pad: 1 bias_term: false", dict(padding=1)),
])
def test_depthwise_matches_torch_grouped_conv(extra, kwargs):
    torch = pytest.importorskip("torch")
    x = normal((2, 5, 7, 6))
    layer, bottoms, tops = run_layer(DW.format(n=5, extra=extra), [x])
    assert layer.blobs[0].shape[:2] == (5, 1)
    weight = torch.tensor(layer.blobs[0].data.astype(np.float64), requires_grad=True)
    bias = torch.tensor(layer.blobs[1].data.astype(np.float64), requires_grad=True) if len(layer.blobs) > 1 else None
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    y = torch.nn.functional.conv2d(xt, weight, bias, groups=5, **kwargs)
    np.testing.assert_allclose(tops[0].data, y.detach().numpy(), rtol=RTOL, atol=ATOL)
    dy = run_backward(layer, bottoms, tops)
    (y * torch.tensor(dy, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(bottoms[0].diff, xt.grad.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(layer.blobs[0].diff, weight.grad.numpy(), rtol=RTOL, atol=ATOL)
    if bias is not None:
        np.testing.assert_allclose(layer.blobs[1].diff, bias.grad.numpy(), rtol=RTOL, atol=ATOL)


def test_depthwise_ignores_num_output_and_group_as_the_fork_does():
    # The fork's layer always has one filter per input channel, whatever num_output says.
    layer, _, tops = run_layer(DW.format(n=32, extra="kernel_size: 3 pad: 1").replace("group: 32", ""),
                               [normal((1, 4, 5, 5))])
    assert layer.blobs[0].shape == (4, 1, 3, 3) and layer.blobs[1].shape == (4,)
    assert tops[0].shape == (1, 4, 5, 5)
    assert layer.param.convolution_param.num_output == 4


def test_depthwise_agrees_with_opencv(tmp_path):
    x = normal((1, 6, 9, 8), seed=2)
    ours, theirs = opencv_outputs(tmp_path, DW.format(n=6, extra="kernel_size: 3 pad: 1 stride: 2"),
                                  x.shape, x)
    if theirs is None:
        pytest.skip("this OpenCV does not read ConvolutionDepthwise")
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


@covers("ConvolutionDepthwise", "gradient")
def test_depthwise_gradient():
    check_gradient(DW.format(n=3, extra="kernel_size: 3 pad: 1 stride: 2"), [normal((2, 3, 5, 6))])


@covers("ConvolutionDepthwise", "gpu")
@pytest.mark.gpu
def test_depthwise_gpu_matches_cpu():
    compare_devices(DW.format(n=4, extra="kernel_size: 3 pad: 1"), [normal((2, 4, 6, 6))])


# ---- ShuffleChannel -------------------------------------------------------------------------
@covers("ShuffleChannel", "reference")
def test_shuffle_channel_closed_form_and_inverse():
    x = normal((2, 6, 3, 4))
    layer, bottoms, tops = run_layer('type: "ShuffleChannel" shuffle_channel_param { group: 3 }', [x])
    expected = x.reshape(2, 3, 2, 12).transpose(0, 2, 1, 3).reshape(x.shape)
    np.testing.assert_array_equal(tops[0].data, expected)
    for i in range(3):          # channel i·k + j of the bottom is channel j·g + i of the top
        for j in range(2):
            np.testing.assert_array_equal(tops[0].data[:, j * 3 + i], x[:, i * 2 + j])
    dy = run_backward(layer, bottoms, tops)
    np.testing.assert_array_equal(bottoms[0].diff, dy.reshape(2, 2, 3, 12).transpose(0, 2, 1, 3).reshape(x.shape))


def test_shuffle_channel_agrees_with_opencv(tmp_path):
    x = normal((1, 8, 3, 3), seed=4)
    ours, theirs = opencv_outputs(tmp_path, 'type: "ShuffleChannel" shuffle_channel_param { group: 4 }', x.shape, x)
    if theirs is None:
        pytest.skip("this OpenCV does not read ShuffleChannel")
    np.testing.assert_array_equal(ours, theirs)


def test_shuffle_channel_group_must_divide_channels():
    from dlsoft.errors import NetDefinitionError
    with pytest.raises(NetDefinitionError, match="group 4 must divide"):
        run_layer('type: "ShuffleChannel" shuffle_channel_param { group: 4 }', [normal((1, 6, 2, 2))])


@covers("ShuffleChannel", "gradient")
def test_shuffle_channel_gradient():
    check_gradient('type: "ShuffleChannel" shuffle_channel_param { group: 2 }', [normal((2, 4, 2, 3))])


@covers("ShuffleChannel", "gpu")
@pytest.mark.gpu
def test_shuffle_channel_gpu_matches_cpu():
    compare_devices('type: "ShuffleChannel" shuffle_channel_param { group: 2 }', [normal((2, 4, 3, 3))])


# ---- Axpy ------------------------------------------------------------------------------------
def axpy_inputs(seed=0):
    return [normal((2, 3, 1, 1), seed), normal((2, 3, 4, 5), seed + 1), normal((2, 3, 4, 5), seed + 2)]


@covers("Axpy", "reference")
def test_axpy_closed_form():
    a, x, y = axpy_inputs()
    layer, bottoms, tops = run_layer('type: "Axpy"', [a, x, y])
    np.testing.assert_allclose(tops[0].data, a * x + y, rtol=1e-6)
    dy = run_backward(layer, bottoms, tops)
    np.testing.assert_allclose(bottoms[0].diff, (dy * x).sum(axis=(2, 3), keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(bottoms[1].diff, a * dy, rtol=1e-6)
    np.testing.assert_array_equal(bottoms[2].diff, dy)


def test_axpy_accepts_a_two_axis_scale_and_refuses_a_wrong_one():
    from dlsoft.errors import NetDefinitionError
    a, x, y = axpy_inputs()
    _, _, tops = run_layer('type: "Axpy"', [a.reshape(2, 3), x, y])
    np.testing.assert_allclose(tops[0].data, a * x + y, rtol=1e-6)
    with pytest.raises(NetDefinitionError, match="scale"):
        run_layer('type: "Axpy"', [normal((2, 4)), x, y])


@covers("Axpy", "gradient")
def test_axpy_gradient():
    check_gradient('type: "Axpy"', axpy_inputs(seed=5))


@covers("Axpy", "gpu")
@pytest.mark.gpu
def test_axpy_gpu_matches_cpu():
    compare_devices('type: "Axpy"', axpy_inputs(seed=7))


# ---- SeLu ------------------------------------------------------------------------------------
@covers("SeLu", "reference")
def test_selu_matches_torch():
    torch = pytest.importorskip("torch")
    x = normal((3, 4, 5), seed=1) * 2
    layer, bottoms, tops = run_layer('type: "SeLu"', [x])
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    y = torch.nn.functional.selu(xt)
    np.testing.assert_allclose(tops[0].data, y.detach().numpy(), rtol=1e-5, atol=1e-6)
    dy = run_backward(layer, bottoms, tops)
    (y * torch.tensor(dy, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(bottoms[0].diff, xt.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_selu_parameters_and_in_place():
    x = normal((2, 10), seed=2)
    text = 'type: "SeLu" bottom: "x" top: "x" selu_param { lambda: 2 alpha: 0.5 }'
    _, _, tops = run_layer(text, [x])
    expected = np.where(x > 0, 2 * x, 2 * 0.5 * np.expm1(x))
    np.testing.assert_allclose(tops[0].data, expected, rtol=1e-6, atol=1e-7)


@covers("SeLu", "gradient")
def test_selu_gradient():
    check_gradient('type: "SeLu"', [normal((2, 3, 4), seed=3)], kink=0, kink_range=0.02)


@covers("SeLu", "gpu")
@pytest.mark.gpu
def test_selu_gpu_matches_cpu():
    compare_devices('type: "SeLu"', [normal((2, 3, 4), seed=4)])


# ---- SeLuDropout -----------------------------------------------------------------------------
def selu_dropout_constants(ratio=0.1, alpha=-1.75809934):
    q = 1 - ratio
    a = (q * (1 + alpha * alpha * (1 - q))) ** -0.5
    return a, -a * (1 - q) * alpha, alpha


@covers("SeLuDropout", "reference")
def test_selu_dropout_train_closed_form():
    x = normal((4, 50, 50), seed=5)
    layer, bottoms, tops = run_layer('type: "SeLuDropout" selu_dropout_param { dropout_ratio: 0.2 }', [x])
    a, b, alpha = selu_dropout_constants(0.2)
    kept = layer.mask
    np.testing.assert_allclose(tops[0].data[kept], a * x[kept] + b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tops[0].data[~kept], a * alpha + b, rtol=1e-5)
    assert abs((~kept).mean() - 0.2) < 0.01
    # The point of alpha dropout: standard-normal inputs keep zero mean and unit variance.
    assert abs(tops[0].data.mean()) < 0.02 and abs(tops[0].data.var() - 1) < 0.03
    dy = run_backward(layer, bottoms, tops)
    np.testing.assert_allclose(bottoms[0].diff, dy * kept * a, rtol=1e-6)


def test_selu_dropout_is_the_identity_at_test():
    x = normal((3, 7), seed=6)
    layer, bottoms, tops = run_layer('type: "SeLuDropout"', [x], phase="TEST")
    np.testing.assert_array_equal(tops[0].data, x)
    dy = run_backward(layer, bottoms, tops)
    np.testing.assert_array_equal(bottoms[0].diff, dy)


def test_selu_dropout_ratio_is_validated():
    from dlsoft.errors import NetDefinitionError
    with pytest.raises(NetDefinitionError, match="dropout_ratio"):
        run_layer('type: "SeLuDropout" selu_dropout_param { dropout_ratio: 1 }', [normal((2, 2))])


@covers("SeLuDropout", "gradient")
def test_selu_dropout_gradient():
    # The mask is redrawn from the same seed at every forward, so finite differences see one mask.
    check_gradient('type: "SeLuDropout" selu_dropout_param { dropout_ratio: 0.3 }', [normal((3, 8), seed=7)])


@covers("SeLuDropout", "gpu")
@pytest.mark.gpu
def test_selu_dropout_gpu_matches_cpu():
    compare_devices('type: "SeLuDropout"', [normal((3, 8), seed=8)], phase="TEST")
