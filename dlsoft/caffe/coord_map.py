"""pycaffe's ``caffe.coord_map``: how the spatial coordinates of NetSpec tops relate.

A layer maps input coordinates to output coordinates by ``out = a * in + b`` on the
axes from ``axis`` on (Convolution/Pooling/Im2col: ``a = 1/stride``,
``b = (pad - (k_eff - 1)/2) / stride``; Deconvolution the inverse; pointwise layers the
identity; Crop a shift by its offset). :func:`coord_map_from_to` composes those maps
back to a common ancestor of two tops, and :func:`crop` turns the result into the Crop
layer that aligns one top with another (as FCN's ``crop(n.upscore, n.data)``).
"""
from __future__ import annotations

import numpy as np

from .net_spec import layers as L

PASS_THROUGH_LAYERS = {"AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log", "LRN", "Exp",
                       "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split", "TanH", "Threshold"}
IDENTITY = (None, 1, 0)


class UndefinedMapException(Exception):
    """The layer has no coordinate mapping (InnerProduct, say)."""


class AxisMismatchException(Exception):
    """Two maps act on different axes and cannot be composed."""


def conv_params(fn):
    """(axis, stride, effective kernel extent, pad) of a Convolution/Deconvolution/Im2col/Pooling Function."""
    params = fn.params.get("convolution_param", fn.params)
    legacy = {"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"} & set(params)
    if legacy:
        raise ValueError(f"coordinate maps do not support the legacy _h/_w parameters ({', '.join(sorted(legacy))})")
    kernel = np.array(params["kernel_size"], ndmin=1)
    dilation = np.array(params.get("dilation", 1), ndmin=1)
    return (params.get("axis", 1), np.array(params.get("stride", 1), ndmin=1), (kernel - 1) * dilation + 1,
            np.array(params.get("pad", 0), ndmin=1))


def crop_params(fn):
    """(axis, offset) of a Crop Function, with Caffe's defaults (axis 2, offset 0)."""
    params = fn.params.get("crop_param", fn.params)
    return params.get("axis", 2), np.array(params.get("offset", 0), ndmin=1)


def coord_map(fn):
    """(axis, scale a, shift b) of one layer: output coordinate = a * input coordinate + b."""
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, extent, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (extent - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, extent, pad = conv_params(fn)
        return axis, stride, (extent - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return IDENTITY
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset  # axis - 1: the last axis the map leaves alone
    raise UndefinedMapException(fn.type_name)


def compose(base_map, next_map):
    """``next_map`` applied after ``base_map``: scales multiply, the shift is scaled by the base."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is not None and ax2 is not None and ax1 != ax2:
        raise AxisMismatchException(f"axis {ax1} then axis {ax2}")
    return (ax2 if ax1 is None else ax1), a1 * a2, a1 * b2 + b1


def inverse(coord_map_):
    """The map back from output to input coordinates."""
    ax, a, b = coord_map_
    return ax, 1 / a, -b / a


def _mappable_bottoms(top):
    # A Crop's second bottom only gives the size: the walk follows the cropped one.
    return top.fn.inputs[:1] if top.fn.type_name == "Crop" else top.fn.inputs


def _ancestors(top):
    """{ancestor top: map from that ancestor's coordinates to ``top``'s} (``top`` itself included)."""
    maps, frontier = {top: IDENTITY}, [top]
    while frontier:
        current = frontier.pop()
        try:
            step = coord_map(current.fn)
        except UndefinedMapException:
            continue
        for bottom in _mappable_bottoms(current):
            maps[bottom] = compose(maps[current], step)
            frontier.append(bottom)
    return maps


def coord_map_from_to(top_from, top_to):
    """The map from ``top_from``'s coordinates to ``top_to``'s, through a common ancestor."""
    from_maps = _ancestors(top_from)
    to_maps, frontier = {top_to: IDENTITY}, [top_to]
    while frontier:
        current = frontier.pop(0)
        if current in from_maps:
            return compose(to_maps[current], inverse(from_maps[current]))
        try:
            step = coord_map(current.fn)
        except UndefinedMapException:
            continue
        for bottom in _mappable_bottoms(current):
            to_maps[bottom] = compose(to_maps[current], step)
            frontier.append(bottom)
    raise RuntimeError("could not compute a map between the tops: are they connected by spatial layers?")


def crop(top_from, top_to):
    """A Crop layer cutting ``top_from`` to ``top_to``'s size, aligned by their coordinate map."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    a, b = np.asarray(a), np.asarray(b)
    if not (a == 1).all():
        raise ValueError(f"cannot crop: the tops' scales differ (a = {a})")
    if not (b <= 0).all():
        raise ValueError(f"cannot crop a negative offset (b = {b})")
    if not (np.round(b) == b).all():
        raise ValueError(f"cannot crop a fractional offset (b = {b})")
    return L.Crop(top_from, top_to, crop_param=dict(axis=ax + 1, offset=[int(v) for v in -np.round(b)]))
