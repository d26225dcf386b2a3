"""GPU benchmark rows: one SGD training iteration of cifar10_quick and CaffeNet, dlsoft (cupy:
im2col kernels + cuBLAS, no cuDNN) against PyTorch CUDA (cuDNN), both in float32 (TF32 off).

Usage (on a machine with a GPU; see benchmarks/gpu_check.sh):

    python benchmarks/bench_gpu.py [--batch 128] [--iters 10] [--nets cifar10_quick,caffenet]

Prints one row per net: milliseconds per iteration (forward + backward + update, inputs
already on the device, timed after warm-up with a device synchronise around the loop) for
dlsoft and PyTorch, and the ratio; the issue's target is at most 2x. ``--device cpu``
(numpy against torch CPU, small batches) and ``--emulate`` (dlsoft's GPU path on the
tests' cupy stand-in) check the script itself on a machine without a GPU.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ENTRIES = ROOT / "dlsoft" / "model_zoo" / "entries"  # BVLC Caffe's own train_val files, shipped in the package

NETS = {  # name: (train_val prototxt, input shape per image, classes)
    "cifar10_quick": ("cifar10_quick/train_val.prototxt", (3, 32, 32), 10),
    "caffenet": ("bvlc_reference_caffenet/train_val.prototxt", (3, 227, 227), 1000),
}


def dlsoft_solver(name: str, batch: int, device: str):
    """A dlsoft SGD solver over the net's TRAIN graph, its Data layers replaced by an Input layer."""
    from dlsoft.netdef.io import read_net
    from dlsoft.protos import caffe_pb2
    from dlsoft.solver.solver import Solver
    path, shape, _ = NETS[name]
    net = read_net(ENTRIES / path)
    layers = [layer for layer in net.layer if layer.type != "Data"]
    data = caffe_pb2.LayerParameter(name="data", type="Input", top=["data", "label"])
    data.input_param.shape.add().dim.extend([batch, *shape])
    data.input_param.shape.add().dim.extend([batch])
    del net.layer[:]
    net.layer.extend([data, *layers])
    param = caffe_pb2.SolverParameter(base_lr=0.001, momentum=0.9, weight_decay=0.0005, lr_policy="fixed",
                                      max_iter=1_000_000, display=0, random_seed=1, snapshot_after_train=False)
    param.net_param.CopyFrom(net)
    return Solver(param, device=device, metrics=False, progress_bar=False)


def time_dlsoft(name: str, batch: int, iters: int, device: str) -> float:
    solver = dlsoft_solver(name, batch, device)
    _, shape, classes = NETS[name]
    rng = np.random.default_rng(0)
    xp = solver.net.blobs["data"].xp
    solver.net.blobs["data"].data[...] = xp.asarray(rng.standard_normal((batch, *shape)).astype(np.float32))
    solver.net.blobs["label"].data[...] = xp.asarray(rng.integers(0, classes, batch).astype(np.float32))
    sync = (lambda: xp.cuda.Device().synchronize()) if xp is not np else (lambda: None)
    solver.step(2)  # warm-up: kernels compiled, cuBLAS handles and memory pools set up
    sync()
    start = time.perf_counter()
    solver.step(iters)
    sync()
    return (time.perf_counter() - start) / iters * 1e3


def torch_model(name: str, torch):
    nn = torch.nn
    if name == "cifar10_quick":
        return nn.Sequential(
            nn.Conv2d(3, 32, 5, padding=2), nn.MaxPool2d(3, 2, ceil_mode=True), nn.ReLU(),
            nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, 2, ceil_mode=True),
            nn.Flatten(), nn.Linear(64 * 4 * 4, 64), nn.Linear(64, 10))
    lrn = lambda: nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)  # noqa: E731 - Caffe's across-channel LRN
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True), lrn(),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True), lrn(),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Flatten(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, 1000))


def time_torch(name: str, batch: int, iters: int, device: str) -> float:
    import torch
    torch.backends.cudnn.allow_tf32 = False  # float32 throughout, as cuBLAS SGEMM on the dlsoft side
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    _, shape, classes = NETS[name]
    model = torch_model(name, torch).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=0.0005)
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad(set_to_none=False)
        loss_fn(model(x), y).backward()
        optimizer.step()

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    return (time.perf_counter() - start) / iters * 1e3


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--nets", default="cifar10_quick,caffenet")
    parser.add_argument("--device", choices=["gpu", "cpu"], default="gpu")
    parser.add_argument("--emulate", action="store_true", help="dlsoft's GPU path on the tests' cupy stand-in")
    args = parser.parse_args(argv)
    torch_device = "cuda" if args.device == "gpu" and not args.emulate else "cpu"
    context = None
    if args.emulate:
        sys.path.insert(0, str(ROOT / "tests"))
        from kernel_emulation import fakecupy
        context = fakecupy.installed()
        context.__enter__()
    print(f"| net | batch | dlsoft {args.device}{' (emulated)' if args.emulate else ''} ms/iter | "
          f"PyTorch {torch_device} ms/iter | ratio |")
    print("|---|---|---|---|---|")
    for name in args.nets.split(","):
        ours = time_dlsoft(name, args.batch, args.iters, args.device)
        theirs = time_torch(name, args.batch, args.iters, torch_device)
        print(f"| {name} | {args.batch} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f}x |", flush=True)
    if context is not None:
        context.__exit__(None, None, None)


if __name__ == "__main__":
    main()
