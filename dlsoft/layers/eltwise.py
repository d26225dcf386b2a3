"""Eltwise (Caffe semantics): element-wise PROD, SUM (with coefficients) or MAX of the bottoms."""
from __future__ import annotations

import numpy as np

from ..protos import caffe_pb2
from .base import Layer
from .registry import register

_Op = caffe_pb2.EltwiseParameter
PROD, SUM, MAX = _Op.PROD, _Op.SUM, _Op.MAX


@register
class EltwiseLayer(Layer):
    """Element-wise over same-shaped bottoms: PROD ``Π x_i``; SUM ``Σ c_i x_i`` (``coeff``,
    default 1); MAX ``max_i x_i`` (ties: bottom 1 beats bottom 0, later bottoms must be
    strictly greater, as in Caffe).

    Backward: SUM ``dx_i = c_i dy``; MAX routes ``dy`` to the arg-max bottom; PROD
    ``dx_i = dy Π_{j≠i} x_j`` (``stable_prod_grad``, default) or ``dy · y / x_i``.
    """

    type = "Eltwise"
    min_bottoms = 2
    exact_num_tops = 1

    def setup(self, bottoms, tops):
        p = self.param.eltwise_param
        self.op = p.operation
        if p.coeff and len(p.coeff) != len(bottoms):
            raise self.error(f"{len(p.coeff)} coeff(s) for {len(bottoms)} bottoms (give one per bottom)")
        if p.coeff and self.op != SUM:
            raise self.error("coeff is only allowed with operation SUM")
        self.coeffs = [float(c) for c in p.coeff] or [1.0] * len(bottoms)

    def reshape(self, bottoms, tops):
        for bottom in bottoms[1:]:
            if bottom.shape != bottoms[0].shape:
                raise self.error(f"bottom '{bottom.name}' shape {bottom.shape} differs from {bottoms[0].shape}")
        tops[0].reshape(bottoms[0].shape)
        xp = self.xp
        if self.op == MAX:
            self.argmax = xp.empty(bottoms[0].shape, dtype=np.int32)
            self.flags = xp.empty(bottoms[0].shape, dtype=bool)
        if self.op == SUM and any(c != 1.0 for c in self.coeffs):
            self.scaled = xp.empty(bottoms[0].shape, dtype=np.float32)

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        y = tops[0].data
        if self.op == PROD:
            xp.multiply(bottoms[0].data, bottoms[1].data, out=y)
            for bottom in bottoms[2:]:
                y *= bottom.data
        elif self.op == SUM:
            xp.multiply(bottoms[0].data, self.coeffs[0], out=y)
            for coeff, bottom in zip(self.coeffs[1:], bottoms[1:]):
                if coeff == 1.0:
                    y += bottom.data
                else:
                    xp.multiply(bottom.data, coeff, out=self.scaled)
                    y += self.scaled
        elif self.op == MAX:
            a, b = bottoms[0].data, bottoms[1].data
            xp.less_equal(a, b, out=self.flags)
            xp.copyto(self.argmax, self.flags)  # 0 where bottom 0 wins, 1 on ties too
            xp.maximum(a, b, out=y)
            for i, bottom in enumerate(bottoms[2:], start=2):
                xp.greater(bottom.data, y, out=self.flags)
                xp.copyto(self.argmax, i, where=self.flags)
                xp.maximum(y, bottom.data, out=y)
        else:
            raise self.error(f"unknown eltwise operation {self.op}")

    def backward_cpu(self, tops, propagate_down, bottoms):
        xp = self.xp
        dy = tops[0].diff
        for i, (down, bottom) in enumerate(zip(propagate_down, bottoms)):
            if not down:
                continue
            dx = bottom.diff
            if self.op == SUM:
                xp.multiply(dy, self.coeffs[i], out=dx)
            elif self.op == MAX:
                xp.equal(self.argmax, i, out=self.flags)
                xp.multiply(dy, self.flags, out=dx)
            elif self.param.eltwise_param.stable_prod_grad:
                others = [b.data for j, b in enumerate(bottoms) if j != i]
                xp.multiply(dy, others[0], out=dx)
                for other in others[1:]:
                    dx *= other
            else:
                xp.divide(tops[0].data, bottom.data, out=dx)
                dx *= dy
