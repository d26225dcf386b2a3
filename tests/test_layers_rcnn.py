"""Fast/Faster R-CNN and R-FCN layers: ROIPooling, PSROIPooling, SmoothL1Loss.

References: element-by-element loops written from the forks' definitions (a second,
independent reading of the rules), OpenCV's Caffe importer where it has the layer, and
PyTorch's smooth_l1_loss; plus finite-difference gradients and the GPU path.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from gradcheck import check_gradient, compare_devices, covers, run_layer

from dlsoft.errors import NetDefinitionError

#: Reached by the gpu test through the ROI_TEXT/PSROI_TEXT templates.
GPU_COVERS = ("ROIPooling", "PSROIPooling")


def normal(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def distinct(shape, seed=0):
    """Values 0.05 apart, so a ±0.01 finite-difference step never changes a max."""
    rng = np.random.default_rng(seed)
    return (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.05 - 1).astype(np.float32)


ROIS = np.array([[0, 0, 0, 15, 15], [1, 2.5, 3.4, 9.6, 12.2], [0, 4, 4, 4, 4], [1, -3, -2, 40, 30],
                 [0, 7.5, 1.5, 13.5, 6.5]], dtype=np.float32)


def c_round(v):
    return math.floor(abs(v) + 0.5) * (1 if v >= 0 else -1)


def roi_pool_loops(x, rois, ph_n, pw_n, scale):
    n, c, h, w = x.shape
    out = np.zeros((len(rois), c, ph_n, pw_n), np.float32)
    for r, (b, x1, y1, x2, y2) in enumerate(rois):
        x1, y1, x2, y2 = (c_round(v * scale) for v in (x1, y1, x2, y2))
        rh, rw = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
        for ph in range(ph_n):
            for pw in range(pw_n):
                hs = min(max(math.floor(ph * rh / ph_n) + y1, 0), h)
                he = min(max(math.ceil((ph + 1) * rh / ph_n) + y1, 0), h)
                ws = min(max(math.floor(pw * rw / pw_n) + x1, 0), w)
                we = min(max(math.ceil((pw + 1) * rw / pw_n) + x1, 0), w)
                for ch in range(c):
                    if he > hs and we > ws:
                        out[r, ch, ph, pw] = x[int(b), ch, hs:he, ws:we].max()
    return out


def psroi_loops(x, rois, dim, g, scale):
    n, c, h, w = x.shape
    out = np.zeros((len(rois), dim, g, g), np.float32)
    for r, (b, x1, y1, x2, y2) in enumerate(rois):
        sx, sy = c_round(x1) * scale, c_round(y1) * scale
        ex, ey = (c_round(x2) + 1) * scale, (c_round(y2) + 1) * scale
        bh, bw = max(ey - sy, 0.1) / g, max(ex - sx, 0.1) / g
        for d in range(dim):
            for ph in range(g):
                for pw in range(g):
                    hs = min(max(math.floor(ph * bh + sy), 0), h)
                    he = min(max(math.ceil((ph + 1) * bh + sy), 0), h)
                    ws = min(max(math.floor(pw * bw + sx), 0), w)
                    we = min(max(math.ceil((pw + 1) * bw + sx), 0), w)
                    if he > hs and we > ws:
                        out[r, d, ph, pw] = x[int(b), (d * g + ph) * g + pw, hs:he, ws:we].mean()
    return out


ROI_TEXT = 'type: "ROIPooling" roi_pooling_param {{ pooled_h: {ph} pooled_w: {pw} spatial_scale: {s} }}'
PSROI_TEXT = 'type: "PSROIPooling" psroi_pooling_param {{ output_dim: {d} group_size: {g} spatial_scale: {s} }}'


@covers("ROIPooling", "reference")
@pytest.mark.parametrize("ph, pw, scale", [(3, 3, 0.5), (2, 4, 1.0), (7, 7, 0.25)])
def test_roi_pooling_matches_the_loops(ph, pw, scale):
    x = normal((2, 3, 9, 8))
    _, _, tops = run_layer(ROI_TEXT.format(ph=ph, pw=pw, s=scale), [x, ROIS])
    np.testing.assert_array_equal(tops[0].data, roi_pool_loops(x, ROIS, ph, pw, scale))


def test_roi_pooling_backward_routes_to_the_argmax():
    x = distinct((2, 2, 8, 8))
    layer, bottoms, tops = run_layer(ROI_TEXT.format(ph=2, pw=2, s=0.5), [x, ROIS[:2]])
    tops[0].diff[...] = 1
    layer.backward(tops, [True, False], bottoms)
    # Every output's gradient lands on one input holding that output's value.
    assert bottoms[0].diff.sum() == tops[0].count
    hit = bottoms[0].diff > 0
    assert set(np.unique(x[hit])) <= set(np.unique(tops[0].data))


@covers("ROIPooling", "gradient")
def test_roi_pooling_gradient():
    check_gradient(ROI_TEXT.format(ph=2, pw=3, s=0.5), [distinct((2, 2, 8, 8)), ROIS], check_bottoms=[0])


def opencv_two_input_net(tmp_path, layer_text, x, rois):
    cv2 = pytest.importorskip("cv2")
    import dlsoft
    dims = " ".join(f"dim: {d}" for d in x.shape)
    proto = tmp_path / "net.prototxt"
    proto.write_text(
        f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}\n'
        f'layer {{ name: "rois" type: "Input" top: "rois" input_param {{ shape {{ dim: {len(rois)} dim: 5 }} }} }}\n'
        f'layer {{ name: "pool" bottom: "data" bottom: "rois" top: "out" {layer_text} }}\n')
    net = dlsoft.Net(str(proto), phase="TEST")
    ours = net.forward(data=x, rois=rois)["out"].copy()
    model = tmp_path / "net.caffemodel"
    net.save(str(model))
    reference = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    reference.setInput(x, "data")
    reference.setInput(rois, "rois")
    return ours, reference.forward()


def test_roi_pooling_agrees_with_opencv(tmp_path):
    x = normal((2, 4, 12, 10), seed=3)
    rois = ROIS[:4]
    ours, theirs = opencv_two_input_net(tmp_path, ROI_TEXT.format(ph=3, pw=3, s=0.5), x, rois)
    np.testing.assert_allclose(ours, theirs.reshape(ours.shape), rtol=1e-5, atol=1e-6)


@covers("PSROIPooling", "reference")
@pytest.mark.parametrize("dim, g, scale", [(2, 3, 0.5), (1, 2, 1.0), (3, 1, 0.25)])
def test_psroi_pooling_matches_the_loops(dim, g, scale):
    x = normal((2, dim * g * g, 9, 8), seed=1)
    _, _, tops = run_layer(PSROI_TEXT.format(d=dim, g=g, s=scale), [x, ROIS])
    np.testing.assert_allclose(tops[0].data, psroi_loops(x, ROIS, dim, g, scale), rtol=1e-5, atol=1e-6)


def test_psroi_pooling_backward_spreads_over_the_bin():
    x = normal((2, 2 * 4, 8, 8), seed=2)
    layer, bottoms, tops = run_layer(PSROI_TEXT.format(d=2, g=2, s=0.5), [x, ROIS[:2]])
    tops[0].diff[...] = 1
    layer.backward(tops, [True, False], bottoms)
    non_empty = (tops[0].data != 0).sum()
    np.testing.assert_allclose(bottoms[0].diff.sum(), non_empty, rtol=1e-5)


@covers("PSROIPooling", "gradient")
def test_psroi_pooling_gradient():
    check_gradient(PSROI_TEXT.format(d=2, g=2, s=0.5), [normal((2, 8, 8, 8), seed=4), ROIS], check_bottoms=[0])


def test_psroi_pooling_agrees_with_opencv(tmp_path):
    x = normal((2, 2 * 9, 12, 10), seed=5)
    try:
        ours, theirs = opencv_two_input_net(tmp_path, PSROI_TEXT.format(d=2, g=3, s=0.5), x, ROIS[:4])
    except Exception as error:  # cv2.error: this OpenCV build lacks PSROIPooling from Caffe
        if type(error).__module__.startswith("cv2"):
            pytest.skip(f"OpenCV does not run PSROIPooling here: {error}")
        raise
    np.testing.assert_allclose(ours, theirs.reshape(ours.shape), rtol=1e-5, atol=1e-6)


def test_region_checks():
    with pytest.raises(NetDefinitionError, match="R×5"):
        run_layer(ROI_TEXT.format(ph=2, pw=2, s=1), [normal((1, 2, 4, 4)), normal((3, 4))])
    with pytest.raises(NetDefinitionError, match="batch index 1 out of range"):
        run_layer(ROI_TEXT.format(ph=2, pw=2, s=1), [normal((1, 2, 4, 4)), ROIS[1:2]])
    with pytest.raises(NetDefinitionError, match="output_dim"):
        run_layer(PSROI_TEXT.format(d=2, g=2, s=1), [normal((1, 7, 4, 4)), ROIS[:1]])


@covers("ROIPooling", "gpu")
@covers("PSROIPooling", "gpu")
@pytest.mark.gpu
def test_roi_layers_gpu_match_cpu():
    compare_devices(ROI_TEXT.format(ph=2, pw=2, s=0.5), [distinct((2, 2, 8, 8)), ROIS])
    compare_devices(PSROI_TEXT.format(d=2, g=2, s=0.5), [normal((2, 8, 8, 8)), ROIS])


# ---- SmoothL1Loss ----------------------------------------------------------------------------
def smooth_l1_inputs(seed=0, weights=True):
    rng = np.random.default_rng(seed)
    x, t = rng.standard_normal((2, 8, 3, 3)).astype(np.float32), rng.standard_normal((2, 8, 3, 3)).astype(np.float32)
    if not weights:
        return [x, t]
    inside = (rng.random(x.shape) > 0.3).astype(np.float32)
    outside = rng.uniform(0.5, 2, x.shape).astype(np.float32)
    return [x, t, inside, outside]


@covers("SmoothL1Loss", "reference")
@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_smooth_l1_matches_torch(sigma):
    torch = pytest.importorskip("torch")
    x, t, inside, outside = smooth_l1_inputs()
    layer, bottoms, tops = run_layer(f'type: "SmoothL1Loss" smooth_l1_loss_param {{ sigma: {sigma} }}',
                                     [x, t, inside, outside])
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    tt = torch.tensor(t.astype(np.float64), requires_grad=True)
    i, o = torch.tensor(inside, dtype=torch.float64), torch.tensor(outside, dtype=torch.float64)
    # Caffe's σ form in terms of torch's: smoothL1_σ(d) = smooth_l1(σ²·d, beta=1) / σ².
    d = i * (xt - tt)
    per = torch.nn.functional.smooth_l1_loss(d * sigma ** 2, torch.zeros_like(d), reduction="none",
                                             beta=1.0) / sigma ** 2
    expected = (o * per).sum() / x.shape[0]
    np.testing.assert_allclose(tops[0].data, expected.item(), rtol=1e-5)
    tops[0].diff[...] = 2.0   # a loss weight of 2
    layer.backward(tops, [True, True, False, False], bottoms)
    (2.0 * expected).backward()
    np.testing.assert_allclose(bottoms[0].diff, xt.grad.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(bottoms[1].diff, tt.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_smooth_l1_without_weights_and_bad_bottoms():
    x, t = smooth_l1_inputs(weights=False)
    _, _, tops = run_layer('type: "SmoothL1Loss"', [x, t])
    d = np.abs(x - t)
    np.testing.assert_allclose(tops[0].data, np.where(d < 1, 0.5 * d * d, d - 0.5).sum() / 2, rtol=1e-5)
    with pytest.raises(NetDefinitionError, match="2 bottoms .* or 4"):
        run_layer('type: "SmoothL1Loss"', [x, t, x])


@covers("SmoothL1Loss", "gradient")
def test_smooth_l1_gradient():
    check_gradient('type: "SmoothL1Loss" smooth_l1_loss_param { sigma: 2 }', smooth_l1_inputs(seed=3),
                   check_bottoms=[0, 1], kink=None)


@covers("SmoothL1Loss", "gpu")
@pytest.mark.gpu
def test_smooth_l1_gpu_matches_cpu():
    compare_devices('type: "SmoothL1Loss" smooth_l1_loss_param { sigma: 3 }', smooth_l1_inputs(seed=4))
