"""Interp (PSPNet / DeepLab's bilinear resize, hszhao/PSPNet): resize every channel bilinearly.

Output size (per spatial axis, ``in_eff = in + pad_beg + pad_end``; the pads are ≤ 0 and
crop the input):

- ``shrink_factor`` s and ``zoom_factor`` z: ``out = (in_eff - 1) / s + 1``, then
  ``out = out + (out - 1)·(z - 1)``; only one of them: the same step alone;
- ``height`` and ``width``: those;
- ``use_blob_size`` (the FPN nets of soeaver/caffe-model) or a second bottom: the second
  bottom's height and width.

Sampling is "align corners": output pixel ``i`` reads input position
``i·(in_eff - 1)/(out - 1)`` (0 when ``out == 1``) of the cropped input, with the
weights of linear interpolation along each axis. Being separable and linear, the
resize is ``top = A_h · bottom_crop · A_wᵀ`` for two small interpolation matrices, so the
forward is two matrix products per channel and the backward their transposes,
``d bottom_crop = A_hᵀ · d top · A_w`` (the same code on numpy and cupy).
"""
from __future__ import annotations

import numpy as np

from .base import Layer
from .registry import register


def interpolation_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of align-corners linear interpolation, as Caffe's interp2."""
    ratio = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    matrix = np.zeros((size_out, size_in), dtype=np.float32)
    for i in range(size_out):
        position = ratio * i
        low = int(position)
        step = 1 if low < size_in - 1 else 0
        frac = np.float32(position - low)
        matrix[i, low] += 1 - frac
        matrix[i, low + step] += frac
    return matrix


@register
class InterpLayer(Layer):
    """Bilinear (align-corners) resize of each channel; sizes by Caffe's Interp rules."""

    type = "Interp"
    min_bottoms = 1
    max_bottoms = 2
    exact_num_tops = 1

    def setup(self, bottoms, tops):
        p = self.param.interp_param
        if p.pad_beg > 0 or p.pad_end > 0:
            raise self.error("interp_param.pad_beg and pad_end must be ≤ 0 (they crop the input)")
        if p.shrink_factor < 1 or p.zoom_factor < 1:
            raise self.error("interp_param.shrink_factor and zoom_factor must be at least 1")

    def _out_size(self, size_eff: int, axis: int, bottoms) -> int:
        p = self.param.interp_param
        shrink, zoom = p.HasField("shrink_factor"), p.HasField("zoom_factor")
        if shrink or zoom:
            out = (size_eff - 1) // p.shrink_factor + 1 if shrink else size_eff
            return out + (out - 1) * (p.zoom_factor - 1) if zoom else out
        if p.height and p.width:
            return p.height if axis == 2 else p.width
        if len(bottoms) == 2 or p.use_blob_size:
            if len(bottoms) != 2:
                raise self.error("interp_param.use_blob_size needs a second bottom to take the size from")
            return bottoms[1].shape[axis]
        raise self.error("set interp_param height and width, zoom_factor and/or shrink_factor, "
                         "or give a second bottom (use_blob_size)")

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        if len(shape) != 4:
            raise self.error(f"bottom must be N×C×H×W, got shape {shape}")
        p = self.param.interp_param
        self.crop = -p.pad_beg
        eff = [size + p.pad_beg + p.pad_end for size in shape[2:]]
        if min(eff) < 1:
            raise self.error(f"pad_beg {p.pad_beg} and pad_end {p.pad_end} crop away all of input {shape}")
        out = [self._out_size(size, axis, bottoms) for axis, size in zip((2, 3), eff)]
        if min(out) < 1:
            raise self.error(f"output size {tuple(out)} must be positive")
        self.eff = eff
        xp = self.xp
        self.rows = xp.asarray(interpolation_matrix(eff[0], out[0]))     # A_h: (out_h, in_h)
        self.cols_t = xp.asarray(interpolation_matrix(eff[1], out[1]).T)  # A_wᵀ: (in_w, out_w)
        tops[0].reshape((shape[0], shape[1], out[0], out[1]))

    def _cropped(self, array):
        c, (h, w) = self.crop, self.eff
        return array[:, :, c:c + h, c:c + w]

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        xp.matmul(self.rows, xp.matmul(self._cropped(bottoms[0].data), self.cols_t), out=tops[0].data)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        xp, dx = self.xp, bottoms[0].diff
        if self.crop or dx.shape[2:] != tuple(self.eff):
            dx[...] = 0
        self._cropped(dx)[...] = xp.matmul(self.rows.T, xp.matmul(tops[0].diff, self.cols_t.T))

    def allow_backward_to(self, bottom_index: int) -> bool:
        return bottom_index == 0  # the second bottom gives only its size
