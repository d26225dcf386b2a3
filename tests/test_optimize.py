"""dlsoft optimize: BatchNorm+Scale folded into Convolution/InnerProduct, Dropout/Split dropped."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import dlsoft
from dlsoft.errors import NetDefinitionError
from dlsoft.netdef.io import parse_net_text
from dlsoft.netdef.optimize import optimize_files, optimize_net

ROOT = Path(__file__).resolve().parent.parent
RESNET50 = ROOT.parent / "shared" / "caffe-wild" / "soeaver+caffe-model" / "cls" / "resnet" / "deploy_resnet50.prototxt"


def _randomise(net, seed=0):
    """Random weights, and BatchNorm statistics far from the identity (s != 1 too)."""
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        if layer.type == "BatchNorm":
            c = layer.blobs[0].count
            s = rng.uniform(0.5, 2.0)
            layer.blobs[0].data[...] = rng.normal(0, 0.5, c) * s
            layer.blobs[1].data[...] = rng.uniform(0.2, 2.0, c) * s
            layer.blobs[2].data[...] = s
        elif layer.type == "Scale":
            layer.blobs[0].data[...] = rng.uniform(0.5, 1.5, layer.blobs[0].shape)
            if len(layer.blobs) > 1:
                layer.blobs[1].data[...] = rng.normal(0, 0.2, layer.blobs[1].shape)
        elif layer.blobs:
            fan_in = layer.blobs[0].count // layer.blobs[0].shape[0]
            layer.blobs[0].data[...] = rng.normal(0, np.sqrt(1.0 / fan_in), layer.blobs[0].shape)
            for blob in layer.blobs[1:]:
                blob.data[...] = rng.normal(0, 0.1, blob.shape)


def test_resnet50_folded_matches_the_original_and_opencv_reads_it(tmp_path):
    if not RESNET50.is_file():
        pytest.skip(f"{RESNET50} is not present")
    net = dlsoft.Net(RESNET50, phase="TEST")
    _randomise(net)
    weights = tmp_path / "resnet50.caffemodel"
    net.save(weights)
    x = np.random.default_rng(1).uniform(-1, 1, net.blobs["data"].shape).astype(np.float32)
    expected = net.forward(blobs=["fc1000"], data=x)
    logits, prob = expected["fc1000"].copy(), expected["prob"].copy()

    net_path, weights_path, report = optimize_files(RESNET50, weights, tmp_path / "out")
    assert len(report.folded) == 53 and all(len(names) == 3 for names in report.folded)
    folded = dlsoft.Net(net_path, phase="TEST", weights=weights_path)
    assert not {"BatchNorm", "Scale"} & {layer.type for layer in folded.layers}
    assert len(dlsoft.read_net(net_path).layer) == report.layers_after < report.layers_before
    got = folded.forward(blobs=["fc1000"], data=x)
    scale = np.abs(logits).max()
    np.testing.assert_allclose(got["fc1000"] / scale, logits / scale, atol=1e-4)
    np.testing.assert_allclose(got["prob"], prob, atol=1e-4)

    cv2 = pytest.importorskip("cv2")
    cv_net = cv2.dnn.readNetFromCaffe(str(net_path), str(weights_path))
    cv_net.setInput(x)
    theirs = cv_net.forward("fc1000")
    np.testing.assert_allclose(theirs.reshape(logits.shape) / scale, logits / scale, atol=1e-4)


SMALL = """
name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 bias_term: true } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "bn" }
layer { name: "scale" type: "Scale" bottom: "bn" top: "scaled" scale_param { bias_term: false } }
layer { name: "drop" type: "Dropout" bottom: "scaled" top: "dropped" }
layer { name: "relu" type: "ReLU" bottom: "dropped" top: "dropped" }
layer { name: "split" type: "Split" bottom: "dropped" top: "a" top: "b" }
layer { name: "ip" type: "InnerProduct" bottom: "a" top: "ip" inner_product_param { num_output: 5 transpose: true } }
layer { name: "ipbn" type: "BatchNorm" bottom: "ip" top: "ip" }
layer { name: "pool" type: "Pooling" bottom: "b" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "convbn_shared" type: "Convolution" bottom: "b" top: "c2" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "bn2" type: "BatchNorm" bottom: "c2" top: "c2n" }
layer { name: "keep" type: "ReLU" bottom: "c2" top: "c2r" }
"""


def test_small_net_not_in_place_transposed_ip_and_a_shared_top_left_alone():
    net = dlsoft.Net(parse_net_text(SMALL), phase="TEST")
    _randomise(net, seed=3)
    x = np.random.default_rng(4).normal(size=(2, 3, 8, 8)).astype(np.float32)
    expected = {k: v.copy() for k, v in net.forward(data=x).items()}
    optimized, report = optimize_net(net)
    assert [names for names in report.folded] == [("conv", "bn", "scale"), ("ip", "ipbn")]
    assert report.dropped == ["drop", "split"]
    types = [layer.type for layer in optimized.layer]
    assert types.count("BatchNorm") == 1  # bn2: c2 is also read by 'keep', so it stays
    again = dlsoft.Net(optimized, phase="TEST")
    for layer_param in optimized.layer:
        for blob, proto in zip(again.params.get(layer_param.name, []), layer_param.blobs):
            blob.data[...] = np.asarray(proto.data, np.float32).reshape(blob.shape)
    got = again.forward(data=x)
    assert set(got) == set(expected)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-5)


def test_train_phase_is_refused_in_one_line():
    with dlsoft.Net(parse_net_text(SMALL), phase="TRAIN") as net, \
            pytest.raises(NetDefinitionError, match="TEST phase") as info:
        optimize_net(net)
    assert "\n" not in str(info.value)
