"""HingeLoss (Caffe semantics: L1 or L2 one-vs-all hinge)."""
from __future__ import annotations

import numpy as np

from .loss import RowLabelLossLayer
from .registry import register


@register
class HingeLossLayer(RowLabelLossLayer):
    """One-vs-all hinge on scores ``x`` (N × K) with labels ``l``: with ``δ_nk = +1`` if
    ``k = l_n`` else ``-1``, ``m_nk = max(0, 1 - δ_nk · x_nk)``;
    L1: ``loss = Σ m / N``; L2: ``loss = Σ m² / N``.

    Backward: L1 ``dx = -δ · [m > 0] · loss_weight / N``; L2 ``dx = -2 δ · m · loss_weight / N``.
    """

    type = "HingeLoss"

    def setup(self, bottoms, tops):
        super().setup(bottoms, tops)
        p = self.param.hinge_loss_param
        self.squared = p.norm == p.L2

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        self.margins = self.xp.empty(bottoms[0].count, dtype=np.float32)

    def forward_loss(self, bottoms, tops):
        xp, m = self.xp, self.margins
        xp.copyto(m, bottoms[0].data.reshape(-1))
        m[self.pick] *= -1
        m += 1
        xp.maximum(m, 0, out=m)
        total = xp.dot(m, m) if self.squared else m.sum()
        xp.divide(total, self.num, out=tops[0].data)

    def backward_cpu(self, tops, propagate_down, bottoms):
        self.refuse_label_backward(propagate_down)
        if not propagate_down[0]:
            return
        xp = self.xp
        dx = bottoms[0].diff.reshape(-1)
        if self.squared:
            xp.multiply(self.margins, 2.0, out=dx)
        else:
            xp.sign(self.margins, out=dx)
        dx[self.pick] *= -1
        dx *= tops[0].diff / self.num
