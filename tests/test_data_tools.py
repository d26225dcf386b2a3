"""convert_imageset round trip: images on disk -> LMDB -> Data layer == ImageData layer."""
from __future__ import annotations

import numpy as np
import pytest
from gradcheck import run_layer
from PIL import Image

from dlsoft.data.lmdb_io import read_records
from dlsoft.data.tools import convert_imageset
from dlsoft.errors import DataError

TRANSFORM = "transform_param { crop_size: 6 mirror: true mean_value: 100 mean_value: 110 mean_value: 120 scale: 0.01 }"


@pytest.fixture
def image_list(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(7):
        size = (8 + i, 9)  # different sizes: resizing makes them one shape
        Image.fromarray(rng.integers(0, 256, (*size, 3)).astype(np.uint8), "RGB").save(tmp_path / f"im {i}.png")
        lines.append(f"im {i}.png {i % 3}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def layer_outputs(text, batches=3, phase="TRAIN"):
    layer, _, tops = run_layer(text, [], phase=phase, num_tops=2, seed=11)
    out = [(tops[0].data.copy(), tops[1].data.copy())]
    for _ in range(batches - 1):
        layer.forward([], tops)
        out.append((tops[0].data.copy(), tops[1].data.copy()))
    layer.close()
    return out


@pytest.mark.parametrize("encoded", [False, True])
def test_imageset_lmdb_data_layer_gives_imagedata_pixels(image_list, encoded):
    db = image_list / "db"
    count = convert_imageset(str(image_list) + "/", str(image_list / "list.txt"), str(db),
                             resize_height=10, resize_width=8, encoded=encoded, encode_type="png")
    assert count == 7
    keys = [key for key, _, _ in read_records(db)]
    assert keys[0] == "00000000_im 0.png" and len(keys) == 7
    via_lmdb = layer_outputs(f'type: "Data" {TRANSFORM} data_param {{ source: "{db}" backend: LMDB batch_size: 3 }}')
    via_images = layer_outputs(f'type: "ImageData" {TRANSFORM} image_data_param {{ source: "{image_list / "list.txt"}" '
                               f'root_folder: "{image_list}/" new_height: 10 new_width: 8 batch_size: 3 }}')
    assert via_lmdb[0][0].shape == (3, 3, 6, 6)
    for (data_a, label_a), (data_b, label_b) in zip(via_lmdb, via_images):
        np.testing.assert_array_equal(data_a, data_b)
        np.testing.assert_array_equal(label_a, label_b)
    assert via_lmdb[2][1].tolist() == [0, 0, 1]  # records 6, 0, 1: the source wraps around


def test_gray_raw_records_hold_the_resized_pixels(image_list):
    convert_imageset(str(image_list), str(image_list / "list.txt"), str(image_list / "db"), 5, 4, gray=True)
    records = list(read_records(image_list / "db"))
    assert {pixels.shape for _, pixels, _ in records} == {(1, 5, 4)}
    expect = np.asarray(Image.open(image_list / "im 3.png").convert("L").resize((4, 5), Image.BILINEAR))
    np.testing.assert_array_equal(records[3][1][0], expect)
    assert [label for _, _, label in records] == [0, 1, 2, 0, 1, 2, 0]


def test_encoded_without_resize_stores_the_file_itself(image_list):
    convert_imageset(str(image_list), str(image_list / "list.txt"), str(image_list / "db"), encoded=True)
    import lmdb

    from dlsoft.protos import caffe_pb2
    env = lmdb.open(str(image_list / "db"), readonly=True, lock=False)
    with env.begin() as txn:
        datum = caffe_pb2.Datum.FromString(txn.get(b"00000002_im 2.png"))
    env.close()
    assert datum.encoded and datum.data == (image_list / "im 2.png").read_bytes() and datum.label == 2


def test_shuffle_is_seeded(image_list, tmp_path):
    from dlsoft import random as dl_random
    orders = []
    for name in ("a", "b"):
        dl_random.set_seed(3)
        convert_imageset(str(image_list), str(image_list / "list.txt"), str(tmp_path / name), 4, 4, shuffle=True)
        orders.append([key for key, _, _ in read_records(tmp_path / name)])
    assert orders[0] == orders[1] and [k[9:] for k in orders[0]] != [f"im {i}.png" for i in range(7)]


def test_unreadable_image_and_bad_list_are_named(image_list):
    (image_list / "im 4.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot read image .*im 4.png"):
        convert_imageset(str(image_list) + "/", str(image_list / "list.txt"), str(image_list / "db"))
    (image_list / "bad.txt").write_text("im 0.png 1\nim 1.png x\n")
    with pytest.raises(DataError, match=r"bad.txt:2: .*integer label"):
        convert_imageset(str(image_list), str(image_list / "bad.txt"), str(image_list / "db2"))
    (image_list / "huge.txt").write_text("im 0.png 99999999\n")
    with pytest.raises(DataError, match=r"huge.txt:1: label 99999999 is out of range"):
        convert_imageset(str(image_list), str(image_list / "huge.txt"), str(image_list / "db3"))
    with pytest.raises(DataError, match="image list file not found: .*nolist"):
        convert_imageset(str(image_list), str(image_list / "nolist.txt"), str(image_list / "db4"))
