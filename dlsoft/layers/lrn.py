"""LRN, local response normalisation (Caffe semantics: ACROSS_CHANNELS and WITHIN_CHANNEL).

On the GPU both modes are CUDA kernels (``kernels/lrn.py``).
"""
from __future__ import annotations

import numpy as np

from .base import Layer
from .kernels import i32, launch
from .registry import register


@register
class LRNLayer(Layer):
    """Local response normalisation (Caffe's LRNLayer), ``y = x * scale^(-beta)``.

    ACROSS_CHANNELS: ``scale = k + alpha/n * sum x^2`` over the n channels centred on c
    (zero-padded). WITHIN_CHANNEL: ``scale = 1 + alpha/n^2 * sum x^2`` over the n×n window
    centred on the pixel (zero-padded; ``k`` unused). Backward (both, with the window W
    and its normaliser ``a = alpha/n`` or ``alpha/n^2``):
    ``dx = dy * scale^(-beta) - 2*a*beta * x * sum_W(dy * y / scale)``.
    """

    type = "LRN"
    exact_num_bottoms = 1
    exact_num_tops = 1

    def setup(self, bottoms, tops):
        p = self.param.lrn_param
        self.size, self.alpha, self.beta, self.k = p.local_size, p.alpha, p.beta, p.k
        if self.size % 2 != 1 or self.size <= 0:
            raise self.error(f"local_size must be odd and positive, got {self.size}")
        self.across = p.norm_region == p.ACROSS_CHANNELS
        self.scale_alpha = self.alpha / self.size if self.across else self.alpha / self.size ** 2

    def reshape(self, bottoms, tops):
        if bottoms[0].num_axes != 4:
            raise self.error(f"bottom must be 4-d (N, C, H, W), got shape {bottoms[0].shape}")
        n, c, h, w = bottoms[0].shape
        half = (self.size - 1) // 2
        reach = c if self.across else max(h, w)
        if half > reach:  # a window past twice the input only adds zero padding, and memory
            raise self.error(f"local_size {self.size} is larger than the input allows ({2 * reach + 1} at most "
                             f"for {'channels' if self.across else 'height/width'} of {reach})")
        tops[0].reshape(bottoms[0].shape)
        xp, shape = self.xp, bottoms[0].shape
        self._scale = xp.zeros(shape, np.float32)
        self._power = xp.zeros(shape, np.float32)
        self._work = xp.zeros(shape, np.float32)
        self._padded = self._rows = None  # CPU-only: see _cpu_buffers

    def _cpu_buffers(self):
        """The CPU window sums' zero-padded copies, made on first use after a reshape."""
        if self._padded is None:
            n, c, h, w = self._scale.shape
            half = (self.size - 1) // 2
            self._padded = np.zeros((n, c + 2 * half, h, w) if self.across else (n, c, h + 2 * half, w + 2 * half),
                                    np.float32)
            self._rows = None if self.across else np.zeros((n, c, h + 2 * half, w), np.float32)
        return self._padded, self._rows

    def _window_sum_cpu(self, values, out) -> None:
        """out = sum of ``values`` over the zero-padded LRN window (channels or n×n pixels)."""
        half, size = (self.size - 1) // 2, self.size
        padded, rows = self._cpu_buffers()
        if self.across:
            channels = values.shape[1]
            padded[:, half:half + channels] = values
            out[...] = 0
            for c in range(size):
                out += padded[:, c:c + channels]
        else:
            height, width = values.shape[2:]
            padded[:, :, half:half + height, half:half + width] = values
            rows[...] = 0
            for j in range(size):
                rows += padded[:, :, :, j:j + width]
            out[...] = 0
            for i in range(size):
                out += rows[:, :, i:i + height]

    def _window_sum_gpu(self, values, out) -> None:
        """WITHIN_CHANNEL's window sum as one kernel (ACROSS_CHANNELS has kernels for the whole layer)."""
        height, width = values.shape[2:]
        launch("dl_lrn_window_sum", values.size, values, out, np.int64(values.size), i32(height), i32(width),
               i32(self.size))

    def _fill_scale(self, x, window_sum) -> None:
        self.xp.multiply(x, x, out=self._work)
        window_sum(self._work, self._scale)
        self._scale *= self.scale_alpha
        self._scale += self.k if self.across else 1.0
        self.xp.power(self._scale, -self.beta, out=self._power)

    # One body for both devices, given the window sum; ACROSS_CHANNELS on the GPU has its own kernels.
    def _forward(self, bottoms, tops, window_sum):
        self._fill_scale(bottoms[0].data, window_sum)
        self.xp.multiply(bottoms[0].data, self._power, out=tops[0].data)

    def _backward(self, tops, propagate_down, bottoms, window_sum):
        if not propagate_down[0]:
            return
        x, y, dy = bottoms[0].data, tops[0].data, tops[0].diff
        accum, work = bottoms[0].diff, self._work
        self.xp.multiply(dy, y, out=work)
        work /= self._scale
        window_sum(work, accum)
        accum *= x
        accum *= -2.0 * self.scale_alpha * self.beta
        self.xp.multiply(dy, self._power, out=work)
        accum += work

    def forward_cpu(self, bottoms, tops):
        self._forward(bottoms, tops, self._window_sum_cpu)

    def backward_cpu(self, tops, propagate_down, bottoms):
        self._backward(tops, propagate_down, bottoms, self._window_sum_cpu)

    def forward_gpu(self, bottoms, tops):
        if not self.across:  # WITHIN_CHANNEL: the body above, its window sums one kernel
            return self._forward(bottoms, tops, self._window_sum_gpu)
        x = bottoms[0].data
        _, c, h, w = x.shape
        size = x.size
        launch("dl_lrn_fill_scale", size, x, self._scale, np.int64(size), np.int32(c), np.int32(h * w),
               np.int32(self.size), np.float32(self.scale_alpha), np.float32(self.k))
        launch("dl_lrn_output", size, x, self._scale, tops[0].data, np.int64(size), np.float32(-self.beta))

    def backward_gpu(self, tops, propagate_down, bottoms):
        if not self.across:
            return self._backward(tops, propagate_down, bottoms, self._window_sum_gpu)
        if not propagate_down[0]:
            return
        x = bottoms[0].data
        _, c, h, w = x.shape
        launch("dl_lrn_backward", x.size, x, tops[0].data, self._scale, tops[0].diff, bottoms[0].diff,
               np.int64(x.size), np.int32(c), np.int32(h * w), np.int32(self.size), np.float32(-self.beta),
               np.float32(2.0 * self.scale_alpha * self.beta))
