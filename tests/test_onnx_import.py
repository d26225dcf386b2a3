"""ONNX import (export -> import round trips, hand-built ONNX graphs checked against
onnxruntime, refusals), the `dlsoft export`/`dlsoft import` commands and `zoo publish --onnx`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import dlsoft  # noqa: E402
from dlsoft.cli import cli  # noqa: E402
from dlsoft.netdef.io import parse_net_text, read_net  # noqa: E402
from dlsoft.onnx import OnnxError, export_net, import_model  # noqa: E402
from onnx_check import input_feeds, randomize, relative_error, run_onnx  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
CAFFE = SHARED / "caffe"
MOBILENET_SSD = SHARED / "caffe-wild" / "chuanqi305+MobileNet-SSD" / "voc" / "MobileNetSSD_deploy.prototxt"


def _net_file(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    return path


def round_trip(net, tmp_path, names, batch=2):
    """Export ``net``, import the file, and compare the imported net with the original."""
    export_net(net, tmp_path / "model.onnx", outputs=names)
    prototxt, caffemodel = import_model(tmp_path / "model.onnx", tmp_path / "imported")
    feeds = input_feeds(net, batch)
    net.forward(**feeds)
    expected = {name: np.array(net.blobs[name].data) for name in names}
    with dlsoft.Net(str(prototxt), phase="TEST", weights=str(caffemodel)) as imported:
        imported.forward(**feeds)
        errors = {name: relative_error(expected[name], imported.blobs[name].data) for name in names}
    assert all(err <= 1e-5 for err in errors.values()), errors
    return read_net(prototxt)


@pytest.mark.parametrize("path,names", [
    (CAFFE / "examples/mnist/lenet.prototxt", ["ip2", "prob"]),
    (CAFFE / "examples/cifar10/cifar10_quick.prototxt", ["ip2", "prob"]),
    pytest.param(CAFFE / "models/bvlc_googlenet/deploy.prototxt", ["loss3/classifier", "prob"],
                 marks=pytest.mark.slow),
    (MOBILENET_SSD, ["conv13"]),
    pytest.param(SHARED / "caffe-wild/soeaver+caffe-model/cls/resnet/deploy_resnet50.prototxt", ["fc1000", "prob"],
                 marks=pytest.mark.slow),
], ids=["lenet", "cifar10_quick", "googlenet", "mobilenet", "resnet50"])
def test_round_trip_real_nets(path, names, tmp_path):
    with dlsoft.Net(str(_net_file(path)), phase="TEST") as net:
        randomize(net)
        definition = round_trip(net, tmp_path, names, batch=2 if "examples" in str(path) else 1)
        imported = [layer.type for layer in definition.layer]
        # The same layers in the same order; Dropout (identity at TEST) is not exported.
        original = [layer.type for layer in net.layers if layer.type not in ("Split", "Dropout")]
        assert imported == original[:len(imported)]


def test_round_trip_layer_mix(tmp_path):
    text = '''name: "mix"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 12 dim: 11 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 group: 3 dilation: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "c1" top: "c1" }
layer { name: "sc" type: "Scale" bottom: "c1" top: "c1" scale_param { bias_term: true } }
layer { name: "pr" type: "PReLU" bottom: "c1" top: "c1" }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2" convolution_param { num_output: 6 kernel_size: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "c1" bottom: "c2" top: "sum" }
layer { name: "max" type: "Eltwise" bottom: "c1" bottom: "sum" top: "max" eltwise_param { operation: MAX } }
layer { name: "prod" type: "Eltwise" bottom: "c1" bottom: "max" top: "prod" eltwise_param { operation: PROD } }
layer { name: "lrn" type: "LRN" bottom: "prod" top: "lrn" lrn_param { local_size: 3 alpha: 0.5 k: 1.5 } }
layer { name: "leaky" type: "ReLU" bottom: "lrn" top: "leaky" relu_param { negative_slope: 0.2 } }
layer { name: "p1" type: "Pooling" bottom: "leaky" top: "p1" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "p2" type: "Pooling" bottom: "leaky" top: "p2" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "cat" type: "Concat" bottom: "p1" bottom: "p2" top: "cat" }
layer { name: "up" type: "Deconvolution" bottom: "cat" top: "up" convolution_param { num_output: 4 kernel_size: 2 stride: 2 } }
layer { name: "sig" type: "Sigmoid" bottom: "up" top: "sig" }
layer { name: "ip" type: "InnerProduct" bottom: "sig" top: "ip" inner_product_param { num_output: 7 axis: 2 } }
layer { name: "fl" type: "Flatten" bottom: "ip" top: "fl" }
layer { name: "fc" type: "InnerProduct" bottom: "fl" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" }
layer { name: "tanh" type: "TanH" bottom: "fc" top: "tanh" }
layer { name: "prob" type: "Softmax" bottom: "tanh" top: "prob" }'''
    with dlsoft.Net(parse_net_text(text), phase="TEST") as net:
        randomize(net)
        definition = round_trip(net, tmp_path, ["sum", "cat", "ip", "prob"])
        pools = [layer.pooling_param for layer in definition.layer if layer.type == "Pooling"]
        assert [(p.pad_h, p.kernel_h, p.HasField("round_mode")) for p in pools] == [(1, 3, False)] * 2


# ------------------------------------------------------------------ graphs written elsewhere
def _model(nodes, inputs, outputs, initializers, opset=17):
    graph = helper.make_graph(nodes, "elsewhere", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _value(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_import_pytorch_style_graph_matches_onnxruntime(tmp_path):
    """A graph as PyTorch writes one: explicit Pad before Conv, floor-mode pooling (Caffe's
    round_mode FLOOR), ceil-mode average pooling counting pads, Gemm with transB=0,
    BatchNormalization, broadcast Mul/Add by constants, Flatten, Dropout, Softmax."""
    rng = np.random.default_rng(3)
    f = lambda *shape: rng.normal(0, 0.3, shape).astype(np.float32)  # noqa: E731
    init = {"w1": f(4, 3, 3, 3), "b1": f(4), "pads": np.array([0, 0, 1, 2, 0, 0, 1, 2], np.int64),
            "gamma": f(4) + 1, "beta": f(4), "mean": f(4), "var": np.abs(f(4)) + 0.5, "slope": np.abs(f(4, 1, 1)),
            "chan": f(1, 4, 1, 1), "scalar": np.array(1.5, np.float32), "w2": f(4, 4, 1, 1),
            "fc": f(4 * 4 * 4, 6), "fcb": f(6), "shape": np.array([0, -1], np.int64), "proj": f(6, 5)}
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["xp"], mode="constant"),
        helper.make_node("Conv", ["xp", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[0, 0, 0, 0]),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["bn"], epsilon=1e-3),
        helper.make_node("PRelu", ["bn", "slope"], ["act"]),
        helper.make_node("MaxPool", ["act"], ["mp"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["mp", "chan"], ["scaled"]),
        helper.make_node("Add", ["scaled", "scalar"], ["shifted"]),
        helper.make_node("Conv", ["shifted", "w2"], ["c2"], kernel_shape=[1, 1]),
        helper.make_node("Add", ["c2", "shifted"], ["res"]),
        helper.make_node("Relu", ["res"], ["relu"]),
        helper.make_node("AveragePool", ["relu"], ["ap"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                         ceil_mode=1, count_include_pad=1),
        helper.make_node("Flatten", ["ap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["gemm"]),
        helper.make_node("Dropout", ["gemm"], ["drop"]),
        helper.make_node("Reshape", ["drop", "shape"], ["reshaped"]),
        helper.make_node("MatMul", ["reshaped", "proj"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=1),
    ]
    model = _model(nodes, [_value("x", ["N", 3, 14, 11])], [_value("prob", None), _value("gemm", None)], init)
    onnx.save(model, tmp_path / "torchy.onnx")
    prototxt, caffemodel = import_model(tmp_path / "torchy.onnx", tmp_path / "out")
    definition = read_net(prototxt)
    types = [layer.type for layer in definition.layer]
    assert types == ["Input", "Convolution", "BatchNorm", "Scale", "PReLU", "Pooling", "Scale", "Bias",
                     "Convolution", "Eltwise", "ReLU", "Pooling", "InnerProduct", "Dropout", "Reshape",
                     "InnerProduct", "Softmax"]
    pools = [layer.pooling_param for layer in definition.layer if layer.type == "Pooling"]
    assert pools[0].round_mode == pools[0].FLOOR and not pools[1].HasField("round_mode")
    conv = definition.layer[1].convolution_param
    assert (conv.pad_h, conv.pad_w) == (1, 2)
    x = np.random.default_rng(4).normal(0, 1, (2, 3, 14, 11)).astype(np.float32)
    expected = run_onnx(tmp_path / "torchy.onnx", {"x": x})
    with dlsoft.Net(str(prototxt), phase="TEST", weights=str(caffemodel)) as net:
        net.forward(data=x) if "data" in net.blobs else net.forward(x=x)
        for name in ("gemm", "prob"):
            assert relative_error(expected[name], net.blobs[name].data) <= 1e-5, name


def _refused(tmp_path, nodes, init, shape=(1, 3, 8, 8), outputs=("y",)):
    model = _model(nodes, [_value("x", list(shape))], [_value(o, None) for o in outputs], init)
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(OnnxError) as info:
        import_model(tmp_path / "m.onnx", tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "m.onnx"))
    return message


def test_unsupported_operator_is_refused_by_name(tmp_path):
    message = _refused(tmp_path, [helper.make_node("Sin", ["x"], ["y"], name="wave")], {})
    assert "ONNX node 'wave' (Sin)" in message and "no Caffe layer" in message
    assert not (tmp_path / "out" / "m.prototxt").exists()
    message = _refused(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], {}, shape=("N", 3, "H", "W"))
    assert "input 'x' has a symbolic size on axis 2" in message


def test_asymmetric_padding_and_uncounted_average_pads_are_refused(tmp_path):
    w = np.ones((2, 3, 3, 3), np.float32)
    message = _refused(tmp_path, [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3],
                                                   pads=[0, 0, 2, 2], name="tf_same")], {"w": w})
    assert "'tf_same'" in message and "asymmetric" in message
    message = _refused(tmp_path, [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3],
                                                   pads=[1, 1, 1, 1], count_include_pad=0, name="avg")], {})
    assert "'avg'" in message and "divisor" in message
    message = _refused(tmp_path, [helper.make_node("Pad", ["x", "p"], ["xp"], name="pad"),
                                  helper.make_node("MaxPool", ["xp"], ["y"], kernel_shape=[2, 2])],
                       {"p": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)})
    assert "'pad'" in message


# ------------------------------------------------------------------ command line
LENET_DEPLOY = Path(__file__).resolve().parents[1] / "dlsoft" / "model_zoo" / "entries" / "lenet_mnist"


def invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_cli_export_then_import(tmp_path):
    deploy, weights = LENET_DEPLOY / "deploy.prototxt", LENET_DEPLOY / "lenet_mnist.caffemodel"
    result = invoke(["export", deploy, weights, tmp_path / "lenet.onnx"])
    assert result.exit_code == 0, result.output
    assert "outputs: prob" in result.output
    model = onnx.load(str(tmp_path / "lenet.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    result = invoke(["export", deploy, weights, tmp_path / "static.onnx", "--static-batch", "--output", "ip1"])
    assert result.exit_code == 0, result.output
    model = onnx.load(str(tmp_path / "static.onnx"))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 64
    assert [o.name for o in model.graph.output] == ["ip1"]

    result = invoke(["import", tmp_path / "lenet.onnx", tmp_path / "back", "--name", "lenet"])
    assert result.exit_code == 0, result.output
    with dlsoft.Net(str(deploy), phase="TEST", weights=str(weights)) as original, \
            dlsoft.Net(str(tmp_path / "back/lenet.prototxt"), phase="TEST",
                       weights=str(tmp_path / "back/lenet.caffemodel")) as imported:
        feeds = input_feeds(original, 3)
        assert relative_error(np.array(original.forward(**feeds)["prob"]), imported.forward(**feeds)["prob"]) <= 1e-5


def test_cli_errors_are_one_line(tmp_path):
    deploy, weights = LENET_DEPLOY / "deploy.prototxt", LENET_DEPLOY / "lenet_mnist.caffemodel"
    assert_one_line_error(invoke(["export", tmp_path / "none.prototxt", weights, tmp_path / "x.onnx"]), "not found")
    (tmp_path / "argmax.prototxt").write_text(
        deploy.read_text() + '\nlayer { name: "top1" type: "ArgMax" bottom: "prob" top: "top1" }\n')
    assert_one_line_error(invoke(["export", tmp_path / "argmax.prototxt", weights, tmp_path / "x.onnx"]),
                          "layer 'top1' (type ArgMax)", "cannot be exported to ONNX")
    assert not (tmp_path / "x.onnx").exists()
    assert_one_line_error(invoke(["export", deploy, weights, tmp_path / "x.onnx", "--output", "nope"]), "'nope'")
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a model")
    assert_one_line_error(invoke(["import", tmp_path / "junk.onnx", tmp_path / "out"]), "not an ONNX model")
    assert_one_line_error(invoke(["import", tmp_path / "missing.onnx", tmp_path / "out"]), "not found")
    model = _model([helper.make_node("Sin", ["x"], ["y"], name="wave")], [_value("x", [1, 2])], [_value("y", None)], {})
    onnx.save(model, tmp_path / "sin.onnx")
    assert_one_line_error(invoke(["import", tmp_path / "sin.onnx", tmp_path / "out"]), "'wave' (Sin)")


def test_zoo_publish_with_onnx(tmp_path, monkeypatch):
    monkeypatch.setenv("DLSOFT_CONFIG", str(tmp_path / "config"))
    monkeypatch.setenv("DLSOFT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "zoo" / "lenet_copy"
    folder.mkdir(parents=True)
    for name in ("deploy.prototxt", "lenet_mnist.caffemodel"):
        (folder / name).write_bytes((LENET_DEPLOY / name).read_bytes())
    (folder / "zoo.yaml").write_text(yaml.safe_dump({"name": "lenet_copy", "metrics": [
        {"name": "accuracy", "value": 0.97, "data": "bundled digits, held-out 1,000"}]}))
    result = invoke(["zoo", "publish", folder, "--onnx"])
    assert result.exit_code == 0, result.output
    record = yaml.safe_load((folder / "zoo.yaml").read_text())["files"]["onnx"]
    assert record["path"] == "lenet_mnist.onnx" and len(record["sha256"]) == 64
    index = yaml.safe_load((tmp_path / "zoo" / "index.yaml").read_text())
    assert index["entries"][0]["files"]["onnx"]["path"] == "lenet_copy/lenet_mnist.onnx"
    with dlsoft.Net(str(folder / "deploy.prototxt"), phase="TEST",
                    weights=str(folder / "lenet_mnist.caffemodel")) as net:
        feeds = input_feeds(net, 2)
        expected = np.array(net.forward(**feeds)["prob"])
    assert relative_error(expected, run_onnx(folder / "lenet_mnist.onnx", feeds)["prob"]) <= 1e-4
