"""InnerProduct (Caffe semantics): ``y = x · Wᵀ + b`` over the axes from ``axis`` on.

Written once against the blobs' array module (numpy or cupy): the GEMM is cuBLAS on a GPU.
"""
from __future__ import annotations

import numpy as np

from .base import Layer
from .fillers import fill
from .helpers import canonical_axis, wants_param_grad
from .registry import register


@register
class InnerProductLayer(Layer):
    """Fully connected: ``y = x·Wᵀ + b`` with ``x`` flattened from ``axis`` to M×K.

    ``W`` is ``num_output × K`` (``K × num_output`` with ``transpose: true``, then
    ``y = x·W``); ``b`` is ``num_output``. Backward: ``dW += dyᵀ·x`` (``xᵀ·dy``),
    ``db += Σ_rows dy``, ``dx = dy·W`` (``dy·Wᵀ``).
    """

    type = "InnerProduct"
    exact_num_bottoms = 1
    exact_num_tops = 1

    def setup(self, bottoms, tops):
        p = self.param.inner_product_param
        if p.num_output <= 0:
            raise self.error("inner_product_param.num_output must be positive")
        self.axis = canonical_axis(self, bottoms[0], p.axis)
        self.transpose = p.transpose
        self.bias_term = p.bias_term
        self.num_input = bottoms[0].count_from(self.axis)
        if not self.blobs:
            shape = (self.num_input, p.num_output) if self.transpose else (p.num_output, self.num_input)
            self.blobs = [self.make_blob(shape, "weight")]
            fill(self.blobs[0], p.weight_filler)
            if self.bias_term:
                self.blobs.append(self.make_blob((p.num_output,), "bias"))
                fill(self.blobs[1], p.bias_filler)
        self._weight_grad = self.xp.empty(self.blobs[0].shape, dtype=np.float32)
        self._bias_grad = self.xp.empty(p.num_output, dtype=np.float32) if self.bias_term else None

    def reshape(self, bottoms, tops):
        bottom = bottoms[0]
        if bottom.count == 0:
            raise self.error(f"bottom of shape {bottom.shape} is empty (a zero batch or zero inputs)")
        if bottom.count_from(self.axis) != self.num_input:
            raise self.error(f"input size {bottom.count_from(self.axis)} (shape {bottom.shape} "
                             f"flattened from axis {self.axis}) does not match the weights' {self.num_input}")
        self.rows = bottom.count_from(0, self.axis)
        tops[0].reshape(bottom.shape[:self.axis] + (self.param.inner_product_param.num_output,))

    def _weight_t(self):
        """W as (K, num_output), so that y = x · weight_t in both layouts."""
        weight = self.blobs[0].data
        return weight if self.transpose else weight.T

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        x = bottoms[0].data.reshape(self.rows, self.num_input)
        y = tops[0].data.reshape(self.rows, -1)
        xp.matmul(x, self._weight_t(), out=y)
        if self.bias_term:
            y += self.blobs[1].data

    def backward_cpu(self, tops, propagate_down, bottoms):
        xp = self.xp
        dy = tops[0].diff.reshape(self.rows, -1)
        x = bottoms[0].data.reshape(self.rows, self.num_input)
        if wants_param_grad(self, 0):
            if self.transpose:
                xp.matmul(x.T, dy, out=self._weight_grad)
            else:
                xp.matmul(dy.T, x, out=self._weight_grad)
            self.blobs[0].diff += self._weight_grad
        if self.bias_term and wants_param_grad(self, 1):
            xp.sum(dy, axis=0, out=self._bias_grad)
            self.blobs[1].diff += self._bias_grad
        if propagate_down[0]:
            xp.matmul(dy, self._weight_t().T, out=bottoms[0].diff.reshape(self.rows, self.num_input))
