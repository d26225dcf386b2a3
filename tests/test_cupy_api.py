"""The GPU path against cupy's API, without a GPU (marker ``cupy_api``).

Every ``@pytest.mark.gpu`` test also runs as a "cupy_api" case (tests/conftest.py):
``kernel_emulation.fakecupy`` stands in for cupy, so blobs on ``gpu:0`` hold arrays that
behave like numpy but expose only what the installed cupy 14 exposes, RawKernels run as
C++ on the CPU and ElementwiseKernel bodies as C loops, and each GPU result is compared
with the numpy path by the test itself. This module checks that those cases cover every
registered layer and every ElementwiseKernel body, and pins the host synchronisation of
a training iteration.
"""
from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

from dlsoft.layers import layer_class, registered_types

pytestmark = pytest.mark.cupy_api

TESTS = Path(__file__).resolve().parent


def gpu_test_texts() -> str:
    """The source and parameters of every gpu test of the layer test modules, as one text."""
    parts = []
    for path in sorted(TESTS.glob("test_layers_*.py")):
        module = importlib.import_module(path.stem)
        for name, function in vars(module).items():
            marks = getattr(function, "pytestmark", [])
            if callable(function) and name.startswith("test") and any(m.name == "gpu" for m in marks):
                parts.append(inspect.getsource(function))
                parts += [repr(m.args) for m in marks if m.name == "parametrize"]
    return "\n".join(parts)


def test_every_registered_layer_has_a_gpu_case():
    text = gpu_test_texts().replace('\\"', '"')
    missing = [t for t in registered_types() if not re.search(rf'type: "{t}"|["\']{t}["\']', text)]
    assert not missing, f"layers whose GPU methods no gpu test (and so no cupy_api run) exercises: {missing}"
