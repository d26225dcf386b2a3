"""The compiled CPU kernels, as the layers call them: MAX pooling, col2im, the fused SGD step.

The loops are in :mod:`.cpu_loops` (numba); importing numba takes some 0.2 s, so they
load when a kernel first runs, not when a net or the CLI is merely imported. Each
function here takes the same arguments as the loop of the same name.

Threads: numba's pool and OpenBLAS's take turns on the same cores, layer after layer.
numba's default OpenMP layer keeps its threads spinning after a kernel while the next
GEMM wants the cores; its workqueue layer's threads sleep at once, so that is the one
used (a ``NUMBA_THREADING_LAYER`` of the user's is kept). The workqueue takes one
launch at a time: every kernel runs under one lock, so nets run in several Python
threads stay safe. Where OpenBLAS's own idle threads spin (see :mod:`dlsoft.threads`)
the kernels keep to one thread.
"""
from __future__ import annotations

import functools
import os
import threading

from ..threads import default_kernel_threads

_LAUNCH = threading.Lock()


@functools.cache
def _loops():
    import numba  # noqa: PLC0415 - see the module docstring

    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "workqueue"
    numba.set_num_threads(min(default_kernel_threads(), numba.config.NUMBA_NUM_THREADS))
    from . import cpu_loops  # noqa: PLC0415

    return cpu_loops


def _launcher(name: str):
    def launch(*args):
        with _LAUNCH:
            return getattr(_loops(), name)(*args)
    launch.__name__ = launch.__qualname__ = name
    launch.__doc__ = f"Run :func:`.cpu_loops.{name}` (compiled) under the launch lock."
    return launch


max_pool = _launcher("max_pool")
max_pool_mask = _launcher("max_pool_mask")
max_pool_backward = _launcher("max_pool_backward")
col2im = _launcher("col2im")
col2im_batch_minor = _launcher("col2im_batch_minor")
sgd_step = _launcher("sgd_step")
