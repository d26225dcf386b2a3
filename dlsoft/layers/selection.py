"""Filter and BatchReindex (Caffe semantics): select items of the batch by a mask or by indices."""
from __future__ import annotations

from .base import Layer
from .helpers import int_buffer
from .registry import register


@register
class FilterLayer(Layer):
    """Keeps the items (along axis 0) whose selector value is non-zero; the last bottom is
    the selector (shape N, or N×1×…), the others are filtered into tops one for one.

    Backward scatters ``dy`` back to the kept items; the others get zero.
    """

    type = "Filter"
    min_bottoms = 2
    min_tops = 1

    def setup(self, bottoms, tops):
        if len(tops) != len(bottoms) - 1:
            raise self.error(f"needs one top per filtered bottom: {len(bottoms) - 1}, got {len(tops)}")
        self.num_bottoms = len(bottoms)
        self._first_reshape = True

    def _select(self, bottoms):
        selector = bottoms[-1]
        if any(d != 1 for d in selector.shape[1:]):
            raise self.error(f"selector shape {selector.shape} must be N or N×1×…")
        for bottom in bottoms[:-1]:
            if not bottom.shape or bottom.shape[0] != selector.shape[0]:
                raise self.error(f"bottom '{bottom.name}' shape {bottom.shape} must have "
                                 f"{selector.shape[0]} items like the selector")
        self.kept = self.xp.nonzero(selector.data.reshape(-1))[0]

    def _shape_tops(self, bottoms, tops, num):
        for bottom, top in zip(bottoms[:-1], tops):
            top.reshape((num,) + bottom.shape[1:])

    def reshape(self, bottoms, tops):
        self._select(bottoms)
        # At setup the selector holds no data yet: keep every item, as Caffe does.
        num = bottoms[-1].shape[0] if self._first_reshape else int(self.kept.size)
        self._first_reshape = False
        self._shape_tops(bottoms, tops, num)

    def allow_backward_to(self, bottom_index):
        num_bottoms = getattr(self, "num_bottoms", len(self.param.bottom))
        return bottom_index < num_bottoms - 1

    def forward_cpu(self, bottoms, tops):
        self._select(bottoms)
        self._shape_tops(bottoms, tops, int(self.kept.size))
        for bottom, top in zip(bottoms[:-1], tops):
            self.xp.take(bottom.data, self.kept, axis=0, out=top.data)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if propagate_down[-1]:
            raise self.error("cannot backpropagate to the selector (last bottom)")
        for down, bottom, top in zip(propagate_down, bottoms, tops):
            if down:
                bottom.diff[...] = 0
                bottom.diff[self.kept] = top.diff


@register
class BatchReindexLayer(Layer):
    """``y[n] = x[int(idx[n])]`` along axis 0 with ``idx`` = bottom 1 (1-d, floats).
    Backward: ``dx[i] = Σ_{idx[n]=i} dy[n]``; no gradient to the indices."""

    type = "BatchReindex"
    exact_num_bottoms = 2
    exact_num_tops = 1

    def setup(self, bottoms, tops):
        self._indices = None

    def reshape(self, bottoms, tops):
        if bottoms[1].num_axes != 1:
            raise self.error(f"index bottom must be 1-d, got shape {bottoms[1].shape}")
        tops[0].reshape(bottoms[1].shape + bottoms[0].shape[1:])
        self._indices = int_buffer(self.xp, bottoms[1].count, self._indices)

    def allow_backward_to(self, bottom_index):
        return bottom_index == 0

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        xp.copyto(self._indices, bottoms[1].data, casting="unsafe")
        num = bottoms[0].shape[0]
        if self._indices.size and (int(self._indices.min()) < 0 or int(self._indices.max()) >= num):
            raise self.error(f"index out of range [0, {num}) in bottom '{bottoms[1].name}'")
        xp.take(bottoms[0].data, self._indices, axis=0, out=tops[0].data)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if len(propagate_down) > 1 and propagate_down[1]:
            raise self.error("cannot backpropagate to the indices")
        if propagate_down[0]:
            dx = bottoms[0].diff
            dx[...] = 0
            self.xp.add.at(dx, self._indices, tops[0].diff)
