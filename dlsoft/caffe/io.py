"""pycaffe's ``caffe.io``: proto/array conversion, image loading and the input Transformer.

Layouts are pycaffe's: images are H x W x K float32 in [0, 1] (RGB) until the
Transformer turns them into the K x H x W arrays a net takes. (dlsoft's own
``dlsoft.data.images.load_image`` returns Caffe's C x H x W uint8 BGR instead.)

Resizing is bilinear with pixel centres aligned (the geometry of skimage's and OpenCV's
linear resize) and edge pixels repeated; pycaffe used skimage, which dlsoft does not
depend on.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import DataError
from ..protos import caffe_pb2

# skimage's rgb2gray weights (ITU-R 709), which pycaffe's load_image(color=False) applies.
_GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721], dtype=np.float64)


# ============================================================================ proto <-> array
def blobproto_to_array(blob, return_diff: bool = False) -> np.ndarray:
    """The data (or diff) of a BlobProto as an array of its shape (legacy 4-d when it has one)."""
    values = np.array(blob.diff if return_diff else blob.data)
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return values.reshape(blob.num, blob.channels, blob.height, blob.width)
    return values.reshape(tuple(blob.shape.dim))


def array_to_blobproto(arr, diff=None) -> caffe_pb2.BlobProto:
    """An N-d array (and optionally its diff, of the same shape) as a BlobProto."""
    arr = np.asarray(arr)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(int(d) for d in arr.shape)
    blob.data.extend(arr.astype(np.float64).ravel())
    if diff is not None:
        blob.diff.extend(np.asarray(diff).astype(np.float64).ravel())
    return blob


def arraylist_to_blobprotovector_str(arraylist) -> bytes:
    """A list of arrays as a serialized BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend(array_to_blobproto(a) for a in arraylist)
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(serialized: bytes) -> list[np.ndarray]:
    """The arrays of a serialized BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(serialized)
    return [blobproto_to_array(blob) for blob in vec.blobs]


def array_to_datum(arr, label=None) -> caffe_pb2.Datum:
    """A C x H x W array as a Datum: uint8 arrays as raw bytes, others as float_data."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError(f"array_to_datum: expected a 3-d C x H x W array, got shape {arr.shape}")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = (int(d) for d in arr.shape)
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(np.float64).ravel())
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum) -> np.ndarray:
    """A Datum's pixels as C x H x W (uint8 from raw bytes, float otherwise); the label is ``datum.label``."""
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape).copy()
    return np.array(datum.float_data, dtype=np.float64).reshape(shape)


# ============================================================================ images
def load_image(filename, color: bool = True) -> np.ndarray:
    """An image file as H x W x 3 RGB (or H x W x 1 intensity) float32 in [0, 1]."""
    try:
        with Image.open(filename) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                pixels = np.asarray(image, dtype=np.float64) / 65535.0
            elif image.mode == "F":
                pixels = np.asarray(image, dtype=np.float64)
            else:
                pixels = np.asarray(image.convert("RGB" if image.mode not in ("L", "1") else "L"),
                                    dtype=np.float64) / 255.0
    except FileNotFoundError:
        raise DataError("image file not found", path=str(filename)) from None
    except OSError as exc:
        raise DataError(f"cannot read the image ({exc})", path=str(filename)) from None
    if pixels.ndim == 3 and not color:
        pixels = pixels[:, :, :3] @ _GRAY_WEIGHTS
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]
        if color:
            pixels = np.tile(pixels, (1, 1, 3))
    return pixels.astype(np.float32)


def _linear_weights(n_in: int, n_out: int):
    """Source indices and weights for resizing one axis from ``n_in`` to ``n_out`` samples."""
    coords = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    coords = np.clip(coords, 0, n_in - 1)
    low = np.floor(coords).astype(np.int64)
    high = np.minimum(low + 1, n_in - 1)
    return low, high, (coords - low)


def resize_image(im, new_dims, interp_order: int = 1) -> np.ndarray:
    """Resize an H x W x K image to ``new_dims`` (height, width): bilinear, or nearest for ``interp_order=0``."""
    im = np.asarray(im, dtype=np.float32)
    height, width = int(new_dims[0]), int(new_dims[1])
    if im.shape[:2] == (height, width):
        return im.copy()
    if interp_order == 0:
        rows = np.minimum((np.arange(height) * im.shape[0] / height).astype(np.int64), im.shape[0] - 1)
        cols = np.minimum((np.arange(width) * im.shape[1] / width).astype(np.int64), im.shape[1] - 1)
        return im[rows][:, cols].astype(np.float32)
    if interp_order != 1:
        raise ValueError(f"resize_image: interp_order {interp_order} is not supported (0 nearest, 1 linear)")
    r0, r1, wr = _linear_weights(im.shape[0], height)
    c0, c1, wc = _linear_weights(im.shape[1], width)
    data = im.astype(np.float64)
    rows = data[r0] * (1 - wr)[:, None, None] + data[r1] * wr[:, None, None]
    out = rows[:, c0] * (1 - wc)[None, :, None] + rows[:, c1] * wc[None, :, None]
    return out.astype(np.float32)


def oversample(images, crop_dims) -> np.ndarray:
    """The four corner crops and the centre crop of each image, then the same mirrored: 10 N crops."""
    images = [np.asarray(im) for im in images]
    shape = np.array(images[0].shape)
    crop_h, crop_w = int(crop_dims[0]), int(crop_dims[1])
    corners = [(y, x) for y in (0, shape[0] - crop_h) for x in (0, shape[1] - crop_w)]
    centre = (int(shape[0] / 2.0 - crop_h / 2.0), int(shape[1] / 2.0 - crop_w / 2.0))
    starts = corners + [centre]
    crops = np.empty((10 * len(images), crop_h, crop_w, shape[-1]), dtype=np.float32)
    for i, im in enumerate(images):
        for j, (y, x) in enumerate(starts):
            crop = im[y:y + crop_h, x:x + crop_w, :]
            crops[10 * i + j] = crop
            crops[10 * i + 5 + j] = crop[:, ::-1, :]
    return crops


# ============================================================================ Transformer
class Transformer:
    """Turns H x W x K images into a net's K x H x W input, and back.

    ``Transformer({name: blob_shape})`` (e.g. ``{"data": net.blobs["data"].data.shape}``).
    ``preprocess`` converts to float32, resizes to the input size, then applies, in this
    order, transpose, channel swap, raw scale, mean subtraction and input scale;
    ``deprocess`` undoes them in reverse.
    """

    def __init__(self, inputs):
        self.inputs = {name: tuple(shape) for name, shape in dict(inputs).items()}
        self.transpose: dict = {}
        self.channel_swap: dict = {}
        self.raw_scale: dict = {}
        self.mean: dict = {}
        self.input_scale: dict = {}

    def _check_input(self, in_) -> None:
        if in_ not in self.inputs:
            raise ValueError(f"{in_!r} is not one of the net inputs: {list(self.inputs)}")

    def preprocess(self, in_, data) -> np.ndarray:
        """An H' x W' x K image as the K x H x W array for input ``in_``."""
        self._check_input(in_)
        out = np.asarray(data).astype(np.float32, copy=False)
        size = self.inputs[in_][2:]
        if out.shape[:2] != size:
            out = resize_image(out, size)
        if in_ in self.transpose:
            out = out.transpose(self.transpose[in_])
        if in_ in self.channel_swap:
            out = out[list(self.channel_swap[in_]), :, :]
        if out is data or not out.flags.owndata:
            out = out.copy()  # the steps below work in place; never on the caller's array
        if self.raw_scale.get(in_) is not None:
            out *= self.raw_scale[in_]
        if self.mean.get(in_) is not None:
            out -= self.mean[in_]
        if self.input_scale.get(in_) is not None:
            out *= self.input_scale[in_]
        return out

    def deprocess(self, in_, data) -> np.ndarray:
        """Undo :meth:`preprocess`: a K x H x W net array as an H x W x K image."""
        self._check_input(in_)
        out = np.array(data, dtype=np.float32).squeeze()
        if self.input_scale.get(in_) is not None:
            out /= self.input_scale[in_]
        if self.mean.get(in_) is not None:
            out += self.mean[in_]
        if self.raw_scale.get(in_) is not None:
            out /= self.raw_scale[in_]
        if in_ in self.channel_swap:
            out = out[np.argsort(self.channel_swap[in_]), :, :]
        if in_ in self.transpose:
            out = out.transpose(np.argsort(self.transpose[in_]))
        return out

    def set_transpose(self, in_, order) -> None:
        """Axis order, e.g. ``(2, 0, 1)`` turns H x W x K into K x H x W."""
        self._check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise ValueError(f"transpose order {tuple(order)} needs {len(self.inputs[in_]) - 1} axes "
                             f"for input {in_!r} of shape {self.inputs[in_]}")
        self.transpose[in_] = tuple(order)

    def set_channel_swap(self, in_, order) -> None:
        """Channel order after transposing, e.g. ``(2, 1, 0)`` for RGB to BGR."""
        self._check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise ValueError(f"channel swap {tuple(order)} needs {self.inputs[in_][1]} channels "
                             f"for input {in_!r}")
        self.channel_swap[in_] = tuple(order)

    def set_raw_scale(self, in_, scale) -> None:
        """Multiply the raw [0, 1] image by ``scale`` (255 for the BVLC ImageNet models), before the mean."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean) -> None:
        """The mean to subtract: per channel (K,) or per pixel (K x H x W, resized to the input)."""
        self._check_input(in_)
        mean = np.asarray(mean)
        channels, size = self.inputs[in_][1], self.inputs[in_][2:]
        if mean.ndim == 1:
            if mean.shape[0] != channels:
                raise ValueError(f"mean has {mean.shape[0]} channels, input {in_!r} has {channels}")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if mean.ndim == 2:
                mean = mean[np.newaxis]
            if mean.ndim != 3:
                raise ValueError(f"mean must be (K,), (H, W) or (K, H, W), got shape {mean.shape}")
            if mean.shape != (channels, *size):
                low, high = float(mean.min()), float(mean.max())
                span = (high - low) or 1.0
                scaled = resize_image(((mean - low) / span).transpose(1, 2, 0), size)
                mean = scaled.transpose(2, 0, 1) * span + low
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale) -> None:
        """Multiply by ``scale`` after the mean is subtracted."""
        self._check_input(in_)
        self.input_scale[in_] = scale
