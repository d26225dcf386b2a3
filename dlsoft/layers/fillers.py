"""Fillers: how learnable blobs get their initial values (Caffe's filler.hpp).

``n`` for xavier/msra is ``fan_in = count / shape[0]`` by default, ``fan_out =
count / shape[1]`` (``count`` for 1-d blobs), or their average, per ``variance_norm``.
Values are drawn on the host from the seeded generator (``dlsoft.random``) and then
copied to the blob's device, so CPU and GPU runs with one seed start alike.
"""
from __future__ import annotations

import math

import numpy as np

from .. import random as dl_random
from ..blob import Blob
from ..errors import NetDefinitionError
from ..protos import caffe_pb2

FAN_IN, FAN_OUT, AVERAGE = (caffe_pb2.FillerParameter.FAN_IN, caffe_pb2.FillerParameter.FAN_OUT,
                            caffe_pb2.FillerParameter.AVERAGE)


def _fan(shape: tuple[int, ...], variance_norm: int) -> float:
    count = int(np.prod(shape)) if shape else 1
    fan_in = count / shape[0] if shape and shape[0] else count
    fan_out = count / shape[1] if len(shape) > 1 and shape[1] else count
    if variance_norm == FAN_OUT:
        return fan_out
    if variance_norm == AVERAGE:
        return (fan_in + fan_out) / 2.0
    return fan_in


def filler_values(filler, shape: tuple[int, ...]) -> np.ndarray:
    """Draw an array of ``shape`` as the FillerParameter ``filler`` says (float32, host)."""
    rng = dl_random.rng()
    kind = filler.type or "constant"
    count = int(np.prod(shape)) if shape else 1
    if kind == "constant":
        values = np.full(shape, filler.value, dtype=np.float32)
    elif kind == "uniform":
        values = rng.uniform(filler.min, filler.max, size=shape)
    elif kind == "gaussian" and not filler.std >= 0:
        raise NetDefinitionError(f"gaussian filler: std must be >= 0, got {filler.std}")
    elif kind == "uniform" and not (math.isfinite(filler.min) and math.isfinite(filler.max)):
        raise NetDefinitionError(f"uniform filler: min and max must be finite, got {filler.min} and {filler.max}")
    elif kind == "gaussian":
        values = rng.normal(filler.mean, filler.std, size=shape)
        if filler.sparse >= 0:
            # Each output keeps on average `sparse` non-zero inputs.
            num_outputs = shape[0] if shape else 1
            keep = rng.random(size=shape) < filler.sparse / num_outputs
            values = values * keep
    elif kind == "positive_unitball":
        values = rng.uniform(0.0, 1.0, size=shape)
        rows = values.reshape(shape[0] if shape else 1, -1)
        rows /= rows.sum(axis=1, keepdims=True)
    elif kind in ("xavier", "msra") and _fan(shape, filler.variance_norm) <= 0:
        raise NetDefinitionError(f"{kind} filler: the blob of shape {shape} has no inputs to scale by "
                                 "(fan-in/fan-out 0); give the layer a non-empty input or another filler")
    elif kind == "xavier":
        scale = math.sqrt(3.0 / _fan(shape, filler.variance_norm))
        values = rng.uniform(-scale, scale, size=shape)
    elif kind == "msra":
        std = math.sqrt(2.0 / _fan(shape, filler.variance_norm))
        values = rng.normal(0.0, std, size=shape)
    elif kind == "bilinear":
        values = _bilinear(shape)
    else:
        raise NetDefinitionError(f"unknown filler type {kind!r} (expected constant, uniform, gaussian, "
                                 "positive_unitball, xavier, msra or bilinear)")
    del count
    return np.ascontiguousarray(values, dtype=np.float32)


def _bilinear(shape: tuple[int, ...]) -> np.ndarray:
    """Bilinear upsampling kernel for a Deconvolution weight (..., K, K)."""
    if len(shape) != 4 or shape[2] != shape[3]:
        raise NetDefinitionError(f"bilinear filler needs a 4-d blob with square kernels, got {shape}")
    k = shape[3]
    f = math.ceil(k / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    axis = 1 - np.abs(np.arange(k) / f - c)
    return np.broadcast_to(np.outer(axis, axis), shape).astype(np.float32)


def fill(blob: Blob, filler) -> None:
    """Fill ``blob.data`` in place from the FillerParameter ``filler``."""
    blob.data[...] = blob.xp.asarray(filler_values(filler, blob.shape))
