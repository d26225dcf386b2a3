"""The Caffe world: every prototxt of ../shared/caffe-wild (nets of Caffe's forks) parses."""
from __future__ import annotations

from pathlib import Path

import pytest

from dlsoft.netdef import io
from dlsoft.protos import caffe_pb2

ROOT = Path(__file__).resolve().parents[1]
WILD = ROOT.parent / "shared" / "caffe-wild"
FILES = sorted(WILD.rglob("*.prototxt")) if WILD.is_dir() else []

pytestmark = pytest.mark.skipif(not FILES, reason="../shared/caffe-wild is absent")


def kind(path: Path) -> str:
    """What a caffe-wild file holds: a solver, the SSD label map, or a net."""
    if path.name == "labelmap.prototxt":
        return "labelmap"
    return "solver" if "solver" in path.name else "net"


def test_every_file_parses():
    counts = {"net": 0, "solver": 0, "labelmap": 0}
    for path in FILES:
        what = kind(path)
        if what == "labelmap":
            labels = io.read_message(path, caffe_pb2.LabelMap)
            assert labels.item[0].name == "none_of_the_above"
        elif what == "solver":
            io.read_solver(path)
        else:
            assert io.read_net(path).layer, path
        counts[what] += 1
    assert counts == {"net": 215, "solver": 15, "labelmap": 1}
