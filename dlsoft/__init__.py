"""dlsoft: a declarative, Caffe-compatible deep-learning trainer.

The Python API follows pycaffe::

    import dlsoft
    net = dlsoft.Net("lenet.prototxt", phase="TEST", weights="lenet.caffemodel")
    out = net.forward(data=images)
    solver = dlsoft.get_solver("lenet_solver.prototxt")
    solver.step(100)
"""
from __future__ import annotations

import importlib

from .threads import calm_blas_threads

calm_blas_threads()  # before anything imports numpy: see dlsoft.threads

__version__ = "0.1.0"

from .errors import DlsoftError  # noqa: E402

# Heavy parts load on first use, so `import dlsoft` stays fast and never imports cupy.
_LAZY = {
    "Net": ("dlsoft.netdef.net", "Net"),
    "Blob": ("dlsoft.blob", "Blob"),
    "read_net": ("dlsoft.netdef.io", "read_net"),
    "read_solver": ("dlsoft.netdef.io", "read_solver"),
    "write_net": ("dlsoft.netdef.io", "write_net"),
    "write_solver": ("dlsoft.netdef.io", "write_solver"),
    "get_solver": ("dlsoft.solver", "get_solver"),
    "set_random_seed": ("dlsoft.random", "set_seed"),
    "set_num_threads": ("dlsoft.threads", "set_num_threads"),
    "get_num_threads": ("dlsoft.threads", "get_num_threads"),
    "zoo": ("dlsoft.model_zoo", None),
    "caffe_pb2": ("dlsoft.protos.caffe_pb2", None),
}

__all__ = ["DlsoftError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'dlsoft' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value
