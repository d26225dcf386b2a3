"""Data layers (Caffe's type names): tops ``data`` and optionally ``label``, no bottoms.

``Data`` (LMDB of Datum records, or the bundled digits via ``builtin:digits/<split>``),
``ImageData`` (a list of image files) and ``HDF5Data`` read through the prefetch
pipeline (:mod:`dlsoft.data.prefetch`): a worker thread prepares ``data_param.prefetch``
batches (default 4) ahead and forward only copies a ready one into the tops.
``MemoryData`` (arrays given from Python) and ``DummyData`` (fillers) have nothing to
prepare and fill their tops directly. Top shapes are known at setup from the first record.

Phases: every source is read in order with wrap-around; ``rand_skip`` (a random number of
records skipped first, as Caffe) applies at TRAIN only, so TEST always starts at record 0.

Data-parallel training: the Net gives the TRAIN data layers a :class:`~dlsoft.data.shard.Shard`
before setup (``shard``); rank r of N then reads the chunks r, r+N, r+2N, ... of batch_size
records of the stream one process would read (Data, ImageData, HDF5Data, MemoryData).
"""
from __future__ import annotations

import os
import weakref

import numpy as np

from .. import random as dl_random
from ..data import digits
from ..data.leveldb_io import LevelDBReader
from ..data.lmdb_io import LMDBReader
from ..data.prefetch import Prefetcher
from ..data.shard import WHOLE, Shard
from ..data.sources import ArrayReader, HDF5Source, ImageListReader, RecordBatchSource
from ..data.transform import Transformer
from ..errors import DataError
from ..protos import caffe_pb2
from .base import TRAIN, Layer
from .fillers import fill
from .registry import register

BUILTIN = "builtin:"
_LEGACY_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


class _DataLayer(Layer):
    exact_num_bottoms = 0
    min_tops = 1
    max_tops = 2
    forward_only = True
    #: layers that read their own shard of the data in data-parallel training
    shardable = False
    shard: Shard = WHOLE

    def data_error(self, message: str) -> DataError:
        return DataError(f"layer '{self.name}' (type {self.type}): {message}")

    def reshape(self, bottoms, tops):
        """Top shapes are fixed at setup."""


class _PrefetchingDataLayer(_DataLayer):
    """Base of the layers fed by a :class:`Prefetcher`; subclasses build the batch source."""

    prefetcher: Prefetcher | None = None
    shardable = True

    def make_source(self, num_tops: int):
        raise NotImplementedError

    def setup(self, bottoms, tops):
        # A generator of the layer's own, seeded from the process generator, so the worker
        # never races the main thread for random numbers and runs repeat for a seed.
        self.rng = np.random.default_rng(int(dl_random.rng().integers(2 ** 63)))
        try:
            source = self.make_source(len(tops))
        except DataError as exc:
            raise self.data_error(exc.args[0]) from None
        for top, shape in zip(tops, source.shapes):
            top.reshape(shape)
        depth = self.param.data_param.prefetch
        self.prefetcher = Prefetcher(source, depth, self.device, name=f"layer '{self.name}' (type {self.type})")
        self._finalizer = weakref.finalize(self, self.prefetcher.close)

    def forward_cpu(self, bottoms, tops):
        self.prefetcher.next_into(tops)

    def forward_gpu(self, bottoms, tops):
        self.prefetcher.next_into(tops)  # the prefetcher stages through pinned memory itself

    def close(self):
        if self.prefetcher is not None:
            self._finalizer()

    def transform_param(self, legacy=None):
        """``transform_param``, with the legacy fields of ``legacy`` (data_param...) moved in."""
        param = caffe_pb2.TransformationParameter()
        param.CopyFrom(self.param.transform_param)
        if legacy is not None:
            for field in _LEGACY_TRANSFORM_FIELDS:
                if legacy.HasField(field) and not param.HasField(field):
                    setattr(param, field, getattr(legacy, field))
        return param

    def record_source(self, reader, batch_size: int, with_labels: bool, legacy=None) -> RecordBatchSource:
        if batch_size <= 0:
            raise DataError("batch_size must be positive")
        if self.phase == TRAIN and getattr(legacy, "rand_skip", 0):
            reader.skip(int(self.rng.integers(0, legacy.rand_skip + 1)))
        _, first, _ = reader.first()
        transformer = Transformer(self.transform_param(legacy), self.phase, first.shape, self.rng, self.name,
                                  self.shard)
        return RecordBatchSource(reader, batch_size, transformer, with_labels, first.shape,
                                 first.dtype, self.name, self.shard)


@register
class DataLayer(_PrefetchingDataLayer):
    """Caffe's Data layer: Datum records from an LMDB (``backend: LMDB``), transformed.

    ``source: "builtin:digits/train"`` (``/test``, ``/all``) reads dlsoft's bundled MNIST
    digits (see ``dlsoft/data/digits/README.md``) with no database to prepare. Encoded
    (JPEG/PNG) records are decoded as stored, or forced to 3 or 1 channels by
    ``transform_param.force_color`` / ``force_gray``. ``backend: LEVELDB`` reads a LevelDB
    through plyvel (the optional extra ``leveldb``).
    """

    type = "Data"

    def make_source(self, num_tops):
        p = self.param.data_param
        source = p.source
        if source.startswith(BUILTIN):
            name = source[len(BUILTIN):]
            dataset, _, split = name.partition("/")
            if dataset != "digits" or split not in digits.SPLITS:
                raise DataError(f"unknown built-in source {source!r}: expected "
                                + ", ".join(f"'{BUILTIN}digits/{s}'" for s in digits.SPLITS))
            images, labels = digits.load_digits(split)
            reader = ArrayReader(images, labels, source)
        else:
            is_lmdb_folder = os.path.isfile(os.path.join(source, "data.mdb"))
            t = self.param.transform_param
            is_color = True if t.force_color else False if t.force_gray else None
            if p.backend == caffe_pb2.DataParameter.LEVELDB and (p.HasField("backend") or not is_lmdb_folder):
                reader = LevelDBReader(source, is_color=is_color)
            else:
                reader = LMDBReader(source, is_color=is_color)
        return self.record_source(reader, p.batch_size, num_tops > 1, legacy=p)


@register
class ImageDataLayer(_PrefetchingDataLayer):
    """Caffe's ImageData: images listed as ``path label`` lines, loaded with Pillow (BGR).

    Paths are ``root_folder + path``; ``new_height``/``new_width`` resize (bilinear);
    ``is_color: false`` loads grey; ``shuffle`` reorders the list every epoch.
    """

    type = "ImageData"

    def make_source(self, num_tops):
        p = self.param.image_data_param
        reader = ImageListReader(p.source, p.root_folder, p.new_height, p.new_width, p.is_color,
                                 p.shuffle, self.rng)
        return self.record_source(reader, p.batch_size, num_tops > 1, legacy=p)


@register
class HDF5DataLayer(_PrefetchingDataLayer):
    """Caffe's HDF5Data: each top is the dataset of the same name in the listed .h5 files.

    No transforms (as in Caffe). Top shape: ``(batch_size, *dataset.shape[1:])``.
    """

    type = "HDF5Data"
    max_tops = -1

    def make_source(self, num_tops):
        p = self.param.hdf5_data_param
        if p.batch_size <= 0:
            raise DataError("batch_size must be positive")
        names = list(self.param.top)
        if len(names) != num_tops:
            raise DataError(f"needs its top names (the dataset names), got {names}")
        return HDF5Source(p.source, p.batch_size, names, p.shuffle, self.rng, self.name, self.shard)


@register
class MemoryDataLayer(_DataLayer):
    """Caffe's MemoryData: batches from arrays given with :meth:`set_input_arrays`.

    Tops: data ``(batch_size, channels, height, width)`` and label ``(batch_size,)``.
    Each forward copies the next ``batch_size`` rows, wrapping around (sharded: the
    rank's next chunk, see :mod:`dlsoft.data.shard`).
    """

    type = "MemoryData"
    exact_num_tops = 2
    min_tops = max_tops = -1
    shardable = True

    def setup(self, bottoms, tops):
        p = self.param.memory_data_param
        self.shape = (p.batch_size, p.channels, p.height, p.width)
        if min(self.shape) <= 0:
            raise self.data_error(f"batch_size, channels, height and width must be positive, got {self.shape}")
        tops[0].reshape(self.shape)
        tops[1].reshape((p.batch_size,))
        self.data = self.labels = None
        self.pos = 0

    def set_input_arrays(self, data: np.ndarray, labels: np.ndarray) -> None:
        """Use ``data`` (N, C, H, W) and ``labels`` (N,) as the source; N a multiple of batch_size."""
        data = np.ascontiguousarray(data, dtype=np.float32)
        labels = np.ascontiguousarray(labels, dtype=np.float32).reshape(-1)
        if data.ndim != 4 or data.shape[1:] != self.shape[1:]:
            raise self.data_error(f"set_input_arrays: data of shape {data.shape} does not match "
                                  f"the layer's (N, {', '.join(map(str, self.shape[1:]))})")
        if len(labels) != len(data):
            raise self.data_error(f"set_input_arrays: {len(data)} images but {len(labels)} labels")
        if len(data) == 0 or len(data) % self.shape[0]:
            raise self.data_error(f"set_input_arrays: the number of images ({len(data)}) "
                                  f"must be a positive multiple of batch_size {self.shape[0]}")
        self.data, self.labels = data, labels
        self.pos = self.shard.first_skip(self.shape[0]) % len(data)

    def forward_cpu(self, bottoms, tops):
        if self.data is None:
            raise self.data_error("no data: call set_input_arrays(data, labels) first")
        n = self.shape[0]
        xp = tops[0].xp
        tops[0].data[...] = xp.asarray(self.data[self.pos:self.pos + n])
        tops[1].data[...] = xp.asarray(self.labels[self.pos:self.pos + n])
        self.pos = (self.pos + n * self.shard.size) % len(self.data)


@register
class DummyDataLayer(_DataLayer):
    """Caffe's DummyData: tops filled by ``data_filler`` (default constant 0).

    Shapes: ``shape`` (one for all tops, or one per top) or the legacy ``num``,
    ``channels``, ``height``, ``width`` lists. Non-constant fillers are redrawn each
    forward, constant ones filled once, as in Caffe.
    """

    type = "DummyData"
    max_tops = -1

    def setup(self, bottoms, tops):
        p = self.param.dummy_data_param
        n = len(tops)

        def per_top(values, what):
            if len(values) not in (1, n):
                raise self.data_error(f"{len(values)} {what} for {n} tops (give 1 or {n})")
            return [values[0 if len(values) == 1 else i] for i in range(n)]

        if len(p.shape):
            shapes = [tuple(s.dim) for s in per_top(p.shape, "shapes")]
        elif len(p.num):
            dims = [per_top(getattr(p, f), f) for f in ("num", "channels", "height", "width")]
            shapes = list(zip(*dims))
        else:
            raise self.data_error("give dummy_data_param shape (or num/channels/height/width)")
        self.fillers = per_top(p.data_filler, "data_fillers") if len(p.data_filler) else \
            [caffe_pb2.FillerParameter(type="constant", value=0)] * n
        self.refill = [f.type != "constant" for f in self.fillers]
        for top, shape, filler in zip(tops, shapes, self.fillers):
            top.reshape(shape)
            fill(top, filler)

    def forward_cpu(self, bottoms, tops):
        for top, filler, refill in zip(tops, self.fillers, self.refill):
            if refill:
                fill(top, filler)
