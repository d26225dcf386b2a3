"""ShuffleChannel (ShuffleNet, farmingyard/ShuffleNet): the channel shuffle between grouped convolutions.

With ``g = shuffle_channel_param.group`` and ``C = g·k`` channels, channel ``i·k + j`` of
the bottom becomes channel ``j·g + i`` of the top: the N×C×H×W blob seen as
N×g×k×(H·W) is transposed to N×k×g×(H·W). Backward applies the inverse permutation
(the same transpose the other way) to the top diff.
"""
from __future__ import annotations

from .base import Layer
from .registry import register


@register
class ShuffleChannelLayer(Layer):
    """``top[n, j·g + i] = bottom[n, i·k + j]`` for ``C = g·k`` channels."""

    type = "ShuffleChannel"
    exact_num_bottoms = 1
    exact_num_tops = 1

    def setup(self, bottoms, tops):
        self.group = int(self.param.shuffle_channel_param.group)
        if self.group < 1:
            raise self.error("shuffle_channel_param.group must be at least 1")

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        if len(shape) < 2 or shape[1] % self.group:
            raise self.error(f"shuffle_channel_param.group {self.group} must divide the channels of "
                             f"bottom shape {shape}")
        self.view = (shape[0], self.group, shape[1] // self.group, bottoms[0].count_from(2))
        tops[0].reshape(shape)

    def forward_cpu(self, bottoms, tops):
        n, g, k, plane = self.view
        source = bottoms[0].data.reshape(n, g, k, plane)
        self.xp.copyto(tops[0].data.reshape(n, k, g, plane), source.transpose(0, 2, 1, 3))

    def backward_cpu(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            n, g, k, plane = self.view
            source = tops[0].diff.reshape(n, k, g, plane)
            self.xp.copyto(bottoms[0].diff.reshape(n, g, k, plane), source.transpose(0, 2, 1, 3))
