"""Online hard example mining (R-FCN, daijifeng001/caffe-rfcn): SoftmaxWithLossOHEM,
SmoothL1LossOHEM and BoxAnnotatorOHEM.

The OHEM nets run the two losses once with loss_weight 0 only to get a loss per region
(their extra tops), let BoxAnnotatorOHEM keep the ``roi_per_img`` hardest regions of each
image, and run the losses again on those.

- SoftmaxWithLossOHEM: SoftmaxWithLoss (same loss, normalisation and gradient) with a
  third top: the loss of each label position, ``-log p[label]`` (0 where ignored), shaped
  like the labels.
- SmoothL1LossOHEM: R-FCN's smooth L1 (σ = 1): ``d = w·(x - t)`` (``w`` an optional third
  bottom), ``loss = Σ f(d) / normalizer`` with ``f(d) = 0.5·d²`` for ``|d| < 1``, else
  ``|d| - 0.5``, the normalizer from ``loss_param`` (VALID and FULL: N·H·W, BATCH_SIZE: N,
  NONE: 1, PRE_FIXED: ``pre_fixed_normalizer``); optional second top: the loss of each
  region, ``Σ_c f(d)`` (N×1×H×W). Backward to x and (negated) t:
  ``loss_weight·w·f'(d)/normalizer``. (The fork leaves out the factor ``w``; with its 0/1
  weights that is the same number.)
- BoxAnnotatorOHEM (forward only): bottoms rois (R×5), the per-region loss (R), labels (R)
  and bbox loss weights (R×K); tops: the labels with all but the ``roi_per_img`` highest-loss
  regions of each image set to ``ignore_label``, and the bbox weights with those regions'
  rows zeroed. Regions are taken in descending loss (ties in region order).
"""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy
from .base import Layer
from .loss import normalization_mode
from .registry import register
from .smooth_l1_loss import SmoothL1LossLayer
from .softmax_loss import SoftmaxWithLossLayer


@register
class SoftmaxWithLossOHEMLayer(SoftmaxWithLossLayer):
    """SoftmaxWithLoss with a third top: the loss at each label position."""

    type = "SoftmaxWithLossOHEM"
    max_tops = 3

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        if len(tops) > 2:
            tops[2].reshape(bottoms[1].shape)

    def forward_cpu(self, bottoms, tops):
        super().forward_cpu(bottoms, tops)
        self._per_position(bottoms, tops)

    def forward_gpu(self, bottoms, tops):
        super().forward_gpu(bottoms, tops)
        self._per_position(bottoms, tops)

    def _per_position(self, bottoms, tops):
        if len(tops) > 2:
            # loss_terms hold ±log p·valid (the sign differs between the CPU and kernel paths).
            self.xp.abs(self.loss_terms.reshape(tops[2].shape), out=tops[2].data)


@register
class SmoothL1LossOHEMLayer(SmoothL1LossLayer):
    """R-FCN's smooth L1: Fast R-CNN's with σ = 1, an optional third bottom of (inside)
    weights, loss_param normalisation and a per-region loss top."""

    type = "SmoothL1LossOHEM"
    max_bottoms = 3
    max_tops = 2

    def setup(self, bottoms, tops):
        self.sigma2 = 1.0
        self.mode = normalization_mode(self, "VALID")

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        shape = bottoms[0].shape
        if len(shape) < 2:
            raise self.error(f"bottom 0 must be N×C(×H×W), got shape {shape}")
        self.outer, self.channels, self.inner = shape[0], shape[1], bottoms[0].count_from(2)
        if len(tops) > 1:
            tops[1].reshape((self.outer, 1, *shape[2:]))

    def divisor(self) -> float:
        if self.mode == "PRE_FIXED":
            return float(self.param.loss_param.pre_fixed_normalizer)
        n = {"VALID": self.outer * self.inner, "FULL": self.outer * self.inner, "BATCH_SIZE": self.outer,
             "NONE": 1}[self.mode]
        return float(max(n, 1))

    def forward_cpu(self, bottoms, tops):
        super().forward_cpu(bottoms, tops)
        if len(tops) > 1:
            view = self.errors.reshape(self.outer, self.channels, self.inner)
            self.xp.sum(view, axis=1, out=tops[1].data.reshape(self.outer, self.inner))


@register
class BoxAnnotatorOHEMLayer(Layer):
    """Keep the ``roi_per_img`` highest-loss regions of each image for the second loss pass."""

    type = "BoxAnnotatorOHEM"
    exact_num_bottoms = 4
    exact_num_tops = 2
    forward_only = True

    def setup(self, bottoms, tops):
        p = self.param.box_annotator_ohem_param
        self.roi_per_img, self.ignore_label = int(p.roi_per_img), float(p.ignore_label)
        if self.roi_per_img <= 0:
            raise self.error("box_annotator_ohem_param.roi_per_img must be positive")

    def reshape(self, bottoms, tops):
        rois, loss, labels, weights = (b.shape for b in bottoms)
        regions = rois[0] if rois else 0
        if len(rois) < 2 or rois[1] != 5:
            raise self.error(f"bottom 0 (the regions) must be R×5, got shape {rois}")
        for i, name in ((1, "per-region loss"), (2, "labels")):
            if bottoms[i].count != bottoms[0].count // 5:
                raise self.error(f"bottom {i} ({name}) must have one value per region ({regions}), got shape "
                                 f"{bottoms[i].shape}")
        if not weights or weights[0] != regions:
            raise self.error(f"bottom 3 (bbox loss weights) must have {regions} rows, got shape {weights}")
        tops[0].reshape(labels)
        tops[1].reshape(weights)

    def allow_backward_to(self, bottom_index: int) -> bool:
        return False

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        regions = bottoms[0].shape[0]
        spatial = bottoms[0].count // (regions * 5) if regions else 1
        batch = to_numpy(bottoms[0].data).reshape(regions, 5, spatial)[:, 0, :].reshape(-1).astype(np.int64)
        loss = to_numpy(bottoms[1].data).reshape(-1)
        order = np.argsort(-loss, kind="stable")
        left = np.full(int(batch.max()) + 1 if batch.size else 0, self.roi_per_img)
        keep = np.zeros(loss.size, dtype=bool)
        for index in order:          # hardest first, at most roi_per_img per image
            if left[batch[index]] > 0:
                left[batch[index]] -= 1
                keep[index] = True
        keep = xp.asarray(keep)
        labels = tops[0].data.reshape(-1)
        xp.copyto(labels, bottoms[2].data.reshape(-1))
        labels[~keep] = self.ignore_label
        weights = tops[1].data.reshape(regions, -1, spatial)
        xp.copyto(weights, bottoms[3].data.reshape(weights.shape))
        weights *= keep.reshape(regions, 1, spatial)
