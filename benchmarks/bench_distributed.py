"""Benchmark: data-parallel training at 1 and 2 ranks on this machine (not a test).

Usage: python benchmarks/bench_distributed.py [iterations]

For LeNet (bundled digits through its Data layer, batch 64 per rank) and Caffe's
cifar10_quick (random CIFAR-shaped data through MemoryData, batch 100 per rank; no CIFAR
download needed for timing), it runs ``iterations`` SGD iterations (after 5 warm-up ones)
in one process and in 2 MPI ranks (``mpirun -n 2``), each with one BLAS thread, and prints
the time per iteration, the allreduce's share of it (the time a rank waits for the sum
after its backward is done), how much of the communication overlapped backward, and the
scaling efficiency: throughput at 2 ranks / (2 × throughput at 1 rank), the per-rank batch
being the same (so 2 ranks train twice the global batch per iteration).

Run inside it: ``python benchmarks/bench_distributed.py --worker NET ITERATIONS``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CIFAR = ROOT.parent / "shared" / "caffe" / "examples" / "cifar10" / "cifar10_quick_train_test.prototxt"
NETS = {"LeNet": ROOT / "examples" / "mnist" / "lenet_train_test.prototxt", "cifar10_quick": CIFAR}
WARMUP = 5


def solver_param(name: str):
    from dlsoft.netdef import io
    from dlsoft.protos import caffe_pb2

    net = io.read_net(NETS[name])
    kept = caffe_pb2.NetParameter()
    kept.CopyFrom(net)
    del kept.layer[:]
    for layer in net.layer:
        if any(rule.phase == caffe_pb2.TEST for rule in layer.include):
            continue  # timing the training only
        if layer.type == "Data" and name == "cifar10_quick":
            memory = kept.layer.add(name=layer.name, type="MemoryData", top=list(layer.top))
            memory.memory_data_param.batch_size = 100
            memory.memory_data_param.channels, memory.memory_data_param.height = 3, 32
            memory.memory_data_param.width = 32
            continue
        kept.layer.add().CopyFrom(layer)
    param = caffe_pb2.SolverParameter(base_lr=0.001, momentum=0.9, weight_decay=0.004, lr_policy="fixed",
                                      max_iter=10 ** 6, display=0, random_seed=1)
    param.net_param.CopyFrom(kept)
    param.snapshot_after_train = False
    return param


def worker(name: str, iterations: int) -> None:
    import numpy as np

    from dlsoft.distributed.runner import DataParallel, wanted
    from dlsoft.solver import Solver

    kind = wanted(None)
    dp = DataParallel(kind) if kind else None
    solver = Solver(solver_param(name), metrics=False, progress_bar=False, shard=dp.shard if dp else None)
    for layer in solver.net.layers:
        if layer.type == "MemoryData":
            rng = np.random.default_rng(0)
            layer.set_input_arrays(rng.random((1000, 3, 32, 32), dtype=np.float32) * 255,
                                   rng.integers(0, 10, 1000).astype(np.float32))
    sync = dp.attach(solver) if dp else None
    solver.step(WARMUP)
    if sync is not None:
        sync.stats.update(iterations=0, overlap_s=0.0, wait_s=0.0, pack_s=0.0)
    start = time.perf_counter()
    solver.step(iterations)
    seconds = (time.perf_counter() - start) / iterations
    if dp is None or dp.root:
        result = {"net": name, "ranks": dp.size if dp else 1, "ms_per_iter": seconds * 1e3,
                  "params_mib": sum(b.count for b in solver.net.learnable_params) * 4 / 2 ** 20}
        if sync is not None:
            s = sync.stats
            result.update(allreduce_ms=s["wait_s"] / iterations * 1e3, overlap_ms=s["overlap_s"] / iterations * 1e3,
                          buckets=s["buckets"])
        print("RESULT " + json.dumps(result), flush=True)
    solver.close()
    if dp is not None:
        dp.close()


def launch(name: str, ranks: int, iterations: int) -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, __file__, "--worker", name, str(iterations)]
    if ranks > 1:
        mpirun = Path(sys.executable).parent / "mpirun"
        mpirun = str(mpirun) if mpirun.exists() else shutil.which("mpirun")
        command = [mpirun, "-n", str(ranks), "--oversubscribe", "--bind-to", "core", *command]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def main(iterations: int = 40) -> None:
    print(f"{'net':15} {'ranks':>5} {'ms/iter':>8} {'allreduce ms':>12} {'share':>6} {'overlap ms':>10} "
          f"{'images/s':>9} {'efficiency':>10}")
    for name, path in NETS.items():
        if not path.exists():
            print(f"{name}: {path} not found, skipped")
            continue
        batch = 64 if name == "LeNet" else 100
        one = launch(name, 1, iterations)
        two = launch(name, 2, iterations)
        for r in (one, two):
            share = r.get("allreduce_ms", 0.0) / r["ms_per_iter"]
            rate = batch * r["ranks"] / r["ms_per_iter"] * 1e3
            efficiency = one["ms_per_iter"] / r["ms_per_iter"]
            print(f"{name:15} {r['ranks']:>5} {r['ms_per_iter']:>8.1f} {r.get('allreduce_ms', 0.0):>12.2f} "
                  f"{share:>6.1%} {r.get('overlap_ms', 0.0):>10.2f} {rate:>9.0f} {efficiency:>10.0%}")
        print(f"{'':15} gradients: {two['params_mib']:.2f} MiB in {two.get('buckets', 1)} bucket(s)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]))
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
