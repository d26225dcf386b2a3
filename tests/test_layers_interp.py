"""Interp (PSPNet / DeepLab bilinear resize): sizes by the fork's rules, values against
PyTorch's align-corners bilinear interpolation and OpenCV's Caffe importer, gradients."""
from __future__ import annotations

import numpy as np
import pytest
from gradcheck import check_gradient, compare_devices, covers, run_layer

from dlsoft.errors import NetDefinitionError


def normal(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def torch_resize(x, size):
    torch = pytest.importorskip("torch")
    return torch.nn.functional.interpolate(torch.tensor(x, dtype=torch.float64), size=size, mode="bilinear",
                                           align_corners=True).numpy()


@covers("Interp", "reference")
@pytest.mark.parametrize("params, size", [
    ("zoom_factor: 3", (13, 10)),                       # in + (in - 1)·(z - 1)
    ("shrink_factor: 2", (3, 2)),                       # (in - 1)/s + 1
    ("shrink_factor: 2 zoom_factor: 4", (9, 5)),        # shrink first, then zoom
    ("height: 7 width: 11", (7, 11)),
    ("height: 1 width: 1", (1, 1)),
])
def test_interp_sizes_and_values_match_torch(params, size):
    x = normal((2, 3, 5, 4))
    layer, bottoms, tops = run_layer(f'type: "Interp" interp_param {{ {params} }}', [x])
    assert tops[0].shape[2:] == size
    np.testing.assert_allclose(tops[0].data, torch_resize(x, size), rtol=1e-5, atol=1e-6)


def test_interp_backward_matches_torch():
    torch = pytest.importorskip("torch")
    x = normal((1, 2, 6, 5), seed=1)
    layer, bottoms, tops = run_layer('type: "Interp" interp_param { height: 9 width: 4 }', [x])
    dy = normal(tops[0].shape, seed=2)
    tops[0].diff[...] = dy
    layer.backward(tops, [True], bottoms)
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    y = torch.nn.functional.interpolate(xt, size=(9, 4), mode="bilinear", align_corners=True)
    (y * torch.tensor(dy, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(bottoms[0].diff, xt.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_interp_negative_pads_crop_the_input():
    x = normal((1, 2, 8, 7), seed=3)
    layer, bottoms, tops = run_layer('type: "Interp" interp_param { zoom_factor: 2 pad_beg: -1 pad_end: -2 }', [x])
    cropped = x[:, :, 1:6, 1:5]                        # in_eff = in - 1 - 2
    assert tops[0].shape[2:] == (9, 7)
    np.testing.assert_allclose(tops[0].data, torch_resize(cropped, (9, 7)), rtol=1e-5, atol=1e-6)
    tops[0].diff[...] = 1
    layer.backward(tops, [True], bottoms)
    assert bottoms[0].diff[:, :, 0].sum() == 0 and bottoms[0].diff[:, :, 6:].sum() == 0


def test_interp_takes_the_size_of_a_second_bottom():
    x, like = normal((1, 2, 4, 4)), normal((1, 5, 7, 9))
    for params in ("use_blob_size: true", ""):
        _, _, tops = run_layer(f'type: "Interp" interp_param {{ {params} }}', [x, like])
        np.testing.assert_allclose(tops[0].data, torch_resize(x, (7, 9)), rtol=1e-5, atol=1e-6)


def test_interp_errors():
    with pytest.raises(NetDefinitionError, match="set interp_param"):
        run_layer('type: "Interp"', [normal((1, 1, 3, 3))])
    with pytest.raises(NetDefinitionError, match="≤ 0"):
        run_layer('type: "Interp" interp_param { zoom_factor: 2 pad_beg: 1 }', [normal((1, 1, 3, 3))])
    with pytest.raises(NetDefinitionError, match="needs a second bottom"):
        run_layer('type: "Interp" interp_param { use_blob_size: true }', [normal((1, 1, 3, 3))])


def test_interp_agrees_with_opencv(tmp_path):
    cv2 = pytest.importorskip("cv2")
    import dlsoft
    x = normal((1, 3, 6, 5), seed=4)
    proto = tmp_path / "net.prototxt"
    proto.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 6 dim: 5 } } }\n'
                     'layer { name: "up" type: "Interp" bottom: "data" top: "up" interp_param { height: 11 width: 13 } }\n')
    net = dlsoft.Net(str(proto), phase="TEST")
    ours = net.forward(data=x)["up"]
    model = tmp_path / "net.caffemodel"
    net.save(str(model))
    reference = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    reference.setInput(x)
    np.testing.assert_allclose(ours, reference.forward(), rtol=1e-4, atol=1e-5)


@covers("Interp", "gradient")
def test_interp_gradient():
    check_gradient('type: "Interp" interp_param { zoom_factor: 2 pad_beg: -1 }', [normal((2, 2, 4, 5), seed=5)])


@covers("Interp", "gpu")
@pytest.mark.gpu
def test_interp_gpu_matches_cpu():
    compare_devices('type: "Interp" interp_param { height: 7 width: 3 }', [normal((2, 2, 4, 5), seed=6)])
