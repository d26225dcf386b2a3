"""Hardening of net reading: required fields, YAML alias bombs (issue 12)."""
from __future__ import annotations

import time

import pytest

import dlsoft
from dlsoft.errors import ParseError
from dlsoft.netdef import io
from dlsoft.protos import caffe_pb2

CLIP_NO_MAX = """name: "n"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer {
  name: "clip1"
  type: "Clip"
  bottom: "data"
  top: "clip"
  clip_param { min: 0 }
}
"""

CLIP_NO_MAX_YAML = """name: n
layer:
- {name: data, type: Input, top: data, input_param: {shape: {dim: [2, 3]}}}
- name: clip1
  type: Clip
  bottom: data
  top: clip
  clip_param: {min: 0}
"""


@pytest.mark.parametrize("suffix, text, line", [(".prototxt", CLIP_NO_MAX, 4), (".yaml", CLIP_NO_MAX_YAML, 4)])
def test_missing_required_field_is_refused_on_read(tmp_path, suffix, text, line):
    path = tmp_path / f"net{suffix}"
    path.write_text(text)
    with pytest.raises(ParseError) as info:
        io.read_net(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: ") and "\n" not in message
    assert "clip1" in message and "clip_param.max" in message and "required" in message


def test_missing_required_field_in_binary_and_string_and_solver(tmp_path):
    with pytest.raises(ParseError, match="clip_param.max"):
        io.parse_net_text(CLIP_NO_MAX)
    net = caffe_pb2.NetParameter()
    net.layer.add(name="c", type="Clip").clip_param.min = 0
    (tmp_path / "w.caffemodel").write_bytes(net.SerializePartialToString())
    with pytest.raises(ParseError, match=r"layer 'c'.*clip_param.max"):
        io.read_net(tmp_path / "w.caffemodel")
    solver = tmp_path / "solver.prototxt"
    solver.write_text('base_lr: 0.1\nnet_param {\n  layer { name: "c" type: "Clip" clip_param { max: 1 } }\n}\n')
    with pytest.raises(ParseError, match=r"solver.prototxt:3: .*net_param.layer\[0\].*clip_param.min"):
        io.read_solver(solver)


def test_net_from_a_message_missing_required_field_is_refused():
    net = caffe_pb2.NetParameter()
    net.layer.add(name="data", type="Input", top=["data"]).input_param.shape.add(dim=[2, 3])
    clip = net.layer.add(name="clip1", type="Clip", bottom=["data"], top=["clip"])
    clip.clip_param.max = 1
    with pytest.raises(dlsoft.errors.DlsoftError, match="clip_param.min"):
        dlsoft.Net(net, phase="TEST")


def test_complete_clip_still_reads():
    net = io.parse_net_text(CLIP_NO_MAX.replace("min: 0", "min: 0 max: 6"))
    assert net.layer[1].clip_param.max == 6


def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    # Nested repetition through LayerParameter.blobs and BlobProto.data: 100 layers x 100
    # blobs x 100 floats (a 4 MB net, 5 s to expand) from a 6 KB file.
    floats = "&f [" + ", ".join(["0.5"] * 100) + "]"
    blobs = "&bl [" + ", ".join([f"{{data: {floats}}}"] + ["{data: *f}"] * 99) + "]"
    layers = [f"- {{name: l0, type: Input, blobs: {blobs}}}"]
    layers += [f"- {{name: l{i}, type: Input, blobs: *bl}}" for i in range(1, 100)]
    bomb = "name: bomb\nlayer:\n" + "\n".join(layers) + "\n"
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb)
    assert len(bomb) < 8_000 and "*bl" in bomb
    start = time.perf_counter()
    with pytest.raises(ParseError) as info:
        io.read_net(path)
    assert time.perf_counter() - start < 2
    message = str(info.value)
    assert message.startswith(f"{path}:") and "alias" in message and "\n" not in message


def test_small_yaml_aliases_still_work(tmp_path):
    path = tmp_path / "net.yaml"
    path.write_text("name: n\nlayer:\n- {name: d, type: Input, top: data, input_param: {shape: &s {dim: [1, 2]}}}\n"
                    "- {name: e, type: Input, top: data2, input_param: {shape: *s}}\n")
    net = io.read_net(path)
    assert list(net.layer[1].input_param.shape[0].dim) == [1, 2]
