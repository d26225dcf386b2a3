"""How many CPU threads dlsoft's work uses: ``dlsoft.set_num_threads(n)``.

Two pools do the CPU work, one at a time: numpy's BLAS runs the big GEMMs
(convolution, inner product), and numba's pool runs the compiled kernels
(:mod:`dlsoft.layers.cpu_kernels`), which split memory-bound layers across image
planes. A layer never calls BLAS inside a compiled kernel, and neither pool's idle
threads keep a core busy (numba's workqueue layer sleeps at once; OpenBLAS's threads
spin for ``2**OPENBLAS_THREAD_TIMEOUT`` cycles, which ``import dlsoft`` lowers from
OpenBLAS's 2**28, about 0.1 s, to 2**10), so the two never compete for the cores and
each may use all of them. By default both use every core.

OpenBLAS reads its timeout when numpy loads it: where numpy was imported before dlsoft
(and ``OPENBLAS_THREAD_TIMEOUT`` is not set), its idle threads spin after every GEMM
and the kernels keep to one thread whenever BLAS has more (:func:`kernel_threads`);
import dlsoft first, or set the variable, to let both use every core.
"""
from __future__ import annotations

import os
import sys

#: Measured on cifar10_quick / LeNet training at 2 threads: 360 -> 200 ms and 55 -> 28 ms
#: (OpenBLAS's spinning threads had taken the second core from numba and numpy).
OPENBLAS_THREAD_TIMEOUT = "10"

_BLAS_SLEEPS = True  # whether OpenBLAS's idle threads sleep soon (see calm_blas_threads)


def calm_blas_threads() -> None:
    """Lower OpenBLAS's idle-thread spin before numpy loads it (called by ``import dlsoft``)."""
    global _BLAS_SLEEPS
    if "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        return
    if "numpy" in sys.modules:  # too late: OpenBLAS has read its environment
        _BLAS_SLEEPS = False
        return
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = OPENBLAS_THREAD_TIMEOUT


def kernel_threads(n: int, blas_threads: int | None = None) -> int:
    """The compiled kernels' thread count for ``n`` cores: ``n``, or 1 where OpenBLAS's
    idle threads spin (numpy loaded before dlsoft) and BLAS itself has more than one."""
    if _BLAS_SLEEPS or n == 1:
        return n
    if blas_threads is None:
        blas_threads = _blas_threads()
    return 1 if blas_threads > 1 else n


def _blas_threads() -> int:
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415
    except ImportError:
        return os.cpu_count() or 1
    counts = [info["num_threads"] for info in threadpool_info() if info.get("user_api") == "blas"]
    return max(counts, default=1)


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for the compiled kernels and, when threadpoolctl is installed,
    for numpy's BLAS too (otherwise set ``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS``
    before starting Python)."""
    if n < 1:
        raise ValueError(f"thread count must be at least 1, got {n}")
    import numba  # noqa: PLC0415 - only loaded by those who set threads

    try:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415
    except ImportError:
        blas = None
    else:
        threadpool_limits(limits=n, user_api="blas")
        blas = n
    numba.set_num_threads(min(kernel_threads(n, blas), numba.config.NUMBA_NUM_THREADS))


def get_num_threads() -> int:
    """The compiled kernels' thread count."""
    import numba  # noqa: PLC0415

    return numba.get_num_threads()
