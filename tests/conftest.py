"""Shared fixtures: where the reference Caffe files are, and GPU availability."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))  # so tests can `import gradcheck`

SHARED_CAFFE = ROOT.parent / "shared" / "caffe"


def gpu_available() -> bool:
    from dlsoft.backend import gpu_count
    return gpu_count() > 0


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running (training to accuracy); run with -m slow")
    config.addinivalue_line("markers", "gpu: needs cupy and a CUDA GPU; skipped otherwise")
    config.addinivalue_line("markers", "kernels: a CUDA kernel source compiled as C++ and run on the CPU "
                            "(tests/kernel_emulation; needs g++)")
    config.addinivalue_line("markers", "cupy_api: layers' GPU methods run against an array module with "
                            "exactly cupy's API (tests/kernel_emulation/fakecupy.py)")


def pytest_generate_tests(metafunc):
    """Every ``gpu`` test runs twice: on a real device ("cuda"), and against cupy's API
    without one ("cupy_api": ``kernel_emulation.fakecupy`` installed as ``cupy``)."""
    if metafunc.definition.get_closest_marker("gpu") is not None:
        metafunc.parametrize("gpu_backend", ["cuda", pytest.param("cupy_api", marks=pytest.mark.cupy_api)],
                             indirect=True)


@pytest.fixture(autouse=True)
def gpu_backend(request):
    """Installs the cupy stand-in for the "cupy_api" runs of ``gpu`` tests; nothing otherwise."""
    if getattr(request, "param", None) != "cupy_api":
        yield None
        return
    if shutil.which("g++") is None:
        pytest.skip("no g++: the cupy_api runs compile the CUDA kernels as C++")
    fakecupy = pytest.importorskip("kernel_emulation.fakecupy", reason="cupy is not installed (its API lists)")
    with fakecupy.installed() as module:
        yield module


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A cupy_api or kernels run that fails inside a layer names the layer and its method."""
    try:
        return (yield)
    except (AttributeError, TypeError, ValueError) as exc:
        if "cupy_api" not in item.keywords and "kernels" not in item.keywords:
            raise
        from kernel_emulation.report import layer_in_traceback
        raise AssertionError(f"{layer_in_traceback(exc.__traceback__)}: {type(exc).__name__}: {exc}") from exc


def pytest_collection_modifyitems(config, items):
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="no GPU (cupy with a CUDA device) on this machine")
    for item in items:
        if "gpu" in item.keywords and "cupy_api" not in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_caffe() -> Path:
    """../shared/caffe: the real Caffe configs and reference outputs."""
    if not SHARED_CAFFE.is_dir():
        pytest.skip(f"{SHARED_CAFFE} is not present")
    return SHARED_CAFFE
