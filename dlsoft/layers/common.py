"""Shape and plumbing layers: InnerProduct, Embed, Concat, Slice, Split, Flatten, Reshape,
Eltwise, Tile, Reduction, ArgMax, Silence, Filter, BatchReindex, Parameter (Caffe semantics).

Every layer here is written once against the blobs' array module (numpy or cupy), so the
default GPU path (the CPU code on cupy arrays) is the GPU implementation. Work buffers
are sized in ``reshape`` and the compute methods write through ``out=`` arguments.

Shapes are read as Caffe reads them: an ``axis`` splits a blob into
``outer × dim × inner`` (``outer`` = product of the axes before it, ``inner`` = after).
"""
from __future__ import annotations

from itertools import pairwise

import numpy as np

from .. import random as dl_random
from .base import TRAIN, Layer
from .fillers import fill
from .registry import register


def outer_dim_inner(shape: tuple[int, ...], axis: int, num_axes: int = 1) -> tuple[int, int, int]:
    """Split ``shape`` at ``[axis, axis + num_axes)`` into (outer, dim, inner) counts."""
    def prod(dims):
        return int(np.prod(dims, dtype=np.int64))
    return prod(shape[:axis]), prod(shape[axis:axis + num_axes]), prod(shape[axis + num_axes:])


def wants_param_grad(layer: Layer, index: int) -> bool:
    """Whether the net asked for the gradient of ``layer.blobs[index]`` (Caffe's default: yes)."""
    flags = layer.param_propagate_down
    return index >= len(flags) or bool(flags[index])


def canonical_axis(layer: Layer, blob, axis: int) -> int:
    """``blob.canonical_axis`` with the error naming the layer."""
    try:
        return blob.canonical_axis(axis)
    except IndexError:
        raise layer.error(f"axis {axis} out of range for bottom of shape {blob.shape}") from None


def int_buffer(xp, size: int, old=None):
    """An int32 work array of ``size`` elements, reusing ``old`` when big enough."""
    if old is not None and old.size >= size:
        return old[:size]
    return xp.empty(size, dtype=np.int32)


@register
class InnerProductLayer(Layer):
    """Fully connected: ``y = x·Wᵀ + b`` with ``x`` flattened from ``axis`` to M×K.

    ``W`` is ``num_output × K`` (``K × num_output`` with ``transpose: true``, then
    ``y = x·W``); ``b`` is ``num_output``. Backward: ``dW += dyᵀ·x`` (``xᵀ·dy``),
    ``db += Σ_rows dy``, ``dx = dy·W`` (``dy·Wᵀ``).
    """

    type = "InnerProduct"
    exact_num_bottoms = 1
    exact_num_tops = 1

    def setup(self, bottoms, tops):
        p = self.param.inner_product_param
        if p.num_output <= 0:
            raise self.error("inner_product_param.num_output must be positive")
        self.axis = canonical_axis(self, bottoms[0], p.axis)
        self.transpose = p.transpose
        self.bias_term = p.bias_term
        self.num_input = bottoms[0].count_from(self.axis)
        if not self.blobs:
            shape = (self.num_input, p.num_output) if self.transpose else (p.num_output, self.num_input)
            self.blobs = [self.make_blob(shape, f"{self.name}.weight")]
            fill(self.blobs[0], p.weight_filler)
            if self.bias_term:
                self.blobs.append(self.make_blob((p.num_output,), f"{self.name}.bias"))
                fill(self.blobs[1], p.bias_filler)
        self._weight_grad = self.xp.empty(self.blobs[0].shape, dtype=np.float32)
        self._bias_grad = self.xp.empty(p.num_output, dtype=np.float32) if self.bias_term else None

    def reshape(self, bottoms, tops):
        bottom = bottoms[0]
        if bottom.count_from(self.axis) != self.num_input:
            raise self.error(f"input size {bottom.count_from(self.axis)} (shape {bottom.shape} "
                             f"flattened from axis {self.axis}) does not match the weights' {self.num_input}")
        self.rows = bottom.count_from(0, self.axis)
        tops[0].reshape(bottom.shape[:self.axis] + (self.param.inner_product_param.num_output,))

    def _weight_t(self):
        """W as (K, num_output), so that y = x · weight_t in both layouts."""
        weight = self.blobs[0].data
        return weight if self.transpose else weight.T

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        x = bottoms[0].data.reshape(self.rows, self.num_input)
        y = tops[0].data.reshape(self.rows, -1)
        xp.matmul(x, self._weight_t(), out=y)
        if self.bias_term:
            y += self.blobs[1].data

    def backward_cpu(self, tops, propagate_down, bottoms):
        xp = self.xp
        dy = tops[0].diff.reshape(self.rows, -1)
        x = bottoms[0].data.reshape(self.rows, self.num_input)
        if wants_param_grad(self, 0):
            if self.transpose:
                xp.matmul(x.T, dy, out=self._weight_grad)
            else:
                xp.matmul(dy.T, x, out=self._weight_grad)
            self.blobs[0].diff += self._weight_grad
        if self.bias_term and wants_param_grad(self, 1):
            xp.sum(dy, axis=0, out=self._bias_grad)
            self.blobs[1].diff += self._bias_grad
        if propagate_down[0]:
            xp.matmul(dy, self._weight_t().T, out=bottoms[0].diff.reshape(self.rows, self.num_input))


@register
class EmbedLayer(Layer):
    """A lookup table: ``y[..., :] = W[int(x[...]), :] + b``, ``W`` is input_dim × num_output.

    The indices arrive as floats and are truncated to integers, as in Caffe. There is no
    gradient with respect to the indices; ``dW[i] += Σ_{x=i} dy``, ``db += Σ dy``.
    """

    type = "Embed"
    exact_num_bottoms = 1
    exact_num_tops = 1

    def setup(self, bottoms, tops):
        p = self.param.embed_param
        if p.num_output <= 0 or p.input_dim <= 0:
            raise self.error("embed_param needs positive num_output and input_dim")
        self.bias_term = p.bias_term
        if not self.blobs:
            self.blobs = [self.make_blob((p.input_dim, p.num_output), f"{self.name}.weight")]
            fill(self.blobs[0], p.weight_filler)
            if self.bias_term:
                self.blobs.append(self.make_blob((p.num_output,), f"{self.name}.bias"))
                fill(self.blobs[1], p.bias_filler)
        self._indices = None
        self._bias_grad = self.xp.empty(p.num_output, dtype=np.float32) if self.bias_term else None

    def reshape(self, bottoms, tops):
        num_output = self.param.embed_param.num_output
        tops[0].reshape(bottoms[0].shape + (num_output,))
        self._indices = int_buffer(self.xp, bottoms[0].count, self._indices)

    def allow_backward_to(self, bottom_index):
        return False

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        xp.copyto(self._indices, bottoms[0].data.reshape(-1), casting="unsafe")
        if self._indices.size and (int(self._indices.min()) < 0
                                   or int(self._indices.max()) >= self.param.embed_param.input_dim):
            raise self.error(f"index out of range [0, {self.param.embed_param.input_dim}) in bottom")
        y = tops[0].data.reshape(self._indices.size, -1)
        xp.take(self.blobs[0].data, self._indices, axis=0, out=y)
        if self.bias_term:
            y += self.blobs[1].data

    def backward_cpu(self, tops, propagate_down, bottoms):
        xp = self.xp
        if propagate_down[0]:
            raise self.error("cannot backpropagate to the indices")
        dy = tops[0].diff.reshape(self._indices.size, -1)
        if wants_param_grad(self, 0):
            xp.add.at(self.blobs[0].diff, self._indices, dy)
        if self.bias_term and wants_param_grad(self, 1):
            xp.sum(dy, axis=0, out=self._bias_grad)
            self.blobs[1].diff += self._bias_grad


def _legacy_axis(layer: Layer, bottom, param, legacy_field: str) -> int:
    """``axis``, or the legacy ``concat_dim``/``slice_dim`` when that is set (Caffe's rule)."""
    axis = int(getattr(param, legacy_field)) if param.HasField(legacy_field) else param.axis
    return canonical_axis(layer, bottom, axis)


@register
class ConcatLayer(Layer):
    """Joins bottoms along ``axis`` (default 1; legacy ``concat_dim``); other axes must agree.

    Backward hands each bottom its slice of ``dy``.
    """

    type = "Concat"
    min_bottoms = 1
    exact_num_tops = 1

    def reshape(self, bottoms, tops):
        p = self.param.concat_param
        axis = self.axis = _legacy_axis(self, bottoms[0], p, "concat_dim")
        first = bottoms[0].shape
        for bottom in bottoms[1:]:
            shape = bottom.shape
            if len(shape) != len(first) or shape[:axis] + shape[axis + 1:] != first[:axis] + first[axis + 1:]:
                raise self.error(f"bottom '{bottom.name}' shape {shape} does not match {first} "
                                 f"outside the concatenation axis {axis}")
        self.sizes = [b.shape[axis] for b in bottoms]
        tops[0].reshape(first[:axis] + (sum(self.sizes),) + first[axis + 1:])
        self.outer, _, self.inner = outer_dim_inner(first, axis)

    def _pieces(self, array):
        """Views of ``array`` (the top), one per bottom, each outer × (size·inner)."""
        flat = array.reshape(self.outer, -1)
        offset = 0
        for size in self.sizes:
            yield flat[:, offset * self.inner:(offset + size) * self.inner]
            offset += size

    def forward_cpu(self, bottoms, tops):
        for bottom, piece in zip(bottoms, self._pieces(tops[0].data)):
            piece[...] = bottom.data.reshape(self.outer, -1)

    def backward_cpu(self, tops, propagate_down, bottoms):
        for down, bottom, piece in zip(propagate_down, bottoms, self._pieces(tops[0].diff)):
            if down:
                bottom.diff.reshape(self.outer, -1)[...] = piece


@register
class SliceLayer(Layer):
    """Cuts the bottom along ``axis`` (legacy ``slice_dim``) at ``slice_point``s, or into
    equal parts when no points are given. The inverse of Concat."""

    type = "Slice"
    exact_num_bottoms = 1
    min_tops = 1

    def reshape(self, bottoms, tops):
        p = self.param.slice_param
        shape = bottoms[0].shape
        axis = self.axis = _legacy_axis(self, bottoms[0], p, "slice_dim")
        total = shape[axis]
        points = list(p.slice_point)
        if points:
            if len(points) != len(tops) - 1:
                raise self.error(f"{len(points)} slice_point(s) for {len(tops)} tops (need {len(tops) - 1})")
            bounds = [0] + points + [total]
            if any(b >= e for b, e in pairwise(bounds)):
                raise self.error(f"slice points {points} must increase strictly inside (0, {total})")
            self.sizes = [e - b for b, e in pairwise(bounds)]
        else:
            if total % len(tops):
                raise self.error(f"axis {axis} of size {total} does not split into {len(tops)} equal parts")
            self.sizes = [total // len(tops)] * len(tops)
        for top, size in zip(tops, self.sizes):
            top.reshape(shape[:axis] + (size,) + shape[axis + 1:])
        self.outer, _, self.inner = outer_dim_inner(shape, axis)

    _pieces = ConcatLayer._pieces

    def forward_cpu(self, bottoms, tops):
        for top, piece in zip(tops, self._pieces(bottoms[0].data)):
            top.data.reshape(self.outer, -1)[...] = piece

    def backward_cpu(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            for top, piece in zip(tops, self._pieces(bottoms[0].diff)):
                piece[...] = top.diff.reshape(self.outer, -1)


@register
class SplitLayer(Layer):
    """One bottom to N tops. The tops share the bottom's data (no copy); backward sums
    the tops' diffs into the bottom's diff."""

    type = "Split"
    exact_num_bottoms = 1
    min_tops = 1

    def reshape(self, bottoms, tops):
        for top in tops:
            top.reshape(bottoms[0].shape)
            top.share_data(bottoms[0])

    def forward_cpu(self, bottoms, tops):
        """Nothing to compute: the tops are views of the bottom's data."""

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        dx = bottoms[0].diff
        if len(tops) == 1:
            dx[...] = tops[0].diff
            return
        self.xp.add(tops[0].diff, tops[1].diff, out=dx)
        for top in tops[2:]:
            dx += top.diff


class _ViewLayer(Layer):
    """A top that is the bottom with another shape: data (and, at TRAIN, diff) storage
    is shared, so forward and backward copy nothing."""

    exact_num_bottoms = 1
    exact_num_tops = 1

    def top_shape(self, bottom) -> tuple[int, ...]:
        raise NotImplementedError

    def reshape(self, bottoms, tops):
        bottom, top = bottoms[0], tops[0]
        if top is bottom:
            raise self.error("cannot run in place")
        top.reshape(self.top_shape(bottom))
        top.share_data(bottom)
        # A TEST net never needs diffs: sharing would allocate the bottom's.
        self.diff_shared = self.phase == TRAIN
        if self.diff_shared:
            top.share_diff(bottom)

    def forward_cpu(self, bottoms, tops):
        """Nothing to compute: the top views the bottom's data."""

    def backward_cpu(self, tops, propagate_down, bottoms):
        if propagate_down[0] and not self.diff_shared:
            bottoms[0].diff[...] = tops[0].diff.reshape(bottoms[0].shape)


@register
class FlattenLayer(_ViewLayer):
    """Merges axes ``axis``..``end_axis`` (defaults 1 and -1) into one."""

    type = "Flatten"

    def top_shape(self, bottom):
        p = self.param.flatten_param
        start, end = canonical_axis(self, bottom, p.axis), canonical_axis(self, bottom, p.end_axis)
        shape = bottom.shape
        return shape[:start] + (bottom.count_from(start, end + 1),) + shape[end + 1:]


@register
class ReshapeLayer(_ViewLayer):
    """Replaces axes ``[axis, axis + num_axes)`` by ``shape``: a 0 copies the bottom's
    dimension at that position, one -1 is inferred from the count."""

    type = "Reshape"

    def top_shape(self, bottom):
        p = self.param.reshape_param
        dims = [int(d) for d in p.shape.dim]
        in_shape = bottom.shape
        start = p.axis if p.axis >= 0 else len(in_shape) + p.axis + 1
        end = len(in_shape) if p.num_axes == -1 else start + p.num_axes
        if not 0 <= start <= end <= len(in_shape):
            raise self.error(f"axis {p.axis} / num_axes {p.num_axes} out of range for bottom of shape {in_shape}")
        if dims.count(-1) > 1 or any(d < -1 for d in dims):
            raise self.error(f"shape {dims}: at most one -1 and no other negative dimension")
        for i, d in enumerate(dims):
            if d == 0:
                if start + i >= len(in_shape):
                    raise self.error(f"shape {dims}: dimension {i} is 0 but the bottom has no axis {start + i}")
                dims[i] = in_shape[start + i]
        shape = list(in_shape[:start]) + dims + list(in_shape[end:])
        if -1 in shape:
            known = int(np.prod([d for d in shape if d != -1], dtype=np.int64))
            if known == 0 or bottom.count % known:
                raise self.error(f"cannot infer the -1 in {dims} for bottom of shape {in_shape}")
            shape[shape.index(-1)] = bottom.count // known
        if int(np.prod(shape, dtype=np.int64)) != bottom.count:
            raise self.error(f"shape {tuple(shape)} has {int(np.prod(shape))} elements, "
                             f"bottom {in_shape} has {bottom.count}")
        return tuple(shape)


PROD, SUM, MAX = 0, 1, 2  # EltwiseParameter.EltwiseOp


@register
class EltwiseLayer(Layer):
    """Element-wise over same-shaped bottoms: PROD ``Π x_i``; SUM ``Σ c_i x_i`` (``coeff``,
    default 1); MAX ``max_i x_i`` (ties: bottom 1 beats bottom 0, later bottoms must be
    strictly greater, as in Caffe).

    Backward: SUM ``dx_i = c_i dy``; MAX routes ``dy`` to the arg-max bottom; PROD
    ``dx_i = dy Π_{j≠i} x_j`` (``stable_prod_grad``, default) or ``dy · y / x_i``.
    """

    type = "Eltwise"
    min_bottoms = 2
    exact_num_tops = 1

    def setup(self, bottoms, tops):
        p = self.param.eltwise_param
        self.op = p.operation
        if p.coeff and len(p.coeff) != len(bottoms):
            raise self.error(f"{len(p.coeff)} coeff(s) for {len(bottoms)} bottoms (give one per bottom)")
        if p.coeff and self.op != SUM:
            raise self.error("coeff is only allowed with operation SUM")
        self.coeffs = [float(c) for c in p.coeff] or [1.0] * len(bottoms)

    def reshape(self, bottoms, tops):
        for bottom in bottoms[1:]:
            if bottom.shape != bottoms[0].shape:
                raise self.error(f"bottom '{bottom.name}' shape {bottom.shape} differs from {bottoms[0].shape}")
        tops[0].reshape(bottoms[0].shape)
        xp = self.xp
        if self.op == MAX:
            self.argmax = xp.empty(bottoms[0].shape, dtype=np.int32)
            self.flags = xp.empty(bottoms[0].shape, dtype=bool)
        if self.op == SUM and any(c != 1.0 for c in self.coeffs):
            self.scaled = xp.empty(bottoms[0].shape, dtype=np.float32)

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        y = tops[0].data
        if self.op == PROD:
            xp.multiply(bottoms[0].data, bottoms[1].data, out=y)
            for bottom in bottoms[2:]:
                y *= bottom.data
        elif self.op == SUM:
            xp.multiply(bottoms[0].data, self.coeffs[0], out=y)
            for coeff, bottom in zip(self.coeffs[1:], bottoms[1:]):
                if coeff == 1.0:
                    y += bottom.data
                else:
                    xp.multiply(bottom.data, coeff, out=self.scaled)
                    y += self.scaled
        elif self.op == MAX:
            a, b = bottoms[0].data, bottoms[1].data
            xp.less_equal(a, b, out=self.flags)
            xp.copyto(self.argmax, self.flags)  # 0 where bottom 0 wins, 1 on ties too
            xp.maximum(a, b, out=y)
            for i, bottom in enumerate(bottoms[2:], start=2):
                xp.greater(bottom.data, y, out=self.flags)
                xp.copyto(self.argmax, i, where=self.flags)
                xp.maximum(y, bottom.data, out=y)
        else:
            raise self.error(f"unknown eltwise operation {self.op}")

    def backward_cpu(self, tops, propagate_down, bottoms):
        xp = self.xp
        dy = tops[0].diff
        for i, (down, bottom) in enumerate(zip(propagate_down, bottoms)):
            if not down:
                continue
            dx = bottom.diff
            if self.op == SUM:
                xp.multiply(dy, self.coeffs[i], out=dx)
            elif self.op == MAX:
                xp.equal(self.argmax, i, out=self.flags)
                xp.multiply(dy, self.flags, out=dx)
            elif self.param.eltwise_param.stable_prod_grad:
                others = [b.data for j, b in enumerate(bottoms) if j != i]
                xp.multiply(dy, others[0], out=dx)
                for other in others[1:]:
                    dx *= other
            else:
                xp.divide(tops[0].data, bottom.data, out=dx)
                dx *= dy


@register
class TileLayer(Layer):
    """Repeats the bottom ``tiles`` times along ``axis``: shape[axis] becomes tiles·shape[axis],
    the whole block from ``axis`` on is repeated. Backward sums the copies."""

    type = "Tile"
    exact_num_bottoms = 1
    exact_num_tops = 1

    def reshape(self, bottoms, tops):
        p = self.param.tile_param
        if p.tiles < 1:
            raise self.error("tile_param.tiles must be at least 1")
        shape = bottoms[0].shape
        axis = canonical_axis(self, bottoms[0], p.axis)
        self.outer, self.block = bottoms[0].count_from(0, axis), bottoms[0].count_from(axis)
        tops[0].reshape(shape[:axis] + (shape[axis] * p.tiles,) + shape[axis + 1:])

    def forward_cpu(self, bottoms, tops):
        tiles = self.param.tile_param.tiles
        x = bottoms[0].data.reshape(self.outer, 1, self.block)
        self.xp.copyto(tops[0].data.reshape(self.outer, tiles, self.block), x)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            dy = tops[0].diff.reshape(self.outer, self.param.tile_param.tiles, self.block)
            self.xp.sum(dy, axis=1, out=bottoms[0].diff.reshape(self.outer, self.block))


R_SUM, R_ASUM, R_SUMSQ, R_MEAN = 1, 2, 3, 4  # ReductionParameter.ReductionOp


@register
class ReductionLayer(Layer):
    """Reduces all axes from ``axis`` (default 0) on: the top has shape ``shape[:axis]``.

    ``y = coeff · op(x)`` with op SUM ``Σx``, ASUM ``Σ|x|``, SUMSQ ``Σx²``, MEAN ``Σx / n``.
    Backward: ``dx = coeff · dy`` times 1, ``sign(x)``, ``2x`` or ``1/n``.
    """

    type = "Reduction"
    exact_num_bottoms = 1
    exact_num_tops = 1

    def setup(self, bottoms, tops):
        self.op = self.param.reduction_param.operation
        if self.op not in (R_SUM, R_ASUM, R_SUMSQ, R_MEAN):
            raise self.error(f"unknown reduction operation {self.op}")

    def reshape(self, bottoms, tops):
        axis = canonical_axis(self, bottoms[0], self.param.reduction_param.axis)
        self.num, self.dim = bottoms[0].count_from(0, axis), bottoms[0].count_from(axis)
        tops[0].reshape(bottoms[0].shape[:axis])
        if self.op in (R_ASUM, R_SUMSQ):
            self.work = self.xp.empty((self.num, self.dim), dtype=np.float32)

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        x = bottoms[0].data.reshape(self.num, self.dim)
        if self.op == R_ASUM:
            x = xp.abs(x, out=self.work)
        elif self.op == R_SUMSQ:
            x = xp.multiply(x, x, out=self.work)
        y = tops[0].data.reshape(self.num)
        xp.sum(x, axis=1, out=y)
        coeff = self.param.reduction_param.coeff / (self.dim if self.op == R_MEAN else 1)
        if coeff != 1.0:
            y *= coeff

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        xp = self.xp
        coeff = self.param.reduction_param.coeff / (self.dim if self.op == R_MEAN else 1)
        dy = tops[0].diff.reshape(self.num, 1)
        x = bottoms[0].data.reshape(self.num, self.dim)
        dx = bottoms[0].diff.reshape(self.num, self.dim)
        if self.op == R_ASUM:
            xp.sign(x, out=dx)
            dx *= dy
        elif self.op == R_SUMSQ:
            xp.multiply(x, dy, out=dx)
            coeff *= 2
        else:
            xp.copyto(dx, dy)
        if coeff != 1.0:
            dx *= coeff


@register
class ArgMaxLayer(Layer):
    """The ``top_k`` largest entries per item, largest first (ties: higher index first, as
    Caffe's descending sort of (value, index) pairs).

    With ``axis``: along that axis; the top is the bottom with that axis of size top_k,
    holding indices, or the values with ``out_max_val``. Without ``axis``: over each
    item's flattened ``count(1)`` values; the top is N × (1, or 2 with ``out_max_val``:
    indices then values) × top_k, padded with 1s to at least as many axes as the bottom.
    """

    type = "ArgMax"
    exact_num_bottoms = 1
    exact_num_tops = 1
    forward_only = True

    def reshape(self, bottoms, tops):
        p = self.param.argmax_param
        shape = bottoms[0].shape
        self.has_axis = p.HasField("axis")
        if self.has_axis:
            self.axis = canonical_axis(self, bottoms[0], p.axis)
            self.outer, self.dim, self.inner = outer_dim_inner(shape, self.axis)
            top_shape = shape[:self.axis] + (p.top_k,) + shape[self.axis + 1:]
        else:
            self.outer, self.dim, self.inner = shape[0], bottoms[0].count_from(1), 1
            top_shape = [1] * max(len(shape), 3)
            top_shape[0], top_shape[1], top_shape[2] = shape[0], 2 if p.out_max_val else 1, p.top_k
        if not 1 <= p.top_k <= self.dim:
            raise self.error(f"top_k {p.top_k} must be in [1, {self.dim}]")
        tops[0].reshape(tuple(top_shape))

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        p = self.param.argmax_param
        x = bottoms[0].data.reshape(self.outer, self.dim, self.inner)
        # A stable ascending sort of the negated, reversed values puts the largest first
        # and, among equal values, the higher original index first.
        order = xp.argsort(-x[:, ::-1, :], axis=1, kind="stable")[:, :p.top_k, :]
        indices = (self.dim - 1) - order
        values = xp.take_along_axis(x, indices, axis=1)
        if self.has_axis:
            out = values if p.out_max_val else indices
            tops[0].data.reshape(self.outer, p.top_k, self.inner)[...] = out
        else:
            y = tops[0].data.reshape(self.outer, -1, p.top_k)
            y[:, 0, :] = indices[:, :, 0]
            if p.out_max_val:
                y[:, 1, :] = values[:, :, 0]


@register
class SilenceLayer(Layer):
    """Consumes bottoms and produces nothing (silences unused outputs). Backward: zero diffs."""

    type = "Silence"
    min_bottoms = 1
    exact_num_tops = 0

    def reshape(self, bottoms, tops):
        """No tops."""

    def forward_cpu(self, bottoms, tops):
        """Nothing to compute."""

    def backward_cpu(self, tops, propagate_down, bottoms):
        for down, bottom in zip(propagate_down, bottoms):
            if down:
                bottom.diff[...] = 0


@register
class FilterLayer(Layer):
    """Keeps the items (along axis 0) whose selector value is non-zero; the last bottom is
    the selector (shape N, or N×1×…), the others are filtered into tops one for one.

    Backward scatters ``dy`` back to the kept items; the others get zero.
    """

    type = "Filter"
    min_bottoms = 2
    min_tops = 1

    def setup(self, bottoms, tops):
        if len(tops) != len(bottoms) - 1:
            raise self.error(f"needs one top per filtered bottom: {len(bottoms) - 1}, got {len(tops)}")
        self.num_bottoms = len(bottoms)
        self._first_reshape = True

    def _select(self, bottoms):
        selector = bottoms[-1]
        if any(d != 1 for d in selector.shape[1:]):
            raise self.error(f"selector shape {selector.shape} must be N or N×1×…")
        for bottom in bottoms[:-1]:
            if not bottom.shape or bottom.shape[0] != selector.shape[0]:
                raise self.error(f"bottom '{bottom.name}' shape {bottom.shape} must have "
                                 f"{selector.shape[0]} items like the selector")
        self.kept = self.xp.nonzero(selector.data.reshape(-1))[0]

    def _shape_tops(self, bottoms, tops, num):
        for bottom, top in zip(bottoms[:-1], tops):
            top.reshape((num,) + bottom.shape[1:])

    def reshape(self, bottoms, tops):
        self._select(bottoms)
        # At setup the selector holds no data yet: keep every item, as Caffe does.
        num = bottoms[-1].shape[0] if self._first_reshape else int(self.kept.size)
        self._first_reshape = False
        self._shape_tops(bottoms, tops, num)

    def allow_backward_to(self, bottom_index):
        num_bottoms = getattr(self, "num_bottoms", len(self.param.bottom))
        return bottom_index < num_bottoms - 1

    def forward_cpu(self, bottoms, tops):
        self._select(bottoms)
        self._shape_tops(bottoms, tops, int(self.kept.size))
        for bottom, top in zip(bottoms[:-1], tops):
            self.xp.take(bottom.data, self.kept, axis=0, out=top.data)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if propagate_down[-1]:
            raise self.error("cannot backpropagate to the selector (last bottom)")
        for down, bottom, top in zip(propagate_down, bottoms, tops):
            if down:
                bottom.diff[...] = 0
                bottom.diff[self.kept] = top.diff


@register
class BatchReindexLayer(Layer):
    """``y[n] = x[int(idx[n])]`` along axis 0 with ``idx`` = bottom 1 (1-d, floats).
    Backward: ``dx[i] = Σ_{idx[n]=i} dy[n]``; no gradient to the indices."""

    type = "BatchReindex"
    exact_num_bottoms = 2
    exact_num_tops = 1

    def setup(self, bottoms, tops):
        self._indices = None

    def reshape(self, bottoms, tops):
        if bottoms[1].num_axes != 1:
            raise self.error(f"index bottom must be 1-d, got shape {bottoms[1].shape}")
        tops[0].reshape(bottoms[1].shape + bottoms[0].shape[1:])
        self._indices = int_buffer(self.xp, bottoms[1].count, self._indices)

    def allow_backward_to(self, bottom_index):
        return bottom_index == 0

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        xp.copyto(self._indices, bottoms[1].data, casting="unsafe")
        num = bottoms[0].shape[0]
        if self._indices.size and (int(self._indices.min()) < 0 or int(self._indices.max()) >= num):
            raise self.error(f"index out of range [0, {num}) in bottom '{bottoms[1].name}'")
        xp.take(bottoms[0].data, self._indices, axis=0, out=tops[0].data)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if len(propagate_down) > 1 and propagate_down[1]:
            raise self.error("cannot backpropagate to the indices")
        if propagate_down[0]:
            dx = bottoms[0].diff
            dx[...] = 0
            self.xp.add.at(dx, self._indices, tops[0].diff)


@register
class ParameterLayer(Layer):
    """A learnable blob of ``parameter_param.shape`` exposed as the top (initialised to
    zero, as in Caffe; set it from weights). Backward: ``dW += dy``."""

    type = "Parameter"
    exact_num_bottoms = 0
    exact_num_tops = 1

    def setup(self, bottoms, tops):
        if not self.blobs:
            self.blobs = [self.make_blob(tuple(self.param.parameter_param.shape.dim), f"{self.name}.param")]

    def reshape(self, bottoms, tops):
        tops[0].reshape(self.blobs[0].shape)

    def forward_cpu(self, bottoms, tops):
        # A copy, not shared storage: the net may swap self.blobs[0] for a shared blob.
        tops[0].data[...] = self.blobs[0].data

    def backward_cpu(self, tops, propagate_down, bottoms):
        if wants_param_grad(self, 0):
            self.blobs[0].diff += tops[0].diff


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
            self.blobs = [self.make_blob(_factor_shape(self, bottoms[0], p.axis, p.num_axes), f"{self.name}.bias")]
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
                scale = self.make_blob(_factor_shape(self, bottoms[0], p.axis, p.num_axes), f"{self.name}.scale")
                filler = p.filler if p.HasField("filler") else type(p.filler)(type="constant", value=1.0)
                fill(scale, filler)
                self.blobs.append(scale)
            if p.bias_term:
                shape = bottoms[1].shape if len(bottoms) > 1 else self.blobs[0].shape
                self.blobs.append(self.make_blob(shape, f"{self.name}.bias"))
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


@register
class DropoutLayer(Layer):
    """TRAIN: ``y = x · m / (1 - ratio)`` with ``m ~ Bernoulli(1 - ratio)`` drawn from
    ``dlsoft.random``; TEST: ``y = x``. Backward applies the same mask and scale."""

    type = "Dropout"
    exact_num_bottoms = 1
    exact_num_tops = 1
    supports_in_place = True

    def setup(self, bottoms, tops):
        self.ratio = float(self.param.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise self.error(f"dropout_ratio {self.ratio} must be in [0, 1)")
        self.scale = 1.0 / (1.0 - self.ratio)

    def reshape(self, bottoms, tops):
        if tops[0] is not bottoms[0]:
            tops[0].reshape(bottoms[0].shape)
        if self.phase == TRAIN:
            self.uniform = self.xp.empty(bottoms[0].shape, dtype=np.float32)
            self.mask = self.xp.empty(bottoms[0].shape, dtype=bool)

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        x, y = bottoms[0].data, tops[0].data
        if self.phase != TRAIN:
            if tops[0] is not bottoms[0]:
                y[...] = x
            return
        dl_random.xp_rng(xp).random(dtype=np.float32, out=self.uniform)
        xp.greater_equal(self.uniform, self.ratio, out=self.mask)
        xp.multiply(x, self.mask, out=y)
        y *= self.scale

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        dy, dx = tops[0].diff, bottoms[0].diff
        if self.phase != TRAIN:
            if tops[0] is not bottoms[0]:
                dx[...] = dy
            return
        self.xp.multiply(dy, self.mask, out=dx)
        dx *= self.scale
