"""BN (SegNet's batch normalisation with its own affine part, alexgkendall/caffe-segnet).

Blobs: ``scale`` and ``shift``, each ``1×C×1×1``, filled by ``bn_param.scale_filler`` and
``shift_filler`` (Caffe's default filler, constant 0, when absent; PSPNet's names
``slope_filler`` / ``bias_filler`` are read too). Both are learnable.

``bn_mode: LEARN`` (the default): μ and σ² are the batch's statistics per channel over N
and the spatial axes (σ² biased, ``E(x²) - (Ex)²``), ``x̂ = (x - μ)/sqrt(σ² + eps)`` and
``y = scale·x̂ + shift``; optional tops 1 and 2 receive μ and σ² (``1×C×1×1``).
The fork keeps no running statistics: SegNet's ``compute_bn_statistics.py`` folds them
into scale and shift for ``bn_mode: INFERENCE``, where ``y = scale·x + shift``.
eps is the fork's fixed 1e-9 unless ``bn_param.eps`` is given.

Backward, LEARN: ``dshift = Σ dy``, ``dscale = Σ dy·x̂``,
``dx = scale/sqrt(σ² + eps) · (dy - mean(dy) - x̂·mean(dy·x̂))``; INFERENCE:
``dshift = Σ dy``, ``dscale = Σ dy·x``, ``dx = scale·dy``.
"""
from __future__ import annotations

import numpy as np

from ..protos import caffe_pb2
from .base import Layer
from .fillers import fill
from .helpers import wants_param_grad
from .registry import register

LEARN = caffe_pb2.BNParameter.LEARN


@register
class BNLayer(Layer):
    """SegNet's BN: batch statistics and a per-channel scale and shift (or the folded affine form)."""

    type = "BN"
    exact_num_bottoms = 1
    min_tops = 1
    max_tops = 3

    def setup(self, bottoms, tops):
        p = self.param.bn_param
        if bottoms[0].num_axes < 2:
            raise self.error(f"bottom must be N×C×..., got shape {bottoms[0].shape}")
        self.learn = p.bn_mode == LEARN
        self.eps = float(p.eps) if p.HasField("eps") else 1e-9
        self.channels = bottoms[0].shape[1]
        if not self.blobs:
            shape = (1, self.channels, 1, 1)
            self.blobs = [self.make_blob(shape, "scale"), self.make_blob(shape, "shift")]
            fill(self.blobs[0], p.scale_filler if p.HasField("scale_filler") else p.slope_filler)
            fill(self.blobs[1], p.shift_filler if p.HasField("shift_filler") else p.bias_filler)

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        if shape[1] != self.channels:
            raise self.error(f"bottom has {shape[1]} channels, the layer was set up for {self.channels}")
        tops[0].reshape(shape)
        for top in tops[1:]:
            top.reshape((1, self.channels, 1, 1))
        self.shape3 = (shape[0], self.channels, int(np.prod(shape[2:], dtype=np.int64)))
        self.x_norm = self.xp.zeros(self.shape3, dtype=np.float32)

    def _affine(self):
        return self.blobs[0].data.reshape(1, -1, 1), self.blobs[1].data.reshape(1, -1, 1)

    def forward_cpu(self, bottoms, tops):
        xp, x = self.xp, bottoms[0].data.reshape(self.shape3)
        scale, shift = self._affine()
        y = tops[0].data.reshape(self.shape3)
        if not self.learn:
            xp.add(x * scale, shift, out=y)
            return
        mean = x.mean(axis=(0, 2), keepdims=True)
        var = xp.maximum((x * x).mean(axis=(0, 2), keepdims=True) - mean * mean, 0)
        self.std = xp.sqrt(var + np.float32(self.eps))
        xp.divide(x - mean, self.std, out=self.x_norm)
        xp.add(self.x_norm * scale, shift, out=y)
        for top, stat in zip(tops[1:], (mean, var)):
            top.data[...] = stat.reshape(top.shape)

    def backward_cpu(self, tops, propagate_down, bottoms):
        x, dy = bottoms[0].data.reshape(self.shape3), tops[0].diff.reshape(self.shape3)
        scale, _ = self._affine()
        source = self.x_norm if self.learn else x
        if wants_param_grad(self, 0):
            self.blobs[0].diff += (dy * source).sum(axis=(0, 2)).reshape(self.blobs[0].shape)
        if wants_param_grad(self, 1):
            self.blobs[1].diff += dy.sum(axis=(0, 2)).reshape(self.blobs[1].shape)
        if not propagate_down[0]:
            return
        dx = bottoms[0].diff.reshape(self.shape3)
        if not self.learn:
            self.xp.multiply(dy, scale, out=dx)
            return
        mean_dy = dy.mean(axis=(0, 2), keepdims=True)
        mean_dy_xn = (dy * self.x_norm).mean(axis=(0, 2), keepdims=True)
        dx[...] = scale / self.std * (dy - mean_dy - self.x_norm * mean_dy_xn)
