"""SmoothL1Loss (Fast R-CNN's box regression loss, rbgirshick/caffe-fast-rcnn).

Bottoms: predictions x, targets t, and optionally inside weights w_in and outside weights
w_out (all of one shape). With ``d = w_in·(x - t)`` and ``σ = smooth_l1_loss_param.sigma``:

    f(d) = 0.5·σ²·d²        if |d| < 1/σ²
           |d| - 0.5/σ²     otherwise
    loss = Σ w_out·f(d) / N                      (N = the first axis, the batch or ROI count)

Backward, to x (and, negated, to t): ``loss_weight · w_out · w_in · f'(d) / N`` with
``f'(d) = σ²·d`` inside the quadratic zone and ``sign(d)`` outside. The weights get no
gradient.
"""
from __future__ import annotations

import numpy as np

from .loss import LossLayer
from .registry import register


@register
class SmoothL1LossLayer(LossLayer):
    """``Σ w_out·smoothL1_σ(w_in·(x - t)) / N``; gradient to the predictions and the targets."""

    type = "SmoothL1Loss"
    min_bottoms = 2
    max_bottoms = 4

    def setup(self, bottoms, tops):
        if len(bottoms) == 3:
            raise self.error("give 2 bottoms (predictions, targets) or 4 (with inside and outside weights)")
        self.sigma2 = float(self.param.smooth_l1_loss_param.sigma) ** 2

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        shape = bottoms[0].shape
        for i, b in enumerate(bottoms[1:], start=1):
            if b.count != bottoms[0].count:
                raise self.error(f"bottom {i} has shape {b.shape}; bottom 0 has {shape}: they must have one size")
        xp = self.xp
        self.diff = xp.empty(shape, dtype=np.float32)
        self.errors = xp.empty(shape, dtype=np.float32)
        self.quadratic = xp.empty(shape, dtype=bool)
        self.num = max(shape[0], 1) if shape else 1

    def divisor(self) -> float:
        """What the summed loss is divided by: N, the first axis (Fast R-CNN's rule)."""
        return float(self.num)

    def allow_backward_to(self, bottom_index):
        return bottom_index < 2

    def _weight(self, bottoms, index):
        return bottoms[index].data.reshape(bottoms[0].shape) if len(bottoms) > index else None

    def forward_cpu(self, bottoms, tops):
        xp, d, e = self.xp, self.diff, self.errors
        xp.subtract(bottoms[0].data, bottoms[1].data.reshape(d.shape), out=d)
        inside, outside = self._weight(bottoms, 2), self._weight(bottoms, 3)
        if inside is not None:
            d *= inside
        xp.abs(d, out=e)
        xp.less(e, 1.0 / self.sigma2, out=self.quadratic)
        e -= 0.5 / self.sigma2
        xp.copyto(e, 0.5 * self.sigma2 * d * d, where=self.quadratic)
        if outside is not None:
            e *= outside
        tops[0].data[...] = e.sum() / self.divisor()

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not (propagate_down[0] or propagate_down[1]):
            return
        xp, g = self.xp, self.errors   # reused as the gradient buffer
        xp.sign(self.diff, out=g)
        xp.copyto(g, self.sigma2 * self.diff, where=self.quadratic)
        for index in (2, 3):
            weight = self._weight(bottoms, index)
            if weight is not None:
                g *= weight
        g *= tops[0].diff / self.divisor()
        if propagate_down[0]:
            xp.copyto(bottoms[0].diff, g)
        if propagate_down[1]:
            xp.negative(g, out=bottoms[1].diff.reshape(g.shape))
