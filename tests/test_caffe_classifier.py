"""caffe.Classifier and caffe.Detector: the 00-classification notebook's flow on a small colour net.

The expected values are computed step by step here (OpenCV resize, slicing, the mean,
raw scale and channel swap by hand) and run through dlsoft.Net with the same weights.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

import caffe
import dlsoft

NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 10 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
MEAN = np.array([104.0, 117.0, 123.0])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    model = folder / "deploy.prototxt"
    model.write_text(NET)
    dlsoft.set_random_seed(3)
    net = dlsoft.Net(str(model), phase="TEST")
    weights = folder / "tiny.caffemodel"
    net.save(str(weights))
    return str(model), str(weights)


def reference_probs(model, weights, crops_hwc):
    """Preprocess (HWC RGB [0,1] -> CHW BGR *255 - mean) by hand and forward with dlsoft."""
    batch = np.stack([c.transpose(2, 0, 1)[::-1] * 255.0 - MEAN[:, None, None] for c in crops_hwc])
    net = dlsoft.Net(model, phase="TEST", weights=weights)
    return net.forward(data=batch.astype(np.float32))["prob"]


def test_classifier_oversample_and_centre(tiny):
    model, weights = tiny
    rng = np.random.default_rng(1)
    images = [rng.uniform(0, 1, (6, 7, 3)).astype(np.float32) for _ in range(2)]
    clf = caffe.Classifier(model, weights, image_dims=(12, 12), mean=MEAN, raw_scale=255,
                           channel_swap=(2, 1, 0))
    resized = [cv2.resize(im, (12, 12), interpolation=cv2.INTER_LINEAR) for im in images]
    got = clf.predict(images)  # oversample: 10 crops each, averaged
    assert got.shape == (2, 5)
    for i, im in enumerate(resized):
        starts = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]
        crops = [im[y:y + 8, x:x + 8] for y, x in starts]
        crops += [c[:, ::-1] for c in crops]
        np.testing.assert_allclose(got[i], reference_probs(model, weights, crops).mean(0), rtol=1e-4, atol=1e-6)
    centre = clf.predict(images, oversample=False)
    expected = reference_probs(model, weights, [im[2:10, 2:10] for im in resized])
    np.testing.assert_allclose(centre, expected[:2], rtol=1e-4, atol=1e-6)


def test_detector_windows(tiny, tmp_path):
    model, weights = tiny
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    path = tmp_path / "scene.png"
    Image.fromarray(pixels).save(path)
    windows = np.array([[0, 0, 8, 8], [4, 6, 20, 22]])
    det = caffe.Detector(model, weights, mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0))
    found = det.detect_windows([(str(path), windows)])
    assert [d["filename"] for d in found] == [str(path)] * 2
    image = pixels.astype(np.float32) / 255.0
    crops = [cv2.resize(image[y0:y1, x0:x1], (8, 8), interpolation=cv2.INTER_LINEAR)
             for y0, x0, y1, x1 in windows]
    expected = reference_probs(model, weights, crops)
    for detection, probs in zip(found, expected):
        np.testing.assert_allclose(detection["prediction"], probs, rtol=1e-4, atol=1e-6)
    padded = caffe.Detector(model, weights, mean=MEAN, raw_scale=255, channel_swap=(2, 1, 0), context_pad=1)
    crop = padded.crop(image, windows[1])
    assert crop.shape == (8, 8, 3)
    out = padded.detect_windows([(str(path), windows)])
    assert len(out) == 2 and out[0]["prediction"].shape == (5,)
