"""How many CPU threads dlsoft's work uses: ``dlsoft.set_num_threads(n)``.

Two pools do the CPU work, one at a time: numpy's BLAS runs the big GEMMs
(convolution, inner product), and numba's pool runs the compiled kernels
(:mod:`dlsoft.layers.cpu_kernels`), which split memory-bound layers across image
planes. A layer never calls BLAS inside a compiled kernel, and neither pool's idle
threads keep a core busy (numba's workqueue layer sleeps at once; OpenBLAS's threads
spin for ``2**OPENBLAS_THREAD_TIMEOUT`` cycles, which ``import dlsoft`` lowers from
OpenBLAS's 2**28, about 0.1 s, to 2**10), so the two never compete for the cores and
each may use all of them. By default both use every core. Work that numpy does on one
core and that splits across a batch (the convolutions' chunks of images) runs on a third
pool, :func:`split_work`'s, sized the same, with BLAS at one thread inside it.

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


def default_kernel_threads() -> int:
    """The compiled kernels' thread count before any set_num_threads (see :func:`kernel_threads`)."""
    return kernel_threads(_threads)


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


def _default_threads() -> int:
    """Every core, or what ``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS`` asks for (one BLAS thread
    per MPI rank, say, keeps split_work and the kernels to one thread too)."""
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return os.cpu_count() or 1


_threads = _default_threads()  # what set_num_threads last gave
_pool = None  # the worker threads of split_work (all but worker 0), made on first use
_pool_size = 0
_blas = None  # threadpoolctl's controller of the loaded BLAS libraries (False: not installed)


def split_workers(count: int) -> int:
    """How many threads :func:`split_work` uses for ``count`` items."""
    global _blas
    workers = min(_threads, count)
    if workers > 1 and _blas is None:
        try:
            from threadpoolctl import ThreadpoolController  # noqa: PLC0415
        except ImportError:
            _blas = False
        else:
            _blas = ThreadpoolController()
    return workers if workers > 1 and _blas else 1


def split_work(work, items) -> None:
    """Call ``work(item, slot)`` for every item, split across ``set_num_threads`` Python
    threads with numpy's BLAS at one thread inside them (no oversubscription); ``slot``
    (0 .. threads-1) names the thread, for buffers of its own. Items go to threads
    round-robin (``items[slot::threads]``), in order within a thread. One item, one
    thread, or no threadpoolctl (BLAS's count cannot be lowered): all run here, slot 0.

    For the memory-bound steps numpy runs on one core (im2col copies, gathers): cifar10_quick's
    convolutions split by image chunks ran 1.75x faster than with one thread calling a
    2-thread BLAS."""
    global _pool, _pool_size
    items = list(items)
    workers = split_workers(len(items))
    if workers == 1:
        for item in items:
            work(item, 0)
        return
    if _pool is None or _pool_size < workers - 1:  # this thread is worker 0: the pool runs the others
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        _pool_size = _threads - 1
        _pool = ThreadPoolExecutor(_pool_size, thread_name_prefix="dlsoft-split")

    def run(slot):
        for item in items[slot::workers]:
            work(item, slot)

    with _blas.limit(limits=1, user_api="blas"):
        futures = [_pool.submit(run, slot) for slot in range(1, workers)]
        run(0)  # this thread is worker 0
        for future in futures:
            future.result()


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for the compiled kernels, :func:`split_work` and, when threadpoolctl
    is installed, numpy's BLAS (otherwise set ``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS``
    before starting Python, which also sets the default of the other two)."""
    global _threads
    if n < 1:
        raise ValueError(f"thread count must be at least 1, got {n}")
    _threads = n
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
