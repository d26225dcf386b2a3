"""Activations ("neurons"): element-wise layers with one bottom and one top of the same
shape, Caffe semantics. Every one may run in place (top is the bottom blob).

CPU: numpy expressions written into buffers sized in ``reshape`` (``out=`` everywhere).
GPU: one-line cupy ``ElementwiseKernel`` per direction, as Chainer writes them, built on
first GPU use and cached at module level (:func:`elementwise`).

In place, ``bottom.data`` *is* ``top.data`` by the time backward runs, and ``bottom.diff``
*is* ``top.diff``. Backward therefore works from the output where the output determines
the gradient (Sigmoid, TanH, ELU, Exp, BNLL, Swish, and ReLU whose sign survives);
layers whose gradient needs the input (``backward_needs_input``: AbsVal, Power, Log,
Clip, PReLU) keep a copy of it in a preallocated buffer when run in place, as Caffe's
PReLU does with ``bottom_memory_``.
"""
from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from .base import Layer
from .helpers import wants_param_grad
from .fillers import fill
from .kernels import elementwise
from .registry import register

#: A kernel description: (input parameters, output parameters, one-line body).
KernelSpec = tuple[str, str, str]


def param_names(params: str) -> list[str]:
    """``"float32 x, float32 slope"`` -> ``["x", "slope"]``."""
    return [p.split()[-1] for p in params.split(",") if p.strip()]


class NeuronLayer(Layer):
    """Shared plumbing of the activations.

    Subclasses write ``compute(x, y)`` and ``gradient(x, y, dy, dx)`` with the array
    module (CPU path), declare ``forward_kernel``/``backward_kernel`` (GPU path) and
    give the kernels' scalar parameters by name in ``scalars()``. Kernel argument names:
    ``x`` (input), ``y`` (output), ``dy``, ``dx``, and any name ``kernel_arrays()`` adds.
    """

    exact_num_bottoms = 1
    exact_num_tops = 1
    supports_in_place = True
    #: The gradient needs the input, which an in-place forward overwrites: keep a copy.
    backward_needs_input: ClassVar[bool] = False
    forward_kernel: ClassVar[KernelSpec]
    backward_kernel: ClassVar[KernelSpec | None] = None

    saved_input = None
    _work = _work2 = None

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        if tops[0] is not bottoms[0]:
            tops[0].reshape(shape)
        keep = self.backward_needs_input and tops[0] is bottoms[0]
        self.saved_input = self._buffer(self.saved_input, shape) if keep else None
        self._shape = shape

    # Scratch for the array-module expressions (the CPU path, and PReLU's slope gradient),
    # made on first use after a reshape: the GPU kernels need none.
    @property
    def work(self):
        """Scratch of the bottom's shape."""
        self._work = self._buffer(self._work, self._shape)
        return self._work

    @property
    def work2(self):
        """A second scratch of the bottom's shape (Swish's gradient)."""
        self._work2 = self._buffer(self._work2, self._shape)
        return self._work2

    def _buffer(self, old, shape, dtype=np.float32):
        if old is not None and old.shape == shape and old.dtype == dtype:
            return old
        return self.xp.empty(shape, dtype=dtype)

    def scalars(self) -> dict[str, float]:
        """The kernels' scalar parameters by name."""
        return {}

    def kernel_arrays(self) -> dict:
        """Extra array arguments of the kernels by name (e.g. Swish's sigmoid)."""
        return {}

    def _input_for_forward(self, bottoms):
        if self.saved_input is not None:
            self.xp.copyto(self.saved_input, bottoms[0].data)
            return self.saved_input
        return bottoms[0].data

    def input_data(self, bottoms):
        """The forward input: the saved copy when in place, else the bottom's data."""
        return self.saved_input if self.saved_input is not None else bottoms[0].data

    # ---- CPU -------------------------------------------------------------------
    def compute(self, x, y) -> None:
        raise NotImplementedError

    def gradient(self, x, y, dy, dx) -> None:
        raise NotImplementedError

    def forward_cpu(self, bottoms, tops):
        self.compute(self._input_for_forward(bottoms), tops[0].data)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            self.gradient(self.input_data(bottoms), tops[0].data, tops[0].diff, bottoms[0].diff)

    # ---- GPU -------------------------------------------------------------------
    def run_kernel(self, spec: KernelSpec, direction: str, **arrays) -> None:
        inputs, outputs, body = spec
        kernel = elementwise(inputs, outputs, body, f"dl_{self.type.lower()}_{direction}")
        values = {**arrays, **self.kernel_arrays(), **{k: np.float32(v) for k, v in self.scalars().items()}}
        kernel(*(values[name] for name in param_names(inputs) + param_names(outputs)))

    def forward_gpu(self, bottoms, tops):
        self.run_kernel(self.forward_kernel, "forward", x=self._input_for_forward(bottoms), y=tops[0].data)

    def backward_gpu(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            self.run_kernel(self.backward_kernel, "backward", x=self.input_data(bottoms), y=tops[0].data,
                            dy=tops[0].diff, dx=bottoms[0].diff)


@register
class ReLULayer(NeuronLayer):
    """``y = max(x, 0) + negative_slope · min(x, 0)``; ``dx = dy · (x > 0 ? 1 : negative_slope)``.

    In place ``x`` is already ``y``, which has the sign of ``x`` for a non-negative
    slope, so backward reads the bottom's data as Caffe does.
    """

    type = "ReLU"
    forward_kernel = ("float32 x, float32 slope", "float32 y", "y = x > 0 ? x : x * slope")
    backward_kernel = ("float32 x, float32 dy, float32 slope", "float32 dx", "dx = x > 0 ? dy : dy * slope")

    def setup(self, bottoms, tops):
        self.slope = float(self.param.relu_param.negative_slope)

    def scalars(self):
        return {"slope": self.slope}

    def compute(self, x, y):
        xp, w = self.xp, self.work
        if self.slope:
            xp.minimum(x, 0, out=w)
            w *= self.slope
        xp.maximum(x, 0, out=y)
        if self.slope:
            y += w

    def gradient(self, x, y, dy, dx):
        w = self.work
        self.xp.greater(x, 0, out=w)
        if self.slope:
            w *= 1 - self.slope
            w += self.slope
        self.xp.multiply(dy, w, out=dx)


@register
class PReLULayer(NeuronLayer):
    """``y = max(x, 0) + a_c · min(x, 0)`` with a learnable slope per channel (axis 1),
    or one slope for all (``channel_shared``; blob shape ``()``, as Caffe's).

    Backward: ``da_c += Σ dy · min(x, 0)`` over the items and positions of channel c
    (all of them when shared); ``dx = dy · (x > 0 ? 1 : a_c)``. Default filler:
    constant 0.25.
    """

    type = "PReLU"
    backward_needs_input = True
    forward_kernel = ("float32 x, float32 a", "float32 y", "y = x > 0 ? x : x * a")
    backward_kernel = ("float32 x, float32 dy, float32 a", "float32 dx", "dx = x > 0 ? dy : dy * a")
    slope_grad_kernel = ("float32 x, float32 dy", "float32 g", "g = x > 0 ? 0 : x * dy")

    def setup(self, bottoms, tops):
        if bottoms[0].num_axes < 2:
            raise self.error(f"bottom must have at least 2 axes, got shape {bottoms[0].shape}")
        p = self.param.prelu_param
        self.shared = bool(p.channel_shared)
        self.channels = bottoms[0].shape[1]
        if not self.blobs:
            slope = self.make_blob(() if self.shared else (self.channels,), "slope")
            if p.HasField("filler"):
                fill(slope, p.filler)
            else:
                slope.data[...] = 0.25
            self.blobs = [slope]
        expected = 1 if self.shared else self.channels
        if self.blobs[0].count != expected:
            raise self.error(f"slope blob has {self.blobs[0].count} values, expected {expected}")

    def reshape(self, bottoms, tops):
        if bottoms[0].num_axes < 2 or bottoms[0].shape[1] != self.channels:
            raise self.error(f"bottom shape {bottoms[0].shape} does not have the {self.channels} channels "
                             "the layer was set up for")
        super().reshape(bottoms, tops)
        shape = bottoms[0].shape
        self.shape3 = (shape[0], shape[1], bottoms[0].count_from(2))

    def slope3(self):
        """The slope broadcastable against the bottom seen as (N, C, spatial)."""
        return self.blobs[0].data.reshape(1, -1, 1)

    def compute(self, x, y):
        xp, w = self.xp, self.work.reshape(self.shape3)
        xp.minimum(x.reshape(self.shape3), 0, out=w)
        w *= self.slope3()
        xp.maximum(x, 0, out=y)
        y += w.reshape(y.shape)

    def backward_cpu(self, tops, propagate_down, bottoms):
        xp = self.xp
        x = self.input_data(bottoms).reshape(self.shape3)
        dy = tops[0].diff.reshape(self.shape3)
        w = self.work.reshape(self.shape3)
        # The slope gradient first: in place, dx overwrites dy.
        if wants_param_grad(self, 0):
            xp.minimum(x, 0, out=w)
            w *= dy
            self._accumulate_slope_grad(w)
        if propagate_down[0]:
            a = self.slope3()
            xp.greater(x, 0, out=w)
            w *= 1 - a
            w += a
            xp.multiply(dy, w, out=bottoms[0].diff.reshape(self.shape3))

    def _accumulate_slope_grad(self, terms) -> None:
        grad = self.blobs[0].diff
        if self.shared:
            grad += terms.sum()
        else:
            grad += terms.sum(axis=(0, 2))

    def forward_gpu(self, bottoms, tops):
        x = self._input_for_forward(bottoms).reshape(self.shape3)
        self.run_kernel(self.forward_kernel, "forward", x=x, a=self.slope3(), y=tops[0].data.reshape(self.shape3))

    def backward_gpu(self, tops, propagate_down, bottoms):
        x = self.input_data(bottoms).reshape(self.shape3)
        dy = tops[0].diff.reshape(self.shape3)
        if wants_param_grad(self, 0):
            w = self.work.reshape(self.shape3)
            self.run_kernel(self.slope_grad_kernel, "slope_grad", x=x, dy=dy, g=w)
            self._accumulate_slope_grad(w)
        if propagate_down[0]:
            self.run_kernel(self.backward_kernel, "backward", x=x, dy=dy, a=self.slope3(),
                            dx=bottoms[0].diff.reshape(self.shape3))


@register
class ELULayer(NeuronLayer):
    """``y = x > 0 ? x : alpha · (exp(x) - 1)``; ``dx = dy · (x > 0 ? 1 : y + alpha)``.

    The output keeps the sign of the input (alpha > 0), so backward reads the top only.
    """

    type = "ELU"
    forward_kernel = ("float32 x, float32 alpha", "float32 y", "y = x > 0 ? x : alpha * expm1(x)")
    backward_kernel = ("float32 y, float32 dy, float32 alpha", "float32 dx", "dx = y > 0 ? dy : dy * (y + alpha)")

    def setup(self, bottoms, tops):
        self.alpha = float(self.param.elu_param.alpha)

    def scalars(self):
        return {"alpha": self.alpha}

    def compute(self, x, y):
        xp, w = self.xp, self.work
        xp.minimum(x, 0, out=w)
        xp.expm1(w, out=w)
        w *= self.alpha
        xp.maximum(x, 0, out=y)
        y += w

    def gradient(self, x, y, dy, dx):
        xp, w = self.xp, self.work
        xp.add(y, self.alpha, out=w)
        xp.copyto(w, 1, where=y > 0)
        xp.multiply(dy, w, out=dx)


@register
class SigmoidLayer(NeuronLayer):
    """``y = 1 / (1 + exp(-x))`` (computed as ``0.5·tanh(0.5·x) + 0.5``); ``dx = dy · y · (1 - y)``."""

    type = "Sigmoid"
    forward_kernel = ("float32 x", "float32 y", "y = tanh(x * 0.5f) * 0.5f + 0.5f")
    backward_kernel = ("float32 y, float32 dy", "float32 dx", "dx = dy * y * (1 - y)")

    def compute(self, x, y):
        xp = self.xp
        xp.multiply(x, 0.5, out=y)
        xp.tanh(y, out=y)
        y *= 0.5
        y += 0.5

    def gradient(self, x, y, dy, dx):
        xp, w = self.xp, self.work
        xp.subtract(1, y, out=w)
        w *= y
        xp.multiply(dy, w, out=dx)


@register
class TanHLayer(NeuronLayer):
    """``y = tanh(x)``; ``dx = dy · (1 - y²)``."""

    type = "TanH"
    forward_kernel = ("float32 x", "float32 y", "y = tanh(x)")
    backward_kernel = ("float32 y, float32 dy", "float32 dx", "dx = dy * (1 - y * y)")

    def compute(self, x, y):
        self.xp.tanh(x, out=y)

    def gradient(self, x, y, dy, dx):
        xp, w = self.xp, self.work
        xp.multiply(y, y, out=w)
        xp.subtract(1, w, out=w)
        xp.multiply(dy, w, out=dx)


@register
class AbsValLayer(NeuronLayer):
    """``y = |x|``; ``dx = dy · sign(x)``. (Caffe refuses in place; we keep the input instead.)"""

    type = "AbsVal"
    backward_needs_input = True
    forward_kernel = ("float32 x", "float32 y", "y = fabs(x)")
    backward_kernel = ("float32 x, float32 dy", "float32 dx", "dx = x > 0 ? dy : (x < 0 ? -dy : 0)")

    def compute(self, x, y):
        self.xp.abs(x, out=y)

    def gradient(self, x, y, dy, dx):
        xp, w = self.xp, self.work
        xp.sign(x, out=w)
        xp.multiply(dy, w, out=dx)


@register
class BNLLLayer(NeuronLayer):
    """Binomial normal log likelihood, softplus: ``y = log(1 + exp(x))``, computed stably as
    ``max(x, 0) + log(1 + exp(-|x|))``.

    ``dx = dy · sigmoid(x)``, and since ``exp(y) = 1 + exp(x)``, ``sigmoid(x) = 1 - exp(-y)``:
    backward reads the top only.
    """

    type = "BNLL"
    forward_kernel = ("float32 x", "float32 y", "y = max(x, 0.f) + log1p(exp(-fabs(x)))")
    backward_kernel = ("float32 y, float32 dy", "float32 dx", "dx = -dy * expm1(-y)")

    def compute(self, x, y):
        xp, w = self.xp, self.work
        xp.abs(x, out=w)
        xp.negative(w, out=w)
        xp.exp(w, out=w)
        xp.log1p(w, out=w)
        xp.maximum(x, 0, out=y)
        y += w

    def gradient(self, x, y, dy, dx):
        xp, w = self.xp, self.work
        xp.negative(y, out=w)
        xp.expm1(w, out=w)
        w *= -1
        xp.multiply(dy, w, out=dx)


@register
class PowerLayer(NeuronLayer):
    """``y = (shift + scale · x)^power``; ``dx = dy · power · scale · (shift + scale · x)^(power - 1)``
    (zero when ``power · scale == 0``, as in Caffe)."""

    type = "Power"
    backward_needs_input = True
    forward_kernel = ("float32 x, float32 power, float32 scale, float32 shift", "float32 y",
                      "y = pow(shift + scale * x, power)")
    backward_kernel = ("float32 x, float32 dy, float32 power, float32 scale, float32 shift, float32 diff_scale",
                       "float32 dx", "dx = dy * diff_scale * pow(shift + scale * x, power - 1)")

    def setup(self, bottoms, tops):
        p = self.param.power_param
        self.power, self.scale, self.shift = float(p.power), float(p.scale), float(p.shift)
        self.diff_scale = self.power * self.scale

    def scalars(self):
        return {"power": self.power, "scale": self.scale, "shift": self.shift, "diff_scale": self.diff_scale}

    def compute(self, x, y):
        xp = self.xp
        xp.multiply(x, self.scale, out=y)
        y += self.shift
        if self.power != 1:
            xp.power(y, self.power, out=y)

    def gradient(self, x, y, dy, dx):
        xp, w = self.xp, self.work
        xp.multiply(x, self.scale, out=w)
        w += self.shift
        xp.power(w, self.power - 1, out=w)
        w *= self.diff_scale
        xp.multiply(dy, w, out=dx)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if propagate_down[0] and self.diff_scale == 0:
            bottoms[0].diff[...] = 0
        else:
            super().backward_cpu(tops, propagate_down, bottoms)

    def backward_gpu(self, tops, propagate_down, bottoms):
        if propagate_down[0] and self.diff_scale == 0:
            bottoms[0].diff[...] = 0
        else:
            super().backward_gpu(tops, propagate_down, bottoms)


def _log_base(layer: Layer, base: float) -> float:
    """ln(base), with Caffe's ``base = -1`` meaning e; other bases must be positive."""
    if base == -1:
        return 1.0
    if base <= 0:
        raise layer.error(f"base must be strictly positive (or -1 for e), got {base:g}")
    return math.log(base)


@register
class ExpLayer(NeuronLayer):
    """``y = base^(shift + scale · x)`` (``base = -1``: e), computed as
    ``outer · exp(inner · x)`` with ``inner = ln(base) · scale``, ``outer = base^shift``;
    ``dx = dy · y · inner``."""

    type = "Exp"
    forward_kernel = ("float32 x, float32 inner, float32 outer", "float32 y", "y = outer * exp(inner * x)")
    backward_kernel = ("float32 y, float32 dy, float32 inner", "float32 dx", "dx = dy * y * inner")

    def setup(self, bottoms, tops):
        p = self.param.exp_param
        log_base = _log_base(self, float(p.base))
        self.inner = log_base * float(p.scale)
        self.outer = math.exp(log_base * float(p.shift))

    def scalars(self):
        return {"inner": self.inner, "outer": self.outer}

    def compute(self, x, y):
        self.xp.multiply(x, self.inner, out=y)
        self.xp.exp(y, out=y)
        if self.outer != 1:
            y *= self.outer

    def gradient(self, x, y, dy, dx):
        self.xp.multiply(dy, y, out=dx)
        dx *= self.inner


@register
class LogLayer(NeuronLayer):
    """``y = log_base(shift + scale · x)`` (``base = -1``: natural log);
    ``dx = dy · scale / (ln(base) · (shift + scale · x))``."""

    type = "Log"
    backward_needs_input = True
    forward_kernel = ("float32 x, float32 scale, float32 shift, float32 base_scale", "float32 y",
                      "y = log(shift + scale * x) * base_scale")
    backward_kernel = ("float32 x, float32 dy, float32 scale, float32 shift, float32 numerator", "float32 dx",
                       "dx = dy * numerator / (shift + scale * x)")

    def setup(self, bottoms, tops):
        p = self.param.log_param
        self.base_scale = 1.0 / _log_base(self, float(p.base))
        self.scale, self.shift = float(p.scale), float(p.shift)
        self.numerator = self.scale * self.base_scale

    def scalars(self):
        return {"scale": self.scale, "shift": self.shift, "base_scale": self.base_scale,
                "numerator": self.numerator}

    def compute(self, x, y):
        xp = self.xp
        xp.multiply(x, self.scale, out=y)
        y += self.shift
        xp.log(y, out=y)
        if self.base_scale != 1:
            y *= self.base_scale

    def gradient(self, x, y, dy, dx):
        xp, w = self.xp, self.work
        xp.multiply(x, self.scale, out=w)
        w += self.shift
        xp.divide(self.numerator, w, out=w)
        xp.multiply(dy, w, out=dx)


@register
class ThresholdLayer(NeuronLayer):
    """``y = x > threshold ? 1 : 0``. No backward (Caffe's is not implemented)."""

    type = "Threshold"
    forward_only = True
    forward_kernel = ("float32 x, float32 threshold", "float32 y", "y = x > threshold ? 1 : 0")

    def setup(self, bottoms, tops):
        self.threshold = float(self.param.threshold_param.threshold)

    def scalars(self):
        return {"threshold": self.threshold}

    def compute(self, x, y):
        self.xp.greater(x, self.threshold, out=y)

    def backward_cpu(self, tops, propagate_down, bottoms):
        Layer.backward_cpu(self, tops, propagate_down, bottoms)

    def backward_gpu(self, tops, propagate_down, bottoms):
        Layer.backward_cpu(self, tops, propagate_down, bottoms)


@register
class SwishLayer(NeuronLayer):
    """``y = x · s`` with ``s = sigmoid(beta · x)`` (kept for backward);
    ``dx = dy · (beta · y + s · (1 - beta · y))``: from the top and ``s`` only."""

    type = "Swish"
    forward_kernel = ("float32 x, float32 beta", "float32 s, float32 y",
                      "s = tanh(x * beta * 0.5f) * 0.5f + 0.5f; y = x * s")
    backward_kernel = ("float32 y, float32 s, float32 dy, float32 beta", "float32 dx",
                       "dx = dy * (beta * y + s * (1 - beta * y))")

    def setup(self, bottoms, tops):
        self.beta = float(self.param.swish_param.beta)

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        self.sig = self._buffer(getattr(self, "sig", None), bottoms[0].shape)

    def scalars(self):
        return {"beta": self.beta}

    def kernel_arrays(self):
        return {"s": self.sig}

    def compute(self, x, y):
        xp, s = self.xp, self.sig
        xp.multiply(x, 0.5 * self.beta, out=s)
        xp.tanh(s, out=s)
        s *= 0.5
        s += 0.5
        xp.multiply(x, s, out=y)

    def gradient(self, x, y, dy, dx):
        xp, w, w2, s = self.xp, self.work, self.work2, self.sig
        xp.multiply(y, self.beta, out=w)
        xp.subtract(1, s, out=w2)
        w *= w2
        w += s
        xp.multiply(dy, w, out=dx)


@register
class ClipLayer(NeuronLayer):
    """``y = min(max(x, min), max)``; ``dx = dy · (min <= x <= max)``."""

    type = "Clip"
    backward_needs_input = True
    forward_kernel = ("float32 x, float32 lo, float32 hi", "float32 y", "y = min(max(x, lo), hi)")
    backward_kernel = ("float32 x, float32 dy, float32 lo, float32 hi", "float32 dx",
                       "dx = (x >= lo && x <= hi) ? dy : 0")

    def setup(self, bottoms, tops):
        p = self.param.clip_param
        self.lo, self.hi = float(p.min), float(p.max)
        if self.lo > self.hi:
            raise self.error(f"clip_param min {self.lo:g} is greater than max {self.hi:g}")

    def scalars(self):
        return {"lo": self.lo, "hi": self.hi}

    def compute(self, x, y):
        self.xp.clip(x, self.lo, self.hi, out=y)

    def gradient(self, x, y, dy, dx):
        xp, w = self.xp, self.work
        xp.greater_equal(x, self.lo, out=w)
        w *= x <= self.hi
        xp.multiply(dy, w, out=dx)
