"""im2col / col2im: the geometry of 2-d convolution, on numpy/cupy arrays (the CUDA
kernels are in ``kernels/im2col.py``).

For an input ``x`` of shape (N, C, H, W), kernel (kh, kw), pad (ph, pw), stride (sh, sw)
and dilation (dh, dw) the output plane is (oh, ow) with
``o = (in + 2*pad - (dilation*(kernel-1)+1)) // stride + 1``, and

    col[n, c, i, j, y, x] = x_padded[n, c, y*sh + i*dh, x*sw + j*dw]

(zero outside the input). ``col2im`` is its transpose: every ``col`` entry is *added*
back to the input pixel it was read from. Caffe's layout (per image, rows ``c*kh*kw +
i*kw + j``, columns ``y*ow + x``) is ``col[n]`` reshaped; the convolution layers use
the transposed order (C, kh, kw, N, oh, ow) on the GPU and (C, kh, kw, oh, ow, N) on the
CPU (:func:`im2col_batch_minor`), so that one GEMM per group covers the batch.

The numpy versions take one strided view of a padded copy (no Python loop over pixels)
for im2col and loop over the kh*kw kernel offsets adding strided slices for col2im.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Kernel, pad, stride and dilation of a 2-d window operation, plus the plane sizes."""

    channels: int
    height: int
    width: int
    kernel: tuple[int, int]
    pad: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)

    @property
    def out_shape(self) -> tuple[int, int]:
        return tuple((size + 2 * p - (d * (k - 1) + 1)) // s + 1
                     for size, k, p, s, d in zip((self.height, self.width), self.kernel, self.pad,
                                                 self.stride, self.dilation))

    @property
    def padded_shape(self) -> tuple[int, int]:
        return self.height + 2 * self.pad[0], self.width + 2 * self.pad[1]

    def col_shape(self, num: int) -> tuple[int, ...]:
        """Shape of the batch-major col array: (N, C, kh, kw, oh, ow)."""
        return (num, self.channels, *self.kernel, *self.out_shape)


def padded_input(xp, x, geometry: Geometry, buffer=None):
    """``x`` (N, C, H, W) zero-padded by ``geometry.pad``; ``buffer`` (same padded shape,
    zero border) is reused when given. Without padding ``x`` itself is returned."""
    ph, pw = geometry.pad
    if ph == 0 and pw == 0:
        return x
    if buffer is None:
        buffer = xp.zeros(x.shape[:2] + geometry.padded_shape, dtype=x.dtype)
    buffer[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]] = x
    return buffer


def im2col_view(xp, padded, geometry: Geometry):
    """A read-only strided view (N, C, kh, kw, oh, ow) of a padded input: no copy."""
    sn, sc, sy, sx = padded.strides
    (dh, dw), (sh, sw) = geometry.dilation, geometry.stride
    shape = (padded.shape[0], padded.shape[1], *geometry.kernel, *geometry.out_shape)
    strides = (sn, sc, sy * dh, sx * dw, sy * sh, sx * sw)
    return xp.lib.stride_tricks.as_strided(padded, shape=shape, strides=strides)


def im2col_batch_minor(x, padded, col, geometry: Geometry) -> None:
    """The CPU convolutions' im2col: ``col`` (C, kh, kw, oh, ow, N), the image index
    innermost, from ``x`` (N, C, H, W) through ``padded`` (C, Hp, Wp, N; zero border).

    With the batch innermost, a stride-1 kernel offset's rows are runs of ``ow*N``
    contiguous floats on both sides (``(ow, N)`` of one padded row), so the copy runs at
    memory speed even for the 8x8 and 16x16 planes of small nets, where the batch-major
    order's runs are ``ow`` floats long: 2-5x faster on cifar10_quick's convolutions.
    """
    ph, pw = geometry.pad
    padded[:, ph:ph + geometry.height, pw:pw + geometry.width, :] = x.transpose(1, 2, 3, 0)
    sc, sy, sx, sn = padded.strides
    (dh, dw), (sh, sw) = geometry.dilation, geometry.stride
    shape = (padded.shape[0], *geometry.kernel, *geometry.out_shape, padded.shape[3])
    view = np.lib.stride_tricks.as_strided(padded, shape=shape, strides=(sc, sy * dh, sx * dw, sy * sh, sx * sw, sn))
    np.copyto(col.reshape(shape), view)


def col2im_add(col, padded_diff, geometry: Geometry) -> None:
    """Add ``col`` (N, C, kh, kw, oh, ow; any strides) into ``padded_diff`` (N, C, Hp, Wp)
    at the pixels im2col read them from. ``padded_diff`` must be zeroed by the caller."""
    (kh, kw), (dh, dw), (sh, sw) = geometry.kernel, geometry.dilation, geometry.stride
    oh, ow = geometry.out_shape
    for i in range(kh):
        for j in range(kw):
            y0, x0 = i * dh, j * dw
            padded_diff[:, :, y0:y0 + sh * (oh - 1) + 1:sh, x0:x0 + sw * (ow - 1) + 1:sw] += col[:, :, i, j]


def unpad(padded, geometry: Geometry):
    """The interior (N, C, H, W) view of a padded array."""
    ph, pw = geometry.pad
    return padded[:, :, ph:ph + geometry.height, pw:pw + geometry.width]
