"""caffe.Net and caffe's module functions: pycaffe's constructor forms, attributes and methods.

Reference: dlsoft.Net on the same files (itself checked against real Caffe's outputs in
test_net.py / test_io.py) and pycaffe's documented semantics (python/caffe/pycaffe.py,
_caffe.cpp, test/test_net.py of BVLC Caffe 1.0).
"""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import caffe
import dlsoft
from dlsoft.data.digits import load_digits
from dlsoft.errors import DataError, DeviceError, DlsoftError, NetDefinitionError

ROOT = Path(__file__).resolve().parent.parent
LENET = ROOT / "dlsoft" / "model_zoo" / "entries" / "lenet_mnist"
DEPLOY, WEIGHTS = str(LENET / "deploy.prototxt"), str(LENET / "lenet_mnist.caffemodel")


@pytest.fixture(scope="module")
def digits():
    images, labels = load_digits("test")
    return (images[:64].astype(np.float32) * 0.00390625).reshape(64, 1, 28, 28), labels[:64]


def test_top_level_caffe_is_dlsoft_caffe():
    import caffe.draw
    import caffe.io
    import dlsoft.caffe
    from caffe.proto import caffe_pb2
    assert caffe is dlsoft.caffe and caffe.io is dlsoft.caffe.io and caffe.draw is dlsoft.caffe.draw
    assert caffe_pb2 is dlsoft.caffe_pb2
    assert (caffe.TRAIN, caffe.TEST) == (0, 1) == (caffe_pb2.TRAIN, caffe_pb2.TEST)


def test_import_needs_no_gpu_and_is_clean():
    # importing caffe with no GPU is silent; the GPU question is asked where a GPU is wanted
    code = "import caffe, caffe.io, caffe.draw; from caffe import layers as L, params as P; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "ok" and result.stderr == ""


@pytest.mark.parametrize("form", ["legacy", "keyword", "positional", "names"])
def test_constructor_forms_give_the_trained_net(form, digits, caplog):
    images, _ = digits
    reference = dlsoft.Net(DEPLOY, phase="TEST", weights=WEIGHTS)
    expected = reference.forward(data=images)["prob"].copy()
    with caplog.at_level(logging.WARNING):
        net = {"legacy": lambda: caffe.Net(DEPLOY, WEIGHTS, caffe.TEST),
               "keyword": lambda: caffe.Net(DEPLOY, caffe.TEST, weights=WEIGHTS),
               "positional": lambda: caffe.Net(DEPLOY, caffe.TEST, 0, None, WEIGHTS),
               "names": lambda: caffe.Net(DEPLOY, "test", weights=WEIGHTS)}[form]()
    assert net.phase == "TEST"
    assert ("deprecated" in caplog.text) == (form == "legacy")
    np.testing.assert_array_equal(net.forward(data=images)["prob"], expected)
    assert (expected.argmax(1) == digits[1]).mean() > 0.9


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(NetDefinitionError, match="the phases are TRAIN and TEST"):
        caffe.Net(DEPLOY, 2)
    with pytest.raises(NetDefinitionError, match="the phases are TRAIN and TEST"):
        dlsoft.Net(DEPLOY, "VAL")
    # dlsoft.Net's own order is (model, phase, weights): a weights path as phase says so
    with pytest.raises(NetDefinitionError, match="looks like a file: pass weights as weights="):
        dlsoft.Net(DEPLOY, WEIGHTS, "TEST")
    with pytest.raises(DataError, match="weights file not found"):
        caffe.Net(DEPLOY, caffe.TEST, weights=str(tmp_path / "missing.caffemodel"))
    with pytest.raises(TypeError, match="needs a phase"):
        caffe.Net(DEPLOY)


def test_private_and_public_attributes():
    net = caffe.Net(str(ROOT.parent / "shared" / "caffe" / "examples" / "mnist" / "lenet.prototxt")
                    if (ROOT.parent / "shared").is_dir() else DEPLOY, caffe.TEST)
    assert net._layer_names == list(net.layer_dict) == [layer.name for layer in net.layers]
    assert net._blob_names == list(net.blobs) and net._blobs == list(net.blobs.values())
    assert [net._blob_names[i] for i in net._inputs] == net.inputs == ["data"]
    assert [net._blob_names[i] for i in net._outputs] == net.outputs == ["prob"]
    assert net.top_names["conv1"] == ["conv1"] and net.bottom_names["conv1"] == ["data"]
    assert [net._blob_names[i] for i in net._top_ids(1)] == net.top_names[net._layer_names[1]]
    assert [net._blob_names[i] for i in net._bottom_ids(1)] == net.bottom_names[net._layer_names[1]]
    assert list(net.blob_loss_weights) == net._blob_names and set(net.blob_loss_weights.values()) == {0.0}
    assert net._blob_loss_weights == list(net.blob_loss_weights.values())
    assert [(k, v[0].data.shape) for k, v in net.params.items()][0] == ("conv1", (20, 1, 5, 5))
    blob = net.blobs["data"]
    assert (blob.num, blob.channels, blob.height, blob.width, blob.count) == (64, 1, 28, 28, 64 * 784)


def test_forward_start_end_blobs_returns_the_blobs_arrays(digits):
    net = caffe.Net(DEPLOY, caffe.TEST, weights=WEIGHTS)
    images, _ = digits
    net.blobs["data"].data[...] = images
    out = net.forward(end="pool1")
    assert list(out) == ["pool1"] and out["pool1"] is net.blobs["pool1"].data  # not a copy
    out = net.forward(start="conv2", blobs=["ip1"])
    assert set(out) == {"prob", "ip1"}
    assert np.shares_memory(out["prob"], net.blobs["prob"].data)
    expected = dlsoft.Net(DEPLOY, phase="TEST", weights=WEIGHTS).forward(data=images)["prob"]
    np.testing.assert_array_equal(out["prob"], expected)
    # _forward takes layer indices and returns the loss (none here)
    assert net._forward(0, len(net.layers) - 1) == 0.0


def test_backward_diffs_and_private_backward(digits):
    net = caffe.Net(DEPLOY, caffe.TEST, weights=WEIGHTS)
    net.forward(data=digits[0])
    top = np.random.default_rng(0).standard_normal(net.blobs["prob"].shape).astype(np.float32)
    grads = net.backward(prob=top)
    assert list(grads) == ["data"] and grads["data"] is net.blobs["data"].diff
    reference = dlsoft.Net(DEPLOY, phase="TEST", weights=WEIGHTS)
    reference.forward(data=digits[0])
    np.testing.assert_allclose(grads["data"], reference.backward(prob=top)["data"], rtol=1e-6)
    until = net.backward(prob=top, end="ip2", diffs=["ip1"])
    assert set(until) == {"ip1"} | set(net.bottom_names["ip2"])
    net._backward(len(net.layers) - 1, 0)


def test_forward_all_pads_and_unpads(digits):
    images = digits[0]
    net = caffe.Net(DEPLOY, caffe.TEST, weights=WEIGHTS)
    out = net.forward_all(data=images[:70].repeat(2, axis=0)[:70])  # 70 = a batch of 64 + 6 padded
    assert out["prob"].shape == (70, 10)
    reference = dlsoft.Net(DEPLOY, phase="TEST", weights=WEIGHTS)
    one = reference.forward(data=images[:64].repeat(2, axis=0)[64:70])["prob"]
    np.testing.assert_allclose(out["prob"][64:], one, rtol=1e-5, atol=1e-7)
    both, diffs = net.forward_backward_all(data=images[:10], prob=np.ones((10, 10), np.float32))
    assert both["prob"].shape == (10, 10) and diffs["data"].shape == (10, 1, 28, 28)


MEMORY_NET = """
name: "memory"
layer { name: "data" type: "MemoryData" top: "data" top: "label"
        memory_data_param { batch_size: 4 channels: 1 height: 28 width: 28 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_set_input_arrays_feeds_memory_data(tmp_path, digits):
    path = tmp_path / "memory.prototxt"
    path.write_text(MEMORY_NET)
    net = caffe.Net(str(path), caffe.TRAIN)
    images, labels = digits
    net.set_input_arrays(np.ascontiguousarray(images[:8]), labels[:8].astype(np.float32))
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, images[:4])
    np.testing.assert_array_equal(net.blobs["label"].data, labels[:4])
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data, labels[4:8])
    assert net.blob_loss_weights["loss"] == 1.0
    with pytest.raises(DataError, match="float32"):
        net.set_input_arrays(images[:8].astype(np.float64), labels[:8].astype(np.float32))
    deploy = caffe.Net(DEPLOY, caffe.TEST)
    with pytest.raises(NetDefinitionError, match="first layer is a MemoryData"):
        deploy.set_input_arrays(np.ascontiguousarray(images[:8]), labels[:8].astype(np.float32))


def test_save_load_hdf5_copy_from_share_with(tmp_path, digits):
    trained = caffe.Net(DEPLOY, caffe.TEST, weights=WEIGHTS)
    expected = trained.forward(data=digits[0])["prob"].copy()
    trained.save(str(tmp_path / "copy.caffemodel"))
    trained.save_hdf5(str(tmp_path / "copy.h5"))
    for load in (lambda n: n.copy_from(str(tmp_path / "copy.caffemodel")),
                 lambda n: n.load_hdf5(str(tmp_path / "copy.h5"))):
        fresh = caffe.Net(DEPLOY, caffe.TEST)
        load(fresh)
        np.testing.assert_array_equal(fresh.forward(data=digits[0])["prob"], expected)
    shared = caffe.Net(DEPLOY, caffe.TEST)
    shared.share_with(trained)
    assert np.shares_memory(shared.params["conv1"][0].data, trained.params["conv1"][0].data)
    np.testing.assert_array_equal(shared.forward(data=digits[0])["prob"], expected)


def test_mode_device_and_module_functions(caplog):
    caffe.set_mode_cpu()
    assert caffe.pycaffe.current_device() == "cpu"
    if dlsoft.backend.gpu_count() == 0:
        with pytest.raises(DeviceError, match=r"^caffe.set_mode_gpu\(\): .*no GPU"):
            caffe.set_mode_gpu()
        assert caffe.pycaffe.current_device() == "cpu"  # still usable on the CPU
        assert caffe.has_nccl() is False
    caffe.set_device(0)
    with pytest.raises(DeviceError, match="start at 0"):
        caffe.set_device(-1)
    types = caffe.layer_type_list()
    assert {"Convolution", "Python", "MemoryData", "SoftmaxWithLoss"} <= set(types)
    caffe.set_random_seed(7)
    a = caffe.Net(DEPLOY, caffe.TEST).params["conv1"][0].data.copy()
    caffe.set_random_seed(7)
    np.testing.assert_array_equal(caffe.Net(DEPLOY, caffe.TEST).params["conv1"][0].data, a)
    caffe.set_solver_count(2)
    caffe.set_solver_rank(1)
    assert (caffe.solver_count(), caffe.solver_rank()) == (2, 1)
    caffe.set_solver_count(1)
    caffe.set_solver_rank(0)
    with caplog.at_level(logging.INFO, logger="dlsoft.caffe"):
        caffe.init_log(0)
        caffe.log("hello from pycaffe")
    assert "hello from pycaffe" in caplog.text
    logger = logging.getLogger("dlsoft")
    logger.removeHandler(caffe.pycaffe._log_handler)
    logger.setLevel(logging.NOTSET)
    timer = caffe.Timer()
    timer.start()
    timer.stop()
    assert timer.ms >= 0.0
    assert isinstance(DeviceError("x"), DlsoftError)


STAGED = """
name: "staged"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "deep" type: "InnerProduct" bottom: "data" top: "out" include { stage: "deep" min_level: 1 }
        inner_product_param { num_output: 5 } }
layer { name: "plain" type: "InnerProduct" bottom: "data" top: "out" exclude { stage: "deep" }
        inner_product_param { num_output: 2 } }
"""


def test_level_and_stages_select_layers(tmp_path):
    path = tmp_path / "staged.prototxt"
    path.write_text(STAGED)
    assert caffe.Net(str(path), caffe.TEST)._layer_names == ["data", "plain"]
    assert caffe.Net(str(path), caffe.TEST, stages=["deep"], level=1)._layer_names == ["data", "deep"]
    assert caffe.Net(str(path), caffe.TEST, 0, ["deep"])._layer_names == ["data"]  # level 0 < min_level
