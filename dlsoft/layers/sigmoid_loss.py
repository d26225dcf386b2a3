"""SigmoidCrossEntropyLoss (Caffe semantics)."""
from __future__ import annotations

import numpy as np

from .loss import LossLayer, normalization_mode, normalizer
from .registry import register


@register
class SigmoidCrossEntropyLossLayer(LossLayer):
    """``loss = Σ_valid [max(x, 0) - x·t + log(1 + exp(-|x|))] / normalizer`` (the stable
    form of ``-t·log σ(x) - (1 - t)·log(1 - σ(x))``); targets equal to ``ignore_label``
    are skipped. Backward: ``dx = (σ(x) - t) · loss_weight / normalizer``.
    Normalization default BATCH_SIZE (Caffe's, for compatibility with older nets).
    """

    type = "SigmoidCrossEntropyLoss"
    exact_num_bottoms = 2

    def setup(self, bottoms, tops):
        self.setup_ignore_label()
        self.mode = normalization_mode(self, "BATCH_SIZE")

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        if bottoms[0].count != bottoms[1].count:
            raise self.error(f"inputs must have the same count, got {bottoms[0].shape} and {bottoms[1].shape}")
        self.outer = bottoms[0].shape[0] if bottoms[0].num_axes else 1
        self.inner = bottoms[0].count // self.outer if self.outer else 0
        xp = self.xp
        self.work = xp.empty(bottoms[0].shape, dtype=np.float32)
        self.work2 = xp.empty(bottoms[0].shape, dtype=np.float32)
        self.valid = xp.empty(bottoms[0].shape, dtype=np.float32) if self.has_ignore else None

    def forward_cpu(self, bottoms, tops):
        xp, w, w2 = self.xp, self.work, self.work2
        x, t = bottoms[0].data, bottoms[1].data.reshape(self.work.shape)
        xp.abs(x, out=w)
        xp.negative(w, out=w)
        xp.exp(w, out=w)
        xp.log1p(w, out=w)
        xp.multiply(x, t, out=w2)
        w -= w2
        xp.maximum(x, 0, out=w2)
        w += w2
        count = None
        if self.has_ignore:
            xp.trunc(t, out=w2)  # Caffe compares static_cast<int>(target) with ignore_label
            xp.not_equal(w2, self.ignore_label, out=self.valid)
            w *= self.valid
            count = self.valid.sum()
        self.norm = normalizer(self.mode, self.outer, self.inner, count)
        xp.divide(w.sum(), self.norm, out=tops[0].data)

    def backward_cpu(self, tops, propagate_down, bottoms):
        self.refuse_label_backward(propagate_down)
        if not propagate_down[0]:
            return
        xp = self.xp
        dx = bottoms[0].diff
        xp.multiply(bottoms[0].data, 0.5, out=dx)
        xp.tanh(dx, out=dx)
        dx *= 0.5
        dx += 0.5
        dx -= bottoms[1].data.reshape(dx.shape)
        if self.has_ignore:
            dx *= self.valid
        dx *= tops[0].diff / self.norm
