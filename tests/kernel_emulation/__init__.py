"""CUDA kernels run on the CPU: compile a RawKernel source as C++ and launch it on numpy arrays.

The source is compiled by the system's ``g++`` under ``cuda_emulation.h`` (``__global__``
and friends defined away, CUDA's math from ``<cmath>``, ``atomicAdd`` a plain add) together
with a generated launcher that loops over the launch's blocks and threads in order,
setting ``blockIdx``/``threadIdx``/``blockDim``/``gridDim`` before each call. A grid-stride
kernel therefore visits every index exactly once with the very grid the GPU launch asks
for. Libraries are cached by source hash in a temporary directory.

:class:`EmulatedKernel` checks the arguments as the GPU would read them: one per kernel
parameter, arrays C-contiguous with the pointee's dtype, scalars numpy scalars of the
parameter's exact type (``np.int32`` for ``int``, ``np.int64`` for ``long long``,
``np.float32`` for ``float``). A mismatch there reads garbage on a device; here it is an
error naming the kernel and the parameter. :class:`EmulatedElementwise` does the same for a
cupy ``ElementwiseKernel``: its one-line C body runs in a generated loop.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HEADER = Path(__file__).with_name("cuda_emulation.h")
CACHE = Path(tempfile.gettempdir()) / f"dlsoft-kernel-emulation-{os.getuid()}"

#: C scalar type -> (ctypes type, the numpy dtype an argument must have).
C_TYPES = {
    "float": (ctypes.c_float, np.float32),
    "double": (ctypes.c_double, np.float64),
    "int": (ctypes.c_int, np.int32),
    "unsigned int": (ctypes.c_uint, np.uint32),
    "long long": (ctypes.c_longlong, np.int64),
    "long long int": (ctypes.c_longlong, np.int64),
    "unsigned long long": (ctypes.c_ulonglong, np.uint64),
    "bool": (ctypes.c_bool, np.bool_),
    "unsigned char": (ctypes.c_ubyte, np.uint8),
    "signed char": (ctypes.c_byte, np.int8),
}
#: cupy ElementwiseKernel type names -> C types.
CUPY_TYPES = {"float32": "float", "float64": "double", "int32": "int", "int64": "long long",
              "uint32": "unsigned int", "uint64": "unsigned long long", "bool": "bool", "uint8": "unsigned char",
              "int8": "signed char"}


class KernelArgumentError(TypeError):
    """A launch passes an argument the kernel would misread on the GPU."""


@dataclass(frozen=True)
class Param:
    """One kernel parameter: ``const float* x`` -> Param("x", "float", pointer=True)."""

    name: str
    ctype: str
    pointer: bool
    text: str


def parse_params(text: str) -> list[Param]:
    params = []
    for raw in filter(None, (p.strip() for p in text.split(","))):
        words = raw.replace("*", " * ").split()
        name = words[-1]
        pointer = "*" in words
        ctype = " ".join(w for w in words[:-1] if w not in ("const", "*", "__restrict__", "__restrict", "volatile"))
        if ctype not in C_TYPES:
            raise ValueError(f"parameter {raw!r}: type {ctype!r} is not known to the emulation")
        params.append(Param(name, ctype, pointer, raw))
    return params


def kernel_params(source: str, name: str) -> list[Param]:
    """The parameters of ``extern "C" __global__ void name(...)`` in ``source``."""
    match = re.search(r'extern\s+"C"\s+__global__\s+void\s+' + re.escape(name) + r"\s*\(([^)]*)\)", source)
    if match is None:
        raise ValueError(f'no extern "C" __global__ kernel {name!r} in the source')
    return parse_params(match.group(1))


def compile_library(code: str) -> ctypes.CDLL:
    """Compile C++ ``code`` (after the emulation header) into a shared library, cached by hash."""
    digest = hashlib.sha256(HEADER.read_bytes() + code.encode()).hexdigest()[:24]
    return _load(digest, code)


@functools.cache
def _load(digest: str, code: str) -> ctypes.CDLL:
    CACHE.mkdir(parents=True, exist_ok=True)
    library = CACHE / f"{digest}.so"
    if not library.exists():
        source = CACHE / f"{digest}.cpp"
        source.write_text(code)
        partial = CACHE / f"{digest}.{os.getpid()}.tmp"
        result = subprocess.run(["g++", "-O2", "-std=c++17", "-shared", "-fPIC", "-w", "-include", str(HEADER),
                                 "-x", "c++", str(source), "-o", str(partial)], capture_output=True, text=True)
        if result.returncode:
            raise AssertionError(f"the kernel does not compile as C++ under the emulation header:\n{result.stderr}")
        os.replace(partial, library)  # atomic: parallel test runs never load a half-written file
    return ctypes.CDLL(str(library))


def _check_scalar(kernel: str, index: int, param: Param, value):
    ctype, dtype = C_TYPES[param.ctype]
    if isinstance(value, np.ndarray) or not isinstance(value, np.generic) or value.dtype != dtype:
        got = type(value).__name__ if not isinstance(value, (np.generic, np.ndarray)) else \
            f"{type(value).__name__} of dtype {value.dtype}"
        raise KernelArgumentError(f"{kernel}: argument {index} ({param.text}) needs a numpy {np.dtype(dtype).name} "
                                  f"scalar, got {got}")
    return ctype(value.item())


def _check_array(kernel: str, index: int, param: Param, value: np.ndarray):
    dtype = C_TYPES[param.ctype][1]
    if not isinstance(value, np.ndarray):
        raise KernelArgumentError(f"{kernel}: argument {index} ({param.text}) needs an array, "
                                  f"got {type(value).__name__}")
    if value.dtype != dtype:
        raise KernelArgumentError(f"{kernel}: argument {index} ({param.text}) needs a {np.dtype(dtype).name} array, "
                                  f"got {value.dtype}")
    if not value.flags.c_contiguous:
        raise KernelArgumentError(f"{kernel}: argument {index} ({param.text}) is not C-contiguous "
                                  f"(shape {value.shape}, strides {value.strides}); the kernel reads it flat")
    if not value.flags.writeable and "const" not in param.text:
        raise KernelArgumentError(f"{kernel}: argument {index} ({param.text}) is a read-only array")
    return ctypes.c_void_p(value.ctypes.data)


def _dims(value) -> tuple[int, int, int]:
    dims = tuple(int(v) for v in (value if isinstance(value, (tuple, list)) else (value,)))
    return (dims + (1, 1, 1))[:3]


class EmulatedKernel:
    """``cupy.RawKernel(source, name)`` compiled for the CPU; call as ``kernel(grid, block, args)``."""

    def __init__(self, source: str, name: str):
        self.name = name
        self.params = kernel_params(source, name)
        signature = ", ".join(p.text for p in self.params)
        names = ", ".join(p.name for p in self.params)
        launcher = (
            f'extern "C" void dlsoft_launch(unsigned __gx, unsigned __gy, unsigned __gz, unsigned __bx, '
            f'unsigned __by, unsigned __bz{", " if signature else ""}{signature}) {{\n'
            "  gridDim = {__gx, __gy, __gz}; blockDim = {__bx, __by, __bz};\n"
            "  for (unsigned __z = 0; __z < __gz; ++__z) for (unsigned __y = 0; __y < __gy; ++__y)\n"
            "  for (unsigned __x = 0; __x < __gx; ++__x) for (unsigned __tz = 0; __tz < __bz; ++__tz)\n"
            "  for (unsigned __ty = 0; __ty < __by; ++__ty) for (unsigned __tx = 0; __tx < __bx; ++__tx) {\n"
            "    blockIdx = {__x, __y, __z}; threadIdx = {__tx, __ty, __tz};\n"
            f"    {name}({names});\n"
            "  }\n}\n")
        self._function = compile_library(source + "\n" + launcher).dlsoft_launch
        self._function.restype = None

    def __call__(self, grid, block, args) -> None:
        args = tuple(args)
        if len(args) != len(self.params):
            raise KernelArgumentError(f"{self.name}: launched with {len(args)} arguments, the kernel takes "
                                      f"{len(self.params)} ({', '.join(p.text for p in self.params)})")
        converted = [_check_array(self.name, i, p, a) if p.pointer else _check_scalar(self.name, i, p, a)
                     for i, (p, a) in enumerate(zip(self.params, args))]
        launch = [ctypes.c_uint(v) for v in (*_dims(grid), *_dims(block))]
        self._function(*launch, *converted)


def elementwise_params(text: str) -> list[tuple[str, str]]:
    """``"float32 x, float32 slope"`` -> ``[("x", "float"), ("slope", "float")]`` (C types)."""
    result = []
    for raw in filter(None, (p.strip() for p in text.split(","))):
        words = raw.split()
        if len(words) != 2 or words[0] not in CUPY_TYPES:
            raise ValueError(f"ElementwiseKernel parameter {raw!r}: only fixed types "
                             f"({', '.join(CUPY_TYPES)}) are emulated")
        result.append((words[1], CUPY_TYPES[words[0]]))
    return result


class EmulatedElementwise:
    """``cupy.ElementwiseKernel(inputs, outputs, body, name)`` with its C body run on the CPU.

    Called with numpy arrays and scalars as cupy's kernel is: inputs broadcast together,
    every output an array of the broadcast shape, fixed-type arrays of exactly their type.
    """

    def __init__(self, inputs: str, outputs: str, body: str, name: str):
        self.name = name
        self.inputs, self.outputs = elementwise_params(inputs), elementwise_params(outputs)
        params = [f"const {t}* __in_{n}" for n, t in self.inputs] + [f"{t}* __out_{n}" for n, t in self.outputs]
        loads = "".join(f"const {t} {n} = __in_{n}[i]; " for n, t in self.inputs)
        refs = "".join(f"{t}& {n} = __out_{n}[i]; " for n, t in self.outputs)
        code = (f'extern "C" void dlsoft_elementwise(const long long __n, {", ".join(params)}) {{\n'
                f"  for (long long i = 0; i < __n; ++i) {{ {loads}{refs}\n    {body};\n  }}\n}}\n")
        self._function = compile_library(code).dlsoft_elementwise
        self._function.restype = None

    def __call__(self, *args) -> None:
        names = [n for n, _ in self.inputs + self.outputs]
        if len(args) != len(names):
            raise KernelArgumentError(f"{self.name}: called with {len(args)} arguments, the kernel takes "
                                      f"{len(names)} ({', '.join(names)})")
        ins, outs = args[:len(self.inputs)], args[len(self.inputs):]
        for (name, ctype), value in zip(self.inputs + self.outputs, args):
            dtype = C_TYPES[ctype][1]
            if isinstance(value, np.ndarray) and value.dtype != dtype:
                raise KernelArgumentError(f"{self.name}: {name} needs {np.dtype(dtype).name}, got {value.dtype} "
                                          "(cupy: 'Type is mismatched')")
        for (name, _), value in zip(self.outputs, outs):
            if not isinstance(value, np.ndarray):
                raise KernelArgumentError(f"{self.name}: output {name} must be an array, got {type(value).__name__}")
        try:
            shape = np.broadcast_shapes(*(np.shape(a) for a in args))
        except ValueError:
            raise KernelArgumentError(f"{self.name}: shapes {[np.shape(a) for a in args]} do not broadcast") from None
        for (name, _), value in zip(self.outputs, outs):
            if value.shape != shape:
                raise KernelArgumentError(f"{self.name}: output {name} has shape {value.shape}, the broadcast "
                                          f"shape is {shape}")
        flat_in = [np.ascontiguousarray(np.broadcast_to(np.asarray(v, dtype=C_TYPES[t][1]), shape))
                   for (_, t), v in zip(self.inputs, ins)]
        flat_out = [np.ascontiguousarray(v) for v in outs]  # a copy if strided: written back below
        pointers = [ctypes.c_void_p(a.ctypes.data) for a in flat_in + flat_out]
        self._function(ctypes.c_longlong(int(np.prod(shape, dtype=np.int64))), *pointers)
        for target, result in zip(outs, flat_out):
            if result is not target:
                target[...] = result
