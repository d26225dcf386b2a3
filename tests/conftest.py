"""Shared fixtures: where the reference Caffe files are, and GPU availability."""
from __future__ import annotations

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


def pytest_collection_modifyitems(config, items):
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="no GPU (cupy with a CUDA device) on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_caffe() -> Path:
    """../shared/caffe: the real Caffe configs and reference outputs."""
    if not SHARED_CAFFE.is_dir():
        pytest.skip(f"{SHARED_CAFFE} is not present")
    return SHARED_CAFFE
