"""The Caffe layer -> ONNX nodes converters, one small function per layer type.

Each function gets a :class:`~dlsoft.onnx.export.LayerContext` (the layer with its parsed
parameters and blobs, the bottoms' ONNX values, the shapes the net inferred) and returns
the ONNX value of each top; ``@converts("Type")`` registers it. Where ONNX's operator
means something else than Caffe's layer, the docstring says how the gap is closed.
"""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy
from .export import LayerContext, converts


# ---------------------------------------------------------------------------- vision layers
@converts("Convolution", "ConvolutionDepthwise")  # depthwise: group = num_output = C, set by the layer
def _convolution(c: LayerContext) -> list[str]:
    """Conv: Caffe's weight layout (num_output, C/group, kh, kw) is ONNX's; same output size."""
    layer = c.layer
    if layer.axis != 1:
        raise c.refuse(f"convolution over axis {layer.axis} (ONNX Conv takes channels on axis 1)")
    params = [c.const(c.blob(0), "weight")] + ([c.const(c.blob(1), "bias")] if len(layer.blobs) > 1 else [])
    attrs = dict(kernel_shape=list(layer.kernel), pads=[*layer.pad, *layer.pad], strides=list(layer.stride),
                 dilations=list(layer.dilation), group=layer.group)
    return [c.op("Conv", [x] + params, top=i, **attrs) for i, x in enumerate(c.inputs)]


@converts("Deconvolution")
def _deconvolution(c: LayerContext) -> list[str]:
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
def _pooling(c: LayerContext) -> list[str]:
    layer = c.layer
    if len(c.top_shapes) > 1:
        raise c.refuse("the MAX mask top (Caffe's h*W+w indices) has no ONNX form")
    if layer.method == 2:
        raise c.refuse("STOCHASTIC pooling (Σx²/Σx at TEST) has no ONNX operator")
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
def _lrn(c: LayerContext) -> list[str]:
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


@converts("Interp")
def _interp(c: LayerContext) -> list[str]:
    """Align-corners bilinear resize as the layer computes it: A_h · x · A_wᵀ, two MatMuls
    with its own interpolation matrices (after a Slice for a pad_beg/pad_end crop)."""
    layer, x = c.layer, c.inputs[0]
    (height, width), crop = c.bottom_shapes[0][2:], layer.crop
    if crop or (height, width) != tuple(layer.eff):
        ends = [crop + layer.eff[0], crop + layer.eff[1]]
        x = c.op("Slice", [x, c.ints([crop, crop], "starts"), c.ints(ends, "ends"), c.ints([2, 3], "axes")])
    columns = c.op("MatMul", [x, c.const(to_numpy(layer.cols_t), "cols_t")])
    return [c.op("MatMul", [c.const(to_numpy(layer.rows), "rows"), columns], top=0)]


@converts("Crop")
def _crop(c: LayerContext) -> list[str]:
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
def _inner_product(c: LayerContext) -> list[str]:
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
def _concat(c: LayerContext) -> list[str]:
    return [c.op("Concat", c.inputs, top=0, axis=c.layer.axis)]


@converts("Slice")
def _slice(c: LayerContext) -> list[str]:
    layer = c.layer
    outputs = list(c.top_names)
    c.graph.node("Split", [c.inputs[0], c.ints(layer.sizes, "split")], outputs, c.name, axis=layer.axis)
    return outputs


@converts("Split", "Dropout", "SeLuDropout")
def _alias(c: LayerContext) -> list[str]:
    """Split's tops are its bottom; the dropouts are the identity at TEST: no node at all."""
    return [c.inputs[0]] * len(c.top_shapes)


@converts("Silence")
def _silence(c: LayerContext) -> list[str]:
    return []


@converts("Flatten")
def _flatten(c: LayerContext) -> list[str]:
    # The batch lands in output axis 0 whichever axes are merged.
    return [c.reshape(c.inputs[0], c.top_shapes[0], batch_axis=0, top=0)]


@converts("Reshape")
def _reshape(c: LayerContext) -> list[str]:
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
def _eltwise(c: LayerContext) -> list[str]:
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


def _factor(c: LayerContext, array: np.ndarray, axis: int) -> np.ndarray:
    """A Scale/Bias factor of shape x.shape[axis:axis+k], with trailing ones to broadcast."""
    trailing = len(c.bottom_shapes[0]) - axis - array.ndim
    return array.reshape(array.shape + (1,) * trailing)


def _factor_axis(c: LayerContext, factor_rank: int, axis: int) -> int:
    return 0 if factor_rank == 0 else axis % len(c.bottom_shapes[0])


@converts("Scale")
def _scale(c: LayerContext) -> list[str]:
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
def _bias(c: LayerContext) -> list[str]:
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


def _next_scale(c: LayerContext):
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
def _batch_norm(c: LayerContext) -> list[str]:
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
def _tile(c: LayerContext) -> list[str]:
    """Caffe repeats the block from ``axis`` on ``tiles`` times: numpy's (and ONNX's) tile."""
    p = c.param.tile_param
    repeats = [1] * len(c.bottom_shapes[0])
    repeats[p.axis % len(repeats)] = p.tiles
    return [c.op("Tile", [c.inputs[0], c.ints(repeats, "repeats")], top=0)]


_REDUCTIONS = {1: "ReduceSum", 2: "ReduceL1", 3: "ReduceSumSquare", 4: "ReduceMean"}


@converts("Reduction")
def _reduction(c: LayerContext) -> list[str]:
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
def _mvn(c: LayerContext) -> list[str]:
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
def _parameter(c: LayerContext) -> list[str]:
    return [c.op("Identity", [c.const(c.blob(0), "value")], top=0)]


@converts("Softmax")
def _softmax(c: LayerContext) -> list[str]:
    axis = c.param.softmax_param.axis % len(c.bottom_shapes[0])
    return [c.op("Softmax", [c.inputs[0]], top=0, axis=axis)]  # opset >= 13: over one axis, as Caffe


# ---------------------------------------------------------------------------- activations
@converts("ReLU")
def _relu(c: LayerContext) -> list[str]:
    slope = c.layer.slope
    if slope == 0:
        return [c.op("Relu", c.inputs, top=0)]
    return [c.op("LeakyRelu", c.inputs, top=0, alpha=slope)]


@converts("PReLU")
def _prelu(c: LayerContext) -> list[str]:
    slope = c.blob(0).reshape(-1)
    if not c.layer.shared:  # one slope per channel (axis 1), broadcast over the rest
        slope = slope.reshape((-1,) + (1,) * (len(c.bottom_shapes[0]) - 2))
    return [c.op("PRelu", [c.inputs[0], c.const(slope, "slope")], top=0)]


@converts("SeLu")
def _selu(c: LayerContext) -> list[str]:
    """λ·(x > 0 ? x : α·(eˣ - 1)) is ONNX's Selu with gamma = λ."""
    return [c.op("Selu", c.inputs, top=0, alpha=c.layer.alpha, gamma=c.layer.lam)]


@converts("ShuffleChannel")
def _shuffle_channel(c: LayerContext) -> list[str]:
    """N×g×k×(H·W) transposed to N×k×g×(H·W): three nodes."""
    n, g, k, plane = c.layer.view
    grouped = c.reshape(c.inputs[0], [n, g, k, plane], batch_axis=0)
    swapped = c.op("Transpose", [grouped], perm=[0, 2, 1, 3])
    return [c.reshape(swapped, c.top_shapes[0], batch_axis=0, top=0)]


@converts("Axpy")
def _axpy(c: LayerContext) -> list[str]:
    """a·x + y with a (N, C) broadcast over x's spatial axes."""
    a, x, y = c.inputs
    rank = len(c.bottom_shapes[1])
    channels = c.bottom_shapes[1][1]
    scale = c.reshape(a, [c.bottom_shapes[1][0], channels] + [1] * (rank - 2), batch_axis=0)
    return [c.op("Add", [c.op("Mul", [scale, x]), y], top=0)]


@converts("ELU")
def _elu(c: LayerContext) -> list[str]:
    return [c.op("Elu", c.inputs, top=0, alpha=c.layer.alpha)]


_SIMPLE = {"Sigmoid": "Sigmoid", "TanH": "Tanh", "AbsVal": "Abs", "BNLL": "Softplus"}


@converts(*_SIMPLE)
def _simple(c: LayerContext) -> list[str]:
    """Same function, other name (BNLL is log(1 + e^x), ONNX's Softplus)."""
    return [c.op(_SIMPLE[c.type], c.inputs, top=0)]


def _chain(c: LayerContext, steps) -> list[str]:
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
def _power(c: LayerContext) -> list[str]:
    """(shift + scale·x)^power."""
    layer = c.layer
    return _chain(c, [("Mul", layer.scale), ("Add", layer.shift), ("Pow", layer.power)])


@converts("Exp")
def _exp(c: LayerContext) -> list[str]:
    """base^(shift + scale·x) = outer · exp(inner·x), as the layer computes it."""
    layer = c.layer
    return _chain(c, [("Mul", layer.inner), ("Exp", None), ("Mul", layer.outer)])


@converts("Log")
def _log(c: LayerContext) -> list[str]:
    """log(shift + scale·x) / ln(base)."""
    layer = c.layer
    return _chain(c, [("Mul", layer.scale), ("Add", layer.shift), ("Log", None), ("Mul", layer.base_scale)])


@converts("Swish")
def _swish(c: LayerContext) -> list[str]:
    """x · sigmoid(beta · x)."""
    x = c.inputs[0]
    scaled = x if c.layer.beta == 1 else c.op("Mul", [x, c.const(c.layer.beta, "beta")])
    return [c.op("Mul", [x, c.op("Sigmoid", [scaled])], top=0)]


@converts("Threshold")
def _threshold(c: LayerContext) -> list[str]:
    above = c.op("Greater", [c.inputs[0], c.const(c.layer.threshold, "threshold")])
    return [c.op("Cast", [above], top=0, to=1)]  # 1 = FLOAT


@converts("Clip")
def _clip(c: LayerContext) -> list[str]:
    layer = c.layer
    return [c.op("Clip", [c.inputs[0], c.const(layer.lo, "min"), c.const(layer.hi, "max")], top=0)]


# ---------------------------------------------------------------------------- SSD layers
@converts("Normalize")
def _normalize(c: LayerContext) -> list[str]:
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
def _permute(c: LayerContext) -> list[str]:
    return [c.op("Transpose", c.inputs, top=0, perm=list(c.layer.order))]


@converts("PriorBox")
def _prior_box(c: LayerContext) -> list[str]:
    """The boxes depend on shapes only: a constant, computed by dlsoft's own layer."""
    net = c.exporter.net
    layer = c.layer
    layer.forward(net.bottom_ids[c.index], net.top_ids[c.index])
    boxes = to_numpy(net.top_ids[c.index][0].data).astype(np.float32)
    return [c.op("Identity", [c.const(boxes, "boxes")], top=0)]
