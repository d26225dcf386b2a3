"""The schema: the committed generated module is fresh, and real Caffe files parse."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, text_format

from dlsoft.protos import caffe_pb2

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "dlsoft" / "protos"


def _serialized_descriptor(pb2_source: str) -> bytes:
    """The bytes passed to AddSerializedFile(...) in a generated *_pb2.py."""
    for node in ast.walk(ast.parse(pb2_source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "AddSerializedFile"):
            return ast.literal_eval(node.args[0])
    raise AssertionError("no AddSerializedFile call in generated module")


def _fdp(data: bytes) -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto.FromString(data)


def test_generated_module_is_fresh(tmp_path):
    pytest.importorskip("grpc_tools")
    proc = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}",
         f"--python_out={tmp_path}", str(PROTO_DIR / "caffe.proto")],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    fresh = _fdp(_serialized_descriptor((tmp_path / "caffe_pb2.py").read_text()))
    # Read the committed file's own bytes: the runtime's DESCRIPTOR.serialized_pb is
    # re-serialized (float defaults reformatted), so it is not what protoc wrote.
    committed = _fdp(_serialized_descriptor(Path(caffe_pb2.__file__).read_text()))
    assert fresh == committed, (
        "dlsoft/protos/caffe_pb2.py is stale; regenerate it (see dlsoft/protos/README.md)")


def test_caffe_field_numbers_and_defaults():
    L = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    assert L["convolution_param"].number == 106
    assert L["inner_product_param"].number == 117
    assert L["swish_param"].number == 147 and L["clip_param"].number == 148
    assert L["permute_param"].number == 202 and L["prior_box_param"].number == 203
    assert L["detection_output_param"].number == 204 and L["norm_param"].number == 206
    assert caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name["layer"].number == 100
    assert caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name["layers"].number == 2
    s = caffe_pb2.SolverParameter()
    assert (s.type, s.delta, s.momentum2, s.clip_gradients) == ("SGD", pytest.approx(1e-8), pytest.approx(0.999), -1)
    assert s.snapshot_format == caffe_pb2.SolverParameter.BINARYPROTO
    assert s.solver_mode == caffe_pb2.SolverParameter.GPU and s.random_seed == -1
    assert caffe_pb2.NetState().phase == caffe_pb2.TEST
    lrn = caffe_pb2.LRNParameter()
    assert (lrn.local_size, lrn.alpha, lrn.beta, lrn.k) == (5, 1.0, 0.75, 1.0)
    assert caffe_pb2.BatchNormParameter().moving_average_fraction == pytest.approx(0.999)
    assert caffe_pb2.LossParameter().normalization == caffe_pb2.LossParameter.VALID
    assert caffe_pb2.PriorBoxParameter().offset == 0.5
    assert caffe_pb2.DetectionOutputParameter().code_type == caffe_pb2.PriorBoxParameter.CORNER
    assert caffe_pb2.NonMaximumSuppressionParameter().nms_threshold == pytest.approx(0.3)
    assert caffe_pb2.V1LayerParameter.CONVOLUTION == 4
    assert caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name["data"].is_packed


def _shared_prototxts(root: Path) -> list[Path]:
    return sorted(root.rglob("*.prototxt"))


def test_all_shared_prototxts_parse(shared_caffe):
    files = _shared_prototxts(shared_caffe)
    assert len(files) == 54
    for path in files:
        msg = caffe_pb2.SolverParameter() if "solver" in path.name else caffe_pb2.NetParameter()
        text_format.Parse(path.read_text(), msg)  # no unknown-field allowance
        assert msg.ByteSize() > 0, path
