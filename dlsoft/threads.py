"""How many CPU threads dlsoft's work uses: ``dlsoft.set_num_threads(n)``.

Two pools do the CPU work, one at a time: numpy's BLAS runs the big GEMMs
(convolution, inner product), and numba's pool runs the compiled kernels
(:mod:`dlsoft.layers.cpu_kernels`), which split memory-bound layers across image
planes. A layer never calls BLAS inside a compiled kernel, so the two never compete
for the cores and each may use all of them. By default both use every core.
"""
from __future__ import annotations


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for the compiled kernels and, when threadpoolctl is installed,
    for numpy's BLAS too (otherwise set ``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS``
    before starting Python)."""
    if n < 1:
        raise ValueError(f"thread count must be at least 1, got {n}")
    import numba  # noqa: PLC0415 - only loaded by those who set threads

    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415
    except ImportError:
        return
    threadpool_limits(limits=n, user_api="blas")


def get_num_threads() -> int:
    """The compiled kernels' thread count."""
    import numba  # noqa: PLC0415

    return numba.get_num_threads()
