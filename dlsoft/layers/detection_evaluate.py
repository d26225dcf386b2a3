"""DetectionEvaluate (SSD): true and false positives of a batch's detections, for mAP.

Bottoms: detections (1×1×D×7: image_id, label, score, xmin, ymin, xmax, ymax, as
DetectionOutput gives them) and the ground truth (1×1×G×8, as AnnotatedData gives it).
Top: 1×1×(K + D)×5 where K is the number of non-background classes: first one row per class
``[-1, class, positives, -1, -1]`` (difficult boxes not counted unless
``evaluate_difficult_gt``), then one row per detection ``[image_id, label, score, tp, fp]``.
Per image and class, detections are taken in decreasing score and each is a true positive
when its best-overlapping ground truth of that class overlaps at least
``overlap_threshold`` and was not matched before (a match to a difficult box counts as
neither, unless ``evaluate_difficult_gt``).

:func:`average_precision` turns accumulated rows into AP per class (``11point``,
``MaxIntegral`` or ``Integral``, SSD's three ``ap_version`` s); their mean is the mAP.
"""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy
from .base import Layer
from .detection import jaccard_overlap
from .registry import register


def average_precision(tp: np.ndarray, fp: np.ndarray, scores: np.ndarray, positives: int,
                      version: str = "Integral") -> float:
    """SSD's ComputeAP over one class's detections (``tp``/``fp`` flags, any order)."""
    if positives <= 0:
        return 0.0
    order = np.argsort(-np.asarray(scores), kind="stable")
    tp_cum, fp_cum = np.cumsum(np.asarray(tp)[order]), np.cumsum(np.asarray(fp)[order])
    if not tp_cum.size:
        return 0.0
    recall = tp_cum / positives
    precision = tp_cum / np.maximum(tp_cum + fp_cum, 1e-12)
    if version == "11point":
        return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                              for t in np.linspace(0, 1, 11)]))
    if version == "MaxIntegral":
        best = np.maximum.accumulate(precision[::-1])[::-1]
        previous = np.concatenate([[0.0], recall[:-1]])
        return float(np.sum((recall - previous) * best))
    if version == "Integral":
        previous = np.concatenate([[0.0], recall[:-1]])
        return float(np.sum((recall - previous) * precision))
    raise ValueError(f"unknown ap_version '{version}' (11point, MaxIntegral, Integral)")


@register
class DetectionEvaluateLayer(Layer):
    """Per-detection true/false positives and per-class positive counts (SSD's evaluation)."""

    type = "DetectionEvaluate"
    exact_num_bottoms = 2
    exact_num_tops = 1
    forward_only = True

    def setup(self, bottoms, tops):
        p = self.param.detection_evaluate_param
        if not p.HasField("num_classes") or p.num_classes < 1:
            raise self.error("detection_evaluate_param.num_classes is required")
        self.classes = [c for c in range(p.num_classes) if c != p.background_label_id]

    def reshape(self, bottoms, tops):
        if bottoms[0].count % 7 or bottoms[1].count % 8:
            raise self.error(f"bottoms must be 1×1×D×7 detections and 1×1×G×8 ground truth, got "
                             f"{bottoms[0].shape} and {bottoms[1].shape}")
        tops[0].reshape((1, 1, len(self.classes) + bottoms[0].count // 7, 5))

    def allow_backward_to(self, bottom_index):
        return False

    def forward_cpu(self, bottoms, tops):
        p = self.param.detection_evaluate_param
        detections = to_numpy(bottoms[0].data).reshape(-1, 7).astype(np.float64)
        gt = to_numpy(bottoms[1].data).reshape(-1, 8).astype(np.float64)
        gt = gt[gt[:, 0] >= 0]
        rows = []
        for c in self.classes:
            of_class = gt[gt[:, 1] == c]
            count = len(of_class) if p.evaluate_difficult_gt else int((of_class[:, 7] == 0).sum())
            rows.append([-1, c, count, -1, -1])
        for image in np.unique(detections[:, 0]):
            if image < 0:
                continue
            for c in np.unique(detections[detections[:, 0] == image, 1]):
                picked = np.flatnonzero((detections[:, 0] == image) & (detections[:, 1] == c))
                picked = picked[np.argsort(-detections[picked, 2], kind="stable")]
                truth = gt[(gt[:, 0] == image) & (gt[:, 1] == c)]
                used = np.zeros(len(truth), dtype=bool)
                for d in picked:
                    tp = fp = 0
                    if len(truth):
                        overlaps = jaccard_overlap(detections[d, 3:7], truth[:, 3:7])
                        best = int(np.argmax(overlaps))
                        if overlaps[best] >= p.overlap_threshold:
                            if p.evaluate_difficult_gt or truth[best, 7] == 0:
                                tp, fp = (0, 1) if used[best] else (1, 0)
                                used[best] = True
                        else:
                            fp = 1
                    else:
                        fp = 1
                    rows.append([image, c, detections[d, 2], tp, fp])
        out = np.array(rows, dtype=np.float32).reshape(1, 1, -1, 5)
        tops[0].reshape(out.shape)
        tops[0].data[...] = self.xp.asarray(out)
