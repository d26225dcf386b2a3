"""Does compute wait for data? Iteration time with and without the prefetch thread.

A batch source that takes ``--data-ms`` per batch (sleep-based, standing for reading
and decoding) feeds a "training iteration" that computes for
``--compute-ms`` (float32 matrix products, which release the GIL like real layers do).
With prefetching the iteration should take about max(data, compute); without, their sum.

    python benchmarks/bench_prefetch.py [--data-ms 30] [--compute-ms 30] [--iters 40]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from dlsoft.blob import Blob
from dlsoft.data.prefetch import Prefetcher


class SlowSource:
    """A batch of (64, 1, 28, 28) that takes ``seconds`` to make."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.shapes = [(64, 1, 28, 28), (64,)]

    def fill(self, arrays):
        time.sleep(self.seconds)
        arrays[0][...] = 1.0
        arrays[1][...] = 0.0

    def close(self):
        pass


def compute_step(seconds: float, a: np.ndarray, out: np.ndarray) -> None:
    """Busy the CPU with GIL-free matrix products for about ``seconds``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        np.matmul(a, a, out=out)


def run(source, compute_s: float, iters: int, prefetch: bool) -> float:
    tops = [Blob(shape) for shape in source.shapes]
    a = np.random.default_rng(0).standard_normal((128, 128)).astype(np.float32)
    out = np.empty_like(a)
    prefetcher = Prefetcher(source, depth=4) if prefetch else None
    host = [np.empty(shape, np.float32) for shape in source.shapes]

    def next_batch():
        if prefetcher is not None:
            prefetcher.next_into(tops)
        else:
            source.fill(host)
            for top, array in zip(tops, host):
                np.copyto(top.data, array)

    next_batch()  # warm-up (the first batch is never overlapped)
    start = time.perf_counter()
    for _ in range(iters):
        next_batch()
        compute_step(compute_s, a, out)
    elapsed = (time.perf_counter() - start) / iters
    if prefetcher is not None:
        prefetcher.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-ms", type=float, default=30.0)
    parser.add_argument("--compute-ms", type=float, default=30.0)
    parser.add_argument("--iters", type=int, default=40)
    args = parser.parse_args()
    data_s, compute_s = args.data_ms / 1000, args.compute_ms / 1000
    source = SlowSource(data_s)
    serial = run(source, compute_s, args.iters, prefetch=False)
    overlapped = run(source, compute_s, args.iters, prefetch=True)
    print(f"data {args.data_ms:.1f} ms/batch, compute {args.compute_ms:.1f} ms/iteration, {args.iters} iterations")
    print(f"  without prefetch: {serial * 1000:7.1f} ms/iteration  (sum would be {args.data_ms + args.compute_ms:.1f})")
    print(f"  with prefetch:    {overlapped * 1000:7.1f} ms/iteration  (max would be {max(args.data_ms, args.compute_ms):.1f})")
    print(f"  speed-up {serial / overlapped:.2f}x")


if __name__ == "__main__":
    main()
