"""ArgMax (Caffe semantics): the indices (and optionally values) of the top-k entries."""
from __future__ import annotations

from .base import Layer
from .helpers import canonical_axis, outer_dim_inner
from .registry import register


@register
class ArgMaxLayer(Layer):
    """The ``top_k`` largest entries per item, largest first (ties: higher index first, as
    Caffe's descending sort of (value, index) pairs).

    With ``axis``: along that axis; the top is the bottom with that axis of size top_k,
    holding indices, or the values with ``out_max_val``. Without ``axis``: over each
    item's flattened ``count(1)`` values; the top is N × (1, or 2 with ``out_max_val``:
    indices then values) × top_k, padded with 1s to at least as many axes as the bottom.
    """

    type = "ArgMax"
    exact_num_bottoms = 1
    exact_num_tops = 1
    forward_only = True

    def reshape(self, bottoms, tops):
        p = self.param.argmax_param
        shape = bottoms[0].shape
        self.has_axis = p.HasField("axis")
        if self.has_axis:
            self.axis = canonical_axis(self, bottoms[0], p.axis)
            self.outer, self.dim, self.inner = outer_dim_inner(shape, self.axis)
            top_shape = shape[:self.axis] + (p.top_k,) + shape[self.axis + 1:]
        else:
            if not shape:
                raise self.error("bottom is a scalar (0-d): ArgMax needs (N, ...) or an axis")
            self.outer, self.dim, self.inner = shape[0], bottoms[0].count_from(1), 1
            top_shape = [1] * max(len(shape), 3)
            top_shape[0], top_shape[1], top_shape[2] = shape[0], 2 if p.out_max_val else 1, p.top_k
        if not 1 <= p.top_k <= self.dim:
            raise self.error(f"top_k {p.top_k} must be in [1, {self.dim}]")
        tops[0].reshape(tuple(top_shape))

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        p = self.param.argmax_param
        x = bottoms[0].data.reshape(self.outer, self.dim, self.inner)
        # A stable ascending sort of the negated, reversed values puts the largest first
        # and, among equal values, the higher original index first.
        order = xp.argsort(-x[:, ::-1, :], axis=1, kind="stable")[:, :p.top_k, :]
        indices = (self.dim - 1) - order
        values = xp.take_along_axis(x, indices, axis=1)
        if self.has_axis:
            out = values if p.out_max_val else indices
            tops[0].data.reshape(self.outer, p.top_k, self.inner)[...] = out
        else:
            y = tops[0].data.reshape(self.outer, -1, p.top_k)
            y[:, 0, :] = indices[:, :, 0]
            if p.out_max_val:
                y[:, 1, :] = values[:, :, 0]
