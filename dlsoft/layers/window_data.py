"""WindowData (Caffe's WindowDataLayer, R-CNN): crops of object windows and their classes.

The window file (``window_data_param.source``) repeats, per image::

    # <image index>
    <image path>            (``root_folder`` prefixed)
    <channels>
    <height>
    <width>
    <number of windows>
    <class> <overlap> <x1> <y1> <x2> <y2>      (one line per window; corners inclusive)

Windows with ``overlap ≥ fg_threshold`` are foreground (their class), those with
``overlap < bg_threshold`` background (class 0). Each batch holds
``num_fg = int(batch_size · fg_fraction)`` foreground windows after
``batch_size - num_fg`` background ones, each drawn uniformly at random (in every phase,
as Caffe does), mirrored at random when ``mirror``.

A window becomes a ``crop_size`` × ``crop_size`` crop. ``crop_mode: "warp"`` stretches the
box; ``"square"`` first makes it square around its centre. With ``context_pad`` p the box is
grown by ``crop_size/(crop_size - 2p)`` about its centre; the part outside the image is
not stretched but left 0, so the image part is resized to its share of the crop and
placed at the matching offset (mirrored windows are placed from the right). The pixels
(BGR, resized as OpenCV's INTER_LINEAR does, to uint8) then get ``(x - mean)·scale``, with ``mean_value`` or the
centre of ``mean_file`` at the same crop position; the zero margin stays 0.
``transform_param`` holds ``crop_size``/``mirror``/``scale``/``mean_*``; the same fields of
``window_data_param`` (the legacy place) are used when transform_param lacks them.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ..data.images import read_image
from ..errors import DataError
from ..fileio import read_blob
from .data import _PrefetchingDataLayer
from .registry import register


def read_window_file(path: str) -> list[tuple[str, tuple[int, int, int], np.ndarray]]:
    """``[(image path, (C, H, W), windows (k, 6) float64: class, overlap, x1, y1, x2, y2)]``."""
    if not os.path.isfile(path):
        raise DataError(f"window file not found: {path}")
    with open(path, encoding="utf-8") as f:
        lines = [(number, line.strip()) for number, line in enumerate(f, 1) if line.strip()]
    images, i = [], 0
    try:
        while i < len(lines):
            number, line = lines[i]
            if not line.startswith("#"):
                raise DataError(f"{path}:{number}: expected '# <image index>', got {line!r}")
            image = lines[i + 1][1]
            shape = tuple(int(lines[i + k][1]) for k in (2, 3, 4))
            count = int(lines[i + 5][1])
            windows = np.array([[float(v) for v in lines[i + 6 + k][1].split()] for k in range(count)],
                               dtype=np.float64).reshape(count, -1)
            if windows.shape[1] != 6:
                raise DataError(f"{path}:{lines[i + 6][0]}: expected 'class overlap x1 y1 x2 y2'")
            images.append((image, shape, windows))
            i += 6 + count
    except (IndexError, ValueError):
        where = lines[min(i, len(lines) - 1)][0] if lines else 1
        raise DataError(f"{path}:{where}: truncated or malformed image block (expected '# index', path, "
                        "channels, height, width, window count, then that many windows)") from None
    if not images:
        raise DataError(f"window file {path} lists no images")
    return images


def _round(value: float) -> int:
    """C's round(): halves away from zero (Python's round() goes to even)."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def linear_resize_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of OpenCV's INTER_LINEAR resize (pixel centres aligned,
    no antialiasing, edges clamped), which Caffe's window crops use."""
    position = np.maximum((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0)
    low = np.minimum(np.floor(position).astype(int), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    frac = (position - low).astype(np.float32)
    matrix = np.zeros((size_out, size_in), np.float32)
    np.add.at(matrix, (np.arange(size_out), low), 1 - frac)
    np.add.at(matrix, (np.arange(size_out), high), frac)
    return matrix


def crop_window(image: np.ndarray, box, crop: int, context_pad: int, square: bool, mirror: bool):
    """The float32 (C, crop, crop) crop of ``box`` (x1, y1, x2, y2) with Caffe's context rules."""
    channels, rows, cols = image.shape
    x1, y1, x2, y2 = (int(v) for v in box)
    pad_h = pad_w = 0
    out = np.zeros((channels, crop, crop), np.float32)
    crop_h = crop_w = crop
    if context_pad > 0 or square:
        context_scale = crop / (crop - 2 * context_pad)
        half_h, half_w = (y2 - y1 + 1) / 2.0, (x2 - x1 + 1) / 2.0
        center_x, center_y = x1 + half_w, y1 + half_h
        if square:
            half_h = half_w = max(half_h, half_w)
        x1, x2 = _round(center_x - half_w * context_scale), _round(center_x + half_w * context_scale)
        y1, y2 = _round(center_y - half_h * context_scale), _round(center_y + half_h * context_scale)
        unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
        pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
        pad_x2, pad_y2 = max(0, x2 - cols + 1), max(0, y2 - rows + 1)
        x1, x2 = max(x1, 0), min(x2, cols - 1)
        y1, y2 = max(y1, 0), min(y2, rows - 1)
        scale_x, scale_y = crop / unclipped_w, crop / unclipped_h
        crop_w, crop_h = _round((x2 - x1 + 1) * scale_x), _round((y2 - y1 + 1) * scale_y)
        pad_x1, pad_x2 = _round(pad_x1 * scale_x), _round(pad_x2 * scale_x)
        pad_y1 = _round(pad_y1 * scale_y)
        pad_h, pad_w = pad_y1, (pad_x2 if mirror else pad_x1)
        crop_h, crop_w = min(crop_h, crop - pad_y1), min(crop_w, crop - pad_x1)
    if crop_h <= 0 or crop_w <= 0 or x2 < x1 or y2 < y1:
        return out, (pad_h, pad_w, 0, 0)
    region = image[:, y1:y2 + 1, x1:x2 + 1].astype(np.float32)
    rows_matrix, cols_matrix = linear_resize_matrix(region.shape[1], crop_h), linear_resize_matrix(region.shape[2], crop_w)
    pixels = np.clip(np.rint(rows_matrix @ region @ cols_matrix.T), 0, 255)  # Caffe resizes the uint8 image
    if mirror:
        pixels = pixels[:, :, ::-1]
    out[:, pad_h:pad_h + crop_h, pad_w:pad_w + crop_w] = pixels
    return out, (pad_h, pad_w, crop_h, crop_w)


class WindowBatchSource:
    """Batches of background then foreground window crops, with their labels."""

    def __init__(self, layer, param):
        t = layer.transform_param(param)
        if param.batch_size <= 0:
            raise DataError("window_data_param.batch_size must be positive")
        if t.crop_size <= 0:
            raise DataError("WindowData needs crop_size (transform_param or window_data_param)")
        if param.crop_mode not in ("warp", "square"):
            raise DataError(f"crop_mode {param.crop_mode!r}: expected 'warp' or 'square'")
        if param.context_pad * 2 >= t.crop_size:
            raise DataError(f"context_pad {param.context_pad} leaves nothing of crop_size {t.crop_size}")
        self.rng, self.root, self.param = layer.rng, param.root_folder, param
        self.images = read_window_file(param.source)
        self.crop, self.scale, self.mirror = int(t.crop_size), float(t.scale), bool(t.mirror)
        self.fg, self.bg = [], []
        for index, (_, _, windows) in enumerate(self.images):
            for window in windows:
                if window[1] >= param.fg_threshold:
                    self.fg.append((index, int(window[0]), window[2:]))
                elif window[1] < param.bg_threshold:
                    self.bg.append((index, 0, window[2:]))
        self.num_fg = int(param.batch_size * param.fg_fraction)
        self.num_bg = param.batch_size - self.num_fg
        if (self.num_fg and not self.fg) or (self.num_bg and not self.bg):
            kind = "foreground" if self.num_fg and not self.fg else "background"
            raise DataError(f"{param.source} has no {kind} windows for fg_threshold {param.fg_threshold} / "
                            f"bg_threshold {param.bg_threshold}, and the batch asks for some")
        channels = self.images[0][1][0]
        self.mean = np.zeros((channels, 1, 1), np.float32)
        if t.mean_file and len(t.mean_value):
            raise DataError("give mean_file or mean_value, not both")
        if t.mean_file:
            if not os.path.isfile(t.mean_file):
                raise DataError(f"mean_file not found: {t.mean_file}")
            blob = read_blob(t.mean_file)
            full = np.asarray(blob, np.float32).reshape(-1, *blob.shape[-2:])
            off_h, off_w = (full.shape[1] - self.crop) // 2, (full.shape[2] - self.crop) // 2
            if off_h < 0 or off_w < 0:
                raise DataError(f"mean_file {t.mean_file} is {full.shape[1:]}, smaller than crop_size {self.crop}")
            self.mean = full[:, off_h:off_h + self.crop, off_w:off_w + self.crop]
        elif len(t.mean_value):
            values = np.asarray(t.mean_value, np.float32)
            if len(values) not in (1, channels):
                raise DataError(f"{len(values)} mean_value(s) for {channels} channels (give 1 or {channels})")
            self.mean = np.broadcast_to(values, (channels,)).reshape(-1, 1, 1).copy()
        self.cache = {}
        self.shapes = [(param.batch_size, channels, self.crop, self.crop), (param.batch_size,)]

    def _image(self, index):
        if index in self.cache:
            return self.cache[index]
        path, shape, _ = self.images[index]
        image = read_image(self.root + path, is_color=shape[0] == 3)
        if image.shape != shape:
            raise DataError(f"image {self.root + path} is {image.shape}, the window file says {shape}")
        if self.param.cache_images:
            self.cache[index] = image
        return image

    def window(self, entry, mirror):
        """The transformed crop of one (image index, label, box) entry."""
        index, _, box = entry
        pixels, (pad_h, pad_w, h, w) = crop_window(self._image(index), box, self.crop, self.param.context_pad,
                                                   self.param.crop_mode == "square", mirror)
        region = (slice(None), slice(pad_h, pad_h + h), slice(pad_w, pad_w + w))
        mean = self.mean[region] if self.mean.shape[1] > 1 else self.mean
        pixels[region] = (pixels[region] - mean) * self.scale
        return pixels

    def fill(self, arrays):
        i = 0
        for pool, count in ((self.bg, self.num_bg), (self.fg, self.num_fg)):
            for _ in range(count):
                entry = pool[int(self.rng.integers(len(pool)))]
                mirror = self.mirror and bool(self.rng.integers(2))
                arrays[0][i] = self.window(entry, mirror)
                arrays[1][i] = entry[1]
                i += 1

    def close(self):
        self.cache.clear()


@register
class WindowDataLayer(_PrefetchingDataLayer):
    """R-CNN's WindowData: foreground/background window crops from a window file."""

    type = "WindowData"
    exact_num_tops = 2
    shardable = False

    def make_source(self, num_tops):
        return WindowBatchSource(self, self.param.window_data_param)
