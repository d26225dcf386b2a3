"""Hardening of net building: every case of issue 12 is a one-line DlsoftError naming the
layer and field, never a plain Python error (IndexError, ZeroDivisionError, MemoryError...)."""
from __future__ import annotations

import numpy as np
import pytest

import dlsoft
from dlsoft.errors import DataError, DlsoftError, NetDefinitionError, WeightsError
from dlsoft.fileio import blob_proto_to_array
from dlsoft.netdef.io import parse_net_text
from dlsoft.protos import caffe_pb2


def build(text: str, path=None, phase: str = "TEST"):
    if path is not None:
        path.write_text(text)
        return dlsoft.Net(str(path), phase=phase)
    return dlsoft.Net(parse_net_text(text), phase=phase)


def feed(shape, name="x") -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "feed" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


CASES = [
    # (id, bottom shape, layer body, words the message must hold)
    ("batchnorm-0d", (), 'type: "BatchNorm"', ["0-d"]),
    ("argmax-0d", (), 'type: "ArgMax"', ["0-d"]),
    ("argmax-1d-top_k", (5,), 'type: "ArgMax" argmax_param { top_k: 9 }', ["top_k"]),
    ("conv-1d", (5,), 'type: "Convolution" convolution_param { num_output: 2 kernel_size: 1 }', ["axis"]),
    ("conv-0d", (), 'type: "Convolution" convolution_param { num_output: 2 kernel_size: 1 }', ["axis"]),
    ("conv-zero-batch", (0, 3, 8, 8), 'type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 }',
     ["empty"]),
    ("conv-zero-channels", (2, 0, 8, 8), 'type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 }',
     ["empty"]),
    ("conv-group-0", (2, 4, 8, 8), 'type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 group: 0 }',
     ["group"]),
    ("conv-kernel-2^31-1", (1, 3, 8, 8),
     'type: "Convolution" convolution_param { num_output: 2 kernel_size: 2147483647 }', ["kernel"]),
    ("conv-pad-huge", (1, 3, 8, 8),
     'type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 pad: 1048576 }', ["needs", "available"]),
    ("conv-axis", (1, 3, 8, 8), 'type: "Convolution" convolution_param { num_output: 2 kernel_size: 1 axis: 7 }',
     ["axis 7"]),
    ("deconv-axis", (1, 3, 8, 8), 'type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 1 axis: -9 }',
     ["axis -9"]),
    ("im2col-axis", (1, 3, 8, 8), 'type: "Im2col" convolution_param { kernel_size: 1 axis: 4 }', ["axis 4"]),
    ("pool-kernel-too-big", (1, 3, 4, 4), 'type: "Pooling" pooling_param { kernel_size: 9 pad: 2 }', ["kernel", "fit"]),
    ("pool-kernel-0", (1, 3, 4, 4), 'type: "Pooling" pooling_param { kernel_size: 0 }', ["kernel"]),
    ("pool-stride-2^31-1", (1, 3, 40, 40),
     'type: "Pooling" pooling_param { kernel_size: 3 stride: 2147483647 }', ["stride"]),
    ("lrn-within-huge", (1, 3, 8, 8),
     'type: "LRN" lrn_param { local_size: 2147483647 norm_region: WITHIN_CHANNEL }', ["local_size"]),
    ("lrn-across-huge", (1, 3, 8, 8), 'type: "LRN" lrn_param { local_size: 2147483647 }', ["local_size"]),
    ("xavier-zero-fan-in", (2, 0),
     'type: "InnerProduct" inner_product_param { num_output: 3 weight_filler { type: "xavier" } }', ["fan"]),
    ("msra-zero-fan-in", (2, 0),
     'type: "InnerProduct" inner_product_param { num_output: 3 weight_filler { type: "msra" } }', ["fan"]),
    ("gaussian-negative-std", (2, 4),
     'type: "InnerProduct" inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: -1 } }',
     ["std"]),
    ("innerproduct-256GiB", (1, 1 << 24),  # 16 GiB in the issue; 256 GiB is beyond any machine that runs this
     'type: "InnerProduct" inner_product_param { num_output: 4096 }', ["needs", "GiB", "available"]),
    ("python-module-path", (2, 3), 'type: "Python" python_param { module: "../my_layers" layer: "X" }',
     ["python_param", "module"]),
    ("python-module-relative", (2, 3), 'type: "Python" python_param { module: ".my_layers" layer: "X" }',
     ["python_param", "module"]),
]


@pytest.mark.parametrize("shape, body, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_layer_is_a_one_line_error_naming_layer_and_line(tmp_path, shape, body, words):
    text = feed(shape) + f'layer {{\n  name: "victim"\n  {body}\n  bottom: "x" top: "y"\n}}\n'
    with pytest.raises(DlsoftError) as info:
        build(text, tmp_path / "net.prototxt")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'net.prototxt'}:3: "), message
    assert "layer 'victim'" in message and "\n" not in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("dims, words", [
    ("dim: -1 dim: 3", ["negative", "shape[0]"]),
    ("dim: 1099511627776", ["needs", "available"]),            # 2^40 floats
    ("dim: 4294967296 dim: 4294967296 dim: 4", ["needs"]),     # the int64 product wraps to 0
])
def test_input_shapes_negative_or_giant_are_refused_before_allocating(tmp_path, dims, words):
    text = f'layer {{\n  name: "data"\n  type: "Input" top: "data"\n  input_param {{ shape {{ {dims} }} }}\n}}\n'
    with pytest.raises(NetDefinitionError) as info:
        build(text, tmp_path / "net.prototxt")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'net.prototxt'}:2: layer 'data' (type Input): "), message
    for word in words:
        assert word in message


def test_blob_proto_shapes_negative_or_overflowing():
    with pytest.raises(WeightsError, match="negative"):
        blob_proto_to_array(caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[-2, 3])))
    with pytest.raises(WeightsError, match="needs"):
        blob_proto_to_array(caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[2**32, 2**32])))


def test_datum_with_negative_dims():
    from dlsoft.data.lmdb_io import datum_to_array

    with pytest.raises(DataError, match="negative"):
        datum_to_array(caffe_pb2.Datum(channels=-1, height=0, width=3), "record 4")


def test_solverstate_with_overflowing_history_shape(tmp_path):
    from dlsoft.solver import snapshot as snap

    state = caffe_pb2.SolverState(iter=1)
    state.history.add(shape=caffe_pb2.BlobShape(dim=[2**33, 2**31]))
    (tmp_path / "s.solverstate").write_bytes(state.SerializeToString())
    with pytest.raises(DlsoftError, match="needs"):
        snap.read_state(str(tmp_path / "s.solverstate"))


def test_forward_from_an_unknown_layer_is_named():
    net = build(feed((2, 3)) + 'layer { name: "relu" type: "ReLU" bottom: "x" top: "y" }\n')
    with pytest.raises(NetDefinitionError, match=r"start='rleu' is not a layer.*did you mean 'relu'"):
        net.forward(start="rleu")
    with pytest.raises(NetDefinitionError, match="end='nope'"):
        net.backward(end="nope")
    with pytest.raises(NetDefinitionError, match="no blob named 'zz'"):
        net.forward(blobs=["zz"])
