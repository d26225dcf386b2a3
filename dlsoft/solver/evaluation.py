"""What a test pass reports from its batches: ``SolverParameter.eval_type``.

- ``classification`` (Caffe's default): the mean over the batches of each output element.
- ``detection`` (the SSD fork's ``Solver::TestDetection``): each output is a
  DetectionEvaluate top, rows ``[image, label, score, tp, fp]`` with ``image == -1`` rows
  giving ``[-1, label, positives, -1, -1]``; over all batches, per output and label, the
  detections' scores and tp/fp flags are gathered (a detection with tp = fp = 0, matched to
  a difficult box that is not evaluated, is left out) and the output's value is the mean
  over labels with positives of ``average_precision(..., ap_version)`` (a label with
  positives but no detection counts 0), the mAP.
"""
from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np

from ..layers.detection_evaluate import average_precision

log = logging.getLogger("dlsoft")

EVAL_TYPES = ("classification", "detection")


class OutputMeans:
    """``classification``: sum each output's values over the batches, report their means."""

    def __init__(self):
        self.sums: list[np.ndarray] | None = None
        self.batches = 0

    def add(self, values: list[np.ndarray]) -> None:
        self.batches += 1
        if self.sums is None:
            self.sums = [v.astype(np.float64).ravel().copy() for v in values]
            return
        for total, value in zip(self.sums, values):
            total += value.astype(np.float64).ravel()

    def result(self, names: list[str]) -> list[np.ndarray]:
        return [total / max(self.batches, 1) for total in (self.sums or [])]


class DetectionMAP:
    """``detection``: gather DetectionEvaluate rows over the batches, report each output's mAP."""

    def __init__(self, ap_version: str = "Integral", per_class: bool = False):
        self.ap_version = ap_version
        self.per_class = per_class
        self.positives: list[dict] = []
        self.detections: list[dict] = []  # per output: label -> [(score, tp, fp), ...]

    def add(self, values: list[np.ndarray]) -> None:
        while len(self.positives) < len(values):
            self.positives.append(defaultdict(int))
            self.detections.append(defaultdict(list))
        for index, value in enumerate(values):
            rows = np.asarray(value, dtype=np.float64).reshape(-1, 5)
            for image, label, score, tp, fp in rows:
                if image == -1:
                    self.positives[index][int(label)] += int(score)
                elif tp != 0 or fp != 0:
                    self.detections[index][int(label)].append((score, tp, fp))

    def result(self, names: list[str]) -> list[np.ndarray]:
        out = []
        for index, name in enumerate(names):
            positives = self.positives[index] if index < len(self.positives) else {}
            detections = self.detections[index] if index < len(self.detections) else {}
            precisions = []
            for label in sorted(positives):
                found = np.array(detections.get(label, []), dtype=np.float64).reshape(-1, 3)
                if not found.size:
                    log.warning("Missing true_pos for label: %d", label)
                ap = average_precision(found[:, 1], found[:, 2], found[:, 0], positives[label], self.ap_version)
                if self.per_class:
                    log.info("    %s class%d: %s", name, label, f"{ap:.6g}")
                precisions.append(ap)
            out.append(np.array([np.mean(precisions) if precisions else 0.0]))
        return out


AP_VERSIONS = ("11point", "MaxIntegral", "Integral")


def check(param, error) -> None:
    """Refuse an ``eval_type`` or ``ap_version`` nobody knows; ``error(field, message)`` makes the error."""
    if param.eval_type not in EVAL_TYPES:
        raise error("eval_type", f"unknown type '{param.eval_type}' ({' or '.join(EVAL_TYPES)})")
    if param.eval_type == "detection" and param.ap_version not in AP_VERSIONS:
        raise error("ap_version", f"unknown version '{param.ap_version}' ({', '.join(AP_VERSIONS)})")


def accumulator(param):
    """The accumulator a SolverParameter's ``eval_type`` asks for."""
    if param.eval_type == "detection":
        return DetectionMAP(param.ap_version, param.show_per_class_result)
    return OutputMeans()
