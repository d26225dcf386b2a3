"""SSD detection layers (the weiliu89/caffe "ssd" fork): Normalize, Permute, PriorBox,
DetectionOutput.

Boxes are normalised to [0, 1] image coordinates and stored as (xmin, ymin, xmax, ymax).
PriorBox and DetectionOutput compute on the host (numpy) whatever the device: their
work is small and DetectionOutput's greedy NMS is sequential by nature.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import to_numpy
from ..protos import caffe_pb2
from .base import Layer
from .fillers import fill
from .registry import register

_Code = caffe_pb2.PriorBoxParameter
CORNER, CENTER_SIZE, CORNER_SIZE = _Code.CORNER, _Code.CENTER_SIZE, _Code.CORNER_SIZE


@register
class NormalizeLayer(Layer):
    """L2 normalisation with a learned scale (SSD's conv4_3_norm).

    ``across_spatial`` (default): r_n = sqrt(Σ_{c,h,w} x² + eps) per image; otherwise
    r_{n,h,w} = sqrt(Σ_c x² + eps) per position. y = scale · x / r, with one scale
    (``channel_shared``, default) or one per channel; the scale blob is learnable.
    Backward, with x̂ = x / r and g = dy · scale: dx = (g - x̂ · Σ g x̂) / r (sums over
    the set r was taken over); dscale = Σ dy · x̂.
    """

    type = "Normalize"
    exact_num_bottoms = 1
    exact_num_tops = 1

    def setup(self, bottoms, tops):
        p = self.param.norm_param
        self.across_spatial = p.across_spatial
        self.channel_shared = p.channel_shared
        self.eps = p.eps
        if bottoms[0].num_axes < 2:
            raise self.error(f"bottom must be N x C x ..., got {bottoms[0].shape}")
        scale = self.make_blob((1,) if self.channel_shared else (bottoms[0].shape[1],), "scale")
        if p.HasField("scale_filler"):
            fill(scale, p.scale_filler)
        else:
            scale.data[...] = 1.0
        self.blobs = [scale]
        self.param_propagate_down = [True]

    def reshape(self, bottoms, tops):
        tops[0].reshape(bottoms[0].shape)
        n, c = bottoms[0].shape[:2]
        self.norm_shape = (n, 1, 1) if self.across_spatial else (n, 1, bottoms[0].count_from(2))
        self.norm = self.xp.empty(self.norm_shape, dtype=self.xp.float32)

    def _scale(self):
        """The scale, shaped to broadcast against an N x C x (H·W) view."""
        return self.blobs[0].data if self.channel_shared else self.blobs[0].data.reshape(-1, 1)

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        n, c = bottoms[0].shape[:2]
        x = bottoms[0].data.reshape(n, c, -1)
        axes = (1, 2) if self.across_spatial else (1,)
        xp.sqrt((x * x).sum(axis=axes, keepdims=True) + self.eps, out=self.norm)
        y = tops[0].data.reshape(n, c, -1)
        xp.divide(x, self.norm, out=y)
        y *= self._scale()

    def backward_cpu(self, tops, propagate_down, bottoms):
        n, c = bottoms[0].shape[:2]
        x_hat = bottoms[0].data.reshape(n, c, -1) / self.norm
        dy = tops[0].diff.reshape(n, c, -1)
        if self.param_propagate_down[0]:
            if self.channel_shared:
                self.blobs[0].diff[...] += (dy * x_hat).sum()
            else:
                self.blobs[0].diff[...] += (dy * x_hat).sum(axis=(0, 2))
        if propagate_down[0]:
            g = dy * self._scale()
            axes = (1, 2) if self.across_spatial else (1,)
            dx = (g - x_hat * (g * x_hat).sum(axis=axes, keepdims=True)) / self.norm
            bottoms[0].diff[...] = dx.reshape(bottoms[0].shape)


@register
class PermuteLayer(Layer):
    """Reorder axes: top = bottom.transpose(order). Axes missing from ``order`` follow in
    their original order, as in the fork."""

    type = "Permute"
    exact_num_bottoms = 1
    exact_num_tops = 1

    def setup(self, bottoms, tops):
        n_axes = bottoms[0].num_axes
        order = []
        for axis in self.param.permute_param.order:
            if not 0 <= axis < n_axes:
                raise self.error(f"order {axis} out of range for a {n_axes}-d bottom")
            if axis in order:
                raise self.error(f"order has axis {axis} twice")
            order.append(int(axis))
        self.order = tuple(order + [a for a in range(n_axes) if a not in order])
        self.inverse = tuple(int(i) for i in np.argsort(self.order))

    def reshape(self, bottoms, tops):
        tops[0].reshape([bottoms[0].shape[a] for a in self.order])

    def forward_cpu(self, bottoms, tops):
        tops[0].data[...] = bottoms[0].data.transpose(self.order)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            bottoms[0].diff[...] = tops[0].diff.transpose(self.inverse)


@register
class PriorBoxLayer(Layer):
    """Default (prior) boxes of one SSD feature map.

    For each cell (h, w) of bottom 0, centre ((w + offset)·step_w, (h + offset)·step_h),
    and for each min_size s (truncated to int, as the fork does): a box s×s; then, if
    max sizes are given, sqrt(s·max)×sqrt(s·max); then s·sqrt(ar)×s/sqrt(ar) for each
    aspect ratio other than 1 (with 1/ar too when ``flip``). Image size and step default
    to bottom 1's size and image/feature-map ratio. Top (1, 2, H·W·num_priors·4): channel
    0 the normalised boxes (clipped to [0, 1] with ``clip``), channel 1 their variances.
    """

    type = "PriorBox"
    exact_num_bottoms = 2
    exact_num_tops = 1
    forward_only = True

    def setup(self, bottoms, tops):
        p = self.param.prior_box_param
        self.min_sizes = [float(s) for s in p.min_size]
        self.max_sizes = [float(s) for s in p.max_size]
        if not self.min_sizes or any(s <= 0 for s in self.min_sizes):
            raise self.error("prior_box_param needs positive min_size values")
        if self.max_sizes and (len(self.max_sizes) != len(self.min_sizes)
                               or any(M <= m for m, M in zip(self.min_sizes, self.max_sizes))):
            raise self.error("prior_box_param needs one max_size > min_size per min_size")
        ratios = [1.0]
        for ar in p.aspect_ratio:
            if all(abs(ar - r) >= 1e-6 for r in ratios):
                ratios.append(float(ar))
                if p.flip:
                    ratios.append(1.0 / ar)
        self.aspect_ratios = ratios
        self.num_priors = len(ratios) * len(self.min_sizes) + len(self.max_sizes)
        variance = list(p.variance) or [0.1]
        if len(variance) not in (1, 4) or any(v <= 0 for v in variance):
            raise self.error(f"prior_box_param.variance must be 1 or 4 positive values, got {variance}")
        self.variance = np.array(variance * 4 if len(variance) == 1 else variance, dtype=np.float32)
        if p.HasField("img_h") or p.HasField("img_w"):
            self.img_h, self.img_w = p.img_h, p.img_w
        else:
            self.img_h = self.img_w = p.img_size
        if p.HasField("step_h") or p.HasField("step_w"):
            self.step_h, self.step_w = p.step_h, p.step_w
        else:
            self.step_h = self.step_w = p.step
        self.offset = p.offset
        self.clip = p.clip

    def reshape(self, bottoms, tops):
        h, w = bottoms[0].shape[-2:]
        tops[0].reshape(1, 2, h * w * self.num_priors * 4)

    def _box_sizes(self):
        """(width, height) of each prior at one location, in the fork's order."""
        sizes = []
        for k, min_size in enumerate(self.min_sizes):
            s = int(min_size)
            sizes.append((s, s))
            if self.max_sizes:
                side = math.sqrt(s * int(self.max_sizes[k]))
                sizes.append((side, side))
            for ar in self.aspect_ratios:
                if abs(ar - 1.0) >= 1e-6:
                    sizes.append((s * math.sqrt(ar), s / math.sqrt(ar)))
        return np.array(sizes, dtype=np.float64)

    def forward_cpu(self, bottoms, tops):
        layer_h, layer_w = bottoms[0].shape[-2:]
        img_h, img_w = (self.img_h, self.img_w) if self.img_h and self.img_w else bottoms[1].shape[-2:]
        if self.step_h and self.step_w:
            step_h, step_w = self.step_h, self.step_w
        else:
            step_h, step_w = img_h / layer_h, img_w / layer_w
        cy, cx = np.meshgrid((np.arange(layer_h) + self.offset) * step_h,
                             (np.arange(layer_w) + self.offset) * step_w, indexing="ij")
        centres = np.stack([cx, cy], axis=-1).reshape(-1, 1, 2)  # (H·W, 1, [x, y])
        half = self._box_sizes()[None] / 2.0  # (1, P, [w/2, h/2])
        scale = np.array([img_w, img_h], dtype=np.float64)
        boxes = np.concatenate([(centres - half) / scale, (centres + half) / scale], axis=-1)
        if self.clip:
            np.clip(boxes, 0.0, 1.0, out=boxes)
        out = np.empty((2, boxes.size), dtype=np.float32)
        out[0] = boxes.reshape(-1)
        out[1] = np.tile(self.variance, boxes.size // 4)
        tops[0].data[...] = tops[0].xp.asarray(out.reshape(tops[0].shape))


def decode_boxes(loc: np.ndarray, priors: np.ndarray, variances: np.ndarray, code_type: int,
                 variance_encoded_in_target: bool) -> np.ndarray:
    """Decode location predictions ``loc`` (..., 4) against ``priors`` (P, 4) (Caffe-SSD's
    DecodeBBox). CENTER_SIZE: centre = prior centre + v·loc·prior size, size = prior
    size·exp(v·loc); CORNER: prior corner + v·loc; CORNER_SIZE: prior corner + v·loc·prior
    size. ``v`` is the prior's variance, or 1 when the variance is encoded in the target."""
    v = np.ones_like(variances) if variance_encoded_in_target else variances
    width = priors[:, 2] - priors[:, 0]
    height = priors[:, 3] - priors[:, 1]
    if code_type == CORNER:
        return priors + v * loc
    if code_type == CORNER_SIZE:
        size = np.stack([width, height, width, height], axis=-1)
        return priors + v * loc * size
    if code_type != CENTER_SIZE:
        raise ValueError(f"unknown code_type {code_type}")
    cx = v[:, 0] * loc[..., 0] * width + (priors[:, 0] + priors[:, 2]) / 2
    cy = v[:, 1] * loc[..., 1] * height + (priors[:, 1] + priors[:, 3]) / 2
    w = np.exp(v[:, 2] * loc[..., 2]) * width
    h = np.exp(v[:, 3] * loc[..., 3]) * height
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def _box_area(boxes: np.ndarray) -> np.ndarray:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return np.where((w < 0) | (h < 0), 0.0, w * h)


def jaccard_overlap(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box with each of ``boxes`` (normalised coordinates, 0 when disjoint)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # inf boxes: NaN, as Caffe's floats
        w = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
        h = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
        inter = np.where((w < 0) | (h < 0), 0.0, w * h)
        union = _box_area(box) + _box_area(boxes) - inter
        return np.where(inter > 0, inter / union, 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, score_threshold: float, nms_threshold: float,
        eta: float, top_k: int) -> list[int]:
    """Greedy non-maximum suppression (Caffe-SSD's ApplyNMSFast): candidates with score >
    threshold in descending score order (stable), at most ``top_k``; keep one when its IoU
    with every kept box is <= the threshold, which shrinks by ``eta`` after each keep
    while above 0.5."""
    candidates = np.flatnonzero(scores > score_threshold)
    candidates = candidates[np.argsort(-scores[candidates], kind="stable")]
    if top_k > -1:
        candidates = candidates[:top_k]
    kept: list[int] = []
    threshold = nms_threshold
    for idx in candidates:
        if not kept or np.all(jaccard_overlap(boxes[idx], boxes[kept]) <= threshold):
            kept.append(int(idx))
            if eta < 1 and threshold > 0.5:
                threshold *= eta
    return kept


@register
class DetectionOutputLayer(Layer):
    """SSD's final detections: decode, per-class NMS, keep the best ``keep_top_k``.

    Bottoms: loc (N × P·L·4, L = 1 with ``share_location`` else num_classes), conf
    (N × P·num_classes, probabilities), priors (1 × 2 × P·4 from PriorBox). Top
    (1, 1, num_det, 7), rows [image_id, label, score, xmin, ymin, xmax, ymax] ordered by
    image, then label, then descending score. With no detection at all, one row
    [i, -1, -1, -1, -1, -1, -1] per image (as the fork does). Boxes are not clipped.
    """

    type = "DetectionOutput"
    exact_num_bottoms = 3
    exact_num_tops = 1
    forward_only = True

    def setup(self, bottoms, tops):
        p = self.param.detection_output_param
        if not p.HasField("num_classes"):
            raise self.error("detection_output_param.num_classes is required")
        self.num_classes = p.num_classes
        self.share_location = p.share_location
        self.num_loc_classes = 1 if self.share_location else self.num_classes
        self.background = p.background_label_id
        self.code_type = p.code_type
        self.variance_encoded = p.variance_encoded_in_target
        self.keep_top_k = p.keep_top_k
        self.confidence_threshold = p.confidence_threshold if p.HasField("confidence_threshold") else -np.inf
        self.nms_threshold = p.nms_param.nms_threshold
        self.eta = p.nms_param.eta
        self.top_k = p.nms_param.top_k if p.nms_param.HasField("top_k") else -1
        if self.nms_threshold < 0 or not 0 < self.eta <= 1:
            raise self.error("nms_param needs nms_threshold >= 0 and 0 < eta <= 1")
        if self.code_type not in (CORNER, CENTER_SIZE, CORNER_SIZE):
            raise self.error(f"unknown code_type {self.code_type}")

    def reshape(self, bottoms, tops):
        loc, conf, prior = bottoms
        self.num_priors = prior.count_from(2) // 4
        if loc.shape[0] != conf.shape[0]:
            raise self.error(f"loc and conf bottoms disagree on the batch size: {loc.shape} vs {conf.shape}")
        if loc.count_from(1) != self.num_priors * self.num_loc_classes * 4:
            raise self.error(f"loc bottom {loc.shape} must hold {self.num_priors} priors x "
                             f"{self.num_loc_classes} x 4 values")
        if conf.count_from(1) != self.num_priors * self.num_classes:
            raise self.error(f"conf bottom {conf.shape} must hold {self.num_priors} priors x "
                             f"{self.num_classes} classes")
        tops[0].reshape(1, 1, 1, 7)  # the real count is known only after NMS

    def forward_cpu(self, bottoms, tops):
        # An untrained net's loc values overflow exp() to inf boxes, whose overlaps are NaN:
        # Caffe's float arithmetic gives the same, silently; so do we.
        with np.errstate(over="ignore", invalid="ignore"):
            self._detect(bottoms, tops)

    def _detect(self, bottoms, tops):
        num = bottoms[0].shape[0]
        loc = to_numpy(bottoms[0].data).reshape(num, self.num_priors, self.num_loc_classes, 4)
        conf = to_numpy(bottoms[1].data).reshape(num, self.num_priors, self.num_classes)
        prior = to_numpy(bottoms[2].data).reshape(2, self.num_priors, 4)
        boxes = decode_boxes(loc.transpose(0, 2, 1, 3), prior[0], prior[1], self.code_type,
                             self.variance_encoded)  # (num, L, P, 4)
        rows = []
        for i in range(num):
            picked = []  # (score, label, prior index)
            for c in range(self.num_classes):
                if c == self.background:
                    continue
                scores = conf[i, :, c]
                class_boxes = boxes[i, 0 if self.share_location else c]
                for idx in nms(class_boxes, scores, self.confidence_threshold, self.nms_threshold,
                               self.eta, self.top_k):
                    picked.append((scores[idx], c, idx))
            if -1 < self.keep_top_k < len(picked):
                best = sorted(picked, key=lambda d: -d[0])[:self.keep_top_k]
                # regrouped by label, each label's boxes still in descending score order
                picked = sorted(best, key=lambda d: (d[1], -d[0]))
            for score, c, idx in picked:
                box = boxes[i, 0 if self.share_location else c, idx]
                rows.append([i, c, score, *box])
        if rows:
            out = np.asarray(rows, dtype=np.float32)
        else:
            out = np.full((num, 7), -1, dtype=np.float32)
            out[:, 0] = np.arange(num)
        tops[0].reshape(1, 1, out.shape[0], 7)
        tops[0].data[...] = tops[0].xp.asarray(out.reshape(tops[0].shape))
