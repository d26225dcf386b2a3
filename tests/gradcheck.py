"""The shared layer test tools: build one layer alone, check its gradient numerically.

``check_gradient`` follows Caffe's GradientChecker: perturb each input element by
``±stepsize``, take the central difference of the objective ``sum(W * top)`` (W random
but fixed) and compare with what ``backward`` computed; the error allowed is
``threshold * max(|numeric|, |analytic|, 1)``.

The declarative harness: a layer test module lists :class:`LayerCase` s in ``CASES``
(a layer prototxt, its inputs, a reference: a PyTorch function or a closed form) and
``globals().update(case_tests(CASES))`` turns them into the gradient check, the
reference comparison on the CPU and the GPU-vs-CPU comparison (run where a GPU is
present). Checks that do not fit a case stay ordinary tests, marked with
``@covers(type, kind)``. ``test_layer_coverage.py`` derives what each registered type
has ("gradient", "reference", "gpu") from the cases and those marks.

Shared helpers live here once: random inputs (:func:`uniform`, :func:`normal`,
:func:`distinct`), :func:`torch_reference`, :func:`backward_with`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import pytest

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


# ---- shared helpers ----------------------------------------------------------------------------
def uniform(*shape, seed=0, low=-1.0, high=1.0) -> np.ndarray:
    """float32 uniform in [low, high); the generator is seeded by ``seed`` and the shape."""
    return np.random.default_rng(seed + len(shape) * 31 + sum(shape)).uniform(low, high, shape).astype(np.float32)


def normal(shape, seed=0) -> np.ndarray:
    """float32 standard normal."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def distinct(*shape, seed=0, low=None) -> np.ndarray:
    """float32 values 0.05 apart (a permutation), so a ±0.01 finite-difference step never
    changes a max or an argmax. From ``low``; centred on 0 by default. ``shape`` may be
    given as dims or as one tuple."""
    if len(shape) == 1 and isinstance(shape[0], tuple):
        shape = shape[0]
    n = int(np.prod(shape))
    low = -n * 0.025 if low is None else low
    return (np.random.default_rng(seed).permutation(n).reshape(shape) * 0.05 + low).astype(np.float32)


def backward_with(layer, bottoms, tops, top_diffs=None, propagate=None, *, seed=3):
    """Run ``layer.backward`` with ``top_diffs`` (default: uniform in [-1, 1) from ``seed``),
    parameter diffs zeroed first, into the bottoms the layer allows; returns the top diffs."""
    if top_diffs is None:
        rng = np.random.default_rng(seed)
        top_diffs = [rng.uniform(-1, 1, t.shape).astype(np.float32) for t in tops]
    for top, diff in zip(tops, top_diffs):
        top.diff[...] = top.xp.asarray(np.asarray(diff, dtype=np.float32))
    for blob in layer.blobs:
        blob.diff[...] = 0
    propagate = propagate or [layer.allow_backward_to(i) for i in range(len(bottoms))]
    layer.backward(tops, propagate, bottoms)
    return top_diffs


def torch_reference(fn, *inputs):
    """``fn(*inputs)`` by torch in float64, and ``grads(w)``: the gradients of
    ``sum(w * fn(*inputs))`` with respect to each input (None where it has none)."""
    import torch

    tensors = [torch.tensor(np.asarray(x), dtype=torch.float64, requires_grad=True) for x in inputs]
    y = fn(*tensors)

    def grads(w):
        for t in tensors:
            t.grad = None
        (y * torch.tensor(np.asarray(w), dtype=torch.float64)).sum().backward(retain_graph=True)
        return [t.grad.numpy() if t.grad is not None else None for t in tensors]

    return y.detach().numpy(), grads


# ---- the declarative harness -------------------------------------------------------------------
@dataclass
class LayerCase:
    """One layer test case.

    ``torch``: a function of torch tensors (one per bottom) giving top 0; its forward
    and its backward (the gradient of ``sum(w * top)`` for a random ``w``) are compared
    with the layer's. ``reference``: ``reference(layer, *bottoms)`` giving the expected
    tops (a closed form; the layer is there for its weights). ``gradient``: keyword
    arguments of :func:`check_gradient` (``bottoms`` may replace the inputs), or None for
    no gradient check. ``gpu``: compare the GPU with the CPU (keyword arguments of
    :func:`compare_devices`, or True), where a GPU is present.
    """

    text: str
    bottoms: Sequence[np.ndarray]
    torch: Callable | None = None
    reference: Callable | None = None
    gradient: Mapping | None = None
    gpu: bool | Mapping = False
    phase: str = "TRAIN"
    num_tops: int | None = None
    rtol: float = 1e-4
    atol: float = 1e-6
    name: str = ""
    backward_bottoms: Sequence[int] | None = None  # which bottoms the torch backward compares (default all)

    @property
    def type(self) -> str:
        return layer_param(self.text).type

    @property
    def kinds(self) -> set[str]:
        return ({"reference"} if self.torch or self.reference else set()) | \
            ({"gradient"} if self.gradient is not None else set()) | ({"gpu"} if self.gpu else set())

    def __str__(self) -> str:
        return self.name or self.text.split('"')[1]


def run_case_reference(case: LayerCase) -> None:
    """Forward (and, with ``torch``, backward) against the case's reference."""
    layer, bottoms, tops = run_layer(case.text, case.bottoms, case.phase, num_tops=case.num_tops)
    if case.reference is not None:
        expected = case.reference(layer, *[np.asarray(b, dtype=np.float32) for b in case.bottoms])
        expected = [expected] if isinstance(expected, np.ndarray) else list(expected)
        for top, want in zip(tops, expected):
            np.testing.assert_allclose(to_numpy(top.data), want, rtol=case.rtol, atol=case.atol)
    if case.torch is not None:
        w = np.random.default_rng(1).uniform(-1, 1, size=tops[0].shape).astype(np.float32)
        want_y, grads = torch_reference(case.torch, *case.bottoms)
        want_dx = grads(w)
        np.testing.assert_allclose(to_numpy(tops[0].data), want_y, rtol=case.rtol, atol=case.atol)
        if layer.forward_only:
            return
        check = range(len(bottoms)) if case.backward_bottoms is None else case.backward_bottoms
        backward_with(layer, bottoms, tops, [w] + [np.zeros(t.shape) for t in tops[1:]],
                      [i in check for i in range(len(bottoms))])
        for i in check:
            np.testing.assert_allclose(to_numpy(bottoms[i].diff), want_dx[i], rtol=case.rtol, atol=case.atol)


def run_case_gradient(case: LayerCase) -> None:
    options = dict(case.gradient)
    bottoms = options.pop("bottoms", case.bottoms)
    options.setdefault("phase", case.phase)
    options.setdefault("num_tops", case.num_tops)
    check_gradient(case.text, bottoms, **options)


def run_case_gpu(case: LayerCase) -> None:
    options = dict(case.gpu) if isinstance(case.gpu, Mapping) else {}
    bottoms = options.pop("bottoms", case.bottoms)
    options.setdefault("phase", case.phase)
    options.setdefault("num_tops", case.num_tops)
    compare_devices(case.text, bottoms, **options)


def case_tests(cases: Sequence[LayerCase]) -> dict:
    """The test functions for ``cases``: ``globals().update(case_tests(CASES))`` in a test module."""
    def param(kind):
        chosen = [c for c in cases if kind in c.kinds]
        return pytest.mark.parametrize("case", chosen, ids=[f"{c}{i}" for i, c in enumerate(chosen)])

    @param("reference")
    def test_case_reference(case):
        run_case_reference(case)

    @param("gradient")
    def test_case_gradient(case):
        run_case_gradient(case)

    @pytest.mark.gpu
    @param("gpu")
    def test_case_gpu_matches_cpu(case):
        run_case_gpu(case)

    tests = {"reference": test_case_reference, "gradient": test_case_gradient, "gpu": test_case_gpu_matches_cpu}
    return {f.__name__: f for kind, f in tests.items() if any(kind in c.kinds for c in cases)}


def covers(type_name: str, *kinds: str):
    """Mark an ordinary test as checking ``kinds`` ("gradient", "reference", "gpu") of a layer type."""
    def mark(test):
        test.layer_covers = getattr(test, "layer_covers", set()) | {(type_name, kind) for kind in kinds}
        return test
    return mark
