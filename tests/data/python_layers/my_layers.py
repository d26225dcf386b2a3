"""User layers for the Python-layer tests, written as a pycaffe user would (no dlsoft import)."""
import numpy as np


class LearnableScale:
    """top = w * bottom, with one learnable scalar w (initial value from param_str)."""

    def setup(self, bottom, top):
        if len(bottom) != 1:
            raise Exception("LearnableScale takes one bottom")
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = float(self.param_str or 1.0)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] += (top[0].diff * bottom[0].data).sum()
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff


class EuclideanLoss:
    """pycaffe's example: loss = sum((a - b)^2) / num / 2."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("EuclideanLoss needs two bottoms")

    def reshape(self, bottom, top):
        self.diff = np.zeros(bottom[0].shape, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[0] = np.sum(self.diff ** 2) / bottom[0].shape[0] / 2.0

    def backward(self, top, propagate_down, bottom):
        for i, sign in enumerate((1, -1)):
            if propagate_down[i]:
                bottom[i].diff[...] = sign * top[0].diff[0] * self.diff / bottom[i].shape[0]
