"""Split and Silence (Caffe semantics): fan one blob out to several consumers, or swallow blobs."""
from __future__ import annotations

from .base import Layer
from .registry import register


@register
class SplitLayer(Layer):
    """One bottom to N tops. The tops share the bottom's data (no copy); backward sums
    the tops' diffs into the bottom's diff."""

    type = "Split"
    exact_num_bottoms = 1
    min_tops = 1

    def reshape(self, bottoms, tops):
        for top in tops:
            top.reshape(bottoms[0].shape)
            top.share_data(bottoms[0])

    def forward_cpu(self, bottoms, tops):
        """Nothing to compute: the tops are views of the bottom's data."""

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        dx = bottoms[0].diff
        if len(tops) == 1:
            dx[...] = tops[0].diff
            return
        self.xp.add(tops[0].diff, tops[1].diff, out=dx)
        for top in tops[2:]:
            dx += top.diff


@register
class SilenceLayer(Layer):
    """Consumes bottoms and produces nothing (silences unused outputs). Backward: zero diffs."""

    type = "Silence"
    min_bottoms = 1
    exact_num_tops = 0

    def reshape(self, bottoms, tops):
        """No tops."""

    def forward_cpu(self, bottoms, tops):
        """Nothing to compute."""

    def backward_cpu(self, tops, propagate_down, bottoms):
        for down, bottom in zip(propagate_down, bottoms):
            if down:
                bottom.diff[...] = 0
