"""Import an ONNX model as a Caffe net: a prototxt and a caffemodel dlsoft (or Caffe) runs.

The graph is read node by node in its (topological) order; each ONNX operator that maps
onto a Caffe layer has one small function (in ``import_ops``) that writes the LayerParameter and its
blobs. Where ONNX and Caffe differ, the function checks that this node's attributes land
on Caffe's semantics and refuses the node (one line, naming it) when they do not:

* pooling: Caffe pads symmetrically and rounds its output size up (``round_mode: FLOOR``,
  dlsoft's and the forks' field, rounds down); AVE divides by the window clipped to the
  padded input. The ONNX output size and divisor are computed for the node and must be
  Caffe's; a zero ``Pad`` in front of a convolution or average pooling folds into it.
* MatMul by a constant followed by Add of a constant is one InnerProduct (``axis`` = the
  last axis); Gemm is InnerProduct on 2-d input.
* BatchNormalization is Caffe's BatchNorm (scale factor 1) followed by a Scale layer.
* Add/Mul/Max of two same-shaped tensors are Eltwise; Add/Mul of a constant is a Bias
  or Scale layer whose blob covers the constant's non-broadcast axes.

Shapes come from ONNX shape inference with the symbolic batch dimension set to 1.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DlsoftError
from ..fileio import array_to_blob_proto
from ..protos import caffe_pb2
from . import OnnxError, require_onnx

_CONVERTERS: dict[str, Callable] = {}


def converts(*ops: str):
    """Decorator: the function converts ONNX nodes of these operator types."""
    def decorate(fn):
        for op in ops:
            _CONVERTERS[op] = fn
        return fn
    return decorate


def supported_ops() -> list[str]:
    """The ONNX operators the importer maps onto Caffe layers."""
    return sorted(_CONVERTERS)


class NodeContext:
    """One ONNX node as a converter sees it: attributes, inputs (Caffe blob names or
    constants), shapes, and the net under construction."""

    def __init__(self, importer: "_Importer", index: int, node):
        self.importer = importer
        self.index = index
        self.node = node
        self.op = node.op_type
        self.name = node.name or f"{node.op_type}_{index}"
        self.attrs = {a.name: importer.onnx.helper.get_attribute_value(a) for a in node.attribute}
        self.inputs = list(node.input)
        self.outputs = list(node.output)

    def attr(self, name: str, default=None):
        value = self.attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def refuse(self, reason: str) -> OnnxError:
        return OnnxError(f"ONNX node '{self.name}' ({self.op}): cannot be imported as Caffe: {reason}")

    def const(self, i: int) -> np.ndarray | None:
        """Input ``i`` as an array when it is a constant, else None."""
        if i >= len(self.inputs) or not self.inputs[i]:
            return None
        return self.importer.constants.get(self.inputs[i])

    def blob(self, i: int) -> str:
        """Input ``i`` as a Caffe blob (it must be computed, not a constant)."""
        name = self.inputs[i]
        if name in self.importer.constants:
            raise self.refuse(f"input {i} is a constant where Caffe needs a computed blob")
        if name in self.importer.pads:
            raise self.refuse(f"input '{name}' comes from a Pad, which folds only into Conv and pooling")
        return self.importer.blob_of(name)

    def shape(self, name: str) -> tuple[int, ...]:
        shape = self.importer.shapes.get(name)
        if shape is None:
            raise self.refuse(f"the shape of '{name}' is unknown (ONNX shape inference could not derive it)")
        return shape

    def layer(self, caffe_type: str, bottoms: list[str], tops: list[str] | None = None, blobs=(),
              suffix: str = ""):
        """Add a Caffe layer; its tops default to the node's outputs."""
        net = self.importer.net
        layer = net.layer.add()
        layer.name = self.importer.fresh_layer(self.name + suffix)
        layer.type = caffe_type
        layer.bottom.extend(bottoms)
        layer.top.extend(self.outputs[:1] if tops is None else tops)
        for array in blobs:
            layer.blobs.add().CopyFrom(array_to_blob_proto(np.asarray(array, dtype=np.float32)))
        return layer

    def single_use(self, value: str) -> bool:
        return len(self.importer.consumers[value]) == 1 and value not in self.importer.graph_outputs


class _Importer:
    def __init__(self, model):
        self.onnx = onnx = require_onnx()
        self.model = model
        self.opset = next((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), 1)
        graph = model.graph
        self.constants: dict[str, np.ndarray] = {
            t.name: onnx.numpy_helper.to_array(t).astype(np.float32 if t.data_type == 1 else None)
            for t in graph.initializer}
        self.shapes = self._infer_shapes()
        self.consumers: dict[str, list[int]] = defaultdict(list)
        for i, node in enumerate(graph.node):
            for name in node.input:
                self.consumers[name].append(i)
        self.graph_outputs = [o.name for o in graph.output]
        self.alias: dict[str, str] = {}  # ONNX value -> the Caffe blob that holds it
        self.pads: dict[str, tuple[str, list[int]]] = {}  # a Pad's output -> (its input, its pads)
        self.skip: set[int] = set()  # nodes folded into an earlier one
        self.layer_names: set[str] = set()
        self.net = caffe_pb2.NetParameter()
        self.net.name = graph.name or "imported"

    def _infer_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every value's shape, the symbolic (batch) dimensions set to 1."""
        onnx = self.onnx
        skeleton = onnx.ModelProto()
        skeleton.CopyFrom(self.model)
        initializers = {t.name for t in skeleton.graph.initializer}
        for value in skeleton.graph.input:
            if value.name in initializers:
                continue
            for axis, dim in enumerate(value.type.tensor_type.shape.dim):
                if dim.HasField("dim_value"):
                    continue
                if axis:
                    raise OnnxError(f"input '{value.name}' has a symbolic size on axis {axis}: a Caffe net's input "
                                    "shape is fixed; fix it first (python -m onnxruntime.tools."
                                    "make_dynamic_shape_fixed)")
                dim.Clear()
                dim.dim_value = 1  # the batch
        try:
            inferred = onnx.shape_inference.infer_shapes(skeleton)
        except Exception as exc:  # noqa: BLE001 - a malformed model
            raise OnnxError(f"ONNX shape inference failed: {str(exc).splitlines()[0]}") from None
        self.skeleton = inferred
        shapes = {}
        for value in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
            tensor = value.type.tensor_type
            if tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
                shapes[value.name] = tuple(int(d.dim_value) for d in tensor.shape.dim)
        shapes.update({name: tuple(array.shape) for name, array in self.constants.items()})
        return shapes

    def fresh_layer(self, hint: str) -> str:
        name, k = hint, 1
        while name in self.layer_names:
            name, k = f"{hint}_{k}", k + 1
        self.layer_names.add(name)
        return name

    def blob_of(self, value: str) -> str:
        return self.alias.get(value, value)

    def run(self) -> caffe_pb2.NetParameter:
        graph = self.model.graph
        inputs = [v for v in graph.input if v.name not in self.constants]
        if inputs:
            layer = self.net.layer.add()
            layer.name = self.fresh_layer("input")
            layer.type = "Input"
            for value in inputs:
                layer.top.append(value.name)
                layer.input_param.shape.add().dim.extend(self.shapes.get(value.name, ()))
        for i, onnx_node in enumerate(graph.node):
            if i in self.skip:
                continue
            node = NodeContext(self, i, onnx_node)
            converter = _CONVERTERS.get(node.op)
            if converter is None:
                raise node.refuse(f"no Caffe layer for this operator (supported: {', '.join(supported_ops())})")
            converter(node)
        self._name_outputs()
        return self.net

    def _name_outputs(self) -> None:
        """A graph output that is an alias (Identity, Dropout) becomes its blob's name."""
        for output in self.graph_outputs:
            blob = self.blob_of(output)
            if output in self.constants:
                raise OnnxError(f"graph output '{output}' is a constant; Caffe nets output computed blobs")
            if blob == output:
                continue
            layer = self.net.layer.add()
            layer.name = self.fresh_layer(f"{output}/output")
            layer.type = "Split"
            layer.bottom.append(blob)
            layer.top.append(output)


def import_model(path, outdir, name: str | None = None) -> tuple[Path, Path]:
    """Write ``OUTDIR/NAME.prototxt`` and ``NAME.caffemodel`` for the ONNX model at ``path``
    (NAME defaults to the file's stem); the net is built once to check it. Returns both paths."""
    from ..netdef.io import write_net  # noqa: PLC0415
    from ..netdef.net import Net  # noqa: PLC0415
    onnx = require_onnx()
    path = Path(path)
    if not path.is_file():
        raise OnnxError("no such file", path=str(path))
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad file
        raise OnnxError(f"not an ONNX model ({type(exc).__name__})", path=str(path)) from None
    try:
        net_param = _Importer(model).run()
    except OnnxError as exc:
        raise OnnxError(exc.detail, path=str(path)) from None
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    stem = name or path.stem
    prototxt, caffemodel = outdir / f"{stem}.prototxt", outdir / f"{stem}.caffemodel"
    definition = caffe_pb2.NetParameter()
    definition.CopyFrom(net_param)
    for layer in definition.layer:
        layer.ClearField("blobs")
    write_net(definition, prototxt)
    write_net(net_param, caffemodel)
    try:
        Net(str(prototxt), phase="TEST", weights=str(caffemodel)).close()  # it builds, the weights fit
    except DlsoftError as exc:
        prototxt.unlink()
        caffemodel.unlink()
        raise OnnxError(f"the imported net does not build: {exc}", path=str(path)) from None
    return prototxt, caffemodel


# The converters register themselves (imported last: they use NodeContext and converts).
from . import import_ops  # noqa: E402,F401  isort: skip

__all__ = ["NodeContext", "converts", "import_model", "supported_ops"]
