"""MultinomialLogisticLoss (Caffe semantics): ``-Σ log p[label] / N`` on given probabilities."""
from __future__ import annotations

import numpy as np

from .loss import LOG_THRESHOLD, RowLabelLossLayer
from .registry import register


@register
class MultinomialLogisticLossLayer(RowLabelLossLayer):
    """On probabilities ``p`` (N × K): ``loss = -Σ_n log(max(p[n, l_n], 1e-20)) / N``.
    Backward: ``dx[n, l_n] = -loss_weight / (N · max(p[n, l_n], 1e-20))``, 0 elsewhere."""

    type = "MultinomialLogisticLoss"

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        self.picked = self.xp.empty(self.num, dtype=np.float32)

    def forward_loss(self, bottoms, tops):
        xp, p = self.xp, self.picked
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
