"""Losses and the Accuracy metric, Caffe semantics.

A loss layer writes its value to ``top[0]`` (shape ``()``); the net gives ``*Loss``
layers loss_weight 1 and seeds ``top[0].diff`` with the weight, so backward scales the
gradient by ``top[0].diff``, as Caffe does. Labels are never differentiated
(``allow_backward_to`` is False for them).

Normalisation (``loss_param``): the summed loss is divided by ``max(1, n)``, ``n`` being
the number of non-ignored labels (VALID), all label positions (FULL), the outer count
(BATCH_SIZE), or 1 (NONE).

The scalars (loss, valid counts, scales) stay 0-d arrays on the device: nothing here
waits for the GPU. SoftmaxWithLoss has its own CUDA kernels for the loss and the
gradient; the others run their array-module code on cupy arrays.
"""
from __future__ import annotations


import numpy as np

from ..backend import array_module
from . import cuda
from .base import Layer
from .common import canonical_axis, outer_dim_inner
from .normalization import softmax
from .registry import register

FLT_MIN = float(np.finfo(np.float32).tiny)
#: Caffe's kLOG_THRESHOLD: probabilities are clamped here before the log.
LOG_THRESHOLD = 1e-20


def normalization_mode(layer: Layer, default: str) -> str:
    """The loss_param normalization as a name: explicit, else legacy ``normalize``
    (true: VALID, false: BATCH_SIZE), else ``default``."""
    p = layer.param.loss_param
    if p.HasField("normalization"):
        return p.DESCRIPTOR.fields_by_name["normalization"].enum_type.values_by_number[p.normalization].name
    if p.HasField("normalize"):
        return "VALID" if p.normalize else "BATCH_SIZE"
    return default


def normalizer(mode: str, outer: int, inner: int, valid_count):
    """Caffe's get_normalizer: the divisor of the summed loss, at least 1."""
    if mode == "VALID" and valid_count is not None:
        return array_module(valid_count).maximum(valid_count, 1)  # stays on the device
    n = {"FULL": outer * inner, "VALID": outer * inner, "BATCH_SIZE": outer, "NONE": 1}[mode]
    return float(max(1, n))


class LossLayer(Layer):
    """Shared plumbing: ``top[0]`` is a scalar; bottoms 0 and 1 have the same first axis."""

    min_bottoms = 2
    exact_num_tops = -1
    min_tops = 1
    max_tops = 1

    def reshape(self, bottoms, tops):
        if bottoms[0].num_axes and bottoms[1].num_axes and bottoms[0].shape[0] != bottoms[1].shape[0]:
            raise self.error(f"bottoms must have the same first dimension, got {bottoms[0].shape} "
                             f"and {bottoms[1].shape}")
        tops[0].reshape(())

    def allow_backward_to(self, bottom_index):
        return bottom_index == 0

    def refuse_label_backward(self, propagate_down) -> None:
        if any(propagate_down[1:]):
            raise self.error("cannot backpropagate to label inputs")

    def read_labels(self, label_data, out_int, count: int, limit: int) -> None:
        """Labels as integers (truncated, as Caffe's static_cast), checked on the CPU."""
        self.xp.copyto(out_int, label_data.reshape(out_int.shape), casting="unsafe")
        if not self.device.is_gpu and count:
            valid = out_int[out_int != self.ignore_label] if self.has_ignore else out_int
            if valid.size and (valid.min() < 0 or valid.max() >= limit):
                bad = valid.min() if valid.min() < 0 else valid.max()
                raise self.error(f"label {int(bad)} out of range [0, {limit})")

    def setup_ignore_label(self) -> None:
        p = self.param.loss_param
        self.has_ignore = p.HasField("ignore_label")
        self.ignore_label = int(p.ignore_label)


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

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        softmax(xp, self.view3(bottoms[0].data), self.prob, self.column)
        self.read_labels(bottoms[1].data, self.labels, bottoms[1].count, self.dim)
        self.compute_valid()
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
        xp = self.xp
        softmax(xp, self.view3(bottoms[0].data), self.prob, self.column)
        launch("dl_softmax_loss_forward", self.outer * self.inner, self.prob, bottoms[1].data,
               self.loss_terms, self.counts, *self._shape_args())
        self.write_loss(tops, self.loss_terms.sum(), self.counts.sum())

    def backward_gpu(self, tops, propagate_down, bottoms):
        self.refuse_label_backward(propagate_down)
        if not propagate_down[0]:
            return
        self.xp.divide(tops[0].diff, self.norm, out=self.scale)
        launch("dl_softmax_loss_backward", bottoms[0].count, self.prob, bottoms[1].data, self.scale,
               bottoms[0].diff, *self._shape_args())

    def _shape_args(self):
        return (np.int32(self.outer), np.int32(self.dim), np.int32(self.inner),
                np.int32(self.has_ignore), np.int32(self.ignore_label))


# ---- CUDA kernels of SoftmaxWithLoss (grid-stride loops; label positions = outer × inner) ----
SOFTMAX_LOSS_FORWARD_SOURCE = r"""
extern "C" __global__ void dl_softmax_loss_forward(
    const float* prob, const float* label, float* loss, float* counts,
    const int outer, const int dim, const int inner, const int has_ignore, const int ignore) {
  const long long positions = (long long)outer * inner;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < positions;
       i += (long long)blockDim.x * gridDim.x) {
    const long long n = i / inner, s = i % inner;
    const int lab = (int)label[i];
    if ((has_ignore && lab == ignore) || lab < 0 || lab >= dim) {
      loss[i] = 0.f;
      counts[i] = 0.f;
    } else {
      loss[i] = -logf(fmaxf(prob[(n * dim + lab) * inner + s], 1.17549435e-38f));
      counts[i] = 1.f;
    }
  }
}
"""

SOFTMAX_LOSS_BACKWARD_SOURCE = r"""
extern "C" __global__ void dl_softmax_loss_backward(
    const float* prob, const float* label, const float* scale, float* dx,
    const int outer, const int dim, const int inner, const int has_ignore, const int ignore) {
  const long long total = (long long)outer * dim * inner;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
       i += (long long)blockDim.x * gridDim.x) {
    const long long s = i % inner, c = (i / inner) % dim, n = i / ((long long)dim * inner);
    const int lab = (int)label[n * inner + s];
    const bool ignored = (has_ignore && lab == ignore) || lab < 0 || lab >= dim;
    dx[i] = ignored ? 0.f : (prob[i] - (c == lab ? 1.f : 0.f)) * scale[0];
  }
}
"""

#: Every RawKernel source of this module, by kernel name (the NVRTC test compiles each).
SOURCES = {
    "dl_softmax_loss_forward": SOFTMAX_LOSS_FORWARD_SOURCE,
    "dl_softmax_loss_backward": SOFTMAX_LOSS_BACKWARD_SOURCE,
}


def launch(name: str, total: int, *args) -> None:
    """Run kernel ``name`` of this module over ``total`` work items."""
    cuda.launch(SOURCES[name], name, total, *args)


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

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        softmax(xp, self.view3(bottoms[0].data), self.prob, self.column)
        self.read_labels(bottoms[1].data, self.labels, bottoms[1].count, self.dim)
        self.compute_valid()
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


@register
class EuclideanLossLayer(LossLayer):
    """``loss = Σ (a - b)² / (2N)``, N the first dimension.
    Backward: ``da = (a - b) · loss_weight / N``, ``db = -da``. Both bottoms get gradients."""

    type = "EuclideanLoss"
    exact_num_bottoms = 2

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        if bottoms[0].count != bottoms[1].count:
            raise self.error(f"bottoms must have the same count, got {bottoms[0].shape} and {bottoms[1].shape}")
        self.num = bottoms[0].shape[0] if bottoms[0].num_axes else 1
        self.diff = self.xp.empty(bottoms[0].shape, dtype=np.float32)

    def allow_backward_to(self, bottom_index):
        return True

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        xp.subtract(bottoms[0].data, bottoms[1].data.reshape(self.diff.shape), out=self.diff)
        flat = self.diff.reshape(-1)
        xp.divide(xp.dot(flat, flat), 2 * self.num, out=tops[0].data)

    def backward_cpu(self, tops, propagate_down, bottoms):
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                self.xp.multiply(self.diff, tops[0].diff * (sign / self.num),
                                 out=bottoms[i].diff.reshape(self.diff.shape))


@register
class SigmoidCrossEntropyLossLayer(LossLayer):
    """``loss = Σ_valid [max(x, 0) - x·t + log(1 + exp(-|x|))] / normalizer`` (the stable
    form of ``-t·log σ(x) - (1 - t)·log(1 - σ(x))``); targets equal to ``ignore_label``
    are skipped. Backward: ``dx = (σ(x) - t) · loss_weight / normalizer``.
    Normalization default BATCH_SIZE (Caffe's, for compatibility with older nets).
    """

    type = "SigmoidCrossEntropyLoss"
    exact_num_bottoms = 2

    def setup(self, bottoms, tops):
        self.setup_ignore_label()
        self.mode = normalization_mode(self, "BATCH_SIZE")

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        if bottoms[0].count != bottoms[1].count:
            raise self.error(f"inputs must have the same count, got {bottoms[0].shape} and {bottoms[1].shape}")
        self.outer = bottoms[0].shape[0] if bottoms[0].num_axes else 1
        self.inner = bottoms[0].count // self.outer if self.outer else 0
        xp = self.xp
        self.work = xp.empty(bottoms[0].shape, dtype=np.float32)
        self.work2 = xp.empty(bottoms[0].shape, dtype=np.float32)
        self.valid = xp.empty(bottoms[0].shape, dtype=np.float32) if self.has_ignore else None

    def forward_cpu(self, bottoms, tops):
        xp, w, w2 = self.xp, self.work, self.work2
        x, t = bottoms[0].data, bottoms[1].data.reshape(self.work.shape)
        xp.abs(x, out=w)
        xp.negative(w, out=w)
        xp.exp(w, out=w)
        xp.log1p(w, out=w)
        xp.multiply(x, t, out=w2)
        w -= w2
        xp.maximum(x, 0, out=w2)
        w += w2
        count = None
        if self.has_ignore:
            xp.trunc(t, out=w2)  # Caffe compares static_cast<int>(target) with ignore_label
            xp.not_equal(w2, self.ignore_label, out=self.valid)
            w *= self.valid
            count = self.valid.sum()
        self.norm = normalizer(self.mode, self.outer, self.inner, count)
        xp.divide(w.sum(), self.norm, out=tops[0].data)

    def backward_cpu(self, tops, propagate_down, bottoms):
        self.refuse_label_backward(propagate_down)
        if not propagate_down[0]:
            return
        xp = self.xp
        dx = bottoms[0].diff
        xp.multiply(bottoms[0].data, 0.5, out=dx)
        xp.tanh(dx, out=dx)
        dx *= 0.5
        dx += 0.5
        dx -= bottoms[1].data.reshape(dx.shape)
        if self.has_ignore:
            dx *= self.valid
        dx *= tops[0].diff / self.norm


@register
class HingeLossLayer(LossLayer):
    """One-vs-all hinge on scores ``x`` (N × K) with labels ``l``: with ``δ_nk = +1`` if
    ``k = l_n`` else ``-1``, ``m_nk = max(0, 1 - δ_nk · x_nk)``;
    L1: ``loss = Σ m / N``; L2: ``loss = Σ m² / N``.

    Backward: L1 ``dx = -δ · [m > 0] · loss_weight / N``; L2 ``dx = -2 δ · m · loss_weight / N``.
    """

    type = "HingeLoss"
    exact_num_bottoms = 2

    def setup(self, bottoms, tops):
        p = self.param.hinge_loss_param
        self.squared = p.norm == p.L2
        self.ignore_label, self.has_ignore = 0, False

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        self.num = bottoms[0].shape[0]
        self.dim = bottoms[0].count // self.num if self.num else 0
        if bottoms[1].count != self.num:
            raise self.error(f"expected {self.num} labels, got bottom of shape {bottoms[1].shape}")
        xp = self.xp
        self.margins = xp.empty(bottoms[0].count, dtype=np.float32)
        self.labels = xp.empty(self.num, dtype=np.int64)
        self.rows = xp.arange(self.num, dtype=np.int64) * self.dim
        self.pick = xp.empty(self.num, dtype=np.int64)

    def forward_cpu(self, bottoms, tops):
        xp, m = self.xp, self.margins
        self.read_labels(bottoms[1].data, self.labels, self.num, self.dim)
        xp.add(self.rows, self.labels, out=self.pick)
        xp.copyto(m, bottoms[0].data.reshape(-1))
        m[self.pick] *= -1
        m += 1
        xp.maximum(m, 0, out=m)
        total = xp.dot(m, m) if self.squared else m.sum()
        xp.divide(total, self.num, out=tops[0].data)

    def backward_cpu(self, tops, propagate_down, bottoms):
        self.refuse_label_backward(propagate_down)
        if not propagate_down[0]:
            return
        xp = self.xp
        dx = bottoms[0].diff.reshape(-1)
        if self.squared:
            xp.multiply(self.margins, 2.0, out=dx)
        else:
            xp.sign(self.margins, out=dx)
        dx[self.pick] *= -1
        dx *= tops[0].diff / self.num


@register
class ContrastiveLossLayer(LossLayer):
    """Siamese loss on feature pairs ``a, b`` (N × C) and similarity labels ``y`` (N):
    ``d² = ||a - b||²``; ``loss = Σ [y ? d² : max(margin - d, 0)²] / (2N)``
    (``legacy_version``: ``max(margin - d², 0)`` for dissimilar pairs).

    Backward (a; b gets the negation): similar ``da = (a - b) · w / N``; dissimilar with a
    positive margin term ``da = -(margin - d) / (d + 1e-4) · (a - b) · w / N`` (legacy:
    ``-(a - b) · w / N``), else 0; ``w`` the loss weight.
    """

    type = "ContrastiveLoss"
    exact_num_bottoms = 3

    def setup(self, bottoms, tops):
        p = self.param.contrastive_loss_param
        self.margin, self.legacy = float(p.margin), bool(p.legacy_version)

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        a, b, y = bottoms
        self.num = a.shape[0]
        if a.shape != b.shape or y.count != self.num:
            raise self.error(f"expected two feature bottoms of one shape and {self.num} labels, "
                             f"got {a.shape}, {b.shape}, {y.shape}")
        self.diff = self.xp.empty((self.num, a.count // self.num if self.num else 0), dtype=np.float32)

    def allow_backward_to(self, bottom_index):
        return bottom_index != 2

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        xp.subtract(bottoms[0].data.reshape(self.diff.shape), bottoms[1].data.reshape(self.diff.shape),
                    out=self.diff)
        self.dist_sq = (self.diff * self.diff).sum(axis=1)
        self.similar = xp.trunc(bottoms[2].data.reshape(-1)) != 0
        if self.legacy:
            dissimilar = xp.maximum(self.margin - self.dist_sq, 0)
        else:
            dissimilar = xp.maximum(self.margin - xp.sqrt(self.dist_sq), 0) ** 2
        terms = xp.where(self.similar, self.dist_sq, dissimilar)
        xp.divide(terms.sum(), 2 * self.num, out=tops[0].data)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if propagate_down[2]:
            raise self.error("cannot backpropagate to label inputs")
        xp = self.xp
        if self.legacy:
            mdist = self.margin - self.dist_sq
            dissimilar = xp.where(mdist > 0, -1.0, 0.0)
        else:
            dist = xp.sqrt(self.dist_sq)
            mdist = self.margin - dist
            dissimilar = xp.where(mdist > 0, -mdist / (dist + 1e-4), 0.0)
        coefficient = xp.where(self.similar, 1.0, dissimilar).astype(np.float32)[:, None]
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                dx = bottoms[i].diff.reshape(self.diff.shape)
                xp.multiply(self.diff, coefficient, out=dx)
                dx *= tops[0].diff * (sign / self.num)


@register
class MultinomialLogisticLossLayer(LossLayer):
    """On probabilities ``p`` (N × K): ``loss = -Σ_n log(max(p[n, l_n], 1e-20)) / N``.
    Backward: ``dx[n, l_n] = -loss_weight / (N · max(p[n, l_n], 1e-20))``, 0 elsewhere."""

    type = "MultinomialLogisticLoss"
    exact_num_bottoms = 2

    def setup(self, bottoms, tops):
        self.ignore_label, self.has_ignore = 0, False

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        self.num = bottoms[0].shape[0]
        self.dim = bottoms[0].count // self.num if self.num else 0
        if bottoms[1].count != self.num:
            raise self.error(f"expected {self.num} labels, got bottom of shape {bottoms[1].shape}")
        xp = self.xp
        self.labels = xp.empty(self.num, dtype=np.int64)
        self.rows = xp.arange(self.num, dtype=np.int64) * self.dim
        self.pick = xp.empty(self.num, dtype=np.int64)
        self.picked = xp.empty(self.num, dtype=np.float32)

    def forward_cpu(self, bottoms, tops):
        xp, p = self.xp, self.picked
        self.read_labels(bottoms[1].data, self.labels, self.num, self.dim)
        xp.add(self.rows, self.labels, out=self.pick)
        xp.take(bottoms[0].data.reshape(-1), self.pick, out=p)
        xp.maximum(p, LOG_THRESHOLD, out=p)
        xp.divide(-xp.log(p).sum(), self.num, out=tops[0].data)

    def backward_cpu(self, tops, propagate_down, bottoms):
        self.refuse_label_backward(propagate_down)
        if not propagate_down[0]:
            return
        dx = bottoms[0].diff.reshape(-1)
        dx[...] = 0
        dx[self.pick] = (tops[0].diff * (-1.0 / self.num)) / self.picked


@register
class AccuracyLayer(LossLayer):
    """Fraction of valid positions whose label is among the ``top_k`` scores along ``axis``
    (a label counts as correct when fewer than ``top_k`` classes score strictly higher).
    Optional second top: the accuracy of each class (0 for classes absent from the batch).
    """

    type = "Accuracy"
    forward_only = True
    exact_num_bottoms = 2
    max_tops = 2

    def setup(self, bottoms, tops):
        p = self.param.accuracy_param
        self.top_k = int(p.top_k)
        self.has_ignore = p.HasField("ignore_label")
        self.ignore_label = int(p.ignore_label)

    def reshape(self, bottoms, tops):
        axis = canonical_axis(self, bottoms[0], self.param.accuracy_param.axis)
        self.outer, self.dim, self.inner = outer_dim_inner(bottoms[0].shape, axis)
        if self.top_k > self.dim:
            raise self.error(f"top_k ({self.top_k}) must not exceed the number of classes ({self.dim})")
        if self.outer * self.inner != bottoms[1].count:
            raise self.error(f"number of labels ({bottoms[1].count}) must equal outer × inner of the "
                             f"prediction shape {bottoms[0].shape} at axis {axis} ({self.outer * self.inner})")
        tops[0].reshape(())
        if len(tops) > 1:
            tops[1].reshape((self.dim,))
        self.labels = self.xp.empty((self.outer, self.inner), dtype=np.int64)

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        scores = bottoms[0].data.reshape(self.outer, self.dim, self.inner)
        self.read_labels(bottoms[1].data, self.labels, bottoms[1].count, self.dim)
        labels = self.labels
        valid = (labels != self.ignore_label) if self.has_ignore else xp.ones(labels.shape, dtype=bool)
        labels *= valid
        true_scores = xp.take_along_axis(scores, labels[:, None, :], axis=1)
        better = (scores > true_scores).sum(axis=1)
        correct = (better < self.top_k) & valid
        count = valid.sum()
        xp.divide(correct.sum(), xp.maximum(count, 1), out=tops[0].data)
        if len(tops) > 1:
            flat = labels.reshape(-1)
            per_class = xp.bincount(flat, weights=valid.reshape(-1).astype(np.float32), minlength=self.dim)
            hits = xp.bincount(flat, weights=correct.reshape(-1).astype(np.float32), minlength=self.dim)
            xp.divide(hits, xp.maximum(per_class, 1), out=tops[1].data)

    def allow_backward_to(self, bottom_index):
        return False

