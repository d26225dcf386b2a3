"""Every hand-written CUDA kernel of every layer module compiles (NVRTC; no GPU needed).

Modules list their ``cupy.RawKernel`` sources in a module-level ``SOURCES`` dict
(kernel name -> CUDA C source). See ../shared/GPU.md.
"""
from __future__ import annotations

import importlib
import pkgutil

import pytest

import dlsoft.layers


def all_sources() -> dict[str, str]:
    sources = {}
    for info in pkgutil.iter_modules(dlsoft.layers.__path__):
        module = importlib.import_module(f"dlsoft.layers.{info.name}")
        for name, source in getattr(module, "SOURCES", {}).items():
            sources[f"{info.name}.{name}"] = source
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
