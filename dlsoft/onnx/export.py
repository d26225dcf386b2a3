"""Export a built dlsoft Net to one ONNX graph, with Caffe's exact semantics.

The net is walked in its layer order; each Caffe layer type has one small function
(in ``export_layers``) that turns the layer (its parsed parameters, its blobs, its bottom and top shapes
as the net inferred them) into ONNX nodes. Where ONNX's operator means something
slightly different from Caffe's layer, the function chooses attributes or adds nodes so
that onnxruntime computes Caffe's numbers, for example:

* Pooling: Caffe rounds the output size up (and drops a last window that would start
  in the padding); ONNX is given explicit end padding in floor mode instead, so the
  output size is Caffe's, and a trailing Slice drops a window ONNX would add. AVE
  divides by the window clipped to the *padded* input: the Caffe padding becomes a
  zero ``Pad`` node (counted) and only the extra end padding is ONNX's (not counted).
* LRN WITHIN_CHANNEL is x · (1 + alpha · avg_{n×n}(x²))^(-beta), an AveragePool over
  the squares; ACROSS_CHANNELS is ONNX's LRN, which is Caffe's.
* BatchNorm's statistics are divided by its third blob (the scale factor); a Scale
  layer that follows it is folded into the BatchNormalization node.

Layers that have no ONNX form (losses, data layers, Python layers, ...) are refused
with one line naming the layer and the reason: the export is exact or it fails.
The batch dimension (axis 0 of every input) is symbolic unless ``static_batch``.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..backend import to_numpy
from ..fileio import atomic_write_bytes
from . import OPSET, OnnxError, require_onnx

#: The symbolic name of the batch dimension in the exported graph.
BATCH = "batch"
#: ONNX IR version written: 8 pairs with opset 17 and every onnxruntime since 1.12 reads it.
IR_VERSION = 8

_CONVERTERS: dict[str, Callable] = {}

#: Why some layer types cannot be exported (others get a generic reason).
_NO_ONNX_FORM = {
    "Python": "its computation is Python code, which ONNX cannot hold",
    "DetectionOutput": "SSD's box decoding and non-maximum suppression have no exact ONNX form; cut the "
                       "export before it with --output (its bottoms, e.g. mbox_loc, mbox_conf_flatten, "
                       "mbox_priorbox)",
    "Accuracy": "a metric needs labels: export the deploy net",
    "Filter": "its output shape depends on the data",
    "BatchReindex": "its output shape depends on the data",
    "Embed": "its input is an index blob; not supported by the exporter",
    "ArgMax": "Caffe's ArgMax (float indices over the flattened item, optional values) is not exported",
    "Im2col": "no ONNX operator lays out convolution columns",
    "ROIPooling": "ONNX's MaxRoiPool rounds the regions differently from Caffe's; not exported",
    "PSROIPooling": "position-sensitive ROI pooling has no ONNX operator",
    "BoxAnnotatorOHEM": "online hard-example mining belongs to training nets",
    "SoftmaxWithLossOHEM": "online hard-example mining belongs to training nets",
    "SmoothL1LossOHEM": "online hard-example mining belongs to training nets",
    "DetectionEvaluate": "a metric needs ground-truth labels: export the deploy net",
    "LSTM": "recurrent layers are not supported by the exporter",
    "RNN": "recurrent layers are not supported by the exporter",
    "LSTMUnit": "recurrent layers are not supported by the exporter",
    # Segmentation forks and the rest of BVLC's layers.
    "Upsample": "SegNet's mask indices are per channel plane, ONNX MaxUnpool's per tensor; not exported",
    "BN": "SegNet's BN in LEARN mode uses batch statistics; its folded INFERENCE form has no converter yet",
    "SegAccuracy": "a metric needs labels: export the deploy net",
    "SPP": "its pooling geometry follows the input size; export with a fixed size is not implemented",
    "HDF5Output": "it writes a file: no computation to export",
}


def converts(*types: str):
    """Decorator: the function converts layers of these Caffe types."""
    def decorate(fn):
        for name in types:
            _CONVERTERS[name] = fn
        return fn
    return decorate


def supported_types() -> list[str]:
    """The Caffe layer types the exporter converts."""
    return sorted(_CONVERTERS)


class _Graph:
    """The ONNX graph under construction: nodes, constants, unique value names."""

    def __init__(self, onnx):
        self.onnx = onnx
        self.nodes: list = []
        self.initializers: list = []
        self.used: set[str] = set()

    def fresh(self, hint: str) -> str:
        name, k = hint, 1
        while name in self.used:
            name, k = f"{hint}_{k}", k + 1
        self.used.add(name)
        return name

    def const(self, array, hint: str, dtype=np.float32) -> str:
        name = self.fresh(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array, dtype=dtype), name))
        return name

    def ints(self, values, hint: str) -> str:
        return self.const(np.asarray(values, dtype=np.int64), hint, np.int64)

    def node(self, op_type: str, inputs: list[str], outputs: list[str], name: str, **attrs) -> None:
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, outputs, name=self.fresh(name), **attrs))


class LayerContext:
    """What a converter sees of one layer: its parsed parameters, blobs, shapes and value names."""

    def __init__(self, exporter: "_Exporter", index: int):
        net = exporter.net
        self.exporter = exporter
        self.graph = exporter.graph
        self.index = index
        self.layer = net.layers[index]
        self.name = self.layer.name
        self.type = self.layer.type
        self.param = self.layer.param
        self.inputs = [exporter.value[name] for name in net.bottom_names[self.name]]
        self.bottom_shapes = [b.shape for b in net.bottom_ids[index]]
        self.top_shapes = [t.shape for t in net.top_ids[index]]
        self.top_names = exporter.top_values[index]
        self.dynamic = exporter.dynamic
        self._steps = 0

    def blob(self, i: int) -> np.ndarray:
        return to_numpy(self.layer.blobs[i].data).astype(np.float32)

    def const(self, array, what: str, dtype=np.float32) -> str:
        return self.graph.const(array, f"{self.name}/{what}", dtype)

    def ints(self, values, what: str) -> str:
        return self.graph.ints(values, f"{self.name}/{what}")

    def op(self, op_type: str, inputs: list[str], top: int | None = None, **attrs) -> str:
        """Emit one node; its output is top ``top``'s value, or a fresh intermediate."""
        if top is None:
            self._steps += 1
            output = self.graph.fresh(f"{self.name}/{op_type.lower()}{self._steps}")
        else:
            output = self.top_names[top]
        self.graph.node(op_type, inputs, [output], self.name, **attrs)
        return output

    def refuse(self, reason: str) -> OnnxError:
        return OnnxError(f"layer '{self.name}' (type {self.type}): cannot be exported to ONNX: {reason}")

    def reshape(self, value: str, shape, batch_axis: int | None, top: int | None = None) -> str:
        """Reshape to the static ``shape``; with a dynamic batch, ``batch_axis`` is -1 (inferred)."""
        dims = list(shape)
        if self.dynamic and batch_axis is not None:
            dims[batch_axis] = -1
        return self.op("Reshape", [value, self.ints(dims, "shape")], top=top)

    def absorb_next(self, tops: list[str]) -> None:
        """The next layer is folded into this one: its tops are ``tops``."""
        self.exporter.absorbed[self.index + 1] = tops


class _Exporter:
    def __init__(self, net, static_batch: bool, outputs=None):
        self.onnx = require_onnx()
        self.net = net
        self.dynamic = not static_batch
        self.outputs = list(outputs) if outputs else list(net.outputs)
        self.needed = self._needed_layers()
        self.graph = _Graph(self.onnx)
        self.value: dict[str, str] = {}  # Caffe blob name -> ONNX value holding it now
        self.absorbed: dict[int, list[str]] = {}
        self.top_values = self._name_values()

    def _needed_layers(self) -> set[int]:
        """The layers the outputs depend on (all of them unless outputs were chosen)."""
        net = self.net
        wanted = set(self.outputs)
        for name in wanted - set(net.blobs):
            raise OnnxError(f"output '{name}': the net has no blob of that name")
        needed = set()
        for i in reversed(range(len(net.layers))):
            name = net.layers[i].name
            if wanted & set(net.top_names[name]):
                needed.add(i)
                wanted.update(net.bottom_names[name])
        return needed

    def _name_values(self) -> list[list[str]]:
        """An ONNX name for every (layer, top): in-place layers rewrite a Caffe blob, ONNX
        values are written once. The blob's plain name goes to its Input layer, else to
        its last writer (what Caffe shows as the blob after forward, and the net's outputs)."""
        net = self.net
        writers: dict[str, list[tuple[int, int]]] = {}
        for i, layer in enumerate(net.layers):
            for j, top in enumerate(net.top_names[layer.name]):
                writers.setdefault(top, []).append((i, j))
        plain = {}
        for top, spots in writers.items():
            first = spots[0]
            plain[top] = first if net.layers[first[0]].type == "Input" else spots[-1]
        self.graph.used.update(writers)
        names = []
        for i, layer in enumerate(net.layers):
            row = []
            for j, top in enumerate(net.top_names[layer.name]):
                row.append(top if plain[top] == (i, j) else self.graph.fresh(f"{top}/{layer.name}"))
            names.append(row)
        return names

    def _inputs(self) -> list:
        helper, TensorProto = self.onnx.helper, self.onnx.TensorProto
        inputs = []
        for name in self.net.inputs:
            shape = list(self.net.blobs[name].shape)
            if self.dynamic and shape:
                shape[0] = BATCH
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
            self.value[name] = name
        return inputs

    def build(self):
        onnx, net = self.onnx, self.net
        helper = onnx.helper
        inputs = self._inputs()
        for i, layer in enumerate(net.layers):
            tops = net.top_names[layer.name]
            if layer.type == "Input" or i not in self.needed:
                continue
            if i in self.absorbed:
                outputs = self.absorbed[i]
            else:
                converter = _CONVERTERS.get(layer.type)
                view = LayerContext(self, i)
                if converter is None:
                    raise view.refuse(_why_not(layer.type))
                outputs = converter(view)
            for top, value in zip(tops, outputs):
                self.value[top] = value
        outputs = []
        for name in self.outputs:
            value = self.value[name]
            if value != name:  # an alias (Dropout, Split) or a renamed value: give it the output's name
                self.graph.node("Identity", [value], [name], f"{name}/output")
            outputs.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        size = sum(t.ByteSize() for t in self.graph.initializers)
        if size >= 2 ** 31 - 2 ** 26:  # protobuf's 2 GiB limit, with room for the graph itself
            raise OnnxError(f"net '{net.name}': {size / 2 ** 30:.1f} GiB of weights exceed the 2 GiB limit "
                            "of a single ONNX file")
        graph = helper.make_graph(self.graph.nodes, net.name or "net", inputs, outputs,
                                  initializer=self.graph.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="dlsoft", producer_version=_version(),
                                  doc_string=f"Exported by dlsoft from Caffe net '{net.name}'")
        model.ir_version = IR_VERSION
        model = _with_output_shapes(onnx, model)
        onnx.checker.check_model(model)
        return model


def _why_not(layer_type: str) -> str:
    """Why a layer type has no converter, for the one-line refusal."""
    if layer_type in _NO_ONNX_FORM:
        return _NO_ONNX_FORM[layer_type]
    if "Loss" in layer_type:  # SoftmaxWithLoss, ..., the OHEM forks' SoftmaxWithLossOHEM
        return "loss layers belong to training nets; export the deploy net"
    if layer_type.endswith("Data"):
        return "data layers feed training; export a deploy net whose inputs are an Input layer"
    return "no ONNX converter for this layer type"


def _version() -> str:
    from .. import __version__  # noqa: PLC0415
    return __version__


def _with_output_shapes(onnx, model):
    """Fill in the outputs' shapes by ONNX shape inference (their types are already set).

    Inference runs on a skeleton whose float constants are typed inputs: it needs their
    shapes, not the hundreds of megabytes of weights a big net carries."""
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    graph = skeleton.graph
    weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    kept = [t for t in graph.initializer if t.data_type != onnx.TensorProto.FLOAT]
    graph.ClearField("initializer")
    graph.initializer.extend(kept)
    graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in weights)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=True)
    except Exception as exc:  # noqa: BLE001 - an inference failure is a bug in a converter
        raise OnnxError(f"the exported graph fails ONNX shape inference: {str(exc).splitlines()[0]}") from None
    known = {v.name: v for v in inferred.graph.value_info}
    known.update({v.name: v for v in inferred.graph.output})
    for output in model.graph.output:
        if output.name in known and known[output.name].type.tensor_type.HasField("shape"):
            output.type.CopyFrom(known[output.name].type)
    return model


def export_net(net, path=None, static_batch: bool = False, outputs=None):
    """Convert ``net`` (a built dlsoft.Net, TEST phase) to ONNX; write it to ``path`` if given.

    ``outputs`` names the blobs the graph returns (default: the net's outputs); only the
    layers they depend on are exported, so a net can be cut before a layer ONNX lacks.
    """
    model = _Exporter(net, static_batch, outputs).build()
    if path is not None:
        atomic_write_bytes(path, model.SerializeToString())
    return model


def export_files(model_path, weights, path, static_batch: bool = False, outputs=None):
    """Build the TEST-phase net of ``model_path`` with ``weights`` and export it to ``path``."""
    from ..netdef.net import Net  # noqa: PLC0415
    require_onnx()
    with Net(str(model_path), phase="TEST", weights=None if weights is None else str(weights)) as net:
        return export_net(net, path, static_batch=static_batch, outputs=outputs)


# The converters register themselves (imported last: they use LayerContext and converts).
from . import export_layers  # noqa: E402,F401  isort: skip

__all__ = ["BATCH", "IR_VERSION", "LayerContext", "converts", "export_files", "export_net", "supported_types"]
