"""Caffe's six update rules (``ComputeUpdateValue`` of sgd_solver.cpp and solvers/*.cpp).

Each rule turns a parameter's gradient ``g`` (its ``diff``, already divided by
``iter_size`` and weight-decayed) into the update the net subtracts from the weights,
written back into ``diff`` as Caffe does. ``lr`` is the rate times the blob's
``lr_mult``; ``t = iter + 1``.

- SGD:      v = momentum*v + lr*g;                      update v
- Nesterov: v' = momentum*v + lr*g;                     update (1+momentum)*v' - momentum*v
- AdaGrad:  h += g^2;                                   update lr*g/(sqrt(h)+delta)
- RMSProp:  h = rms_decay*h + (1-rms_decay)*g^2;        update lr*g/(sqrt(h)+delta)
- AdaDelta: h = m*h + (1-m)*g^2;  u = g*sqrt((hu+delta)/(h+delta));
            hu = m*hu + (1-m)*u^2;                      update lr*u        (m = momentum)
- Adam:     m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2;
            update lr*sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v)+eps)  (b1 = momentum, b2 = momentum2, eps = delta)

History buffers (and the scratch buffers a rule asks for) are allocated once; every
step works in place, so the hot loop allocates nothing. ``history`` is ordered as
Caffe's ``history_``: one buffer per learnable blob, and for AdaDelta and Adam a second
set after the first (that is how ``.solverstate`` files store them).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..blob import Blob


class UpdateRule:
    """Base: holds the per-blob history and scratch buffers; subclasses define :meth:`compute`."""

    type = ""
    histories_per_blob = 1
    scratch_per_blob = 0  # work buffers of the rule's own, per blob

    def __init__(self, param, blobs: Sequence[Blob]):
        self.param = param
        self.blobs = list(blobs)
        self.history = [self._zeros(blob) for _ in range(self.histories_per_blob) for blob in self.blobs]
        self.scratch = [[self._zeros(blob) for _ in range(self.scratch_per_blob)] for blob in self.blobs]

    @staticmethod
    def _zeros(blob: Blob):
        with blob.device.activate():
            return blob.xp.zeros(blob.shape, dtype=np.float32)

    def compute(self, index: int, lr: float, iteration: int) -> None:
        """Replace ``blobs[index].diff`` (the gradient) by the update to subtract."""
        raise NotImplementedError

    @staticmethod
    def _average_square(xp, average, g, decay, tmp) -> None:
        """``average = decay*average + (1-decay)*g^2`` in place (``tmp`` is overwritten)."""
        xp.multiply(g, g, out=tmp)
        tmp *= np.float32(1) - decay
        average *= decay
        average += tmp

    def _root_plus_delta(self, xp, h, out) -> None:
        """``out = sqrt(h) + delta``: the denominator of AdaGrad, RMSProp and Adam."""
        xp.sqrt(h, out=out)
        out += np.float32(self.param.delta)


class SGD(UpdateRule):
    type = "SGD"

    def compute(self, index, lr, iteration):
        g, v = self.blobs[index].diff, self.history[index]
        g *= np.float32(lr)
        v *= np.float32(self.param.momentum)
        v += g
        g[...] = v


class Nesterov(UpdateRule):
    type = "Nesterov"
    scratch_per_blob = 1

    def compute(self, index, lr, iteration):
        g, v, (previous,) = self.blobs[index].diff, self.history[index], self.scratch[index]
        momentum = np.float32(self.param.momentum)
        previous[...] = v
        g *= np.float32(lr)
        v *= momentum
        v += g
        self.blobs[index].xp.multiply(v, np.float32(1) + momentum, out=g)
        previous *= momentum
        g -= previous


class AdaGrad(UpdateRule):
    type = "AdaGrad"
    scratch_per_blob = 1

    def compute(self, index, lr, iteration):
        xp = self.blobs[index].xp
        g, h, (tmp,) = self.blobs[index].diff, self.history[index], self.scratch[index]
        xp.multiply(g, g, out=tmp)
        h += tmp
        self._root_plus_delta(xp, h, tmp)
        g /= tmp
        g *= np.float32(lr)


class RMSProp(UpdateRule):
    type = "RMSProp"
    scratch_per_blob = 1

    def compute(self, index, lr, iteration):
        xp = self.blobs[index].xp
        g, h, (tmp,) = self.blobs[index].diff, self.history[index], self.scratch[index]
        self._average_square(xp, h, g, np.float32(self.param.rms_decay), tmp)
        self._root_plus_delta(xp, h, tmp)
        g /= tmp
        g *= np.float32(lr)


class AdaDelta(UpdateRule):
    type = "AdaDelta"
    histories_per_blob = 2
    scratch_per_blob = 2

    def compute(self, index, lr, iteration):
        xp = self.blobs[index].xp
        n = len(self.blobs)
        g, h, hu = self.blobs[index].diff, self.history[index], self.history[index + n]
        tmp, ratio = self.scratch[index]
        m = np.float32(self.param.momentum)
        delta = np.float32(self.param.delta)
        self._average_square(xp, h, g, m, tmp)
        xp.add(h, delta, out=ratio)
        xp.add(hu, delta, out=tmp)
        xp.divide(tmp, ratio, out=ratio)
        xp.sqrt(ratio, out=ratio)
        g *= ratio
        self._average_square(xp, hu, g, m, tmp)
        g *= np.float32(lr)


class Adam(UpdateRule):
    type = "Adam"
    scratch_per_blob = 1
    histories_per_blob = 2

    def compute(self, index, lr, iteration):
        xp = self.blobs[index].xp
        n = len(self.blobs)
        g, m, v = self.blobs[index].diff, self.history[index], self.history[index + n]
        (tmp,) = self.scratch[index]
        beta1, beta2 = np.float32(self.param.momentum), np.float32(self.param.momentum2)
        t = iteration + 1
        correction = math.sqrt(1.0 - math.pow(beta2, t)) / (1.0 - math.pow(beta1, t))
        xp.multiply(g, np.float32(1) - beta1, out=tmp)
        m *= beta1
        m += tmp
        self._average_square(xp, v, g, beta2, tmp)
        self._root_plus_delta(xp, v, tmp)
        xp.divide(m, tmp, out=g)
        g *= np.float32(np.float32(lr) * np.float32(correction))


RULES: dict[str, type[UpdateRule]] = {cls.type: cls for cls in (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam)}
