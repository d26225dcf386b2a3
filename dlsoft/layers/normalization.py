"""Normalising layers: Softmax, BatchNorm, MVN (Caffe semantics).

GPU: Softmax (forward and backward, also used by SoftmaxWithLoss and InfogainLoss) has
its own CUDA kernels, one thread per softmax column, instead of five launches. BatchNorm
and MVN run their array-module code (reductions and element-wise operations into
buffers sized in ``reshape``, ``out=`` everywhere) on cupy arrays unchanged, which
allocates nothing per call.
"""
from __future__ import annotations

import numpy as np

from . import kernels
from .base import TEST, Layer
from .helpers import canonical_axis, outer_dim_inner
from .registry import register


@register
class SoftmaxLayer(Layer):
    """``y = exp(x - max x) / Σ exp(x - max x)`` along ``axis`` (default 1).

    Backward: ``dx = y · (dy - Σ_axis dy · y)``.
    """

    type = "Softmax"
    exact_num_bottoms = 1
    exact_num_tops = 1

    def reshape(self, bottoms, tops):
        axis = canonical_axis(self, bottoms[0], self.param.softmax_param.axis)
        self.outer, self.dim, self.inner = outer_dim_inner(bottoms[0].shape, axis)
        if self.dim == 0:
            raise self.error(f"axis {axis} of the bottom {bottoms[0].shape} is empty: nothing to normalise over")
        if tops[0] is not bottoms[0]:
            tops[0].reshape(bottoms[0].shape)
        self.column = self.xp.empty((self.outer, 1, self.inner), dtype=np.float32)
        # In place, dy and dx share storage: backward needs its own scratch then.
        self.work = self.xp.empty(self.view3(bottoms[0].data).shape, dtype=np.float32) \
            if tops[0] is bottoms[0] else None

    def view3(self, array):
        return array.reshape(self.outer, self.dim, self.inner)

    def forward_cpu(self, bottoms, tops):
        softmax(self.xp, self.view3(bottoms[0].data), self.view3(tops[0].data), self.column)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        xp = self.xp
        y, dy = self.view3(tops[0].data), self.view3(tops[0].diff)
        dx = self.view3(bottoms[0].diff)
        work = self.work if self.work is not None else dx
        xp.multiply(dy, y, out=work)
        xp.sum(work, axis=1, keepdims=True, out=self.column)
        xp.subtract(dy, self.column, out=dx)
        dx *= y

    def forward_gpu(self, bottoms, tops):
        softmax_kernel(self.view3(bottoms[0].data), self.view3(tops[0].data))

    def backward_gpu(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            outer, dim, inner = self.outer, self.dim, self.inner
            kernels.launch("dl_softmax_backward", outer * inner, tops[0].data,
                           tops[0].diff, bottoms[0].diff, np.int64(outer * inner), np.int32(dim), np.int32(inner))


def softmax(xp, x3, y3, column) -> None:
    """``y = exp(x - max) / Σ exp(x - max)`` over axis 1 of (outer, dim, inner) arrays.

    ``column`` is an (outer, 1, inner) work buffer; ``y3`` may be ``x3`` (in place).
    Written against ``xp`` (numpy or cupy); GPU paths use :func:`softmax_kernel` instead.
    """
    xp.amax(x3, axis=1, keepdims=True, out=column)
    xp.subtract(x3, column, out=y3)
    xp.exp(y3, out=y3)
    xp.sum(y3, axis=1, keepdims=True, out=column)
    y3 /= column


def softmax_kernel(x3, y3) -> None:
    """:func:`softmax` as one fused CUDA kernel, one thread per (outer, inner) column."""
    outer, dim, inner = x3.shape
    kernels.launch("dl_softmax_forward", outer * inner, x3, y3,
                   np.int64(outer * inner), np.int32(dim), np.int32(inner))


@register
class BatchNormLayer(Layer):
    """Per-channel normalisation ``y = (x - μ) / sqrt(σ² + eps)`` over N and the spatial
    axes (channels = axis 1; a 1-d bottom is one channel). No affine part.

    Blobs (never learnable): ``[μ·s, σ²·s, s]``, all zero at setup. With
    ``use_global_stats`` (default at TEST) ``μ, σ² = blobs[0]/s, blobs[1]/s`` (scale 0
    when ``s == 0``). Otherwise μ, σ² are the batch's (biased) statistics and the running
    sums advance: ``s ← f·s + 1``, ``blobs[0] ← f·blobs[0] + μ``,
    ``blobs[1] ← f·blobs[1] + m/(m-1)·σ²`` with ``f = moving_average_fraction`` and
    ``m = count / channels``.

    Backward (batch statistics): ``dx = (dy - mean(dy) - mean(dy·y)·y) / sqrt(σ² + eps)``;
    with global statistics ``dx = dy / sqrt(σ² + eps)``. Works in place.
    """

    type = "BatchNorm"
    exact_num_bottoms = 1
    exact_num_tops = 1
    supports_in_place = True

    def setup(self, bottoms, tops):
        p = self.param.batch_norm_param
        self.use_global_stats = p.use_global_stats if p.HasField("use_global_stats") else self.phase == TEST
        self.fraction = float(p.moving_average_fraction)
        self.eps = float(p.eps)
        if bottoms[0].num_axes == 0:
            raise self.error("bottom is a scalar (0-d): BatchNorm needs (N, C, ...) or (N,)")
        if not 0 <= self.fraction <= 1 or not self.eps >= 0:
            raise self.error(f"moving_average_fraction must be in [0, 1] and eps >= 0, got "
                             f"{self.fraction} and {self.eps}")
        self.channels = 1 if bottoms[0].num_axes == 1 else bottoms[0].shape[1]
        if not self.blobs:
            self.blobs = [self.make_blob((self.channels,), "mean"),
                          self.make_blob((self.channels,), "variance"),
                          self.make_blob((1,), "scale_factor")]
        # Caffe masks the statistics from the solver: lr_mult 0 for each blob (the net
        # reads these specs after setup); a non-zero lr_mult given by the user is an error.
        specs = self.param.param
        for i in range(len(self.blobs)):
            if i == len(specs):
                specs.add().lr_mult = 0.0
            elif specs[i].lr_mult != 0:
                raise self.error("its statistics blobs cannot be layer parameters: "
                                 f"param {i} has lr_mult {specs[i].lr_mult}, expected 0 or none")
        xp = self.xp
        self.mean = xp.empty(self.channels, dtype=np.float32)
        self.var = xp.empty(self.channels, dtype=np.float32)
        self.std = xp.empty(self.channels, dtype=np.float32)

    def reshape(self, bottoms, tops):
        bottom = bottoms[0]
        if bottom.num_axes > 1 and bottom.shape[1] != self.channels:
            raise self.error(f"bottom has {bottom.shape[1]} channels, the layer was set up for {self.channels}")
        if tops[0] is not bottom:
            tops[0].reshape(bottom.shape)
        self.num = bottom.shape[0] if bottom.num_axes else 1
        self.spatial = bottom.count // (self.num * self.channels) if bottom.count else 0
        shape3 = (self.num, self.channels, self.spatial)
        # x_norm keeps y for backward (a later in-place layer may overwrite the top);
        # temp is scratch for squares and products.
        self.x_norm = self.xp.empty(shape3, dtype=np.float32)
        self.temp = self.xp.empty(shape3, dtype=np.float32)

    def view3(self, array):
        return array.reshape(self.num, self.channels, self.spatial)

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        x, y = self.view3(bottoms[0].data), self.view3(tops[0].data)
        if self.use_global_stats:
            s = float(self.blobs[2].data[0])
            factor = 0.0 if s == 0 else 1.0 / s
            xp.multiply(self.blobs[0].data, factor, out=self.mean)
            xp.multiply(self.blobs[1].data, factor, out=self.var)
        else:
            xp.mean(x, axis=(0, 2), out=self.mean)
        xp.subtract(x, self.mean[:, None], out=y)
        if not self.use_global_stats:
            xp.multiply(y, y, out=self.temp)
            xp.mean(self.temp, axis=(0, 2), out=self.var)
            self._update_running_stats(bottoms[0].count)
        xp.add(self.var, self.eps, out=self.std)
        xp.sqrt(self.std, out=self.std)
        y /= self.std[:, None]
        xp.copyto(self.x_norm, y)

    def _update_running_stats(self, count: int) -> None:
        mean_sum, var_sum, factor = (b.data for b in self.blobs)
        m = count // self.channels
        correction = m / (m - 1) if m > 1 else 1.0
        factor *= self.fraction
        factor += 1
        mean_sum *= self.fraction
        mean_sum += self.mean
        var_sum *= self.fraction
        self.xp.multiply(self.var, correction, out=self.std)  # std is free until the next step
        var_sum += self.std

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        xp = self.xp
        dy, dx = self.view3(tops[0].diff), self.view3(bottoms[0].diff)
        if self.use_global_stats:
            xp.divide(dy, self.std[:, None], out=dx)
            return
        # mean(dy·y) and mean(dy) first: dx may be dy itself (in place).
        xp.multiply(dy, self.x_norm, out=self.temp)
        xp.mean(self.temp, axis=(0, 2), out=self.var)
        xp.mean(dy, axis=(0, 2), out=self.mean)
        xp.multiply(self.x_norm, self.var[:, None], out=self.temp)
        xp.subtract(dy, self.temp, out=dx)
        dx -= self.mean[:, None]
        dx /= self.std[:, None]


@register
class MVNLayer(Layer):
    """Mean-variance normalisation per item and channel (per item with
    ``across_channels``): ``y = x - mean``, and with ``normalize_variance`` (default)
    ``y = (x - mean) / (sqrt(var) + eps)`` (Caffe adds eps to the deviation, eps 1e-9).

    Backward: ``dx = dy - mean(dy)``, or ``(dy - mean(dy) - mean(dy·y)·y) / (sqrt(var) + eps)``.
    """

    type = "MVN"
    exact_num_bottoms = 1
    exact_num_tops = 1
    supports_in_place = True

    def reshape(self, bottoms, tops):
        bottom = bottoms[0]
        p = self.param.mvn_param
        split = 1 if p.across_channels else min(2, bottom.num_axes)
        self.rows = bottom.count_from(0, split)
        self.cols = bottom.count // self.rows if self.rows else 0
        if tops[0] is not bottom:
            tops[0].reshape(bottom.shape)
        xp = self.xp
        self.mean = xp.empty((self.rows, 1), dtype=np.float32)
        self.std = xp.empty((self.rows, 1), dtype=np.float32)
        self.temp = xp.empty((self.rows, self.cols), dtype=np.float32)
        self.y_saved = xp.empty((self.rows, self.cols), dtype=np.float32)

    def view2(self, array):
        return array.reshape(self.rows, self.cols)

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        p = self.param.mvn_param
        x, y = self.view2(bottoms[0].data), self.view2(tops[0].data)
        xp.mean(x, axis=1, keepdims=True, out=self.mean)
        xp.subtract(x, self.mean, out=y)
        if p.normalize_variance:
            xp.multiply(y, y, out=self.temp)
            xp.mean(self.temp, axis=1, keepdims=True, out=self.std)
            xp.sqrt(self.std, out=self.std)
            self.std += p.eps
            y /= self.std
            xp.copyto(self.y_saved, y)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        xp = self.xp
        dy, dx = self.view2(tops[0].diff), self.view2(bottoms[0].diff)
        if self.param.mvn_param.normalize_variance:
            xp.multiply(dy, self.y_saved, out=self.temp)
            xp.mean(self.temp, axis=1, keepdims=True, out=self.mean)
            xp.multiply(self.y_saved, self.mean, out=self.temp)     # mean(dy·y)·y
            xp.mean(dy, axis=1, keepdims=True, out=self.mean)        # before dx overwrites dy
            xp.subtract(dy, self.temp, out=dx)
            dx -= self.mean
            dx /= self.std
        else:
            xp.mean(dy, axis=1, keepdims=True, out=self.mean)
            xp.subtract(dy, self.mean, out=dx)

