"""Caffe's DataTransformer (``transform_param``), applied to a whole batch at once.

For each example, in Caffe's order::

    crop     a crop_size x crop_size window: random offset at TRAIN, centred at TEST
    mirror   flip left-right with probability 1/2 (TRAIN only, when ``mirror``)
    y = (x - mean) * scale

``mean`` is either ``mean_file`` (a .binaryproto of the full, uncropped image, read at
the crop's position) or ``mean_value`` (one per channel, or one for all channels).
Randomness comes from a generator the layer derives from ``dlsoft.random`` at setup,
so the worker thread never shares a generator with the main thread and runs repeat
exactly for a given seed. A sharded transformer (data-parallel training, see
:mod:`.shard`) draws the numbers of the whole global batch and keeps its rank's chunk,
so N ranks crop and mirror exactly as one process at N times the batch.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from .shard import WHOLE, Shard


class Transformer:
    """Transforms batches of ``in_shape`` = (C, H, W) examples into float32 batches."""

    def __init__(self, param, phase: str, in_shape: tuple[int, int, int], rng: np.random.Generator,
                 layer: str = "", shard: Shard = WHOLE):
        self.phase = phase
        self.rng = rng
        self.shard = shard
        self.in_shape = tuple(in_shape)
        self.scale = float(param.scale)
        self.mirror = bool(param.mirror) and phase == "TRAIN"
        self.crop = int(param.crop_size)
        c, h, w = self.in_shape
        where = f"layer '{layer}': " if layer else ""
        if self.crop and (self.crop > h or self.crop > w):
            raise DataError(f"{where}crop_size {self.crop} is larger than the {h}x{w} input")
        self.mean = None  # broadcastable to (C, H, W), float32
        if param.mean_file and len(param.mean_value):
            raise DataError(f"{where}give mean_file or mean_value, not both")
        if param.mean_file:
            self.mean = _read_mean(param.mean_file, self.in_shape, where)
        elif len(param.mean_value):
            values = np.asarray(param.mean_value, dtype=np.float32)
            if len(values) not in (1, c):
                raise DataError(f"{where}{len(values)} mean_value(s) for {c} channels (give 1 or {c})")
            self.mean = np.broadcast_to(values, (c,)).reshape(c, 1, 1).copy()
        self._identity = self.mean is None and self.scale == 1.0 and not self.mirror and not self.crop

    @property
    def out_shape(self) -> tuple[int, int, int]:
        c, h, w = self.in_shape
        return (c, self.crop, self.crop) if self.crop else (c, h, w)

    def _draw(self, n: int):
        """The crop windows' top-left corners and the mirror flags of ``n`` examples."""
        _, h, w = self.in_shape
        crop_h, crop_w = self.out_shape[1:]
        mine, size = self.shard.chunk(n), n * self.shard.size  # draw for the global batch
        if self.phase == "TRAIN" and self.crop:
            tops = self.rng.integers(0, h - crop_h + 1, size=size)[mine]
            lefts = self.rng.integers(0, w - crop_w + 1, size=size)[mine]
        else:
            tops = np.full(n, (h - crop_h) // 2)
            lefts = np.full(n, (w - crop_w) // 2)
        flips = self.rng.integers(0, 2, size=size)[mine].astype(bool) if self.mirror else np.zeros(n, bool)
        return tops, lefts, flips

    def skip(self, n: int) -> None:
        """Draw the random numbers of ``n`` examples without transforming any (resume fast-forward)."""
        if not self._identity:
            self._draw(n)

    def __call__(self, batch: np.ndarray, out: np.ndarray) -> None:
        """Transform ``batch`` (N, C, H, W) (uint8 or float) into ``out`` (N, *out_shape) float32."""
        if self._identity:
            out[...] = batch
            return
        n = batch.shape[0]
        crop_h, crop_w = out.shape[2:]
        tops, lefts, flips = self._draw(n)
        if self.mean is not None and self.mean.shape[1:] != (1, 1):
            # A mean image is indexed at the source position, so subtract before cropping.
            source = batch.astype(np.float32) - self.mean
        else:
            source = batch
        if (tops != tops[0]).any() or (lefts != lefts[0]).any():
            for i in range(n):  # one window per example; a handful of slices per batch
                out[i] = source[i, :, tops[i]:tops[i] + crop_h, lefts[i]:lefts[i] + crop_w]
        else:
            out[...] = source[:, :, tops[0]:tops[0] + crop_h, lefts[0]:lefts[0] + crop_w]
        if flips.any():
            out[flips] = out[flips][..., ::-1]
        if self.mean is not None and self.mean.shape[1:] == (1, 1):
            out -= self.mean
        if self.scale != 1.0:
            out *= self.scale


def _read_mean(path: str, in_shape: tuple[int, int, int], where: str) -> np.ndarray:
    import os

    if not os.path.isfile(path):
        raise DataError(f"{where}mean_file not found: {path}")
    from ..fileio import read_blob

    mean = read_blob(path)
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.shape != tuple(in_shape):
        raise DataError(f"{where}mean_file {path} has shape {mean.shape}, the data is {tuple(in_shape)}")
    return np.ascontiguousarray(mean, dtype=np.float32)
