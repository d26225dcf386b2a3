"""Embed (Caffe semantics): a lookup table of ``num_output``-wide rows indexed by integer bottoms."""
from __future__ import annotations

import numpy as np

from .base import Layer
from .fillers import fill
from .helpers import int_buffer, wants_param_grad
from .registry import register


@register
class EmbedLayer(Layer):
    """A lookup table: ``y[..., :] = W[int(x[...]), :] + b``, ``W`` is input_dim × num_output.

    The indices arrive as floats and are truncated to integers, as in Caffe. There is no
    gradient with respect to the indices; ``dW[i] += Σ_{x=i} dy``, ``db += Σ dy``.
    """

    type = "Embed"
    exact_num_bottoms = 1
    exact_num_tops = 1

    def setup(self, bottoms, tops):
        p = self.param.embed_param
        if p.num_output <= 0 or p.input_dim <= 0:
            raise self.error("embed_param needs positive num_output and input_dim")
        self.bias_term = p.bias_term
        if not self.blobs:
            self.blobs = [self.make_blob((p.input_dim, p.num_output), "weight")]
            fill(self.blobs[0], p.weight_filler)
            if self.bias_term:
                self.blobs.append(self.make_blob((p.num_output,), "bias"))
                fill(self.blobs[1], p.bias_filler)
        self._indices = None
        self._bias_grad = self.xp.empty(p.num_output, dtype=np.float32) if self.bias_term else None

    def reshape(self, bottoms, tops):
        num_output = self.param.embed_param.num_output
        tops[0].reshape(bottoms[0].shape + (num_output,))
        self._indices = int_buffer(self.xp, bottoms[0].count, self._indices)

    def allow_backward_to(self, bottom_index):
        return False

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        xp.copyto(self._indices, bottoms[0].data.reshape(-1), casting="unsafe")
        if self._indices.size and (int(self._indices.min()) < 0
                                   or int(self._indices.max()) >= self.param.embed_param.input_dim):
            raise self.error(f"index out of range [0, {self.param.embed_param.input_dim}) in bottom")
        y = tops[0].data.reshape(self._indices.size, -1)
        xp.take(self.blobs[0].data, self._indices, axis=0, out=y)
        if self.bias_term:
            y += self.blobs[1].data

    def backward_cpu(self, tops, propagate_down, bottoms):
        xp = self.xp
        if propagate_down[0]:
            raise self.error("cannot backpropagate to the indices")
        dy = tops[0].diff.reshape(self._indices.size, -1)
        if wants_param_grad(self, 0):
            xp.add.at(self.blobs[0].diff, self._indices, dy)
        if self.bias_term and wants_param_grad(self, 1):
            xp.sum(dy, axis=0, out=self._bias_grad)
            self.blobs[1].diff += self._bias_grad
