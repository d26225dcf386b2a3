"""SegAccuracy (DeepLab's pixel accuracy, mean class accuracy and mean IoU): values against
a closed form computed pixel by pixel, ignore_label, reset, errors."""
from __future__ import annotations

import numpy as np
import pytest
from gradcheck import compare_devices, covers, run_layer

from dlsoft.errors import DataError



def scores_and_labels(seed=0, n=2, c=4, h=5, w=6, ignore=255):
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((n, c, h, w)).astype(np.float32)
    labels = rng.integers(0, c, (n, 1, h, w)).astype(np.float32)
    labels[rng.random(labels.shape) < 0.2] = ignore
    return scores, labels


def closed_form(scores, labels, ignore=(255,)):
    """The three metrics, counted pixel by pixel."""
    c = scores.shape[1]
    m = np.zeros((c, c))
    for n, _, y, x in np.ndindex(labels.shape):
        label = int(labels[n, 0, y, x])
        if label in ignore:
            continue
        m[label, int(np.argmax(scores[n, :, y, x]))] += 1
    hits = np.diag(m)
    recalls = [hits[k] / m[k].sum() for k in range(c) if m[k].sum()]
    ious = [1.0 if m[k].sum() + m[:, k].sum() == 0 else hits[k] / (m[k].sum() + m[:, k].sum() - hits[k])
            for k in range(c)]
    return np.array([hits.sum() / m.sum(), np.mean(recalls), np.mean(ious)])


@covers("SegAccuracy", "reference")
def test_seg_accuracy_matches_closed_form():
    scores, labels = scores_and_labels(seed=1)
    _, _, tops = run_layer('type: "SegAccuracy" seg_accuracy_param { ignore_label: 255 }', [scores, labels])
    assert tops[0].shape == (1, 1, 1, 3)
    np.testing.assert_allclose(tops[0].data.reshape(-1), closed_form(scores, labels), rtol=1e-6)


@pytest.mark.parametrize("metric, index", [("PixelAccuracy", 0), ("ClassAccuracy", 1), ("PixelIOU", 2)])
def test_seg_accuracy_single_metric(metric, index):
    scores, labels = scores_and_labels(seed=2)
    _, _, tops = run_layer(f'type: "SegAccuracy" seg_accuracy_param {{ metric: {metric} ignore_label: 255 }}',
                           [scores, labels])
    assert tops[0].shape == ()
    assert float(tops[0].data) == pytest.approx(closed_form(scores, labels)[index], rel=1e-6)


def test_seg_accuracy_reset_false_accumulates_over_forwards():
    (s1, l1), (s2, l2) = scores_and_labels(seed=3), scores_and_labels(seed=4)
    layer, bottoms, tops = run_layer('type: "SegAccuracy" seg_accuracy_param { ignore_label: 255 reset: false }',
                                     [s1, l1])
    bottoms[0].data[...], bottoms[1].data[...] = s2, l2
    layer.forward(bottoms, tops)
    both = closed_form(np.concatenate([s1, s2]), np.concatenate([l1, l2]))
    np.testing.assert_allclose(tops[0].data.reshape(-1), both, rtol=1e-6)


def test_seg_accuracy_rejects_unexpected_labels():
    scores, labels = scores_and_labels(seed=5)
    with pytest.raises(DataError, match="unexpected label 255"):
        run_layer('type: "SegAccuracy"', [scores, labels])


@covers("SegAccuracy", "gpu")
@pytest.mark.gpu
def test_seg_accuracy_gpu_matches_cpu():
    scores, labels = scores_and_labels(seed=6)
    compare_devices('type: "SegAccuracy" seg_accuracy_param { ignore_label: 255 }', [scores, labels])
