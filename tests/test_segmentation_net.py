"""A small SegNet-style net (DenseImageData -> Convolution -> BN -> Pooling with mask ->
Upsample -> Convolution -> SoftmaxWithLoss, SegAccuracy at TEST) trains on real PNG pairs:
the loss falls and the pixel accuracy rises above chance."""
from __future__ import annotations

import numpy as np
from PIL import Image

from dlsoft.netdef.io import parse_solver_text
from dlsoft.solver import Solver

NET = """
name: "tiny_segnet"
layer {{ name: "data" type: "DenseImageData" top: "data" top: "label"
  transform_param {{ scale: 0.0078125 mean_value: 128 }}
  dense_image_data_param {{ source: "{list}" root_folder: "{root}/" batch_size: 4 shuffle: true }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 weight_filler {{ type: "msra" }} }} }}
layer {{ name: "bn1" type: "BN" bottom: "conv1" top: "bn1"
  bn_param {{ scale_filler {{ type: "constant" value: 1 }} shift_filler {{ type: "constant" value: 0 }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "bn1" top: "bn1" }}
layer {{ name: "pool1" type: "Pooling" bottom: "bn1" top: "pool1" top: "mask1"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "up1" type: "Upsample" bottom: "pool1" bottom: "mask1" top: "up1" upsample_param {{ scale: 2 }} }}
layer {{ name: "score" type: "Convolution" bottom: "up1" top: "score"
  convolution_param {{ num_output: 2 kernel_size: 3 pad: 1 weight_filler {{ type: "msra" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }}
layer {{ name: "accuracy" type: "SegAccuracy" bottom: "score" bottom: "label" top: "accuracy"
  include {{ phase: TEST }} }}
"""


def write_pairs(folder, count=8):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        label = np.zeros((8, 8), np.uint8)
        y, x = rng.integers(0, 5, 2)
        label[y:y + 4, x:x + 4] = 1                      # a bright square to segment
        rgb = rng.integers(0, 90, (8, 8, 3), dtype=np.uint8)
        rgb[label == 1] += 150
        Image.fromarray(rgb).save(folder / f"im{i}.png")
        Image.fromarray(label).save(folder / f"lab{i}.png")
        lines.append(f"im{i}.png lab{i}.png")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")


def test_tiny_segnet_trains(tmp_path):
    write_pairs(tmp_path)
    net = tmp_path / "net.prototxt"
    net.write_text(NET.format(list=tmp_path / "list.txt", root=tmp_path))
    param = parse_solver_text(f'net: "{net}" base_lr: 0.05 momentum: 0.9 lr_policy: "fixed" max_iter: 60 '
                              f'test_iter: 2 test_interval: 1000 random_seed: 1 snapshot_prefix: "{tmp_path}/s" '
                              'snapshot_after_train: false')
    with Solver(param, metrics=False) as solver:
        solver.step(1)
        first = solver.net.blobs["loss"].data.item()
        solver.step(59)
        last = solver.net.blobs["loss"].data.item()
        test_net = solver.test_nets[0]                  # shares the learnable blobs, BN's included
        test_net.forward()
        pixel, _, iou = test_net.blobs["accuracy"].data.reshape(-1)
    assert last < 0.5 * first
    assert pixel > 0.9 and iou > 0.7
