"""Scale and Bias (Caffe semantics): multiply or add a broadcast factor, learned or a second bottom."""
from __future__ import annotations

import numpy as np

from .base import Layer
from .fillers import fill
from .helpers import canonical_axis, outer_dim_inner, wants_param_grad
from .registry import register


def _factor_shape(layer: Layer, bottom, axis: int, num_axes: int) -> tuple[int, ...]:
    """The shape of a learnable scale/bias: ``bottom.shape[axis:axis + num_axes]`` (-1: to the end)."""
    axis = canonical_axis(layer, bottom, axis)
    if num_axes < -1 or (num_axes >= 0 and axis + num_axes > bottom.num_axes):
        raise layer.error(f"num_axes {num_axes} from axis {axis} does not fit bottom of shape {bottom.shape}")
    return bottom.shape[axis:] if num_axes == -1 else bottom.shape[axis:axis + num_axes]


class _BroadcastLayer(Layer):
    """Shared plumbing of Scale and Bias: a factor blob (bottom 1, or the learnable
    ``blobs[0]``) of shape ``x.shape[axis:axis + k]`` broadcast over ``x`` viewed as
    outer × dim × inner. A scalar factor (0 axes) applies to everything."""

    min_bottoms = 1
    max_bottoms = 2
    exact_num_tops = 1
    supports_in_place = True

    def layer_params(self):
        raise NotImplementedError

    def factor(self, bottoms):
        return bottoms[1] if len(bottoms) > 1 else self.blobs[0]

    def reshape(self, bottoms, tops):
        bottom, factor = bottoms[0], self.factor(bottoms)
        axis = 0 if factor.num_axes == 0 else canonical_axis(self, bottom, self.layer_params().axis)
        if bottom.shape[axis:axis + factor.num_axes] != factor.shape:
            raise self.error(f"{self.type.lower()} shape {factor.shape} does not match bottom shape "
                             f"{bottom.shape} from axis {axis}")
        self.outer, self.dim, self.inner = outer_dim_inner(bottom.shape, axis, factor.num_axes)
        self.in_place = tops[0] is bottom
        if not self.in_place:
            tops[0].reshape(bottom.shape)
        self.factor_grad = self.xp.empty(self.dim, dtype=np.float32)

    def view3(self, array):
        return array.reshape(self.outer, self.dim, self.inner)

    def sum_to_factor(self, dy3, factor_diff, accumulate: bool) -> None:
        """``factor_diff (+)= Σ_{outer, inner} dy3`` (accumulate into a parameter, overwrite a bottom)."""
        if accumulate:
            self.xp.sum(dy3, axis=(0, 2), out=self.factor_grad)
            factor_diff += self.factor_grad.reshape(factor_diff.shape)
        else:
            self.xp.sum(dy3, axis=(0, 2), out=factor_diff.reshape(self.dim))


@register
class BiasLayer(_BroadcastLayer):
    """``y = x + b`` with ``b`` from bottom 1 or learnable (``bias_param``: axis 1, num_axes 1,
    filler default constant 0). Backward: ``dx = dy``, ``db (+)= Σ_{outer, inner} dy``."""

    type = "Bias"

    def layer_params(self):
        return self.param.bias_param

    def setup(self, bottoms, tops):
        p = self.param.bias_param
        if len(bottoms) == 1 and not self.blobs:
            self.blobs = [self.make_blob(_factor_shape(self, bottoms[0], p.axis, p.num_axes), "bias")]
            fill(self.blobs[0], p.filler)

    def forward_cpu(self, bottoms, tops):
        b = self.factor(bottoms).data.reshape(1, self.dim, 1)
        self.xp.add(self.view3(bottoms[0].data), b, out=self.view3(tops[0].data))

    def backward_cpu(self, tops, propagate_down, bottoms):
        dy3 = self.view3(tops[0].diff)
        if len(bottoms) > 1 and propagate_down[1]:
            self.sum_to_factor(dy3, bottoms[1].diff, accumulate=False)
        elif len(bottoms) == 1 and wants_param_grad(self, 0):
            self.sum_to_factor(dy3, self.blobs[0].diff, accumulate=True)
        if propagate_down[0] and not self.in_place:
            bottoms[0].diff[...] = tops[0].diff


@register
class ScaleLayer(_BroadcastLayer):
    """``y = x · s (+ b)`` with ``s`` from bottom 1 or learnable (``scale_param``: axis 1,
    num_axes 1, filler default constant 1) and, with ``bias_term``, a learnable ``b`` of
    the same shape (``bias_filler``, default constant 0; it is the last blob).

    Backward: ``dx = dy · s``, ``ds (+)= Σ_{outer, inner} dy · x``, ``db += Σ dy``. In place,
    ``x`` is copied before being overwritten, as Caffe does.
    """

    type = "Scale"

    def layer_params(self):
        return self.param.scale_param

    def setup(self, bottoms, tops):
        p = self.param.scale_param
        if not self.blobs:
            if len(bottoms) == 1:
                scale = self.make_blob(_factor_shape(self, bottoms[0], p.axis, p.num_axes), "scale")
                filler = p.filler if p.HasField("filler") else type(p.filler)(type="constant", value=1.0)
                fill(scale, filler)
                self.blobs.append(scale)
            if p.bias_term:
                shape = bottoms[1].shape if len(bottoms) > 1 else self.blobs[0].shape
                self.blobs.append(self.make_blob(shape, "bias"))
                fill(self.blobs[-1], p.bias_filler)
        self.bias_index = len(self.blobs) - 1 if p.bias_term else None

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        self.x_copy = self.xp.empty(bottoms[0].shape, dtype=np.float32) if self.in_place else None
        self.work = None

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        x3, y3 = self.view3(bottoms[0].data), self.view3(tops[0].data)
        if self.in_place:
            xp.copyto(self.x_copy, bottoms[0].data)
        xp.multiply(x3, self.factor(bottoms).data.reshape(1, self.dim, 1), out=y3)
        if self.bias_index is not None:
            y3 += self.blobs[self.bias_index].data.reshape(1, self.dim, 1)

    def backward_cpu(self, tops, propagate_down, bottoms):
        xp = self.xp
        dy3 = self.view3(tops[0].diff)
        if self.bias_index is not None and wants_param_grad(self, self.bias_index):
            self.sum_to_factor(dy3, self.blobs[self.bias_index].diff, accumulate=True)
        learnable = len(bottoms) == 1
        if (wants_param_grad(self, 0) if learnable else propagate_down[1]):
            # dy·x needs a full-size scratch: the copy of x when in place (no longer needed
            # after this), else the bottom diff about to be overwritten, else our own.
            if self.in_place:
                x, work = self.x_copy, self.x_copy
            else:
                x = bottoms[0].data
                if propagate_down[0]:
                    work = bottoms[0].diff
                else:
                    if self.work is None:
                        self.work = xp.empty(bottoms[0].shape, dtype=np.float32)
                    work = self.work
            xp.multiply(dy3, self.view3(x), out=self.view3(work))
            self.sum_to_factor(self.view3(work), self.factor(bottoms).diff, accumulate=learnable)
        if propagate_down[0]:
            xp.multiply(dy3, self.factor(bottoms).data.reshape(1, self.dim, 1), out=self.view3(bottoms[0].diff))
