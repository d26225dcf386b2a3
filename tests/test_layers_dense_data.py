"""DenseImageData (SegNet / ENet) and ImageSegData (DeepLab / PSPNet): image + label-map
pairs from real PNG files, checked against the pixels written (crop, pad, mirror, means)."""
from __future__ import annotations

import numpy as np
import pytest
from gradcheck import covers, run_layer
from PIL import Image

from dlsoft.backend import to_numpy
from dlsoft.errors import DataError

GPU_COVERS = ("DenseImageData", "ImageSegData")


def write_pairs(folder, count=3, size=(6, 8), palette=True, seed=0):
    """count RGB images and palette label PNGs; returns the list file and the BGR/label arrays."""
    rng = np.random.default_rng(seed)
    lines, images, labels = [], [], []
    for i in range(count):
        rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        label = rng.integers(0, 5, size, dtype=np.uint8)
        Image.fromarray(rgb).save(folder / f"img{i}.png")
        image = Image.fromarray(label, "P" if palette else "L")
        if palette:  # a VOC-like palette: indices must be read as stored, not as luminance
            image.putpalette([v for c in range(256) for v in (c * 7 % 256, c * 3 % 256, 255 - c)])
        image.save(folder / f"lab{i}.png")
        lines.append(f"img{i}.png lab{i}.png")
        images.append(rgb[:, :, ::-1].transpose(2, 0, 1).astype(np.float32))
        labels.append(label[None].astype(np.float32))
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return str(folder / "list.txt"), np.stack(images), np.stack(labels)


def dense(folder, params, transform=""):
    return (f'type: "DenseImageData" top: "data" top: "label" transform_param {{ {transform} }} '
            f'dense_image_data_param {{ source: "{folder}/list.txt" root_folder: "{folder}/" {params} }}')


def seg(folder, params, transform=""):
    return (f'type: "ImageSegData" top: "data" top: "label" transform_param {{ {transform} }} '
            f'image_data_param {{ source: "{folder}/list.txt" root_folder: "{folder}/" {params} }}')


@covers("DenseImageData", "reference")
def test_dense_image_data_reads_pairs_with_means_and_scale(tmp_path):
    _, images, labels = write_pairs(tmp_path)
    layer, _, tops = run_layer(dense(tmp_path, "batch_size: 2", "mean_value: 10 mean_value: 20 mean_value: 30 "
                                     "scale: 0.5"), [], phase="TEST")
    mean = np.array([10, 20, 30], np.float32).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(tops[0].data, (images[:2] - mean) * 0.5)
    np.testing.assert_array_equal(tops[1].data, labels[:2])
    layer.forward([], tops)                          # wraps around: image 2, then 0
    np.testing.assert_array_equal(tops[1].data, labels[[2, 0]])
    layer.close()


def test_dense_image_data_crops_centred_at_test_and_label_divide_factor(tmp_path):
    _, images, labels = write_pairs(tmp_path, count=1)
    layer, _, tops = run_layer(dense(tmp_path, "batch_size: 1 crop_height: 4 crop_width: 4"), [], phase="TEST")
    np.testing.assert_array_equal(tops[0].data[0], images[0][:, 1:5, 2:6])
    np.testing.assert_array_equal(tops[1].data[0], labels[0][:, 1:5, 2:6])
    layer.close()
    layer, _, tops = run_layer(dense(tmp_path, "batch_size: 1 new_height: 6 new_width: 8 label_divide_factor: 2"),
                               [], phase="TEST")
    assert tops[0].shape == (1, 3, 6, 8) and tops[1].shape == (1, 1, 3, 4)   # ENet's encoder labels
    assert set(np.unique(tops[1].data)) <= set(range(5))                      # nearest: still class ids
    layer.close()


def test_dense_image_data_train_crop_and_mirror_move_image_and_label_together(tmp_path):
    _, images, labels = write_pairs(tmp_path, count=1, size=(7, 9))
    layer, _, tops = run_layer(dense(tmp_path, "batch_size: 1 crop_height: 5 crop_width: 5 mirror: true"), [])
    for _ in range(6):
        layer.forward([], tops)
        image, label = tops[0].data[0], tops[1].data[0]
        for flip in (False, True):
            source_image = images[0][:, :, ::-1] if flip else images[0]
            source_label = labels[0][:, :, ::-1] if flip else labels[0]
            hits = [(y, x) for y in range(3) for x in range(5)
                    if np.array_equal(source_image[:, y:y + 5, x:x + 5], image)]
            if hits:
                y, x = hits[0]
                np.testing.assert_array_equal(source_label[:, y:y + 5, x:x + 5], label)
                break
        else:
            raise AssertionError("the crop is no window of the image or its mirror")
    layer.close()


@covers("ImageSegData", "reference")
def test_image_seg_data_pads_with_ignore_label_then_crops(tmp_path):
    _, images, labels = write_pairs(tmp_path, count=1, size=(5, 6), palette=False)
    layer, _, tops = run_layer(seg(tmp_path, "batch_size: 1 label_type: PIXEL", "crop_size: 8 mean_value: 100"),
                               [], phase="TEST")
    expected_image = np.zeros((3, 8, 8), np.float32)
    expected_image[:, :5, :6] = images[0] - 100
    expected_label = np.full((1, 8, 8), 255, np.float32)
    expected_label[:, :5, :6] = labels[0]
    np.testing.assert_array_equal(tops[0].data[0], expected_image)
    np.testing.assert_array_equal(tops[1].data[0], expected_label)
    layer.close()


def test_image_seg_data_scale_factors_at_train(tmp_path):
    write_pairs(tmp_path, count=1, size=(8, 8))
    layer, _, tops = run_layer(seg(tmp_path, "batch_size: 1", "crop_size: 8 scale_factors: 0.5"), [])
    label = tops[1].data[0]
    assert (label[:, 4:, :] == 255).all() and (label[:, :4, :4] < 5).all()   # halved, then padded
    layer.close()


def test_missing_files_are_one_line_data_errors(tmp_path):
    with pytest.raises(DataError, match="list file not found"):
        run_layer(dense(tmp_path, "batch_size: 1"), [])
    write_pairs(tmp_path, count=1)
    (tmp_path / "lab0.png").unlink()
    with pytest.raises(DataError, match="label image not found"):
        run_layer(seg(tmp_path, "batch_size: 1"), [])


@covers("DenseImageData", "gpu")
@covers("ImageSegData", "gpu")
@pytest.mark.gpu
def test_dense_data_layers_gpu_match_cpu(tmp_path):
    """Both layers deliver the CPU batches on the GPU (more batches than prefetch slots)."""
    write_pairs(tmp_path)
    for text in (dense(tmp_path, "batch_size: 2 mirror: true"), seg(tmp_path, "batch_size: 2", "crop_size: 7")):
        cpu, _, cpu_tops = run_layer(text, [], device="cpu")
        gpu, _, gpu_tops = run_layer(text, [], device="gpu")
        for _ in range(6):
            for c, g in zip(cpu_tops, gpu_tops):
                np.testing.assert_array_equal(to_numpy(g.data), c.data)
            cpu.forward([], cpu_tops)
            gpu.forward([], gpu_tops)
        cpu.close()
        gpu.close()
