"""pycaffe-style Python layers (``caffe.Layer``) that use ``param_str`` and ``self.phase``."""
import numpy as np

import caffe


class PhaseScale(caffe.Layer):
    """top = bottom * the number in param_str while training, bottom unchanged at test (like Dropout)."""

    def setup(self, bottom, top):
        self.factor = float(self.param_str or 1)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        scale = self.factor if self.phase == caffe.TRAIN else 1.0
        top[0].data[...] = scale * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        scale = self.factor if self.phase == caffe.TRAIN else 1.0
        if propagate_down[0]:
            bottom[0].diff[...] = scale * top[0].diff


class CountingData(caffe.Layer):
    """A data layer: tops filled with the number of forwards so far (shape from param_str)."""

    def setup(self, bottom, top):
        self.shape = [int(d) for d in self.param_str.split(",")]
        self.count = 0

    def reshape(self, bottom, top):
        top[0].reshape(*self.shape)

    def forward(self, bottom, top):
        self.count += 1
        top[0].data[...] = np.float32(self.count)

    def backward(self, top, propagate_down, bottom):
        pass
