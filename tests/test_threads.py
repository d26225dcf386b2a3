"""dlsoft.threads: OpenBLAS's idle-thread timeout set at import, the kernels' thread count beside BLAS."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import dlsoft
from dlsoft import threads
from dlsoft.layers import cpu_kernels

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                          timeout=120).stdout.strip()


def test_import_dlsoft_before_numpy_lowers_the_openblas_timeout():
    code = "import os, dlsoft, numpy; from dlsoft import threads; " \
           "print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'), threads.kernel_threads(2, blas_threads=2))"
    assert _python(code) == f"{threads.OPENBLAS_THREAD_TIMEOUT} 2"


def test_numpy_first_keeps_the_kernels_to_one_thread_beside_a_threaded_blas():
    code = "import os, numpy, dlsoft; from dlsoft import threads; " \
           "print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'), threads.kernel_threads(2, blas_threads=2), " \
           "threads.kernel_threads(2, blas_threads=1), threads.kernel_threads(1, blas_threads=2))"
    assert _python(code) == "None 1 2 1"


def test_a_users_timeout_is_kept():
    env_code = "import os; os.environ['OPENBLAS_THREAD_TIMEOUT'] = '20'; import numpy, dlsoft; " \
               "from dlsoft import threads; print(os.environ['OPENBLAS_THREAD_TIMEOUT'], " \
               "threads.kernel_threads(2, blas_threads=2))"
    assert _python(env_code) == "20 2"


def test_set_num_threads_round_trip_and_kernels_from_two_python_threads():
    """The kernels run one launch at a time (numba's workqueue layer takes no concurrent
    launches): two Python threads pooling at once both get the right answer."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    before = dlsoft.get_num_threads()
    dlsoft.set_num_threads(1)
    assert dlsoft.get_num_threads() == 1
    dlsoft.set_num_threads(before)
    x = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    expected = x.reshape(8, 3, 8, 2, 8, 2).max(axis=(3, 5))

    def pool(_):
        y = np.empty((8, 3, 8, 8), np.float32)
        for _ in range(20):
            cpu_kernels.max_pool(x, y, 2, 2, 2, 2, 0, 0)
        return y

    with ThreadPoolExecutor(2) as pool_threads:
        for y in pool_threads.map(pool, range(4)):
            assert np.array_equal(y, expected)


def test_one_blas_thread_from_the_environment_means_one_thread_everywhere():
    """``mpirun -x OPENBLAS_NUM_THREADS=1``: each rank's kernels and convolution split stay on one thread."""
    code = "import os; os.environ['OPENBLAS_NUM_THREADS'] = '1'; import dlsoft; from dlsoft import threads; " \
           "from dlsoft.layers import cpu_kernels; import numpy as np; " \
           "cpu_kernels.max_pool(np.zeros((1, 1, 2, 2), np.float32), np.zeros((1, 1, 1, 1), np.float32), " \
           "2, 2, 2, 2, 0, 0); import numba; print(threads.split_workers(8), numba.get_num_threads())"
    assert _python(code) == "1 1"
