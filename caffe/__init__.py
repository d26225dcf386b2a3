"""``import caffe``: pycaffe's API, provided by dlsoft (this package is ``dlsoft.caffe``).

``caffe`` and its submodules are the very module objects of ``dlsoft.caffe``, so
``caffe.io.Transformer is dlsoft.caffe.io.Transformer`` and a Python layer deriving
from ``caffe.Layer`` is the class dlsoft's loader knows.
"""
import importlib
import sys

import dlsoft.caffe as _caffe

_SUBMODULES = ("io", "net_spec", "pycaffe", "classifier", "detector", "draw", "coord_map", "proto", "proto.caffe_pb2")

for _name in _SUBMODULES:
    sys.modules[f"{__name__}.{_name}"] = importlib.import_module(f"dlsoft.caffe.{_name}")
sys.modules[__name__] = _caffe
