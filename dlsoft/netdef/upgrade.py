"""Bring legacy Caffe definitions up to the current schema, as Caffe does on read.

Caffe's ``upgrade_proto.cpp`` rewrites old nets and solvers when it reads them; dlsoft
applies the same rules so that a file Caffe accepts reads into the same message here:

* V1 nets (``layers { type: CONVOLUTION blobs_lr: 1 ... }``) become ``layer`` entries with
  string types; ``blobs_lr``/``weight_decay``/``param``/``blob_share_mode`` become
  ``param { lr_mult decay_mult name share_mode }``.
* Transform fields (``scale``, ``mean_file``, ``crop_size``, ``mirror``) inside
  ``data_param``/``image_data_param``/``window_data_param`` move into ``transform_param``.
* The net-level ``input``/``input_shape``/``input_dim`` fields become an ``Input`` layer at
  the front.
* BatchNorm layers lose the three ``param { lr_mult: 0 }`` entries old nets carried.
* Legacy 4-D blob dimensions (``num/channels/height/width``) become ``shape`` (Caffe does
  this when it loads a blob).
* Solvers: the ``solver_type`` enum becomes the ``type`` string.

V0 nets (``layers { layer { ... } }``, before 2014) are not supported: they raise
:class:`~dlsoft.errors.ParseError` saying so.
"""
from __future__ import annotations

from dlsoft.errors import ParseError
from dlsoft.protos import caffe_pb2

__all__ = ["upgrade_net", "upgrade_solver", "net_needs_upgrade", "V1_LAYER_TYPES", "SOLVER_TYPES"]

_V1 = caffe_pb2.V1LayerParameter

#: V1 ``LayerType`` enum value -> layer type string (UpgradeV1LayerType).
V1_LAYER_TYPES: dict[int, str] = {
    _V1.NONE: "",
    _V1.ABSVAL: "AbsVal",
    _V1.ACCURACY: "Accuracy",
    _V1.ARGMAX: "ArgMax",
    _V1.BNLL: "BNLL",
    _V1.CONCAT: "Concat",
    _V1.CONTRASTIVE_LOSS: "ContrastiveLoss",
    _V1.CONVOLUTION: "Convolution",
    _V1.DECONVOLUTION: "Deconvolution",
    _V1.DATA: "Data",
    _V1.DROPOUT: "Dropout",
    _V1.DUMMY_DATA: "DummyData",
    _V1.EUCLIDEAN_LOSS: "EuclideanLoss",
    _V1.ELTWISE: "Eltwise",
    _V1.EXP: "Exp",
    _V1.FLATTEN: "Flatten",
    _V1.HDF5_DATA: "HDF5Data",
    _V1.HDF5_OUTPUT: "HDF5Output",
    _V1.HINGE_LOSS: "HingeLoss",
    _V1.IM2COL: "Im2col",
    _V1.IMAGE_DATA: "ImageData",
    _V1.INFOGAIN_LOSS: "InfogainLoss",
    _V1.INNER_PRODUCT: "InnerProduct",
    _V1.LRN: "LRN",
    _V1.MEMORY_DATA: "MemoryData",
    _V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss",
    _V1.MVN: "MVN",
    _V1.POOLING: "Pooling",
    _V1.POWER: "Power",
    _V1.RELU: "ReLU",
    _V1.SIGMOID: "Sigmoid",
    _V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss",
    _V1.SILENCE: "Silence",
    _V1.SOFTMAX: "Softmax",
    _V1.SOFTMAX_LOSS: "SoftmaxWithLoss",
    _V1.SPLIT: "Split",
    _V1.SLICE: "Slice",
    _V1.TANH: "TanH",
    _V1.WINDOW_DATA: "WindowData",
    _V1.THRESHOLD: "Threshold",
}

_S = caffe_pb2.SolverParameter
#: Legacy ``solver_type`` enum value -> solver type string (UpgradeSolverType).
SOLVER_TYPES: dict[int, str] = {
    _S.SGD: "SGD",
    _S.NESTEROV: "Nesterov",
    _S.ADAGRAD: "AdaGrad",
    _S.RMSPROP: "RMSProp",
    _S.ADADELTA: "AdaDelta",
    _S.ADAM: "Adam",
}

# Layer type (V1 enum or string) -> the per-layer message holding legacy transform fields.
_DATA_PARAM_OF = {"Data": "data_param", "ImageData": "image_data_param", "WindowData": "window_data_param"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


def net_needs_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """True if :func:`upgrade_net` would change ``net``."""
    return upgrade_net(net) != net


def upgrade_net(net: caffe_pb2.NetParameter, path: str | None = None) -> caffe_pb2.NetParameter:
    """Return a copy of ``net`` with Caffe's legacy-format upgrades applied.

    ``path`` only names the file in error messages. Raises :class:`ParseError` for V0
    nets and for nets that mix V1 ``layers`` with ``layer``.
    """
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    where = str(path) if path is not None else None
    if any(v1.HasField("layer") for v1 in out.layers):
        raise ParseError("V0 layer definitions (layers { layer { ... } }) are not supported; "
                         "upgrade the net with Caffe's upgrade_net_proto_text first", path=where)
    for v1 in out.layers:                      # UpgradeNetDataTransformation (on V1 layers)
        _move_transform_fields(V1_LAYER_TYPES.get(v1.type, ""), v1)
    if len(out.layers):                        # UpgradeV1Net
        if len(out.layer):
            raise ParseError("net mixes V1 'layers' with 'layer' entries; use one or the other",
                             path=where)
        upgraded = [_upgrade_v1_layer(v1, where) for v1 in out.layers]
        out.ClearField("layers")
        out.layer.extend(upgraded)
    for layer in out.layer:                    # same rule, for modern layers written the old way
        _move_transform_fields(layer.type, layer)
    if len(out.input):                         # UpgradeNetInput
        _upgrade_input(out, where)
    for layer in out.layer:                    # UpgradeNetBatchNorm
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            layer.ClearField("param")
    for layer in out.layer:                    # legacy blob dims -> shape
        for blob in layer.blobs:
            _upgrade_blob_shape(blob)
    return out


def upgrade_solver(solver: caffe_pb2.SolverParameter, path: str | None = None) -> caffe_pb2.SolverParameter:
    """Return a copy of ``solver`` with the legacy ``solver_type`` enum turned into ``type``."""
    out = caffe_pb2.SolverParameter()
    out.CopyFrom(solver)
    if out.HasField("solver_type"):
        if out.HasField("type"):
            raise ParseError("solver sets both the legacy 'solver_type' and 'type'; keep only 'type'",
                             path=str(path) if path is not None else None)
        out.type = SOLVER_TYPES[out.solver_type]
        out.ClearField("solver_type")
    return out


def _move_transform_fields(layer_type: str, layer) -> None:
    field = _DATA_PARAM_OF.get(layer_type)
    if field is None or not layer.HasField(field):
        return
    src = getattr(layer, field)
    for name in _TRANSFORM_FIELDS:
        if src.HasField(name):
            if not layer.transform_param.HasField(name):
                setattr(layer.transform_param, name, getattr(src, name))
            src.ClearField(name)


def _upgrade_v1_layer(v1: caffe_pb2.V1LayerParameter, where: str | None) -> caffe_pb2.LayerParameter:
    layer = caffe_pb2.LayerParameter()
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    if v1.HasField("name"):
        layer.name = v1.name
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        layer.type = V1_LAYER_TYPES[v1.type]
    layer.blobs.extend(v1.blobs)
    n_param = max(len(v1.param), len(v1.blob_share_mode), len(v1.blobs_lr), len(v1.weight_decay))
    for i in range(n_param):
        spec = layer.param.add()
        if i < len(v1.param):
            spec.name = v1.param[i]
        if i < len(v1.blob_share_mode):
            spec.share_mode = v1.blob_share_mode[i]
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]
    layer.loss_weight.extend(v1.loss_weight)
    for fd, value in v1.ListFields():          # per-layer params share names with LayerParameter's
        if fd.message_type is not None and fd.name.endswith("_param") and fd.name != "param":
            getattr(layer, fd.name).CopyFrom(value)
    return layer


def _upgrade_input(net: caffe_pb2.NetParameter, where: str | None) -> None:
    n = len(net.input)
    if len(net.input_shape) and len(net.input_dim):
        raise ParseError("net sets both 'input_shape' and 'input_dim'; use one", path=where)
    if len(net.input_dim) and len(net.input_dim) != 4 * n:
        raise ParseError(f"net has {n} input(s) but {len(net.input_dim)} input_dim values "
                         f"(4 per input expected)", path=where)
    if len(net.input_shape) and len(net.input_shape) not in (1, n):
        raise ParseError(f"net has {n} input(s) but {len(net.input_shape)} input_shape entries",
                         path=where)
    layer = caffe_pb2.LayerParameter(name="input", type="Input")
    layer.top.extend(net.input)
    if len(net.input_shape):
        layer.input_param.shape.extend(net.input_shape)
    elif len(net.input_dim):
        for i in range(n):
            layer.input_param.shape.add().dim.extend(net.input_dim[4 * i:4 * i + 4])
    layers = [layer] + list(net.layer)
    net.ClearField("layer")
    net.layer.extend(layers)
    for name in ("input", "input_shape", "input_dim"):
        net.ClearField(name)


def _upgrade_blob_shape(blob: caffe_pb2.BlobProto) -> None:
    # As Caffe's Blob::FromProto: any legacy dimension set means the 4-D legacy shape wins.
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        blob.shape.Clear()
        blob.shape.dim.extend([blob.num, blob.channels, blob.height, blob.width])
    for f in ("num", "channels", "height", "width"):
        blob.ClearField(f)
