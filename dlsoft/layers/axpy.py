"""Axpy (SENet's fused scale-and-add, hujie-frank/SENet): ``top = a · x + y``.

Bottoms: ``a`` (N×C, or N×C×1×1: one scale per image and channel, the squeeze-excitation
weights), ``x`` and ``y`` (N×C×H×W). Per channel: ``top[n, c] = a[n, c]·x[n, c] + y[n, c]``.
Backward: ``da[n, c] = Σ_hw dtop·x``, ``dx = a·dtop``, ``dy = dtop``.
"""
from __future__ import annotations

from .base import Layer
from .registry import register


@register
class AxpyLayer(Layer):
    """``top = a·x + y`` with one scale ``a[n, c]`` per image and channel."""

    type = "Axpy"
    exact_num_bottoms = 3
    exact_num_tops = 1

    def reshape(self, bottoms, tops):
        a, x, y = (b.shape for b in bottoms)
        if len(x) < 2 or x != y:
            raise self.error(f"bottoms 1 and 2 (x and y) must have one shape of at least 2 axes, got {x} and {y}")
        if a[:2] != x[:2] or bottoms[0].count != x[0] * x[1]:
            raise self.error(f"bottom 0 (the scale) must be N×C (or N×C×1×1) for x of shape {x}, got {a}")
        self.view = (x[0], x[1], bottoms[1].count_from(2))
        tops[0].reshape(x)

    def forward_cpu(self, bottoms, tops):
        n, c, plane = self.view
        a = bottoms[0].data.reshape(n, c, 1)
        top = tops[0].data.reshape(n, c, plane)
        self.xp.multiply(a, bottoms[1].data.reshape(n, c, plane), out=top)
        top += bottoms[2].data.reshape(n, c, plane)

    def backward_cpu(self, tops, propagate_down, bottoms):
        xp = self.xp
        n, c, plane = self.view
        dtop = tops[0].diff.reshape(n, c, plane)
        if propagate_down[0]:
            product = dtop * bottoms[1].data.reshape(n, c, plane)
            xp.sum(product, axis=2, out=bottoms[0].diff.reshape(n, c))
        if propagate_down[1]:
            xp.multiply(dtop, bottoms[0].data.reshape(n, c, 1), out=bottoms[1].diff.reshape(n, c, plane))
        if propagate_down[2]:
            xp.copyto(bottoms[2].diff.reshape(n, c, plane), dtop)
