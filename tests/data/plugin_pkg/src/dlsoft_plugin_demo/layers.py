"""DemoAffine: y = scale * x + shift, with scale and shift read from python_param.param_str."""
from __future__ import annotations

import json

from dlsoft.layers import Layer


class DemoAffineLayer(Layer):
    """y = scale * x + shift (param_str: '{"scale": a, "shift": b}')."""

    exact_num_bottoms = 1
    exact_num_tops = 1

    def setup(self, bottoms, tops):
        options = json.loads(self.param_str or "{}")
        self.scale = float(options.get("scale", 1.0))
        self.shift = float(options.get("shift", 0.0))

    def reshape(self, bottoms, tops):
        tops[0].reshape(*bottoms[0].shape)

    def forward_cpu(self, bottoms, tops):
        tops[0].data[...] = self.scale * bottoms[0].data + self.shift

    def backward_cpu(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            bottoms[0].diff[...] = self.scale * tops[0].diff
