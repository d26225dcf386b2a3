"""Losses: the shared LossLayer and Caffe's normalisation rules.

A loss layer writes its value to ``top[0]`` (shape ``()``); the net gives LossLayer
subclasses loss_weight 1 (``default_loss_weight``) and seeds ``top[0].diff`` with the weight, so backward scales the
gradient by ``top[0].diff``, as Caffe does. Labels are never differentiated
(``allow_backward_to`` is False for them).

Normalisation (``loss_param``): the summed loss is divided by ``max(1, n)``, ``n`` being
the number of non-ignored labels (VALID), all label positions (FULL), the outer count
(BATCH_SIZE), or 1 (NONE).

The scalars (loss, valid counts, scales) stay 0-d arrays on the device: nothing here
waits for the GPU. SoftmaxWithLoss has its own CUDA kernels (``kernels/softmax.py``) for
the loss and the gradient; the others run their array-module code on cupy arrays.
"""
from __future__ import annotations

import numpy as np

from ..backend import array_module
from .base import Layer

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


def read_labels(layer: Layer, label_data, out_int, limit: int, check: bool) -> None:
    """``out_int`` = the labels as integers (truncated, as Caffe's static_cast).

    With ``check``, a label outside ``[0, limit)`` other than the layer's ``ignore_label``
    (NaN and infinities included) is an error naming it and its batch position. On a GPU
    the check is one reduction and a wait for the device.
    """
    layer.xp.copyto(out_int, label_data.reshape(out_int.shape), casting="unsafe")
    if check and out_int.size:
        check_labels(layer, label_data, out_int, limit)


def check_labels(layer: Layer, label_data, labels, limit: int) -> None:
    """One error naming the first label outside [0, limit) (not ignore_label), and its position.

    ``labels`` are the integer labels: NaN and infinities were cast to the most negative
    integer, so they are caught here, and shown as they were in ``label_data``.
    """
    ints = labels.reshape(-1)
    bad = (ints < 0) | (ints >= limit)
    if layer.has_ignore:
        bad &= ints != layer.ignore_label
    if not bool(bad.any()):
        return
    index = int(bad.argmax())
    value = float(label_data.reshape(-1)[index])
    shown = f"{value:g}" if value != value or not value.is_integer() else str(int(value))
    per_example = max(ints.size // max(label_data.shape[0], 1), 1) if label_data.ndim else 1
    where = f"position {index // per_example} of the batch" + \
        (f" (label {index % per_example} of that example)" if per_example > 1 else "")
    bottom = f" of bottom '{layer.param.bottom[1]}'" if len(layer.param.bottom) > 1 else ""
    raise layer.error(f"label {shown} out of range [0, {limit}) at {where}{bottom}; labels are "
                      "class indices: check the data's labels and num_output")


class LossLayer(Layer):
    """Shared plumbing: ``top[0]`` is a scalar; bottoms 0 and 1 have the same first axis."""

    min_bottoms = 2
    exact_num_tops = -1
    min_tops = 1
    max_tops = 1
    default_loss_weight = 1.0

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

    def setup_ignore_label(self) -> None:
        p = self.param.loss_param
        self.has_ignore = p.HasField("ignore_label")
        self.ignore_label = int(p.ignore_label)


class RowLabelLossLayer(LossLayer):
    """N rows of K values (bottom 0) and one integer label per row (bottom 1, no
    ignore_label): HingeLoss, MultinomialLogisticLoss. Forward reads the labels (checking
    their range on the CPU only: on a GPU the check would wait for the device), sets
    ``pick`` (the flat index of each row's label) and calls :meth:`forward_loss`."""

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

    def forward_cpu(self, bottoms, tops):
        self._read_labels(bottoms, check=True)
        self.forward_loss(bottoms, tops)

    def forward_gpu(self, bottoms, tops):
        self._read_labels(bottoms, check=False)
        self.forward_loss(bottoms, tops)

    def _read_labels(self, bottoms, check: bool) -> None:
        read_labels(self, bottoms[1].data, self.labels, self.dim, check)
        self.xp.add(self.rows, self.labels, out=self.pick)

    def forward_loss(self, bottoms, tops) -> None:
        """The loss from bottom 0 and ``self.pick``."""
        raise NotImplementedError
