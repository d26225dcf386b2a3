"""Dropout (Caffe semantics, scaled at TRAIN time)."""
from __future__ import annotations

import numpy as np

from .. import random as dl_random
from .base import TRAIN, Layer
from .registry import register


@register
class DropoutLayer(Layer):
    """TRAIN: ``y = x · m / (1 - ratio)`` with ``m ~ Bernoulli(1 - ratio)`` drawn from
    ``dlsoft.random``; TEST: ``y = x``. Backward applies the same mask and scale."""

    type = "Dropout"
    exact_num_bottoms = 1
    exact_num_tops = 1
    supports_in_place = True

    def setup(self, bottoms, tops):
        self.ratio = float(self.param.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise self.error(f"dropout_ratio {self.ratio} must be in [0, 1)")
        self.scale = 1.0 / (1.0 - self.ratio)

    def reshape(self, bottoms, tops):
        if tops[0] is not bottoms[0]:
            tops[0].reshape(bottoms[0].shape)
        if self.phase == TRAIN:
            self.uniform = self.xp.empty(bottoms[0].shape, dtype=np.float32)
            self.mask = self.xp.empty(bottoms[0].shape, dtype=bool)

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        x, y = bottoms[0].data, tops[0].data
        if self.phase != TRAIN:
            if tops[0] is not bottoms[0]:
                y[...] = x
            return
        dl_random.xp_rng(xp).random(dtype=np.float32, out=self.uniform)
        xp.greater_equal(self.uniform, self.ratio, out=self.mask)
        xp.multiply(x, self.mask, out=y)
        y *= self.scale

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        dy, dx = tops[0].diff, bottoms[0].diff
        if self.phase != TRAIN:
            if tops[0] is not bottoms[0]:
                dx[...] = dy
            return
        self.xp.multiply(dy, self.mask, out=dx)
        dx *= self.scale
