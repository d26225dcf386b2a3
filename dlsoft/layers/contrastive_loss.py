"""ContrastiveLoss (Caffe semantics, with ``legacy_version``)."""
from __future__ import annotations

import numpy as np

from .loss import LossLayer
from .registry import register


@register
class ContrastiveLossLayer(LossLayer):
    """Siamese loss on feature pairs ``a, b`` (N × C) and similarity labels ``y`` (N):
    ``d² = ||a - b||²``; ``loss = Σ [y ? d² : max(margin - d, 0)²] / (2N)``
    (``legacy_version``: ``max(margin - d², 0)`` for dissimilar pairs).

    Backward (a; b gets the negation): similar ``da = (a - b) · w / N``; dissimilar with a
    positive margin term ``da = -(margin - d) / (d + 1e-4) · (a - b) · w / N`` (legacy:
    ``-(a - b) · w / N``), else 0; ``w`` the loss weight.
    """

    type = "ContrastiveLoss"
    exact_num_bottoms = 3

    def setup(self, bottoms, tops):
        p = self.param.contrastive_loss_param
        self.margin, self.legacy = float(p.margin), bool(p.legacy_version)

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        a, b, y = bottoms
        self.num = a.shape[0]
        if a.shape != b.shape or y.count != self.num:
            raise self.error(f"expected two feature bottoms of one shape and {self.num} labels, "
                             f"got {a.shape}, {b.shape}, {y.shape}")
        self.diff = self.xp.empty((self.num, a.count // self.num if self.num else 0), dtype=np.float32)

    def allow_backward_to(self, bottom_index):
        return bottom_index != 2

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        xp.subtract(bottoms[0].data.reshape(self.diff.shape), bottoms[1].data.reshape(self.diff.shape),
                    out=self.diff)
        self.dist_sq = (self.diff * self.diff).sum(axis=1)
        self.similar = xp.trunc(bottoms[2].data.reshape(-1)) != 0
        if self.legacy:
            dissimilar = xp.maximum(self.margin - self.dist_sq, 0)
        else:
            dissimilar = xp.maximum(self.margin - xp.sqrt(self.dist_sq), 0) ** 2
        terms = xp.where(self.similar, self.dist_sq, dissimilar)
        xp.divide(terms.sum(), 2 * self.num, out=tops[0].data)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if propagate_down[2]:
            raise self.error("cannot backpropagate to label inputs")
        xp = self.xp
        if self.legacy:
            mdist = self.margin - self.dist_sq
            dissimilar = xp.where(mdist > 0, -1.0, 0.0)
        else:
            dist = xp.sqrt(self.dist_sq)
            mdist = self.margin - dist
            dissimilar = xp.where(mdist > 0, -mdist / (dist + 1e-4), 0.0)
        coefficient = xp.where(self.similar, 1.0, dissimilar).astype(np.float32)[:, None]
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                dx = bottoms[i].diff.reshape(self.diff.shape)
                xp.multiply(self.diff, coefficient, out=dx)
                dx *= tops[0].diff * (sign / self.num)
