"""End to end on full-size real data: Fashion-MNIST -> convert-mnist -> LMDB -> Caffe's LeNet.

Real Caffe's own files are used unchanged (examples/mnist/lenet_solver.prototxt and
lenet_train_test.prototxt, whose LMDB paths are relative to the working directory), as
a Caffe user would run them. Real Caffe reaches 0.8973 with these settings
(../shared/caffe/reference/lenet_fashion_mnist_caffe.csv).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from dlsoft.data.tools import convert_mnist
from dlsoft.netdef.io import read_solver
from dlsoft.solver import Solver

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def fashion_run_dir(shared_caffe, tmp_path, monkeypatch):
    """A working directory laid out as Caffe's examples expect, with both LMDBs."""
    if not (FASHION / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    folder = tmp_path / "examples" / "mnist"
    folder.mkdir(parents=True)
    for name in ("lenet_solver.prototxt", "lenet_train_test.prototxt"):
        shutil.copyfile(shared_caffe / "examples" / "mnist" / name, folder / name)
    convert_mnist(FASHION / "train-images-idx3-ubyte.gz", FASHION / "train-labels-idx1-ubyte.gz",
                  folder / "mnist_train_lmdb")
    convert_mnist(FASHION / "t10k-images-idx3-ubyte.gz", FASHION / "t10k-labels-idx1-ubyte.gz",
                  folder / "mnist_test_lmdb")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_caffe_lenet_config_reads_the_converted_lmdb(fashion_run_dir):
    with Solver("examples/mnist/lenet_solver.prototxt", metrics=False) as solver:
        assert solver.net.blobs["data"].shape == (64, 1, 28, 28)
        assert solver.test_nets[0].blobs["data"].shape == (100, 1, 28, 28)
        solver.step(3)
        assert 0 < solver.smoothed_loss < 5


@pytest.mark.slow
def test_lenet_on_full_fashion_mnist_reaches_89_percent(fashion_run_dir):
    # Caffe's file sets no seed (unseeded runs gave 0.8993 and 0.8954); seeded, the run repeats.
    param = read_solver("examples/mnist/lenet_solver.prototxt")
    param.random_seed = 1701
    with Solver(param, metrics=False) as solver:
        start = time.perf_counter()
        solver.solve()
        wall = time.perf_counter() - start
        data_layer = solver.net.layers[0]
        waited = data_layer.prefetcher.wait_seconds
        accuracy = solver.test_scores[0]["accuracy"]
        print(f"LeNet on Fashion-MNIST: {solver.iter} iterations, {wall:.0f} s, test accuracy {accuracy:.4f}, "
              f"train forward waited {waited:.2f} s for data ({100 * waited / wall:.2f}% of the run)")
        assert solver.iter == 10000
        assert accuracy >= 0.89
