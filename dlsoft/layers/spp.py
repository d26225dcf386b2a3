"""SPP (Caffe's SPPLayer, He et al.'s spatial pyramid pooling): a fixed-length output from
any input size.

Level ``l`` of ``pyramid_height`` pools the input into ``b = 2^l`` × ``b`` bins with Caffe's
Pooling (``spp_param.pool``: MAX, AVE or STOCHASTIC), kernel ``ceil(H/b)`` × ``ceil(W/b)``,
stride = kernel and pad ``(kernel·b - size + 1) // 2`` per axis; each level's output is
flattened to ``N × C·b²`` and the levels are concatenated in order, giving
``N × C·Σ 4^l``. With ``pyramid_height: 1`` the single level's ``N×C×1×1`` is the top
itself, as in Caffe. The levels are rebuilt whenever the input size changes; the backward
sums each level's pooling gradient. The levels are Pooling layers on this layer's device,
so on the GPU they run Pooling's kernels.
"""
from __future__ import annotations

import math

from ..blob import Blob
from ..protos import caffe_pb2
from .base import Layer
from .registry import create_layer, register


@register
class SPPLayer(Layer):
    """Spatial pyramid pooling: Pooling at 1×1, 2×2, 4×4, ... bins, flattened and concatenated."""

    type = "SPP"
    exact_num_bottoms = 1
    exact_num_tops = 1

    def setup(self, bottoms, tops):
        p = self.param.spp_param
        if p.pyramid_height < 1:
            raise self.error("spp_param.pyramid_height must be at least 1")
        self.height, self.method, self.size = p.pyramid_height, p.pool, None

    def _level_param(self, level: int, height: int, width: int):
        bins = 2 ** level
        param = caffe_pb2.LayerParameter(name=f"{self.name}.level{level}", type="Pooling")
        pooling = param.pooling_param
        pooling.pool = self.method
        kh, kw = math.ceil(height / bins), math.ceil(width / bins)
        pooling.kernel_h, pooling.kernel_w, pooling.stride_h, pooling.stride_w = kh, kw, kh, kw
        pooling.pad_h, pooling.pad_w = (kh * bins - height + 1) // 2, (kw * bins - width + 1) // 2
        return param

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        if len(shape) != 4:
            raise self.error(f"bottom must be N×C×H×W, got shape {shape}")
        if shape[2:] != self.size:
            self.size = shape[2:]
            self.levels, self.level_tops = [], []
            for level in range(self.height):
                layer = create_layer(self._level_param(level, *shape[2:]), phase=self.phase, device=self.device)
                top = Blob((), self.device, name=f"{self.name}.level{level}")
                try:
                    layer.initialize(bottoms, [top])
                except Exception as exc:  # noqa: BLE001 - reworded with this layer's name
                    raise self.error(f"pyramid level {level} cannot pool a {shape[2]}×{shape[3]} input: "
                                     f"{exc.args[0].split(': ', 1)[-1]}") from None
                self.levels.append(layer)
                self.level_tops.append(top)
        for layer, top in zip(self.levels, self.level_tops):
            layer.reshape(bottoms, [top])
        if self.height == 1:
            tops[0].reshape(self.level_tops[0].shape)
        else:
            tops[0].reshape((shape[0], sum(top.count // shape[0] for top in self.level_tops)))

    def forward_cpu(self, bottoms, tops):
        n, start = bottoms[0].shape[0], 0
        for layer, top in zip(self.levels, self.level_tops):
            layer.forward(bottoms, [top])
            width = top.count // n
            tops[0].data.reshape(n, -1)[:, start:start + width] = top.data.reshape(n, width)
            start += width

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        n, start = bottoms[0].shape[0], 0
        total = self.xp.zeros(bottoms[0].shape, dtype=bottoms[0].diff.dtype)
        for layer, top in zip(self.levels, self.level_tops):
            width = top.count // n
            top.diff.reshape(n, width)[...] = tops[0].diff.reshape(n, -1)[:, start:start + width]
            start += width
            layer.backward([top], [True], bottoms)   # writes bottoms[0].diff: gather each level's
            total += bottoms[0].diff
        bottoms[0].diff[...] = total
