"""pycaffe's ``Net``, solvers, ``Layer`` and module functions, over dlsoft's own.

``caffe.Net`` is a :class:`dlsoft.Net` that also takes pycaffe's argument forms and has
the attributes pycaffe scripts reach for, private ones included (``_layer_names``,
``_blobs``, ``_forward``, ...). The solvers are :class:`dlsoft.solver.Solver` built with
that Net class, so ``solver.net`` and ``solver.test_nets`` have the same interface.

Device and logging state is process-wide, as in Caffe: ``set_mode_gpu()`` makes the
nets and solvers built afterwards live on GPU ``set_device(i)``.
"""
from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections import OrderedDict
from itertools import zip_longest

import numpy as np

from .. import random as dl_random
from ..backend import gpu_count, parse_device
from ..errors import DataError, DeviceError, NetDefinitionError
from ..layers.python_layer import PythonLayerBase
from ..layers.registry import registered_types
from ..netdef import graph, weights
from ..netdef.net import Net as _DlsoftNet
from ..protos import caffe_pb2
from ..solver.solver import Solver as _DlsoftSolver

TRAIN: int = caffe_pb2.TRAIN  # 0, as pycaffe's caffe.TRAIN
TEST: int = caffe_pb2.TEST  # 1

log = logging.getLogger("dlsoft.caffe")

_state = {"mode": "cpu", "device_id": 0, "solver_count": 1, "solver_rank": 0, "multiprocess": False}


# ============================================================================ mode and device
def set_mode_cpu() -> None:
    """Build the following nets and solvers on the CPU (numpy)."""
    _state["mode"] = "cpu"


def set_mode_gpu() -> None:
    """Build the following nets and solvers on GPU ``set_device(i)`` (cupy).

    Raises :class:`DeviceError` here, not later, when there is no such GPU.
    """
    device = f"gpu:{_state['device_id']}"
    try:
        parse_device(device)
    except DeviceError as exc:
        raise DeviceError(f"caffe.set_mode_gpu(): {exc.detail}; stay on caffe.set_mode_cpu()") from None
    _state["mode"] = "gpu"


def set_device(device_id: int) -> None:
    """Choose the GPU that ``set_mode_gpu`` uses (checked there, and here if GPU mode is on)."""
    device_id = int(device_id)
    if device_id < 0:
        raise DeviceError(f"caffe.set_device({device_id}): device ids start at 0")
    if _state["mode"] == "gpu" and device_id >= gpu_count():
        raise DeviceError(f"caffe.set_device({device_id}): only {gpu_count()} GPU(s) are present")
    _state["device_id"] = device_id


def current_device() -> str:
    """``"cpu"`` or ``"gpu:N"``: where nets built now go."""
    return "cpu" if _state["mode"] == "cpu" else f"gpu:{_state['device_id']}"


def set_random_seed(seed: int) -> None:
    """Seed dlsoft's random source (fillers, dropout, shuffling), as Caffe's ``set_random_seed``."""
    dl_random.set_seed(int(seed))


def layer_type_list() -> list[str]:
    """Every layer type this build knows (Caffe's ``LayerRegistry::LayerTypeList``)."""
    return registered_types()


def has_nccl() -> bool:
    """Whether NCCL (multi-GPU gradient exchange) is available."""
    try:
        from ..distributed import has_nccl as _has_nccl  # noqa: PLC0415 - written by the multi-GPU work
    except ImportError:
        _has_nccl = None
    if _has_nccl is not None:
        return bool(_has_nccl())
    if gpu_count() == 0:
        return False
    with warnings.catch_warnings():  # cupy warns when libnccl is missing: that is the answer, not news
        warnings.simplefilter("ignore")
        try:
            from cupy.cuda import nccl  # noqa: PLC0415
        except Exception:  # noqa: BLE001 - cupy built without NCCL
            return False
    return bool(getattr(nccl, "available", True))


def solver_count() -> int:
    return _state["solver_count"]


def set_solver_count(count: int) -> None:
    _state["solver_count"] = int(count)


def solver_rank() -> int:
    return _state["solver_rank"]


def set_solver_rank(rank: int) -> None:
    _state["solver_rank"] = int(rank)


def set_multiprocess(multiprocess: bool) -> None:
    _state["multiprocess"] = bool(multiprocess)


# ============================================================================ logging
_GLOG_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.CRITICAL}
_log_handler: logging.Handler | None = None


def init_log(level: int = 0, use_stderr: bool = True) -> None:
    """Print dlsoft's log lines from glog level ``level`` up (0 INFO .. 3 FATAL), in Caffe's format.

    pycaffe's ``init_log()`` starts glog; here a stderr handler on the ``dlsoft`` logger.
    """
    from ..solver.progress import CaffeLogFormatter  # noqa: PLC0415

    global _log_handler
    logger = logging.getLogger("dlsoft")
    if _log_handler is not None:
        logger.removeHandler(_log_handler)
    _log_handler = logging.StreamHandler() if use_stderr else logging.StreamHandler(sys.stdout)
    _log_handler.setFormatter(CaffeLogFormatter())
    logger.addHandler(_log_handler)
    logger.setLevel(_GLOG_LEVELS.get(int(level), logging.INFO))


def log_message(message: str) -> None:
    """pycaffe's ``caffe.log(msg)``: one INFO line."""
    log.info("%s", message)


# ============================================================================ Layer
class Layer(PythonLayerBase):
    """Base class of Python layers, as pycaffe's ``caffe.Layer``.

    Subclass it and define ``setup``, ``reshape``, ``forward`` and ``backward``; the net
    sets ``self.param_str``, ``self.phase`` (``caffe.TRAIN`` 0 or ``caffe.TEST`` 1) and
    ``self.blobs`` (``self.blobs.add_blob(*shape)``) before ``setup``.
    """

    phase_as_integer = True
    phase: int = TRAIN

    @property
    def type(self) -> str:
        return "Python"


# ============================================================================ Net
def _phase_number(phase) -> int:
    return graph.parse_phase(phase)


class Net(_DlsoftNet):
    """pycaffe's ``caffe.Net``.

    ``Net(network_file, phase, level=0, stages=None, weights=None)`` or the legacy
    ``Net(network_file, pretrained_file, phase)``; ``phase`` is ``caffe.TRAIN``/``caffe.TEST``
    (or their names). dlsoft's keyword form (``phase="TEST", device="gpu:0"``) and its other
    options (``shard=``) work too.
    The device is the one ``set_mode_*``/``set_device`` chose unless ``device`` is given.
    """

    def __init__(self, network_file, *args, phase=None, level=None, stages=None, weights=None, device=None,
                 **options):
        args = list(args)
        if len(args) >= 2 and isinstance(args[0], (str, os.PathLike)) and not _is_phase_name(args[0]):
            weights = args.pop(0)  # legacy Net(model, weights, phase)
            log.warning("Net(model, weights, phase) is deprecated in pycaffe: "
                        "use Net(model, phase, weights=weights)")
        names = ["phase", "level", "stages", "weights"]
        if len(args) > len(names):
            raise TypeError(f"caffe.Net takes at most {len(names) + 1} positional arguments")
        given = dict(phase=phase, level=level, stages=stages, weights=weights)
        for name, value in zip(names, args):
            if given[name] is not None:
                raise TypeError(f"caffe.Net got multiple values for {name!r}")
            given[name] = value
        if given["phase"] is None:
            raise TypeError("caffe.Net needs a phase: caffe.Net(network_file, caffe.TRAIN or caffe.TEST)")
        phase_name = "TRAIN" if _phase_number(given["phase"]) == TRAIN else "TEST"
        weights = given["weights"]
        if weights is not None and not os.path.isfile(str(weights)):
            raise DataError("weights file not found", path=str(weights))  # Caffe's CheckFile
        super().__init__(network_file, phase=phase_name, weights=weights,
                         stages=tuple(given["stages"] or ()), level=given["level"],
                         device=device if device is not None else current_device(), **options)
        # pycaffe's blob_loss_weights covers every blob (0 for those that are no loss).
        self.blob_loss_weights = OrderedDict((name, self.blob_loss_weights.get(name, 0.0)) for name in self.blobs)

    # ------------------------------------------------------------------ pycaffe's private view
    @property
    def _layer_names(self) -> list[str]:
        return self.layer_names

    @property
    def _blob_names(self) -> list[str]:
        return list(self.blobs)

    @property
    def _blobs(self) -> list:
        return list(self.blobs.values())

    @property
    def _blob_loss_weights(self) -> list[float]:
        return list(self.blob_loss_weights.values())

    @property
    def _inputs(self) -> list[int]:
        names = list(self.blobs)
        return [names.index(name) for name in self.inputs]

    @property
    def _outputs(self) -> list[int]:
        names = list(self.blobs)
        return [names.index(name) for name in self.outputs]

    def _bottom_ids(self, i: int) -> list[int]:
        names = list(self.blobs)
        return [names.index(name) for name in self.bottom_names[self.layer_names[i]]]

    def _top_ids(self, i: int) -> list[int]:
        names = list(self.blobs)
        return [names.index(name) for name in self.top_names[self.layer_names[i]]]

    def _forward(self, start: int, end: int) -> float:
        """Caffe's ``ForwardFromTo``: layers ``start..end`` (indices, inclusive); returns the loss."""
        self.loss = self.forward_prefilled(start, end)
        return self.loss

    def _backward(self, start: int, end: int) -> None:
        """Caffe's ``BackwardFromTo``: layers ``start`` down to ``end`` (indices, inclusive)."""
        self.backward_from_to(start, end)

    # ------------------------------------------------------------------ pycaffe's methods
    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """Set inputs from ``kwargs``, run layers ``start..end`` (names), return the outputs.

        The values are the blobs' own arrays, not copies (as pycaffe): copy what you keep.
        With ``end``, the outputs are that layer's tops; ``blobs`` adds more.
        """
        return super().forward(list(blobs or ()), start=start, end=end, **kwargs)

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """Set output diffs from ``kwargs`` (else the losses'), run backward, return input diffs.

        With ``end`` (a layer name), the diffs of that layer's bottoms are returned.
        """
        diffs = list(diffs or ())
        super().backward(diffs, start=start, end=end, **kwargs)
        names = (self.bottom_names[end] if end is not None else list(self.inputs)) + diffs
        return OrderedDict((name, self.blobs[name].diff) for name in names)

    def forward_all(self, blobs=None, **kwargs):
        """Forward ``kwargs`` (whole arrays) batch by batch; returns the stacked outputs."""
        outs = {name: [] for name in dict.fromkeys(list(self.outputs) + list(blobs or ()))}
        for batch in self._batch(kwargs):
            for name, array in self.forward(blobs=blobs, **batch).items():
                outs[name].extend(np.array(array, copy=True))
        return self._unpad(outs, kwargs)

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """Forward inputs and backward output diffs of ``kwargs`` batch by batch."""
        outs = {name: [] for name in dict.fromkeys(list(self.outputs) + list(blobs or ()))}
        grads = {name: [] for name in dict.fromkeys(list(self.inputs) + list(diffs or ()))}
        forward_batches = self._batch({k: v for k, v in kwargs.items() if k in self.inputs})
        backward_batches = self._batch({k: v for k, v in kwargs.items() if k in self.outputs})
        for fb, bb in zip_longest(forward_batches, backward_batches, fillvalue={}):
            for name, array in self.forward(blobs=blobs, **fb).items():
                outs[name].extend(np.array(array, copy=True))
            for name, array in self.backward(diffs=diffs, **bb).items():
                grads[name].extend(np.array(array, copy=True))
        return self._unpad(outs, kwargs), self._unpad(grads, kwargs)

    def _batch(self, arrays):
        """Split ``arrays`` (name -> N x ...) into the net's batch size, zero-padding the last."""
        if not arrays:
            return
        num = len(next(iter(arrays.values())))
        batch_size = next(iter(self.blobs.values())).shape[0]
        for i in range(0, num - num % batch_size, batch_size):
            yield {name: np.asarray(a[i:i + batch_size]) for name, a in arrays.items()}
        remainder = num % batch_size
        if remainder:
            padded = {}
            for name, a in arrays.items():
                a = np.asarray(a)
                padding = np.zeros((batch_size - remainder,) + a.shape[1:], dtype=np.float32)
                padded[name] = np.concatenate([a[num - remainder:], padding])
            yield padded

    @staticmethod
    def _unpad(collected, kwargs):
        result = {name: np.asarray(values) for name, values in collected.items()}
        if kwargs and result:
            pad = len(next(iter(result.values()))) - len(next(iter(kwargs.values())))
            if pad > 0:
                result = {name: array[:-pad] for name, array in result.items()}
        return result

    def set_input_arrays(self, data, labels) -> None:
        """Feed the first layer, a MemoryData layer, from ``data`` (N x C x H x W) and ``labels``."""
        labels = np.asarray(labels)
        if labels.ndim == 1:
            labels = np.ascontiguousarray(labels[:, np.newaxis, np.newaxis, np.newaxis])
        self._set_input_arrays(data, labels)

    def _set_input_arrays(self, data, labels) -> None:
        if not self.layers or self.layers[0].type != "MemoryData":
            raise NetDefinitionError("set_input_arrays may only be called if the first layer is a "
                                     "MemoryData layer", path=self.source)
        for what, array in (("data", data), ("labels", labels)):
            if not isinstance(array, np.ndarray) or array.dtype != np.float32 \
                    or not array.flags.c_contiguous or array.ndim != 4:
                raise DataError(f"set_input_arrays: the {what} array must be a C-contiguous 4-d "
                                "float32 numpy array (np.ascontiguousarray(x, dtype=np.float32))")
        self.layers[0].set_input_arrays(data, labels.reshape(-1))

    def share_with(self, other: _DlsoftNet) -> None:
        """Use ``other``'s parameter storage for same-named layers (Caffe's ShareTrainedLayersWith)."""
        self.share_trained_layers_with(other)

    def load_hdf5(self, filename) -> None:
        """Load weights from Caffe's HDF5 layout (``data/<layer>/<i>``)."""
        self.load_layers(str(filename), weights.layers_of_hdf5(str(filename)))


def _is_phase_name(value) -> bool:
    return isinstance(value, str) and value.upper() in graph.PHASES


# ============================================================================ solvers
class _PycaffeSolver(_DlsoftSolver):
    """A dlsoft solver whose nets are :class:`Net`, built on the current ``set_mode_*`` device.

    As pycaffe, it writes no metrics file and shows no progress bar (logging only). The
    subclasses set ``solver_type``: ``AdamSolver(file)`` is Adam whatever the file says.
    """

    net_class = Net

    def __init__(self, filename, **options):
        options.setdefault("device", current_device())
        options.setdefault("metrics", False)
        options.setdefault("progress_bar", False)
        super().__init__(filename, **options)

    def solve(self, resume_file=None) -> None:
        super().solve(resume_file)

    def add_callback(self, on_start, on_gradients_ready=None) -> None:
        """pycaffe's ``add_callback(on_start, on_gradients_ready)``: ``on_start()`` begins each
        iteration, ``on_gradients_ready()`` follows its forward/backward passes, before the update.

        A single object with dlsoft's callback methods (``on_gradients_ready(solver, loss)``)
        is added as it is.
        """
        if on_gradients_ready is None and hasattr(on_start, "on_gradients_ready"):
            super().add_callback(on_start)
        else:
            super().add_callback(_Callback(on_start, on_gradients_ready))

    def share_weights(self, net: _DlsoftNet) -> None:
        """Make ``net`` use this solver's train-net parameters for same-named layers."""
        net.share_trained_layers_with(self.net)


class _Callback:
    """Two pycaffe callables in dlsoft's callback protocol (:mod:`dlsoft.solver.solver`)."""

    def __init__(self, on_start, on_gradients_ready):
        self._on_start, self._on_gradients_ready = on_start, on_gradients_ready

    def on_start(self, solver) -> None:
        pass  # dlsoft's on_start begins a step() call; pycaffe's each iteration (below)

    def on_iteration_start(self, solver) -> None:
        self._on_start()

    def on_gradients_ready(self, solver, loss: float) -> float:
        if self._on_gradients_ready is not None:
            self._on_gradients_ready()
        return loss


class SGDSolver(_PycaffeSolver):
    """Stochastic gradient descent with momentum, whatever the file's ``type`` says."""

    solver_type = "SGD"


class NesterovSolver(_PycaffeSolver):
    solver_type = "Nesterov"


class AdaGradSolver(_PycaffeSolver):
    solver_type = "AdaGrad"


class RMSPropSolver(_PycaffeSolver):
    solver_type = "RMSProp"


class AdaDeltaSolver(_PycaffeSolver):
    solver_type = "AdaDelta"


class AdamSolver(_PycaffeSolver):
    solver_type = "Adam"


def get_solver(filename) -> _PycaffeSolver:
    """A solver of the ``type`` the solver file names (pycaffe's ``get_solver``)."""
    return _PycaffeSolver(filename)


class Timer:
    """pycaffe's ``Timer``: ``start()``, ``stop()``, ``ms``."""

    def __init__(self):
        self._start = self._stop = None

    def start(self) -> None:
        self._start, self._stop = time.perf_counter(), None

    def stop(self) -> None:
        self._stop = time.perf_counter()

    @property
    def ms(self) -> float:
        if self._start is None:
            return 0.0
        end = self._stop if self._stop is not None else time.perf_counter()
        return (end - self._start) * 1000.0
