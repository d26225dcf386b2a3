"""A Euclidean loss written against pycaffe's ``caffe.Layer``, as BVLC's examples/pycaffe/layers/pyloss.py.

loss = sum((a - b)^2) / num / 2; the gradient flows to both bottoms, scaled by the top's
diff (the loss weight), which BVLC's version takes to be 1. Used with
examples/pycaffe/linreg.prototxt (python_param { module: 'pyloss' layer: 'EuclideanLossLayer' }).
"""
import numpy as np

import caffe


class EuclideanLossLayer(caffe.Layer):
    """Half the mean squared distance between two bottoms of equal count."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")
        self.seen_phase = self.phase  # the tests check pycaffe's integer phase

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.0

    def backward(self, top, propagate_down, bottom):
        for i, sign in enumerate((1, -1)):
            if propagate_down[i]:
                bottom[i].diff[...] = sign * top[0].diff[0] * self.diff / bottom[i].num
