"""ONNX export and import: a dlsoft (Caffe) net as one ONNX graph, and back.

``export_net(net, path)`` writes a built :class:`dlsoft.Net` (TEST phase, trained
weights) as an ONNX model with Caffe's exact semantics; ``import_model(path, outdir)``
writes a prototxt and a caffemodel for ONNX graphs made of operators that map onto
Caffe layers. Both need the optional ``onnx`` package (``pip install 'dlsoft[onnx]'``);
it is imported on first use, so ``import dlsoft`` works without it.
"""
from __future__ import annotations

from ..errors import DlsoftError

#: The ONNX operator set the exporter writes (17: LayerNormalization-era, ReduceSumSquare
#: still takes its axes as an attribute, Split takes its sizes as an input).
OPSET = 17


class OnnxError(DlsoftError):
    """A net (or an ONNX graph) that has no exact counterpart on the other side."""


def require_onnx():
    """The ``onnx`` module, or a one-line error saying how to install it."""
    try:
        import onnx  # noqa: PLC0415 - optional dependency, imported on first use
    except ImportError:
        raise OnnxError("ONNX export/import needs the 'onnx' package: pip install 'dlsoft[onnx]'") from None
    return onnx


def export_net(net, path, static_batch: bool = False, outputs=None):
    """Write ``net`` (a built dlsoft.Net) to ``path`` as ONNX; returns the ModelProto.

    ``outputs`` (blob names) cuts the graph there instead of at the net's outputs.
    """
    from .export import export_net as _export  # noqa: PLC0415
    return _export(net, path, static_batch=static_batch, outputs=outputs)


def export_files(model, weights, path, static_batch: bool = False, outputs=None):
    """Build the TEST-phase net from a prototxt and its weights, and export it to ``path``."""
    from .export import export_files as _export_files  # noqa: PLC0415
    return _export_files(model, weights, path, static_batch=static_batch, outputs=outputs)


def import_model(path, outdir, name: str | None = None):
    """Write ``OUTDIR/<name>.prototxt`` and ``.caffemodel`` for an ONNX model; returns both paths."""
    from .import_ import import_model as _import  # noqa: PLC0415
    return _import(path, outdir, name=name)


__all__ = ["OPSET", "OnnxError", "export_files", "export_net", "import_model", "require_onnx"]
