"""Concat and Slice (Caffe semantics): join bottoms along an axis, or cut one bottom into tops."""
from __future__ import annotations

from itertools import pairwise

from .base import Layer
from .helpers import canonical_axis, outer_dim_inner
from .registry import register


def _legacy_axis(layer: Layer, bottom, param, legacy_field: str) -> int:
    """``axis``, or the legacy ``concat_dim``/``slice_dim`` when that is set (Caffe's rule)."""
    axis = int(getattr(param, legacy_field)) if param.HasField(legacy_field) else param.axis
    return canonical_axis(layer, bottom, axis)


@register
class ConcatLayer(Layer):
    """Joins bottoms along ``axis`` (default 1; legacy ``concat_dim``); other axes must agree.

    Backward hands each bottom its slice of ``dy``.
    """

    type = "Concat"
    min_bottoms = 1
    exact_num_tops = 1

    def reshape(self, bottoms, tops):
        p = self.param.concat_param
        axis = self.axis = _legacy_axis(self, bottoms[0], p, "concat_dim")
        first = bottoms[0].shape
        for bottom in bottoms[1:]:
            shape = bottom.shape
            if len(shape) != len(first) or shape[:axis] + shape[axis + 1:] != first[:axis] + first[axis + 1:]:
                raise self.error(f"bottom '{bottom.name}' shape {shape} does not match {first} "
                                 f"outside the concatenation axis {axis}")
        self.sizes = [b.shape[axis] for b in bottoms]
        tops[0].reshape(first[:axis] + (sum(self.sizes),) + first[axis + 1:])
        self.outer, _, self.inner = outer_dim_inner(first, axis)

    def _pieces(self, array):
        """Views of ``array`` (the top), one per bottom, each outer × (size·inner)."""
        flat = array.reshape(self.outer, -1)
        offset = 0
        for size in self.sizes:
            yield flat[:, offset * self.inner:(offset + size) * self.inner]
            offset += size

    def forward_cpu(self, bottoms, tops):
        for bottom, piece in zip(bottoms, self._pieces(tops[0].data)):
            piece[...] = bottom.data.reshape(self.outer, -1)

    def backward_cpu(self, tops, propagate_down, bottoms):
        for down, bottom, piece in zip(propagate_down, bottoms, self._pieces(tops[0].diff)):
            if down:
                bottom.diff.reshape(self.outer, -1)[...] = piece


@register
class SliceLayer(Layer):
    """Cuts the bottom along ``axis`` (legacy ``slice_dim``) at ``slice_point``s, or into
    equal parts when no points are given. The inverse of Concat."""

    type = "Slice"
    exact_num_bottoms = 1
    min_tops = 1

    def reshape(self, bottoms, tops):
        p = self.param.slice_param
        shape = bottoms[0].shape
        axis = self.axis = _legacy_axis(self, bottoms[0], p, "slice_dim")
        total = shape[axis]
        points = list(p.slice_point)
        if points:
            if len(points) != len(tops) - 1:
                raise self.error(f"{len(points)} slice_point(s) for {len(tops)} tops (need {len(tops) - 1})")
            bounds = [0] + points + [total]
            if any(b >= e for b, e in pairwise(bounds)):
                raise self.error(f"slice points {points} must increase strictly inside (0, {total})")
            self.sizes = [e - b for b, e in pairwise(bounds)]
        else:
            if total % len(tops):
                raise self.error(f"axis {axis} of size {total} does not split into {len(tops)} equal parts")
            self.sizes = [total // len(tops)] * len(tops)
        for top, size in zip(tops, self.sizes):
            top.reshape(shape[:axis] + (size,) + shape[axis + 1:])
        self.outer, _, self.inner = outer_dim_inner(shape, axis)

    _pieces = ConcatLayer._pieces

    def forward_cpu(self, bottoms, tops):
        for top, piece in zip(tops, self._pieces(bottoms[0].data)):
            top.data.reshape(self.outer, -1)[...] = piece

    def backward_cpu(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            for top, piece in zip(tops, self._pieces(bottoms[0].diff)):
                piece[...] = top.diff.reshape(self.outer, -1)
