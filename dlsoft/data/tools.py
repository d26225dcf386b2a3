"""Dataset tools (the functions behind ``dlsoft convert-imageset``, ``compute-mean``,
``convert-mnist``), writing and reading LMDBs in Caffe's format, so Caffe reads what
they write and they read what Caffe wrote.
"""
from __future__ import annotations

import gzip
import logging
import os
import struct
from pathlib import Path

import numpy as np

from .. import random as dl_random
from ..errors import DataError, one_line
from ..protos import caffe_pb2
from .images import decode_image, encode_image, read_image
from .lmdb_io import LMDBWriter, array_to_datum, read_records
from .sources import read_list_file

log = logging.getLogger(__name__)

_NATIVE_COLOR_MODES = ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV")


def convert_imageset(root: str, list_file: str, db_path: str, resize_height: int = 0, resize_width: int = 0,
                     shuffle: bool = False, gray: bool = False, encoded: bool = False,
                     encode_type: str = "") -> int:
    """Caffe's convert_imageset: the images of ``list_file`` (``path label`` lines) into an LMDB.

    Keys are ``%08d_<path>``. Images are stored as raw BGR (or grey) uint8 Datums, resized
    when both sizes are given; ``encoded`` stores JPEG/PNG bytes instead: the file itself
    when it needs no change and its extension matches ``encode_type`` (default: the file's
    own type), else re-encoded. ``shuffle`` permutes the list with the seeded generator.
    Returns the number of records written. An unreadable image is an error naming it.
    """
    entries = read_list_file(list_file)
    if shuffle:
        order = dl_random.rng().permutation(len(entries))
        entries = [entries[i] for i in order]
    is_color = not gray
    with LMDBWriter(db_path) as db:
        for index, (name, label) in enumerate(entries):
            path = os.path.join(root, name) if root else name
            datum = _image_datum(path, label, resize_height, resize_width, is_color, encoded, encode_type)
            db.put(f"{index:08d}_{name}", datum)
            if (index + 1) % 1000 == 0:
                log.info("processed %d files", index + 1)
    log.info("wrote %d images to %s", len(entries), db_path)
    return len(entries)


def _image_datum(path, label, height, width, is_color, encoded, encode_type):
    pixels = read_image(path, height, width, is_color)
    if not encoded:
        return array_to_datum(pixels, label)
    extension = Path(path).suffix.lower().lstrip(".")
    fmt = (encode_type or extension).lower()
    same_type = {fmt, extension} <= {"jpg", "jpeg"} or fmt == extension
    with open(path, "rb") as f:
        raw = f.read()
    native_color = decode_image(raw, None, path).shape[0] == 3
    if same_type and not (height and width) and native_color == is_color:
        data = raw  # the file already is what we would encode
    else:
        data = encode_image(pixels, fmt)
    return caffe_pb2.Datum(data=data, label=int(label), encoded=True)


def compute_image_mean(db_path: str, out_binaryproto: str) -> int:
    """Caffe's compute_image_mean: the per-pixel mean of every record, as a (1, C, H, W) BlobProto.

    Written with Caffe's legacy ``num/channels/height/width`` dimensions, as Caffe does.
    Returns the number of records averaged.
    """
    total, count = None, 0
    for key, pixels, _ in read_records(db_path):
        if total is None:
            total = np.zeros(pixels.shape, dtype=np.float64)
        elif pixels.shape != total.shape:
            raise DataError(f"LMDB {db_path} key {key!r}: shape {pixels.shape} differs from the "
                            f"first record's {total.shape}")
        total += pixels
        count += 1
    mean = (total / count).astype(np.float32)
    c, h, w = mean.shape
    blob = caffe_pb2.BlobProto(num=1, channels=c, height=h, width=w)
    blob.data.extend(mean.ravel().tolist())
    from ..fileio import atomic_write_bytes

    atomic_write_bytes(out_binaryproto, blob.SerializeToString())
    for channel, value in enumerate(mean.reshape(c, -1).mean(axis=1)):
        log.info("mean value channel %d: %g", channel, value)
    log.info("averaged %d records of %s into %s", count, db_path, out_binaryproto)
    return count


def read_idx(path: str, limit: int | None = None) -> np.ndarray:
    """An MNIST idx file (plain or gzipped) as a uint8 array: (N, rows, cols) images or (N,) labels."""
    if not os.path.isfile(path):
        raise DataError(f"idx file not found: {path}")
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rb") as f:
            magic = struct.unpack(">i", f.read(4))[0]
            if magic not in (2049, 2051):
                raise DataError(f"{path} is not an MNIST idx file (magic number {magic}, "
                                "expected 2051 for images or 2049 for labels)")
            dims = struct.unpack(f">{magic - 2048}i", f.read(4 * (magic - 2048)))
            n = dims[0] if limit is None else min(dims[0], limit)
            size = int(np.prod(dims[1:], dtype=np.int64))
            data = np.frombuffer(f.read(n * size), dtype=np.uint8)
    except (OSError, EOFError, struct.error) as exc:
        raise DataError(f"cannot read idx file {path}: {one_line(exc)}") from None
    if data.size != n * size:
        raise DataError(f"idx file {path} is truncated: {data.size} of {n * size} bytes")
    return data.reshape((n, *dims[1:]))


def convert_mnist(images_idx: str, labels_idx: str, db_path: str, limit: int | None = None) -> int:
    """Caffe's convert_mnist_data: MNIST-format idx files into an LMDB of 1xHxW uint8 Datums.

    Keys ``%08d``. ``limit`` converts only the first images. Returns the record count.
    """
    images = read_idx(images_idx, limit)
    labels = read_idx(labels_idx, limit)
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"expected an images idx file and a labels idx file, got {images_idx} "
                        f"(shape {images.shape}) and {labels_idx} (shape {labels.shape})")
    if len(images) != len(labels):
        raise DataError(f"{images_idx} holds {len(images)} images but {labels_idx} {len(labels)} labels")
    with LMDBWriter(db_path) as db:
        for index, (image, label) in enumerate(zip(images, labels)):
            db.put(f"{index:08d}", array_to_datum(image[None], int(label)))
    log.info("wrote %d images (%dx%d) to %s", len(images), images.shape[1], images.shape[2], db_path)
    return len(images)
