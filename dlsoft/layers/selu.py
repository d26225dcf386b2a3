"""SeLu and SeLuDropout (the self-normalising nets' Caffe layers, Klambauer et al. 2017).

SeLu: ``y = λ·x`` for ``x > 0``, ``y = λ·α·(exp(x) - 1)`` otherwise (``selu_param``:
``lambda`` 1.0507, ``alpha`` 1.6733); ``dx = dy·λ`` where ``y > 0``, ``dy·(y + λ·α)``
elsewhere — written from the output (its sign is the input's), so it also works in place,
where the fork's own backward would read the overwritten input.

SeLuDropout ("alpha dropout", ``selu_dropout_param``: ``dropout_ratio`` p (default 0.1),
``alpha`` α' = -λ·α (default -1.7581)): at TRAIN, with ``m ~ Bernoulli(q = 1 - p)``,
``y = a·(m ? x : α') + b`` where ``a = (q·(1 + α'²·(1 - q)))^(-1/2)`` and
``b = -a·(1 - q)·α'``, which keeps zero mean and unit variance; ``dx = dy·m·a``. At TEST
it is the identity.
"""
from __future__ import annotations

import numpy as np

from .. import random as dl_random
from .base import TRAIN, Layer
from .neuron import NeuronLayer
from .registry import register


@register
class SeLuLayer(NeuronLayer):
    """``y = λ·(x > 0 ? x : α·(exp(x) - 1))``; ``dx = dy·(y > 0 ? λ : y + λ·α)``."""

    type = "SeLu"
    forward_kernel = ("float32 x, float32 lam, float32 alpha", "float32 y",
                      "y = x > 0 ? lam * x : lam * alpha * expm1(x)")
    backward_kernel = ("float32 y, float32 dy, float32 lam, float32 alpha", "float32 dx",
                       "dx = y > 0 ? dy * lam : dy * (y + lam * alpha)")

    def setup(self, bottoms, tops):
        p = self.param.selu_param
        self.lam, self.alpha = float(getattr(p, "lambda")), float(p.alpha)

    def scalars(self):
        return {"lam": self.lam, "alpha": self.alpha}

    def compute(self, x, y):
        xp, w = self.xp, self.work
        xp.minimum(x, 0, out=w)
        xp.expm1(w, out=w)
        w *= self.alpha
        xp.maximum(x, 0, out=y)
        y += w
        y *= self.lam

    def gradient(self, x, y, dy, dx):
        xp, w = self.xp, self.work
        xp.add(y, self.lam * self.alpha, out=w)
        xp.copyto(w, self.lam, where=y > 0)
        xp.multiply(dy, w, out=dx)


@register
class SeLuDropoutLayer(Layer):
    """Alpha dropout: TRAIN ``y = a·(m ? x : α') + b``, ``dx = dy·m·a``; TEST ``y = x``."""

    type = "SeLuDropout"
    exact_num_bottoms = 1
    exact_num_tops = 1
    supports_in_place = True

    def setup(self, bottoms, tops):
        p = self.param.selu_dropout_param
        self.ratio, alpha = float(p.dropout_ratio), float(p.alpha)
        if not 0.0 < self.ratio < 1.0:
            raise self.error(f"selu_dropout_param.dropout_ratio {self.ratio} must be in (0, 1)")
        q = 1.0 - self.ratio
        self.a = (q * (1.0 + alpha * alpha * (1.0 - q))) ** -0.5
        self.b = -self.a * (1.0 - q) * alpha
        self.dropped_value = self.a * alpha + self.b  # what a dropped unit becomes

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
                xp.copyto(y, x)
            return
        dl_random.xp_rng(xp).random(dtype=np.float32, out=self.uniform)
        xp.greater_equal(self.uniform, self.ratio, out=self.mask)   # kept with probability q
        xp.multiply(x, self.a, out=y)
        y += self.b
        xp.copyto(y, np.float32(self.dropped_value), where=~self.mask)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        xp, dy, dx = self.xp, tops[0].diff, bottoms[0].diff
        if self.phase != TRAIN:
            if tops[0] is not bottoms[0]:
                xp.copyto(dx, dy)
            return
        xp.multiply(dy, self.mask, out=dx)
        dx *= self.a
