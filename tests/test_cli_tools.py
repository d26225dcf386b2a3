"""The pieces behind `plot`, `draw` and `time`: log parsing, DOT text, per-layer timing."""
from __future__ import annotations

import json

import pytest

from dlsoft.errors import DlsoftError
from dlsoft.netdef.draw import layer_details, net_to_dot, render_dot
from dlsoft.netdef.io import parse_layer_text, parse_net_text
from dlsoft.plot import load_curves, parse_caffe_log, parse_metrics

# A real Caffe 1.0 log excerpt (newer Caffe prints iter/s in the loss line; older does not).
CAFFE_LOG = """\
I0610 10:00:00.000000  1234 solver.cpp:330] Iteration 0, Testing net (#0)
I0610 10:00:00.000000  1234 solver.cpp:397]     Test net output #0: accuracy = 0.0861
I0610 10:00:00.000000  1234 solver.cpp:397]     Test net output #1: loss = 2.3 (* 1 = 2.3 loss)
I0610 10:00:00.100000  1234 solver.cpp:218] Iteration 0 (0 iter/s, 0.1s/100 iters), loss = 2.31
I0610 10:00:00.100000  1234 solver.cpp:237]     Train net output #0: loss = 2.31 (* 1 = 2.31 loss)
I0610 10:00:00.100000  1234 sgd_solver.cpp:105] Iteration 0, lr = 0.01
I0610 10:00:01.000000  1234 solver.cpp:218] Iteration 100, loss = 0.25
I0610 10:00:01.000000  1234 sgd_solver.cpp:105] Iteration 100, lr = 0.00992565
I0610 10:00:02.000000  1234 solver.cpp:330] Iteration 200, Testing net (#0)
I0610 10:00:02.000000  1234 solver.cpp:397]     Test net output #0: accuracy = 0.9612
I0610 10:00:02.000000  1234 solver.cpp:397]     Test net output #1: loss = 0.12 (* 1 = 0.12 loss)
I0610 10:00:02.000000  1234 solver.cpp:330] Iteration 200, Testing net (#1)
I0610 10:00:02.000000  1234 solver.cpp:397]     Test net output #0: accuracy = 0.5
"""


def test_parse_caffe_log():
    curves = parse_caffe_log(CAFFE_LOG)
    assert curves.train == {"loss": [(0, 2.31), (100, 0.25)]}
    assert curves.lr == [(0, 0.01), (100, 0.00992565)]
    assert curves.test["accuracy"] == [(0, 0.0861), (200, 0.9612)]
    assert curves.test["loss"] == [(0, 2.3), (200, 0.12)]
    assert curves.test["#1/accuracy"] == [(200, 0.5)]


def test_parse_dlsoft_metrics_lines():
    records = [
        {"phase": "test", "iter": 0, "time": 1.0, "net": "#0", "scores": {"accuracy": 0.1, "loss": 2.3}},
        {"phase": "train", "iter": 0, "time": 1.0, "loss": 2.3, "lr": 0.01, "iter_per_s": 0.0,
         "outputs": {"loss": 2.3}},
        {"phase": "train", "iter": 100, "time": 2.0, "loss": 0.2, "lr": 0.0099, "iter_per_s": 40.0,
         "outputs": {"loss": 0.21, "top5": 0.9}},
        {"event": "test", "iter": 100, "net": "#1", "scores": {"accuracy": 0.95}, "loss": 0.3},
    ]
    curves = parse_metrics("\n".join(json.dumps(r) for r in records) + "\n")
    assert curves.train == {"loss": [(0, 2.3), (100, 0.2)], "top5": [(100, 0.9)]}
    assert curves.lr == [(0, 0.01), (100, 0.0099)]
    assert curves.test == {"accuracy": [(0, 0.1)], "loss": [(0, 2.3)],
                           "#1/accuracy": [(100, 0.95)], "#1/loss": [(100, 0.3)]}
    with pytest.raises(DlsoftError, match=r"m.jsonl:2: not a JSON line"):
        parse_metrics('{"iter": 0}\nnot json\n', "m.jsonl")


def test_load_curves_picks_the_metrics_file_of_a_run_dir(tmp_path):
    (tmp_path / "train.log").write_text(CAFFE_LOG)
    assert load_curves(tmp_path).test["accuracy"][-1] == (200, 0.9612)  # only a log: the log
    (tmp_path / "lenet_metrics.jsonl").write_text(json.dumps({"phase": "train", "iter": 5, "loss": 1.0}) + "\n")
    assert load_curves(tmp_path).train == {"loss": [(5, 1.0)]}
    (tmp_path / "empty.log").write_text("nothing here\n")
    with pytest.raises(DlsoftError, match="found no training loss"):
        load_curves(tmp_path / "empty.log")


NET = """
name: "n"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
"""


def test_dot_versions_in_place_blobs_and_labels_layers():
    dot = net_to_dot(parse_net_text(NET), shapes={"conv": (1, 4, 4, 4)}, param_counts={"conv": 40})
    assert '"layer:2:relu" -> "blob:conv:1"' in dot  # ReLU writes a new version of conv
    assert '"blob:conv:0" -> "layer:2:relu"' in dot
    assert '"blob:conv:1" -> "layer:3:pool"' in dot  # pooling reads the rewritten one
    assert "kernel 3, stride 2, pad 1, out 4" in dot and "40 params" in dot and "1x4x4x4" in dot
    assert dot.count("->") == 7  # 3 in, 4 out


def test_layer_details_and_bad_output_format(tmp_path):
    assert layer_details(parse_layer_text('type: "Pooling" pooling_param { pool: AVE global_pooling: true }')) \
        == "AVE global"
    assert layer_details(parse_layer_text('type: "InnerProduct" inner_product_param { num_output: 7 }')) == "out 7"
    with pytest.raises(DlsoftError, match="unknown drawing format"):
        render_dot("digraph {}", tmp_path / "x.jpg2")
    with pytest.raises(DlsoftError, match="rankdir"):
        net_to_dot(parse_net_text(NET), rankdir="XY")


def test_time_net_reports_every_layer():
    import dlsoft
    from dlsoft.timing import time_net
    net = dlsoft.Net(parse_net_text(NET.replace('type: "ReLU"', 'type: "Dropout"')), phase="TRAIN")
    report = time_net(net, iterations=2)
    assert [t.name for t in report.layers] == net.layer_names
    assert all(t.forward_ms >= 0 for t in report.layers)
    assert report.forward_ms == pytest.approx(sum(t.forward_ms for t in report.layers))
    assert report.iterations == 2 and report.total_ms > 0
    text = report.format()
    assert "Average Forward pass" in text and "conv" in text
    with pytest.raises(ValueError):
        time_net(net, iterations=0)
