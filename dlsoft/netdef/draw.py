"""Draw a net as a graph: layers as boxes, blobs as octagons, edges for data flow.

:func:`net_to_dot` writes Graphviz DOT text (no dependency); :func:`render_dot` turns it
into SVG/PNG/PDF with Graphviz's ``dot`` program when it is on PATH. Like Caffe's
``draw_net.py``, a net can be drawn for one phase or for all layers; with a phase, the
net is built so blobs show their shapes and layers their parameter counts.

An in-place layer (ReLU writing over its bottom) gets a new node for the blob it
rewrites, so the drawing stays a left-to-right DAG instead of a loop.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

from ..errors import DlsoftError
from ..protos import caffe_pb2
from . import graph, io

log = logging.getLogger(__name__)

RENDERED_FORMATS = ("svg", "png", "pdf")
_LAYER_COLOURS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
                  "InnerProduct": "#CC33FF", "Data": "#90EE90", "Input": "#90EE90",
                  "ImageData": "#90EE90", "HDF5Data": "#90EE90", "MemoryData": "#90EE90",
                  "DummyData": "#90EE90"}
_DEFAULT_LAYER_COLOUR = "#6495ED"
_BLOB_COLOUR = "#E0E0E0"


def _quote(text: str) -> str:
    """A DOT double-quoted string; ``\\n`` in ``text`` becomes a line break."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _dims(values, fallback: str = "") -> str:
    values = list(values)
    return "x".join(str(v) for v in values) if values else fallback


def layer_details(layer: caffe_pb2.LayerParameter) -> str:
    """A short description of the settings that matter for ``layer`` (kernel, stride, outputs)."""
    if layer.type in ("Convolution", "Deconvolution"):
        p = layer.convolution_param
        kernel = _dims(p.kernel_size) or f"{p.kernel_h}x{p.kernel_w}"
        parts = [f"kernel {kernel}", f"stride {_dims(p.stride, '1')}", f"pad {_dims(p.pad, '0')}",
                 f"out {p.num_output}"]
        if p.group > 1:
            parts.append(f"group {p.group}")
        return ", ".join(parts)
    if layer.type == "Pooling":
        p = layer.pooling_param
        method = caffe_pb2.PoolingParameter.PoolMethod.Name(p.pool)
        if p.global_pooling:
            return f"{method} global"
        kernel = p.kernel_size if p.HasField("kernel_size") else f"{p.kernel_h}x{p.kernel_w}"
        return f"{method} {kernel}, stride {p.stride}"
    if layer.type == "InnerProduct":
        return f"out {layer.inner_product_param.num_output}"
    if layer.type == "LRN":
        return f"local_size {layer.lrn_param.local_size}"
    if layer.type == "Dropout":
        return f"ratio {layer.dropout_param.dropout_ratio:g}"
    return ""


def net_to_dot(net_param: caffe_pb2.NetParameter, *, shapes: dict[str, tuple] | None = None,
               param_counts: dict[str, int] | None = None, rankdir: str = "LR") -> str:
    """DOT text for ``net_param``: one node per layer, one per blob version, edges bottom -> layer -> top.

    ``shapes`` (blob name -> shape) and ``param_counts`` (layer name -> count) add those
    figures to the labels when given.
    """
    if rankdir not in ("LR", "RL", "TB", "BT"):
        raise DlsoftError(f"rankdir must be LR, RL, TB or BT, got '{rankdir}'")
    shapes = shapes or {}
    param_counts = param_counts or {}
    lines = [f"digraph {_quote(net_param.name or 'net')} {{", f"  rankdir={rankdir};",
             '  node [fontname="Helvetica", fontsize=10];', '  edge [fontname="Helvetica", fontsize=9];']
    version: dict[str, int] = {}  # blob name -> how many times it has been written

    def blob_node(name: str, new: bool) -> str:
        if new or name not in version:
            version[name] = version.get(name, -1) + 1
            node = f"blob:{name}:{version[name]}"
            label = name + (f"\n{_dims(shapes[name], 'scalar')}" if name in shapes else "")
            lines.append(f"  {_quote(node)} [label={_quote(label)}, shape=octagon, style=filled, "
                         f"fillcolor={_quote(_BLOB_COLOUR)}];")
        return f"blob:{name}:{version[name]}"

    for index, layer in enumerate(net_param.layer):
        node = f"layer:{index}:{layer.name}"
        label = [f"{layer.name}", f"({layer.type})"]
        details = layer_details(layer)
        if details:
            label.append(details)
        if param_counts.get(layer.name):
            label.append(f"{param_counts[layer.name]:,} params")
        colour = _LAYER_COLOURS.get(layer.type, _DEFAULT_LAYER_COLOUR)
        lines.append(f"  {_quote(node)} [label={_quote(chr(10).join(label))}, shape=box, style=filled, "
                     f"fillcolor={_quote(colour)}];")
        for bottom in layer.bottom:
            lines.append(f"  {_quote(blob_node(bottom, new=False))} -> {_quote(node)};")
        for top in layer.top:
            lines.append(f"  {_quote(node)} -> {_quote(blob_node(top, new=True))};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def graphviz_available() -> bool:
    """Whether Graphviz's ``dot`` program is on PATH."""
    return shutil.which("dot") is not None


def render_dot(dot_text: str, out_path: str | Path) -> Path:
    """Write ``dot_text`` to ``out_path``: as it is for ``.dot``/``.gv``, else rendered by ``dot``."""
    out_path = Path(out_path)
    fmt = out_path.suffix.lower().lstrip(".")
    if fmt in ("dot", "gv"):
        io.atomic_write_bytes(out_path, dot_text.encode("utf-8"))
        return out_path
    if fmt not in RENDERED_FORMATS:
        raise DlsoftError(f"{out_path}: unknown drawing format '.{fmt}' "
                          f"(expected .dot, .gv, {', '.join('.' + f for f in RENDERED_FORMATS)})")
    dot = shutil.which("dot")
    if dot is None:
        raise DlsoftError(f"drawing {out_path.name} needs Graphviz's `dot` program, which is not on PATH: "
                          "install Graphviz (apt-get install graphviz, brew install graphviz or "
                          "conda install graphviz), or write a .dot file instead")
    result = subprocess.run([dot, f"-T{fmt}"], input=dot_text.encode("utf-8"), capture_output=True,
                            check=False)
    if result.returncode != 0:
        message = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise DlsoftError(f"Graphviz failed to draw {out_path}: {message[0] if message else 'no message'}")
    io.atomic_write_bytes(out_path, result.stdout)
    return out_path


def draw_net(model, out_path: str | Path, *, phase: str = "TRAIN", rankdir: str = "LR",
             shapes: bool = True) -> Path:
    """Draw ``model`` (a path or NetParameter) to ``out_path`` (.dot, .svg, .png or .pdf).

    ``phase`` is ``TRAIN``, ``TEST`` or ``ALL`` (every layer, unfiltered, no shapes). With
    ``shapes``, the net is built for the phase to learn blob shapes and parameter
    counts; if it cannot be built (a data source is missing, say) it is drawn without
    them and a warning says why.
    """
    source = str(model) if isinstance(model, (str, Path)) else None
    net_param = io.read_net(model) if source is not None else model
    phase = phase.upper()
    if phase not in ("TRAIN", "TEST", "ALL"):
        raise DlsoftError(f"phase must be TRAIN, TEST or ALL, got '{phase}'")
    blob_shapes: dict[str, tuple] = {}
    counts: dict[str, int] = {}
    if phase != "ALL":
        state = graph.make_state(net_param, phase)
        drawn = graph.filter_net(net_param, state, source)
        if shapes:
            blob_shapes, counts = _shapes_of(net_param, phase)
    else:
        drawn = net_param
    return render_dot(net_to_dot(drawn, shapes=blob_shapes, param_counts=counts, rankdir=rankdir), out_path)


def _shapes_of(net_param: caffe_pb2.NetParameter, phase: str) -> tuple[dict[str, tuple], dict[str, int]]:
    from .net import Net

    try:
        net = Net(net_param, phase=phase)
    except DlsoftError as exc:
        log.warning("drawing without shapes: the net could not be built (%s)", exc)
        return {}, {}
    try:
        blob_shapes = {name: tuple(blob.shape) for name, blob in net.blobs.items()}
        counts = {layer.name: sum(blob.count for blob in layer.blobs) for layer in net.layers}
    finally:
        net.close()
    return blob_shapes, counts
