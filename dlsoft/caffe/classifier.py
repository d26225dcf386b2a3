"""pycaffe's ``Classifier``: a Net that classifies H x W x K images (resize, crop or oversample)."""
from __future__ import annotations

import numpy as np

from . import io
from .pycaffe import TEST, Net


def _transformer_for(net: Net, mean, input_scale, raw_scale, channel_swap) -> io.Transformer:
    """The Transformer pycaffe's Classifier and Detector configure for the first input."""
    in_ = net.inputs[0]
    transformer = io.Transformer({in_: net.blobs[in_].data.shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return transformer


class Classifier(Net):
    """``Classifier(model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
    raw_scale=None, channel_swap=None)``: a TEST-phase net whose first input takes images.

    Images are resized to ``image_dims`` (default: the input's size), then cropped to the
    input size: the centre crop, or with ``oversample`` the ten crops of
    :func:`caffe.io.oversample`, whose predictions are averaged.
    """

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None):
        super().__init__(model_file, TEST, weights=pretrained_file)
        self.transformer = _transformer_for(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[self.inputs[0]].data.shape[2:])
        self.image_dims = self.crop_dims if image_dims is None or not len(image_dims) else image_dims

    def predict(self, inputs, oversample: bool = True) -> np.ndarray:
        """Class probabilities (N x C) for N images (each H x W x K, in [0, 1])."""
        in_ = self.inputs[0]
        height, width = int(self.image_dims[0]), int(self.image_dims[1])
        resized = np.zeros((len(inputs), height, width, inputs[0].shape[2]), dtype=np.float32)
        for i, image in enumerate(inputs):
            resized[i] = io.resize_image(image, (height, width))
        if oversample:
            crops = io.oversample(resized, self.crop_dims)
        else:
            centre = np.array([height, width]) / 2.0
            top_left = (centre - self.crop_dims / 2.0).astype(int)
            bottom_right = (centre + self.crop_dims / 2.0).astype(int)
            crops = resized[:, top_left[0]:bottom_right[0], top_left[1]:bottom_right[1], :]
        caffe_in = np.zeros((len(crops), crops.shape[3], crops.shape[1], crops.shape[2]), dtype=np.float32)
        for i, crop in enumerate(crops):
            caffe_in[i] = self.transformer.preprocess(in_, crop)
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions
