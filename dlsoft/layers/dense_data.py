"""Image + label-map data layers of the segmentation forks: tops ``data`` (N×C×H×W) and
``label`` (N×1×H×W), fed by the prefetch pipeline like ImageData.

List files hold ``image_path label_path`` lines (``root_folder`` prefixed). Label images are
read as stored (grey or palette indices, never converted to luminance) and resized with
nearest neighbour, images bilinearly.

``DenseImageData`` (SegNet / ENet, ``dense_image_data_param``): ``new_height``/``new_width``
resize both (the label to ``new/label_divide_factor``, ENet's encoder labels);
``crop_height``/``crop_width`` crop both at one offset (random at TRAIN, centred at TEST;
the image must be at least the crop); ``mirror`` flips both at random (in any phase, as
the fork); ``shuffle`` each epoch; ``transform_param`` ``mean_value`` and ``scale`` apply
to the image only.

``ImageSegData`` (DeepLab / PSPNet, ``image_data_param`` + ``transform_param``): an image
smaller than ``crop_size`` is padded at the bottom and right (image with the mean, so 0
after subtraction; label with ``ignore_label``, default 255), then cropped to
``crop_size`` (random at TRAIN, centred at TEST) and mirrored at random at TRAIN when
``mirror``; before that, at TRAIN, ``transform_param.scale_factors`` resize each example
by a random one of them. ``label_type: NONE`` reads lines with only an image and gives no label top.
"""
from __future__ import annotations


import numpy as np
from PIL import Image, UnidentifiedImageError

from ..data.images import read_image
from ..data.sources import read_pair_list
from ..errors import DataError, one_line
from .base import TRAIN
from .data import _PrefetchingDataLayer
from .registry import register


def load_label_map(path: str, height: int = 0, width: int = 0) -> np.ndarray:
    """A label image as uint8 (1, H, W) of its stored values, nearest-resized to height×width."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "1"):
                image = image.convert("L")
            if height > 0 and width > 0 and image.size != (width, height):
                image = image.resize((width, height), Image.NEAREST)
            return np.asarray(image, dtype=np.uint8)[None].copy()
    except FileNotFoundError:
        raise DataError(f"label image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot read label image {path}: {one_line(exc)}") from None


def rescale(pixels: np.ndarray, factor: float, nearest: bool) -> np.ndarray:
    """uint8 (C, H, W) resized by ``factor`` (bilinear, or nearest for label maps)."""
    h, w = pixels.shape[1:]
    size = (max(int(w * factor + 0.5), 1), max(int(h * factor + 0.5), 1))
    method = Image.NEAREST if nearest else Image.BILINEAR
    return np.stack([np.asarray(Image.fromarray(plane).resize(size, method)) for plane in pixels])


class SegmentationBatchSource:
    """Batches of (image, label map) pairs, resized, padded, cropped, mirrored, normalised."""

    def __init__(self, layer, entries, batch_size, root, new_size, is_color, shuffle, crop, mirror,
                 label_factor=1, pad_label=None, with_labels=True):
        if batch_size <= 0:
            raise DataError("batch_size must be positive")
        self.layer, self.entries, self.root = layer, entries, root
        self.new_size, self.is_color, self.shuffle = new_size, is_color, shuffle
        self.crop, self.mirror, self.factor = crop, mirror, max(label_factor, 1)
        self.pad_label, self.with_labels = pad_label, with_labels
        self.rng, self.train = layer.rng, layer.phase == TRAIN
        t = layer.param.transform_param
        if t.mean_file:
            raise DataError("transform_param.mean_file is not supported by this layer: give mean_value")
        self.scale = float(t.scale)
        # DeepLab v2 / PSPNet: each TRAIN example is first resized by a random one of these.
        self.scale_factors = list(t.scale_factors) if self.train else []
        self.pos = 0
        if shuffle:
            self.rng.shuffle(self.entries)
        image, label = self._load(0)
        channels = image.shape[0]
        self.mean = np.zeros((channels, 1, 1), np.float32)
        if len(t.mean_value):
            values = np.asarray(t.mean_value, np.float32)
            if len(values) not in (1, channels):
                raise DataError(f"{len(values)} mean_value(s) for {channels} channels (give 1 or {channels})")
            self.mean[...] = values.reshape(-1, 1, 1)
        size = crop or image.shape[1:]
        label_size = crop or label.shape[1:]
        self.shapes = [(batch_size, channels, *size)] + ([(batch_size, 1, *label_size)] if with_labels else [])

    def _load(self, index):
        image_name, label_name = self.entries[index]
        h, w = self.new_size
        image = read_image(self.root + image_name, h, w, is_color=self.is_color)
        if not self.with_labels:
            return image, image[:1]
        label = load_label_map(self.root + label_name, h // self.factor, w // self.factor)
        return image, label

    def _next(self):
        where = self.root + self.entries[self.pos][0]
        image, label = self._load(self.pos)
        self.pos += 1
        if self.pos == len(self.entries):
            self.pos = 0
            if self.shuffle:
                self.rng.shuffle(self.entries)
        return where, image, label

    def _example(self, out_image, out_label):
        where, image, label = self._next()
        if self.scale_factors:
            factor = float(self.scale_factors[int(self.rng.integers(len(self.scale_factors)))])
            image, label = rescale(image, factor, False), rescale(label, factor, True)
        image = (image.astype(np.float32) - self.mean)
        label = label.astype(np.float32)
        if self.with_labels and label.shape[1:] != image.shape[1:] and (self.crop or self.factor == 1):
            raise DataError(f"{where}: label map {label.shape[1:]} and image {image.shape[1:]} differ in size")
        if self.crop:
            ch, cw = self.crop
            if self.pad_label is not None:  # DeepLab: pad up to the crop, image with 0, label ignored
                ph, pw = max(ch - image.shape[1], 0), max(cw - image.shape[2], 0)
                image = np.pad(image, ((0, 0), (0, ph), (0, pw)))
                label = np.pad(label, ((0, 0), (0, ph), (0, pw)), constant_values=self.pad_label)
            h, w = image.shape[1:]
            if h < ch or w < cw:
                raise DataError(f"{where}: image {h}×{w} is smaller than the crop {ch}×{cw}")
            if self.train:
                y, x = int(self.rng.integers(h - ch + 1)), int(self.rng.integers(w - cw + 1))
            else:
                y, x = (h - ch) // 2, (w - cw) // 2
            image, label = image[:, y:y + ch, x:x + cw], label[:, y:y + ch, x:x + cw]
        if self.mirror and self.rng.integers(2):
            image, label = image[:, :, ::-1], label[:, :, ::-1]
        if image.shape != out_image.shape:
            raise DataError(f"{where} gives shape {image.shape}, the batch expects {out_image.shape} "
                            "(the first image's): resize with new_height/new_width or crop")
        out_image[...] = image * self.scale
        if out_label is not None:
            out_label[...] = label

    def fill(self, arrays):
        for i in range(self.shapes[0][0]):
            self._example(arrays[0][i], arrays[1][i] if self.with_labels else None)

    def close(self):
        pass


@register
class DenseImageDataLayer(_PrefetchingDataLayer):
    """SegNet / ENet: images and label maps from a list of ``image label`` lines."""

    type = "DenseImageData"
    min_tops = 2

    def make_source(self, num_tops):
        p = self.param.dense_image_data_param
        if bool(p.new_height) != bool(p.new_width) or bool(p.crop_height) != bool(p.crop_width):
            raise DataError("dense_image_data_param: give new_height with new_width, crop_height with crop_width")
        entries = read_pair_list(p.source)
        crop = (p.crop_height, p.crop_width) if p.crop_height else None
        source = SegmentationBatchSource(self, entries, p.batch_size, p.root_folder, (p.new_height, p.new_width),
                                         p.is_color, p.shuffle, crop, p.mirror, p.label_divide_factor)
        if self.phase == TRAIN and p.rand_skip:
            source.pos = int(self.rng.integers(p.rand_skip)) % len(entries)
        return source


@register
class ImageSegDataLayer(_PrefetchingDataLayer):
    """DeepLab / PSPNet: images and label maps, padded with ignore_label and cropped to crop_size."""

    type = "ImageSegData"
    min_tops = 1

    def make_source(self, num_tops):
        p, t = self.param.image_data_param, self.param.transform_param
        with_labels = p.label_type != p.NONE and num_tops > 1
        entries = read_pair_list(p.source, with_labels)
        crop = (t.crop_size, t.crop_size) if t.crop_size else None
        return SegmentationBatchSource(self, entries, p.batch_size, p.root_folder, (p.new_height, p.new_width),
                                       p.is_color, p.shuffle, crop, t.mirror and self.phase == TRAIN,
                                       pad_label=p.ignore_label, with_labels=with_labels)
