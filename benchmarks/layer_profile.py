"""Per-layer profile of a benchmark row's net (what ``dlsoft time`` measures, on random data).

Usage: python benchmarks/layer_profile.py ROW [iterations] [threads], e.g.
``python benchmarks/layer_profile.py cifar10_quick_train 10 1``. Rows are benchmarks/run.py's;
training rows time forward and backward, deploy rows forward only. Prints the layers
sorted by time, with the share of the total, then the full ``dlsoft time`` table.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (benchmarks/run.py: the rows and their nets)

import dlsoft  # noqa: E402
import numpy as np  # noqa: E402  (after dlsoft, via run: see dlsoft.threads)
from dlsoft.timing import time_net  # noqa: E402


def main(key: str, iterations: int = 10, threads: int = 1) -> None:
    title, kind, path, batch, shape, _ = run.ROWS[key]
    limiter = run.set_threads(threads)
    rng = np.random.default_rng(0)
    if kind == "train":
        net = dlsoft.Net(run.training_net(path, batch, shape), phase="TRAIN")
        net.blobs[net.inputs[1]].data[...] = rng.integers(0, 10, batch)
    else:
        net = dlsoft.Net(run.deploy_net(path, batch), phase="TEST")
        run.randomise(net)
    net.blobs[net.inputs[0]].data[...] = rng.uniform(-1, 1, net.blobs[net.inputs[0]].shape)
    report = time_net(net, iterations=iterations, warmup=2, backward=kind == "train")
    total = report.forward_ms + report.backward_ms
    print(f"{title}, {threads} thread(s), {iterations} iterations: forward {report.forward_ms:.1f} ms, "
          f"backward {report.backward_ms:.1f} ms")
    rows = sorted(report.layers, key=lambda t: -(t.forward_ms + (t.backward_ms or 0)))
    print(f"{'layer':28s} {'type':14s} {'fwd ms':>8s} {'bwd ms':>8s} {'share':>6s}")
    for t in rows[:15]:
        both = t.forward_ms + (t.backward_ms or 0)
        print(f"{t.name:28s} {t.type:14s} {t.forward_ms:8.2f} {(t.backward_ms or 0):8.2f} {both / total:6.1%}")
    by_type: dict[str, float] = {}
    for t in report.layers:
        by_type[t.type] = by_type.get(t.type, 0) + t.forward_ms + (t.backward_ms or 0)
    print("by type: " + ", ".join(f"{k} {v:.1f} ms ({v / total:.0%})" for k, v in
                                  sorted(by_type.items(), key=lambda kv: -kv[1])))
    del limiter


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
