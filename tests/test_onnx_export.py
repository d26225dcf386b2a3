"""ONNX export: onnxruntime computes what dlsoft computes, on real Caffe nets and on small
nets for each layer type (ceil-mode pooling, LRN, BatchNorm+Scale, Caffe's 0/-1 reshapes...)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import dlsoft  # noqa: E402
from dlsoft.netdef.io import parse_net_text  # noqa: E402
from dlsoft.onnx import OnnxError, export_net  # noqa: E402
from onnx_check import assert_matches, input_feeds, randomize, run_onnx  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
CAFFE = SHARED / "caffe"
WILD = SHARED / "caffe-wild"
MOBILENET_SSD = WILD / "chuanqi305+MobileNet-SSD" / "voc" / "MobileNetSSD_deploy.prototxt"


def _net_file(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    return path


def export_and_compare(net, tmp_path, names=None, batch=None, tolerance=1e-4, **kwargs):
    """Export ``net``, check the file, and compare onnxruntime with dlsoft on ``names``."""
    path = tmp_path / "model.onnx"
    export_net(net, path, outputs=names if names and kwargs.pop("cut", False) else None, **kwargs)
    onnx.checker.check_model(str(path), full_check=True)
    names = names or list(net.outputs)
    return assert_matches(net, path, input_feeds(net, batch), names, tolerance)


# ------------------------------------------------------------------ real nets
REAL_NETS = {
    "lenet": (CAFFE / "examples/mnist/lenet.prototxt", 3, ["ip2", "prob"]),
    "cifar10_quick": (CAFFE / "examples/cifar10/cifar10_quick.prototxt", 2, ["ip2", "prob"]),
    "caffenet_convolutions": (CAFFE / "models/bvlc_reference_caffenet/deploy.prototxt", 1, ["pool5"]),
    "caffenet": (CAFFE / "models/bvlc_reference_caffenet/deploy.prototxt", 1, ["fc8", "prob"]),
    "googlenet": (CAFFE / "models/bvlc_googlenet/deploy.prototxt", 1, ["loss3/classifier", "prob"]),
    "resnet50": (WILD / "soeaver+caffe-model/cls/resnet/deploy_resnet50.prototxt", 1, ["fc1000", "prob"]),
}


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name == "caffenet" else name
                                  for name in REAL_NETS])  # all of CaffeNet: 240 MB of weights, > 15 s
def test_real_net_matches_onnxruntime(name, tmp_path):
    """The whole net, compared on its output and on the logits (a softmax of random weights
    could hide errors by saturating); batch 1 for the big nets."""
    path, batch, names = REAL_NETS[name]
    with dlsoft.Net(str(_net_file(path)), phase="TEST") as net:
        randomize(net)
        assert names[-1] in net.outputs or names == ["pool5"]
        model = export_net(net, tmp_path / "model.onnx", outputs=names)
        onnx.checker.check_model(str(tmp_path / "model.onnx"), full_check=True)
        assert [o.name for o in model.graph.output] == names
        assert [i.name for i in model.graph.input] == list(net.inputs)
        assert_matches(net, tmp_path / "model.onnx", input_feeds(net, batch), names)


def test_mobilenet_backbone_depthwise(tmp_path):
    """MobileNet (depthwise convolutions as group = channels) from the MobileNet-SSD deploy
    net, cut before its SSD heads; also at another batch size than the net's."""
    with dlsoft.Net(str(_net_file(MOBILENET_SSD)), phase="TEST") as net:
        randomize(net)
        assert any(layer.type == "Convolution" and layer.group == layer.channels > 1 for layer in net.layers)
        path = tmp_path / "mobilenet.onnx"
        model = export_net(net, path, outputs=["conv13"])
        onnx.checker.check_model(str(path), full_check=True)
        assert not {n.op_type for n in model.graph.node} - {"Conv", "Relu"}
        assert_matches(net, path, input_feeds(net, 2), ["conv13"])


def test_mobilenet_ssd_heads_and_refused_detection_output(tmp_path):
    """The SSD heads (Permute, Flatten, Concat, Reshape, Softmax, PriorBox as a constant)
    export; DetectionOutput is refused in one line that says what to do."""
    with dlsoft.Net(str(_net_file(MOBILENET_SSD)), phase="TEST") as net:
        randomize(net)
        with pytest.raises(OnnxError) as info:
            export_net(net, tmp_path / "full.onnx")
        message = str(info.value)
        assert "\n" not in message and "'detection_out'" in message and "DetectionOutput" in message
        assert not (tmp_path / "full.onnx").exists()
        names = ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]
        path = tmp_path / "heads.onnx"
        export_net(net, path, outputs=names)
        onnx.checker.check_model(str(path), full_check=True)
        assert_matches(net, path, input_feeds(net), names)


def test_dynamic_batch_by_default_static_on_request(tmp_path):
    with dlsoft.Net(str(_net_file(CAFFE / "examples/mnist/lenet.prototxt")), phase="TEST") as net:
        randomize(net)
        model = export_net(net, tmp_path / "dynamic.onnx")
        assert [o.name for o in model.graph.output] == list(net.outputs) == ["prob"]
        dims = model.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 28, 28]
        assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        assert {op.version for op in model.opset_import if op.domain in ("", "ai.onnx")} == {17}
        for batch in (1, 5):
            assert_matches(net, tmp_path / "dynamic.onnx", input_feeds(net, batch), ["prob"])
        static = export_net(net, tmp_path / "static.onnx", static_batch=True)
        dims = static.graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_value for d in dims] == list(net.blobs["data"].shape)
        assert_matches(net, tmp_path / "static.onnx", input_feeds(net), ["prob"])


# ------------------------------------------------------------------ small nets, one concern each
def small_net(body: str, shape=(2, 3, 9, 9), tops="data", extra_inputs="") -> "dlsoft.Net":
    dims = " ".join(f"dim: {d}" for d in shape)
    text = f'''name: "t"
layer {{ name: "data" type: "Input" top: "{tops}" input_param {{ shape {{ {dims} }} {extra_inputs} }} }}
{body}'''
    return dlsoft.Net(parse_net_text(text), phase="TEST")


POOL_CASES = [
    # (input size, kernel, stride, pad): ceil rounding adds a last window hanging over the edge,
    # with and without pads, and the case where Caffe drops a window starting in the padding.
    (9, 3, 2, 0), (8, 3, 2, 0), (10, 3, 2, 1), (7, 2, 2, 1), (6, 3, 3, 2), (13, 3, 2, 1), (5, 4, 3, 3),
]


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("size,kernel,stride,pad", POOL_CASES)
def test_pooling_ceil_mode_and_ave_divisor(pool, size, kernel, stride, pad, tmp_path):
    body = f'''layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool"
  pooling_param {{ pool: {pool} kernel_size: {kernel} stride: {stride} pad: {pad} }} }}'''
    with small_net(body, (2, 3, size, size + 1)) as net:
        export_and_compare(net, tmp_path, tolerance=1e-6)
        if 2 * pad > kernel:
            return  # PyTorch takes pads up to half the kernel only
        torch = pytest.importorskip("torch")
        # an independent reference: PyTorch's ceil_mode pooling has Caffe's output rule and divisor
        x = torch.from_numpy(input_feeds(net)["data"])
        pooled = torch.nn.functional.max_pool2d(x, kernel, stride, pad, ceil_mode=True) if pool == "MAX" else \
            torch.nn.functional.avg_pool2d(x, kernel, stride, pad, ceil_mode=True, count_include_pad=True)
        onnx_out = run_onnx(tmp_path / "model.onnx", input_feeds(net))["pool"]
        np.testing.assert_allclose(onnx_out, pooled.numpy(), rtol=1e-5, atol=1e-6)


def test_pooling_rectangular_and_global(tmp_path):
    body = '''layer { name: "p1" type: "Pooling" bottom: "data" top: "p1"
  pooling_param { pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 } }
layer { name: "p2" type: "Pooling" bottom: "p1" top: "p2" pooling_param { pool: MAX global_pooling: true } }
layer { name: "p3" type: "Pooling" bottom: "data" top: "p3" pooling_param { pool: AVE global_pooling: true } }'''
    with small_net(body, (2, 3, 8, 7)) as net:
        export_and_compare(net, tmp_path, ["p1", "p2", "p3"], cut=True)


@pytest.mark.parametrize("region,size", [("ACROSS_CHANNELS", 5), ("ACROSS_CHANNELS", 3), ("WITHIN_CHANNEL", 3),
                                         ("WITHIN_CHANNEL", 5)])
def test_lrn(region, size, tmp_path):
    body = f'''layer {{ name: "norm" type: "LRN" bottom: "data" top: "norm"
  lrn_param {{ local_size: {size} alpha: 0.3 beta: 0.75 k: 2 norm_region: {region} }} }}'''
    with small_net(body, (2, 7, 6, 5)) as net:
        export_and_compare(net, tmp_path, tolerance=1e-5)


def test_convolutions_grouped_dilated_and_deconvolution(tmp_path):
    body = '''layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
  convolution_param { num_output: 6 kernel_size: 3 pad: 2 dilation: 2 group: 3 stride: 2 } }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
  convolution_param { num_output: 4 kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0 bias_term: false } }
layer { name: "d1" type: "Deconvolution" bottom: "c2" top: "d1"
  convolution_param { num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 2 } }
layer { name: "d2" type: "Deconvolution" bottom: "d1" top: "d2"
  convolution_param { num_output: 3 kernel_size: 3 dilation: 2 bias_term: false } }'''
    with small_net(body, (2, 3, 11, 10)) as net:
        randomize(net)
        export_and_compare(net, tmp_path, ["c1", "c2", "d1", "d2"], cut=True)


def test_inner_product_axes_and_transpose(tmp_path):
    body = '''layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" inner_product_param { num_output: 5 } }
layer { name: "ip2" type: "InnerProduct" bottom: "data" top: "ip2"
  inner_product_param { num_output: 4 axis: 2 transpose: true } }
layer { name: "ip3" type: "InnerProduct" bottom: "data" top: "ip3"
  inner_product_param { num_output: 3 axis: -1 bias_term: false } }
layer { name: "ip4" type: "InnerProduct" bottom: "ip1" top: "ip4" inner_product_param { num_output: 2 } }'''
    with small_net(body, (2, 3, 4, 5)) as net:
        randomize(net)
        export_and_compare(net, tmp_path)
        export_and_compare(net, tmp_path, batch=4)


def test_batchnorm_scale_folded_and_alone(tmp_path):
    body = '''layer { name: "bn1" type: "BatchNorm" bottom: "data" top: "data" batch_norm_param { eps: 0.001 } }
layer { name: "sc1" type: "Scale" bottom: "data" top: "data" scale_param { bias_term: true } }
layer { name: "bn2" type: "BatchNorm" bottom: "data" top: "bn2" }
layer { name: "ip" type: "InnerProduct" bottom: "bn2" top: "ip" inner_product_param { num_output: 6 } }
layer { name: "bn3" type: "BatchNorm" bottom: "ip" top: "bn3" }
layer { name: "sc3" type: "Scale" bottom: "bn3" top: "sc3" }'''
    with small_net(body, (2, 3, 4, 4)) as net:
        randomize(net)
        net.params["bn2"][2].data[...] = 0.0  # Caffe: a zero scale factor zeroes the statistics
        model = export_net(net, tmp_path / "bn.onnx")
        ops = [n.op_type for n in model.graph.node]
        assert ops.count("BatchNormalization") == 3 and "Mul" not in ops  # both Scales folded
        assert [o.name for o in model.graph.output] == ["sc3"]
        assert_matches(net, tmp_path / "bn.onnx", input_feeds(net), ["sc3"])


def test_batchnorm_with_batch_statistics_is_refused(tmp_path):
    body = '''layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" batch_norm_param { use_global_stats: false } }'''
    with small_net(body) as net, pytest.raises(OnnxError, match=r"layer 'bn' \(type BatchNorm\).*batch statistics"):
        export_net(net, tmp_path / "x.onnx")


def test_eltwise_concat_slice_split_crop(tmp_path):
    body = '''layer { name: "sl" type: "Slice" bottom: "data" top: "a" top: "b" top: "c"
  slice_param { axis: 1 slice_point: 1 slice_point: 3 } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "c" top: "sum" eltwise_param { operation: SUM coeff: 0.5 coeff: -2 } }
layer { name: "prod" type: "Eltwise" bottom: "a" bottom: "c" bottom: "sum" top: "prod" eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "a" bottom: "c" bottom: "prod" top: "max" eltwise_param { operation: MAX } }
layer { name: "cat" type: "Concat" bottom: "max" bottom: "b" bottom: "sum" top: "cat" }
layer { name: "cat2" type: "Concat" bottom: "cat" bottom: "cat" top: "cat2" concat_param { axis: 3 } }
layer { name: "ref" type: "Pooling" bottom: "b" top: "ref" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "crop" type: "Crop" bottom: "cat2" bottom: "ref" top: "crop" crop_param { axis: 2 offset: 1 offset: 3 } }
layer { name: "drop" type: "Dropout" bottom: "crop" top: "crop" dropout_param { dropout_ratio: 0.3 } }'''
    with small_net(body, (2, 4, 6, 5)) as net:
        export_and_compare(net, tmp_path, ["sum", "prod", "max", "cat2", "crop"], cut=True)
        model = onnx.load(str(tmp_path / "model.onnx"))
        assert "Dropout" not in {n.op_type for n in model.graph.node}


def test_reshape_flatten_softmax_permute(tmp_path):
    body = '''layer { name: "r1" type: "Reshape" bottom: "data" top: "r1" reshape_param { shape { dim: 0 dim: -1 dim: 5 } } }
layer { name: "r2" type: "Reshape" bottom: "data" top: "r2" reshape_param { shape { dim: 2 dim: 3 } axis: 2 num_axes: 1 } }
layer { name: "r3" type: "Reshape" bottom: "data" top: "r3" reshape_param { shape { dim: -1 } axis: 1 } }
layer { name: "f1" type: "Flatten" bottom: "data" top: "f1" flatten_param { axis: 1 end_axis: 2 } }
layer { name: "f2" type: "Flatten" bottom: "data" top: "f2" }
layer { name: "sm" type: "Softmax" bottom: "r1" top: "sm" softmax_param { axis: 2 } }
layer { name: "sm2" type: "Softmax" bottom: "data" top: "sm2" }
layer { name: "perm" type: "Permute" bottom: "data" top: "perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }'''
    names = ["r1", "r2", "r3", "f1", "f2", "sm", "sm2", "perm"]
    with small_net(body, (2, 3, 6, 5)) as net:
        export_and_compare(net, tmp_path, names, cut=True)
        export_and_compare(net, tmp_path, names, batch=3, cut=True)


def test_activations(tmp_path):
    body = '''layer { name: "relu" type: "ReLU" bottom: "data" top: "relu" }
layer { name: "leaky" type: "ReLU" bottom: "data" top: "leaky" relu_param { negative_slope: 0.1 } }
layer { name: "prelu" type: "PReLU" bottom: "data" top: "prelu" }
layer { name: "prelu_shared" type: "PReLU" bottom: "data" top: "prelu_shared" prelu_param { channel_shared: true } }
layer { name: "elu" type: "ELU" bottom: "data" top: "elu" elu_param { alpha: 0.7 } }
layer { name: "sig" type: "Sigmoid" bottom: "data" top: "sig" }
layer { name: "tanh" type: "TanH" bottom: "data" top: "tanh" }
layer { name: "abs" type: "AbsVal" bottom: "data" top: "abs" }
layer { name: "bnll" type: "BNLL" bottom: "data" top: "bnll" }
layer { name: "pow" type: "Power" bottom: "abs" top: "pow" power_param { power: 1.5 scale: 2 shift: 0.5 } }
layer { name: "pow1" type: "Power" bottom: "data" top: "pow1" power_param { scale: -3 } }
layer { name: "exp" type: "Exp" bottom: "data" top: "exp" exp_param { base: 2 scale: 0.5 shift: 1 } }
layer { name: "log" type: "Log" bottom: "abs" top: "log" log_param { base: 10 scale: 3 shift: 1 } }
layer { name: "thr" type: "Threshold" bottom: "data" top: "thr" threshold_param { threshold: 0.2 } }
layer { name: "clip" type: "Clip" bottom: "data" top: "clip" clip_param { min: -0.5 max: 0.7 } }
layer { name: "in_place" type: "ReLU" bottom: "tanh" top: "tanh" }'''
    names = ["relu", "leaky", "prelu", "prelu_shared", "elu", "sig", "tanh", "abs", "bnll", "pow", "pow1", "exp",
             "log", "thr", "clip"]
    with small_net(body, (2, 3, 4, 5)) as net:
        randomize(net)
        export_and_compare(net, tmp_path, names, cut=True, tolerance=1e-5)


def test_scale_and_bias_layers(tmp_path):
    body = '''layer { name: "sl" type: "Slice" bottom: "data" top: "x" top: "y" slice_param { axis: 3 slice_point: 4 } }
layer { name: "red" type: "Pooling" bottom: "y" top: "factor_map" pooling_param { pool: AVE kernel_h: 1 kernel_w: 1 } }
layer { name: "f" type: "Reshape" bottom: "factor_map" top: "factor" reshape_param { shape { dim: 0 dim: 3 dim: 5 } } }
layer { name: "s1" type: "Scale" bottom: "x" bottom: "factor" top: "s1" scale_param { axis: 0 } }
layer { name: "s2" type: "Scale" bottom: "x" top: "s2" scale_param { axis: 1 num_axes: 2 bias_term: true } }
layer { name: "b1" type: "Bias" bottom: "x" top: "b1" bias_param { axis: 2 num_axes: -1 } }
layer { name: "b2" type: "Bias" bottom: "x" bottom: "factor" top: "b2" bias_param { axis: 0 } }
layer { name: "norm" type: "Normalize" bottom: "x" top: "norm" norm_param { across_spatial: false channel_shared: false } }
layer { name: "norm2" type: "Normalize" bottom: "x" top: "norm2" }'''
    with small_net(body, (2, 3, 5, 5)) as net:
        randomize(net)
        export_and_compare(net, tmp_path, ["s1", "s2", "b1", "b2", "norm", "norm2"], cut=True, tolerance=1e-5)


def test_prior_box_is_a_constant(tmp_path):
    body = '''layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 3 stride: 4 } }
layer { name: "prior" type: "PriorBox" bottom: "conv" bottom: "data" top: "prior"
  prior_box_param { min_size: 10 max_size: 20 aspect_ratio: 2 flip: true clip: true variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }'''
    with small_net(body, (1, 3, 32, 32)) as net:
        export_and_compare(net, tmp_path, ["prior"], cut=True, tolerance=1e-6)


@pytest.mark.parametrize("body,what", [
    ('layer { name: "arg" type: "ArgMax" bottom: "data" top: "arg" }', "layer 'arg' (type ArgMax)"),
    ('layer { name: "lbl" type: "Input" top: "label" input_param { shape { dim: 2 } } }\n'
     'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "data" bottom: "lbl_data" top: "loss" }', None),
    ('layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask" '
     'pooling_param { pool: MAX kernel_size: 2 } }', "MAX mask top"),
])
def test_unsupported_layer_fails_with_one_line(body, what, tmp_path):
    if what is None:  # a training net: the loss is refused by name
        body = body.replace('bottom: "lbl_data"', 'bottom: "label"')
        text = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 5 } } }\n' + body
        net = dlsoft.Net(parse_net_text(text), phase="TEST")
        what = "layer 'loss' (type SoftmaxWithLoss)"
    else:
        net = small_net(body)
    with net, pytest.raises(OnnxError) as info:
        export_net(net, tmp_path / "x.onnx")
    assert what in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "x.onnx").exists()


def test_unknown_output_name_is_one_line(tmp_path):
    with small_net('layer { name: "r" type: "ReLU" bottom: "data" top: "r" }') as net:
        with pytest.raises(OnnxError, match="output 'nope': the net has no blob"):
            export_net(net, tmp_path / "x.onnx", outputs=["nope"])


def test_net_export_onnx_method(tmp_path):
    with small_net('layer { name: "r" type: "ReLU" bottom: "data" top: "r" }') as net:
        model = net.export_onnx(tmp_path / "m.onnx")
        assert (tmp_path / "m.onnx").is_file() and model.graph.output[0].name == "r"


def test_inputs_from_net_level_input_fields(tmp_path):
    """`input:` + `input_shape`/`input_dim` (the old deploy style) name and shape the inputs."""
    text = '''name: "old_style"
input: "image" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
input: "aux" input_shape { dim: 1 dim: 4 }
layer { name: "conv" type: "Convolution" bottom: "image" top: "conv" convolution_param { num_output: 4 kernel_size: 8 } }
layer { name: "flat" type: "Flatten" bottom: "conv" top: "flat" }
layer { name: "sum" type: "Eltwise" bottom: "flat" bottom: "aux" top: "sum" }'''
    with dlsoft.Net(parse_net_text(text), phase="TEST") as net:
        randomize(net)
        model = export_net(net, tmp_path / "model.onnx")
        assert [(i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim])
                for i in model.graph.input] == [("image", ["batch", 3, 8, 8]), ("aux", ["batch", 4])]
        assert_matches(net, tmp_path / "model.onnx", input_feeds(net, 3), ["sum"])


def test_tile_reduction_mvn_swish_parameter(tmp_path):
    body = '''layer { name: "tile" type: "Tile" bottom: "data" top: "tile" tile_param { axis: 2 tiles: 3 } }
layer { name: "sum" type: "Reduction" bottom: "data" top: "sum" reduction_param { axis: 1 } }
layer { name: "asum" type: "Reduction" bottom: "data" top: "asum" reduction_param { operation: ASUM axis: 2 coeff: -0.5 } }
layer { name: "sumsq" type: "Reduction" bottom: "data" top: "sumsq" reduction_param { operation: SUMSQ axis: -1 } }
layer { name: "mean" type: "Reduction" bottom: "data" top: "mean" reduction_param { operation: MEAN axis: 1 coeff: 2 } }
layer { name: "mvn" type: "MVN" bottom: "data" top: "mvn" }
layer { name: "mvn2" type: "MVN" bottom: "data" top: "mvn2" mvn_param { across_channels: true normalize_variance: false } }
layer { name: "swish" type: "Swish" bottom: "data" top: "swish" swish_param { beta: 1.5 } }
layer { name: "param" type: "Parameter" top: "param" parameter_param { shape { dim: 2 dim: 3 } } }'''
    names = ["tile", "sum", "asum", "sumsq", "mean", "mvn", "mvn2", "swish", "param"]
    with small_net(body, (2, 3, 4, 5)) as net:
        randomize(net)
        export_and_compare(net, tmp_path, names, cut=True, tolerance=1e-5)
        export_and_compare(net, tmp_path, names[:-1], batch=3, cut=True, tolerance=1e-5)


def test_every_layer_type_is_converted_or_refused_with_a_reason():
    from dlsoft.layers.registry import registered_types
    from dlsoft.onnx.export import _NO_ONNX_FORM, supported_types
    converted, refused = set(supported_types()), set(_NO_ONNX_FORM)
    assert converted <= set(registered_types())
    # the rest are the Input layer (the graph's inputs), data layers and losses (generic reasons)
    rest = set(registered_types()) - converted - refused - {"Input"}
    assert all(t.endswith("Data") or "Loss" in t for t in rest), rest


def test_batchnorm_output_wanted_keeps_the_scale_apart(tmp_path):
    body = '''layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }
layer { name: "sc" type: "Scale" bottom: "bn" top: "sc" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "sc" top: "relu" }'''
    with small_net(body) as net:
        randomize(net)
        export_and_compare(net, tmp_path, ["bn", "relu"], cut=True)
        export_and_compare(net, tmp_path, ["bn"], cut=True)


def test_fork_layers_depthwise_selu_shuffle_axpy(tmp_path):
    body = '''layer { name: "dw" type: "ConvolutionDepthwise" bottom: "data" top: "dw"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "selu" type: "SeLu" bottom: "dw" top: "selu" }
layer { name: "sd" type: "SeLuDropout" bottom: "selu" top: "selu" }
layer { name: "shuffle" type: "ShuffleChannel" bottom: "selu" top: "shuffle" shuffle_channel_param { group: 3 } }
layer { name: "gap" type: "Pooling" bottom: "shuffle" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "axpy" type: "Axpy" bottom: "gap" bottom: "shuffle" bottom: "selu" top: "axpy" }'''
    with small_net(body, (2, 6, 9, 8)) as net:
        randomize(net)
        export_and_compare(net, tmp_path, ["dw", "selu", "shuffle", "axpy"], cut=True, tolerance=1e-5)
        export_and_compare(net, tmp_path, ["axpy"], batch=3, cut=True, tolerance=1e-5)


def test_interp_align_corners(tmp_path):
    body = '''layer { name: "up" type: "Interp" bottom: "data" top: "up" interp_param { zoom_factor: 3 } }
layer { name: "down" type: "Interp" bottom: "data" top: "down" interp_param { shrink_factor: 2 pad_beg: -1 pad_end: -1 } }
layer { name: "fixed" type: "Interp" bottom: "data" top: "fixed" interp_param { height: 5 width: 11 } }'''
    with small_net(body, (2, 3, 9, 8)) as net:
        export_and_compare(net, tmp_path, ["up", "down", "fixed"], cut=True, tolerance=1e-5)
