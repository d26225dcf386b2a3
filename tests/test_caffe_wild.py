"""The Caffe world: the nets of Caffe's forks in ../shared/caffe-wild.

* every prototxt parses (nets as NetParameter, solvers as SolverParameter, the SSD label
  map as LabelMap);
* every deploy net (an ``Input`` layer or ``input:`` fields) whose layer types dlsoft has
  builds, with the parameter count OpenCV's Caffe importer gives for the same files
  (recorded in tests/data/caffe_wild_params.json, measured with opencv-python-headless 4.x
  on the caffemodel dlsoft writes); with random weights (BatchNorm variances positive)
  written as a caffemodel by dlsoft, its outputs agree with OpenCV's to 1e-4 relative
  (max |ours - OpenCV| / max |OpenCV| per blob), comparing the logits before a final
  Softmax, and the inputs of DetectionOutput, where a net ends in one;
* a net whose types are not all implemented yet fails with one line naming them; the
  types are listed in EXPECTED_MISSING, which must shrink as layers land (a type that is
  implemented but still listed fails the test);
* train/test nets whose data is missing fail with one line naming the missing source.

The default run checks a representative set of deploy nets; ``-m slow`` checks them all.
"""
from __future__ import annotations

import functools
import gc
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

import dlsoft
from dlsoft.errors import DlsoftError, NetDefinitionError
from dlsoft.layers.registry import registered_types
from dlsoft.netdef import io
from dlsoft.protos import caffe_pb2

ROOT = Path(__file__).resolve().parents[1]
WILD = ROOT.parent / "shared" / "caffe-wild"
FILES = sorted(WILD.rglob("*.prototxt")) if WILD.is_dir() else []
PARAMS = json.loads((ROOT / "tests" / "data" / "caffe_wild_params.json").read_text())

pytestmark = pytest.mark.skipif(not FILES, reason="../shared/caffe-wild is absent")

# Layer types of caffe-wild that dlsoft does not have yet, and who adds them (issue 10).
# Empty since every fork layer of caffe-wild landed; a type missing again fails the test.
EXPECTED_MISSING: dict[str, str] = {}

# A representative set checked in the default run (about 30 s): SSD, the ceil_mode
# classification families (AIR, ResNet), Inception, and a Faster R-CNN RPN net (its Python
# proposal module is absent: one line naming it).
DEFAULT_DEPLOY = {
    "chuanqi305+MobileNet-SSD/voc/MobileNetSSD_deploy.prototxt",
    "soeaver+caffe-model/cls/air/deploy_air14-1x8d.prototxt",
    "soeaver+caffe-model/cls/resnet/deploy_resnet18-1x16d.prototxt",
    "soeaver+caffe-model/cls/inception/deploy_inception-v1-tf.prototxt",
    "soeaver+caffe-model/cls/air/deploy_air26-1x16d.prototxt",
    "soeaver+caffe-model/det/faster_rcnn/models/pascal_voc/resnet18/rpn_rcnn_deploys/"
    "rpn_deploy_faster_voc_resnet18-priv-merge.prototxt",
}


def kind(path: Path) -> str:
    """What a caffe-wild file holds: a solver, the SSD label map, or a net."""
    if path.name == "labelmap.prototxt":
        return "labelmap"
    return "solver" if "solver" in path.name else "net"


def rel(path: Path) -> str:
    return path.relative_to(WILD).as_posix()


_NETS: dict[str, caffe_pb2.NetParameter] = {}


def net_param(path: Path) -> caffe_pb2.NetParameter:
    key = rel(path)
    if key not in _NETS:
        _NETS[key] = io.read_net(path)
    return _NETS[key]


_DEPLOY = re.compile(r'type:\s*"Input"|^\s*input\s*:', re.MULTILINE)


def is_deploy(path: Path) -> bool:
    """An Input layer or legacy ``input:`` fields (read from the text: collection stays cheap)."""
    text = "\n".join(line.split("#", 1)[0] for line in path.read_text(errors="replace").splitlines())
    return _DEPLOY.search(text) is not None


@functools.lru_cache(maxsize=1)
def have_types() -> frozenset[str]:
    return frozenset(registered_types())


def missing_types(param: caffe_pb2.NetParameter) -> list[str]:
    return sorted({layer.type for layer in param.layer} - have_types())


NET_FILES = [p for p in FILES if kind(p) == "net"]


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
            assert net_param(path).layer, path
        counts[what] += 1
    assert counts == {"net": 215, "solver": 15, "labelmap": 1}


def test_expected_missing_table_is_current():
    """The table lists exactly the types of caffe-wild that dlsoft lacks: strict as layers land."""
    missing = set()
    for path in NET_FILES:
        missing.update(missing_types(net_param(path)))
    assert sorted(missing - set(EXPECTED_MISSING)) == [], "types missing but not expected"
    assert sorted(set(EXPECTED_MISSING) - missing) == [], "implemented now: remove from EXPECTED_MISSING"


# ----------------------------------------------------------------------------- deploy nets

def deploy_files() -> list:
    out = []
    for path in NET_FILES:
        if not is_deploy(path):
            continue
        marks = [] if rel(path) in DEFAULT_DEPLOY else [pytest.mark.slow]
        out.append(pytest.param(path, id=rel(path), marks=marks))
    return out


def module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # its parent package is absent
        return False


def randomize(net, rng) -> None:
    """Random weights that keep the net well-conditioned: positive BatchNorm variances, non-zero biases."""
    for layer in net.layers:
        if layer.type == "BatchNorm":
            mean, var, factor = layer.blobs
            mean.data[...] = rng.normal(scale=0.1, size=mean.shape)
            var.data[...] = rng.uniform(0.5, 1.5, size=var.shape)
            factor.data[...] = 1
        elif len(layer.blobs) > 1 and layer.type in ("Convolution", "Deconvolution", "InnerProduct", "Scale"):
            layer.blobs[1].data[...] = rng.normal(scale=0.1, size=layer.blobs[1].shape)


def roi_inputs(net, rng) -> dict[str, np.ndarray]:
    """Valid regions for the rois inputs of (PS)ROIPooling layers: (0, x1, y1, x2, y2) inside the image."""
    out = {}
    for layer in net.layers:
        if layer.type not in ("ROIPooling", "PSROIPooling"):
            continue
        features, rois = net.bottom_names[layer.name][:2]
        if rois not in net.inputs:
            continue
        p = layer.param.roi_pooling_param if layer.type == "ROIPooling" else layer.param.psroi_pooling_param
        height, width = net.blobs[features].shape[2:]
        size = np.array([width, height, width, height]) / p.spatial_scale
        count = net.blobs[rois].shape[0]
        corners = np.sort(rng.uniform(0, 1, size=(count, 2, 2)), axis=1).reshape(count, 4)[:, [0, 2, 1, 3]]
        boxes = np.zeros((count, 5), np.float32)
        boxes[:, 1:] = np.round(corners * (size - 1))
        out[rois] = boxes.reshape(net.blobs[rois].shape)
    return out


def unused_inputs(param) -> set[str]:
    """Net inputs that no layer reads (PSPNet's ``data_dim``, kept for a commented-out CRF
    layer; io.read_net turns legacy ``input:`` fields into Input layers). OpenCV 4.x fails
    its input layer's shape check (``inputs.size() == requiredOutputs``) when such an
    input is set, and computes the same net without it."""
    read = {bottom for layer in param.layer for bottom in layer.bottom}
    return {top for layer in param.layer if layer.type == "Input" for top in layer.top if top not in read}


def compared_blobs(net) -> list[tuple[str, str]]:
    """(blob, layer that last writes it) pairs to compare with OpenCV.

    The logits before a Softmax output (a random net's probabilities are all about 1/C,
    so they would hide errors), the inputs of DetectionOutput (its NMS over near-equal
    random scores breaks ties differently), and every other output.
    """
    writer = {}
    for layer in net.layers:
        for top in net.top_names[layer.name]:
            writer[top] = layer.name
    by_top = {top: layer for layer in net.layers for top in net.top_names[layer.name]}
    out = []
    for name in net.outputs:
        if name in net.inputs:  # an input no layer reads (PSPNet's data_dim): nothing computed
            continue
        layer = by_top[name]
        if layer.type in ("Softmax", "DetectionOutput"):
            out.extend((b, writer[b]) for b in net.bottom_names[layer.name] if b in writer)
        else:
            out.append((name, writer[name]))
    return out


#: Deploy nets whose own shapes do not fit (real Caffe's Reshape CHECK fails on them too): the
#: one-line error names the file line and the layer before the missing Python module is reached.
INCONSISTENT = {
    # num_output 30 (2 x 15 anchors) but the reshape back assumes 9 anchors (dim: 18)
    "soeaver+caffe-model/det/faster_rcnn/models/coco/air101/rpn_rcnn_deploys/"
    "rpn_deploy_faster_coco_air101-merge-fc2-multigrid.prototxt":
        "layer 'rpn_cls_prob_reshape' (type Reshape): cannot infer the -1 in [1, 18, -1, 38]",
    "soeaver+caffe-model/det/rfcn/models/coco/inception-v4/rpn_rcnn_deploys/"
    "rpn_deploy_rfcn_coco_inception-v4-merge-aligned.prototxt":
        "layer 'rpn_cls_prob_reshape' (type Reshape): cannot infer the -1 in [1, 18, -1, 38]",
}


@pytest.mark.parametrize("path", deploy_files())
def test_deploy_net_builds_with_the_parameter_count_and_agrees_with_opencv(path, tmp_path):
    param = net_param(path)
    missing = missing_types(param)
    if missing:
        with pytest.raises(NetDefinitionError) as info:
            dlsoft.Net(str(path), phase="TEST")
        message = str(info.value)
        assert "\n" not in message and all(f"'{t}'" in message for t in missing), message
        return
    absent = [layer.python_param.module for layer in param.layer
              if layer.type == "Python" and not module_exists(layer.python_param.module)]
    if absent:  # py-faster-rcnn's proposal layers: their module lives in that repository's lib/
        with pytest.raises(DlsoftError) as info:
            dlsoft.Net(str(path), phase="TEST")
        message = str(info.value)
        assert "\n" not in message, message
        if rel(path) in INCONSISTENT:  # the file's own shapes fail before its Python layer is reached
            assert INCONSISTENT[rel(path)] in message and str(path) in message, message
        else:
            assert f"module '{absent[0]}'" in message and "not found" in message, message
        return
    dlsoft.set_random_seed(3)
    net = dlsoft.Net(str(path), phase="TEST")
    expected = PARAMS.get(rel(path))  # absent for nets whose layers landed later: OpenCV's count below
    if expected is not None:
        assert net.param_count() == expected
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
        pytest.skip("this OpenCV has no Caffe importer (needs opencv-python-headless<5)")
    rng = np.random.default_rng(0)
    randomize(net, rng)
    weights = tmp_path / "random.caffemodel"
    net.save(weights)
    inputs = {name: rng.uniform(-1, 1, size=net.blobs[name].shape).astype(np.float32) for name in net.inputs}
    inputs.update(roi_inputs(net, rng))
    net.forward(**inputs)
    pairs = compared_blobs(net)
    ours_by_blob = {blob: net.blobs[blob].data.copy() for blob, _ in pairs}
    count = net.param_count()
    # PSPNet's 513x513 nets hold some 5 GB each side: free ours before OpenCV builds its own
    del net
    gc.collect()
    try:
        cv_net = cv2.dnn.readNetFromCaffe(str(path), str(weights))
        their_count = sum(b.size for n in cv_net.getLayerNames() for b in cv_net.getLayer(n).blobs)
    except cv2.error as exc:  # getLayer creates the layers: a type OpenCV lacks fails there
        pytest.skip(f"OpenCV cannot read this net: {str(exc).strip().splitlines()[-1]}")
    assert their_count == count
    unused = unused_inputs(param)
    for name, x in inputs.items():
        if name not in unused:
            cv_net.setInput(x, name)
    try:
        theirs = cv_net.forward([layer for _, layer in pairs])
    except cv2.error as exc:
        pytest.skip(f"OpenCV cannot run this net: {str(exc).strip().splitlines()[-1]}")
    for (blob, _), expected in zip(pairs, theirs):
        ours = ours_by_blob[blob].reshape(expected.shape)
        error = np.max(np.abs(ours - expected)) / max(np.max(np.abs(expected)), 1e-30)
        assert error <= 1e-4, f"{blob}: relative error {error:.2e}"


# ----------------------------------------------------------------------------- train / test nets

def train_files() -> list:
    return [pytest.param(p, id=rel(p)) for p in NET_FILES if not is_deploy(p)]


def data_source(layer: caffe_pb2.LayerParameter) -> str:
    """What a data layer reads: its source file or LMDB, or its Python module."""
    if layer.type == "Python":
        return layer.python_param.module
    for field in ("data_param", "image_data_param", "hdf5_data_param", "window_data_param",
                  "dense_image_data_param"):
        if layer.HasField(field):
            return getattr(layer, field).source
    return ""


@pytest.mark.parametrize("path", train_files())
def test_train_net_with_missing_data_fails_with_one_line_naming_it(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative sources are resolved against an empty folder
    param = net_param(path)
    data_layers = [layer for layer in param.layer if not layer.bottom and layer.type != "Input"]
    assert data_layers
    missing = missing_types(param)
    # A test net's data layer may be included in the TEST phase only.
    phases = [rule.phase for layer in data_layers for rule in layer.include if rule.HasField("phase")]
    phase = "TEST" if phases and all(ph == caffe_pb2.TEST for ph in phases) else "TRAIN"
    with pytest.raises(DlsoftError) as info:
        dlsoft.Net(str(path), phase=phase)
    message = str(info.value)
    assert "\n" not in message
    if missing:
        assert all(f"'{t}'" in message for t in missing), message
    else:
        assert any(data_source(layer) and data_source(layer) in message for layer in data_layers), message
    # The data layers on their own (what is implemented of them) fail on the missing data, now.
    runnable = [layer for layer in data_layers if layer.type in have_types()]
    for layer in runnable:
        alone = caffe_pb2.NetParameter(name="data", layer=[layer])
        alone.layer[0].ClearField("include")
        with pytest.raises(DlsoftError) as info:
            dlsoft.Net(alone, phase=phase)
        message = str(info.value)
        assert "\n" not in message and data_source(layer) in message, message
        assert re.search(r"not found|no such|missing|does not exist", message), message
