"""Data sharding: N ranks at batch B read exactly what one process reads at batch N·B.

Rank r of N takes chunks r, r+N, ... of B records of one process's stream, so batch i
of one process at N·B is the concatenation, in rank order, of every rank's batch i
(dlsoft/data/shard.py). Checked for each shardable layer, across wrap-around, with
shuffling (ImageData, HDF5Data) and random crops and mirrors (Data).
"""
from __future__ import annotations

import h5py
import numpy as np
import pytest
from gradcheck import layer_param
from PIL import Image

from dlsoft import random as dl_random
from dlsoft.blob import Blob
from dlsoft.data.shard import Shard
from dlsoft.layers import create_layer

ITERATIONS = 7


def read_batches(text: str, shard: Shard, iterations: int = ITERATIONS, arrays=None) -> list[list[np.ndarray]]:
    """``iterations`` batches of a layer set up as ``shard`` (every rank seeded alike)."""
    dl_random.set_seed(1701)
    param = layer_param(text)
    layer = create_layer(param, phase="TRAIN")
    layer.shard = shard
    tops = [Blob((), name=f"top{i}") for i in range(max(len(param.top), 2))]
    layer.setup([], tops)
    if arrays is not None:
        layer.set_input_arrays(*arrays)
    batches = []
    for _ in range(iterations):
        layer.forward([], tops)
        batches.append([top.data.copy() for top in tops])
    layer.close()
    return batches


def check_equivalent(make_text, global_batch: int, ranks: int, **kwargs) -> None:
    whole = read_batches(make_text(global_batch), Shard(0, 1), **kwargs)
    parts = [read_batches(make_text(global_batch // ranks), Shard(r, ranks), **kwargs) for r in range(ranks)]
    for i in range(ITERATIONS):
        for t in range(len(whole[i])):
            joined = np.concatenate([parts[r][i][t] for r in range(ranks)])
            np.testing.assert_array_equal(joined, whole[i][t], err_msg=f"batch {i}, top {t}")


@pytest.mark.parametrize("ranks", [2, 3])
def test_data_layer_digits_with_random_crop_and_mirror(ranks):
    def text(batch):  # 4,000 digits: 7 batches of 1,200 wrap around the source
        return ('type: "Data" top: "data" top: "label" transform_param { scale: 0.00390625 crop_size: 20 '
                f'mirror: true }} data_param {{ source: "builtin:digits/train" batch_size: {batch} rand_skip: 50 }}')
    check_equivalent(text, 1200 if ranks == 3 else 1000, ranks)


def test_data_layer_lmdb(shared_caffe):
    db = shared_caffe / "reference" / "fashion_lenet" / "test100_lmdb"

    def text(batch):  # 100 records: batches of 30 wrap around mid-batch
        return f'type: "Data" top: "data" top: "label" data_param {{ source: "{db}" backend: LMDB batch_size: {batch} }}'
    check_equivalent(text, 30, 2)


def test_imagedata_with_shuffle(tmp_path):
    for i in range(10):
        Image.new("L", (3, 2), color=i * 20).save(tmp_path / f"{i}.png")
    (tmp_path / "list.txt").write_text("".join(f"{i}.png {i}\n" for i in range(10)))

    def text(batch):  # reshuffled at every pass over the 10 images
        return (f'type: "ImageData" top: "data" top: "label" image_data_param {{ source: "{tmp_path / "list.txt"}" '
                f'root_folder: "{tmp_path}/" batch_size: {batch} shuffle: true is_color: false }}')
    check_equivalent(text, 4, 2)


def test_hdf5data_with_shuffle_over_files(tmp_path):
    rng = np.random.default_rng(0)
    names = []
    for k, rows in enumerate((5, 7, 4)):
        with h5py.File(tmp_path / f"{k}.h5", "w") as f:
            f["data"] = rng.normal(size=(rows, 2, 3)).astype(np.float32)
            f["label"] = np.arange(rows, dtype=np.float32) + 10 * k
        names.append(str(tmp_path / f"{k}.h5"))
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")

    def text(batch):
        return (f'type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ source: "{tmp_path / "list.txt"}" '
                f'batch_size: {batch} shuffle: true }}')
    check_equivalent(text, 6, 3)


def test_memorydata():
    data = np.arange(24 * 2, dtype=np.float32).reshape(24, 2, 1, 1)
    labels = np.arange(24, dtype=np.float32)

    def text(batch):
        return (f'type: "MemoryData" top: "data" top: "label" memory_data_param {{ batch_size: {batch} '
                'channels: 2 height: 1 width: 1 }')
    check_equivalent(text, 8, 2, arrays=(data, labels))


def test_shard_arithmetic():
    shard = Shard(2, 4)
    assert (shard.first_skip(8), shard.between_skip(8), shard.chunk(8)) == (16, 24, slice(16, 24))
    with pytest.raises(ValueError):
        Shard(4, 4)
