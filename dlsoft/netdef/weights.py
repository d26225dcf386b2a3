"""Weights in: the layers of a ``.caffemodel`` (binary, V1 too) or a Caffe HDF5 file, as
(layer name, arrays) pairs, and their copy into a layer's blobs, with one-line errors
naming the file. :meth:`Net.copy_from` matches them to the net's layers by name.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from ..errors import WeightsError
from . import io


def layers_of_file(path: str) -> list[tuple[str, list[np.ndarray]]]:
    """(layer name, blob arrays) of each layer of a weights file (``.h5``/``.hdf5``: Caffe's HDF5)."""
    return layers_of_hdf5(path) if path.endswith((".h5", ".hdf5")) else layers_of_binary(path)


def layers_of_binary(path: str) -> list[tuple[str, list[np.ndarray]]]:
    """(layer name, blob arrays) of each layer of a binary caffemodel."""
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise WeightsError("the weights file is empty", path=path)
    if io.file_format(path) != "binary":
        raise WeightsError("is not a binary .caffemodel (or .h5) weights file: weights files are "
                           "written by training (…_iter_N.caffemodel) or downloaded", path=path)
    with warnings.catch_warnings():
        # Only names and blobs are read here: a layer's fork-ambiguous settings do not matter.
        warnings.simplefilter("ignore", io.FileFormatWarning)
        source = io.read_net(path)
    if not any(layer.blobs for layer in source.layer):
        raise WeightsError(f"holds no weights ({len(source.layer)} layers, none with blobs): "
                           "is it a net definition rather than a .caffemodel?", path=path)
    return [(layer.name, [io.blob_proto_to_array(blob) for blob in layer.blobs]) for layer in source.layer]


def layers_of_hdf5(path: str) -> list[tuple[str, list[np.ndarray]]]:
    import h5py  # noqa: PLC0415 - only needed for HDF5 weights
    try:
        with h5py.File(path, "r") as f:
            if "data" not in f:
                raise WeightsError("is not a Caffe HDF5 weights file (no 'data' group)", path=path)
            group = f["data"]
            return [(name, [np.asarray(group[name][str(i)], dtype=np.float32) for i in range(len(group[name]))])
                    for name in group]
    except OSError as exc:
        raise WeightsError(f"cannot read it as HDF5 ({str(exc).splitlines()[0]})", path=path) from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # HDF5, but not Caffe's layout
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise WeightsError(f"not a readable Caffe HDF5 weights file ({reason}): expected a group "
                           "data/<layer name> holding datasets 0, 1, ...", path=path) from None


def assign_layer_blobs(path: str, layer, arrays: list[np.ndarray]) -> None:
    """Copy ``arrays`` into ``layer``'s blobs; Caffe's legacy 4-d shapes are accepted where they squeeze alike."""
    if len(arrays) != len(layer.blobs):
        raise WeightsError(f"layer '{layer.name}': the file has {len(arrays)} blobs, the net expects "
                           f"{len(layer.blobs)}", path=path)
    for i, (blob, array) in enumerate(zip(layer.blobs, arrays)):
        if tuple(array.shape) != blob.shape:
            if array.size == blob.count and legacy_shape_match(array.shape, blob.shape):
                array = array.reshape(blob.shape)
            else:
                raise WeightsError(f"layer '{layer.name}' blob {i}: shape {tuple(array.shape)} in the file, "
                                   f"{blob.shape} in the net", path=path)
        blob.data[...] = blob.xp.asarray(array)


def some(names: list[str], limit: int = 5) -> str:
    """``a, b, c`` or ``a, b, c, ... (12 in all)`` for error messages."""
    shown = ", ".join(names[:limit]) or "none"
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def legacy_shape_match(file_shape: tuple, net_shape: tuple) -> bool:
    """Caffe accepts old 4-d (num, channels, height, width) blobs for lower-rank shapes."""
    squeeze = lambda shape: tuple(d for d in shape if d != 1)  # noqa: E731
    return squeeze(tuple(file_shape)) == squeeze(tuple(net_shape))
