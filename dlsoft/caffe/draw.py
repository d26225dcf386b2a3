"""pycaffe's ``caffe.draw`` over dlsoft's DOT writer (:mod:`dlsoft.netdef.draw`).

pycaffe builds a pydot graph; here :func:`get_pydot_graph` returns a small
:class:`DotGraph` with pydot's ``to_string()``, ``create(format=...)`` and
``write(path, format=...)``. Rendering (png, svg, pdf) runs Graphviz's ``dot``;
``.dot``/``.gv``/``.raw`` files are the DOT text itself and need no Graphviz.
"""
from __future__ import annotations

import shutil
import subprocess

from ..errors import DlsoftError
from ..fileio import atomic_write_bytes
from ..netdef import graph
from ..netdef.draw import net_to_dot
from ..protos import caffe_pb2

_TEXT_FORMATS = ("dot", "gv", "raw")


class DotGraph:
    """DOT text with pydot's ``to_string``/``create``/``write``."""

    def __init__(self, text: str):
        self.text = text

    def to_string(self) -> str:
        return self.text

    def create(self, prog: str = "dot", format: str = "png") -> bytes:  # noqa: A002 - pydot's name
        """The drawing in ``format`` (``raw``/``dot``: the DOT text; others: rendered by Graphviz)."""
        if format in _TEXT_FORMATS:
            return self.text.encode("utf-8")
        program = shutil.which(prog)
        if program is None:
            raise DlsoftError(f"caffe.draw: drawing as {format} needs Graphviz's `{prog}` program, which is "
                              "not on PATH: install Graphviz (apt-get install graphviz), or draw to a "
                              ".dot/.raw file")
        result = subprocess.run([program, f"-T{format}"], input=self.text.encode("utf-8"),
                                capture_output=True, check=False)
        if result.returncode != 0:
            lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
            raise DlsoftError(f"caffe.draw: Graphviz failed: {lines[0] if lines else 'no message'}")
        return result.stdout

    def write(self, path, prog: str = "dot", format: str = "raw") -> None:  # noqa: A002
        atomic_write_bytes(path, self.create(prog=prog, format=format))


def _filtered(caffe_net: caffe_pb2.NetParameter, phase) -> caffe_pb2.NetParameter:
    if phase is None:
        return caffe_net
    return graph.filter_net(caffe_net, graph.make_state(caffe_net, phase))


def get_pydot_graph(caffe_net, rankdir: str = "LR", label_edges: bool = True, phase=None,
                    display_lrm: bool = False) -> DotGraph:
    """The graph of ``caffe_net`` (a NetParameter): all layers, or those of ``phase`` (caffe.TRAIN/TEST)."""
    return DotGraph(net_to_dot(_filtered(caffe_net, phase), rankdir=rankdir))


def draw_net(caffe_net, rankdir: str = "LR", ext: str = "png", phase=None, display_lrm: bool = False) -> bytes:
    """The drawing of ``caffe_net`` as bytes in format ``ext``."""
    return get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm).create(format=ext)


def draw_net_to_file(caffe_net, filename, rankdir: str = "LR", phase=None, display_lrm: bool = False) -> None:
    """Draw ``caffe_net`` to ``filename`` in the format its extension names (``.raw``: DOT text)."""
    filename = str(filename)
    ext = filename[filename.rfind(".") + 1:]
    atomic_write_bytes(filename, draw_net(caffe_net, rankdir, ext, phase, display_lrm))
