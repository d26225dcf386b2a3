"""pycaffe's API on dlsoft: ``import dlsoft.caffe as caffe`` (or just ``import caffe``).

Scripts, notebooks and Python layers written for Caffe 1.0's pycaffe run unchanged::

    import caffe
    from caffe import layers as L, params as P
    caffe.set_mode_cpu()
    net = caffe.Net("deploy.prototxt", "weights.caffemodel", caffe.TEST)
    out = net.forward(data=batch)["prob"]
    solver = caffe.SGDSolver("solver.prototxt"); solver.step(100)

The top-level ``caffe`` package installed with dlsoft is this module under another name
(``caffe.io`` is ``dlsoft.caffe.io``, and so on). What differs from pycaffe: a GPU is
used through cupy (``set_mode_gpu()`` fails at once, with a clear error, when there is
none); ``forward(**inputs)`` reshapes the net to the inputs' batch size instead of
refusing another size; ``caffe.draw`` writes DOT text itself and needs Graphviz only to
render images.
"""
from . import io
from .classifier import Classifier
from .detector import Detector
from .net_spec import NetSpec, layers, params, to_proto
from .proto import caffe_pb2
from .pycaffe import (TEST, TRAIN, AdaDeltaSolver, AdaGradSolver, AdamSolver, Layer, Net, NesterovSolver,
                      RMSPropSolver, SGDSolver, Timer, get_solver, has_nccl, init_log, layer_type_list,
                      set_device, set_mode_cpu, set_mode_gpu, set_multiprocess, set_random_seed,
                      set_solver_count, set_solver_rank, solver_count, solver_rank)
from .pycaffe import log_message as log

__version__ = "1.0.0"  # the pycaffe API level this module follows

__all__ = ["TEST", "TRAIN", "AdaDeltaSolver", "AdaGradSolver", "AdamSolver", "Classifier", "Detector",
           "Layer", "Net", "NesterovSolver", "NetSpec", "RMSPropSolver", "SGDSolver", "Timer", "caffe_pb2",
           "get_solver", "has_nccl", "init_log", "io", "layer_type_list", "layers", "log", "params",
           "set_device", "set_mode_cpu", "set_mode_gpu", "set_multiprocess", "set_random_seed",
           "set_solver_count", "set_solver_rank", "solver_count", "solver_rank", "to_proto"]
