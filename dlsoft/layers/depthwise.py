"""ConvolutionDepthwise (the MobileNet forks' layer, e.g. the MobileNet-SSD and Xception nets).

One ``kh×kw`` filter per input channel: ``top[n, c] = bottom[n, c] ⋆ W[c, 0] + b[c]``. The
fork's layer takes ``convolution_param`` but ignores ``num_output`` and ``group``: the
output always has the input's channel count, weights ``(C, 1, kh, kw)``, bias ``(C,)``.
That is exactly Caffe's Convolution with ``group = num_output = C``, so this layer is
that convolution (the same im2col kernels on the GPU) with the two fields forced, and a
depthwise caffemodel loads into either layer type.
"""
from __future__ import annotations

from .convolution import ConvolutionLayer
from .registry import register


@register
class ConvolutionDepthwiseLayer(ConvolutionLayer):
    """Depthwise convolution: Caffe's Convolution with ``group = num_output = channels``."""

    type = "ConvolutionDepthwise"
    exact_num_bottoms = 1
    exact_num_tops = 1

    def setup(self, bottoms, tops):
        p = self.param.convolution_param
        channels = bottoms[0].shape[bottoms[0].canonical_axis(p.axis)] if bottoms[0].num_axes > 1 else 0
        if channels <= 0:
            raise self.error(f"bottom must be N×C×H×W with C > 0, got shape {bottoms[0].shape}")
        # A copy, so the net's own LayerParameter (saved into caffemodels) keeps what the user wrote.
        param = type(self.param)()
        param.CopyFrom(self.param)
        param.convolution_param.num_output = channels
        param.convolution_param.group = channels
        self.param = param
        super().setup(bottoms, tops)
