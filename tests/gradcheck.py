"""The shared layer test tools: build one layer alone, check its gradient numerically.

``check_gradient`` follows Caffe's GradientChecker: perturb each input element by
``±stepsize``, take the central difference of the objective ``sum(W * top)`` (W random
but fixed) and compare with what ``backward`` computed; the error allowed is
``threshold * max(|numeric|, |analytic|, 1)``.

Layer test modules declare what they cover in a module-level ``COVERS`` dict, for
example ``COVERS = {"ReLU": {"gradient", "reference"}}`` ("gradient": checked with
``check_gradient``; "reference": forward values checked against a closed form or
PyTorch). ``test_layer_coverage.py`` fails for any registered type left out.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from dlsoft import random as dl_random
from dlsoft.backend import CPU, Device, parse_device, to_numpy
from dlsoft.blob import Blob
from dlsoft.layers import create_layer
from dlsoft.protos import caffe_pb2
from google.protobuf import text_format


def layer_param(text: str) -> "caffe_pb2.LayerParameter":
    """A LayerParameter from prototxt text, e.g. ``'type: "ReLU" relu_param { negative_slope: 0.1 }'``."""
    param = caffe_pb2.LayerParameter()
    text_format.Parse(text, param)
    if not param.name:
        param.name = param.type.lower() or "layer"
    return param


def make_layer(text: str, phase: str = "TRAIN", device: Device = CPU):
    return create_layer(layer_param(text), phase=phase, device=device)


def run_layer(text: str, bottoms: Sequence[np.ndarray], phase: str = "TRAIN", device="cpu",
              num_tops: int | None = None, seed: int = 1701):
    """Set up and run one layer forward; returns ``(layer, bottom_blobs, top_blobs)``."""
    device = parse_device(device)
    dl_random.set_seed(seed)
    param = layer_param(text)
    layer = create_layer(param, phase=phase, device=device)
    bottom_blobs = []
    for i, array in enumerate(bottoms):
        blob = Blob(np.shape(array), device, name=f"bottom{i}")
        blob.data[...] = device.xp.asarray(np.asarray(array, dtype=np.float32))
        bottom_blobs.append(blob)
    n_tops = num_tops if num_tops is not None else max(len(param.top), 1)
    top_blobs = [Blob((), device, name=f"top{i}") for i in range(n_tops)]
    layer.initialize(bottom_blobs, top_blobs)
    layer.param_propagate_down = [True] * len(layer.blobs)
    dl_random.set_seed(seed)
    layer.forward(bottom_blobs, top_blobs)
    return layer, bottom_blobs, top_blobs


def _objective(tops, weights) -> float:
    return float(sum(np.sum(w * np.asarray(to_numpy(t.data), dtype=np.float64)) for t, w in zip(tops, weights)))


def check_gradient(text: str, bottoms: Sequence[np.ndarray], *, phase: str = "TRAIN",
                   check_bottoms: Sequence[int] | None = None, check_params: bool = True,
                   top_indices: Sequence[int] | None = None, num_tops: int | None = None,
                   stepsize: float = 1e-2, threshold: float = 1e-3,
                   kink: float | None = None, kink_range: float = -1.0,
                   max_checks: int = 150, seed: int = 1701, device="cpu") -> None:
    """Assert that the layer's backward agrees with finite differences of its forward.

    ``check_bottoms``: indices of bottoms to check (default: all). ``top_indices``: the
    tops the objective uses (default: all). Points within ``kink_range`` of ``kink``
    (for ReLU-like non-differentiable points) are skipped, as in Caffe. At most
    ``max_checks`` elements per blob are checked (a fixed random subset) to keep tests fast.
    """
    layer, bottom_blobs, top_blobs = run_layer(text, bottoms, phase, device, num_tops, seed)
    pick = np.random.default_rng(seed)
    used_tops = list(top_indices) if top_indices is not None else list(range(len(top_blobs)))
    weights = [pick.uniform(-1, 1, size=top_blobs[i].shape) if i in used_tops
               else np.zeros(top_blobs[i].shape) for i in range(len(top_blobs))]
    check_bottoms = list(range(len(bottom_blobs))) if check_bottoms is None else list(check_bottoms)
    xp = bottom_blobs[0].xp if bottom_blobs else np

    def forward():
        dl_random.set_seed(seed)
        layer.forward(bottom_blobs, top_blobs)
        return _objective(top_blobs, weights)

    def analytic():
        forward()
        for blob in layer.blobs:
            blob.diff[...] = 0
        for blob in bottom_blobs:
            blob.diff[...] = 0
        for top, w in zip(top_blobs, weights):
            top.diff[...] = xp.asarray(w.astype(np.float32))
        propagate = [i in check_bottoms for i in range(len(bottom_blobs))]
        layer.backward(top_blobs, propagate, bottom_blobs)
        return ([to_numpy(b.diff).copy() for b in bottom_blobs], [to_numpy(b.diff).copy() for b in layer.blobs])

    bottom_grads, param_grads = analytic()
    targets = [("bottom", i, bottom_blobs[i], bottom_grads[i]) for i in check_bottoms]
    if check_params:
        targets += [("param", i, blob, param_grads[i]) for i, blob in enumerate(layer.blobs)]
    for kind, index, blob, grad in targets:
        flat = blob.data.reshape(-1)
        n = flat.size
        elements = np.arange(n) if n <= max_checks else np.sort(pick.choice(n, max_checks, replace=False))
        grad_flat = grad.reshape(-1)
        for e in elements:
            original = float(flat[e])
            if kink is not None and abs(original - kink) <= kink_range:
                continue
            flat[e] = original + stepsize
            plus = forward()
            flat[e] = original - stepsize
            minus = forward()
            flat[e] = original
            numeric = (plus - minus) / (2 * stepsize)
            computed = float(grad_flat[e])
            scale = max(abs(numeric), abs(computed), 1.0)
            assert abs(numeric - computed) <= threshold * scale, (
                f"{layer.type} {kind} {index} element {e}: backward gave {computed:.6g}, "
                f"finite difference {numeric:.6g}")


def compare_devices(text: str, bottoms: Sequence[np.ndarray], *, phase: str = "TRAIN",
                    rtol: float = 1e-4, atol: float = 1e-5, seed: int = 1701, backward: bool = True,
                    num_tops: int | None = None) -> None:
    """Run one layer on CPU and on GPU from the same weights; assert forward (and backward) agree."""
    cpu_layer, cpu_bottoms, cpu_tops = run_layer(text, bottoms, phase, "cpu", num_tops, seed)
    gpu_layer, gpu_bottoms, gpu_tops = run_layer(text, bottoms, phase, "gpu", num_tops, seed)
    for cpu_blob, gpu_blob in zip(cpu_layer.blobs, gpu_layer.blobs):
        gpu_blob.data[...] = gpu_blob.xp.asarray(cpu_blob.data)
    gpu_layer.forward(gpu_bottoms, gpu_tops)
    for c, g in zip(cpu_tops, gpu_tops):
        np.testing.assert_allclose(to_numpy(g.data), c.data, rtol=rtol, atol=atol)
    if not backward or cpu_layer.forward_only:
        return
    rng = np.random.default_rng(seed)
    for c, g in zip(cpu_tops, gpu_tops):
        w = rng.uniform(-1, 1, size=c.shape).astype(np.float32)
        c.diff[...] = w
        g.diff[...] = g.xp.asarray(w)
    for layer in (cpu_layer, gpu_layer):
        for blob in layer.blobs:
            blob.diff[...] = 0
    propagate = [cpu_layer.allow_backward_to(i) for i in range(len(cpu_bottoms))]
    cpu_layer.backward(cpu_tops, propagate, cpu_bottoms)
    gpu_layer.backward(gpu_tops, propagate, gpu_bottoms)
    for p, c, g in zip(propagate, cpu_bottoms, gpu_bottoms):
        if p:
            np.testing.assert_allclose(to_numpy(g.diff), c.diff, rtol=rtol, atol=atol)
    for c, g in zip(cpu_layer.blobs, gpu_layer.blobs):
        np.testing.assert_allclose(to_numpy(g.diff), c.diff, rtol=rtol, atol=atol)
