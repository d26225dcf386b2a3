"""R-FCN's online hard example mining layers: SoftmaxWithLossOHEM, SmoothL1LossOHEM,
BoxAnnotatorOHEM. References: PyTorch (cross entropy, smooth L1) and the selection rule
written out; gradients by finite differences."""
from __future__ import annotations

import numpy as np
import pytest
from gradcheck import check_gradient, compare_devices, covers, run_layer



def rng(seed=0):
    return np.random.default_rng(seed)


def softmax_inputs(seed=0, regions=6, classes=4):
    r = rng(seed)
    scores = r.standard_normal((regions, classes)).astype(np.float32)
    labels = r.integers(0, classes, regions).astype(np.float32)
    labels[1] = -1  # an ignored region
    return scores, labels


#: Reached by the gpu test through SOFTMAX_OHEM.
GPU_COVERS = ("SoftmaxWithLossOHEM",)
SOFTMAX_OHEM = 'type: "SoftmaxWithLossOHEM" top: "loss" top: "prob" top: "per_roi" loss_param { ignore_label: -1 }'


@covers("SoftmaxWithLossOHEM", "reference")
def test_softmax_ohem_per_region_loss_matches_torch():
    torch = pytest.importorskip("torch")
    scores, labels = softmax_inputs()
    layer, bottoms, tops = run_layer(SOFTMAX_OHEM, [scores, labels])
    per = torch.nn.functional.cross_entropy(torch.tensor(scores, dtype=torch.float64),
                                            torch.tensor(labels, dtype=torch.long), ignore_index=-1,
                                            reduction="none").numpy()
    np.testing.assert_allclose(tops[2].data, per, rtol=1e-5, atol=1e-6)
    assert tops[2].data[1] == 0
    np.testing.assert_allclose(tops[0].data, per.sum() / 5, rtol=1e-5)  # VALID: 5 labelled regions
    np.testing.assert_allclose(tops[1].data.sum(axis=1), 1, rtol=1e-5)


@covers("SoftmaxWithLossOHEM", "gradient")
def test_softmax_ohem_gradient():
    check_gradient(SOFTMAX_OHEM, list(softmax_inputs(seed=1)),
                   check_bottoms=[0], top_indices=[0])


def smooth_inputs(seed=0, weights=True):
    r = rng(seed)
    x = (r.standard_normal((5, 8)) * 1.5).astype(np.float32)
    t = r.standard_normal((5, 8)).astype(np.float32)
    w = (r.random((5, 8)) > 0.4).astype(np.float32)
    return [x, t, w] if weights else [x, t]


@covers("SmoothL1LossOHEM", "reference")
@pytest.mark.parametrize("normalization, divisor", [("", 5), ("loss_param { normalization: PRE_FIXED pre_fixed_normalizer: 128 }", 128),
                                                    ("loss_param { normalization: NONE }", 1)])
def test_smooth_l1_ohem_matches_torch(normalization, divisor):
    torch = pytest.importorskip("torch")
    x, t, w = smooth_inputs()
    layer, bottoms, tops = run_layer(f'type: "SmoothL1LossOHEM" top: "loss" top: "per_roi" {normalization}', [x, t, w])
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    d = torch.tensor(w, dtype=torch.float64) * (xt - torch.tensor(t, dtype=torch.float64))
    per = torch.nn.functional.smooth_l1_loss(d, torch.zeros_like(d), reduction="none", beta=1.0)
    np.testing.assert_allclose(tops[0].data, per.sum().item() / divisor, rtol=1e-5)
    np.testing.assert_allclose(tops[1].data.reshape(5), per.sum(dim=1).detach().numpy(), rtol=1e-5)
    tops[0].diff[...] = 1
    layer.backward(tops, [True, False, False], bottoms)
    (per.sum() / divisor).backward()
    np.testing.assert_allclose(bottoms[0].diff, xt.grad.numpy(), rtol=1e-5, atol=1e-7)


@covers("SmoothL1LossOHEM", "gradient")
def test_smooth_l1_ohem_gradient():
    check_gradient('type: "SmoothL1LossOHEM"', smooth_inputs(seed=2), check_bottoms=[0, 1])


@covers("BoxAnnotatorOHEM", "reference")
def test_box_annotator_keeps_the_hardest_regions_per_image():
    rois = np.array([[0, 0, 0, 1, 1], [0, 0, 0, 2, 2], [1, 0, 0, 1, 1], [0, 1, 1, 3, 3], [1, 2, 2, 4, 4],
                     [1, 0, 0, 5, 5]], dtype=np.float32)
    loss = np.array([0.5, 2.0, 0.1, 1.0, 3.0, 0.2], dtype=np.float32)
    labels = np.array([1, 2, 3, 1, 2, 3], dtype=np.float32)
    weights = np.arange(6 * 8, dtype=np.float32).reshape(6, 8) + 1
    layer, _, tops = run_layer('type: "BoxAnnotatorOHEM" box_annotator_ohem_param { roi_per_img: 2 ignore_label: -1 }',
                               [rois, loss, labels, weights], num_tops=2)
    # image 0: regions 1 (2.0) and 3 (1.0); image 1: regions 4 (3.0) and 5 (0.2)
    np.testing.assert_array_equal(tops[0].data, [-1, 2, -1, 1, 2, 3])
    kept = np.array([0, 1, 0, 1, 1, 1], dtype=bool)
    np.testing.assert_array_equal(tops[1].data[kept], weights[kept])
    assert not tops[1].data[~kept].any()


@covers("SoftmaxWithLossOHEM", "gpu")
@covers("SmoothL1LossOHEM", "gpu")
@covers("BoxAnnotatorOHEM", "gpu")
@pytest.mark.gpu
def test_ohem_layers_gpu_match_cpu():
    compare_devices(SOFTMAX_OHEM, list(softmax_inputs(seed=3)))
    compare_devices('type: "SmoothL1LossOHEM" top: "loss" top: "per_roi"', smooth_inputs(seed=4))
    rois = np.array([[0, 0, 0, 1, 1], [1, 0, 0, 2, 2], [0, 1, 1, 3, 3]], dtype=np.float32)
    compare_devices('type: "BoxAnnotatorOHEM" box_annotator_ohem_param { roi_per_img: 1 }',
                    [rois, np.array([1, 2, 3], np.float32), np.array([1, 2, 0], np.float32), np.ones((3, 4), np.float32)],
                    num_tops=2)
