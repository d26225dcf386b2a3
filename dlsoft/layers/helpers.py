"""Small helpers shared by the layer families.

Shapes are read as Caffe reads them: an ``axis`` splits a blob into
``outer × dim × inner`` (``outer`` = product of the axes before it, ``inner`` = after).
Layers are written once against the blobs' array module (numpy or cupy) unless they
override ``forward_gpu``/``backward_gpu`` with kernels; work buffers are sized in
``reshape`` and the compute methods write through ``out=`` arguments.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import NetDefinitionError
from .base import Layer


def outer_dim_inner(shape: tuple[int, ...], axis: int, num_axes: int = 1) -> tuple[int, int, int]:
    """Split ``shape`` at ``[axis, axis + num_axes)`` into (outer, dim, inner) counts."""
    def prod(dims):
        return math.prod(dims)  # exact, where numpy's int64 product would wrap
    return prod(shape[:axis]), prod(shape[axis:axis + num_axes]), prod(shape[axis + num_axes:])


def wants_param_grad(layer: Layer, index: int) -> bool:
    """Whether the net asked for the gradient of ``layer.blobs[index]`` (Caffe's default: yes)."""
    flags = layer.param_propagate_down
    return index >= len(flags) or bool(flags[index])


def canonical_axis(layer: Layer, blob, axis: int) -> int:
    """``blob.canonical_axis`` with the error naming the layer."""
    try:
        return blob.canonical_axis(axis)
    except NetDefinitionError:
        raise layer.error(f"axis {axis} out of range for bottom of shape {blob.shape}") from None


def int_buffer(xp, size: int, old=None):
    """An int32 work array of ``size`` elements, reusing ``old`` when big enough."""
    if old is not None and old.size >= size:
        return old[:size]
    return xp.empty(size, dtype=np.int32)
