"""The first-day frictions on the command line (issue 11): Caffe's tool names, NET as
argument or -model, flags named whole, -gpu without a GPU, a solver given as the net,
the phases listed, how many layers the weights loaded, and `zoo add-weights`.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import lmdb
import numpy as np
import pytest

import yaml

from dlsoft import model_zoo
from dlsoft.backend import gpu_count
from dlsoft.netdef import io
from dlsoft.netdef.net import Net
from dlsoft.protos import caffe_pb2
from test_cli import assert_one_line_error, run, trained, work  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parent.parent
MLP = ROOT / "dlsoft" / "model_zoo" / "entries" / "mlp_digits"
needs_no_gpu = pytest.mark.skipif(gpu_count() > 0, reason="checks the error given without a GPU")


@pytest.mark.parametrize("caffe_name, dlsoft_name", [
    ("device_query", "device-query"), ("convert_imageset", "convert-imageset"),
    ("compute_image_mean", "compute-mean"), ("convert_mnist_data", "convert-mnist"),
    ("extract_features", "extract-features"), ("upgrade_net_proto_text", "convert"),
    ("upgrade_net_proto_binary", "convert"), ("upgrade_solver_proto_text", "convert"),
])
def test_caffe_tool_names_are_commands(work, caffe_name, dlsoft_name):
    assert run([caffe_name, "--help"]).output == run([dlsoft_name, "--help"]).output


def test_upgrade_tools_write_what_caffes_write(work):
    v1 = ROOT / "tests" / "data" / "io"
    run(["upgrade_net_proto_text", v1 / "lenet_v1.prototxt", "up.txt"])
    upgraded = io.parse_net_text(Path("up.txt").read_text())
    assert upgraded.layer and not upgraded.layers  # V1 'layers' became 'layer'
    run(["upgrade_net_proto_binary", v1 / "lenet_v1.caffemodel", "up.bin"])
    binary = caffe_pb2.NetParameter.FromString(Path("up.bin").read_bytes())
    assert binary.layer and any(layer.blobs for layer in binary.layer) and not binary.layers
    run(["upgrade_solver_proto_text", v1 / "solver_v1.prototxt", "solver.txt"])
    solver = io.parse_solver_text(Path("solver.txt").read_text())
    assert solver.type and not solver.HasField("solver_type")


def test_extract_features_writes_caffes_lmdb(work):
    for name in ("solver.prototxt", "train_val.prototxt"):
        shutil.copy(MLP / name, work / name)
    weights = str(MLP / "mlp_digits.caffemodel")
    run(["extract_features", weights, "train_val.prototxt", "ip1,ip2", "f_ip1,f_ip2", "2", "lmdb", "CPU"])
    with Net("train_val.prototxt", phase="TEST", weights=weights) as net:
        net.forward()  # the same first batch of the TEST data
        expected = net.blobs["ip2"].data.copy()
    env = lmdb.open("f_ip2", readonly=True, lock=False)
    with env.begin() as txn:
        keys = [k.decode() for k, _ in txn.cursor()]
        datum = caffe_pb2.Datum.FromString(txn.get(b"0000000003"))
    env.close()
    assert keys[:2] == ["0000000000", "0000000001"] and len(keys) == 2 * 100  # 2 batches of 100
    assert (datum.channels, datum.height, datum.width) == (10, 1, 1)
    np.testing.assert_allclose(datum.float_data, expected[3], rtol=1e-6)
    result = run(["extract-features", "--weights", weights, "--model", "train_val.prototxt", "ip1", "more", "1"])
    assert "Wrote the features of 100 images" in result.output
    assert_one_line_error(run(["extract-features", "-q", weights, "train_val.prototxt", "nope", "x", "1"], expect=2),
                          "has no blob 'nope'")


def test_net_as_argument_or_model_everywhere(trained):
    for args in (["test", "net.prototxt", "-weights", "tiny_iter_20.caffemodel", "-iterations", "2"],
                 ["time", "net.prototxt", "-iterations", "1"], ["time", "-model", "net.prototxt", "-iterations", "1"],
                 ["summary", "--model", "net.prototxt"], ["summary", "-model", "net.prototxt"],
                 ["draw", "--model", "net.prototxt", "net.dot"], ["draw", "net.prototxt", "net2.dot"]):
        run(args)
    assert Path("net.dot").read_text() == Path("net2.dot").read_text()
    assert_one_line_error(run(["test", "-weights", "tiny_iter_20.caffemodel"], expect=2), "no net given")


def test_test_and_train_say_how_many_layers_were_loaded(trained):
    result = run(["test", "-model", "net.prototxt", "-weights", "tiny_iter_20.caffemodel", "-iterations", "1"])
    assert "Loaded weights for 1 of 1 layers with parameters from tiny_iter_20.caffemodel" in result.stderr
    result = run(["train", "--solver", "solver.prototxt", "--weights", "tiny_iter_20.caffemodel",
                  "--max-iter", "1", "--snapshot-prefix", "ft"])
    assert "Finetuning from tiny_iter_20.caffemodel: weights for 1 of 1 layers with parameters" in result.stderr


def test_unknown_single_dash_flag_is_named_whole(work):
    assert_one_line_error(run(["train", "-solver", "solver.prototxt", "-iterations", "10"], expect=2),
                          "no such option: -iterations")
    assert_one_line_error(run(["test", "-model", "net.prototxt", "-max_iterr", "3"], expect=2),
                          "no such option: -max_iterr")
    assert_one_line_error(run(["train", "-solver", "solver.prototxt", "-max_itr", "3"], expect=2),
                          "no such option: -max_itr (did you mean -max_iter?)")
    run(["train", "-solver", "solver.prototxt", "-max_iter", "1", "--quiet"])  # known ones still work
    run(["summary", "net.prototxt", "-stage", "-odd-stage", "-q"])  # an option's value may start with -


@needs_no_gpu
def test_gpu_flag_without_a_gpu_names_the_flag(work):
    result = run(["train", "-solver", "solver.prototxt", "-gpu", "0"], expect=2)
    assert_one_line_error(result, "--gpu 0: GPU 0 is not present (0 GPU(s) here")
    assert "solver.prototxt" not in result.stderr
    assert_one_line_error(run(["test", "-model", "net.prototxt", "-gpu", "1"], expect=2), "--gpu 1")


def test_solver_file_given_as_the_net(work):
    assert_one_line_error(run(["train", "solver.prototxt"], expect=2),
                          "solver.prototxt: is a solver definition, not a net",
                          "dlsoft train --solver solver.prototxt")
    assert_one_line_error(run(["test", "-model", "solver.prototxt", "-weights", "x"], expect=2),
                          "is a solver definition, not a net: give its net (net.prototxt) instead")


def test_bad_phase_lists_the_phases(work):
    assert_one_line_error(run(["summary", "net.prototxt", "--phase", "VAL"], expect=2), "train", "test")


def test_zoo_add_weights_checks_the_checksum(work, tmp_path):
    entry = tmp_path / "my_lenet"
    shutil.copytree(ROOT / "dlsoft" / "model_zoo" / "entries" / "lenet_mnist", entry)
    weights = entry / "lenet_mnist.caffemodel"
    downloaded = tmp_path / "downloads" / "lenet.caffemodel"
    downloaded.parent.mkdir()
    shutil.move(weights, downloaded)
    sha1 = hashlib.sha1(downloaded.read_bytes()).hexdigest()
    # an entry whose weights are fetched (like the BVLC ones) rather than shipped
    meta = yaml.safe_load((entry / "zoo.yaml").read_text())
    meta.get("files", {}).pop("weights", None)
    meta["weights"] = False
    meta["fetch"] = {"url": "http://dl.example.invalid/lenet.caffemodel", "path": "lenet.caffemodel", "sha1": sha1}
    (entry / "zoo.yaml").write_text(yaml.safe_dump(meta))
    assert_one_line_error(run(["zoo", "add-weights", str(entry), str(ROOT / "README.md")], expect=2),
                          "is not the weights of zoo entry", sha1)
    result = run(["zoo", "add-weights", str(entry), str(downloaded)])
    assert "checksum verified" in result.output
    path = model_zoo.local_path(model_zoo.get_entry(str(entry)), "weights")
    assert path.read_bytes() == downloaded.read_bytes() and str(path).startswith(str(work / "cache"))
    assert_one_line_error(run(["zoo", "add-weights", "bvlc_alexnet", str(downloaded)], expect=2),
                          "is not the weights of zoo entry 'bvlc_alexnet'", "9116a64c0fbe4459d18f4bb6b56d647b63920377")
