"""caffe.draw over dlsoft's DOT writer: pycaffe's draw_net / draw_net_to_file / get_pydot_graph."""
from __future__ import annotations

import shutil

import pytest

import caffe
import caffe.draw
from dlsoft.errors import DlsoftError
from dlsoft.netdef import io


@pytest.fixture
def lenet_train_test(shared_caffe):
    return io.read_net(shared_caffe / "examples" / "mnist" / "lenet_train_test.prototxt")


def test_graph_text_per_phase(lenet_train_test):
    every = caffe.draw.get_pydot_graph(lenet_train_test, "LR").to_string()
    test_only = caffe.draw.get_pydot_graph(lenet_train_test, "TB", phase=caffe.TEST).to_string()
    assert every.startswith('digraph "LeNet"') and "rankdir=LR" in every and "rankdir=TB" in test_only
    assert every.count("(Data)") == 2 and test_only.count("(Data)") == 1  # one data layer per phase
    assert "(Accuracy)" in test_only
    assert "(Accuracy)" not in caffe.draw.get_pydot_graph(lenet_train_test, "LR", phase=caffe.TRAIN).to_string()


def test_draw_net_to_file_raw_and_rendered(lenet_train_test, tmp_path):
    raw = tmp_path / "lenet.raw"
    caffe.draw.draw_net_to_file(lenet_train_test, str(raw), "BT", phase=caffe.TRAIN)
    assert raw.read_text().startswith('digraph "LeNet"')
    assert caffe.draw.draw_net(lenet_train_test, "LR", ext="dot", phase=caffe.TRAIN) == raw.read_bytes().replace(b"BT", b"LR")
    if shutil.which("dot") is None:
        with pytest.raises(DlsoftError, match="needs Graphviz's `dot` program"):
            caffe.draw.draw_net_to_file(lenet_train_test, str(tmp_path / "lenet.png"))
    else:
        caffe.draw.draw_net_to_file(lenet_train_test, str(tmp_path / "lenet.png"))
        assert (tmp_path / "lenet.png").read_bytes()[:4] == b"\x89PNG"
