"""Accuracy (Caffe semantics): top-k accuracy, overall and per class, with ``ignore_label``."""
from __future__ import annotations

import numpy as np

from .base import Layer
from .helpers import canonical_axis, outer_dim_inner
from .loss import read_labels
from .registry import register


@register
class AccuracyLayer(Layer):
    """Fraction of valid positions whose label is among the ``top_k`` scores along ``axis``
    (a label counts as correct when fewer than ``top_k`` classes score strictly higher).
    Optional second top: the accuracy of each class (0 for classes absent from the batch).
    """

    type = "Accuracy"
    forward_only = True
    exact_num_bottoms = 2
    min_tops = 1
    max_tops = 2

    def setup(self, bottoms, tops):
        p = self.param.accuracy_param
        self.top_k = int(p.top_k)
        self.has_ignore = p.HasField("ignore_label")
        self.ignore_label = int(p.ignore_label)

    def reshape(self, bottoms, tops):
        axis = canonical_axis(self, bottoms[0], self.param.accuracy_param.axis)
        self.outer, self.dim, self.inner = outer_dim_inner(bottoms[0].shape, axis)
        if self.top_k > self.dim:
            raise self.error(f"top_k ({self.top_k}) must not exceed the number of classes ({self.dim})")
        if self.outer * self.inner != bottoms[1].count:
            raise self.error(f"number of labels ({bottoms[1].count}) must equal outer × inner of the "
                             f"prediction shape {bottoms[0].shape} at axis {axis} ({self.outer * self.inner})")
        tops[0].reshape(())
        if len(tops) > 1:
            tops[1].reshape((self.dim,))
        self.labels = self.xp.empty((self.outer, self.inner), dtype=np.int64)

    def forward_cpu(self, bottoms, tops):
        self._forward(bottoms, tops, check_labels=True)

    def forward_gpu(self, bottoms, tops):
        self._forward(bottoms, tops, check_labels=False)  # a range check would wait for the GPU

    def _forward(self, bottoms, tops, check_labels: bool):
        xp = self.xp
        scores = bottoms[0].data.reshape(self.outer, self.dim, self.inner)
        read_labels(self, bottoms[1].data, self.labels, self.dim, check_labels)
        labels = self.labels
        valid = (labels != self.ignore_label) if self.has_ignore else xp.ones(labels.shape, dtype=bool)
        labels *= valid
        true_scores = xp.take_along_axis(scores, labels[:, None, :], axis=1)
        better = (scores > true_scores).sum(axis=1)
        correct = (better < self.top_k) & valid
        count = valid.sum()
        xp.divide(correct.sum(), xp.maximum(count, 1), out=tops[0].data)
        if len(tops) > 1:
            flat = labels.reshape(-1)
            per_class = xp.bincount(flat, weights=valid.reshape(-1).astype(np.float32), minlength=self.dim)
            hits = xp.bincount(flat, weights=correct.reshape(-1).astype(np.float32), minlength=self.dim)
            xp.divide(hits, xp.maximum(per_class, 1), out=tops[1].data)

    def allow_backward_to(self, bottom_index):
        return False
