"""caffe.NetSpec / caffe.layers / caffe.params / caffe.to_proto, checked against pycaffe's output.

The LeNet of BVLC's 01-learning-lenet notebook must give exactly the prototxt real
pycaffe printed in that notebook (tests/data/pycaffe/lenet_auto_train.prototxt); the
CaffeNet of BVLC's examples/pycaffe/caffenet.py must give the net of the hand-written
models/bvlc_reference_caffenet/train_val.prototxt, up to the names pycaffe generates and
the settings caffenet.py leaves out.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format

import caffe
from caffe import layers as L
from caffe import params as P
from caffe import to_proto
from caffe.proto import caffe_pb2
from dlsoft.netdef import graph, io

DATA = Path(__file__).resolve().parent / "data" / "pycaffe"


def lenet(lmdb, batch_size):
    """The notebook's LeNet, as a user writes it."""
    n = caffe.NetSpec()
    n.data, n.label = L.Data(batch_size=batch_size, backend=P.Data.LMDB, source=lmdb,
                             transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type='xavier'))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50, weight_filler=dict(type='xavier'))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.fc1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type='xavier'))
    n.relu1 = L.ReLU(n.fc1, in_place=True)
    n.score = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type='xavier'))
    n.loss = L.SoftmaxWithLoss(n.score, n.label)
    return n


def test_lenet_matches_real_pycaffe_output():
    expected = io.parse_net_text((DATA / "lenet_auto_train.prototxt").read_text())
    got = lenet("mnist/mnist_train_lmdb", 64).to_proto()
    assert got == expected
    # and the text round-trips through the prototxt form unchanged
    assert text_format.Parse(str(got), caffe_pb2.NetParameter()) == expected


def test_lenet_builds_with_notebook_shapes(tmp_path):
    n = lenet("builtin:digits/train", 64)
    path = tmp_path / "lenet_auto_train.prototxt"
    path.write_text(str(n.to_proto()))
    net = caffe.Net(str(path), caffe.TRAIN)
    try:
        shapes = [(k, v.data.shape) for k, v in net.blobs.items()]
        assert shapes == [("data", (64, 1, 28, 28)), ("label", (64,)), ("conv1", (64, 20, 24, 24)),
                          ("pool1", (64, 20, 12, 12)), ("conv2", (64, 50, 8, 8)), ("pool2", (64, 50, 4, 4)),
                          ("fc1", (64, 500)), ("score", (64, 10)), ("loss", ())]
        assert [(k, v[0].data.shape) for k, v in net.params.items()] == [
            ("conv1", (20, 1, 5, 5)), ("conv2", (50, 20, 5, 5)), ("fc1", (500, 800)), ("score", (10, 500))]
    finally:
        net.close()


# ---------------------------------------------------------------- CaffeNet, as examples/pycaffe/caffenet.py
def conv_relu(bottom, ks, nout, stride=1, pad=0, group=1):
    conv = L.Convolution(bottom, kernel_size=ks, stride=stride, num_output=nout, pad=pad, group=group)
    return conv, L.ReLU(conv, in_place=True)


def fc_relu(bottom, nout):
    fc = L.InnerProduct(bottom, num_output=nout)
    return fc, L.ReLU(fc, in_place=True)


def max_pool(bottom, ks, stride=1):
    return L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=ks, stride=stride)


def caffenet(lmdb, batch_size=256, include_acc=False):
    data, label = L.Data(source=lmdb, backend=P.Data.LMDB, batch_size=batch_size, ntop=2,
                         transform_param=dict(crop_size=227, mean_value=[104, 117, 123], mirror=True))
    conv1, relu1 = conv_relu(data, 11, 96, stride=4)
    pool1 = max_pool(relu1, 3, stride=2)
    norm1 = L.LRN(pool1, local_size=5, alpha=1e-4, beta=0.75)
    conv2, relu2 = conv_relu(norm1, 5, 256, pad=2, group=2)
    pool2 = max_pool(relu2, 3, stride=2)
    norm2 = L.LRN(pool2, local_size=5, alpha=1e-4, beta=0.75)
    conv3, relu3 = conv_relu(norm2, 3, 384, pad=1)
    conv4, relu4 = conv_relu(relu3, 3, 384, pad=1, group=2)
    conv5, relu5 = conv_relu(relu4, 3, 256, pad=1, group=2)
    pool5 = max_pool(relu5, 3, stride=2)
    fc6, relu6 = fc_relu(pool5, 4096)
    drop6 = L.Dropout(relu6, in_place=True)
    fc7, relu7 = fc_relu(drop6, 4096)
    drop7 = L.Dropout(relu7, in_place=True)
    fc8 = L.InnerProduct(drop7, num_output=1000)
    loss = L.SoftmaxWithLoss(fc8, label)
    if include_acc:
        acc = L.Accuracy(fc8, label)
        return to_proto(loss, acc)
    return to_proto(loss)


def test_caffenet_automatic_names_are_pycaffes():
    net = caffenet("/path/to/caffe-train-lmdb")
    names = [layer.name for layer in net.layer]
    assert names[:6] == ["Data1", "Convolution1", "ReLU1", "Pooling1", "LRN1", "Convolution2"]
    assert names[-3:] == ["Dropout2", "InnerProduct3", "SoftmaxWithLoss1"]
    data = net.layer[0]
    assert list(data.top) == ["Data1", "Data2"]
    relu = net.layer[2]
    assert list(relu.bottom) == list(relu.top) == ["Convolution1"]  # in place, named by its own top
    assert data.data_param.backend == caffe_pb2.DataParameter.LMDB
    assert list(data.transform_param.mean_value) == [104, 117, 123]


EXPLICIT_DEFAULTS = {("pad", (0,)), ("stride", (1,)), ("group", 1)}


def _plain(value):
    return tuple(value) if hasattr(value, "extend") else value


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_caffenet_is_the_hand_written_train_val(shared_caffe, phase):
    written = io.read_net(shared_caffe / "models" / "bvlc_reference_caffenet" / "train_val.prototxt")
    written = graph.filter_net(written, graph.make_state(written, phase))
    spec = caffenet("lmdb", batch_size=256 if phase == "TRAIN" else 50, include_acc=phase == "TEST")
    assert len(spec.layer) == len(written.layer)
    rename: dict[str, str] = {}  # NetSpec's blob names -> the hand-written ones
    unmatched = list(written.layer)
    for layer in spec.layer:
        bottoms = [rename[b] for b in layer.bottom]
        match = next(w for w in unmatched if w.type == layer.type and list(w.bottom) == bottoms)
        unmatched.remove(match)
        for mine, theirs in zip(layer.top, match.top):
            rename.setdefault(mine, theirs)
        assert [rename[t] for t in layer.top] == list(match.top)
        # every setting caffenet.py makes is the hand-written file's (transform_param aside:
        # the file subtracts a mean file where caffenet.py gives mean values)
        for field, value in layer.ListFields():
            if field.name.endswith("_param") and field.name != "transform_param":
                sub = getattr(match, field.name)
                for inner, inner_value in value.ListFields():
                    if inner.name == "source" or (inner.name, _plain(inner_value)) in EXPLICIT_DEFAULTS:
                        continue  # caffenet.py spells out pad 0, stride 1, group 1, the file leaves them out
                    assert getattr(sub, inner.name) == inner_value, (layer.name, field.name, inner.name)
    assert not unmatched


def test_keyword_routing_and_repeated_fields():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3, 8, 8]))
    n.conv = L.Convolution(n.data, kernel_size=3, num_output=4, param=[dict(lr_mult=1), dict(lr_mult=2)],
                           weight_filler=dict(type="gaussian", std=0.01), include=dict(phase=caffe.TRAIN))
    n.out = L.InnerProduct(n.conv, num_output=2, loss_weight=0.5)
    n.silence = L.Silence(n.out, ntop=0)
    proto = n.to_proto()
    conv = proto.layer[1]
    assert list(conv.convolution_param.kernel_size) == [3]  # a repeated field given one value
    assert [p.lr_mult for p in conv.param] == [1, 2]
    assert conv.include[0].phase == caffe_pb2.TRAIN
    assert list(proto.layer[2].loss_weight) == [0.5]
    assert list(proto.layer[0].input_param.shape[0].dim) == [2, 3, 8, 8]
    assert proto.layer[3].name == "silence" and not proto.layer[3].top  # a top-less layer named by its attribute
    # caffe.to_proto names nothing after attributes: every top is <Type><k>
    assert [layer.name for layer in caffe.to_proto(n.out).layer] == ["Input1", "Convolution1", "InnerProduct1"]
    assert n.conv is n["conv"]
    with pytest.raises(AttributeError):
        n.missing  # noqa: B018
    with pytest.raises(TypeError, match="not a Top"):
        L.ReLU("data")


def test_to_yaml_reads_back_as_the_same_net(tmp_path):
    n = lenet("builtin:digits/train", 64)
    text = n.to_yaml()
    assert yaml.safe_load(text)["layer"][1]["name"] == "conv1"
    path = tmp_path / "lenet.yaml"
    path.write_text(text)
    assert io.read_net(path) == n.to_proto()
