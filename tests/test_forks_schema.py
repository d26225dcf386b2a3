"""The forks' fields in the schema: their text meaning, their binary numbers, ceil_mode."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from gradcheck import run_layer

from dlsoft.errors import NetDefinitionError
from dlsoft.netdef import io
from dlsoft.protos import caffe_pb2

ROOT = Path(__file__).resolve().parents[1]


# ---- wire format, written here independently of dlsoft.netdef.forks -------------------------
def varint(value: int) -> bytes:
    out = b""
    while value >= 0x80:
        out += bytes([(value & 0x7F) | 0x80])
        value >>= 7
    return out + bytes([value])


def field_bytes(number: int, payload: bytes) -> bytes:
    """A length-delimited field, as a fork's protobuf writes a message-typed field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def float_field(number: int, value: float) -> bytes:
    return varint(number << 3 | 5) + struct.pack("<f", value)


def fork_layer(name: str, type_: str, *fields: bytes) -> bytes:
    """A LayerParameter as a fork serializes it: name (1), type (2), then its own fields."""
    return field_bytes(1, name.encode()) + field_bytes(2, type_.encode()) + b"".join(fields)


def fork_net(tmp_path, *layers: bytes) -> Path:
    path = tmp_path / "fork.caffemodel"
    path.write_bytes(varint(1 << 3 | 2) + varint(4) + b"fork" + b"".join(field_bytes(100, l) for l in layers))
    return path


# ---- text: the fork's names and meaning ------------------------------------------------------
def test_fork_fields_parse_in_prototxt_and_yaml(tmp_path):
    text = """
layer { name: "p" type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 ceil_mode: false } }
layer { name: "i" type: "Interp" interp_param { zoom_factor: 2 use_blob_size: true } }
layer { name: "r" type: "ROIPooling" roi_pooling_param { pooled_h: 7 pooled_w: 7 spatial_scale: 0.0625 } }
layer { name: "ps" type: "PSROIPooling" psroi_pooling_param { spatial_scale: 0.0625 output_dim: 21 group_size: 7 } }
layer { name: "s" type: "SmoothL1Loss" smooth_l1_loss_param { sigma: 3 } }
layer { name: "o" type: "BoxAnnotatorOHEM" box_annotator_ohem_param { roi_per_img: 128 ignore_label: -1 } }
layer { name: "b" type: "BN" bn_param { bn_mode: INFERENCE scale_filler { type: "constant" value: 1 } } }
layer { name: "b2" type: "BN" bn_param { slope_filler { value: 1 } momentum: 0.95 frozen: true } }
layer { name: "u" type: "Upsample" upsample_param { scale: 2 upsample_h: 30 } }
layer { name: "sh" type: "ShuffleChannel" shuffle_channel_param { group: 3 } }
layer { name: "sd" type: "SeLuDropout" selu_dropout_param { dropout_ratio: 0.1 } }
layer { name: "sa" type: "SegAccuracy" seg_accuracy_param { ignore_label: 255 } }
layer { name: "d" type: "DenseImageData" dense_image_data_param { source: "x.txt" batch_size: 4 } }
layer { name: "l" type: "SoftmaxWithLoss" loss_param { normalization: PRE_FIXED pre_fixed_normalizer: 128 } }
layer { name: "t" type: "ImageSegData" transform_param { scale_factors: 0.75 scale_factors: 1.5 }
        image_data_param { label_type: PIXEL ignore_label: 255 } }
layer { name: "dr" type: "Dropout" dropout_param { dropout_ratio: 0.5 scale_train: false } }
"""
    net = io.parse_net_text(text)
    by = {layer.name: layer for layer in net.layer}
    assert by["p"].pooling_param.ceil_mode is False
    assert by["i"].interp_param.zoom_factor == 2 and by["i"].interp_param.use_blob_size
    assert by["ps"].psroi_pooling_param.group_size == 7
    assert by["b"].bn_param.bn_mode == caffe_pb2.BNParameter.INFERENCE
    assert by["b2"].bn_param.momentum == pytest.approx(0.95)
    assert list(by["t"].transform_param.scale_factors) == [0.75, 1.5]
    assert by["t"].image_data_param.label_type == caffe_pb2.ImageDataParameter.PIXEL
    assert by["l"].loss_param.normalization == caffe_pb2.LossParameter.PRE_FIXED
    # YAML is the same schema: the text round-trips through it unchanged.
    path = tmp_path / "net.yaml"
    io.write_net(net, path)
    assert io.read_net(path) == net


def test_ssd_solver_fields():
    solver = io.parse_solver_text('eval_type: "detection" ap_version: "11point" show_per_class_result: true')
    assert (solver.eval_type, solver.ap_version, solver.show_per_class_result) == ("detection", "11point", True)


def test_every_fork_field_is_documented():
    readme = (ROOT / "dlsoft" / "protos" / "README.md").read_text()
    names = ["ceil_mode", "bn_param", "bn_mode", "interp_param", "upsample_param", "roi_pooling_param",
             "psroi_pooling_param", "smooth_l1_loss_param", "box_annotator_ohem_param",
             "shuffle_channel_param", "selu_param", "selu_dropout_param", "seg_accuracy_param",
             "dense_image_data_param", "annotated_data_param", "multibox_loss_param",
             "detection_evaluate_param", "resize_param", "distort_param", "expand_param", "scale_factors",
             "eval_type", "ap_version", "pre_fixed_normalizer", "PRE_FIXED", "scale_train", "label_type",
             "use_blob_size", "momentum", "weight_by_label_freqs", "class_weighting"]
    assert [n for n in names if n not in readme] == []
    # Every field numbered 100000 + a fork's number is in the table with that number.
    for message in caffe_pb2.DESCRIPTOR.message_types_by_name.values():
        for field in message.fields:
            if field.number >= 100000:
                assert str(field.number) in readme, f"{message.name}.{field.name}"


# ---- binary: the forks' numbers --------------------------------------------------------------
def test_fork_numbered_layer_fields_are_mapped_back(tmp_path):
    interp = caffe_pb2.InterpParameter(height=33, width=65).SerializeToString()
    upsample = caffe_pb2.UpsampleParameter(scale=2, upsample_h=30).SerializeToString()
    roi = caffe_pb2.ROIPoolingParameter(pooled_h=7, pooled_w=7, spatial_scale=0.0625).SerializeToString()
    seg = caffe_pb2.SegAccuracyParameter(ignore_label=[255]).SerializeToString()
    # PSPNet's BN (152): fillers at 1 and 2, momentum a float at 3, frozen at 5.
    filler = caffe_pb2.FillerParameter(type="constant", value=1).SerializeToString()
    pspnet_bn = field_bytes(1, filler) + float_field(3, 0.95) + varint(5 << 3) + varint(1)
    blob = caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[2]), data=[1, 2]).SerializeToString()
    path = fork_net(
        tmp_path,
        fork_layer("interp", "Interp", field_bytes(143, interp)),          # PSPNet: 143 (input_param)
        fork_layer("up_segnet", "Upsample", field_bytes(137, upsample)),   # SegNet: 137 (embed_param)
        fork_layer("up_enet", "Upsample", field_bytes(147, upsample)),     # ENet: 147 (swish_param)
        fork_layer("roi", "ROIPooling", field_bytes(150, roi)),            # yjxiong: 150 (no BVLC field)
        fork_layer("acc", "SegAccuracy", field_bytes(144, seg)),           # PSPNet: 144 (crop_param)
        fork_layer("bn", "BN", field_bytes(7, blob), field_bytes(152, pspnet_bn)),
        fork_layer("data", "ImageSegData", field_bytes(100, float_field(8, 0.5) + float_field(8, 2.0))),
        fork_layer("emb", "Embed", field_bytes(137, caffe_pb2.EmbedParameter(num_output=3).SerializeToString())),
    )
    net = io.read_net(path)
    by = {layer.name: layer for layer in net.layer}
    assert (by["interp"].interp_param.height, by["interp"].interp_param.width) == (33, 65)
    assert not by["interp"].HasField("input_param")
    for name in ("up_segnet", "up_enet"):
        assert by[name].upsample_param.upsample_h == 30
        assert not by[name].HasField("embed_param") and not by[name].HasField("swish_param")
    assert by["roi"].roi_pooling_param.pooled_h == 7
    assert list(by["acc"].seg_accuracy_param.ignore_label) == [255] and not by["acc"].HasField("crop_param")
    bn = by["bn"].bn_param
    assert bn.scale_filler.value == 1 and bn.momentum == pytest.approx(0.95) and bn.frozen
    assert list(by["bn"].blobs[0].data) == [1, 2]
    assert list(by["data"].transform_param.scale_factors) == [0.5, 2.0]
    # BVLC's own use of a number is left alone.
    assert by["emb"].embed_param.num_output == 3 and not by["emb"].HasField("upsample_param")


def test_fork_numbers_are_read_only_on_the_fork_layer_types(tmp_path):
    # CaffeOnSpark (Yahoo's open_nsfw model) writes a string under layer field 10001, which
    # is R-FCN's psroi_pooling_param: on a MemoryData layer it must not be parsed as one.
    psroi = caffe_pb2.PSROIPoolingParameter(spatial_scale=0.0625, output_dim=21, group_size=7)
    path = fork_net(
        tmp_path,
        fork_layer("data", "MemoryData", field_bytes(10001, b"com.yahoo.ml.caffe.ImageDataFrame")),
        fork_layer("psroi", "PSROIPooling", field_bytes(10001, psroi.SerializeToString())),
        fork_layer("conv", "Convolution", field_bytes(162, field_bytes(2, b"\x08\x01"))),  # yjxiong's 162
    )
    by = {layer.name: layer for layer in io.read_net(path).layer}
    assert not by["data"].HasField("psroi_pooling_param")
    assert by["psroi"].psroi_pooling_param == psroi
    assert not by["conv"].HasField("selu_dropout_param")
    # A net dlsoft writes keeps the forks' numbers, so the fork itself reads it back.
    net = caffe_pb2.NetParameter(layer=[caffe_pb2.LayerParameter(
        name="roi", type="ROIPooling", roi_pooling_param=caffe_pb2.ROIPoolingParameter(pooled_h=6))])
    assert field_bytes(8266711, varint(1 << 3) + varint(6)) in net.SerializeToString()


def test_pooling_field_13_in_a_binary_net_is_reported_not_guessed(tmp_path):
    pooling = caffe_pb2.PoolingParameter(kernel_size=2, round_mode=caffe_pb2.PoolingParameter.FLOOR)
    layer = caffe_pb2.LayerParameter(name="pool1", type="Pooling", pooling_param=pooling)
    path = fork_net(tmp_path, layer.SerializeToString())
    with pytest.warns(io.FileFormatWarning, match="'pool1'.*field 13.*round_mode.*ceil_mode fork.*prototxt"):
        net = io.read_net(path)
    assert net.layer[0].pooling_param.round_mode == caffe_pb2.PoolingParameter.FLOOR


# ---- ceil_mode on the Pooling layer ----------------------------------------------------------
@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_ceil_mode_false_is_round_mode_floor(method):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 7)).astype(np.float32)
    extra = "kernel_size: 3 stride: 2 pad: 1"
    outs = {}
    for flag in ("ceil_mode: false", "round_mode: FLOOR", "ceil_mode: true", ""):
        _, _, tops = run_layer(f'type: "Pooling" pooling_param {{ pool: {method} {extra} {flag} }}', [x])
        outs[flag] = tops[0].data
    np.testing.assert_array_equal(outs["ceil_mode: false"], outs["round_mode: FLOOR"])
    np.testing.assert_array_equal(outs["ceil_mode: true"], outs[""])
    fn = torch.nn.functional.max_pool2d if method == "MAX" else torch.nn.functional.avg_pool2d
    for ceil, key in ((False, "ceil_mode: false"), (True, "ceil_mode: true")):
        expected = fn(torch.from_numpy(x), 3, 2, 1, ceil_mode=ceil).numpy()
        assert outs[key].shape == expected.shape
        np.testing.assert_allclose(outs[key], expected, rtol=1e-6, atol=1e-6)


def test_ceil_mode_contradicting_round_mode_is_an_error():
    with pytest.raises(NetDefinitionError, match="ceil_mode: true contradicts round_mode: FLOOR"):
        run_layer('type: "Pooling" pooling_param { kernel_size: 2 ceil_mode: true round_mode: FLOOR }',
                  [np.zeros((1, 1, 4, 4), np.float32)])
