"""caffe.io: proto/array conversions, load_image, resize_image, oversample, Transformer.

References: skimage (what pycaffe's io uses) for load_image, OpenCV's linear resize for
resize_image, BlobProto/Datum messages read back by dlsoft's own readers, and the
closed-form order of the Transformer's steps.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.io
from PIL import Image

import caffe
from caffe.proto import caffe_pb2
from dlsoft import fileio
from dlsoft.errors import DataError

RNG = np.random.default_rng(0)


def test_blobproto_round_trip_and_legacy_shape(tmp_path):
    arr = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    diff = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    blob = caffe.io.array_to_blobproto(arr, diff)
    assert list(blob.shape.dim) == [2, 3, 4]
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob), arr)
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob, return_diff=True), diff)
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(blob.SerializeToString())
    np.testing.assert_array_equal(fileio.read_blob(path), arr)  # dlsoft reads what caffe.io wrote
    legacy = caffe_pb2.BlobProto(num=1, channels=3, height=2, width=2, data=list(range(12)))
    assert caffe.io.blobproto_to_array(legacy).shape == (1, 3, 2, 2)


def test_blobprotovector_round_trip():
    arrays = [RNG.standard_normal((3, 2)), RNG.standard_normal((5,))]
    text = caffe.io.arraylist_to_blobprotovector_str(arrays)
    assert isinstance(text, bytes)
    back = caffe.io.blobprotovector_str_to_arraylist(text)
    for a, b in zip(arrays, back):
        np.testing.assert_allclose(b, a.astype(np.float32))


def test_datum_round_trip():
    pixels = RNG.integers(0, 256, (3, 4, 5), dtype=np.uint8)
    datum = caffe.io.array_to_datum(pixels, label=7)
    assert (datum.channels, datum.height, datum.width, datum.label) == (3, 4, 5, 7)
    assert datum.data == pixels.tobytes() and not datum.float_data
    np.testing.assert_array_equal(caffe.io.datum_to_array(datum), pixels)
    floats = RNG.standard_normal((1, 2, 3)).astype(np.float32)
    datum = caffe.io.array_to_datum(floats)
    assert not datum.data and len(datum.float_data) == 6
    np.testing.assert_allclose(caffe.io.datum_to_array(datum), floats, rtol=1e-7)
    with pytest.raises(ValueError, match="3-d"):
        caffe.io.array_to_datum(floats[0])


@pytest.fixture
def photo(tmp_path):
    rgb = RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    return path, rgb


def test_load_image_is_pycaffes_layout(photo, tmp_path):
    path, rgb = photo
    image = caffe.io.load_image(str(path))
    assert image.dtype == np.float32 and image.shape == (12, 16, 3)
    np.testing.assert_allclose(image, skimage.io.imread(path) / 255.0, rtol=1e-6)  # RGB in [0, 1]
    grey = caffe.io.load_image(str(path), color=False)
    expected = skimage.color.rgb2gray(skimage.io.imread(path))
    assert grey.shape == (12, 16, 1)
    np.testing.assert_allclose(grey[:, :, 0], expected, atol=1e-6)
    mono = tmp_path / "mono.png"
    Image.fromarray(rgb[:, :, 0]).save(mono)
    as_colour = caffe.io.load_image(str(mono))
    assert as_colour.shape == (12, 16, 3) and np.array_equal(as_colour[..., 0], as_colour[..., 2])
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([rgb, np.full((12, 16), 9, np.uint8)])).save(rgba)
    assert caffe.io.load_image(str(rgba)).shape == (12, 16, 3)
    with pytest.raises(DataError, match="not found"):
        caffe.io.load_image(str(tmp_path / "nope.jpg"))


@pytest.mark.parametrize("size", [(24, 32), (30, 20), (6, 8)])
def test_resize_image_is_a_linear_resize(size):
    image = RNG.uniform(0, 1, (12, 16, 3)).astype(np.float32)
    got = caffe.io.resize_image(image, size)
    assert got.shape == (*size, 3) and got.dtype == np.float32
    expected = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    if size[0] >= 12:  # OpenCV's linear resize is the same interpolation when enlarging
        np.testing.assert_allclose(got, expected, atol=1e-5)
    else:  # halving: each output pixel is the mean of a 2x2 block
        np.testing.assert_allclose(got, image.reshape(6, 2, 8, 2, 3).mean(axis=(1, 3)), atol=1e-6)
    four = RNG.uniform(0, 1, (5, 5, 4)).astype(np.float32)  # any channel count
    assert caffe.io.resize_image(four, (10, 10)).shape == (10, 10, 4)


def test_oversample_corners_centre_and_mirrors():
    images = RNG.uniform(0, 1, (2, 10, 12, 3)).astype(np.float32)
    crops = caffe.io.oversample(images, (6, 8))
    assert crops.shape == (20, 6, 8, 3)
    im = images[1]
    expected = [im[0:6, 0:8], im[0:6, 4:12], im[4:10, 0:8], im[4:10, 4:12], im[2:8, 2:10]]
    for j, crop in enumerate(expected):
        np.testing.assert_array_equal(crops[10 + j], crop)
        np.testing.assert_array_equal(crops[15 + j], crop[:, ::-1])


def test_transformer_order_of_steps_and_deprocess():
    transformer = caffe.io.Transformer({"data": (1, 3, 8, 6)})
    transformer.set_transpose("data", (2, 0, 1))
    transformer.set_channel_swap("data", (2, 1, 0))
    transformer.set_raw_scale("data", 255)
    mean = np.array([104.0, 117.0, 123.0])
    transformer.set_mean("data", mean)
    transformer.set_input_scale("data", 0.5)
    image = RNG.uniform(0, 1, (8, 6, 3)).astype(np.float32)
    original = image.copy()
    out = transformer.preprocess("data", image)
    expected = (image.transpose(2, 0, 1)[::-1] * 255 - mean[:, None, None]) * 0.5
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    np.testing.assert_array_equal(image, original)  # the caller's image is left alone
    np.testing.assert_allclose(transformer.deprocess("data", out), image, atol=1e-5)
    resized = transformer.preprocess("data", RNG.uniform(0, 1, (16, 12, 3)))  # resized to the input
    assert resized.shape == (3, 8, 6)
    with pytest.raises(ValueError, match="not one of the net inputs"):
        transformer.preprocess("label", image)
    with pytest.raises(ValueError, match="channels"):
        transformer.set_mean("data", np.zeros(4))
    with pytest.raises(ValueError, match="channel swap"):
        transformer.set_channel_swap("data", (1, 0))


def test_transformer_pixel_mean_is_resized_to_the_input():
    transformer = caffe.io.Transformer({"data": (1, 3, 4, 4)})
    mean = np.full((3, 8, 8), 100.0)
    mean[1] = 50.0
    transformer.set_mean("data", mean)
    assert transformer.mean["data"].shape == (3, 4, 4)
    np.testing.assert_allclose(transformer.mean["data"][1], 50.0)


def test_dlsofts_own_reader_has_another_name_and_caffes_layout(photo):
    from dlsoft.data import images
    path, rgb = photo
    assert not hasattr(images, "load_image")  # caffe.io.load_image is pycaffe's, with its own layout
    chw = images.read_image(path)
    assert chw.dtype == np.uint8 and chw.shape == (3, 12, 16)
    np.testing.assert_array_equal(chw, rgb[:, :, ::-1].transpose(2, 0, 1))  # BGR, channels first
