"""SoftmaxWithLoss and InfogainLoss (Caffe semantics): softmax over ``axis``, one integer
label per (outer, inner) position, ``ignore_label``.
"""
from __future__ import annotations

import numpy as np

from . import kernels
from .helpers import canonical_axis, outer_dim_inner
from .loss import FLT_MIN, LOG_THRESHOLD, LossLayer, normalization_mode, normalizer, read_labels
from .normalization import softmax, softmax_kernel
from .registry import register


class _SoftmaxLabelLoss(LossLayer):
    """Softmax over ``axis``, one integer label per (outer, inner) position, ignore_label."""

    max_tops = 2

    def softmax_axis_param(self) -> int:
        raise NotImplementedError

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        axis = canonical_axis(self, bottoms[0], self.softmax_axis_param())
        self.outer, self.dim, self.inner = outer_dim_inner(bottoms[0].shape, axis)
        if self.outer * self.inner != bottoms[1].count:
            raise self.error(f"number of labels ({bottoms[1].count}) must equal outer × inner of the "
                             f"prediction shape {bottoms[0].shape} at axis {axis} ({self.outer * self.inner})")
        xp = self.xp
        shape3 = (self.outer, self.dim, self.inner)
        self.prob = xp.empty(shape3, dtype=np.float32)
        self.column = xp.empty((self.outer, 1, self.inner), dtype=np.float32)
        self.labels = xp.empty((self.outer, self.inner), dtype=np.int64)
        self.valid = xp.empty((self.outer, 1, self.inner), dtype=np.float32)
        if len(tops) > 1:
            tops[1].reshape(bottoms[0].shape)

    def forward_cpu(self, bottoms, tops):
        softmax(self.xp, self.view3(bottoms[0].data), self.prob, self.column)
        read_labels(self, bottoms[1].data, self.labels, self.dim, check=True)
        self.compute_valid()
        self.forward_loss(bottoms, tops)

    def forward_gpu(self, bottoms, tops):
        softmax_kernel(self.view3(bottoms[0].data), self.prob)
        read_labels(self, bottoms[1].data, self.labels, self.dim, check=True)  # as the CPU path (one wait)
        self.compute_valid()
        self.forward_loss(bottoms, tops)

    def forward_loss(self, bottoms, tops) -> None:
        """The loss from ``self.prob``, ``self.labels`` and ``self.valid`` (set by forward)."""
        raise NotImplementedError

    def view3(self, array):
        return array.reshape(self.outer, self.dim, self.inner)

    def write_loss(self, tops, total, valid_count) -> None:
        """``top[0] = total / normalizer``; an optional second top gets the probabilities."""
        self.norm = normalizer(self.mode, self.outer, self.inner, valid_count)
        self.xp.divide(total, self.norm, out=tops[0].data)
        if len(tops) > 1:
            self.xp.copyto(self.view3(tops[1].data), self.prob)

    def compute_valid(self) -> None:
        """``valid`` = 1 where the label is not ignored; ignored labels become 0 (a safe index)."""
        if self.has_ignore:
            self.xp.not_equal(self.labels, self.ignore_label, out=self.valid[:, 0, :])
            self.labels *= self.valid[:, 0, :].astype(np.int64)
        else:
            self.valid[...] = 1


@register
class SoftmaxWithLossLayer(_SoftmaxLabelLoss):
    """``loss = -Σ_valid log(max(p[label], FLT_MIN)) / normalizer`` with ``p = softmax(x)``
    over ``softmax_param.axis``; optional second top: ``p``.

    Backward: ``dx = (p - onehot(label)) · loss_weight / normalizer``, zero at ignored
    positions. Default normalization VALID.
    """

    type = "SoftmaxWithLoss"

    def setup(self, bottoms, tops):
        self.setup_ignore_label()
        self.mode = normalization_mode(self, "VALID")

    def softmax_axis_param(self):
        return self.param.softmax_param.axis

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        xp = self.xp
        positions = self.outer * self.inner
        self.loss_terms = xp.empty(positions, dtype=np.float32)
        self.counts = xp.empty(positions, dtype=np.float32)
        self.scale = xp.empty((), dtype=np.float32)
        # Flat index of (o, 0, s) in the (outer, dim, inner) probabilities.
        o, s = np.meshgrid(np.arange(self.outer), np.arange(self.inner), indexing="ij")
        self.base = xp.asarray((o * self.dim * self.inner + s).astype(np.int64))
        self.pick = xp.empty((self.outer, self.inner), dtype=np.int64)

    def forward_loss(self, bottoms, tops):
        xp = self.xp
        xp.multiply(self.labels, self.inner, out=self.pick)
        self.pick += self.base
        p = self.loss_terms.reshape(self.outer, self.inner)
        xp.take(self.prob.reshape(-1), self.pick, out=p)
        xp.maximum(p, FLT_MIN, out=p)
        xp.log(p, out=p)
        p *= self.valid[:, 0, :]
        self.write_loss(tops, -self.loss_terms.sum(), self.valid.sum())

    def backward_cpu(self, tops, propagate_down, bottoms):
        self.refuse_label_backward(propagate_down)
        if not propagate_down[0]:
            return
        xp = self.xp
        dx = self.view3(bottoms[0].diff)
        xp.copyto(dx, self.prob)
        dx.reshape(-1)[self.pick] -= 1
        dx *= self.valid
        xp.divide(tops[0].diff, self.norm, out=self.scale)
        dx *= self.scale

    def forward_gpu(self, bottoms, tops):
        softmax_kernel(self.view3(bottoms[0].data), self.prob)
        kernels.launch("dl_softmax_loss_forward", self.outer * self.inner, self.prob, bottoms[1].data,
               self.loss_terms, self.counts, *self._shape_args())
        self.write_loss(tops, self.loss_terms.sum(), self.counts.sum())
        # Labels are checked without waiting for the device: a bad one makes the loss NaN,
        # and the net's host-side look (check_inputs) then names it as the CPU path does.
        xp, labels = self.xp, bottoms[1].data
        bad = (labels <= -1) | (labels >= self.dim) | (labels != labels)
        if self.has_ignore:
            bad &= labels != self.ignore_label
        tops[0].data[...] += xp.where(bad.any(), xp.float32(np.nan), xp.float32(0))

    def check_inputs(self, bottoms) -> None:
        read_labels(self, bottoms[1].data, self.labels, self.dim, check=True)

    def backward_gpu(self, tops, propagate_down, bottoms):
        self.refuse_label_backward(propagate_down)
        if not propagate_down[0]:
            return
        self.xp.divide(tops[0].diff, self.norm, out=self.scale)
        kernels.launch("dl_softmax_loss_backward", bottoms[0].count, self.prob, bottoms[1].data, self.scale,
               bottoms[0].diff, *self._shape_args())

    def _shape_args(self):
        return (np.int32(self.outer), np.int32(self.dim), np.int32(self.inner),
                np.int32(self.has_ignore), np.int32(self.ignore_label))


@register
class InfogainLossLayer(_SoftmaxLabelLoss):
    """Softmax, then ``loss = -Σ_valid Σ_l H[label, l] · log(max(p_l, 1e-20)) / normalizer``
    (Caffe's current InfogainLoss; H = I gives SoftmaxWithLoss).

    ``H`` (K×K) comes from ``infogain_loss_param.source`` (a .binaryproto) or a third
    bottom. Backward: ``dx_l = (p_l · Σ_k H[label, k] - H[label, l]) · loss_weight / normalizer``.
    Normalization default VALID; the legacy ``normalize`` is refused, as Caffe does.
    """

    type = "InfogainLoss"
    max_bottoms = 3

    def setup(self, bottoms, tops):
        self.setup_ignore_label()
        if self.param.loss_param.HasField("normalize"):
            raise self.error("loss_param.normalize is deprecated for InfogainLoss: use normalization")
        self.mode = normalization_mode(self, "VALID")
        self.fixed_h = None
        if len(bottoms) < 3:
            source = self.param.infogain_loss_param.source
            if not source:
                raise self.error("infogain_loss_param.source (the H matrix) or a third bottom is required")
            from ..fileio import read_blob
            self.fixed_h = self.xp.asarray(read_blob(source).astype(np.float32))

    def softmax_axis_param(self):
        return self.param.infogain_loss_param.axis

    def allow_backward_to(self, bottom_index):
        return bottom_index == 0

    def matrix(self, bottoms):
        h = self.fixed_h if self.fixed_h is not None else bottoms[2].data
        if h.size != self.dim * self.dim:
            raise self.error(f"H must be {self.dim}x{self.dim}, got {h.size} values")
        return h.reshape(self.dim, self.dim)

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        self.matrix(bottoms)
        self.log_prob = self.xp.empty_like(self.prob)
        self.h_rows = self.xp.empty((self.outer, self.inner, self.dim), dtype=np.float32)

    def forward_loss(self, bottoms, tops):
        xp = self.xp
        xp.take(self.matrix(bottoms), self.labels, axis=0, out=self.h_rows)
        xp.maximum(self.prob, LOG_THRESHOLD, out=self.log_prob)
        xp.log(self.log_prob, out=self.log_prob)
        self.log_prob *= self.h_rows.transpose(0, 2, 1)
        self.log_prob *= self.valid
        self.write_loss(tops, -self.log_prob.sum(), self.valid.sum())

    def backward_cpu(self, tops, propagate_down, bottoms):
        self.refuse_label_backward(propagate_down)
        if not propagate_down[0]:
            return
        dx = self.view3(bottoms[0].diff)
        row_sums = self.h_rows.sum(axis=2)[:, None, :]
        self.xp.multiply(self.prob, row_sums, out=dx)
        dx -= self.h_rows.transpose(0, 2, 1)
        dx *= self.valid
        dx *= tops[0].diff / self.norm
