"""Parameter (Caffe semantics): a learnable blob exposed as a top."""
from __future__ import annotations

from .base import Layer
from .helpers import wants_param_grad
from .registry import register


@register
class ParameterLayer(Layer):
    """A learnable blob of ``parameter_param.shape`` exposed as the top (initialised to
    zero, as in Caffe; set it from weights). Backward: ``dW += dy``."""

    type = "Parameter"
    exact_num_bottoms = 0
    exact_num_tops = 1

    def setup(self, bottoms, tops):
        if not self.blobs:
            self.blobs = [self.make_blob(tuple(self.param.parameter_param.shape.dim), "param")]

    def reshape(self, bottoms, tops):
        tops[0].reshape(self.blobs[0].shape)

    def forward_cpu(self, bottoms, tops):
        # A copy, not shared storage: the net may swap self.blobs[0] for a shared blob.
        tops[0].data[...] = self.blobs[0].data

    def backward_cpu(self, tops, propagate_down, bottoms):
        if wants_param_grad(self, 0):
            self.blobs[0].diff += tops[0].diff
