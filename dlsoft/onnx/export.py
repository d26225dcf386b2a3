"""Export a built dlsoft Net to one ONNX graph, with Caffe's exact semantics.

The net is walked in its layer order; each Caffe layer type has one small function
below that turns the layer (its parsed parameters, its blobs, its bottom and top shapes
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
    "LSTM": "recurrent layers are not supported by the exporter",
    "RNN": "recurrent layers are not supported by the exporter",
    "LSTMUnit": "recurrent layers are not supported by the exporter",
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


class _Layer:
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
                view = _Layer(self, i)
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
    if layer_type.endswith("Loss"):
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


# ---------------------------------------------------------------------------- vision layers
@converts("Convolution")
def _convolution(c: _Layer) -> list[str]:
    """Conv: Caffe's weight layout (num_output, C/group, kh, kw) is ONNX's; same output size."""
    layer = c.layer
    if layer.axis != 1:
        raise c.refuse(f"convolution over axis {layer.axis} (ONNX Conv takes channels on axis 1)")
    params = [c.const(c.blob(0), "weight")] + ([c.const(c.blob(1), "bias")] if len(layer.blobs) > 1 else [])
    attrs = dict(kernel_shape=list(layer.kernel), pads=[*layer.pad, *layer.pad], strides=list(layer.stride),
                 dilations=list(layer.dilation), group=layer.group)
    return [c.op("Conv", [x] + params, top=i, **attrs) for i, x in enumerate(c.inputs)]


@converts("Deconvolution")
def _deconvolution(c: _Layer) -> list[str]:
    """ConvTranspose: Caffe's weight (C, num_output/group, kh, kw) is ONNX's layout;
    output ``s·(in-1) + d·(k-1) + 1 - 2·pad`` is ONNX's with output_padding 0."""
    layer = c.layer
    if layer.axis != 1:
        raise c.refuse(f"deconvolution over axis {layer.axis} (ONNX ConvTranspose takes channels on axis 1)")
    params = [c.const(c.blob(0), "weight")] + ([c.const(c.blob(1), "bias")] if len(layer.blobs) > 1 else [])
    attrs = dict(kernel_shape=list(layer.kernel), pads=[*layer.pad, *layer.pad], strides=list(layer.stride),
                 dilations=list(layer.dilation), group=layer.group)
    return [c.op("ConvTranspose", [x] + params, top=i, **attrs) for i, x in enumerate(c.inputs)]


def _pool_geometry(size: int, kernel: int, pad: int, stride: int, out: int, padded: int) -> tuple[int, int]:
    """(extra end padding, ONNX floor-mode output size) so ONNX has at least Caffe's ``out``
    windows starting where Caffe's start; ``padded`` is the input size including Caffe's pads
    as ONNX sees them (begin pad + size, or size + 2·pad when they are explicit)."""
    end = max(0, (out - 1) * stride + kernel - padded)
    return end, (padded + end - kernel) // stride + 1


@converts("Pooling")
def _pooling(c: _Layer) -> list[str]:
    layer = c.layer
    if len(c.top_shapes) > 1:
        raise c.refuse("the MAX mask top (Caffe's h*W+w indices) has no ONNX form")
    x = c.inputs[0]
    is_max = layer.method == 0
    if layer.global_pooling:
        return [c.op("GlobalMaxPool" if is_max else "GlobalAveragePool", [x], top=0)]
    (height, width), (kh, kw), (ph, pw), (sh, sw) = c.bottom_shapes[0][2:], layer.kernel, layer.pad, layer.stride
    oh, ow = layer.out
    if is_max:
        # Padding never wins a max, so Caffe's pads and the ceil windows are plain ONNX pads.
        eh, onnx_h = _pool_geometry(height, kh, ph, sh, oh, height + ph)
        ew, onnx_w = _pool_geometry(width, kw, pw, sw, ow, width + pw)
        op, attrs = "MaxPool", dict(pads=[ph, pw, eh, ew])
    else:
        # Caffe's divisor counts its pads but not the ceil windows' overhang: the pads become
        # real zeros (a Pad node), the overhang uncounted ONNX padding.
        if (ph, pw) != (0, 0):
            x = c.op("Pad", [x, c.ints([0, 0, ph, pw, 0, 0, ph, pw], "pads")], mode="constant")
        eh, onnx_h = _pool_geometry(height, kh, ph, sh, oh, height + 2 * ph)
        ew, onnx_w = _pool_geometry(width, kw, pw, sw, ow, width + 2 * pw)
        op, attrs = "AveragePool", dict(pads=[0, 0, eh, ew], count_include_pad=0) if (eh, ew) != (0, 0) else {}
    exact = (onnx_h, onnx_w) == (oh, ow)
    pooled = c.op(op, [x], top=0 if exact else None, kernel_shape=[kh, kw], strides=[sh, sw], **attrs)
    if exact:
        return [pooled]
    # Caffe dropped a last window that would start in the padding; ONNX computed it.
    return [c.op("Slice", [pooled, c.ints([0, 0], "starts"), c.ints([oh, ow], "ends"), c.ints([2, 3], "axes")],
                 top=0)]


@converts("LRN")
def _lrn(c: _Layer) -> list[str]:
    layer, x = c.layer, c.inputs[0]
    if layer.across:  # ONNX LRN is Caffe's ACROSS_CHANNELS: x / (k + alpha/n · Σ x²)^beta
        return [c.op("LRN", [x], top=0, size=layer.size, alpha=layer.alpha, beta=layer.beta, bias=layer.k)]
    # WITHIN_CHANNEL: x · (1 + alpha · mean_{n×n window, zero-padded}(x²))^(-beta)
    half = (layer.size - 1) // 2
    squares = c.op("Mul", [x, x])
    mean = c.op("AveragePool", [squares], kernel_shape=[layer.size] * 2, pads=[half] * 4, strides=[1, 1],
                count_include_pad=1)
    scale = c.op("Add", [c.op("Mul", [mean, c.const(layer.alpha, "alpha")]), c.const(1.0, "one")])
    return [c.op("Mul", [x, c.op("Pow", [scale, c.const(-layer.beta, "minus_beta")])], top=0)]


@converts("Crop")
def _crop(c: _Layer) -> list[str]:
    p = c.param.crop_param
    source, reference = c.bottom_shapes
    axis = p.axis % len(source)
    offsets = list(p.offset)
    cropped = len(source) - axis
    offsets = offsets * cropped if len(offsets) == 1 else (offsets or [0] * cropped)
    axes = [a for a, o in zip(range(axis, len(source)), offsets) if o or source[a] != reference[a]]
    if not axes:
        return [c.op("Identity", [c.inputs[0]], top=0)]
    starts = [offsets[a - axis] for a in axes]
    ends = [offsets[a - axis] + reference[a] for a in axes]
    if 0 in axes and c.dynamic:
        raise c.refuse("cropping the batch axis needs a fixed batch: export with --static-batch")
    return [c.op("Slice", [c.inputs[0], c.ints(starts, "starts"), c.ints(ends, "ends"), c.ints(axes, "axes")],
                 top=0)]


# ---------------------------------------------------------------------------- common layers
@converts("InnerProduct")
def _inner_product(c: _Layer) -> list[str]:
    """y = x·Wᵀ + b over x flattened from ``axis``: Flatten + Gemm for axis 1, else a
    Reshape keeping the leading axes and MatMul + Add."""
    layer, x = c.layer, c.inputs[0]
    weight = c.blob(0)
    bias = [c.const(c.blob(1), "bias")] if layer.bias_term else []
    if layer.axis == 1:
        flat = x if len(c.bottom_shapes[0]) == 2 else c.op("Flatten", [x], axis=1)
        return [c.op("Gemm", [flat, c.const(weight, "weight")] + bias, top=0, transB=0 if layer.transpose else 1)]
    weight_t = weight if layer.transpose else weight.T
    if layer.axis == 0:
        flat = c.reshape(x, [layer.num_input], batch_axis=0)
    else:
        flat = c.op("Reshape", [x, c.ints([0] * layer.axis + [layer.num_input], "shape")])
    if not bias:
        return [c.op("MatMul", [flat, c.const(weight_t, "weight")], top=0)]
    return [c.op("Add", [c.op("MatMul", [flat, c.const(weight_t, "weight")]), bias[0]], top=0)]


@converts("Concat")
def _concat(c: _Layer) -> list[str]:
    return [c.op("Concat", c.inputs, top=0, axis=c.layer.axis)]


@converts("Slice")
def _slice(c: _Layer) -> list[str]:
    layer = c.layer
    outputs = list(c.top_names)
    c.graph.node("Split", [c.inputs[0], c.ints(layer.sizes, "split")], outputs, c.name, axis=layer.axis)
    return outputs


@converts("Split", "Dropout")
def _alias(c: _Layer) -> list[str]:
    """Split's tops are its bottom; Dropout is the identity at TEST: no node at all."""
    return [c.inputs[0]] * len(c.top_shapes)


@converts("Silence")
def _silence(c: _Layer) -> list[str]:
    return []


@converts("Flatten")
def _flatten(c: _Layer) -> list[str]:
    # The batch lands in output axis 0 whichever axes are merged.
    return [c.reshape(c.inputs[0], c.top_shapes[0], batch_axis=0, top=0)]


@converts("Reshape")
def _reshape(c: _Layer) -> list[str]:
    """Caffe's 0/-1 dims are resolved by the net; only the batch is left to ONNX (-1)."""
    p = c.param.reshape_param
    rank = len(c.bottom_shapes[0])
    start = p.axis if p.axis >= 0 else rank + p.axis + 1
    dims = [int(d) for d in p.shape.dim]
    if start > 0 or (dims and dims[0] == 0):
        batch_axis = 0
    elif -1 in dims:
        batch_axis = dims.index(-1)
    else:
        batch_axis = None  # a fully given shape fixes the batch, as in Caffe
    return [c.reshape(c.inputs[0], c.top_shapes[0], batch_axis, top=0)]


@converts("Eltwise")
def _eltwise(c: _Layer) -> list[str]:
    layer = c.layer
    if layer.op == 0:  # PROD
        value = c.inputs[0]
        for k, x in enumerate(c.inputs[1:], start=1):
            value = c.op("Mul", [value, x], top=0 if k == len(c.inputs) - 1 else None)
        return [value]
    if layer.op == 2:  # MAX
        return [c.op("Max", c.inputs, top=0)]
    terms = [x if coeff == 1.0 else c.op("Mul", [x, c.const(coeff, f"coeff{k}")])
             for k, (x, coeff) in enumerate(zip(c.inputs, layer.coeffs))]
    return [c.op("Sum", terms, top=0)]


def _factor(c: _Layer, array: np.ndarray, axis: int) -> np.ndarray:
    """A Scale/Bias factor of shape x.shape[axis:axis+k], with trailing ones to broadcast."""
    trailing = len(c.bottom_shapes[0]) - axis - array.ndim
    return array.reshape(array.shape + (1,) * trailing)


def _factor_axis(c: _Layer, factor_rank: int, axis: int) -> int:
    return 0 if factor_rank == 0 else axis % len(c.bottom_shapes[0])


@converts("Scale")
def _scale(c: _Layer) -> list[str]:
    layer, p = c.layer, c.param.scale_param
    x = c.inputs[0]
    if len(c.inputs) > 1:
        rank = len(c.bottom_shapes[1])
        axis = _factor_axis(c, rank, p.axis)
        trailing = len(c.bottom_shapes[0]) - axis - rank
        factor = c.inputs[1] if not trailing else \
            c.op("Unsqueeze", [c.inputs[1], c.ints(list(range(rank, rank + trailing)), "axes")])
    else:
        scale = c.blob(0)
        axis = _factor_axis(c, scale.ndim, p.axis)
        factor = c.const(_factor(c, scale, axis), "scale")
    if layer.bias_index is None:
        return [c.op("Mul", [x, factor], top=0)]
    bias = c.const(_factor(c, c.blob(layer.bias_index), axis), "bias")
    return [c.op("Add", [c.op("Mul", [x, factor]), bias], top=0)]


@converts("Bias")
def _bias(c: _Layer) -> list[str]:
    p = c.param.bias_param
    if len(c.inputs) > 1:
        rank = len(c.bottom_shapes[1])
        axis = _factor_axis(c, rank, p.axis)
        trailing = len(c.bottom_shapes[0]) - axis - rank
        bias = c.inputs[1] if not trailing else \
            c.op("Unsqueeze", [c.inputs[1], c.ints(list(range(rank, rank + trailing)), "axes")])
    else:
        array = c.blob(0)
        bias = c.const(_factor(c, array, _factor_axis(c, array.ndim, p.axis)), "bias")
    return [c.op("Add", [c.inputs[0], bias], top=0)]


def _next_scale(c: _Layer):
    """The Scale layer right after this BatchNorm that only transforms its output, or None."""
    net = c.exporter.net
    following = c.index + 1
    if following not in c.exporter.needed or c.top_names[0] in c.exporter.outputs:
        return None  # the graph ends here (or before the Scale): BatchNorm's own output is wanted
    scale = net.layers[following]
    bottoms = net.bottom_names[scale.name]
    if scale.type != "Scale" or len(bottoms) != 1 or bottoms[0] != net.top_names[c.name][0]:
        return None
    shape = scale.blobs[0].shape
    if len(shape) != 1 or scale.param.scale_param.axis % len(c.bottom_shapes[0]) != 1:
        return None
    return scale


@converts("BatchNorm")
def _batch_norm(c: _Layer) -> list[str]:
    """BatchNormalization with mean = blobs[0]/s, var = blobs[1]/s (s = blobs[2], 0 -> 0),
    Caffe's eps; a following Scale (per channel) becomes its scale and bias."""
    layer = c.layer
    if not layer.use_global_stats:
        raise c.refuse("it normalises with batch statistics (use_global_stats: false); a deploy "
                       "export needs the stored running statistics")
    if len(c.bottom_shapes[0]) < 2:
        raise c.refuse(f"ONNX BatchNormalization needs (N, C, ...) input, got shape {c.bottom_shapes[0]}")
    s = float(c.blob(2)[0])
    factor = 0.0 if s == 0 else 1.0 / s
    mean = np.multiply(c.blob(0), factor, dtype=np.float32)
    var = np.multiply(c.blob(1), factor, dtype=np.float32)
    channels = mean.shape[0]
    gamma, beta, top = np.ones(channels, np.float32), np.zeros(channels, np.float32), c.top_names[0]
    scale = _next_scale(c)
    if scale is not None:
        gamma = to_numpy(scale.blobs[0].data).astype(np.float32)
        if scale.bias_index is not None:
            beta = to_numpy(scale.blobs[scale.bias_index].data).astype(np.float32)
        top = c.exporter.top_values[c.index + 1][0]
    inputs = [c.inputs[0], c.const(gamma, "scale"), c.const(beta, "bias"), c.const(mean, "mean"),
              c.const(var, "var")]
    c.graph.node("BatchNormalization", inputs, [top], c.name, epsilon=layer.eps)
    if scale is not None:
        c.absorb_next([top])
    return [top]


@converts("Tile")
def _tile(c: _Layer) -> list[str]:
    """Caffe repeats the block from ``axis`` on ``tiles`` times: numpy's (and ONNX's) tile."""
    p = c.param.tile_param
    repeats = [1] * len(c.bottom_shapes[0])
    repeats[p.axis % len(repeats)] = p.tiles
    return [c.op("Tile", [c.inputs[0], c.ints(repeats, "repeats")], top=0)]


_REDUCTIONS = {1: "ReduceSum", 2: "ReduceL1", 3: "ReduceSumSquare", 4: "ReduceMean"}


@converts("Reduction")
def _reduction(c: _Layer) -> list[str]:
    """coeff · op over every axis from ``axis`` on (the top keeps the axes before it)."""
    p = c.param.reduction_param
    rank = len(c.bottom_shapes[0])
    axes = list(range(p.axis % rank if rank else 0, rank))
    op = _REDUCTIONS[p.operation]
    last = p.coeff == 1
    if op == "ReduceSum":  # opset 13+: its axes are an input, the others' an attribute (until 18)
        value = c.op(op, [c.inputs[0], c.ints(axes, "axes")], top=0 if last else None, keepdims=0)
    else:
        value = c.op(op, c.inputs, top=0 if last else None, axes=axes, keepdims=0)
    return [value] if last else [c.op("Mul", [value, c.const(p.coeff, "coeff")], top=0)]


@converts("MVN")
def _mvn(c: _Layer) -> list[str]:
    """x - mean, then / (sqrt(mean((x - mean)²)) + eps), per item and channel (per item across channels)."""
    p = c.param.mvn_param
    rank = len(c.bottom_shapes[0])
    axes = list(range(1 if p.across_channels else min(2, rank), rank))
    x = c.inputs[0]
    centred = c.op("Sub", [x, c.op("ReduceMean", [x], axes=axes, keepdims=1)], top=None if p.normalize_variance else 0)
    if not p.normalize_variance:
        return [centred]
    variance = c.op("ReduceMean", [c.op("Mul", [centred, centred])], axes=axes, keepdims=1)
    deviation = c.op("Add", [c.op("Sqrt", [variance]), c.const(p.eps, "eps")])
    return [c.op("Div", [centred, deviation], top=0)]


@converts("Parameter")
def _parameter(c: _Layer) -> list[str]:
    return [c.op("Identity", [c.const(c.blob(0), "value")], top=0)]


@converts("Softmax")
def _softmax(c: _Layer) -> list[str]:
    axis = c.param.softmax_param.axis % len(c.bottom_shapes[0])
    return [c.op("Softmax", [c.inputs[0]], top=0, axis=axis)]  # opset >= 13: over one axis, as Caffe


# ---------------------------------------------------------------------------- activations
@converts("ReLU")
def _relu(c: _Layer) -> list[str]:
    slope = c.layer.slope
    if slope == 0:
        return [c.op("Relu", c.inputs, top=0)]
    return [c.op("LeakyRelu", c.inputs, top=0, alpha=slope)]


@converts("PReLU")
def _prelu(c: _Layer) -> list[str]:
    slope = c.blob(0).reshape(-1)
    if not c.layer.shared:  # one slope per channel (axis 1), broadcast over the rest
        slope = slope.reshape((-1,) + (1,) * (len(c.bottom_shapes[0]) - 2))
    return [c.op("PRelu", [c.inputs[0], c.const(slope, "slope")], top=0)]


@converts("ELU")
def _elu(c: _Layer) -> list[str]:
    return [c.op("Elu", c.inputs, top=0, alpha=c.layer.alpha)]


_SIMPLE = {"Sigmoid": "Sigmoid", "TanH": "Tanh", "AbsVal": "Abs", "BNLL": "Softplus"}


@converts(*_SIMPLE)
def _simple(c: _Layer) -> list[str]:
    """Same function, other name (BNLL is log(1 + e^x), ONNX's Softplus)."""
    return [c.op(_SIMPLE[c.type], c.inputs, top=0)]


def _chain(c: _Layer, steps) -> list[str]:
    """x through ``steps``, (op, scalar constant or None for a unary op), skipping no-ops;
    the last node writes the top (an Identity if every step was a no-op)."""
    steps = [(op, value) for op, value in steps if not (op in ("Mul", "Pow") and value == 1)
             and not (op == "Add" and value == 0)]
    if not steps:
        return [c.op("Identity", c.inputs[:1], top=0)]
    value = c.inputs[0]
    for k, (op, constant) in enumerate(steps):
        inputs = [value] if constant is None else [value, c.const(constant, op.lower())]
        value = c.op(op, inputs, top=0 if k == len(steps) - 1 else None)
    return [value]


@converts("Power")
def _power(c: _Layer) -> list[str]:
    """(shift + scale·x)^power."""
    layer = c.layer
    return _chain(c, [("Mul", layer.scale), ("Add", layer.shift), ("Pow", layer.power)])


@converts("Exp")
def _exp(c: _Layer) -> list[str]:
    """base^(shift + scale·x) = outer · exp(inner·x), as the layer computes it."""
    layer = c.layer
    return _chain(c, [("Mul", layer.inner), ("Exp", None), ("Mul", layer.outer)])


@converts("Log")
def _log(c: _Layer) -> list[str]:
    """log(shift + scale·x) / ln(base)."""
    layer = c.layer
    return _chain(c, [("Mul", layer.scale), ("Add", layer.shift), ("Log", None), ("Mul", layer.base_scale)])


@converts("Swish")
def _swish(c: _Layer) -> list[str]:
    """x · sigmoid(beta · x)."""
    x = c.inputs[0]
    scaled = x if c.layer.beta == 1 else c.op("Mul", [x, c.const(c.layer.beta, "beta")])
    return [c.op("Mul", [x, c.op("Sigmoid", [scaled])], top=0)]


@converts("Threshold")
def _threshold(c: _Layer) -> list[str]:
    above = c.op("Greater", [c.inputs[0], c.const(c.layer.threshold, "threshold")])
    return [c.op("Cast", [above], top=0, to=1)]  # 1 = FLOAT


@converts("Clip")
def _clip(c: _Layer) -> list[str]:
    layer = c.layer
    return [c.op("Clip", [c.inputs[0], c.const(layer.lo, "min"), c.const(layer.hi, "max")], top=0)]


# ---------------------------------------------------------------------------- SSD layers
@converts("Normalize")
def _normalize(c: _Layer) -> list[str]:
    """scale · x / sqrt(Σ x² + eps), the sum over (C, H, W) or, not across_spatial, over C."""
    layer, x = c.layer, c.inputs[0]
    rank = len(c.bottom_shapes[0])
    axes = list(range(1, rank)) if layer.across_spatial else [1]
    squares = c.op("ReduceSumSquare", [x], axes=axes, keepdims=1)
    norm = c.op("Sqrt", [c.op("Add", [squares, c.const(layer.eps, "eps")])])
    scale = c.blob(0)
    if not layer.channel_shared:
        scale = scale.reshape((-1,) + (1,) * (rank - 2))
    return [c.op("Mul", [c.op("Div", [x, norm]), c.const(scale, "scale")], top=0)]


@converts("Permute")
def _permute(c: _Layer) -> list[str]:
    return [c.op("Transpose", c.inputs, top=0, perm=list(c.layer.order))]


@converts("PriorBox")
def _prior_box(c: _Layer) -> list[str]:
    """The boxes depend on shapes only: a constant, computed by dlsoft's own layer."""
    net = c.exporter.net
    layer = c.layer
    layer.forward(net.bottom_ids[c.index], net.top_ids[c.index])
    boxes = to_numpy(net.top_ids[c.index][0].data).astype(np.float32)
    return [c.op("Identity", [c.const(boxes, "boxes")], top=0)]


__all__ = ["BATCH", "IR_VERSION", "export_files", "export_net", "supported_types"]
