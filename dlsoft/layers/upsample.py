"""Upsample (SegNet's max-unpooling, alexgkendall/caffe-segnet; ENet's form of it).

With two bottoms (the pooled values and the mask top of a MAX Pooling layer, which
holds for each pooled element the flat index ``h·W + w`` of its maximum in the
pooling layer's input plane) every value goes back to where the maximum came from and
all other outputs are 0. The output size is ``upsample_h`` × ``upsample_w`` when given,
else ``in·scale_h - pad_out_h`` × ``in·scale_w - pad_out_w`` (``scale`` for both axes;
the ``pad_out`` flags, for odd pooled inputs, need scale 2), as the fork's rules say.
The backward reads each value's gradient back from the same place.

With one bottom (the Caffe ports of nets that upsample by repetition, YOLOv3's
``upsample_param { scale: 2 }``) each pixel is repeated ``scale_h`` × ``scale_w`` times,
and the backward sums each block.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from .base import Layer
from .registry import register


@register
class UpsampleLayer(Layer):
    """Max-unpooling by a pooling mask (two bottoms), or nearest-neighbour repetition (one)."""

    type = "Upsample"
    min_bottoms = 1
    max_bottoms = 2
    exact_num_tops = 1

    def setup(self, bottoms, tops):
        p = self.param.upsample_param
        self.size = None
        if p.HasField("upsample_h") or p.HasField("upsample_w"):
            if not (p.HasField("upsample_h") and p.HasField("upsample_w")):
                raise self.error("upsample_param.upsample_h and upsample_w must be given together")
            if len(bottoms) == 1:
                raise self.error("upsample_h/upsample_w need the pooling mask as second bottom")
            self.size = (p.upsample_h, p.upsample_w)
        elif p.HasField("scale_h") or p.HasField("scale_w"):
            if not (p.HasField("scale_h") and p.HasField("scale_w")) or p.HasField("scale"):
                raise self.error("give upsample_param.scale, or scale_h and scale_w together (not both)")
        self.scale = (p.scale_h, p.scale_w) if p.HasField("scale_h") else (p.scale, p.scale)
        if self.size is None and min(self.scale) < 1:
            raise self.error(f"upsample_param scale {self.scale} must be at least 1")
        self.pad_out = (int(p.pad_out_h), int(p.pad_out_w))
        for flag, scale, axis in zip(self.pad_out, self.scale, "hw"):
            if flag and scale != 2:
                raise self.error(f"pad_out_{axis} needs scale_{axis} 2 (otherwise the output size is ill-defined)")
        if len(bottoms) == 1 and any(self.pad_out):
            raise self.error("pad_out_h/pad_out_w need the pooling mask as second bottom")

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        if len(shape) != 4:
            raise self.error(f"bottom must be N×C×H×W, got shape {shape}")
        if len(bottoms) == 2 and bottoms[1].shape != shape:
            raise self.error(f"the mask bottom's shape {bottoms[1].shape} must equal the values' {shape}")
        size = self.size or tuple(s * k - pad for s, k, pad in zip(shape[2:], self.scale, self.pad_out))
        tops[0].reshape((shape[0], shape[1], *size))

    def _planes(self, bottoms, tops):
        """The mask as int64 indices into each (n, c) plane of the top, checked in range."""
        n, c = bottoms[0].shape[:2]
        index = bottoms[1].data.reshape(n * c, -1).astype(np.int64)
        plane = tops[0].shape[2] * tops[0].shape[3]
        if index.size and (int(index.max()) >= plane or int(index.min()) < 0):
            raise DataError(f"layer '{self.name}' (type Upsample): mask index {int(index.max())} out of range "
                            f"for output {tops[0].shape[2]}×{tops[0].shape[3]}: the upsample size must match "
                            "the input of the pooling layer that made the mask")
        rows = self.xp.arange(n * c, dtype=np.int64)[:, None]
        return rows, index

    def forward_cpu(self, bottoms, tops):
        top = tops[0].data
        if len(bottoms) == 1:
            sh, sw = self.scale
            top[...] = self.xp.repeat(self.xp.repeat(bottoms[0].data, sh, axis=2), sw, axis=3)
            return
        rows, index = self._planes(bottoms, tops)
        top[...] = 0
        top.reshape(rows.shape[0], -1)[rows, index] = bottoms[0].data.reshape(rows.shape[0], -1)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        dy, dx = tops[0].diff, bottoms[0].diff
        if len(bottoms) == 1:
            (n, c, h, w), (sh, sw) = dx.shape, self.scale
            dx[...] = dy.reshape(n, c, h, sh, w, sw).sum(axis=(3, 5))
            return
        rows, index = self._planes(bottoms, tops)
        dx.reshape(rows.shape[0], -1)[...] = dy.reshape(rows.shape[0], -1)[rows, index]

    def allow_backward_to(self, bottom_index: int) -> bool:
        return bottom_index == 0  # the mask only says where
