"""WindowData (R-CNN's window files): the crop of a window (warp, context padding, square,
mirror) against OpenCV's resize and Caffe's padding arithmetic worked by hand, the
fg/bg composition of a batch and its sampling."""
from __future__ import annotations

import numpy as np
import pytest
from gradcheck import covers, run_layer
from PIL import Image

from dlsoft.backend import to_numpy
from dlsoft.errors import DataError



def write_window_file(folder, image, windows):
    Image.fromarray(np.ascontiguousarray(image[::-1].transpose(1, 2, 0))).save(folder / "im.png")
    lines = ["# 0", "im.png", "3", str(image.shape[1]), str(image.shape[2]), str(len(windows))]
    lines += [" ".join(str(v) for v in w) for w in windows]
    (folder / "windows.txt").write_text("\n".join(lines) + "\n")


def text(folder, batch, extra="", transform="crop_size: 10"):
    return (f'type: "WindowData" top: "data" top: "label" transform_param {{ {transform} }} '
            f'window_data_param {{ source: "{folder}/windows.txt" root_folder: "{folder}/" batch_size: {batch} '
            f'fg_fraction: 1 {extra} }}')


@covers("WindowData", "reference")
def test_warp_crop_matches_opencv_resize(tmp_path):
    cv2 = pytest.importorskip("cv2")
    image = np.random.default_rng(0).integers(0, 256, (3, 24, 30), dtype=np.uint8)
    write_window_file(tmp_path, image, [(3, 0.9, 4, 2, 21, 15)])     # x1 y1 x2 y2, inclusive
    layer, _, tops = run_layer(text(tmp_path, 1, transform="crop_size: 10 mean_value: 10 scale: 0.5"), [],
                               phase="TEST")
    region = image[:, 2:16, 4:22].transpose(1, 2, 0)
    expected = (cv2.resize(region, (10, 10), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1) - 10.0) * 0.5
    assert tops[1].data[0] == 3
    np.testing.assert_allclose(tops[0].data[0], expected, atol=1.01 * 0.5)  # OpenCV rounds its fixed-point weights: a grey level
    layer.close()


@pytest.mark.parametrize("mirror, columns", [(False, slice(2, 10)), (True, slice(0, 8))])
def test_context_pad_leaves_the_outside_zero(tmp_path, mirror, columns):
    # crop 10, context_pad 2: scale 10/6; box 0..5 grows to -2..8 (11 wide), clipped to 0..8: the
    # image part is round(9·10/11) = 8 wide at round(2·10/11) = 2 (from the right when mirrored)
    image = np.full((3, 20, 20), 100, np.uint8)
    write_window_file(tmp_path, image, [(1, 1.0, 0, 0, 5, 5)])
    transform = "crop_size: 10" + (" mirror: true" if mirror else "")
    layer, _, tops = run_layer(text(tmp_path, 1, "context_pad: 2", transform), [], phase="TEST", seed=4)
    for _ in range(4):   # a mirror coin is drawn per window; look at batches until this case shows
        crop = tops[0].data[0]
        inside = np.zeros((10, 10), bool)
        inside[2:10, columns] = True
        if mirror and (crop[0, 2:10, 0:8] == 100).all() or not mirror:
            break
        layer.forward([], tops)
    np.testing.assert_array_equal(crop[:, inside], 100)
    np.testing.assert_array_equal(crop[:, ~inside], 0)
    layer.close()


def test_square_mode_makes_the_box_square_first(tmp_path):
    image = np.zeros((3, 30, 30), np.uint8)
    image[:, 10:20, 5:25] = 200                   # a 20×10 box, padded to 20×20 of which half is the box
    write_window_file(tmp_path, image, [(2, 1.0, 5, 10, 24, 19)])
    layer, _, tops = run_layer(text(tmp_path, 1, 'crop_mode: "square"', "crop_size: 20"), [], phase="TEST")
    column = tops[0].data[0, 0, :, 10]
    assert (column[6:14] == 200).all() and (column[:4] == 0).all() and (column[16:] == 0).all()
    layer.close()


def test_batches_hold_background_then_foreground_sampled_uniformly(tmp_path):
    image = np.random.default_rng(1).integers(0, 256, (3, 16, 16), dtype=np.uint8)
    windows = [(1, 0.8, 0, 0, 7, 7), (2, 0.6, 8, 8, 15, 15), (3, 0.4, 0, 8, 7, 15), (4, 0.1, 8, 0, 15, 7)]
    write_window_file(tmp_path, image, windows)
    layer, _, tops = run_layer(text(tmp_path, 8, "fg_fraction: 0.25", "crop_size: 4").replace("fg_fraction: 1 ", ""),
                               [])
    seen = []
    for _ in range(60):
        labels = to_numpy(tops[1].data)
        assert (labels[:6] == 0).all()            # 6 background (overlap < 0.5: windows 3 and 4, class 0)
        assert set(labels[6:]) <= {1, 2}          # then 2 foreground (overlap ≥ 0.5)
        seen += list(labels[6:])
        layer.forward([], tops)
    assert abs(seen.count(1) / len(seen) - 0.5) < 0.12
    layer.close()


def test_window_file_errors(tmp_path):
    with pytest.raises(DataError, match="window file not found"):
        run_layer(text(tmp_path, 1), [])
    (tmp_path / "windows.txt").write_text("# 0\nim.png\n3\n10\n")
    with pytest.raises(DataError, match=r"windows.txt:\d+: truncated or malformed"):
        run_layer(text(tmp_path, 1), [])
    write_window_file(tmp_path, np.zeros((3, 8, 8), np.uint8), [(1, 0.2, 0, 0, 3, 3)])
    with pytest.raises(DataError, match="no foreground windows"):
        run_layer(text(tmp_path, 1), [])


@covers("WindowData", "gpu")
@pytest.mark.gpu
def test_window_data_gpu_delivers_the_crop(tmp_path):
    image = np.full((3, 12, 12), 50, np.uint8)
    write_window_file(tmp_path, image, [(5, 1.0, 1, 1, 9, 9)])
    layer, _, tops = run_layer(text(tmp_path, 2), [], phase="TEST", device="gpu")
    np.testing.assert_array_equal(to_numpy(tops[0].data), 50)
    np.testing.assert_array_equal(to_numpy(tops[1].data), 5)
    layer.close()


def test_bvlc_pascal_finetune_window_layer_runs_with_its_own_settings(tmp_path, shared_caffe):
    """The WindowData layer of Caffe's examples/finetune_pascal_detection net, unchanged but
    for its paths and batch size: crop 227, context_pad 16, mirror, a 256×256 mean_file."""
    from google.protobuf import text_format

    from dlsoft.fileio import write_blob
    from dlsoft.protos import caffe_pb2
    net = caffe_pb2.NetParameter()
    text_format.Parse((shared_caffe / "examples/finetune_pascal_detection/pascal_finetune_trainval_test.prototxt")
                      .read_text(), net)
    layer = net.layer[0]
    assert layer.type == "WindowData" and layer.window_data_param.context_pad == 16
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (3, 300, 400), dtype=np.uint8)
    write_window_file(tmp_path, image, [(7, 0.9, 50, 40, 250, 220), (0, 0.1, 300, 200, 390, 290)])
    write_blob(np.full((1, 3, 256, 256), 100, np.float32), tmp_path / "mean.binaryproto")
    layer.window_data_param.source = str(tmp_path / "windows.txt")
    layer.window_data_param.root_folder = f"{tmp_path}/"
    layer.window_data_param.batch_size = 4
    layer.transform_param.mean_file = str(tmp_path / "mean.binaryproto")
    reader, _, tops = run_layer(text_format.MessageToString(layer), [])
    assert tops[0].shape == (4, 3, 227, 227)
    np.testing.assert_array_equal(tops[1].data, [0, 0, 0, 7])         # 3 background, then 1 foreground
    assert np.abs(tops[0].data).max() <= 156                           # pixels minus the mean of 100
    reader.close()
