"""The ONNX operator -> Caffe layer converters, one small function per operator.

Each function gets a :class:`~dlsoft.onnx.import_.NodeContext` (the node's attributes,
its inputs as Caffe blobs or constants, the inferred shapes) and adds the Caffe layers
for it, or refuses the node in one line when Caffe's semantics would differ.
"""
from __future__ import annotations

import numpy as np

from ..protos import caffe_pb2
from .import_ import NodeContext, converts


# ---------------------------------------------------------------------------- helpers
def _spatial_pads(node: NodeContext, rank: int) -> tuple[list[int], list[int]]:
    """(begin, end) pads of the spatial axes, a folded Pad included; auto_pad must be NOTSET/VALID."""
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        raise node.refuse(f"auto_pad {auto_pad} (export the model with explicit pads)")
    pads = list(node.attr("pads", [0] * (2 * (rank - 2))))
    begin, end = pads[:rank - 2], pads[rank - 2:]
    source = node.inputs[0]
    if source in node.importer.pads:
        _, extra = node.importer.pads[source]
        begin = [b + e for b, e in zip(begin, extra[2:rank])]
        end = [b + e for b, e in zip(end, extra[rank + 2:])]
    return begin, end


def _input_blob(node: NodeContext) -> str:
    """Input 0, looking through a Pad folded into this node."""
    source = node.inputs[0]
    if source in node.importer.pads:
        source = node.importer.pads[source][0]
    return node.importer.blob_of(source)


def _input_shape(node: NodeContext) -> tuple[int, ...]:
    source = node.inputs[0]
    if source in node.importer.pads:
        source = node.importer.pads[source][0]
    return node.shape(source)


def _set_window(p, kernel, pads, strides, dilations=None) -> None:
    p.kernel_h, p.kernel_w = kernel
    p.pad_h, p.pad_w = pads
    p.stride_h, p.stride_w = strides
    if dilations is not None and list(dilations) != [1, 1]:
        p.dilation.extend(dilations)


# ---------------------------------------------------------------------------- convolution
@converts("Conv")
def _conv(node: NodeContext) -> None:
    weight = node.const(1)
    if weight is None:
        raise node.refuse("its weight is computed; Caffe needs a constant weight")
    if weight.ndim != 4:
        raise node.refuse(f"{weight.ndim - 2}-d convolution (Caffe layers here are 2-d)")
    shape = _input_shape(node)
    kernel = list(node.attr("kernel_shape", weight.shape[2:]))
    strides = list(node.attr("strides", [1, 1]))
    dilations = list(node.attr("dilations", [1, 1]))
    begin, end = _spatial_pads(node, 4)
    out = node.shape(node.outputs[0])[2:]
    for axis in range(2):  # Caffe pads both ends by `begin`: fine when the windows are the same
        effective = dilations[axis] * (kernel[axis] - 1) + 1
        caffe = (shape[2 + axis] + 2 * begin[axis] - effective) // strides[axis] + 1
        if caffe != out[axis]:
            raise node.refuse(f"pads {begin}+{end} are asymmetric in a way Caffe's symmetric pad cannot express")
    bias = node.const(2)
    layer = node.layer("Convolution", [_input_blob(node)], blobs=[weight] + ([bias] if bias is not None else []))
    p = layer.convolution_param
    p.num_output = weight.shape[0]
    p.group = int(node.attr("group", 1))
    p.bias_term = bias is not None
    _set_window(p, kernel, begin, strides, dilations)


@converts("ConvTranspose")
def _conv_transpose(node: NodeContext) -> None:
    weight = node.const(1)
    if weight is None or weight.ndim != 4:
        raise node.refuse("Caffe's Deconvolution needs a constant 2-d weight")
    if any(node.attr("output_padding", [0, 0])) or "output_shape" in node.attrs:
        raise node.refuse("output_padding/output_shape have no Caffe Deconvolution form")
    begin, end = _spatial_pads(node, 4)
    if begin != end:
        raise node.refuse(f"asymmetric pads {begin}+{end}")
    group = int(node.attr("group", 1))
    bias = node.const(2)
    layer = node.layer("Deconvolution", [node.blob(0)], blobs=[weight] + ([bias] if bias is not None else []))
    p = layer.convolution_param
    p.num_output = weight.shape[1] * group
    p.group = group
    p.bias_term = bias is not None
    _set_window(p, list(node.attr("kernel_shape", weight.shape[2:])), begin, list(node.attr("strides", [1, 1])),
                list(node.attr("dilations", [1, 1])))


@converts("Pad")
def _pad(node: NodeContext) -> None:
    """A zero Pad of the spatial axes, kept aside until the Conv or pooling it folds into."""
    mode = node.attr("mode", "constant")
    pads = node.const(1) if node.importer.opset >= 11 else np.asarray(node.attr("pads"))
    value = node.const(2) if node.importer.opset >= 11 else node.attr("value", 0.0)
    if mode != "constant" or pads is None or (value is not None and np.any(np.asarray(value) != 0)):
        raise node.refuse("only a constant zero Pad folds into Caffe's convolution/pooling padding")
    pads = [int(v) for v in pads]
    rank = len(pads) // 2
    if rank != 4 or pads[:2] != [0, 0] or pads[4:6] != [0, 0] or min(pads) < 0:
        raise node.refuse(f"pads {pads}: only non-negative padding of H and W folds into Caffe")
    output = node.outputs[0]
    folds = {"Conv", "AveragePool"}
    graph = node.importer.model.graph
    if output in node.importer.graph_outputs or not all(
            graph.node[i].op_type in folds for i in node.importer.consumers[output]):
        raise node.refuse("it must feed only Conv or AveragePool nodes to fold into their padding")
    node.importer.pads[output] = (node.inputs[0], pads)


# ---------------------------------------------------------------------------- pooling
def _caffe_pooled(size: int, kernel: int, pad: int, stride: int, ceil: bool) -> int:
    from ..layers.pooling import pooled_size  # noqa: PLC0415
    return pooled_size(size, kernel, pad, stride, ceil)


def _onnx_pooled(size: int, kernel: int, begin: int, end: int, stride: int, ceil: bool) -> int:
    span = size + begin + end - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + begin:  # the window starting in the end padding
        out -= 1
    return out


@converts("MaxPool", "AveragePool")
def _pool(node: NodeContext) -> None:
    is_max = node.op == "MaxPool"
    if is_max and len(node.outputs) > 1 and node.outputs[1]:
        raise node.refuse("the Indices output has no Caffe form")
    if any(d != 1 for d in node.attr("dilations", [1, 1])):
        raise node.refuse("dilated pooling has no Caffe form")
    shape = _input_shape(node)
    if len(shape) != 4:
        raise node.refuse(f"{len(shape) - 2}-d pooling (Caffe pools 2-d)")
    kernel = list(node.attr("kernel_shape"))
    strides = list(node.attr("strides", [1, 1]))
    pool_begin, pool_end = _spatial_pads(node, 4)
    folded = node.importer.pads.get(node.inputs[0], (None, [0] * 8))[1]
    ceil = bool(node.attr("ceil_mode", 0))
    counted = bool(node.attr("count_include_pad", 0))
    inferred = node.importer.shapes.get(node.outputs[0])
    outs = []
    for axis in range(2):
        size, k, s = shape[2 + axis], kernel[axis], strides[axis]
        b, e = pool_begin[axis], pool_end[axis]
        outs.append(inferred[2 + axis] if inferred else _onnx_pooled(size, k, b, e, s, ceil))
    round_ceil = None
    for candidate in (True, False):  # Caffe's rounding up, or round_mode FLOOR
        if all(_caffe_pooled(shape[2 + a], kernel[a], pool_begin[a], strides[a], candidate) == outs[a]
               for a in range(2)):
            round_ceil = candidate
            break
    if round_ceil is None:
        raise node.refuse(f"pads {pool_begin}+{pool_end} give output {outs}, which Caffe's symmetric "
                          "padding cannot reproduce")
    if any(b >= k for b, k in zip(pool_begin, kernel)):
        raise node.refuse(f"pad {pool_begin} must be smaller than the kernel {kernel} in Caffe")
    if not is_max:  # Caffe divides by the window clipped to the padded input
        for axis in range(2):
            size, k, s, p = shape[2 + axis], kernel[axis], strides[axis], pool_begin[axis]
            fb, fe = folded[2 + axis], folded[6 + axis]
            start = np.arange(outs[axis]) * s - p
            caffe = np.minimum(start + k, size + p) - start
            low = -(fb + (p - fb if counted else 0))
            high = size + fe + (pool_end[axis] - fe if counted else 0)
            onnx = np.minimum(start + k, high) - np.maximum(start, low)
            if not np.array_equal(caffe, onnx):
                raise node.refuse(f"its divisor at the borders (count_include_pad={int(counted)}) differs "
                                  "from Caffe's, which counts the padding")
    layer = node.layer("Pooling", [_input_blob(node)])
    p = layer.pooling_param
    p.pool = p.MAX if is_max else p.AVE
    _set_window(p, kernel, pool_begin, strides)
    if not round_ceil:
        p.round_mode = p.FLOOR


@converts("GlobalMaxPool", "GlobalAveragePool")
def _global_pool(node: NodeContext) -> None:
    layer = node.layer("Pooling", [node.blob(0)])
    p = layer.pooling_param
    p.pool = p.MAX if node.op == "GlobalMaxPool" else p.AVE
    p.global_pooling = True


@converts("LRN")
def _lrn(node: NodeContext) -> None:
    layer = node.layer("LRN", [node.blob(0)])
    p = layer.lrn_param
    p.local_size = int(node.attr("size"))
    p.alpha, p.beta, p.k = node.attr("alpha", 1e-4), node.attr("beta", 0.75), node.attr("bias", 1.0)


# ---------------------------------------------------------------------------- inner product
@converts("Gemm")
def _gemm(node: NodeContext) -> None:
    weight = node.const(1)
    if weight is None or node.const(0) is not None:
        raise node.refuse("Caffe's InnerProduct needs a computed input and a constant weight")
    if node.attr("alpha", 1.0) != 1.0 or node.attr("beta", 1.0) != 1.0 or node.attr("transA", 0):
        raise node.refuse("alpha/beta other than 1 or transA have no InnerProduct form")
    weight = weight if node.attr("transB", 0) else weight.T  # Caffe's (num_output, K)
    bias = node.const(2)
    blobs = [weight]
    if bias is not None:
        blobs.append(np.broadcast_to(bias.reshape(-1) if bias.size > 1 else bias.reshape(()), weight.shape[:1]))
    layer = node.layer("InnerProduct", [node.blob(0)], blobs=blobs)
    layer.inner_product_param.num_output = weight.shape[0]
    layer.inner_product_param.bias_term = bias is not None


@converts("MatMul")
def _matmul(node: NodeContext) -> None:
    weight = node.const(1)
    if weight is None or weight.ndim != 2:
        raise node.refuse("Caffe's InnerProduct needs a constant 2-d right operand")
    rank = len(node.shape(node.inputs[0]))
    blobs, tops = [weight.T], node.outputs
    importer = node.importer
    followers = importer.consumers[node.outputs[0]]
    if node.single_use(node.outputs[0]):  # MatMul + Add(constant) is one InnerProduct
        add = importer.model.graph.node[followers[0]]
        other = [name for name in add.input if name != node.outputs[0]]
        if add.op_type == "Add" and len(other) == 1 and other[0] in importer.constants:
            bias = importer.constants[other[0]]
            if bias.size == weight.shape[1] and bias.reshape(-1).shape == (weight.shape[1],):
                blobs.append(bias.reshape(-1))
                tops = list(add.output)
                importer.skip.add(followers[0])
    layer = node.layer("InnerProduct", [node.blob(0)], tops=tops[:1], blobs=blobs)
    p = layer.inner_product_param
    p.num_output = weight.shape[1]
    p.bias_term = len(blobs) > 1
    p.axis = rank - 1


# ---------------------------------------------------------------------------- element-wise
def _factor_axes(node: NodeContext, x_shape, constant: np.ndarray) -> tuple[int, np.ndarray]:
    """(axis, blob) for a constant broadcast against x: the span of its non-1 axes."""
    rank = len(x_shape)
    if constant.ndim > rank:
        raise node.refuse(f"constant of shape {constant.shape} broadcasts beyond the input {x_shape}")
    padded = (1,) * (rank - constant.ndim) + constant.shape
    real = [a for a, d in enumerate(padded) if d != 1]
    if not real:
        return 0, constant.reshape(())
    first, last = real[0], real[-1]
    if tuple(padded[first:last + 1]) != tuple(x_shape[first:last + 1]):
        raise node.refuse(f"constant of shape {constant.shape} does not cover axes {first}..{last} of the "
                          f"input {x_shape} (Caffe's Scale/Bias blobs span whole axes)")
    return first, constant.reshape(padded[first:last + 1])


@converts("Add", "Mul", "Max", "Sum")
def _elementwise(node: NodeContext) -> None:
    constants = [node.const(i) for i in range(len(node.inputs))]
    if all(c is None for c in constants):
        shapes = {node.shape(name) for name in node.inputs}
        if len(shapes) != 1:
            raise node.refuse(f"inputs of shapes {sorted(shapes)} broadcast; Caffe's Eltwise needs one shape")
        layer = node.layer("Eltwise", [node.blob(i) for i in range(len(node.inputs))])
        ops = caffe_pb2.EltwiseParameter
        layer.eltwise_param.operation = {"Add": ops.SUM, "Sum": ops.SUM, "Mul": ops.PROD, "Max": ops.MAX}[node.op]
        return
    if node.op not in ("Add", "Mul") or len(node.inputs) != 2 or all(c is not None for c in constants):
        raise node.refuse("only Add or Mul of one computed input and one constant maps onto Bias/Scale")
    k = 0 if constants[1] is not None else 1  # the computed input
    x, constant = node.inputs[k], constants[1 - k]
    x_shape = node.shape(x)
    if np.broadcast_shapes(x_shape, constant.shape) != x_shape:
        raise node.refuse(f"constant of shape {constant.shape} enlarges the input {x_shape}")
    axis, blob = _factor_axes(node, x_shape, constant)
    layer = node.layer("Bias" if node.op == "Add" else "Scale", [node.blob(k)], blobs=[blob])
    p = layer.bias_param if node.op == "Add" else layer.scale_param
    p.axis = axis
    p.num_axes = blob.ndim


@converts("BatchNormalization")
def _batch_norm(node: NodeContext) -> None:
    if len(node.outputs) > 1 and any(node.outputs[1:]) or node.attr("training_mode", 0):
        raise node.refuse("training-mode BatchNormalization (batch statistics) has no deploy form")
    scale, bias, mean, var = (node.const(i) for i in range(1, 5))
    if any(v is None for v in (scale, bias, mean, var)):
        raise node.refuse("its scale, bias, mean and variance must be constants")
    layer = node.layer("BatchNorm", [node.blob(0)], blobs=[mean, var, np.ones(1, np.float32)])
    layer.batch_norm_param.eps = float(node.attr("epsilon", 1e-5))
    if not (np.all(scale == 1) and np.all(bias == 0)):  # the affine part: a Scale in place, as in Caffe
        top = node.outputs[0]
        node.layer("Scale", [top], tops=[top], blobs=[scale, bias], suffix="/scale").scale_param.bias_term = True


# ---------------------------------------------------------------------------- activations
_SIMPLE = {"Relu": "ReLU", "Sigmoid": "Sigmoid", "Tanh": "TanH", "Abs": "AbsVal", "Softplus": "BNLL",
           "Exp": "Exp", "Log": "Log"}


@converts(*_SIMPLE)
def _simple(node: NodeContext) -> None:
    node.layer(_SIMPLE[node.op], [node.blob(0)])


@converts("LeakyRelu")
def _leaky_relu(node: NodeContext) -> None:
    node.layer("ReLU", [node.blob(0)]).relu_param.negative_slope = float(node.attr("alpha", 0.01))


@converts("Elu")
def _elu(node: NodeContext) -> None:
    node.layer("ELU", [node.blob(0)]).elu_param.alpha = float(node.attr("alpha", 1.0))


@converts("PRelu")
def _prelu(node: NodeContext) -> None:
    slope = node.const(1)
    if slope is None:
        raise node.refuse("its slope must be a constant")
    shape = node.shape(node.inputs[0])
    if slope.size == 1:
        layer = node.layer("PReLU", [node.blob(0)], blobs=[slope.reshape(())])
        layer.prelu_param.channel_shared = True
        return
    axis, blob = _factor_axes(node, shape, slope)
    if axis != 1 or blob.ndim != 1:
        raise node.refuse(f"slope of shape {slope.shape}: Caffe's PReLU has one slope per channel (axis 1)")
    node.layer("PReLU", [node.blob(0)], blobs=[blob])


@converts("Softmax")
def _softmax(node: NodeContext) -> None:
    rank = len(node.shape(node.inputs[0]))
    axis = int(node.attr("axis", -1 if node.importer.opset >= 13 else 1)) % rank
    if node.importer.opset < 13 and axis != rank - 1:
        raise node.refuse(f"opset {node.importer.opset} Softmax normalises axes {axis}.. together; "
                          "Caffe's Softmax normalises one axis")
    node.layer("Softmax", [node.blob(0)]).softmax_param.axis = axis


@converts("Dropout")
def _dropout(node: NodeContext) -> None:
    if len(node.outputs) > 1 and node.outputs[1] and node.importer.consumers[node.outputs[1]]:
        raise node.refuse("its mask output is used; Caffe's Dropout has none")
    ratio = node.const(1) if node.importer.opset >= 12 else node.attr("ratio", 0.5)
    layer = node.layer("Dropout", [node.blob(0)])
    layer.dropout_param.dropout_ratio = 0.5 if ratio is None else float(np.asarray(ratio))


@converts("Identity")
def _identity(node: NodeContext) -> None:
    if node.inputs[0] in node.importer.constants:
        node.importer.constants[node.outputs[0]] = node.importer.constants[node.inputs[0]]
        return
    node.importer.alias[node.outputs[0]] = node.blob(0)


@converts("Constant")
def _constant(node: NodeContext) -> None:
    value = node.attrs.get("value")
    if value is None:
        raise node.refuse("only a tensor 'value' Constant is supported")
    array = node.importer.onnx.numpy_helper.to_array(value)
    node.importer.constants[node.outputs[0]] = array.astype(np.float32) if array.dtype.kind == "f" else array


# ---------------------------------------------------------------------------- shapes
@converts("Concat")
def _concat(node: NodeContext) -> None:
    rank = len(node.shape(node.inputs[0]))
    layer = node.layer("Concat", [node.blob(i) for i in range(len(node.inputs))])
    layer.concat_param.axis = int(node.attr("axis")) % rank


@converts("Split")
def _split(node: NodeContext) -> None:
    shape = node.shape(node.inputs[0])
    axis = int(node.attr("axis", 0)) % len(shape)
    sizes = [node.shape(name)[axis] for name in node.outputs]
    layer = node.layer("Slice", [node.blob(0)], tops=node.outputs)
    layer.slice_param.axis = axis
    layer.slice_param.slice_point.extend(int(v) for v in np.cumsum(sizes)[:-1])


@converts("Reshape")
def _reshape(node: NodeContext) -> None:
    shape = node.const(1)
    if shape is None:
        raise node.refuse("its target shape is computed; Caffe's Reshape needs a constant shape")
    if node.attr("allowzero", 0):
        raise node.refuse("allowzero: 1 (a 0 means 'copy the dimension' in Caffe)")
    layer = node.layer("Reshape", [node.blob(0)])
    layer.reshape_param.shape.dim.extend(int(d) for d in shape)  # 0 and -1 mean what Caffe means


@converts("Flatten")
def _flatten(node: NodeContext) -> None:
    shape = node.shape(node.inputs[0])
    axis = int(node.attr("axis", 1)) % (len(shape) + 1)
    if axis == 1:
        consumers = node.importer.consumers[node.outputs[0]]
        graph = node.importer.model.graph
        if node.single_use(node.outputs[0]) and graph.node[consumers[0]].op_type == "Gemm":
            node.importer.alias[node.outputs[0]] = node.blob(0)  # InnerProduct flattens by itself
            return
        node.layer("Flatten", [node.blob(0)])
        return
    inner = int(np.prod(shape[axis:], dtype=np.int64))
    layer = node.layer("Reshape", [node.blob(0)])
    layer.reshape_param.shape.dim.extend([1, -1] if axis == 0 else [-1, inner])


@converts("Transpose")
def _transpose(node: NodeContext) -> None:
    rank = len(node.shape(node.inputs[0]))
    perm = node.attr("perm", list(reversed(range(rank))))
    node.layer("Permute", [node.blob(0)]).permute_param.order.extend(int(a) for a in perm)
