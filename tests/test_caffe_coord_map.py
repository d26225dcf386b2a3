"""caffe.coord_map: crop offsets from the coordinate maps, checked by running the nets."""
from __future__ import annotations

import numpy as np
import pytest

import caffe
import caffe.coord_map
from caffe import coord_map as cm
from caffe import layers as L
from caffe import params as P


def padded_identity_net(pad):
    """data -> 3x3 convolution with `pad` (identity kernel) -> crop back to data."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 6, 7]))
    n.conv = L.Convolution(n.data, kernel_size=3, pad=pad, num_output=1, bias_term=False)
    n.crop = cm.crop(n.conv, n.data)
    return n


@pytest.mark.parametrize("pad", [1, 5, 100])
def test_crop_of_a_padded_convolution_gives_back_the_input(tmp_path, pad):
    n = padded_identity_net(pad)
    crop = n.to_proto().layer[-1]
    assert crop.crop_param.axis == 2 and list(crop.crop_param.offset) == [pad - 1]
    path = tmp_path / "net.prototxt"
    path.write_text(str(n.to_proto()))
    net = caffe.Net(str(path), caffe.TEST)
    kernel = np.zeros((1, 1, 3, 3), np.float32)
    kernel[0, 0, 1, 1] = 1
    net.params["conv"][0].data[...] = kernel
    data = np.random.default_rng(pad).standard_normal((1, 1, 6, 7)).astype(np.float32)
    np.testing.assert_array_equal(net.forward(data=data)["crop"], data)


def test_fcn_style_upsampling_offsets():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 64, 64]))
    n.conv1 = L.Convolution(n.data, kernel_size=3, pad=100, num_output=4)
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.relu1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.up = L.Deconvolution(n.pool1, convolution_param=dict(kernel_size=4, stride=2, num_output=4))
    ax, a, b = cm.coord_map_from_to(n.up, n.data)
    assert ax == 1 and a == pytest.approx(1) and b == pytest.approx([-100.0])
    assert list(cm.crop(n.up, n.data).fn.params["crop_param"]["offset"]) == [100]
    with pytest.raises(cm.UndefinedMapException):
        cm.coord_map(L.InnerProduct(n.data, num_output=2).fn)
    with pytest.raises(ValueError, match="scales differ"):
        cm.crop(n.pool1, n.data)
    assert cm.inverse(cm.compose((1, 0.5, 2.0), (1, 2.0, -1.0))) == (1, 1.0, -1.5)
