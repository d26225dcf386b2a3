"""The compiled CPU kernels' loops (numba), loaded by :mod:`.cpu_kernels` on first use.

Each kernel is the plain loop of Caffe's CPU code (``pooling_layer.cpp``, ``im2col.cpp``)
next to which the layer keeps its numpy form's docstring; numba compiles it once per
machine (``cache=True``: later processes load the compiled code) and runs it over
independent image planes in parallel (``prange``), so both cores work on the
memory-bound layers. Kernels never call BLAS and the layers never call BLAS while a
kernel runs, so numba's pool and BLAS's never compete for the cores.
:func:`dlsoft.set_num_threads` sizes numba's pool. Call them through :mod:`.cpu_kernels`
(its launch lock, its choice of threading layer).

Loops are ordered so the innermost runs along an output row with no branch (a select),
which LLVM vectorises: for MAX pooling the rows of a window are visited in order and
within a row the kernel column ``j`` outermost, so an output meets its window's pixels in
window order (``h`` then ``w``), as Caffe's loop does, and the first maximum wins.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

_OPTIONS = dict(cache=True, nogil=True, boundscheck=False)


@njit(inline="always", cache=True)
def _valid(count, stride, pad, offset, size):
    """The outputs ``[lo, hi)`` whose input coordinate ``o*stride - pad + offset`` is in ``[0, size)``."""
    lo = 0
    if pad > offset:
        lo = (pad - offset + stride - 1) // stride
    last = size - 1 + pad - offset
    hi = last // stride + 1 if last >= 0 else 0
    return lo, max(min(hi, count), lo)


@njit(parallel=True, **_OPTIONS)
def max_pool(x, y, kh, kw, sh, sw, ph, pw):
    """``y = max over each window`` of x (N, C, H, W); a NaN in a window gives NaN."""
    num, channels, height, width = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for plane in prange(num * channels):
        xp, yp = x[plane // channels, plane % channels], y[plane // channels, plane % channels]
        yp[:, :] = -np.inf
        for oy in range(oh):
            for h in range(max(oy * sh - ph, 0), min(oy * sh - ph + kh, height)):
                for j in range(kw):
                    lo, hi = _valid(ow, sw, pw, j, width)
                    for ox in range(lo, hi):
                        v = xp[h, ox * sw - pw + j]
                        cur = yp[oy, ox]
                        yp[oy, ox] = v if (v > cur) | (v != v) else cur


@njit(parallel=True, **_OPTIONS)
def max_pool_mask(x, y, mask, kh, kw, sh, sw, ph, pw):
    """:func:`max_pool` plus ``mask``: the flat index ``h*W + w`` of each window's first
    maximum (-1 for an empty window). One output at a time, its window in Caffe's order
    (``h`` then ``w``), the running maximum and its index kept in registers and updated by
    selects, not branches (random data would mispredict them): 1.4-1.6x faster than the
    row-vectorised loop of :func:`max_pool`, whose two stores per pixel need a branch here."""
    num, channels, height, width = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for plane in prange(num * channels):
        n, c = plane // channels, plane % channels
        xp, yp, mp = x[n, c], y[n, c], mask[n, c]
        for oy in range(oh):
            h0, h1 = max(oy * sh - ph, 0), min(oy * sh - ph + kh, height)
            for ox in range(ow):
                w0, w1 = max(ox * sw - pw, 0), min(ox * sw - pw + kw, width)
                best = -np.inf
                where = -1
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        v = xp[h, w]
                        take = (v > best) | ((v != v) & (best == best))  # a NaN wins once
                        best = v if take else best
                        where = h * width + w if take else where
                yp[oy, ox] = best
                mp[oy, ox] = where


@njit(parallel=True, **_OPTIONS)
def max_pool_backward(dy, mask, dx):
    """``dx = 0``, then each window's gradient goes to its maximum: ``dx[mask] += dy``."""
    num, channels, height, width = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    for plane in prange(num * channels):
        n, c = plane // channels, plane % channels
        dxp, dyp, mp = dx[n, c], dy[n, c], mask[n, c]
        dxp[:, :] = 0
        for oy in range(oh):
            for ox in range(ow):
                where = mp[oy, ox]
                if where >= 0:
                    dxp[where // width, where % width] += dyp[oy, ox]


@njit(parallel=True, **_OPTIONS)
def col2im(col, dx, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow):
    """The transpose of im2col (``im2col.py``): ``dx = 0``, then each entry of ``col``
    (C*kh*kw, N*oh*ow; row ``(c*kh + i)*kw + j``, column ``n*oh*ow + y*ow + x``) is added
    to the pixel ``dx[n, c, y*sh - ph + i*dh, x*sw - pw + j*dw]`` it was read from, if
    inside. One channel per thread, so no two threads write one pixel. (numpy needs
    kh*kw strided passes over a padded copy for this; im2col itself stays numpy's one
    strided copy, which compiled loops do not beat.)"""
    num, channels, height, width = dx.shape
    plane = oh * ow
    for c in prange(channels):
        for n in range(num):
            for h in range(height):
                for w in range(width):
                    dx[n, c, h, w] = 0
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                lo, hi = _valid(ow, sw, pw, j * dw, width)
                shift = j * dw - pw
                for n in range(num):
                    for oy in range(oh):
                        h = oy * sh - ph + i * dh
                        if h < 0 or h >= height:
                            continue
                        base = n * plane + oy * ow
                        for ox in range(lo, hi):
                            dx[n, c, h, ox * sw + shift] += col[row, base + ox]


@njit(parallel=True, **_OPTIONS)
def col2im_batch_minor(col, dx, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow):
    """:func:`col2im` for the CPU convolutions' col order (``im2col.im2col_batch_minor``):
    row ``(c*kh + i)*kw + j``, column ``(y*ow + x)*N + n``. Each channel is summed into
    an (H, W, N) buffer of its own, whose innermost loop runs along the N images (and for
    stride 1 the runs of consecutive x join into one of ``ow*N``), then written out to
    ``dx[:, c]``. One channel per thread, so no two threads write one pixel."""
    num, channels, height, width = dx.shape
    for c in prange(channels):
        acc = np.zeros((height, width, num), np.float32)
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                lo, hi = _valid(ow, sw, pw, j * dw, width)
                shift = j * dw - pw
                for oy in range(oh):
                    h = oy * sh - ph + i * dh
                    if h < 0 or h >= height:
                        continue
                    for ox in range(lo, hi):
                        w = ox * sw + shift
                        source = (oy * ow + ox) * num
                        for n in range(num):
                            acc[h, w, n] += col[row, source + n]
        for n in range(num):
            for h in range(height):
                for w in range(width):
                    dx[n, c, h, w] = acc[h, w, n]


@njit(parallel=True, **_OPTIONS)
def sgd_step(w, g, v, scale, decay, l1, lr, momentum):
    """One SGD iteration for one flat blob, in one pass and no buffer: the solver's steps
    ``g *= scale`` (1/iter_size), ``g += decay*w`` (L2) or ``decay*sign(w)`` (L1, ``l1``),
    ``v = momentum*v + lr*g``, ``g = v``, ``w -= g``: the same float32 operations in the same
    order as those steps run one after the other (so the same numbers), but w, g and v are
    read and written once instead of some seven times. ``decay`` 0 adds nothing."""
    for k in prange(w.size):
        d = g[k] * scale
        if decay != 0:
            if l1:
                d = d + decay * np.float32(np.sign(w[k]))
            else:
                d = d + w[k] * decay
        u = v[k] * momentum + d * lr
        v[k] = u
        g[k] = u
        w[k] = w[k] - u
