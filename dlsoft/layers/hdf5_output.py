"""HDF5Output (Caffe's HDF5OutputLayer): write the two bottoms to an HDF5 file.

``hdf5_output_param.file_name`` is created (truncated) at setup; each forward appends the
batch of bottom 0 to dataset ``data`` and bottom 1 to ``label``, along axis 0, and
flushes, so the file holds every batch the net has seen. (Caffe writes the datasets on
each forward and fails on the second one; appending keeps its single-batch files
identical.) No tops, no backward: the layer observes.
"""
from __future__ import annotations

import os

import numpy as np

from ..backend import to_numpy
from ..errors import DataError, one_line
from .base import Layer
from .registry import register

NAMES = ("data", "label")


@register
class HDF5OutputLayer(Layer):
    """Appends its bottoms (data, label) to ``data`` and ``label`` datasets of an HDF5 file."""

    type = "HDF5Output"
    exact_num_bottoms = 2
    exact_num_tops = 0
    forward_only = True

    file = None

    def setup(self, bottoms, tops):
        import h5py  # noqa: PLC0415 - only nets with this layer need h5py
        path = self.param.hdf5_output_param.file_name
        if not path:
            raise self.error("hdf5_output_param.file_name is required")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise DataError(f"layer '{self.name}' (type HDF5Output): folder {folder} of file_name {path!r} "
                            "does not exist")
        try:
            self.file = h5py.File(path, "w")
        except OSError as exc:
            raise DataError(f"layer '{self.name}' (type HDF5Output): cannot create {path}: {one_line(exc)}") from None
        for name, bottom in zip(NAMES, bottoms):
            self.file.create_dataset(name, shape=(0, *bottom.shape[1:]), maxshape=(None, *bottom.shape[1:]),
                                     dtype=np.float32, chunks=True)

    def reshape(self, bottoms, tops):
        if bottoms[0].shape[0] != bottoms[1].shape[0]:
            raise self.error(f"data and label must have the same number of items, got shapes "
                             f"{bottoms[0].shape} and {bottoms[1].shape}")
        for name, bottom in zip(NAMES, bottoms):
            if self.file[name].shape[1:] != bottom.shape[1:]:
                raise self.error(f"bottom '{name}' changed shape to {bottom.shape}; the file holds "
                                 f"{self.file[name].shape[1:]} items")

    def forward_cpu(self, bottoms, tops):
        for name, bottom in zip(NAMES, bottoms):
            dataset = self.file[name]
            start = dataset.shape[0]
            dataset.resize(start + bottom.shape[0], axis=0)
            dataset[start:] = to_numpy(bottom.data)
        self.file.flush()

    def backward_cpu(self, tops, propagate_down, bottoms):
        """Nothing flows back through an output layer (Caffe's does nothing)."""

    def allow_backward_to(self, bottom_index: int) -> bool:
        return False

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None
