"""Whole-net benchmark: one LeNet training step (forward, backward, SGD update) in dlsoft
against the same step in PyTorch CPU, side by side in one process (not a test).

Usage: python benchmarks/bench_lenet.py [iterations]

Both run Caffe's LeNet (examples/mnist/lenet_train_test.prototxt's layers) on the same
batch of 64 bundled digits, with lenet_solver's SGD settings (lr 0.01, momentum 0.9,
weight decay 5e-4), on the same number of threads. Prints milliseconds per step and the
ratio dlsoft / torch (below 1 means dlsoft is faster).
"""
from __future__ import annotations

import sys
import time

import numpy as np

from dlsoft.data.digits import load_digits
from dlsoft.netdef.io import parse_net_text
from dlsoft.protos import caffe_pb2
from dlsoft.solver import Solver

LENET = """
name: "LeNet"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 64 dim: 1 dim: 28 dim: 28 } shape { dim: 64 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 20 kernel_size: 5 stride: 1 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 50 kernel_size: 5 stride: 1 weight_filler { type: "xavier" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
        inner_product_param { num_output: 500 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


def per_step(step, iterations: int) -> float:
    for _ in range(5):  # warm up
        step()
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    return (time.perf_counter() - start) / iterations * 1e3


def main(iterations: int = 50) -> None:
    import torch
    import torch.nn.functional as F

    images, labels = load_digits("train")
    x = images[:64].astype(np.float32) * np.float32(1 / 256)
    y = labels[:64].astype(np.float32)

    solver_param = caffe_pb2.SolverParameter(base_lr=0.01, momentum=0.9, weight_decay=5e-4, lr_policy="fixed",
                                             max_iter=10**9, display=0, snapshot_after_train=False)
    solver_param.net_param.CopyFrom(parse_net_text(LENET))
    solver = Solver(solver_param, metrics=False, progress_bar=False)
    solver.net.blobs["data"].data[...] = x
    solver.net.blobs["label"].data[...] = y
    ours = per_step(lambda: solver.step(1), iterations)

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 20, 5), torch.nn.MaxPool2d(2, 2, ceil_mode=True),
        torch.nn.Conv2d(20, 50, 5), torch.nn.MaxPool2d(2, 2, ceil_mode=True), torch.nn.Flatten(),
        torch.nn.Linear(800, 500), torch.nn.ReLU(), torch.nn.Linear(500, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()

    def torch_step():
        optimizer.zero_grad()
        F.cross_entropy(model(xt), yt).backward()
        optimizer.step()

    theirs = per_step(torch_step, iterations)
    print(f"LeNet training step, batch 64, {torch.get_num_threads()} torch thread(s):")
    print(f"  dlsoft {ours:8.2f} ms   torch {theirs:8.2f} ms   ratio dlsoft/torch {ours / theirs:.2f}")
    solver.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)
