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

from .base import TRAIN
from .dropout import DropoutLayer
from .neuron import ELULayer
from .registry import register


@register
class SeLuLayer(ELULayer):
    """``y = λ·(x > 0 ? x : α·(exp(x) - 1))`` (λ times ELU); ``dx = dy·(y > 0 ? λ : y + λ·α)``."""

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
        super().compute(x, y)
        y *= self.lam

    def gradient(self, x, y, dy, dx):
        xp, w = self.xp, self.work
        xp.add(y, self.lam * self.alpha, out=w)
        xp.copyto(w, self.lam, where=y > 0)
        xp.multiply(dy, w, out=dx)


@register
class SeLuDropoutLayer(DropoutLayer):
    """Alpha dropout: TRAIN ``y = a·(m ? x : α') + b``, ``dx = dy·m·a``; TEST ``y = x``.

    Dropout's mask, in-place handling and backward (``dx = dy·m·scale``, here ``scale = a``),
    with the affine shift and the dropped units' value added to its forward.
    """

    type = "SeLuDropout"

    def setup(self, bottoms, tops):
        p = self.param.selu_dropout_param
        self.ratio, alpha = float(p.dropout_ratio), float(p.alpha)
        if not 0.0 < self.ratio < 1.0:
            raise self.error(f"selu_dropout_param.dropout_ratio {self.ratio} must be in (0, 1)")
        q = 1.0 - self.ratio
        self.scale = (q * (1.0 + alpha * alpha * (1.0 - q))) ** -0.5   # a
        self.shift = -self.scale * (1.0 - q) * alpha                   # b
        self.dropped_value = self.scale * alpha + self.shift          # what a dropped unit becomes

    def forward_cpu(self, bottoms, tops):
        super().forward_cpu(bottoms, tops)   # TRAIN: y = a·x·m
        if self.phase == TRAIN:
            y = tops[0].data
            y += self.shift
            self.xp.copyto(y, np.float32(self.dropped_value), where=~self.mask)
