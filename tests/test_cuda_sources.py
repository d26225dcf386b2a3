"""Every hand-written CUDA kernel of every layer module compiles (NVRTC; no GPU needed).

Every ``cupy.RawKernel`` source is registered in ``dlsoft.layers.kernels.SOURCES``
(kernel name -> CUDA C source), from one module per family. See ../shared/GPU.md.
"""
from __future__ import annotations

import importlib
import pkgutil

import pytest

from dlsoft.layers import kernels


def all_sources() -> dict[str, str]:
    """Every kernel source, keyed ``family.kernel`` (the family: its module in dlsoft.layers.kernels)."""
    sources = {}
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"{kernels.__name__}.{info.name}")
        for name, source in kernels.SOURCES.items():
            if source in vars(module).values():
                sources[f"{info.name}.{name}"] = source
    assert len(sources) == len(kernels.SOURCES), "a kernel source defined outside the family modules"
    return sources


def test_the_kernels_we_promise_exist():
    names = {key.split(".", 1)[1] for key in all_sources()}
    for kernel in ("dl_im2col", "dl_col2im", "dl_max_pool_forward", "dl_ave_pool_backward",
                   "dl_softmax_forward", "dl_softmax_backward", "dl_softmax_loss_forward"):
        assert kernel in names


@pytest.mark.parametrize("key", sorted(all_sources()))
def test_kernel_compiles_with_nvrtc(key):
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc")
    name, source = key.split(".", 1)[1], all_sources()[key]
    assert f" {name}(" in source, f"{key}: the source does not define a kernel called {name}"
    program = nvrtc.createProgram(source, f"{name}.cu", [], [])
    try:
        nvrtc.compileProgram(program, ["-arch=compute_90"])
    except nvrtc.NVRTCError:
        raise AssertionError(f"{key}: {nvrtc.getProgramLog(program)}") from None
