"""Deploy-net optimisation: fold BatchNorm (+Scale) into the layer before it, drop TEST no-ops.

:func:`optimize_net` turns a TEST net and its weights into an equivalent, shorter net:

1. **Dropout** is the identity at TEST and a user-written **Split** only aliases its
   bottom: both are removed, and their consumers read the bottom instead.
2. **BatchNorm** with global statistics, optionally followed by a per-channel **Scale**,
   right after a **Convolution** or **InnerProduct** whose top nothing else reads, is
   folded into that layer's weights. With ``a = γ / sqrt(σ² + eps)`` per output channel
   (``γ = 1``, ``β = 0`` without a Scale)::

       W'[c] = a[c] · W[c]          b'[c] = a[c] · (b[c] - μ[c]) + β[c]

   and the layer gains a bias when it had none.

The result is a plain Caffe NetParameter (modern ``layer`` form), so real Caffe, OpenCV's
importer and dlsoft read it. :func:`optimize_files` is the file-to-file form that
``dlsoft optimize`` runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..backend import to_numpy
from ..errors import NetDefinitionError
from ..protos import caffe_pb2
from . import io
from .net import Net

FOLDABLE = ("Convolution", "InnerProduct")
NO_OPS = ("Dropout", "Split")


@dataclass
class OptimizeReport:
    """What :func:`optimize_net` changed."""

    folded: list[tuple[str, ...]] = field(default_factory=list)  # (conv/ip, batchnorm[, scale])
    dropped: list[str] = field(default_factory=list)
    layers_before: int = 0
    layers_after: int = 0

    def format(self) -> str:
        lines = [f"{self.layers_before} layers -> {self.layers_after} layers"]
        lines += [f"folded {' + '.join(names[1:])} into {names[0]}" for names in self.folded]
        if self.dropped:
            lines.append(f"dropped {len(self.dropped)} TEST no-op layer(s): {', '.join(self.dropped)}")
        return "\n".join(lines)


def optimize_net(net: Net) -> tuple["caffe_pb2.NetParameter", OptimizeReport]:
    """The optimised NetParameter (with its weights as blobs) of a built TEST ``net``."""
    if net.phase != "TEST":
        raise NetDefinitionError(f"optimize: net '{net.name}' is built for {net.phase}; folding BatchNorm "
                                 "needs the TEST phase (global statistics)")
    # The built layer list, splits included (the graph renamed bottoms to their tops):
    # dropping them below gives every consumer its producer's blob again.
    layers = []
    for layer in net.layers:
        layer_param = _copy(layer.param)
        layer_param.ClearField("blobs")
        for blob in layer.blobs:
            layer_param.blobs.add().CopyFrom(io.array_to_blob_proto(to_numpy(blob.data)))
        layers.append(layer_param)
    report = OptimizeReport(layers_before=len([n for n in net.layer_names if n not in net._inserted_splits]))
    layers = _drop_no_ops(layers, report, set(net._inserted_splits))
    layers = _fold_batch_norm(layers, {layer.name: layer for layer in net.layers}, report)
    out = caffe_pb2.NetParameter(name=net.name)
    out.layer.extend(layers)
    report.layers_after = len(layers)
    return out, report


def optimize_files(model, weights, outdir, phase: str = "TEST") -> tuple[Path, Path, OptimizeReport]:
    """Read ``model`` + ``weights``, write ``outdir/<model stem>.prototxt`` and
    ``outdir/<weights stem>.caffemodel`` (atomically); returns both paths and the report."""
    outdir = Path(outdir)
    with Net(model, phase=phase, weights=weights) as net:
        optimized, report = optimize_net(net)
    outdir.mkdir(parents=True, exist_ok=True)
    net_path = outdir / (Path(str(model)).stem + ".prototxt")
    weights_path = outdir / (Path(str(weights)).stem + ".caffemodel")
    io.atomic_write_bytes(weights_path, optimized.SerializeToString())
    definition = caffe_pb2.NetParameter()
    definition.CopyFrom(optimized)
    for layer in definition.layer:
        layer.ClearField("blobs")
    io.write_net(definition, net_path)
    return net_path, weights_path, report


# --------------------------------------------------------------------------- the passes
def _copy(layer):
    new = caffe_pb2.LayerParameter()
    new.CopyFrom(layer)
    return new


def _rename_reads(layers, start: int, old: str, new: str) -> None:
    """Later layers read ``new`` where they read ``old``, until a layer writes ``old`` again."""
    for layer in layers[start:]:
        for j, bottom in enumerate(layer.bottom):
            if bottom == old:
                layer.bottom[j] = new
        if old in layer.top:
            if old in layer.bottom:  # an in-place layer on the renamed blob: it now works on ``new``
                layer.top[list(layer.top).index(old)] = new
                continue
            return


def _drop_no_ops(layers, report: OptimizeReport, inserted: set[str]) -> list:
    kept = []
    for i, layer in enumerate(layers):
        if layer.type in NO_OPS and len(layer.bottom) == 1 and not any(layer.loss_weight):
            source = layer.bottom[0]
            for top in layer.top:
                if top != source:
                    _rename_reads(layers, i + 1, top, source)
            if layer.name not in inserted:
                report.dropped.append(layer.name)
            continue
        kept.append(layer)
    return kept


def _next_user(layers, start: int, blob: str):
    """Index of the next layer reading or writing ``blob``, and whether any other layer
    reads it before that layer rewrites it (then the value is shared)."""
    users = [i for i in range(start, len(layers)) if blob in layers[i].bottom or blob in layers[i].top]
    if not users:
        return None, False
    first = users[0]
    rewritten = blob in layers[first].top
    others = False
    for i in users[1:]:
        if blob in layers[i].bottom and not rewritten:
            others = True
        if blob in layers[i].top:
            break
    return first, others or (not rewritten and len(users) > 1)


def _fold_batch_norm(layers, built: dict, report: OptimizeReport) -> list:
    removed: set[int] = set()
    for i, layer in enumerate(layers):
        if layer.type not in FOLDABLE or len(layer.top) != 1 or layer.top[0] in layer.bottom:
            continue
        chain = [i]
        j, shared = _next_user(layers, i + 1, layer.top[0])
        if j is None or shared or layers[j].type != "BatchNorm" or not built[layers[j].name].use_global_stats:
            continue
        chain.append(j)
        k, shared = _next_user(layers, j + 1, layers[j].top[0])
        if k is not None and not shared and _is_channel_scale(layers[k], built):
            chain.append(k)
        _fold(layers, chain, built)
        final = layers[chain[-1]].top[0]
        if final != layer.top[0]:
            layer.top[0] = final
        removed.update(chain[1:])
        report.folded.append(tuple(layers[c].name for c in chain))
    return [layer for i, layer in enumerate(layers) if i not in removed]


def _is_channel_scale(layer, built: dict) -> bool:
    if layer.type != "Scale" or len(layer.bottom) != 1:
        return False
    p = layer.scale_param
    return p.axis in (1, -3) and p.num_axes == 1 and built[layer.name].blobs[0].count > 0


def _fold(layers, chain: list[int], built: dict) -> None:
    target = layers[chain[0]]
    bn = built[layers[chain[1]].name]
    s = float(np.asarray(bn.blobs[2].data).reshape(-1)[0])
    factor = 0.0 if s == 0 else 1.0 / s
    mean = np.asarray(bn.blobs[0].data, np.float64) * factor
    var = np.asarray(bn.blobs[1].data, np.float64) * factor
    a = 1.0 / np.sqrt(var + bn.eps)
    beta = np.zeros_like(a)
    if len(chain) > 2:
        scale = built[layers[chain[2]].name]
        a = a * np.asarray(scale.blobs[0].data, np.float64).reshape(-1)
        if scale.bias_index is not None:
            beta = np.asarray(scale.blobs[scale.bias_index].data, np.float64).reshape(-1)
    weight = io.blob_proto_to_array(target.blobs[0]).astype(np.float64)
    transposed = target.type == "InnerProduct" and target.inner_product_param.transpose
    channels = weight.shape[1] if transposed else weight.shape[0]
    if a.size != channels:
        raise NetDefinitionError(f"optimize: layer '{target.name}' has {channels} outputs but "
                                 f"'{bn.name}' normalises {a.size} channels")
    weight = weight * (a[None, :] if transposed else a.reshape((-1,) + (1,) * (weight.ndim - 1)))
    params = target.inner_product_param if target.type == "InnerProduct" else target.convolution_param
    bias = io.blob_proto_to_array(target.blobs[1]).astype(np.float64).reshape(-1) if params.bias_term \
        else np.zeros(channels)
    bias = a * (bias - mean) + beta
    params.bias_term = True
    target.ClearField("blobs")
    target.blobs.add().CopyFrom(io.array_to_blob_proto(weight.astype(np.float32)))
    target.blobs.add().CopyFrom(io.array_to_blob_proto(bias.astype(np.float32)))
