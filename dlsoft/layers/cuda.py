"""Compiling and launching the hand-written CUDA kernels (``cupy.RawKernel``).

Kernel sources are module-level strings of the layer families that need them (so the
test suite can compile every one with NVRTC on a machine without a GPU). They are
compiled on first use and cached; every kernel is a grid-stride loop, so one launch
shape fits any size.
"""
from __future__ import annotations

import functools

from ..backend import cupy_module

THREADS = 256
MAX_BLOCKS = 65535


@functools.cache
def raw_kernel(source: str, name: str):
    """The compiled ``cupy.RawKernel`` ``name`` of ``source`` (compiled once)."""
    return cupy_module().RawKernel(source, name)


def launch(source: str, name: str, total: int, *args) -> None:
    """Run kernel ``name`` of ``source`` over ``total`` work items."""
    if total:
        blocks = min((total + THREADS - 1) // THREADS, MAX_BLOCKS)
        raw_kernel(source, name)((blocks,), (THREADS,), args)
