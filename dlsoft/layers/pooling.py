"""Pooling (Caffe semantics: MAX and AVE windows with Caffe's ceil rule; STOCHASTIC).

On the GPU the MAX and AVE windows are CUDA kernels (``kernels/pooling.py``); STOCHASTIC
is array code on the blobs' module, one body for both devices.
"""
from __future__ import annotations

import math

import numpy as np

from .. import random as dl_random
from ..blob import check_allocation
from ..protos import caffe_pb2
from . import cpu_kernels
from .base import TRAIN, Layer
from .kernels import i32, launch
from .registry import register


def pooled_size(size: int, kernel: int, pad: int, stride: int, ceil_mode: bool = True) -> int:
    """Caffe's pooling output size: ``ceil((size + 2*pad - kernel) / stride) + 1`` (or floor),
    minus one when padding would make the last window start in the padding."""
    rounding = math.ceil if ceil_mode else math.floor
    out = int(rounding((size + 2 * pad - kernel) / stride)) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


MAX = caffe_pb2.PoolingParameter.MAX
STOCHASTIC = caffe_pb2.PoolingParameter.STOCHASTIC


@register
class PoolingLayer(Layer):
    """MAX and AVE pooling over 2-d windows (Caffe's PoolingLayer).

    Window ``(y*s - p) .. (y*s - p + k)`` clipped to the input. MAX takes the first
    maximum in window order (optional second top: its index ``h*W + w`` as float).
    AVE sums the window and divides by its size clipped to the *padded* input,
    ``(min(start + k, in + pad) - start)`` per axis, not by the valid pixel count.
    On the CPU a NaN in a window makes the MAX output NaN (as PyTorch; Caffe skips it),
    which the solver's non-finite guard then reports.

    STOCHASTIC (Zeiler & Fergus; Caffe's GPU code, for non-negative inputs such as ReLU
    outputs): windows start at ``y*s`` and are clipped to the input, ignoring ``pad`` as
    Caffe does. TRAIN draws ``u·Σ`` (u uniform in [0, 1), Σ the window's sum) and outputs
    the first element, in window order, at which the running sum reaches it, so each
    element is picked with probability ``x/Σ``; backward routes the gradient to the element
    picked. TEST outputs the probability-weighted average ``Σx²/Σx`` (0 for an all-zero
    window), whose gradient is ``(2·x·Σx - Σx²)/(Σx)²``.

    On the CPU, MAX with the argmax (TRAIN, or a mask top) runs compiled loops
    (:mod:`.cpu_kernels`, in parallel over planes); at TEST with no mask top, forward takes
    the separable numpy form, recording no argmax (backward, if ever asked for, records it
    first). AVE stays in numpy, which is as fast.
    """

    type = "Pooling"
    exact_num_bottoms = 1
    min_tops = 1
    max_tops = 2

    def setup(self, bottoms, tops):
        p = self.param.pooling_param
        self.method = p.pool
        if len(tops) > 1 and self.method != p.MAX:
            raise self.error("only MAX pooling has a second (mask) top")
        has_kernel = p.HasField("kernel_h") or p.HasField("kernel_w")
        self.global_pooling = p.global_pooling
        if self.global_pooling:
            if has_kernel or p.HasField("kernel_size"):
                raise self.error("global_pooling takes the kernel from the input: do not give kernel_size")
        elif has_kernel:
            if not (p.HasField("kernel_h") and p.HasField("kernel_w")):
                raise self.error("kernel_h and kernel_w must be given together")
            self.kernel = (p.kernel_h, p.kernel_w)
        elif p.HasField("kernel_size"):
            self.kernel = (p.kernel_size, p.kernel_size)
        else:
            raise self.error("kernel_size (or kernel_h and kernel_w, or global_pooling) is required")
        self.pad = (p.pad_h, p.pad_w) if p.HasField("pad_h") or p.HasField("pad_w") else (p.pad, p.pad)
        self.stride = (p.stride_h, p.stride_w) if p.HasField("stride_h") or p.HasField("stride_w") \
            else (p.stride, p.stride)
        if self.global_pooling and (self.pad != (0, 0) or self.stride != (1, 1)):
            raise self.error("global_pooling needs pad 0 and stride 1")
        if min(self.stride) <= 0:
            raise self.error(f"stride {self.stride} must be positive")
        if not self.global_pooling and min(self.kernel) <= 0:
            raise self.error(f"kernel {self.kernel} must be positive")
        if not self.global_pooling and (self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]):
            raise self.error(f"pad {self.pad} must be smaller than kernel {self.kernel}")
        self.ceil_mode = p.round_mode == p.CEIL
        # The ceil_mode forks' flag says the same thing with the opposite sense
        # (ceil_mode: false == round_mode: FLOOR); both given must agree.
        if p.HasField("ceil_mode"):
            if p.HasField("round_mode") and p.ceil_mode != self.ceil_mode:
                raise self.error(f"ceil_mode: {str(p.ceil_mode).lower()} contradicts round_mode: "
                                 f"{p.RoundMode.Name(p.round_mode)}; give one of them")
            self.ceil_mode = p.ceil_mode

    def reshape(self, bottoms, tops):
        if bottoms[0].num_axes != 4:
            raise self.error(f"bottom must be 4-d (N, C, H, W), got shape {bottoms[0].shape}")
        n, c, height, width = bottoms[0].shape
        if self.global_pooling:
            self.kernel = (height, width)
        self.out = tuple(pooled_size(size, k, p, s, self.ceil_mode) for size, k, p, s in
                         zip((height, width), self.kernel, self.pad, self.stride))
        if min(self.out) <= 0 or bottoms[0].count == 0:
            raise self.error(f"kernel {self.kernel} with pad {self.pad} does not fit the {height}x{width} input "
                             f"of shape {bottoms[0].shape} (output would be {self.out})")
        for top in tops:
            top.reshape(n, c, *self.out)
        self._shape = bottoms[0].shape
        xp = self.xp
        (kh, kw), (ph, pw), (sh, sw), (oh, ow) = self.kernel, self.pad, self.stride, self.out
        # Window sizes clipped to the padded input, per axis: AVE's divisor.
        counts = [np.minimum(np.arange(o) * s - p + k, size + p) - (np.arange(o) * s - p)
                  for o, s, p, k, size in zip(self.out, self.stride, self.pad, self.kernel, (height, width))]
        self._divisor = xp.asarray(np.outer(*counts).astype(np.float32))
        # Windows that all lie inside the input are read (and written back) in place.
        self._direct = (ph, pw) == (0, 0) and (oh - 1) * sh + kh <= height and (ow - 1) * sw + kw <= width
        self._disjoint = sh >= kh and sw >= kw
        self._covering = self._disjoint and (sh, sw) == (kh, kw) and (oh * sh, ow * sw) == (height, width)
        self._padded = self._mask = None  # one path's work buffers: see _cpu_buffers, _gpu_mask
        padded = self._padded_shape = (n, c, max((oh - 1) * sh + kh, height + ph), max((ow - 1) * sw + kw, width + pw))
        check_allocation(2 * math.prod(padded), self.device, f"layer '{self.name}': the padded work buffers "
                         f"{padded} its windows need (stride {self.stride}, kernel {self.kernel})")

    def _cpu_buffers(self) -> None:
        """The CPU path's work buffers, made on first use after a reshape."""
        if self._padded is not None:
            return
        n, c, height, width = self._shape
        (kh, kw), (ph, pw), (sh, sw), (oh, ow) = self.kernel, self.pad, self.stride, self.out
        self._scratch = np.zeros((n, c, oh, ow), np.float32)
        if self.method == MAX:  # the compiled kernels keep only the index h*W + w of each maximum
            self._mask_index = np.zeros((n, c, oh, ow), np.int32)
            self._padded = self._mask_index  # marks the buffers made (MAX needs no padded copy)
            self._mask_fresh = False
            self._max_padded = self._column_max = None  # TEST's work buffers, made on first use
            return
        # Padded work buffers cover every window, including those ceil rounding adds.
        self._padded = np.zeros(self._padded_shape, np.float32)
        self._padded_diff = np.zeros(self._padded_shape, np.float32)

    def _gpu_mask(self, tops):
        """Where the MAX kernels keep each window's argmax: the second top, else a buffer of ours."""
        if len(tops) > 1:
            return tops[1].data
        if self._mask is None:
            self._mask = self.xp.empty(tops[0].shape, np.float32)
        return self._mask

    def _window(self, array, i, j):
        (sh, sw), (oh, ow) = self.stride, self.out
        return array[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]

    def _offsets(self):
        kh, kw = self.kernel
        return ((i * kw + j, i, j) for i in range(kh) for j in range(kw))

    def _max_forward(self, bottoms, tops):
        """MAX: ``y`` = each window's maximum; at TRAIN (or with a mask top) also its index."""
        x, y, window = bottoms[0].data, tops[0].data, (*self.kernel, *self.stride, *self.pad)
        if self.phase == TRAIN or len(tops) > 1:
            cpu_kernels.max_pool_mask(x, y, self._mask_index, *window)
            self._mask_fresh = True
            if len(tops) > 1:
                tops[1].data[...] = self._mask_index
        else:
            self._max_columns_then_rows(x, y)
            self._mask_fresh = False

    def _max_columns_then_rows(self, x, y):
        """MAX without the argmax, in numpy: max is separable, so each window's maximum is the
        maximum over its rows of the maxima over its columns: kw-1 + kh-1 passes over whole
        planes (a -inf border where windows leave the input), where :func:`cpu_kernels.max_pool`
        loops along output rows only 7-28 long on GoogLeNet's planes: 2-7x faster there.
        The same numbers (max is exact; a NaN in a window gives NaN either way)."""
        (kh, kw), (ph, pw), (sh, sw), (oh, ow) = self.kernel, self.pad, self.stride, self.out
        if self._direct:
            source = x
        else:
            if self._max_padded is None:
                self._max_padded = np.full(self._padded_shape, -np.inf, np.float32)
            source = self._max_padded
            source[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]] = x
        if self._column_max is None:
            self._column_max = np.empty((*source.shape[:3], ow), np.float32)
        columns = self._column_max
        np.copyto(columns, source[..., 0:sw * (ow - 1) + 1:sw])
        for j in range(1, kw):
            np.maximum(columns, source[..., j:j + sw * (ow - 1) + 1:sw], out=columns)
        np.copyto(y, columns[:, :, 0:sh * (oh - 1) + 1:sh])
        for i in range(1, kh):
            np.maximum(y, columns[:, :, i:i + sh * (oh - 1) + 1:sh], out=y)

    def _max_backward(self, tops, bottoms):
        if not self._mask_fresh:  # a TEST forward skipped the index: find it again
            cpu_kernels.max_pool_mask(bottoms[0].data, self._scratch, self._mask_index,
                                      *self.kernel, *self.stride, *self.pad)
        cpu_kernels.max_pool_backward(tops[0].diff, self._mask_index, bottoms[0].diff)

    def forward_cpu(self, bottoms, tops):
        if self.method == STOCHASTIC:
            return self._stochastic_forward(bottoms, tops)
        self._cpu_buffers()
        if self.method == MAX:
            self._max_forward(bottoms, tops)
            return
        (ph, pw), (_, height, width) = self.pad, bottoms[0].shape[1:]
        if self._direct:  # every window lies inside the input: read it in place
            source = bottoms[0].data
        else:
            source = self._padded
            source[:, :, ph:ph + height, pw:pw + width] = bottoms[0].data
        top = tops[0].data  # AVE: the window sums, over the divisor
        top[...] = 0
        for _, i, j in self._offsets():
            top += self._window(source, i, j)
        top /= self._divisor

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        if self.method == STOCHASTIC:
            return self._stochastic_backward(tops, bottoms)
        self._cpu_buffers()
        if self.method == MAX:
            self._max_backward(tops, bottoms)
            return
        (ph, pw), (_, height, width) = self.pad, bottoms[0].shape[1:]
        dy = tops[0].diff
        if self._direct and self._disjoint:
            # Windows neither overlap nor leave the input: each offset writes its own pixels.
            dx = bottoms[0].diff
            if not self._covering:
                dx.fill(0)
            for _, i, j in self._offsets():
                np.divide(dy, self._divisor, out=self._window(dx, i, j))
            return
        diff = self._padded_diff
        diff[...] = 0
        np.divide(dy, self._divisor, out=self._scratch)
        for _, i, j in self._offsets():
            self._window(diff, i, j)[...] += self._scratch
        bottoms[0].diff[...] = diff[:, :, ph:ph + height, pw:pw + width]

    def _kernel_args(self, bottom):
        height, width = bottom.shape[2:]
        return tuple(map(i32, (height, width, *self.out, *self.kernel, *self.stride, *self.pad)))

    def forward_gpu(self, bottoms, tops):
        if self.method == STOCHASTIC:
            return self._stochastic_forward(bottoms, tops)
        top, args = tops[0].data, self._kernel_args(bottoms[0])
        if self.method == MAX:
            launch("dl_max_pool_forward", top.size, bottoms[0].data, top, self._gpu_mask(tops),
                   np.int64(top.size), *args)
        else:
            launch("dl_ave_pool_forward", top.size, bottoms[0].data, top, np.int64(top.size), *args)

    def backward_gpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        if self.method == STOCHASTIC:
            return self._stochastic_backward(tops, bottoms)
        dx, args = bottoms[0].diff, self._kernel_args(bottoms[0])
        if self.method == MAX:
            launch("dl_max_pool_backward", dx.size, tops[0].diff, self._gpu_mask(tops), dx, np.int64(dx.size), *args)
        else:
            launch("dl_ave_pool_backward", dx.size, tops[0].diff, dx, np.int64(dx.size), *args)

    # ---- STOCHASTIC: array code on self.xp, for both devices -------------------------------
    def _stochastic_windows(self, source):
        """(n, c, oh, ow, kh·kw) of the windows starting at ``y*s`` (no pad), zero past the edge."""
        n, c, height, width = source.shape
        (kh, kw), (sh, sw), (oh, ow) = self.kernel, self.stride, self.out
        buffer = self.xp.zeros((n, c, max((oh - 1) * sh + kh, height), max((ow - 1) * sw + kw, width)),
                               dtype=np.float32)
        buffer[:, :, :height, :width] = source
        return self.xp.stack([self._window(buffer, i, j) for _, i, j in self._offsets()], axis=-1)

    def _stochastic_forward(self, bottoms, tops):
        xp = self.xp
        windows = self._stochastic_windows(bottoms[0].data)
        total = windows.sum(axis=-1)
        if self.phase == "TRAIN":
            threshold = dl_random.xp_rng(xp).random(total.shape, dtype=np.float32) * total
            running = xp.cumsum(windows, axis=-1)
            # the first element whose running sum reaches the threshold (Caffe's ">=")
            picked = xp.minimum((running < threshold[..., None]).sum(axis=-1), windows.shape[-1] - 1)
            self._picked = picked
            tops[0].data[...] = xp.take_along_axis(windows, picked[..., None], axis=-1)[..., 0]
        else:
            squares = (windows * windows).sum(axis=-1)
            tops[0].data[...] = xp.where(total > 0, squares / xp.where(total > 0, total, 1), 0)

    def _stochastic_backward(self, tops, bottoms):
        xp, dy = self.xp, tops[0].diff
        n, c, height, width = bottoms[0].shape
        (kh, kw), (sh, sw), (oh, ow) = self.kernel, self.stride, self.out
        diff = xp.zeros((n, c, max((oh - 1) * sh + kh, height), max((ow - 1) * sw + kw, width)), dtype=np.float32)
        if self.phase == "TRAIN":
            for offset, i, j in self._offsets():
                self._window(diff, i, j)[...] += dy * (self._picked == offset)
        else:
            windows = self._stochastic_windows(bottoms[0].data)
            total = windows.sum(axis=-1)
            squares = (windows * windows).sum(axis=-1)
            safe = xp.where(total > 0, total, 1)
            for offset, i, j in self._offsets():
                grad = (2 * windows[..., offset] * total - squares) / (safe * safe)
                self._window(diff, i, j)[...] += xp.where(total > 0, dy * grad, 0)
        bottoms[0].diff[...] = diff[:, :, :height, :width]
