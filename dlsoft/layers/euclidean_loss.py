"""EuclideanLoss (Caffe semantics): ``Σ (a - b)² / 2N``."""
from __future__ import annotations

import numpy as np

from .loss import LossLayer
from .registry import register


@register
class EuclideanLossLayer(LossLayer):
    """``loss = Σ (a - b)² / (2N)``, N the first dimension.
    Backward: ``da = (a - b) · loss_weight / N``, ``db = -da``. Both bottoms get gradients."""

    type = "EuclideanLoss"
    exact_num_bottoms = 2

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        if bottoms[0].count != bottoms[1].count:
            raise self.error(f"bottoms must have the same count, got {bottoms[0].shape} and {bottoms[1].shape}")
        self.num = bottoms[0].shape[0] if bottoms[0].num_axes else 1
        self.diff = self.xp.empty(bottoms[0].shape, dtype=np.float32)

    def allow_backward_to(self, bottom_index):
        return True

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        xp.subtract(bottoms[0].data, bottoms[1].data.reshape(self.diff.shape), out=self.diff)
        flat = self.diff.reshape(-1)
        xp.divide(xp.dot(flat, flat), 2 * self.num, out=tops[0].data)

    def backward_cpu(self, tops, propagate_down, bottoms):
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                self.xp.multiply(self.diff, tops[0].diff * (sign / self.num),
                                 out=bottoms[i].diff.reshape(self.diff.shape))
