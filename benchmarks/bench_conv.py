"""Micro-benchmark: dlsoft Convolution forward+backward on CPU against torch CPU (not a test).

Usage: python benchmarks/bench_conv.py [repeats]. Prints milliseconds per forward+backward
and the ratio dlsoft/torch for LeNet conv2 and an AlexNet-like conv.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from gradcheck import run_layer

CASES = {
    "LeNet conv2 64x20x12x12 -> 50 5x5": ((64, 20, 12, 12), "num_output: 50 kernel_size: 5"),
    "AlexNet-like conv3 32x256x13x13 -> 384 3x3 p1": ((32, 256, 13, 13), "num_output: 384 kernel_size: 3 pad: 1"),
    "AlexNet-like conv2 16x96x27x27 -> 256 5x5 p2 g2": ((16, 96, 27, 27), "num_output: 256 kernel_size: 5 pad: 2 group: 2"),
}


def best_of(fn, repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def main(repeats: int = 5) -> None:
    import torch
    for title, (shape, conv) in CASES.items():
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        text = f'type: "Convolution" convolution_param {{ {conv} weight_filler {{ type: "xavier" }} }}'
        layer, bottoms, tops = run_layer(text, [x])
        tops[0].diff[...] = 1

        def ours():
            layer.forward(bottoms, tops)
            layer.backward(tops, [True], bottoms)

        p = layer.param.convolution_param
        xt = torch.tensor(x, requires_grad=True)
        torch_conv = torch.nn.Conv2d(shape[1], p.num_output, p.kernel_size[0], padding=p.pad[0] if p.pad else 0,
                                     groups=p.group)

        def theirs():
            xt.grad = None
            torch_conv.zero_grad()
            torch_conv(xt).sum().backward()

        mine, ref = best_of(ours, repeats), best_of(theirs, repeats)
        print(f"{title}: dlsoft {mine:.1f} ms, torch {ref:.1f} ms, ratio {mine / ref:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
