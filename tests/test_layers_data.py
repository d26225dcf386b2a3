"""Data layers run standalone: shapes at setup, values, phases, errors."""
from __future__ import annotations

import threading

import h5py
import numpy as np
import pytest
from gradcheck import covers, make_layer, run_layer

from dlsoft import random as dl_random
from dlsoft.backend import parse_device, to_numpy
from dlsoft.blob import Blob
from dlsoft.data.lmdb_io import LMDBWriter, array_to_datum
from dlsoft.errors import DataError, DlsoftError

def fashion(shared_caffe):
    return shared_caffe / "reference" / "fashion_lenet" / "test100_lmdb"


def data_text(source, batch=64, extra=""):
    return (f'type: "Data" top: "data" top: "label" {extra} '
            f'data_param {{ source: "{source}" backend: LMDB batch_size: {batch} }}')


@covers("Data", "reference")
def test_data_layer_reads_caffe_lmdb_in_order(shared_caffe):
    layer, _, tops = run_layer(data_text(fashion(shared_caffe), extra="transform_param { scale: 0.00390625 }"),
                               [], phase="TEST", num_tops=2)
    from dlsoft.data.lmdb_io import read_records
    records = list(read_records(fashion(shared_caffe)))
    images = np.stack([p for _, p, _ in records]).astype(np.float32) / 256
    labels = np.array([label for _, _, label in records], np.float32)
    assert tops[0].shape == (64, 1, 28, 28) and tops[1].shape == (64,)
    np.testing.assert_array_equal(tops[0].data, images[:64])
    np.testing.assert_array_equal(tops[1].data, labels[:64])
    layer.forward([], tops)  # records 64..99 then 0..27
    np.testing.assert_array_equal(tops[1].data, np.concatenate([labels[64:], labels[:28]]))
    layer.close()
    assert not layer.prefetcher._thread.is_alive()


def test_data_layer_without_label_top_and_two_readers_of_one_lmdb(shared_caffe):
    a, _, tops_a = run_layer(data_text(fashion(shared_caffe), 10).replace('top: "label"', ""), [], num_tops=1)
    b, _, tops_b = run_layer(data_text(fashion(shared_caffe), 10), [], num_tops=2)
    np.testing.assert_array_equal(tops_a[0].data, tops_b[0].data)
    a.close()
    b.forward([], tops_b)  # the shared environment stays open for the other reader
    b.close()


def test_data_layer_errors(tmp_path):
    with pytest.raises(DataError, match=r"layer 'data' \(type Data\): LMDB not found: .*nodb"):
        run_layer(data_text(tmp_path / "nodb"), [], num_tops=2)
    with pytest.raises(DataError, match="LevelDB not found|needs the plyvel package"):
        run_layer(f'type: "Data" data_param {{ source: "{tmp_path}" batch_size: 2 backend: LEVELDB }}', [], num_tops=2)
    with pytest.raises(DataError, match="unknown built-in source 'builtin:cifar/train'"):
        run_layer('type: "Data" data_param { source: "builtin:cifar/train" batch_size: 2 }', [], num_tops=2)
    with LMDBWriter(tmp_path / "mixed") as db:
        db.put("00000000", array_to_datum(np.zeros((1, 4, 4), np.uint8), 1))
        db.put("00000001", array_to_datum(np.zeros((1, 5, 4), np.uint8), 2))
    layer, _, tops = run_layer(data_text(tmp_path / "mixed", 1), [], num_tops=2)  # record 0 is fine
    with pytest.raises(DataError, match=r"layer 'data'.*key '00000001'.*\(1, 5, 4\).*expects \(1, 4, 4\)"):
        layer.forward([], tops)
        layer.forward([], tops)
    layer.close()


def test_data_layer_label_out_of_range(tmp_path):
    with LMDBWriter(tmp_path / "db") as db:
        db.put("00000000", array_to_datum(np.zeros((1, 2, 2), np.uint8), 1 << 30))
    layer, _, tops = make_layer(data_text(tmp_path / "db", 1)), None, [Blob(), Blob()]
    layer.setup([], tops)
    with pytest.raises(DataError, match="key '00000000': label 1073741824 is out of range"):
        layer.forward([], tops)
    layer.close()


def test_worker_failure_is_one_line_error_and_no_thread_leaks(shared_caffe):
    before = threading.active_count()
    layer, _, tops = run_layer(data_text(fashion(shared_caffe), 8), [], num_tops=2)

    def broken(arrays):
        raise RuntimeError("simulated decoder crash")
    layer.prefetcher.source.fill = broken
    with pytest.raises(DataError) as info:
        for _ in range(10):
            layer.forward([], tops)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("layer 'data' (type Data): RuntimeError: simulated decoder crash")
    layer.close()
    assert threading.active_count() == before


def test_builtin_digits_through_prefetch():
    layer, _, tops = run_layer('type: "Data" top: "data" top: "label" transform_param { scale: 0.00390625 } '
                               'data_param { source: "builtin:digits/test" batch_size: 100 prefetch: 2 }',
                               [], phase="TEST", num_tops=2)
    from dlsoft.data.digits import load_digits
    images, labels = load_digits("test")
    assert tops[0].shape == (100, 1, 28, 28)
    np.testing.assert_array_equal(tops[0].data, images[:100] / np.float32(256))
    np.testing.assert_array_equal(tops[1].data, labels[:100])
    seen = [tops[1].data.copy()]
    for _ in range(10):
        layer.forward([], tops)
        seen.append(tops[1].data.copy())
    np.testing.assert_array_equal(np.concatenate(seen[:10]), labels)
    np.testing.assert_array_equal(seen[10], labels[:100])  # wrapped to the start
    layer.close()


@covers("ImageData", "reference")
def test_imagedata_layer_values_and_errors(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 4, 5, 3)).astype(np.uint8)
    for i, p in enumerate(pixels):
        Image.fromarray(p, "RGB").save(tmp_path / f"{i}.png")
    (tmp_path / "list.txt").write_text("".join(f"{i}.png {i + 4}\n" for i in range(3)))
    text = (f'type: "ImageData" top: "data" top: "label" transform_param {{ mean_value: 5 }} '
            f'image_data_param {{ source: "{tmp_path / "list.txt"}" root_folder: "{tmp_path}/" batch_size: 2 }}')
    layer, _, tops = run_layer(text, [], phase="TEST", num_tops=2)
    bgr = pixels[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32)
    np.testing.assert_array_equal(tops[0].data, bgr[:2] - 5)
    np.testing.assert_array_equal(tops[1].data, [4, 5])
    layer.close()
    gray, _, gray_tops = run_layer(text.replace("batch_size: 2", "batch_size: 2 is_color: false"), [], num_tops=2)
    assert gray_tops[0].shape == (2, 1, 4, 5)
    gray.close()
    (tmp_path / "2.png").write_bytes(b"corrupt")
    layer, _, tops = run_layer(text, [], phase="TEST", num_tops=2)
    with pytest.raises(DataError, match=r"layer 'imagedata' \(type ImageData\): cannot read image .*2.png"):
        layer.forward([], tops)
    layer.close()
    with pytest.raises(DataError, match="image list file not found"):
        run_layer(text.replace("list.txt", "missing.txt"), [], num_tops=2)


def test_imagedata_shuffle_is_seeded(tmp_path):
    from PIL import Image
    for i in range(6):
        Image.new("L", (2, 2), color=i * 10).save(tmp_path / f"{i}.png")
    (tmp_path / "list.txt").write_text("".join(f"{i}.png {i}\n" for i in range(6)))
    text = (f'type: "ImageData" image_data_param {{ source: "{tmp_path / "list.txt"}" '
            f'root_folder: "{tmp_path}/" batch_size: 6 shuffle: true is_color: false }}')
    runs = []
    for _ in range(2):
        layer, _, tops = run_layer(text, [], num_tops=2)
        runs.append(tops[1].data.copy())
        layer.close()
    np.testing.assert_array_equal(runs[0], runs[1])
    assert sorted(runs[0]) == list(range(6)) and runs[0].tolist() != list(range(6))


def write_h5(path, data, label):
    with h5py.File(path, "w") as f:
        f["data"] = data
        f["label"] = label


@covers("HDF5Data", "reference")
def test_hdf5data_reads_files_in_order(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((7, 2, 3)).astype(np.float32)
    label = np.arange(7, dtype=np.float32)
    (tmp_path / "sub").mkdir()
    write_h5(tmp_path / "sub" / "a.h5", data[:4], label[:4])
    write_h5(tmp_path / "b.h5", data[4:], label[4:])
    (tmp_path / "sub" / "list.txt").write_text("a.h5\n" + str(tmp_path / "b.h5") + "\n")
    monkeypatch.chdir(tmp_path)
    text = 'type: "HDF5Data" top: "data" top: "label" hdf5_data_param { source: "sub/list.txt" batch_size: 5 }'
    layer, _, tops = run_layer(text, [])
    assert tops[0].shape == (5, 2, 3) and tops[1].shape == (5,)
    np.testing.assert_array_equal(tops[0].data, data[:5])
    layer.forward([], tops)
    np.testing.assert_array_equal(tops[1].data, [5, 6, 0, 1, 2])
    layer.close()
    with pytest.raises(DataError, match="HDF5 file nope.h5 listed in .*not found"):
        (tmp_path / "bad.txt").write_text("nope.h5\n")
        run_layer(text.replace("sub/list.txt", "bad.txt"), [])
    with pytest.raises(DataError, match="no dataset 'labels'"):
        run_layer(text.replace('top: "label"', 'top: "labels"'), [])


@covers("MemoryData", "reference")
def test_memorydata_layer():
    text = 'type: "MemoryData" top: "data" top: "label" memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 }'
    layer, tops = make_layer(text), [Blob(), Blob()]
    layer.setup([], tops)
    with pytest.raises(DataError, match="call set_input_arrays"):
        layer.forward([], tops)
    data = np.arange(24, dtype=np.float32).reshape(4, 1, 2, 3)
    layer.set_input_arrays(data, np.array([7, 8, 9, 10]))
    layer.forward([], tops)
    np.testing.assert_array_equal(tops[0].data, data[:2])
    layer.forward([], tops)
    layer.forward([], tops)
    np.testing.assert_array_equal(tops[1].data, [7, 8])
    with pytest.raises(DataError, match=r"layer 'memorydata'.*shape \(4, 1, 3, 2\) does not match .*\(N, 1, 2, 3\)"):
        layer.set_input_arrays(data.reshape(4, 1, 3, 2), np.zeros(4))
    with pytest.raises(DataError, match="multiple of batch_size 2"):
        layer.set_input_arrays(data[:3], np.zeros(3))


@covers("DummyData", "reference")
def test_dummydata_layer():
    text = ('type: "DummyData" top: "a" top: "b" dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 4 } '
            'data_filler { type: "constant" value: 1.5 } data_filler { type: "uniform" min: 2 max: 3 } }')
    layer, _, tops = run_layer(text, [])
    np.testing.assert_array_equal(tops[0].data, np.full((2, 3), 1.5))
    first = tops[1].data.copy()
    assert tops[1].shape == (4,) and ((first >= 2) & (first <= 3)).all()
    layer.forward([], tops)
    assert not np.array_equal(first, tops[1].data)  # non-constant fillers redraw each forward
    _, _, legacy = run_layer('type: "DummyData" dummy_data_param { num: 2 channels: 3 height: 4 width: 5 }', [])
    assert legacy[0].shape == (2, 3, 4, 5) and not legacy[0].data.any()
    with pytest.raises(DlsoftError, match="2 shapes for 3 tops"):
        run_layer('type: "DummyData" dummy_data_param { shape { dim: 1 } shape { dim: 2 } }', [], num_tops=3)


def test_prefetch_depth_legacy_transform_fields_and_rand_skip(shared_caffe):
    text = data_text(fashion(shared_caffe), 4).replace("batch_size: 4", "batch_size: 4 prefetch: 2 scale: 0.5")
    layer, _, tops = run_layer(text, [], phase="TEST", num_tops=2)
    reference, _, ref_tops = run_layer(data_text(fashion(shared_caffe), 4), [], phase="TEST", num_tops=2)
    assert layer.prefetcher.depth == 2
    np.testing.assert_array_equal(tops[0].data, ref_tops[0].data * 0.5)  # data_param.scale honoured
    layer.close()
    skipped, _, skip_tops = run_layer(text.replace("prefetch: 2", "rand_skip: 50"), [], phase="TRAIN", num_tops=2)
    assert not np.array_equal(skip_tops[1].data, ref_tops[1].data)  # TRAIN starts at a random record
    skipped.close()
    reference.close()


@covers("Data", "gpu")
@covers("DummyData", "gpu")
@pytest.mark.gpu
@pytest.mark.parametrize("text", [
    ('type: "Data" transform_param { scale: 0.00390625 mirror: true crop_size: 24 } '
     'data_param { source: "builtin:digits/train" batch_size: 32 }'),
    'type: "DummyData" dummy_data_param { shape { dim: 3 dim: 4 } data_filler { type: "gaussian" } }',
])
def test_gpu_matches_cpu(text):
    """The GPU path (pinned staging, copy stream, consumed events) gives the CPU batches."""
    cpu, _, cpu_tops = run_layer(text, [], device="cpu", num_tops=2)
    gpu, _, gpu_tops = run_layer(text, [], device="gpu", num_tops=2)
    for step in range(6):  # more batches than prefetch slots: the slots are reused
        for c, g in zip(cpu_tops, gpu_tops):
            np.testing.assert_allclose(to_numpy(g.data), c.data, rtol=1e-6)
        for layer, tops in ((cpu, cpu_tops), (gpu, gpu_tops)):
            dl_random.set_seed(step)  # DummyData redraws from the process generator: the same draws for both
            layer.forward([], tops)
    cpu.close()
    gpu.close()


def test_memorydata_label_count_must_match():
    layer = make_layer('type: "MemoryData" memory_data_param { batch_size: 2 channels: 1 height: 1 width: 1 }')
    tops = [Blob(), Blob()]
    layer.setup([], tops)
    with pytest.raises(DataError, match="2 images but 3 labels"):
        layer.set_input_arrays(np.zeros((2, 1, 1, 1)), np.zeros(3))


@pytest.mark.gpu
def test_gpu_file_and_memory_sources_match_cpu(tmp_path):
    """ImageData, HDF5Data and MemoryData deliver the CPU batches on the GPU too."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for i, p in enumerate(rng.integers(0, 256, (3, 4, 5, 3)).astype(np.uint8)):
        Image.fromarray(p, "RGB").save(tmp_path / f"{i}.png")
    (tmp_path / "list.txt").write_text("".join(f"{i}.png {i + 4}\n" for i in range(3)))
    write_h5(tmp_path / "a.h5", rng.standard_normal((5, 2, 3)).astype(np.float32), np.arange(5, dtype=np.float32))
    (tmp_path / "h5list.txt").write_text(str(tmp_path / "a.h5") + "\n")
    texts = [(f'type: "ImageData" top: "data" top: "label" transform_param {{ mean_value: 5 mirror: true }} '
              f'image_data_param {{ source: "{tmp_path / "list.txt"}" root_folder: "{tmp_path}/" batch_size: 2 }}'),
             f'type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ source: "{tmp_path / "h5list.txt"}" '
             'batch_size: 2 }']
    for text in texts:
        cpu, _, cpu_tops = run_layer(text, [], device="cpu", num_tops=2)
        gpu, _, gpu_tops = run_layer(text, [], device="gpu", num_tops=2)
        for _ in range(4):
            for c, g in zip(cpu_tops, gpu_tops):
                np.testing.assert_array_equal(g.data.get(), c.data)
            cpu.forward([], cpu_tops)
            gpu.forward([], gpu_tops)
        cpu.close()
        gpu.close()
    data = rng.standard_normal((4, 1, 2, 3)).astype(np.float32)
    text = 'type: "MemoryData" top: "data" top: "label" memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 }'
    layer, tops = make_layer(text, device=parse_device("gpu")), [Blob(device=parse_device("gpu")) for _ in range(2)]
    layer.setup([], tops)
    layer.set_input_arrays(data, np.array([7, 8, 9, 10]))
    for start in (0, 2, 0):
        layer.forward([], tops)
        np.testing.assert_array_equal(tops[0].data.get(), data[start:start + 2])
        np.testing.assert_array_equal(tops[1].data.get(), [7, 8, 9, 10][start:start + 2])
