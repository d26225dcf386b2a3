"""Losses and Accuracy: PyTorch/closed-form references (forward and backward), gradients, GPU."""
from __future__ import annotations

import numpy as np
import pytest
from gradcheck import LayerCase, case_tests, check_gradient, covers, run_layer

from dlsoft.errors import NetDefinitionError
from dlsoft.layers.kernels import SOURCES as KERNEL_SOURCES
from dlsoft.netdef.io import write_blob

torch = pytest.importorskip("torch")
F = torch.nn.functional

RNG = np.random.default_rng(0)
SCORES = RNG.standard_normal((4, 5, 2, 3)).astype(np.float32)
LABELS = RNG.integers(0, 5, (4, 1, 2, 3)).astype(np.float32)
LABELS[0, 0, 0, :2] = -1  # ignored where ignore_label is -1


def loss_and_grad(text, bottoms, loss_weight=2.0, num_tops=None):
    """Our loss value and the gradient of each bottom for top diff ``loss_weight``."""
    layer, bottom_blobs, tops = run_layer(text, bottoms, num_tops=num_tops)
    tops[0].diff[...] = loss_weight
    propagate = [layer.allow_backward_to(i) for i in range(len(bottoms))]
    layer.backward(tops, propagate, bottom_blobs)
    return float(tops[0].data), [b.diff.copy() if p else None for b, p in zip(bottom_blobs, propagate)], tops


def torch_loss(fn, *arrays, grad=(0,), loss_weight=2.0):
    tensors = [torch.tensor(a, dtype=torch.float64, requires_grad=i in grad) for i, a in enumerate(arrays)]
    value = fn(*tensors)
    (value * loss_weight).backward()
    return float(value.detach()), [t.grad.numpy() if i in grad else None for i, t in enumerate(tensors)]


# ---- SoftmaxWithLoss ---------------------------------------------------------------------
def torch_softmax_loss(x, labels, ignore, mode):
    def fn(tx):
        logits = tx.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        target = torch.tensor(labels.reshape(-1).astype(np.int64))
        total = F.cross_entropy(logits, target, ignore_index=ignore, reduction="sum")
        valid = int((target != ignore).sum())
        divisor = {"VALID": valid, "FULL": target.numel(), "BATCH_SIZE": x.shape[0], "NONE": 1}[mode]
        return total / max(divisor, 1)
    return torch_loss(fn, x)


@covers("SoftmaxWithLoss", "reference")
@pytest.mark.parametrize("mode", ["VALID", "FULL", "BATCH_SIZE", "NONE"])
@pytest.mark.parametrize("ignore", [True, False])
def test_softmax_loss_matches_torch(mode, ignore):
    labels = LABELS if ignore else np.abs(LABELS)
    param = f"normalization: {mode}" + (" ignore_label: -1" if ignore else "")
    text = f'type: "SoftmaxWithLoss" loss_param {{ {param} }}'
    value, grads, _ = loss_and_grad(text, [SCORES, labels])
    want, want_grads = torch_softmax_loss(SCORES, labels, -1 if ignore else -100, mode)
    assert value == pytest.approx(want, rel=1e-4)
    np.testing.assert_allclose(grads[0], want_grads[0], rtol=1e-4, atol=1e-6)
    assert grads[1] is None


@pytest.mark.parametrize("normalize,mode", [("true", "VALID"), ("false", "BATCH_SIZE")])
def test_softmax_loss_legacy_normalize(normalize, mode):
    text = f'type: "SoftmaxWithLoss" loss_param {{ ignore_label: -1 normalize: {normalize} }}'
    value, grads, _ = loss_and_grad(text, [SCORES, LABELS])
    want, want_grads = torch_softmax_loss(SCORES, LABELS, -1, mode)
    assert value == pytest.approx(want, rel=1e-4)
    np.testing.assert_allclose(grads[0], want_grads[0], rtol=1e-4, atol=1e-6)


def test_softmax_loss_other_axis_and_probability_top():
    x = RNG.standard_normal((3, 2, 6)).astype(np.float32)
    labels = RNG.integers(0, 6, (3, 2)).astype(np.float32)
    text = 'type: "SoftmaxWithLoss" top: "loss" top: "prob" softmax_param { axis: 2 }'
    value, grads, tops = loss_and_grad(text, [x, labels])
    want, want_grads = torch_loss(lambda t: F.cross_entropy(t.reshape(-1, 6), torch.tensor(
        labels.reshape(-1).astype(np.int64))), x)
    assert tops[0].shape == ()
    assert value == pytest.approx(want, rel=1e-4)
    np.testing.assert_allclose(grads[0], want_grads[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(tops[1].data, torch.softmax(torch.tensor(x), 2).numpy(), rtol=1e-5, atol=1e-7)


def test_softmax_loss_all_ignored_is_zero_not_nan():
    labels = np.full((4, 1, 2, 3), 255, np.float32)
    value, grads, _ = loss_and_grad('type: "SoftmaxWithLoss" loss_param { ignore_label: 255 }', [SCORES, labels])
    assert value == 0
    assert not grads[0].any()


def test_softmax_loss_label_out_of_range_is_an_error():
    with pytest.raises(NetDefinitionError, match="label 7 out of range"):
        run_layer('type: "SoftmaxWithLoss"', [SCORES, np.full((4, 1, 2, 3), 7, np.float32)])


@covers("SoftmaxWithLoss", "gradient")
@pytest.mark.parametrize("param", ["", "loss_param { ignore_label: -1 normalization: FULL }",
                                   "loss_param { ignore_label: -1 normalization: NONE }"])
def test_softmax_loss_gradient(param):
    check_gradient(f'type: "SoftmaxWithLoss" {param}', [SCORES[:2], LABELS[:2] if param else np.abs(LABELS[:2])],
                   check_bottoms=[0])


# ---- EuclideanLoss ---------------------------------------------------------------------------
@covers("EuclideanLoss", "reference")
def test_euclidean_loss_matches_torch():
    a, b = RNG.standard_normal((2, 4, 3, 3)).astype(np.float32)
    value, grads, _ = loss_and_grad('type: "EuclideanLoss"', [a, b])
    want, want_grads = torch_loss(lambda x, y: F.mse_loss(x, y, reduction="sum") / (2 * 4), a, b, grad=(0, 1))
    assert value == pytest.approx(want, rel=1e-4)
    for got, expected in zip(grads, want_grads):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


@covers("EuclideanLoss", "gradient")
def test_euclidean_loss_gradient():
    a, b = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    check_gradient('type: "EuclideanLoss"', [a, b])


# ---- SigmoidCrossEntropyLoss ----------------------------------------------------------------
TARGETS = RNG.integers(0, 2, (4, 6)).astype(np.float32)
TARGETS[0, :3] = -1
LOGITS = (3 * RNG.standard_normal((4, 6))).astype(np.float32)


@covers("SigmoidCrossEntropyLoss", "reference")
@pytest.mark.parametrize("param,ignore,mode", [
    ("", False, "BATCH_SIZE"), ("loss_param { ignore_label: -1 }", True, "BATCH_SIZE"),
    ("loss_param { ignore_label: -1 normalization: VALID }", True, "VALID"),
    ("loss_param { normalization: FULL }", False, "FULL"), ("loss_param { normalize: true }", False, "VALID")])
def test_sigmoid_cross_entropy_matches_torch(param, ignore, mode):
    targets = TARGETS if ignore else np.abs(TARGETS)
    mask = (targets != -1).astype(np.float64)

    def fn(x):
        terms = F.binary_cross_entropy_with_logits(x, torch.tensor(np.clip(targets, 0, 1), dtype=torch.float64),
                                                   weight=torch.tensor(mask), reduction="sum")
        divisor = {"VALID": mask.sum(), "FULL": targets.size, "BATCH_SIZE": targets.shape[0]}[mode]
        return terms / divisor

    value, grads, _ = loss_and_grad(f'type: "SigmoidCrossEntropyLoss" {param}', [LOGITS, targets])
    want, want_grads = torch_loss(fn, LOGITS)
    assert value == pytest.approx(want, rel=1e-4)
    np.testing.assert_allclose(grads[0], want_grads[0], rtol=1e-4, atol=1e-6)


@covers("SigmoidCrossEntropyLoss", "gradient")
def test_sigmoid_cross_entropy_gradient():
    check_gradient('type: "SigmoidCrossEntropyLoss" loss_param { ignore_label: -1 }', [LOGITS, TARGETS],
                   check_bottoms=[0])


# ---- HingeLoss -------------------------------------------------------------------------------
HINGE_X = RNG.standard_normal((5, 4)).astype(np.float32)
HINGE_LABELS = RNG.integers(0, 4, 5).astype(np.float32)


def hinge_reference(x, labels, squared):
    """Caffe's one-vs-all hinge, written with explicit loops."""
    total, grad = 0.0, np.zeros_like(x, dtype=np.float64)
    for n in range(x.shape[0]):
        for k in range(x.shape[1]):
            delta = 1.0 if k == labels[n] else -1.0
            margin = max(0.0, 1 - delta * float(x[n, k]))
            total += margin ** 2 if squared else margin
            grad[n, k] = -delta * (2 * margin if squared else float(margin > 0))
    return total / x.shape[0], grad / x.shape[0]


@covers("HingeLoss", "reference")
@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss_closed_form(norm):
    value, grads, _ = loss_and_grad(f'type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}',
                                    [HINGE_X, HINGE_LABELS], loss_weight=1.0)
    want, want_grad = hinge_reference(HINGE_X, HINGE_LABELS.astype(int), norm == "L2")
    assert value == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(grads[0], want_grad, rtol=1e-5, atol=1e-7)


def test_hinge_l1_matches_torch_relu_form():
    # Caffe's hinge is one-vs-all, not torch's multi_margin_loss (which compares x_k with
    # x_label): write it with torch ops, Σ relu(1 - δ·x) / N, and let autograd differentiate.
    x = HINGE_X[:, :2]
    labels = (HINGE_X[:, 0] > 0).astype(np.float32)
    delta = np.where(np.arange(2)[None, :] == labels[:, None], 1.0, -1.0)
    value, grads, _ = loss_and_grad('type: "HingeLoss"', [x, labels], loss_weight=2.0)
    want, want_grads = torch_loss(lambda t: F.relu(1 - torch.tensor(delta) * t).sum() / x.shape[0], x)
    assert value == pytest.approx(want, rel=1e-4)
    np.testing.assert_allclose(grads[0], want_grads[0], rtol=1e-4, atol=1e-6)


@covers("HingeLoss", "gradient")
@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss_gradient(norm):
    x = HINGE_X.copy()
    x[np.abs(np.abs(x) - 1) < 0.05] += 0.1  # away from the hinge's kink at |x| = 1
    check_gradient(f'type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}', [x, HINGE_LABELS], check_bottoms=[0])


# ---- ContrastiveLoss ---------------------------------------------------------------------------
PAIR_A = RNG.uniform(-0.5, 0.5, (6, 3, 1, 1)).astype(np.float32)
PAIR_B = RNG.uniform(-0.5, 0.5, (6, 3, 1, 1)).astype(np.float32)
SIMILAR = np.array([1, 0, 1, 0, 0, 1], np.float32)


@covers("ContrastiveLoss", "reference")
@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss_closed_form(legacy):
    margin = 1.5
    text = f'type: "ContrastiveLoss" contrastive_loss_param {{ margin: {margin} legacy_version: {str(legacy).lower()} }}'

    def fn(a, b):
        d2 = ((a - b) ** 2).sum(dim=(1, 2, 3))
        dissimilar = F.relu(margin - d2) if legacy else F.relu(margin - d2.sqrt()) ** 2
        return torch.where(torch.tensor(SIMILAR != 0), d2, dissimilar).sum() / (2 * len(SIMILAR))

    value, grads, _ = loss_and_grad(text, [PAIR_A, PAIR_B, SIMILAR])
    want, want_grads = torch_loss(fn, PAIR_A, PAIR_B, grad=(0, 1))
    assert value == pytest.approx(want, rel=1e-5)
    tolerance = 1e-5 if legacy else 1e-3  # Caffe's gradient divides by d + 1e-4
    for got, expected in zip(grads[:2], want_grads):
        np.testing.assert_allclose(got, expected, rtol=tolerance, atol=1e-6)
    assert grads[2] is None


@covers("ContrastiveLoss", "gradient")
@pytest.mark.parametrize("legacy", ["false", "true"])
def test_contrastive_loss_gradient(legacy):
    check_gradient(f'type: "ContrastiveLoss" contrastive_loss_param {{ margin: 1.5 legacy_version: {legacy} }}',
                   [PAIR_A, PAIR_B, SIMILAR], check_bottoms=[0, 1])


# ---- InfogainLoss --------------------------------------------------------------------------------
H = RNG.uniform(0, 1, (5, 5)).astype(np.float32)


def infogain_reference(x, labels, h, ignore=None, normalize_by=None):
    """Closed form: softmax over axis 1, loss -Σ H[l]·log p, gradient p·ΣH[l] - H[l]."""
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    lab = labels.reshape(x.shape[0], *x.shape[2:]).astype(int)
    total, grad, valid = 0.0, np.zeros_like(p, dtype=np.float64), 0
    for n, *rest in np.ndindex(lab.shape):
        label = lab[(n, *rest)]
        if label == ignore:
            continue
        valid += 1
        column = (n, slice(None), *rest)
        total -= float((h[label] * np.log(np.maximum(p[column], 1e-20))).sum())
        grad[column] = p[column] * h[label].sum() - h[label]
    divisor = max(valid if normalize_by is None else normalize_by, 1)
    return total / divisor, grad / divisor


@covers("InfogainLoss", "reference")
def test_infogain_loss_with_h_bottom_closed_form():
    value, grads, _ = loss_and_grad('type: "InfogainLoss" loss_param { ignore_label: -1 }', [SCORES, LABELS, H],
                                    loss_weight=1.0)
    want, want_grad = infogain_reference(SCORES, LABELS, H, ignore=-1)
    assert value == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(grads[0], want_grad, rtol=1e-4, atol=1e-6)
    assert grads[1] is None and grads[2] is None


def test_infogain_loss_from_source_file(tmp_path):
    path = tmp_path / "H.binaryproto"
    write_blob(H.reshape(1, 1, 5, 5), path)
    text = f'type: "InfogainLoss" infogain_loss_param {{ source: "{path}" }} loss_param {{ normalization: BATCH_SIZE }}'
    labels = np.abs(LABELS)
    value, grads, _ = loss_and_grad(text, [SCORES, labels], loss_weight=1.0)
    want, want_grad = infogain_reference(SCORES, labels, H, normalize_by=SCORES.shape[0])
    assert value == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(grads[0], want_grad, rtol=1e-4, atol=1e-6)


def test_infogain_with_identity_equals_softmax_loss():
    labels = np.abs(LABELS)
    infogain, infogain_grads, _ = loss_and_grad('type: "InfogainLoss"', [SCORES, labels, np.eye(5, dtype=np.float32)])
    softmax, softmax_grads, _ = loss_and_grad('type: "SoftmaxWithLoss"', [SCORES, labels])
    assert infogain == pytest.approx(softmax, rel=1e-5)
    np.testing.assert_allclose(infogain_grads[0], softmax_grads[0], rtol=1e-4, atol=1e-6)


def test_infogain_needs_a_matrix():
    with pytest.raises(NetDefinitionError, match="source"):
        run_layer('type: "InfogainLoss"', [SCORES, LABELS])


@covers("InfogainLoss", "gradient")
def test_infogain_loss_gradient():
    check_gradient('type: "InfogainLoss" loss_param { ignore_label: -1 }', [SCORES[:2], LABELS[:2], H],
                   check_bottoms=[0])


# ---- MultinomialLogisticLoss --------------------------------------------------------------------
PROBS = RNG.uniform(0.05, 1, (5, 4)).astype(np.float32)
PROBS /= PROBS.sum(1, keepdims=True)


@covers("MultinomialLogisticLoss", "reference")
def test_multinomial_logistic_loss_matches_torch_nll():
    labels = HINGE_LABELS
    value, grads, _ = loss_and_grad('type: "MultinomialLogisticLoss"', [PROBS, labels])
    want, want_grads = torch_loss(lambda p: F.nll_loss(p.log(), torch.tensor(labels.astype(np.int64))), PROBS)
    assert value == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(grads[0], want_grads[0], rtol=1e-4, atol=1e-6)


def test_multinomial_logistic_loss_clamps_zero_probability():
    probs = np.zeros((1, 3), np.float32)
    value, grads, _ = loss_and_grad('type: "MultinomialLogisticLoss"', [probs, np.array([1], np.float32)], 1.0)
    assert value == pytest.approx(-np.log(1e-20), rel=1e-5)
    assert grads[0][0, 1] == pytest.approx(-1e20, rel=1e-5)


@covers("MultinomialLogisticLoss", "gradient")
def test_multinomial_logistic_loss_gradient():
    check_gradient('type: "MultinomialLogisticLoss"', [PROBS, HINGE_LABELS], check_bottoms=[0], stepsize=1e-3)


# ---- Accuracy ------------------------------------------------------------------------------------
def accuracy_reference(scores, labels, top_k, ignore=None):
    """Closed form: the label is correct when fewer than top_k classes score strictly higher."""
    lab = labels.reshape(scores.shape[0], *scores.shape[2:]).astype(int)
    classes = scores.shape[1]
    hits, counts = np.zeros(classes), np.zeros(classes)
    for n, *rest in np.ndindex(lab.shape):
        label = lab[(n, *rest)]
        if label == ignore:
            continue
        column = scores[(n, slice(None), *rest)]
        counts[label] += 1
        hits[label] += (column > column[label]).sum() < top_k
    per_class = np.where(counts > 0, hits / np.maximum(counts, 1), 0)
    return hits.sum() / max(counts.sum(), 1), per_class


@covers("Accuracy", "reference")
@pytest.mark.parametrize("top_k", [1, 2, 4])
@pytest.mark.parametrize("ignore", [False, True])
def test_accuracy_closed_form(top_k, ignore):
    labels = LABELS if ignore else np.abs(LABELS)
    param = f"top_k: {top_k}" + (" ignore_label: -1" if ignore else "")
    layer, _, tops = run_layer(f'type: "Accuracy" top: "acc" top: "per_class" accuracy_param {{ {param} }}',
                               [SCORES, labels])
    want, want_per_class = accuracy_reference(SCORES, labels, top_k, -1 if ignore else None)
    assert layer.forward_only and not layer.allow_backward_to(0)
    assert tops[0].shape == () and tops[1].shape == (5,)
    assert float(tops[0].data) == pytest.approx(want, rel=1e-6)
    np.testing.assert_allclose(tops[1].data, want_per_class, rtol=1e-6)


def test_accuracy_ties_count_for_the_label_and_other_axis():
    scores = np.array([[[1, 1, 0]], [[0, 2, 2]]], np.float32)  # (2, 1, 3): classes on axis 2
    _, _, tops = run_layer('type: "Accuracy" accuracy_param { axis: 2 }', [scores, np.array([[0], [2]], np.float32)])
    assert float(tops[0].data) == 1.0


def test_accuracy_all_ignored_is_zero():
    labels = np.full_like(LABELS, 3)
    _, _, tops = run_layer('type: "Accuracy" accuracy_param { ignore_label: 3 }', [SCORES, labels])
    assert float(tops[0].data) == 0.0


# ---- GPU ---------------------------------------------------------------------------------------------
def test_cuda_sources_compile_with_nvrtc():
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc")
    loss_kernels = {name: source for name, source in KERNEL_SOURCES.items() if name.startswith("dl_softmax_loss")}
    assert sorted(loss_kernels) == ["dl_softmax_loss_backward", "dl_softmax_loss_forward"]
    for name, source in loss_kernels.items():
        program = nvrtc.createProgram(source, f"{name}.cu", [], [])
        try:
            nvrtc.compileProgram(program, ["-arch=compute_90"])
        except nvrtc.NVRTCError:
            raise AssertionError(f"{name}: {nvrtc.getProgramLog(program)}") from None


GPU_CASES = [
    ('type: "SoftmaxWithLoss" loss_param { ignore_label: -1 }', [SCORES, LABELS]),
    ('type: "SoftmaxWithLoss" top: "l" top: "p" loss_param { normalization: BATCH_SIZE }', [SCORES, np.abs(LABELS)]),
    ('type: "InfogainLoss" loss_param { ignore_label: -1 }', [SCORES, LABELS, H]),
    ('type: "EuclideanLoss"', [SCORES, SCORES[::-1].copy()]),
    ('type: "SigmoidCrossEntropyLoss" loss_param { ignore_label: -1 }', [LOGITS, TARGETS]),
    ('type: "HingeLoss" hinge_loss_param { norm: L2 }', [HINGE_X, HINGE_LABELS]),
    ('type: "ContrastiveLoss"', [PAIR_A, PAIR_B, SIMILAR]),
    ('type: "MultinomialLogisticLoss"', [PROBS, HINGE_LABELS]),
    ('type: "Accuracy" top: "a" top: "b" accuracy_param { top_k: 2 ignore_label: -1 }', [SCORES, LABELS]),
]


# The GPU against the CPU, case by case.
CASES = [LayerCase(text, bottoms, gpu=True) for text, bottoms in GPU_CASES]
globals().update(case_tests(CASES))
