"""Datum records and LMDBs in Caffe's format: the real Caffe LMDB, convert_mnist, errors."""
from __future__ import annotations

import gzip
from pathlib import Path

import lmdb
import numpy as np
import pytest

from dlsoft.data.images import encode_image
from dlsoft.data.lmdb_io import (
    LMDBReader,
    LMDBWriter,
    array_to_datum,
    datum_to_array,
    read_records,
)
from dlsoft.data.tools import compute_image_mean, convert_mnist, read_idx
from dlsoft.errors import DataError
from dlsoft.netdef.io import read_blob
from dlsoft.protos import caffe_pb2

FASHION = Path("/usr/share/datasets/fashion-mnist")


def caffe_lmdb(shared_caffe) -> Path:
    return shared_caffe / "reference" / "fashion_lenet" / "test100_lmdb"


def test_reads_real_caffe_lmdb(shared_caffe):
    records = list(read_records(caffe_lmdb(shared_caffe)))
    assert len(records) == 100
    assert [key for key, _, _ in records] == [f"{i:08d}" for i in range(100)]
    assert all(pixels.shape == (1, 28, 28) and pixels.dtype == np.uint8 for _, pixels, _ in records)
    labels = np.array([label for _, _, label in records])
    assert set(labels) <= set(range(10)) and len(set(labels)) == 10
    assert labels[:5].tolist() == [9, 2, 1, 1, 6]  # Fashion-MNIST test set: ankle boot, pullover, trouser...
    if (FASHION / "t10k-labels-idx1-ubyte.gz").exists():
        assert labels.tolist() == read_idx(str(FASHION / "t10k-labels-idx1-ubyte.gz"), 100).tolist()
        images = read_idx(str(FASHION / "t10k-images-idx3-ubyte.gz"), 100)
        np.testing.assert_array_equal(np.stack([p[0] for _, p, _ in records]), images)


def test_reader_wraps_around(shared_caffe):
    reader = LMDBReader(caffe_lmdb(shared_caffe))
    keys = [reader.read_keyed()[0] for _ in range(102)]
    reader.close()
    assert keys[99:] == ["00000099", "00000000", "00000001"]


@pytest.mark.skipif(not (FASHION / "t10k-images-idx3-ubyte.gz").exists(), reason="fashion-mnist not installed")
def test_convert_mnist_writes_the_bytes_caffe_wrote(shared_caffe, tmp_path):
    count = convert_mnist(str(FASHION / "t10k-images-idx3-ubyte.gz"), str(FASHION / "t10k-labels-idx1-ubyte.gz"),
                          str(tmp_path / "db"), limit=100)
    assert count == 100
    ours = lmdb.open(str(tmp_path / "db"), readonly=True, lock=False)
    caffes = lmdb.open(str(caffe_lmdb(shared_caffe)), readonly=True, lock=False)
    with ours.begin() as a, caffes.begin() as b:
        assert list(a.cursor()) == list(b.cursor())
    ours.close()
    caffes.close()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    magic = 2051 if array.ndim == 3 else 2049
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    (gzip.open if gz else open)(path, "wb").write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("gz", [False, True])
def test_convert_mnist_plain_and_gz(tmp_path, gz):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (7, 5, 4)), rng.integers(0, 10, 7)
    write_idx(tmp_path / "img", images, gz)
    write_idx(tmp_path / "lab", labels, gz)
    assert convert_mnist(str(tmp_path / "img"), str(tmp_path / "lab"), str(tmp_path / "db")) == 7
    records = list(read_records(tmp_path / "db"))
    np.testing.assert_array_equal(np.stack([p for _, p, _ in records]), images[:, None])
    assert [label for _, _, label in records] == labels.tolist()


def test_convert_mnist_errors(tmp_path):
    write_idx(tmp_path / "img", np.zeros((3, 2, 2)), False)
    write_idx(tmp_path / "lab", np.zeros(4), False)
    with pytest.raises(DataError, match="3 images but .* 4 labels"):
        convert_mnist(str(tmp_path / "img"), str(tmp_path / "lab"), str(tmp_path / "db"))
    with pytest.raises(DataError, match="not found: .*nope"):
        convert_mnist(str(tmp_path / "nope"), str(tmp_path / "lab"), str(tmp_path / "db"))
    (tmp_path / "junk").write_bytes(b"\0\0\0\7hello")
    with pytest.raises(DataError, match="not an MNIST idx file"):
        read_idx(str(tmp_path / "junk"))


def test_datum_kinds_round_trip():
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (3, 4, 5)).astype(np.uint8)
    floats = rng.standard_normal((2, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(datum_to_array(array_to_datum(raw, 3)), raw)
    np.testing.assert_array_equal(datum_to_array(array_to_datum(floats, 1)), floats)
    png = caffe_pb2.Datum(data=encode_image(raw, "png"), encoded=True, label=2)
    np.testing.assert_array_equal(datum_to_array(png), raw)
    assert datum_to_array(png, is_color=False).shape == (1, 4, 5)
    jpeg = caffe_pb2.Datum(data=encode_image(raw, "jpg"), encoded=True)
    assert datum_to_array(jpeg).shape == (3, 4, 5)


def test_lmdb_errors_name_path_and_key(tmp_path):
    with pytest.raises(DataError, match="LMDB not found: .*missing_db"):
        LMDBReader(tmp_path / "missing_db")
    with LMDBWriter(tmp_path / "db") as db:
        db.put("00000000", array_to_datum(np.zeros((1, 2, 2), np.uint8), 0))
        db._txn.put(b"00000001", b"\xff\xff\xff garbage")
        db._txn.put(b"00000002", caffe_pb2.Datum(channels=1, height=2, width=2, data=b"abc").SerializeToString())
        db._txn.put(b"00000003", caffe_pb2.Datum(data=b"not a png", encoded=True).SerializeToString())
    reader = LMDBReader(tmp_path / "db")
    reader.read()
    with pytest.raises(DataError, match="key '00000001'.*corrupt"):
        reader.read()
    with pytest.raises(DataError, match="key '00000002'.*3 bytes, expected 4"):
        reader.read()
    with pytest.raises(DataError, match="cannot decode image in .*key '00000003'"):
        reader.read()
    reader.close()
    with pytest.raises(DataError, match="already exists"):
        LMDBWriter(tmp_path / "db")


def test_compute_image_mean(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (6, 3, 4, 5)).astype(np.uint8)
    with LMDBWriter(tmp_path / "db") as db:
        for i, image in enumerate(images):
            db.put(f"{i:08d}", array_to_datum(image, i))
    assert compute_image_mean(str(tmp_path / "db"), str(tmp_path / "mean.binaryproto")) == 6
    proto = caffe_pb2.BlobProto.FromString((tmp_path / "mean.binaryproto").read_bytes())
    assert (proto.num, proto.channels, proto.height, proto.width) == (1, 3, 4, 5)  # Caffe's legacy form
    np.testing.assert_allclose(read_blob(tmp_path / "mean.binaryproto")[0], images.mean(axis=0), rtol=1e-6)
