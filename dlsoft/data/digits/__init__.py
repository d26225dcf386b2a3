"""Real handwritten digits shipped with dlsoft: 5,000 MNIST images (see README.md here).

The split is fixed: per digit, in file order, the first 400 images train and the
last 100 test (4,000 / 1,000). A ``Data`` layer reads a split directly with
``data_param { source: "builtin:digits/train" }`` (or ``digits/test``, ``digits/all``).
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ...errors import DataError

DATA_FILE = Path(__file__).with_name("mnist5k.npz")
SPLITS = ("train", "test", "all")
TRAIN_PER_DIGIT, TEST_PER_DIGIT = 400, 100


@functools.lru_cache(maxsize=1)
def _load_all() -> tuple[np.ndarray, np.ndarray]:
    with np.load(DATA_FILE) as archive:
        images = archive["images"]
        labels = archive["labels"].astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def split_indices(split: str) -> np.ndarray:
    """Row numbers in the bundled file of ``split``, in the split's (interleaved) order.

    Per digit, in file order, the first 400 rows are ``train`` and the last 100 ``test``
    (``all``: all 500). The rows are then interleaved by digit (the 1st image of digits
    0..9, then the 2nd of each, ...) because the file is sorted by digit and a net reads
    its source in order: every batch then holds every class.
    """
    if split not in SPLITS:
        raise DataError(f"unknown digits split {split!r}: expected one of {', '.join(SPLITS)}")
    _, labels = _load_all()
    per_digit = []
    for digit in range(10):
        rows = np.flatnonzero(labels == digit)
        per_digit.append({"train": rows[:TRAIN_PER_DIGIT], "test": rows[-TEST_PER_DIGIT:], "all": rows}[split])
    return np.stack(per_digit, axis=1).reshape(-1)


def load_digits(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of a split: uint8 (N, 1, 28, 28) and int64 (N,), interleaved by digit."""
    images, labels = _load_all()
    rows = split_indices(split)
    return images[rows][:, None, :, :], labels[rows].copy()


def write_lmdb(split: str, db_path) -> int:
    """Write a split as a Caffe LMDB (keys ``%08d``, raw 1x28x28 Datums); returns the count."""
    from ..lmdb_io import LMDBWriter, array_to_datum

    images, labels = load_digits(split)
    with LMDBWriter(db_path) as db:
        for i, (image, label) in enumerate(zip(images, labels)):
            db.put(f"{i:08d}", array_to_datum(image, int(label)))
    return len(labels)
