"""Tile (Caffe semantics): repeat the bottom ``tiles`` times along ``axis``."""
from __future__ import annotations

from .base import Layer
from .helpers import canonical_axis
from .registry import register


@register
class TileLayer(Layer):
    """Repeats the bottom ``tiles`` times along ``axis``: shape[axis] becomes tiles·shape[axis],
    the whole block from ``axis`` on is repeated. Backward sums the copies."""

    type = "Tile"
    exact_num_bottoms = 1
    exact_num_tops = 1

    def reshape(self, bottoms, tops):
        p = self.param.tile_param
        if p.tiles < 1:
            raise self.error("tile_param.tiles must be at least 1")
        shape = bottoms[0].shape
        axis = canonical_axis(self, bottoms[0], p.axis)
        self.outer, self.block = bottoms[0].count_from(0, axis), bottoms[0].count_from(axis)
        tops[0].reshape(shape[:axis] + (shape[axis] * p.tiles,) + shape[axis + 1:])

    def forward_cpu(self, bottoms, tops):
        tiles = self.param.tile_param.tiles
        x = bottoms[0].data.reshape(self.outer, 1, self.block)
        self.xp.copyto(tops[0].data.reshape(self.outer, tiles, self.block), x)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            dy = tops[0].diff.reshape(self.outer, self.param.tile_param.tiles, self.block)
            self.xp.sum(dy, axis=1, out=bottoms[0].diff.reshape(self.outer, self.block))
