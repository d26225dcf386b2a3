"""The command line, driven through click's CliRunner (and one real subprocess).

Every command, the Caffe single-dash spellings, zoo: references and the error contract
(exit 2, one line `error: ...`, no traceback unless --debug).
"""
from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dlsoft.cli import cli

ROOT = Path(__file__).resolve().parent.parent

NET_IO = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""

# Constant label 1: any working trainer reaches accuracy 1 within a few iterations.
NET_TRAIN = """
name: "tinytrain"
layer { name: "data" type: "DummyData" top: "data" top: "label" include { phase: TRAIN }
        dummy_data_param { shape { dim: 8 dim: 4 } shape { dim: 8 }
                           data_filler { type: "gaussian" } data_filler { type: "constant" value: 1 } } }
layer { name: "data" type: "DummyData" top: "data" top: "label" include { phase: TEST }
        dummy_data_param { shape { dim: 4 dim: 4 } shape { dim: 4 }
                           data_filler { type: "gaussian" } data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy"
        include { phase: TEST } }
"""

SOLVER = """
net: "net.prototxt"
test_iter: 2
test_interval: 20
base_lr: 0.1
momentum: 0.9
lr_policy: "fixed"
display: 10
max_iter: 20
snapshot_prefix: "tiny"
random_seed: 1
"""


def run(args, expect=0, **kwargs):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, **kwargs)
    assert result.exit_code == expect, (result.exit_code, result.output)
    return result


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A working directory holding the tiny nets and a solver; zoo config/cache isolated."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DLSOFT_CONFIG", str(tmp_path / "config"))
    monkeypatch.setenv("DLSOFT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "io.prototxt").write_text(NET_IO)
    (tmp_path / "net.prototxt").write_text(NET_TRAIN)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    return tmp_path


@pytest.fixture
def trained(work):
    """The tiny net trained for 20 iterations: snapshot files in the work dir."""
    run(["train", "--solver", "solver.prototxt", "--quiet"])
    assert (work / "tiny_iter_20.caffemodel").is_file()
    return work


# ----------------------------------------------------------------------------- help and listing
def all_commands(group, prefix=()):
    import click
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from all_commands(command, prefix + (name,))
        else:
            yield prefix + (name,)


def test_every_command_has_help_with_an_example():
    commands = list(all_commands(cli))
    assert len(commands) == 24  # with export, import (ONNX), extract-features, zoo add-weights, convert-annoset, optimize
    for path in commands:
        result = run([*path, "--help"])
        assert "Example" in result.output, path
    assert "Examples" in run(["--help"]).output
    assert "Examples" in run(["zoo", "--help"]).output


def test_layers_lists_every_registered_type():
    from dlsoft.layers import registered_types
    result = run(["layers"])
    rows = [line.split(None, 1) for line in result.output.splitlines()]
    assert [row[0] for row in rows] == registered_types()
    assert dict(rows)["InnerProduct"] == "built in"
    verbose = run(["layers", "--verbose"]).output
    assert any(line.startswith("InnerProduct ") and len(line.split()) > 1 for line in verbose.splitlines())


def test_version():
    import dlsoft
    assert dlsoft.__version__ in run(["--version"]).output


def test_device_query():
    result = run(["device-query"])
    assert result.output.startswith("CPU: ")
    assert "BLAS" in result.output
    from dlsoft.backend import gpu_count
    if gpu_count() == 0:
        assert "GPU: none" in result.output
        assert_one_line_error(CliRunner().invoke(cli, ["device-query", "-gpu", "0"]), "no GPU")
    else:
        assert "compute capability" in result.output


# ----------------------------------------------------------------------------- summary, convert, draw
def test_summary_prints_shapes_and_parameter_count(work):
    out = run(["summary", "io.prototxt"]).output
    assert "InnerProduct" in out and "2x4" in out
    assert "16 parameters" in out  # 4x3 weights + 4 biases
    out = run(["summary", "net.prototxt", "-phase", "TEST"]).output
    assert "accuracy" in out and "TEST" in out


def test_summary_of_a_zoo_entry():
    out = run(["summary", "zoo:lenet_mnist"]).output
    assert "431,080 parameters" in out  # Caffe's LeNet


def test_convert_prototxt_yaml_round_trip(work):
    import dlsoft
    run(["convert", "net.prototxt", "net.yaml"])
    assert "SoftmaxWithLoss" in (work / "net.yaml").read_text()
    run(["convert", "net.yaml", "back.prototxt"])
    assert dlsoft.read_net(work / "back.prototxt") == dlsoft.read_net(work / "net.prototxt")
    result = run(["convert", "solver.prototxt", "solver.yaml"])
    assert "solver" in result.output
    assert dlsoft.read_solver(work / "solver.yaml") == dlsoft.read_solver(work / "solver.prototxt")


def test_convert_upgrades_v1_nets(work):
    (work / "v1.prototxt").write_text("""
name: "old"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 1 input_dim: 1
layers { name: "ip" type: INNER_PRODUCT bottom: "data" top: "ip" inner_product_param { num_output: 2 } }
layers { name: "relu" type: RELU bottom: "ip" top: "ip" }
""")
    run(["convert", "v1.prototxt", "new.prototxt"])
    text = (work / "new.prototxt").read_text()
    assert "layers {" not in text
    assert 'type: "InnerProduct"' in text and 'type: "ReLU"' in text


def test_convert_caffemodel_to_definition_without_blobs(work):
    import dlsoft
    net = dlsoft.Net(str(work / "io.prototxt"), phase="TEST")
    net.save(work / "io.caffemodel")
    result = run(["convert", "io.caffemodel", "definition.prototxt"])
    assert "net definition.prototxt" in result.output
    text = (work / "definition.prototxt").read_text()
    assert 'name: "ip"' in text and "blobs" not in text
    run(["convert", "io.caffemodel", "copy.caffemodel"])  # binary -> binary keeps the weights
    copy = dlsoft.read_net(work / "copy.caffemodel")
    assert [len(layer.blobs) for layer in copy.layer if layer.name == "ip"] == [2]


def test_draw_writes_dot_with_layers_blobs_and_shapes(work):
    result = run(["draw", "net.prototxt", "net.dot"])
    assert "net.dot" in result.output
    dot = (work / "net.dot").read_text()
    assert dot.startswith('digraph "tinytrain"')
    assert "(InnerProduct)" in dot and "shape=octagon" in dot
    assert "8x3" in dot  # the ip blob's TRAIN shape
    assert "accuracy" not in dot  # TEST-only layer
    run(["draw", "net.prototxt", "all.dot", "--phase", "ALL", "-rankdir", "TB"])
    dot_all = (work / "all.dot").read_text()
    assert "rankdir=TB" in dot_all and "(Accuracy)" in dot_all


@pytest.mark.skipif(__import__("shutil").which("dot") is None, reason="Graphviz `dot` is not installed")
def test_draw_renders_svg_and_png_with_graphviz(work):
    run(["draw", "io.prototxt", "io.svg"])
    assert "<svg" in (work / "io.svg").read_text()
    run(["draw", "zoo:lenet_mnist", "lenet.png"])
    assert (work / "lenet.png").read_bytes().startswith(b"\x89PNG")


def test_draw_without_graphviz_says_how_to_install(work, monkeypatch):
    monkeypatch.setenv("PATH", str(work / "empty-path"))
    result = CliRunner().invoke(cli, ["draw", "io.prototxt", "io.svg"])
    assert_one_line_error(result, "Graphviz", "apt-get install graphviz", ".dot")
    run(["draw", "io.prototxt", "io.dot"])  # DOT needs no Graphviz


# ----------------------------------------------------------------------------- train, test, time
def test_train_from_solver_with_caffe_spellings_then_resume(work):
    result = run(["train", "-solver", "solver.prototxt", "-seed", "3"])
    assert "Test scores" in result.stdout and "accuracy = 1" in result.stdout
    assert "tiny_iter_20.caffemodel" in result.stdout
    assert "Iteration" in result.stderr  # Caffe-style log lines on stderr
    assert (work / "tiny_iter_20.solverstate").is_file()
    result = run(["train", "-solver", "solver.prototxt", "-snapshot", "tiny_iter_20.solverstate",
                  "-max_iter", "30", "--snapshot-prefix", "resumed"])
    assert (work / "resumed_iter_30.caffemodel").is_file()


def test_train_fine_tunes_from_weights_and_multi_gpu_flag_needs_gpus(trained):
    result = run(["train", "--solver", "solver.prototxt", "--weights", "tiny_iter_20.caffemodel",
                  "--max-iter", "2", "--snapshot-prefix", "finetuned"])
    assert "Finetuning from tiny_iter_20.caffemodel" in result.stderr
    assert (trained / "finetuned_iter_2.caffemodel").is_file()
    from dlsoft.backend import gpu_count
    if gpu_count() == 0:
        assert_one_line_error(CliRunner().invoke(cli, ["train", "-solver", "solver.prototxt", "-gpu", "all"]),
                              "no GPU")


def test_train_a_bare_net_with_flag_overrides(work):
    result = run(["train", "net.prototxt", "--lr", "0.1", "--max-iter", "10", "--batch-size", "4",
                  "--solver-type", "Adam", "--test-interval", "10", "--test-iter", "1", "--momentum", "0.9",
                  "--weight-decay", "0.0005", "--snapshot-prefix", "bare", "--display", "5"])
    assert "Test scores" in result.stdout
    assert (work / "bare_iter_10.caffemodel").is_file()
    assert "Iteration 5" in result.stderr


def test_batch_size_applies_to_train_data_layers_only():
    from dlsoft.netdef.io import parse_net_text
    from dlsoft.solver import config
    net = parse_net_text(NET_TRAIN)
    config.set_train_batch_size(net, 5, "net")
    shapes = [list(layer.dummy_data_param.shape[0].dim) for layer in net.layer if layer.type == "DummyData"]
    assert shapes == [[5, 4], [4, 4]]  # the TRAIN layer only
    assert list(net.layer[0].dummy_data_param.shape[1].dim) == [5]
    io_net = parse_net_text(NET_IO)
    config.set_train_batch_size(io_net, 7, "io")
    assert io_net.layer[0].input_param.shape[0].dim[0] == 7


def test_test_command_prints_each_output_mean(trained):
    result = run(["test", "-model", "net.prototxt", "-weights", "tiny_iter_20.caffemodel", "-iterations", "3"])
    lines = result.stdout.splitlines()
    assert "accuracy = 1" in lines
    assert any(line.startswith("loss = ") and "(* 1 = " in line for line in lines)
    assert lines[0].startswith("Loss: ")
    assert "Batch 2, accuracy = 1" in result.stderr


def test_time_command_reports_per_layer_and_totals(work):
    result = run(["time", "-model", "net.prototxt", "-iterations", "2"])
    out = result.stdout
    for fragment in ("forward ms", "backward ms", "ip", "InnerProduct", "Average Forward pass",
                     "Average Backward pass", "Average Forward-Backward", "Total Time"):
        assert fragment in out
    assert "*** Benchmark begins ***" in result.stderr
    forward = run(["time", "--model", "io.prototxt", "--iterations", "1", "--forward-only"]).stdout
    assert "Average Backward pass: 0.0000 ms." in forward


def test_quiet_and_log_file(work):
    result = run(["--quiet", "train", "--solver", "solver.prototxt", "--log-file", "train.log"])
    assert result.stderr == ""
    assert "Test scores" in result.stdout
    log_text = (work / "train.log").read_text()
    assert "Iteration 10" in log_text
    assert log_text.splitlines()[0][0] in "IWE"  # glog's level letter opens every line


def test_train_a_zoo_entry_into_a_run_directory(work):
    result = run(["train", "zoo:lenet_mnist", "--max-iter", "2", "--run-dir", "runs/lenet", "--test-iter", "1",
                  "--test-interval", "2"])
    assert (work / "runs" / "lenet" / "train_val.prototxt").is_file()
    assert (work / "runs" / "lenet" / "lenet_mnist_iter_2.caffemodel").is_file()
    assert "runs/lenet/lenet_mnist_iter_2.caffemodel" in result.stdout
    assert "Test scores" in result.stdout


# ----------------------------------------------------------------------------- plot
CAFFE_LOG = """\
I0610 10:00:00.000000  1234 solver.cpp:218] Iteration 0 (0 iter/s, 0.1s/100 iters), loss = 2.3
I0610 10:00:00.000000  1234 sgd_solver.cpp:105] Iteration 0, lr = 0.01
I0610 10:00:01.000000  1234 solver.cpp:330] Iteration 100, Testing net (#0)
I0610 10:00:01.000000  1234 solver.cpp:397]     Test net output #0: accuracy = 0.91
I0610 10:00:01.000000  1234 solver.cpp:397]     Test net output #1: loss = 0.3 (* 1 = 0.3 loss)
I0610 10:00:01.000000  1234 solver.cpp:218] Iteration 100 (98 iter/s, 1.02s/100 iters), loss = 0.4
I0610 10:00:01.000000  1234 sgd_solver.cpp:105] Iteration 100, lr = 0.00992565
"""


def test_plot_a_caffe_log_and_a_run(trained):
    pytest.importorskip("matplotlib")
    (trained / "caffe.log").write_text(CAFFE_LOG)
    run(["plot", "caffe.log", "curves.png"])
    assert (trained / "curves.png").read_bytes().startswith(b"\x89PNG")
    (trained / "train.log").unlink(missing_ok=True)
    run(["--quiet", "train", "--solver", "solver.prototxt", "--log-file", "run.log"])
    run(["plot", "run.log", "run.png", "--title", "tiny"])
    assert (trained / "run.png").stat().st_size > 1000


# ----------------------------------------------------------------------------- zoo
def test_zoo_list_show_get(work):
    listing = run(["zoo", "list"]).output
    assert "lenet_mnist" in listing and "bvlc_alexnet" in listing
    shown = run(["zoo", "show", "lenet_mnist"]).output
    assert "deploy.prototxt" in shown and "weights_status" in shown
    got = run(["zoo", "get", "lenet_mnist", "mine"]).output
    assert (work / "mine" / "solver.prototxt").is_file() and "Wrote" in got
    assert_one_line_error(CliRunner().invoke(cli, ["zoo", "show", "lenet_mnits"]), "did you mean lenet_mnist")


def test_zoo_publish_add_index_fetch_and_use_by_name(work):
    import dlsoft
    entry = work / "shared_zoo" / "tiny_io"
    entry.mkdir(parents=True)
    (entry / "deploy.prototxt").write_text(NET_IO)
    dlsoft.Net(str(entry / "deploy.prototxt"), phase="TEST").save(entry / "tiny_io.caffemodel")
    (entry / "zoo.yaml").write_text("name: tiny_io\ndescription: test entry\nmetrics:\n"
                                    "  - {name: accuracy, value: 0.5, data: nothing}\n")
    run(["zoo", "publish", str(entry), "--index", "shared_zoo/index.yaml"])
    added = run(["zoo", "add-index", "shared_zoo/index.yaml"]).output
    assert "tiny_io" in added
    assert "tiny_io" in run(["zoo", "list"]).output
    fetched = run(["zoo", "fetch", "tiny_io"]).output
    assert "tiny_io.caffemodel" in fetched
    out = run(["summary", "zoo:tiny_io", "--weights", "zoo:tiny_io", "--phase", "TEST"]).output
    assert "16 parameters" in out


# ----------------------------------------------------------------------------- dataset tools
def test_convert_imageset_and_compute_mean(work):
    from PIL import Image
    images = work / "images"
    images.mkdir()
    lines = []
    for i in range(3):
        Image.fromarray(np.full((6, 5, 3), 40 * i, np.uint8)).save(images / f"{i}.png")
        lines.append(f"{i}.png {i}")
    (work / "list.txt").write_text("\n".join(lines) + "\n")
    out = run(["convert-imageset", "images", "list.txt", "db", "-resize_height", "4", "--resize_width", "4",
               "--shuffle", "--seed", "1"]).output
    assert "Wrote 3 images" in out
    out = run(["compute-mean", "db", "mean.binaryproto"]).output
    assert "3 images" in out
    from dlsoft.netdef.io import read_blob
    mean = read_blob(work / "mean.binaryproto")
    assert mean.shape[-2:] == (4, 4)
    np.testing.assert_allclose(mean, 40.0, atol=1e-4)  # (0 + 40 + 80) / 3
    assert_one_line_error(CliRunner().invoke(cli, ["compute-mean", "db", "m.binaryproto", "-backend", "leveldb"]),
                          "only lmdb")


def test_convert_mnist(work):
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    with gzip.open(work / "images.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, 2, 28, 28) + images.tobytes())
    (work / "labels").write_bytes(struct.pack(">II", 2049, 2) + bytes([3, 7]))
    out = run(["convert-mnist", "images.gz", "labels", "mnist_db"]).output
    assert "Wrote 2 images" in out


# ----------------------------------------------------------------------------- errors
def test_user_mistakes_are_one_line_and_exit_2(work):
    invoke = CliRunner().invoke
    assert_one_line_error(invoke(cli, ["summary", "missing.prototxt"]), "missing.prototxt", "no such file")
    (work / "bad.prototxt").write_text('name: "x"\nlayer { name: "a" typo: 1 }\n')
    assert_one_line_error(invoke(cli, ["summary", "bad.prototxt"]), "bad.prototxt:2")
    assert_one_line_error(invoke(cli, ["train", "--solver", "solver.prototxt", "--weights", "a.caffemodel",
                                       "--snapshot", "b.solverstate"]), "--weights", "--snapshot")
    assert_one_line_error(invoke(cli, ["train"]), "nothing to train")
    assert_one_line_error(invoke(cli, ["train", "--solver", "solver.prototxt", "--bogus"]), "--bogus")
    assert_one_line_error(invoke(cli, ["train", "-solver", "solver.prototxt", "-weights", "nope.caffemodel"]),
                          "nope.caffemodel")
    assert_one_line_error(invoke(cli, ["test", "--model", "net.prototxt"]), "--weights")
    assert_one_line_error(invoke(cli, ["summary", "zoo:no_such_entry"]), "no zoo entry")
    assert_one_line_error(invoke(cli, ["nosuchcommand"]), "nosuchcommand")
    assert_one_line_error(invoke(cli, ["plot", "nothing-here", "x.png"]), "nothing-here")


def test_debug_shows_the_traceback_before_or_after_the_subcommand(work):
    for args in (["--debug", "summary", "missing.prototxt"], ["summary", "missing.prototxt", "--debug"],
                 ["summary", "-debug", "missing.prototxt"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2
        assert "Traceback" in result.stderr, args
        assert result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_real_subprocess_python_m_dlsoft(work):
    ok = subprocess.run([sys.executable, "-m", "dlsoft", "summary", "io.prototxt"], capture_output=True,
                        text=True, cwd=work, timeout=120, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "16 parameters" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "dlsoft", "-solver"], capture_output=True, text=True, cwd=work,
                         timeout=120, check=False)
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and bad.stderr.startswith("error: ")


def test_solver_configuration_is_the_same_from_python():
    """The CLI's defaults and overrides are dlsoft.solver.config's, usable without the CLI."""
    from dlsoft.netdef.io import parse_net_text
    from dlsoft.errors import DlsoftError
    from dlsoft.solver import SOLVERS, config

    assert config.SOLVER_TYPES == tuple(SOLVERS)
    param = config.default_solver(parse_net_text(NET_TRAIN), name="tiny")
    assert (param.type, param.base_lr, param.max_iter, param.snapshot_prefix) == ("SGD", pytest.approx(0.01), 1000, "tiny")
    config.apply_overrides(param, "tiny", config.Overrides(lr=0.5, max_iter=20, solver_type="Adam", stages=("a",)))
    assert (param.base_lr, param.max_iter, param.type, list(param.train_state.stage)) == (0.5, 20, "Adam", ["a"])
    assert not config.Overrides().any() and config.Overrides(level=0).any()
    with pytest.raises(DlsoftError, match="--lr must be positive"):
        config.apply_overrides(param, "tiny", config.Overrides(lr=-1))
