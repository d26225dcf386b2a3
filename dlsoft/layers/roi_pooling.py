"""Region-of-interest pooling: ROIPooling (Fast/Faster R-CNN, rbgirshick/caffe-fast-rcnn) and
PSROIPooling (R-FCN's position-sensitive pooling, daijifeng001/caffe-rfcn).

Both take the feature map (N×C×H×W) and the regions (R×5: batch index, x1, y1, x2, y2 in
image coordinates) and give one pooled map per region; the regions get no gradient.

ROIPooling (``roi_pooling_param``: pooled_h, pooled_w, spatial_scale): the box corners
are scaled and rounded (``round(x1·s)`` ... ``round(y2·s)``, half away from zero), the box
is at least 1×1 (``h = max(y2 - y1 + 1, 1)``), bin ``(ph, pw)`` covers rows
``[floor(ph·h/PH), ceil((ph+1)·h/PH))`` offset by y1 and clipped to the map (columns
alike), and the output is the maximum over the bin (0 for an empty bin). Backward routes
each output's gradient to its argmax.

PSROIPooling (``psroi_pooling_param``: output_dim D, group_size G, spatial_scale): the
corners are rounded *then* scaled, the box ends one pixel further (``(round(x2) + 1)·s``)
and is at least 0.1 wide; bin ``(ph, pw)`` covers rows ``[floor(ph·h/G + y1),
ceil((ph+1)·h/G + y1))`` clipped to the map; output channel ``d`` of bin ``(ph, pw)``
averages input channel ``(d·G + ph)·G + pw`` over the bin (0 when empty). Backward spreads
each output's gradient evenly over its bin.

The bins of one region are rectangles of the map, so both layers loop over regions and
bins and use array slices (the same code on numpy and cupy).
"""
from __future__ import annotations

import math

import numpy as np

from .base import Layer
from .registry import register


def c_round(value: float) -> int:
    """C's round(): half away from zero (Python's round() rounds half to even)."""
    return int(math.floor(abs(value) + 0.5)) * (1 if value >= 0 else -1)


class _RegionPooling(Layer):
    """Shared checks: a 4-d feature map and R×5 regions; no gradient to the regions."""

    exact_num_bottoms = 2
    exact_num_tops = 1

    def check_bottoms(self, bottoms):
        features, rois = bottoms[0].shape, bottoms[1].shape
        if len(features) != 4:
            raise self.error(f"bottom 0 (the feature map) must be N×C×H×W, got shape {features}")
        if rois[-1:] != (5,) or bottoms[1].count != (rois[0] if rois else 0) * 5:
            raise self.error(f"bottom 1 (the regions) must be R×5 (batch index, x1, y1, x2, y2), got shape {rois}")
        return features, rois[0]

    def allow_backward_to(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def regions(self, bottoms):
        """The regions as host floats (read once per forward: the loops below need them on the host)."""
        from ..backend import to_numpy
        rois = to_numpy(bottoms[1].data).reshape(-1, 5)
        batch = rois[:, 0].astype(np.int64)
        n = bottoms[0].shape[0]
        if batch.size and (batch.min() < 0 or batch.max() >= n):
            raise self.error(f"region batch index {int(batch.min() if batch.min() < 0 else batch.max())} "
                             f"out of range [0, {n})")
        return batch, rois[:, 1:]


@register
class ROIPoolingLayer(_RegionPooling):
    """Max pooling of each region into a pooled_h × pooled_w grid (Fast R-CNN)."""

    type = "ROIPooling"

    def setup(self, bottoms, tops):
        p = self.param.roi_pooling_param
        self.pooled = (int(p.pooled_h), int(p.pooled_w))
        self.scale = float(p.spatial_scale)
        if min(self.pooled) <= 0:
            raise self.error("roi_pooling_param.pooled_h and pooled_w must be positive")

    def reshape(self, bottoms, tops):
        (n, c, h, w), regions = self.check_bottoms(bottoms)
        tops[0].reshape((regions, c, *self.pooled))
        self.argmax = self.xp.empty((regions, c, *self.pooled), dtype=np.int64)

    def bins(self, box, height, width):
        """(hstart, hend, wstart, wend) of every bin of one region, as Caffe's ROIPoolingLayer
        computes them: in float32 (its Dtype), where a bin edge can round differently than in float64."""
        f32 = np.float32
        x1, y1, x2, y2 = (c_round(float(f32(v) * f32(self.scale))) for v in box)
        roi_h, roi_w = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
        ph_count, pw_count = self.pooled
        bin_h, bin_w = f32(roi_h) / f32(ph_count), f32(roi_w) / f32(pw_count)
        for ph in range(ph_count):
            hs = min(max(math.floor(f32(ph) * bin_h) + y1, 0), height)
            he = min(max(math.ceil(f32(ph + 1) * bin_h) + y1, 0), height)
            for pw in range(pw_count):
                ws = min(max(math.floor(f32(pw) * bin_w) + x1, 0), width)
                we = min(max(math.ceil(f32(pw + 1) * bin_w) + x1, 0), width)
                yield ph, pw, hs, he, ws, we

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        n, c, height, width = bottoms[0].shape
        x, y, argmax = bottoms[0].data, tops[0].data, self.argmax
        y[...] = 0
        argmax[...] = -1
        batch, boxes = self.regions(bottoms)
        channel_base = xp.arange(c, dtype=np.int64) * (height * width)
        for r, (b, box) in enumerate(zip(batch, boxes)):
            for ph, pw, hs, he, ws, we in self.bins(box, height, width):
                if he <= hs or we <= ws:
                    continue
                window = x[b, :, hs:he, ws:we].reshape(c, -1)
                best = xp.argmax(window, axis=1)
                y[r, :, ph, pw] = xp.take_along_axis(window, best[:, None], axis=1)[:, 0]
                row, col = best // (we - ws) + hs, best % (we - ws) + ws
                argmax[r, :, ph, pw] = b * c * height * width + channel_base + row * width + col

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        xp, dx = self.xp, bottoms[0].diff
        dx[...] = 0
        index = self.argmax.reshape(-1)
        valid = index >= 0
        xp.add.at(dx.reshape(-1), index[valid], tops[0].diff.reshape(-1)[valid])


@register
class PSROIPoolingLayer(_RegionPooling):
    """Position-sensitive average pooling into a group_size × group_size grid (R-FCN)."""

    type = "PSROIPooling"

    def setup(self, bottoms, tops):
        p = self.param.psroi_pooling_param
        self.output_dim, self.group, self.scale = int(p.output_dim), int(p.group_size), float(p.spatial_scale)
        if self.output_dim <= 0 or self.group <= 0:
            raise self.error("psroi_pooling_param.output_dim and group_size must be positive")

    def reshape(self, bottoms, tops):
        (n, c, h, w), regions = self.check_bottoms(bottoms)
        if c != self.output_dim * self.group * self.group:
            raise self.error(f"bottom 0 has {c} channels; output_dim·group_size² = "
                             f"{self.output_dim}·{self.group}² = {self.output_dim * self.group ** 2} expected")
        tops[0].reshape((regions, self.output_dim, self.group, self.group))
        # Input channel of output (d, ph, pw): (d·G + ph)·G + pw.
        g = self.group
        self.channels = np.arange(self.output_dim)[:, None, None] * g * g + np.arange(g)[:, None] * g + np.arange(g)

    def bins(self, box, height, width):
        """(ph, pw, hstart, hend, wstart, wend) of every bin of one region, as R-FCN's layer
        computes them (in float32, its Dtype)."""
        f32 = np.float32
        s, g = f32(self.scale), self.group
        x1, y1 = f32(c_round(float(box[0]))) * s, f32(c_round(float(box[1]))) * s
        x2, y2 = (f32(c_round(float(box[2]))) + f32(1)) * s, (f32(c_round(float(box[3]))) + f32(1)) * s
        bin_h, bin_w = max(y2 - y1, f32(0.1)) / f32(g), max(x2 - x1, f32(0.1)) / f32(g)
        for ph in range(g):
            hs = min(max(math.floor(f32(ph) * bin_h + y1), 0), height)
            he = min(max(math.ceil(f32(ph + 1) * bin_h + y1), 0), height)
            for pw in range(g):
                ws = min(max(math.floor(f32(pw) * bin_w + x1), 0), width)
                we = min(max(math.ceil(f32(pw + 1) * bin_w + x1), 0), width)
                yield ph, pw, hs, he, ws, we

    def forward_cpu(self, bottoms, tops):
        n, c, height, width = bottoms[0].shape
        x, y = bottoms[0].data, tops[0].data
        y[...] = 0
        batch, boxes = self.regions(bottoms)
        self._bins = []
        for r, (b, box) in enumerate(zip(batch, boxes)):
            for ph, pw, hs, he, ws, we in self.bins(box, height, width):
                if he <= hs or we <= ws:
                    continue
                self._bins.append((r, b, ph, pw, hs, he, ws, we))
                channels = self.channels[:, ph, pw]
                area = (he - hs) * (we - ws)
                y[r, :, ph, pw] = x[b, channels, hs:he, ws:we].sum(axis=(1, 2)) / area

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        dx, dy = bottoms[0].diff, tops[0].diff
        dx[...] = 0
        for r, b, ph, pw, hs, he, ws, we in self._bins:   # the bins of the last forward
            channels = self.channels[:, ph, pw]
            share = dy[r, :, ph, pw] / ((he - hs) * (we - ws))
            dx[b, channels, hs:he, ws:we] += share[:, None, None]
