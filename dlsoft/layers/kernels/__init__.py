"""Every hand-written CUDA kernel of the layers, and the one way to launch them.

Sources live in one module per layer family (``im2col``, ``pooling``, ``lrn``,
``softmax``); each registers its kernels with :func:`define`, which prepends the shared
header (Caffe's ``CUDA_KERNEL_LOOP`` grid-stride loop, written once here). ``SOURCES``
maps every kernel name to its complete source, so tests can iterate them all (the NVRTC
compile test, and any CPU emulation of the kernels). Kernels are compiled by
``cupy.RawKernel`` on first use and cached; every kernel is a grid-stride loop, so one
launch shape (:func:`launch`) fits any size. Arrays must be C-contiguous float32; sizes
are passed as the kernel's int types (:func:`i32`, ``np.int64``).

The one-line ``ElementwiseKernel`` bodies of the activations stay beside their layer
classes (``neuron.py``), built through :func:`elementwise`.
"""
from __future__ import annotations

import functools

import numpy as np

from ...backend import cupy_module

THREADS = 256
MAX_BLOCKS = 65535

#: Prepended to every source: the grid-stride loop over ``n`` work items, as Caffe's
#: ``CUDA_KERNEL_LOOP`` (64-bit index, so blobs over 2^31 elements work).
HEADER = r"""
#define CUDA_KERNEL_LOOP(i, n) \
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); \
       i += (long long)blockDim.x * gridDim.x)
"""

#: Every RawKernel source, by kernel name (header included): what NVRTC compiles.
SOURCES: dict[str, str] = {}


def define(name: str, body: str) -> str:
    """Register kernel ``name`` (``body`` defines ``extern "C" __global__ void name(...)``)."""
    if name in SOURCES:
        raise ValueError(f"CUDA kernel {name!r} defined twice")
    SOURCES[name] = HEADER + body
    return SOURCES[name]


@functools.cache
def raw_kernel(name: str):
    """The compiled ``cupy.RawKernel`` ``name`` (compiled once)."""
    return cupy_module().RawKernel(SOURCES[name], name)


def launch(name: str, total: int, *args) -> None:
    """Run kernel ``name`` over ``total`` work items (no launch when there are none)."""
    if total:
        blocks = min((total + THREADS - 1) // THREADS, MAX_BLOCKS)
        raw_kernel(name)((blocks,), (THREADS,), args)


@functools.cache
def elementwise(inputs: str, outputs: str, body: str, name: str):
    """The cupy ``ElementwiseKernel`` for this one-line body, created on first use and cached."""
    return cupy_module().ElementwiseKernel(inputs, outputs, body, name)


def i32(value: int) -> np.int32:
    """A size as the kernels' ``const int``."""
    return np.int32(value)


# The families register their sources on import (after define() exists).
from . import im2col, lrn, pooling, softmax  # noqa: E402,F401
