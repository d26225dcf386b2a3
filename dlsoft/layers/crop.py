"""Crop (Caffe semantics): cut bottom 0 to bottom 1's shape from ``axis`` on, at ``offset``."""
from __future__ import annotations

from .base import Layer
from .helpers import canonical_axis
from .registry import register


@register
class CropLayer(Layer):
    """Caffe's CropLayer: crop bottom[0] to the shape of bottom[1] from ``axis`` on.

    ``offset`` gives one value for every cropped axis, or one per axis; the top is
    ``bottom0[..., o_a : o_a + shape1[a], ...]``. Gradient flows to bottom[0] only.
    """

    type = "Crop"
    exact_num_bottoms = 2
    exact_num_tops = 1

    def allow_backward_to(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def reshape(self, bottoms, tops):
        p = self.param.crop_param
        source, reference = bottoms[0].shape, bottoms[1].shape
        if len(source) != len(reference):
            raise self.error(f"bottoms must have the same number of axes: {source} vs {reference}")
        axis = canonical_axis(self, bottoms[0], p.axis)
        cropped = len(source) - axis
        offsets = list(p.offset)
        if len(offsets) not in (0, 1, cropped):
            raise self.error(f"offset needs 0, 1 or {cropped} values, got {len(offsets)}")
        offsets = offsets * cropped if len(offsets) == 1 else (offsets or [0] * cropped)
        shape = list(source[:axis]) + list(reference[axis:])
        self._slices = tuple(slice(None) for _ in range(axis)) + tuple(
            slice(o, o + size) for o, size in zip(offsets, reference[axis:]))
        for a, o, size in zip(range(axis, len(source)), offsets, reference[axis:]):
            if o + size > source[a]:
                raise self.error(f"axis {a}: offset {o} + crop size {size} exceeds bottom size {source[a]}")
        tops[0].reshape(shape)

    def forward_cpu(self, bottoms, tops):
        tops[0].data[...] = bottoms[0].data[self._slices]

    def backward_cpu(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            bottoms[0].diff[...] = 0
            bottoms[0].diff[self._slices] = tops[0].diff
