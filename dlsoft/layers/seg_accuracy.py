"""SegAccuracy (DeepLab's segmentation metrics, also in the SegNet and ENet forks): forward only.

Bottoms: scores ``N×C×H×W`` and a label map ``N×1×H×W``. Each pixel's prediction is its
highest-scoring class (on a tie the higher class index, as the fork's partial sort on
(score, class) pairs gives); pixels whose label is in ``ignore_label`` are skipped and any
other label outside ``[0, C)`` is an error. Predictions go into a C×C confusion matrix
``M[label, prediction]``, cleared before each forward when ``reset`` (the default), else
accumulated across forwards (a metric over a whole test run). From M:

- PixelAccuracy: ``trace(M) / ΣM`` (0 for an empty matrix);
- ClassAccuracy: the mean recall ``M[c,c] / Σ_j M[c,j]`` over classes that occur;
- PixelIOU: the mean over all classes of ``M[c,c] / (row_c + col_c - M[c,c])``, a class
  neither labelled nor predicted counting 1.

The top is DeepLab's ``1×1×1×3`` of all three, in that order; with ``metric`` given
explicitly it is that one value alone (the fork's earlier, scalar form).
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from .base import Layer
from .registry import register


@register
class SegAccuracyLayer(Layer):
    """Pixel accuracy, mean class accuracy and mean IoU of a label map's argmax predictions."""

    type = "SegAccuracy"
    exact_num_bottoms = 2
    exact_num_tops = 1
    forward_only = True

    def setup(self, bottoms, tops):
        p = self.param.seg_accuracy_param
        self.ignore = tuple(p.ignore_label)
        self.reset = p.reset
        self.single = p.metric if p.HasField("metric") else None
        self.classes = bottoms[0].shape[1]
        self.confusion = self.xp.zeros((self.classes, self.classes), dtype=np.int64)

    def reshape(self, bottoms, tops):
        scores, labels = bottoms[0].shape, bottoms[1].shape
        if len(scores) != 4 or len(labels) != 4 or labels[1] != 1 or labels[0] != scores[0] \
                or labels[2:] != scores[2:]:
            raise self.error(f"bottoms must be scores N×C×H×W and labels N×1×H×W, got {scores} and {labels}")
        if scores[1] != self.classes:
            raise self.error(f"bottom has {scores[1]} classes, the layer was set up for {self.classes}")
        tops[0].reshape(() if self.single is not None else (1, 1, 1, 3))

    def forward_cpu(self, bottoms, tops):
        xp, c = self.xp, self.classes
        prediction = (c - 1 - xp.argmax(bottoms[0].data[:, ::-1], axis=1)).reshape(-1)
        label = bottoms[1].data.reshape(-1).astype(np.int64)
        keep = xp.ones(label.shape, dtype=bool)
        for ignored in self.ignore:
            keep &= label != ignored
        label, prediction = label[keep], prediction[keep]
        if label.size and (int(label.min()) < 0 or int(label.max()) >= c):
            bad = int(label.min()) if int(label.min()) < 0 else int(label.max())
            raise DataError(f"layer '{self.name}' (type SegAccuracy): unexpected label {bad}: labels must be "
                            f"in [0, {c}) or listed in seg_accuracy_param.ignore_label")
        if self.reset:
            self.confusion[...] = 0
        self.confusion += xp.bincount(label * c + prediction, minlength=c * c).reshape(c, c)
        m = self.confusion.astype(np.float64)
        hits, rows, cols = xp.diagonal(m), m.sum(axis=1), m.sum(axis=0)
        total = m.sum()
        pixel = hits.sum() / xp.maximum(total, 1)
        present = rows > 0
        recall = xp.where(present, hits / xp.maximum(rows, 1), 0).sum() / xp.maximum(present.sum(), 1)
        union = rows + cols - hits
        iou = xp.where(union == hits, 1.0, hits / xp.maximum(union, 1)).mean()
        values = xp.stack([pixel, recall, iou]).astype(np.float32)
        if self.single is None:
            tops[0].data[...] = values.reshape(1, 1, 1, 3)
        else:
            tops[0].data[...] = values[int(self.single)]
