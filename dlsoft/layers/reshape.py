"""Flatten and Reshape (Caffe semantics): tops that share the bottom's storage with another shape."""
from __future__ import annotations

import numpy as np

from .base import TRAIN, Layer
from .helpers import canonical_axis
from .registry import register


class _ViewLayer(Layer):
    """A top that is the bottom with another shape: data (and, at TRAIN, diff) storage
    is shared, so forward and backward copy nothing."""

    exact_num_bottoms = 1
    exact_num_tops = 1

    def top_shape(self, bottom) -> tuple[int, ...]:
        raise NotImplementedError

    def reshape(self, bottoms, tops):
        bottom, top = bottoms[0], tops[0]
        if top is bottom:
            raise self.error("cannot run in place")
        top.reshape(self.top_shape(bottom))
        top.share_data(bottom)
        # A TEST net never needs diffs: sharing would allocate the bottom's.
        self.diff_shared = self.phase == TRAIN
        if self.diff_shared:
            top.share_diff(bottom)

    def forward_cpu(self, bottoms, tops):
        """Nothing to compute: the top views the bottom's data."""

    def backward_cpu(self, tops, propagate_down, bottoms):
        if propagate_down[0] and not self.diff_shared:
            bottoms[0].diff[...] = tops[0].diff.reshape(bottoms[0].shape)


@register
class FlattenLayer(_ViewLayer):
    """Merges axes ``axis``..``end_axis`` (defaults 1 and -1) into one."""

    type = "Flatten"

    def top_shape(self, bottom):
        p = self.param.flatten_param
        start, end = canonical_axis(self, bottom, p.axis), canonical_axis(self, bottom, p.end_axis)
        shape = bottom.shape
        return shape[:start] + (bottom.count_from(start, end + 1),) + shape[end + 1:]


@register
class ReshapeLayer(_ViewLayer):
    """Replaces axes ``[axis, axis + num_axes)`` by ``shape``: a 0 copies the bottom's
    dimension at that position, one -1 is inferred from the count."""

    type = "Reshape"

    def top_shape(self, bottom):
        p = self.param.reshape_param
        dims = [int(d) for d in p.shape.dim]
        in_shape = bottom.shape
        start = p.axis if p.axis >= 0 else len(in_shape) + p.axis + 1
        end = len(in_shape) if p.num_axes == -1 else start + p.num_axes
        if not 0 <= start <= end <= len(in_shape):
            raise self.error(f"axis {p.axis} / num_axes {p.num_axes} out of range for bottom of shape {in_shape}")
        if dims.count(-1) > 1 or any(d < -1 for d in dims):
            raise self.error(f"shape {dims}: at most one -1 and no other negative dimension")
        for i, d in enumerate(dims):
            if d == 0:
                if start + i >= len(in_shape):
                    raise self.error(f"shape {dims}: dimension {i} is 0 but the bottom has no axis {start + i}")
                dims[i] = in_shape[start + i]
        shape = list(in_shape[:start]) + dims + list(in_shape[end:])
        if -1 in shape:
            known = int(np.prod([d for d in shape if d != -1], dtype=np.int64))
            if known == 0 or bottom.count % known:
                raise self.error(f"cannot infer the -1 in {dims} for bottom of shape {in_shape}")
            shape[shape.index(-1)] = bottom.count // known
        if int(np.prod(shape, dtype=np.int64)) != bottom.count:
            raise self.error(f"shape {tuple(shape)} has {int(np.prod(shape))} elements, "
                             f"bottom {in_shape} has {bottom.count}")
        return tuple(shape)
