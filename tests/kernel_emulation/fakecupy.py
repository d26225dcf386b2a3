"""A stand-in for cupy that runs on numpy but exposes only what the installed cupy 14 exposes.

``installed()`` puts it in ``sys.modules["cupy"]`` (and ``cupyx``) for the duration of a
``with`` block, so ``Device("gpu")`` blobs hold :class:`ndarray` objects and every layer's
``forward_gpu``/``backward_gpu`` runs as on a device:

- names come from the real package: ``dir(cupy)``, ``dir(cupy.ndarray)``, ``dir(cupyx)``,
  ``dir(cupy.random)`` and so on. Anything else raises :class:`CupyAPIError` naming the call.
- calls are checked against cupy's own signatures (from ``inspect`` or the first line of
  cupy's docstrings): ``cupy.amax(..., initial=...)`` fails as it would on a device.
- :class:`ndarray` is not a numpy array: ``isinstance(x, np.ndarray)`` is False, implicit
  conversion (``np.asarray(x)``) raises as cupy's does, numpy arrays passed where cupy
  needs device arrays fail, object/string arrays cannot exist, reductions return 0-d
  arrays. numpy functions called on it dispatch to the cupy name (``__array_function__``,
  ``__array_ufunc__``), as cupy's do.
- ``RawKernel``/``RawModule`` sources run through :class:`kernel_emulation.EmulatedKernel`
  (C++ on the CPU, launch arguments checked), ``ElementwiseKernel`` bodies through
  :class:`kernel_emulation.EmulatedElementwise`; every launch is recorded in ``LAUNCHES``.
- device-to-host transfers (``.get()``, ``asnumpy``, ``float()``, ``int()``, ``bool()``,
  ``.item()``, ``.tolist()``, printing) are counted in ``TRANSFERS``.
"""
from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import sys
import traceback
import types
from collections import Counter

import numpy as np

import cupy as _real_cupy  # imports without a GPU: the source of every name list below
import cupyx as _real_cupyx

_REAL_GENERATOR = _real_cupy.random.Generator  # lazily imported by cupy: resolve it while cupy is cupy

from . import EmulatedElementwise, EmulatedKernel


class CupyAPIError(AttributeError):
    """A call the real cupy would refuse (or does not have)."""


#: (kernel name, grid, block) of every RawKernel launch and ElementwiseKernel call, in order.
LAUNCHES: list[tuple] = []


class _Transfers:
    """Device-to-host transfers, each with the dlsoft line that asked for it."""

    def __init__(self):
        self.events: list[tuple[str, str]] = []

    def record(self, kind: str) -> None:
        frames = [f for f in traceback.extract_stack()[:-2] if "/dlsoft/" in f.filename and "/tests/" not in f.filename]
        where = f"{frames[-1].filename.split('/dlsoft/', 1)[1]}:{frames[-1].lineno}" if frames else "test code"
        self.events.append((kind, where))

    def reset(self) -> None:
        self.events.clear()

    @property
    def count(self) -> int:
        return len(self.events)

    def summary(self) -> str:
        return ", ".join(f"{kind} at {where} x{n}" for (kind, where), n in Counter(self.events).items())


TRANSFERS = _Transfers()

# ---- signatures ------------------------------------------------------------------------------


@functools.cache
def _signature_from_doc(doc: str | None) -> inspect.Signature | None:
    """cupy's Cython methods and ufuncs carry their signature on the docstring's first line."""
    if not doc:
        return None
    line = doc.strip().splitlines()[0].replace("\\*", "*")
    start, end = line.find("("), line.rfind(")")
    if start < 0 or end < start:
        return None
    params = line[start + 1:end]
    try:
        tree = ast.parse(f"def f({params}): pass")
    except SyntaxError:
        params = __import__("re").sub(r"=<[^>]*>", "=None", params)
        try:
            tree = ast.parse(f"def f({params}): pass")
        except SyntaxError:
            return None
    arguments = tree.body[0].args
    arguments.defaults = [ast.Constant(None) for _ in arguments.defaults]
    arguments.kw_defaults = [None if d is None else ast.Constant(None) for d in arguments.kw_defaults]
    ast.fix_missing_locations(tree)
    namespace: dict = {}
    exec(compile(tree, "<cupy signature>", "exec"), namespace)  # noqa: S102 - a def with None defaults
    return inspect.signature(namespace["f"])


def _signature(obj) -> inspect.Signature | None:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return _signature_from_doc(getattr(obj, "__doc__", None))


def _check_call(qualname: str, signature, args, kwargs) -> None:
    if signature is None:
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise CupyAPIError(f"{qualname}{signature}: {exc}") from None


# ---- wrapping and unwrapping -------------------------------------------------------------------

_BAD_KINDS = {"O": "object", "U": "string", "S": "bytes", "V": "structured", "M": "datetime", "m": "timedelta"}


def _wrap(value):
    if isinstance(value, np.ndarray):
        if value.dtype.kind in _BAD_KINDS:
            raise CupyAPIError(f"cupy has no {_BAD_KINDS[value.dtype.kind]} arrays (dtype {value.dtype})")
        return ndarray(value)
    if isinstance(value, np.generic) and not isinstance(value, np.dtype):
        return ndarray(np.asarray(value))  # cupy's reductions give 0-d device arrays, not scalars
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _unwrap(value, where: str, host_ok: bool = False):
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, np.ndarray) and not host_ok:
        raise CupyAPIError(f"{where}: got a numpy array {value.shape} where cupy needs a device array "
                           "(cupy: 'Unsupported type <class numpy.ndarray>'; use xp.asarray)")
    if isinstance(value, (tuple, list)):
        return type(value)(_unwrap(v, where, host_ok) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v, where, host_ok) for k, v in value.items()}
    return value


#: Functions whose output size depends on the data: cupy synchronises to learn it.
_SIZE_FROM_DATA = {"nonzero", "argwhere", "flatnonzero", "unique", "compress", "extract"}


class _Function:
    """A cupy function: cupy's signature, numpy's implementation, device arrays in and out."""

    def __init__(self, qualname: str, numpy_function, cupy_function, host_ok: bool = False):
        self.qualname, self._numpy, self._host_ok = qualname, numpy_function, host_ok
        self._signature = _signature(cupy_function)
        self.__name__ = qualname.rsplit(".", 1)[-1]

    def __call__(self, *args, **kwargs):
        _check_call(self.qualname, self._signature, args, kwargs)
        if self.__name__ in _SIZE_FROM_DATA:
            TRANSFERS.record(f"{self.qualname}()")  # the output's size is read back from the device
        return _wrap(self._numpy(*_unwrap(args, self.qualname, self._host_ok),
                                 **_unwrap(kwargs, self.qualname, self._host_ok)))

    def __repr__(self):
        return f"<fake {self.qualname}>"


class _Ufunc(_Function):
    """A cupy ufunc, with the methods the real one has (cupy 14: ``at``, ``reduce``, ``outer``...)."""

    def __init__(self, name: str):
        real = getattr(_real_cupy, name)
        super().__init__(f"cupy.{name}", getattr(np, name), real)
        self._real = real
        self.nin, self.nout, self.nargs = real.nin, real.nout, real.nargs

    def __getattr__(self, attribute):
        if attribute.startswith("_") or not hasattr(self._real, attribute):
            raise CupyAPIError(f"{self.qualname}.{attribute}: cupy's ufunc has no such method")
        method = getattr(self._real, attribute)
        if not callable(method):
            return method
        return _Function(f"{self.qualname}.{attribute}", getattr(self._numpy, attribute), method)


# ---- the array -------------------------------------------------------------------------------

_NDARRAY_NAMES = frozenset(dir(_real_cupy.ndarray))
#: Methods that return host data (and so wait for the device).
_HOST_RESULT = {"item", "tolist", "tobytes", "tofile", "dump", "dumps"}


class ndarray:
    """A device array held as a numpy array; only cupy.ndarray's attributes are reachable."""

    __slots__ = ("_a",)
    __array_priority__ = 100

    def __init__(self, array: np.ndarray):
        object.__setattr__(self, "_a", array)

    def __getattr__(self, name):
        if name not in _NDARRAY_NAMES or name.startswith("_"):
            raise CupyAPIError(f"cupy.ndarray has no attribute {name!r}")
        if name == "get":
            return self._get
        if name == "set":
            return self._set
        if name == "device":
            return _Device(0)
        if name == "flags":
            flags = self._a.flags
            return types.SimpleNamespace(c_contiguous=flags.c_contiguous, f_contiguous=flags.f_contiguous,
                                         owndata=flags.owndata)
        if name in ("data", "cstruct", "mdspan", "reduced_view", "toDlpack", "scatter_max", "scatter_min"):
            raise CupyAPIError(f"cupy.ndarray.{name} is not emulated (it means device memory)")
        if name == "scatter_add":
            return lambda slices, value: np.add.at(self._a, _unwrap(slices, "scatter_add", True),
                                                   _unwrap(value, "scatter_add"))
        value = getattr(self._a, name)
        if not callable(value):
            return _wrap(value) if isinstance(value, np.ndarray) else value
        signature = _signature(getattr(_real_cupy.ndarray, name))

        def method(*args, **kwargs):
            _check_call(f"cupy.ndarray.{name}", signature, (self, *args), kwargs)
            if name in _HOST_RESULT or name in _SIZE_FROM_DATA:
                TRANSFERS.record(f".{name}()")
            result = value(*_unwrap(args, f"cupy.ndarray.{name}"), **_unwrap(kwargs, f"cupy.ndarray.{name}"))
            if result is self._a:
                return self
            return result if name in _HOST_RESULT else _wrap(result)
        return method

    def __setattr__(self, name, value):
        if name in ("shape", "strides"):
            raise CupyAPIError(f"cupy.ndarray.{name} cannot be assigned (use reshape)")
        raise CupyAPIError(f"cupy.ndarray has no settable attribute {name!r}")

    def _get(self, stream=None, order="C", out=None, blocking=True):
        TRANSFERS.record(".get()")
        if out is not None:
            out[...] = self._a
            return out
        return np.array(self._a, order=order)

    def _set(self, array, stream=None):
        if not isinstance(array, np.ndarray) or array.shape != self._a.shape:
            raise CupyAPIError("cupy.ndarray.set needs a numpy array of the same shape")
        self._a[...] = array

    # conversions: each one waits for the device and copies to the host
    def __float__(self):
        TRANSFERS.record("float()")
        return float(self._a)

    def __int__(self):
        TRANSFERS.record("int()")
        return int(self._a)

    def __bool__(self):
        TRANSFERS.record("bool()")
        return bool(self._a)

    def __complex__(self):
        TRANSFERS.record("complex()")
        return complex(self._a)

    def __repr__(self):
        TRANSFERS.record("repr()")
        return repr(self._a).replace("array", "fake-cupy-array", 1)

    def __str__(self):
        TRANSFERS.record("str()")
        return str(self._a)

    def __format__(self, spec):
        TRANSFERS.record("format()")
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct "
                        "a NumPy array explicitly.")

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self._a)))

    def __getitem__(self, key):
        if any(isinstance(k, ndarray) and k._a.dtype == np.bool_ for k in (key if isinstance(key, tuple) else (key,))):
            TRANSFERS.record("boolean-mask index")  # cupy reads the mask's count back to size the result
        key = _unwrap(key, "cupy.ndarray.__getitem__", host_ok=True)
        result = self._a[key]
        if not isinstance(result, np.ndarray):  # cupy gives a 0-d view, numpy a scalar
            result = self._a[(key if isinstance(key, tuple) else (key,)) + (Ellipsis,)]
        return _wrap(result)

    def __setitem__(self, key, value):
        self._a[_unwrap(key, "cupy.ndarray.__setitem__", True)] = _unwrap(value, "cupy.ndarray.__setitem__", True)

    def __array_ufunc__(self, ufunc, method, *args, **kwargs):
        fake = getattr(_MODULE, ufunc.__name__)
        return fake(*args, **kwargs) if method == "__call__" else getattr(fake, method)(*args, **kwargs)

    def __array_function__(self, func, types_, args, kwargs):
        path = func.__module__.split(".")[1:] + [func.__name__]
        target = _MODULE
        for part in path:
            target = getattr(target, part)  # raises CupyAPIError for names cupy lacks
        return target(*args, **kwargs)

    def __copy__(self):
        return ndarray(self._a.copy())

    def __deepcopy__(self, memo):
        return ndarray(self._a.copy())


def _operator(name):
    def method(self, *args):
        values = _unwrap(args, f"cupy.ndarray.{name}")
        result = getattr(self._a, name)(*values)
        if result is NotImplemented:
            return NotImplemented
        if result is self._a:  # in-place operators
            return self
        return _wrap(result)
    method.__name__ = name
    return method


for _name in ("__abs__", "__add__", "__and__", "__divmod__", "__eq__", "__floordiv__", "__ge__", "__gt__",
              "__iadd__", "__iand__", "__ifloordiv__", "__ilshift__", "__imod__", "__imul__", "__invert__",
              "__ior__", "__ipow__", "__irshift__", "__isub__", "__itruediv__", "__ixor__", "__le__", "__lshift__",
              "__lt__", "__matmul__", "__mod__", "__mul__", "__ne__", "__neg__", "__or__", "__pos__", "__pow__",
              "__radd__", "__rand__", "__rdivmod__", "__rfloordiv__", "__rlshift__", "__rmatmul__", "__rmod__",
              "__rmul__", "__ror__", "__rpow__", "__rrshift__", "__rshift__", "__rsub__", "__rtruediv__",
              "__rxor__", "__sub__", "__truediv__", "__xor__"):
    assert _name in _NDARRAY_NAMES, _name
    setattr(ndarray, _name, _operator(_name))
ndarray.__hash__ = None


# ---- kernels -------------------------------------------------------------------------------------

class RawKernel:
    """``cupy.RawKernel(code, name)``: the source compiled for the CPU; ``kernel(grid, block, args)``."""

    def __init__(self, code, name, options=(), backend="nvrtc", translate_cucomplex=False, *, enable_cooperative_groups=False, jitify=False):
        self.code, self.name = code, name
        self._kernel = EmulatedKernel(code, name)

    def __call__(self, grid, block, args, *, shared_mem=0):
        if not isinstance(args, tuple):
            raise CupyAPIError(f"RawKernel {self.name}: args must be a tuple, got {type(args).__name__}")
        LAUNCHES.append((self.name, tuple(grid), tuple(block)))
        arrays = []
        for index, value in enumerate(args):
            if isinstance(value, np.ndarray):
                raise CupyAPIError(f"RawKernel {self.name}: argument {index} is a numpy array (host memory)")
            arrays.append(value._a if isinstance(value, ndarray) else value)
        self._kernel(grid, block, arrays)

    def compile(self, log_stream=None):
        pass


class RawModule:
    """``cupy.RawModule(code=...)``: ``get_function(name)`` gives a :class:`RawKernel`."""

    def __init__(self, *, code=None, path=None, options=(), backend="nvrtc", translate_cucomplex=False,
                 enable_cooperative_groups=False, name_expressions=None, jitify=False):
        if code is None:
            raise CupyAPIError("RawModule(path=...) (a cubin) is not emulated; pass code=")
        self.code = code

    def get_function(self, name):
        return RawKernel(self.code, name)


class ElementwiseKernel:
    """``cupy.ElementwiseKernel(in_params, out_params, operation, name)`` run by its C body."""

    def __init__(self, in_params, out_params, operation, name="kernel", reduce_dims=True, preamble="",
                 no_return=False, return_tuple=False, loop_prep="", after_loop="", **kwargs):
        self.name = name
        self._kernel = EmulatedElementwise(in_params, out_params, operation, name)
        self.nin, self.nout = len(self._kernel.inputs), len(self._kernel.outputs)

    def __call__(self, *args, size=None, block_size=None, stream=None):
        if len(args) != self.nin + self.nout:
            raise CupyAPIError(f"ElementwiseKernel {self.name}: pass the outputs too ({self.nin} inputs, "
                               f"{self.nout} outputs, got {len(args)} arguments)")
        LAUNCHES.append((self.name, None, None))
        self._kernel(*_unwrap(args, f"ElementwiseKernel {self.name}"))
        outputs = args[self.nin:]
        return outputs[0] if len(outputs) == 1 else outputs


# ---- modules ---------------------------------------------------------------------------------------

class _Device:
    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass

    def __eq__(self, other):
        return isinstance(other, _Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)


class _Namespace(types.ModuleType):
    """A module whose names are exactly ``real``'s; ``special`` maps names to stand-ins."""

    def __init__(self, qualname: str, real, numpy_module, special: dict):
        super().__init__(qualname)
        self._qualname, self._real, self._numpy, self._special = qualname, real, numpy_module, special
        self._names = frozenset(n for n in dir(real) if not n.startswith("_"))

    def __getattr__(self, name):
        if name in self._special:
            return self._special[name]
        if name.startswith("__"):
            raise AttributeError(name)
        if name not in self._names:
            raise CupyAPIError(f"{self._qualname}.{name} does not exist in cupy {_real_cupy.__version__}")
        real = getattr(self._real, name)
        if isinstance(real, type) or not callable(real):
            if isinstance(real, types.ModuleType):
                raise CupyAPIError(f"{self._qualname}.{name} is not emulated")
            return real  # dtypes, constants (newaxis, pi, inf): numpy's own objects in cupy too
        if type(real).__name__ == "ufunc":
            fake = _Ufunc(name)
        elif self._numpy is not None and hasattr(self._numpy, name):
            fake = _Function(f"{self._qualname}.{name}", getattr(self._numpy, name), real,
                             host_ok=name in ("array", "asarray", "asanyarray"))
        else:
            raise CupyAPIError(f"{self._qualname}.{name} is cupy-only and not emulated")
        object.__setattr__(self, name, fake)
        return fake


class _Generator:
    """``cupy.random.default_rng(seed)``: only the methods cupy's Generator has."""

    def __init__(self, seed=None):
        self._rng = np.random.default_rng(seed)

    def __getattr__(self, name):
        if name.startswith("_") or not hasattr(_REAL_GENERATOR, name):
            raise CupyAPIError(f"cupy.random.Generator has no method {name!r}")
        real = getattr(_REAL_GENERATOR, name)
        return _BoundMethod(f"cupy.random.Generator.{name}", getattr(self._rng, name), real)


class _BoundMethod(_Function):
    def __call__(self, *args, **kwargs):
        _check_call(self.qualname, self._signature, (None, *args), kwargs)
        return _wrap(self._numpy(*_unwrap(args, self.qualname), **_unwrap(kwargs, self.qualname)))


def _asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    if isinstance(a, ndarray):
        return a._get(order=order, out=out)
    return np.asarray(a, order=order)


def _get_array_module(*args):
    return _MODULE if any(isinstance(a, ndarray) for a in args) else np


def _scatter_add(a, slices, value):
    np.add.at(_unwrap(a, "cupyx.scatter_add"), _unwrap(slices, "cupyx.scatter_add", True),
              _unwrap(value, "cupyx.scatter_add"))


class _Stream:
    """Streams and events: the emulation is synchronous, so ordering holds by construction."""

    def __init__(self, null=False, non_blocking=False, ptds=False, *, block=False, disable_timing=False,
                 interprocess=False):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def record(self, stream=None):
        pass

    def wait_event(self, event):
        pass

    def synchronize(self):
        pass

    def use(self):
        return self

    @property
    def done(self):
        return True


_runtime = types.SimpleNamespace(getDeviceCount=lambda: 1)
_cuda = _Namespace("cupy.cuda", _real_cupy.cuda, None, {
    "Device": _Device, "runtime": _runtime, "is_available": lambda: True, "get_device_id": lambda: 0,
    "Stream": _Stream, "Event": _Stream, "get_current_stream": lambda: _Stream(),
    "alloc_pinned_memory": lambda size: bytearray(size)})
_lib = _Namespace("cupy.lib", _real_cupy.lib, np.lib, {})
_stride_tricks = _Namespace("cupy.lib.stride_tricks", _real_cupy.lib.stride_tricks, np.lib.stride_tricks, {})
object.__setattr__(_lib, "stride_tricks", _stride_tricks)
_random = _Namespace("cupy.random", _real_cupy.random, np.random, {"default_rng": _Generator})
_linalg = _Namespace("cupy.linalg", _real_cupy.linalg, np.linalg, {})

_MODULE = _Namespace("cupy", _real_cupy, np, {
    "ndarray": ndarray, "RawKernel": RawKernel, "RawModule": RawModule, "ElementwiseKernel": ElementwiseKernel,
    "asnumpy": _asnumpy, "get_array_module": _get_array_module, "cuda": _cuda, "lib": _lib, "random": _random,
    "linalg": _linalg, "__version__": _real_cupy.__version__})
_CUPYX = _Namespace("cupyx", _real_cupyx, None, {"scatter_add": _scatter_add})
cupy = _MODULE


def _clear_kernel_caches() -> None:
    """Forget kernels and modules cached by dlsoft, so fake and real cupy never mix."""
    from dlsoft import backend
    backend.cupy_module.cache_clear()
    for name, module in list(sys.modules.items()):
        if name.startswith("dlsoft.layers") and module is not None:
            for value in vars(module).values():
                if isinstance(value, functools._lru_cache_wrapper):
                    value.cache_clear()


@contextlib.contextmanager
def installed():
    """Within the block ``import cupy`` gives the fake module (and ``cupyx`` its twin)."""
    saved = {name: sys.modules.get(name) for name in ("cupy", "cupyx")}
    sys.modules["cupy"], sys.modules["cupyx"] = _MODULE, _CUPYX
    _clear_kernel_caches()
    try:
        yield _MODULE
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        _clear_kernel_caches()
