"""Reduction (Caffe semantics): SUM, ASUM, SUMSQ or MEAN over the axes from ``axis`` on."""
from __future__ import annotations

import numpy as np

from ..protos import caffe_pb2
from .base import Layer
from .helpers import canonical_axis
from .registry import register

_Op = caffe_pb2.ReductionParameter
R_SUM, R_ASUM, R_SUMSQ, R_MEAN = _Op.SUM, _Op.ASUM, _Op.SUMSQ, _Op.MEAN


@register
class ReductionLayer(Layer):
    """Reduces all axes from ``axis`` (default 0) on: the top has shape ``shape[:axis]``.

    ``y = coeff · op(x)`` with op SUM ``Σx``, ASUM ``Σ|x|``, SUMSQ ``Σx²``, MEAN ``Σx / n``.
    Backward: ``dx = coeff · dy`` times 1, ``sign(x)``, ``2x`` or ``1/n``.
    """

    type = "Reduction"
    exact_num_bottoms = 1
    exact_num_tops = 1

    def setup(self, bottoms, tops):
        self.op = self.param.reduction_param.operation
        if self.op not in (R_SUM, R_ASUM, R_SUMSQ, R_MEAN):
            raise self.error(f"unknown reduction operation {self.op}")

    def reshape(self, bottoms, tops):
        axis = canonical_axis(self, bottoms[0], self.param.reduction_param.axis)
        self.num, self.dim = bottoms[0].count_from(0, axis), bottoms[0].count_from(axis)
        tops[0].reshape(bottoms[0].shape[:axis])
        if self.op in (R_ASUM, R_SUMSQ):
            self.work = self.xp.empty((self.num, self.dim), dtype=np.float32)

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        x = bottoms[0].data.reshape(self.num, self.dim)
        if self.op == R_ASUM:
            x = xp.abs(x, out=self.work)
        elif self.op == R_SUMSQ:
            x = xp.multiply(x, x, out=self.work)
        y = tops[0].data.reshape(self.num)
        xp.sum(x, axis=1, out=y)
        coeff = self.param.reduction_param.coeff / (self.dim if self.op == R_MEAN else 1)
        if coeff != 1.0:
            y *= coeff

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        xp = self.xp
        coeff = self.param.reduction_param.coeff / (self.dim if self.op == R_MEAN else 1)
        dy = tops[0].diff.reshape(self.num, 1)
        x = bottoms[0].data.reshape(self.num, self.dim)
        dx = bottoms[0].diff.reshape(self.num, self.dim)
        if self.op == R_ASUM:
            xp.sign(x, out=dx)
            dx *= dy
        elif self.op == R_SUMSQ:
            xp.multiply(x, dy, out=dx)
            coeff *= 2
        else:
            xp.copyto(dx, dy)
        if coeff != 1.0:
            dx *= coeff
