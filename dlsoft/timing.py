"""Per-layer forward and backward timing, as Caffe's ``caffe time`` measures it.

After ``warmup`` untimed passes, each iteration runs every layer's forward in order and
every layer's backward in reverse order, timing each call on its own (on a GPU the
device is synchronised after each call, so a layer is charged for its own kernels).
Reported times are averages per iteration, in milliseconds.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class LayerTime:
    """Average forward and backward milliseconds of one layer (backward None: the layer has none)."""

    name: str
    type: str
    forward_ms: float
    backward_ms: float | None


@dataclass
class TimingReport:
    """What :func:`time_net` measured."""

    iterations: int
    layers: list[LayerTime] = field(default_factory=list)
    forward_ms: float = 0.0           # average forward pass (sum over layers)
    backward_ms: float = 0.0          # average backward pass
    forward_backward_ms: float = 0.0  # average wall time of one forward-backward iteration
    total_ms: float = 0.0             # wall time of all timed iterations

    def format(self) -> str:
        """A table of layers with forward/backward times, then Caffe's summary lines."""
        rows = [("layer", "type", "forward ms", "backward ms")]
        for t in self.layers:
            rows.append((t.name, t.type, f"{t.forward_ms:.4f}",
                         "-" if t.backward_ms is None else f"{t.backward_ms:.4f}"))
        widths = [max(len(row[c]) for row in rows) for c in range(4)]
        lines = ["  ".join(cell.ljust(w) if c < 2 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths)))
                 for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines += ["-" * len(lines[0]),
                  f"Average Forward pass: {self.forward_ms:.4f} ms.",
                  f"Average Backward pass: {self.backward_ms:.4f} ms.",
                  f"Average Forward-Backward: {self.forward_backward_ms:.4f} ms.",
                  f"Total Time: {self.total_ms:.4f} ms. ({self.iterations} iterations)"]
        return "\n".join(lines)


def time_net(net, iterations: int = 50, warmup: int = 1, backward: bool = True) -> TimingReport:
    """Time ``net`` (a :class:`dlsoft.Net`) layer by layer over ``iterations`` forward-backward passes.

    Layers that need no backward (nothing learnable or no loss below them) are not
    run backward, as in training, and report ``backward_ms`` None.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    n = len(net.layers)
    sync = _synchroniser(net)
    for _ in range(warmup):
        net.forward_prefilled()
        if backward:
            net.backward_from_to(n - 1)
    forward = [0.0] * n
    backward_times = [0.0] * n
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", iterations)
    start_all = time.perf_counter()
    for it in range(iterations):
        net.clear_param_diffs()
        sync()
        start_iter = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            net.forward_prefilled(i, i)
            sync()
            forward[i] += time.perf_counter() - t0
        if backward:
            for i in reversed(range(n)):
                t0 = time.perf_counter()
                net.backward_from_to(i, i, set_loss_diffs=i == n - 1)
                sync()
                backward_times[i] += time.perf_counter() - t0
        log.info("Iteration: %d forward-backward time: %.3f ms.", it + 1,
                 (time.perf_counter() - start_iter) * 1e3)
    total = time.perf_counter() - start_all
    log.info("*** Benchmark ends ***")
    scale = 1e3 / iterations
    report = TimingReport(iterations=iterations, total_ms=total * 1e3,
                          forward_backward_ms=total * scale)
    for i, layer in enumerate(net.layers):
        runs_backward = backward and net.layer_need_backward[i]
        report.layers.append(LayerTime(layer.name, layer.type, forward[i] * scale,
                                       backward_times[i] * scale if runs_backward else None))
    report.forward_ms = sum(forward) * scale
    report.backward_ms = sum(backward_times) * scale
    return report


def _synchroniser(net):
    """A function that waits for the net's device to finish queued work (a no-op on the CPU)."""
    if not net.device.is_gpu:
        return lambda: None
    device = net.device.xp.cuda.Device(net.device.index)
    return device.synchronize
