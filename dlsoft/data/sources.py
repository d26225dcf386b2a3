"""Batch sources for the prefetch pipeline: record readers, batching, transforms.

A *reader* returns examples one at a time, in order, wrapping around at the end:
``read() -> (where, pixels (C, H, W), label)`` where ``where`` names the record for
error messages. :class:`RecordBatchSource` gathers ``batch_size`` of them, checks
each has the shape of the first record, and applies the transform.

Sharded sources (data-parallel training, :mod:`.shard`) skip the other ranks' chunks of
the stream: ``shard.first_skip`` records before the first batch, ``shard.between_skip``
after each one. Skipping happens in the worker thread, as reading does.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError, one_line
from .images import read_image
from .shard import WHOLE, Shard
from .transform import Transformer

#: float32 holds every integer up to 2**24 exactly; larger labels would be silently changed.
MAX_EXACT_LABEL = 2 ** 24


def check_label(label, where: str) -> int:
    """``label`` as an int, or DataError if a float32 label blob cannot hold it exactly."""
    if label != label or label in (float("inf"), float("-inf")):
        raise DataError(f"{where}: label {label} is not a number (labels are integers)")
    value = int(label)
    if value != label or abs(value) > MAX_EXACT_LABEL:
        raise DataError(f"{where}: label {label} is out of range (labels are integers "
                        f"with |label| <= 2**24 so that a float32 blob holds them exactly)")
    return value


class RecordBatchSource:
    """Batches of ``batch_size`` records from ``reader``, transformed; labels as a second top."""

    def __init__(self, reader, batch_size: int, transformer: Transformer, with_labels: bool,
                 first_shape: tuple[int, ...], dtype, layer: str, shard: Shard = WHOLE):
        self.reader = reader
        self.shard = shard
        self._skip = shard.first_skip(batch_size)
        self.transformer = transformer
        self.with_labels = with_labels
        self.layer = layer
        self.staging = np.empty((batch_size, *first_shape), dtype=dtype)
        self.labels = np.empty(batch_size, dtype=np.float32)
        self.shapes = [(batch_size, *transformer.out_shape)] + ([(batch_size,)] if with_labels else [])

    def fill(self, arrays) -> None:
        if self._skip:
            self.reader.skip(self._skip)
        self._skip = self.shard.between_skip(len(self.staging))
        read_into = getattr(self.reader, "read_into", None)
        if read_into is not None:  # array-backed readers copy whole slices at once
            read_into(self.staging, self.labels)
        else:
            expected = self.staging.shape[1:]
            for i in range(len(self.staging)):
                where, pixels, label = self.reader.read()
                if pixels.shape != expected:
                    raise DataError(f"{where} has shape {pixels.shape}, "
                                    f"the batch expects {expected} (the first record's)")
                self.staging[i] = pixels
                self.labels[i] = check_label(label, where)
        self.transformer(self.staging, arrays[0])
        if self.with_labels:
            arrays[1][...] = self.labels

    def skip_batches(self, n: int) -> bool:
        """Skip ``n`` batches without decoding them (False if the reader cannot skip).

        The transform's random numbers are drawn as if the batches had been made, so the
        batches after a skip are those a run that never stopped would make.
        """
        skip = getattr(self.reader, "skip", None)
        if skip is None:
            return False
        batch_size, records = len(self.staging), 0
        for _ in range(n):  # as n calls of fill: this shard's gap, then its batch
            records += self._skip + batch_size
            self._skip = self.shard.between_skip(batch_size)
            self.transformer.skip(batch_size)
        skip(records)
        return True

    def close(self) -> None:
        close = getattr(self.reader, "close", None)
        if close is not None:
            close()


class ArrayReader:
    """Examples held in memory (the bundled digits), read in order with wrap-around."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, name: str):
        self.images = images
        self.labels = labels
        self.name = name
        self.pos = 0

    def first(self):
        return f"{self.name} #0", self.images[0], int(self.labels[0])

    def skip(self, n: int) -> None:
        self.pos = (self.pos + n) % len(self.images)

    def read_into(self, images: np.ndarray, labels: np.ndarray) -> None:
        done, n, total = 0, len(images), len(self.images)
        while done < n:
            take = min(n - done, total - self.pos)
            images[done:done + take] = self.images[self.pos:self.pos + take]
            labels[done:done + take] = self.labels[self.pos:self.pos + take]
            done += take
            self.pos = (self.pos + take) % total


def _list_lines(path: str):
    """``(line number, stripped line)`` of a list file's non-blank lines; a missing file or one
    listing nothing is a DataError."""
    if not os.path.isfile(path):
        raise DataError(f"image list file not found: {path}")
    listed = False
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                listed = True
                yield number, line.strip()
    if not listed:
        raise DataError(f"image list file {path} lists no images")


def read_pair_list(path: str, with_labels: bool = True,
                   expected: str = "image_path label_image_path") -> list[tuple[str, str]]:
    """Two-path lines (``image label_image``, SSD's ``image annotation``; ``image`` alone when not
    ``with_labels``) of a list file; ``expected`` names the line form in errors."""
    entries = []
    for number, line in _list_lines(path):
        fields = line.split()
        if len(fields) not in ((2,) if with_labels else (1, 2)):
            raise DataError(f"{path}:{number}: expected '{expected}', got {line!r}")
        entries.append((fields[0], fields[1] if with_labels else ""))
    return entries


def read_list_file(path: str | os.PathLike) -> list[tuple[str, int]]:
    """Parse an ImageData / convert_imageset list: one ``path label`` per line.

    The label is the last space-separated field, so paths may contain spaces.
    """
    path = str(path)
    entries = []
    for number, line in _list_lines(path):
        name, _, label = line.rpartition(" ")
        try:
            value = int(label)
        except ValueError:
            raise DataError(f"expected 'path label' with an integer label, got {line!r}",
                            path=path, line=number) from None
        if not name:
            raise DataError(f"expected 'path label', got {line!r}", path=path, line=number)
        entries.append((name, check_label(value, f"{path}:{number}")))
    return entries


class ImageListReader:
    """Images named in a list file (Caffe's ImageData), reshuffled every epoch if ``shuffle``."""

    def __init__(self, list_file: str, root_folder: str = "", new_height: int = 0, new_width: int = 0,
                 is_color: bool = True, shuffle: bool = False, rng: np.random.Generator | None = None):
        self.list_file = list_file
        self.entries = read_list_file(list_file)
        self.root = root_folder
        self.size = (new_height, new_width)
        self.is_color = is_color
        self.shuffle = shuffle
        self.rng = rng or np.random.default_rng()
        self.pos = 0
        if shuffle:
            self.rng.shuffle(self.entries)

    def _load(self, index: int):
        name, label = self.entries[index]
        path = self.root + name
        return path, read_image(path, *self.size, is_color=self.is_color), label

    def first(self):
        return self._load(0)

    def skip(self, n: int) -> None:
        """Advance ``n`` entries without loading them, reshuffling at each wrap as ``read`` does."""
        while n > 0:
            take = min(n, len(self.entries) - self.pos)
            self.pos += take
            n -= take
            if self.pos == len(self.entries):
                self.pos = 0
                if self.shuffle:
                    self.rng.shuffle(self.entries)

    def read(self):
        record = self._load(self.pos)
        self.pos += 1
        if self.pos == len(self.entries):
            self.pos = 0
            if self.shuffle:
                self.rng.shuffle(self.entries)
        return record


class HDF5Source:
    """Caffe's HDF5Data: rows of the datasets named by the tops, file after file.

    ``source`` lists one .h5 file per line; relative paths are tried against the working
    directory first, then the list file's folder. A whole file is loaded at a time, as
    in Caffe. With ``shuffle`` the file order and the rows within each file are permuted
    every pass.
    """

    def __init__(self, source: str, batch_size: int, names: list[str], shuffle: bool,
                 rng: np.random.Generator, layer: str, shard: Shard = WHOLE):
        if not os.path.isfile(source):
            raise DataError(f"HDF5 list file not found: {source}")
        folder = Path(source).parent
        with open(source, encoding="utf-8") as f:
            listed = [line.strip() for line in f if line.strip()]
        if not listed:
            raise DataError(f"HDF5 list file {source} lists no files")
        self.files = []
        for name in listed:
            candidates = [Path(name)] if os.path.isabs(name) else [Path(name), folder / name]
            found = next((p for p in candidates if p.is_file()), None)
            if found is None:
                raise DataError(f"HDF5 file {name} listed in {source} not found "
                                f"(looked in {', '.join(str(p) for p in candidates)})")
            self.files.append(str(found))
        self.names, self.shuffle, self.rng, self.layer = names, shuffle, rng, layer
        self.shard = shard
        self._skip = shard.first_skip(batch_size)
        self.file_order = np.arange(len(self.files))
        if shuffle:
            self.rng.shuffle(self.file_order)
        self.file_index = 0
        self._load(self.file_order[0])
        self.row_shapes = [d.shape[1:] for d in self.data]
        self.shapes = [(batch_size, *shape) for shape in self.row_shapes]

    def _load(self, index: int) -> None:
        import h5py

        path = self.files[index]
        try:
            with h5py.File(path, "r") as f:
                missing = [n for n in self.names if n not in f]
                if missing:
                    raise DataError(f"HDF5 file {path} has no dataset {missing[0]!r} "
                                    f"(datasets: {', '.join(sorted(f.keys()))})")
                data = [np.asarray(f[n], dtype=np.float32) for n in self.names]
        except OSError as exc:
            raise DataError(f"cannot read HDF5 file {path}: {one_line(exc)}") from None
        rows = {len(d) if d.ndim else 0 for d in data}
        if len(rows) != 1 or 0 in rows:
            raise DataError(f"HDF5 file {path}: datasets {self.names} must be non-empty and "
                            f"have the same number of rows")
        if hasattr(self, "row_shapes"):
            for name, d, shape in zip(self.names, data, self.row_shapes):
                if d.shape[1:] != shape:
                    raise DataError(f"dataset {name!r} of {path} has rows of shape "
                                    f"{d.shape[1:]}, the batch expects {shape} (from the first file)")
        self.data = data
        self.rows = np.arange(rows.pop())
        if self.shuffle:
            self.rng.shuffle(self.rows)
        self.pos = 0

    def fill(self, arrays) -> None:
        if self._skip:
            self._advance(self._skip, None)
        self._skip = self.shard.between_skip(len(arrays[0]))
        self._advance(len(arrays[0]), arrays)

    def _advance(self, n: int, arrays) -> None:
        """Take the next ``n`` rows into ``arrays`` (None: skip them), moving file to file."""
        done = 0
        while done < n:
            if self.pos == len(self.rows):
                self.file_index += 1
                if self.file_index == len(self.files):
                    self.file_index = 0
                    if self.shuffle:
                        self.rng.shuffle(self.file_order)
                if len(self.files) > 1:
                    self._load(self.file_order[self.file_index])
                else:  # one file stays loaded; only its row order changes
                    self.pos = 0
                    if self.shuffle:
                        self.rng.shuffle(self.rows)
            take = min(n - done, len(self.rows) - self.pos)
            rows = self.rows[self.pos:self.pos + take]
            for out, d in zip(arrays or (), self.data):
                out[done:done + take] = d[rows]
            done += take
            self.pos += take

    def close(self) -> None:
        self.data = []
