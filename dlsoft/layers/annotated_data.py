"""AnnotatedData (SSD's data layer): images and their boxes from an LMDB of AnnotatedDatum.

Tops: ``data`` (N×3×H×W, transformed as ``dlsoft.data.annotated`` describes) and ``label``
(1×1×G×8: one row per box of the batch, ``item_id, group_label, instance_id, xmin, ymin,
xmax, ymax, difficult``, coordinates normalised to the transformed image; a batch without
boxes gives one row of -1, as SSD's layer does). The label's row count changes from batch
to batch, so the layer reshapes it at every forward and the net reshapes the layers below.

Batches are made by a worker thread (``data_param.prefetch`` ready batches queued), with
the layer's own seeded generator, so runs repeat for a seed. An error in the worker is
raised by the next forward as a one-line DataError naming the database.
"""
from __future__ import annotations

import queue
import threading

import numpy as np

from .. import random as dl_random
from ..data import annotated
from ..errors import DataError, DlsoftError, one_line
from .base import TRAIN
from .data import _DataLayer
from .registry import register


@register
class AnnotatedDataLayer(_DataLayer):
    """SSD's AnnotatedData: batch samplers, distort, expand, resize, mirror; boxes follow."""

    type = "AnnotatedData"
    min_tops = 1
    max_tops = 2

    def setup(self, bottoms, tops):
        p, t = self.param.data_param, self.param.transform_param
        if not p.source:
            raise self.data_error("data_param.source (the LMDB of AnnotatedDatum) is required")
        if p.batch_size <= 0:
            raise self.data_error("data_param.batch_size must be positive")
        if t.mean_file:
            raise self.data_error("transform_param.mean_file is not supported here: give mean_value")
        if t.resize_param.height <= 0 or t.resize_param.width <= 0:
            raise self.data_error("transform_param.resize_param height and width are required (images differ in size)")
        try:
            self.reader = annotated.AnnotatedReader(p.source)
        except DlsoftError as exc:
            raise self.data_error(f"data_param.source '{p.source}': {one_line(exc)}") from None
        mean = list(t.mean_value) or [0.0]
        self.mean = np.array(mean * 3 if len(mean) == 1 else mean, dtype=np.float32)
        self.scale = float(t.scale)
        self.batch = int(p.batch_size)
        self.height, self.width = int(t.resize_param.height), int(t.resize_param.width)
        self.rng = np.random.default_rng(int(dl_random.rng().integers(2 ** 63)))
        tops[0].reshape((self.batch, 3, self.height, self.width))
        if len(tops) > 1:
            tops[1].reshape((1, 1, 1, 8))
        self._ready: queue.Queue = queue.Queue(maxsize=max(int(p.prefetch), 1))
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run, name=f"dlsoft-annotated-{self.name}", daemon=True)
        self._worker.start()

    # ---- the worker -----------------------------------------------------------------
    def _run(self):
        while not self._stop.is_set():
            try:
                item = self._make_batch()
            except Exception as exc:  # reported by the next forward, in the main thread
                item = exc
            while not self._stop.is_set():
                try:
                    self._ready.put(item, timeout=0.05)
                    break
                except queue.Full:
                    continue
            if isinstance(item, Exception):
                return

    def _make_batch(self):
        images = np.empty((self.batch, 3, self.height, self.width), np.float32)
        rows = []
        for item in range(self.batch):
            where, image, boxes = self.reader.read()
            image, boxes = self._transform(image, boxes, where)
            images[item] = ((image.astype(np.float32) - self.mean) * self.scale).transpose(2, 0, 1)
            for box in boxes:
                rows.append([item, *box])
        label = np.array(rows, np.float32).reshape(1, 1, -1, 8) if rows else np.full((1, 1, 1, 8), -1, np.float32)
        return images, label

    def _transform(self, image, boxes, where):
        t, rng = self.param.transform_param, self.rng
        if self.phase == TRAIN:
            if t.HasField("distort_param"):
                image = annotated.distort(image, t.distort_param, rng)
            if t.HasField("expand_param"):
                image, boxes = annotated.expand(image, boxes, t.expand_param, self.mean, rng)
            samples = annotated.sample_boxes(self.param.annotated_data_param.batch_sampler, boxes[:, 2:6], rng)
            if samples:
                crop = samples[int(rng.integers(len(samples)))]
                h, w = image.shape[:2]
                x1, y1 = int(round(crop[0] * w)), int(round(crop[1] * h))
                x2, y2 = max(int(round(crop[2] * w)), x1 + 1), max(int(round(crop[3] * h)), y1 + 1)
                image = image[y1:y2, x1:x2]
                boxes = annotated.crop_boxes(boxes, crop)
        image = annotated.resize(image, t.resize_param, rng)
        if self.phase == TRAIN and t.mirror and rng.random() < 0.5:
            image = image[:, ::-1]
            boxes = boxes.copy()
            boxes[:, [2, 4]] = 1 - boxes[:, [4, 2]]
        if image.shape[:2] != (self.height, self.width):
            raise DataError(f"{where}: image is {image.shape[:2]} after resize, expected {(self.height, self.width)}")
        return image, boxes

    # ---- the layer ----------------------------------------------------------------
    def forward_cpu(self, bottoms, tops):
        item = self._ready.get()
        if isinstance(item, Exception):
            message = one_line(item) if isinstance(item, DlsoftError) else f"{type(item).__name__}: {item}"
            raise self.data_error(f"reading {self.param.data_param.source}: {message}")
        images, label = item
        tops[0].data[...] = self.xp.asarray(images)
        if len(tops) > 1:
            tops[1].reshape(label.shape)
            tops[1].data[...] = self.xp.asarray(label)

    def forward_gpu(self, bottoms, tops):
        self.forward_cpu(bottoms, tops)

    def close(self):
        if getattr(self, "_worker", None) is not None:
            self._stop.set()
            self._worker.join(timeout=5)
            self._worker = None
            self.reader.close()
