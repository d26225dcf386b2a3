"""A net whose blobs together cannot fit is refused once built, before its first forward,
with what it needs and what there is (each blob alone is checked when it is shaped)."""
from __future__ import annotations

import pytest

import dlsoft
from dlsoft.errors import NetDefinitionError

def net(n: int) -> str:
    """An Input of n×1000 and six ReLUs, each writing a new blob."""
    text = f'name: "wide" layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: {n} dim: 1000 }} }} }}\n'
    for i in range(6):
        bottom = "data" if i == 0 else f"r{i - 1}"
        text += f'layer {{ name: "relu{i}" type: "ReLU" bottom: "{bottom}" top: "r{i}" }}\n'
    return text


def test_blobs_that_fit_alone_but_not_together_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "wide.prototxt"
    path.write_text(net(80_000))            # 7 blobs of 80,000×1,000 float32 = 305 MiB each
    monkeypatch.setenv("DLSOFT_MEMORY_LIMIT", str(1 << 30))   # 1 GiB: each blob alone fits (3 × 305 MiB)
    with pytest.raises(NetDefinitionError) as info:
        dlsoft.Net(str(path), phase="TEST")
    message = str(info.value)
    assert "\n" not in message and "net 'wide'" in message and "2.1 GiB" in message and "1.0 GiB" in message
    assert "wide.prototxt" in message


def test_a_net_that_fits_is_built(tmp_path, monkeypatch):
    path = tmp_path / "wide.prototxt"
    path.write_text(net(100))
    monkeypatch.setenv("DLSOFT_MEMORY_LIMIT", str(1 << 30))
    assert dlsoft.Net(str(path), phase="TEST").blobs["r5"].shape == (100, 1000)
