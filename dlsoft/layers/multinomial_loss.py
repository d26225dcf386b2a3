"""MultinomialLogisticLoss (Caffe semantics): ``-Σ log p[label] / N`` on given probabilities."""
from __future__ import annotations

import numpy as np

from .loss import LOG_THRESHOLD, LossLayer, read_labels
from .registry import register


@register
class MultinomialLogisticLossLayer(LossLayer):
    """On probabilities ``p`` (N × K): ``loss = -Σ_n log(max(p[n, l_n], 1e-20)) / N``.
    Backward: ``dx[n, l_n] = -loss_weight / (N · max(p[n, l_n], 1e-20))``, 0 elsewhere."""

    type = "MultinomialLogisticLoss"
    exact_num_bottoms = 2

    def setup(self, bottoms, tops):
        self.ignore_label, self.has_ignore = 0, False

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        self.num = bottoms[0].shape[0]
        self.dim = bottoms[0].count // self.num if self.num else 0
        if bottoms[1].count != self.num:
            raise self.error(f"expected {self.num} labels, got bottom of shape {bottoms[1].shape}")
        xp = self.xp
        self.labels = xp.empty(self.num, dtype=np.int64)
        self.rows = xp.arange(self.num, dtype=np.int64) * self.dim
        self.pick = xp.empty(self.num, dtype=np.int64)
        self.picked = xp.empty(self.num, dtype=np.float32)

    def forward_cpu(self, bottoms, tops):
        self._forward(bottoms, tops, check_labels=True)

    def forward_gpu(self, bottoms, tops):
        self._forward(bottoms, tops, check_labels=False)  # a range check would wait for the GPU

    def _forward(self, bottoms, tops, check_labels: bool):
        xp, p = self.xp, self.picked
        read_labels(self, bottoms[1].data, self.labels, self.dim, check_labels)
        xp.add(self.rows, self.labels, out=self.pick)
        xp.take(bottoms[0].data.reshape(-1), self.pick, out=p)
        xp.maximum(p, LOG_THRESHOLD, out=p)
        xp.divide(-xp.log(p).sum(), self.num, out=tops[0].data)

    def backward_cpu(self, tops, propagate_down, bottoms):
        self.refuse_label_backward(propagate_down)
        if not propagate_down[0]:
            return
        dx = bottoms[0].diff.reshape(-1)
        dx[...] = 0
        dx[self.pick] = (tops[0].diff * (-1.0 / self.num)) / self.picked
