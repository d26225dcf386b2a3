"""A softmax cross-entropy loss written as a pycaffe Python layer (caffe.Layer).

bottom[0]: scores N x K; bottom[1]: labels N. top[0]: the mean of -log softmax(score)[label].
"""
import numpy as np

import caffe


class SoftmaxLoss(caffe.Layer):
    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("SoftmaxLoss needs scores and labels")

    def reshape(self, bottom, top):
        if bottom[0].num != bottom[1].num:
            raise Exception("scores and labels need the same batch size")
        self.prob = np.zeros_like(bottom[0].data)
        top[0].reshape(1)

    def forward(self, bottom, top):
        scores = bottom[0].data - bottom[0].data.max(axis=1, keepdims=True)
        np.exp(scores, out=self.prob)
        self.prob /= self.prob.sum(axis=1, keepdims=True)
        labels = bottom[1].data.astype(int)
        picked = self.prob[np.arange(bottom[0].num), labels]
        top[0].data[...] = -np.log(np.maximum(picked, 1e-30)).mean()

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            grad = self.prob.copy()
            grad[np.arange(bottom[0].num), bottom[1].data.astype(int)] -= 1
            bottom[0].diff[...] = grad * top[0].diff[0] / bottom[0].num
