"""Python: a layer written by the user in Python, with pycaffe's interface.

``python_param { module: "my_layers" layer: "MyLayer" param_str: "..." }`` imports
``module`` and instantiates its class ``layer``. The module is looked up on ``sys.path``
plus the current working directory (added for this purpose, since dlsoft is usually
started from a console script whose ``sys.path`` lacks it). The prototxt's own folder is
not known to a layer: put the module next to where you run dlsoft, or on PYTHONPATH.
A net with a Python layer runs that code: ``$DLSOFT_NO_CWD_MODULES=1`` (the CLI's
``--no-cwd-modules``) keeps the working directory out of the lookup.

The user's class follows pycaffe's ``caffe.Layer``: it may subclass
:class:`PythonLayerBase` (or nothing at all) and defines

- ``setup(self, bottom, top)``: read ``self.param_str``, check the bottoms, create
  learnable blobs with ``self.blobs.add_blob(*shape)``;
- ``reshape(self, bottom, top)``: ``top[0].reshape(*shape)``;
- ``forward(self, bottom, top)``: read ``bottom[i].data``, write ``top[i].data[...]``;
- ``backward(self, top, propagate_down, bottom)``: write ``bottom[i].diff[...]`` and
  accumulate into ``self.blobs[j].diff``.

Bottoms and tops are dlsoft Blobs (``data``, ``diff``, ``shape``, ``count``,
``reshape``, ``num``). ``self.phase`` is ``"TRAIN"`` or ``"TEST"``; for classes deriving
from ``caffe.Layer`` (``dlsoft.caffe.Layer``, which sets ``phase_as_integer``) it is the
integer pycaffe gives, 0 or 1, so ``self.phase == caffe.TRAIN`` holds as in Caffe. On a
GPU device the arrays are cupy arrays: user code written with ``bottom[0].xp`` (or
with numpy functions cupy also accepts) runs on either device.
"""
from __future__ import annotations

import importlib
import os
import re
import sys

from ..backend import CPU
from ..blob import Blob
from .base import TRAIN, Layer
from .registry import register

_PHASE_NUMBERS = {"TRAIN": 0, "TEST": 1}  # caffe.proto's Phase values, as pycaffe gives them


class BlobList(list):
    """The user layer's learnable blobs; ``add_blob(*shape)`` appends a new zeroed blob
    (pycaffe's ``self.blobs.add_blob``)."""

    def __init__(self, device, name):
        super().__init__()
        self._device = device
        self._name = name

    def add_blob(self, *shape) -> Blob:
        blob = Blob(shape, self._device, name=f"{self._name}.{len(self)}")
        self.append(blob)
        return blob


class PythonLayerBase:
    """Optional base class for user layers (the counterpart of pycaffe's ``caffe.Layer``)."""

    param_str: str = ""
    phase: str = "TRAIN"
    blobs: BlobList
    #: True: ``self.phase`` is pycaffe's integer (TRAIN 0, TEST 1) rather than the name.
    phase_as_integer: bool = False

    def setup(self, bottom, top):
        """Read ``self.param_str`` and check the bottoms."""

    def reshape(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__}.reshape")

    def forward(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, top, propagate_down, bottom):
        """Default: no gradient."""


#: Set (to anything but "" or "0") to stop Python layers importing modules from the
#: working directory; the CLI's ``--no-cwd-modules`` sets it.
NO_CWD_ENV = "DLSOFT_NO_CWD_MODULES"
_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def cwd_modules_allowed() -> bool:
    return os.environ.get(NO_CWD_ENV, "") in ("", "0")


def _import_user_class(layer: Layer, module_name: str, class_name: str):
    where = f"module '{module_name}', class '{class_name}'"
    if not _MODULE_RE.fullmatch(module_name):
        raise layer.error(f"python_param {where}: module must be a dotted Python module name "
                          "(like my_layers or pkg.layers), not a path or a relative import")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", class_name):
        raise layer.error(f"python_param {where}: layer must be a Python class name")
    cwd = os.getcwd()
    if cwd_modules_allowed():
        if cwd not in sys.path and "" not in sys.path:
            sys.path.append(cwd)
    elif cwd in sys.path or "" in sys.path:
        sys.path[:] = [p for p in sys.path if p not in ("", cwd)]  # pycaffe-style lookup switched off
        cwd = f"(not {cwd}: {NO_CWD_ENV} is set)"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise layer.error(f"python_param {where}: module not found on sys.path or in {cwd}") from None
        raise layer.error(f"python_param {where}: importing the module failed: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise layer.error(f"python_param {where}: the module ({module.__file__}) has no class '{class_name}'")
    return cls


@register
class PythonLayer(Layer):
    """Delegates setup/reshape/forward/backward to an instance of the user's class."""

    type = "Python"

    def __init__(self, param, phase=TRAIN, device=CPU):
        super().__init__(param, phase=phase, device=device)
        p = param.python_param
        if not p.module or not p.layer:
            raise self.error("python_param needs both 'module' and 'layer'")
        cls = _import_user_class(self, p.module, p.layer)
        self.user = cls.__new__(cls)
        self.user.param_str = p.param_str
        self.user.phase = _PHASE_NUMBERS[phase] if getattr(cls, "phase_as_integer", False) else phase
        self.blobs = BlobList(self.device, self.name)
        self.user.blobs = self.blobs
        if cls.__init__ is not object.__init__:
            self.user.__init__(param)  # pycaffe constructs user layers with their LayerParameter

    def __getattr__(self, name: str):
        # pycaffe's net.layers[i] is the user's object itself: its attributes show through here.
        user = self.__dict__.get("user")
        if user is None:
            raise AttributeError(name)
        return getattr(user, name)

    def setup(self, bottoms, tops):
        self.user.setup(list(bottoms), list(tops))
        self.param_propagate_down = [True] * len(self.blobs)

    def reshape(self, bottoms, tops):
        self.user.reshape(list(bottoms), list(tops))

    def forward_cpu(self, bottoms, tops):
        self.user.forward(list(bottoms), list(tops))

    def backward_cpu(self, tops, propagate_down, bottoms):
        self.user.backward(list(tops), list(propagate_down), list(bottoms))
