"""Convolution, Deconvolution and Im2col (Caffe semantics).

Convolution is im2col + one batched GEMM per group over a chunk of images: on the GPU
the col array is laid out (C, kh, kw, n, oh, ow) = (group, K, n*P), so

    top[n, g*M + m, p] = sum_k W[g, m, k] * col[g, k, n*P + p] + b[g*M + m]

and on the CPU (C, kh, kw, oh, ow, n), column ``p*n_chunk + n`` (the image innermost:
long contiguous runs for numpy's im2col copy, see ``im2col.im2col_batch_minor``); the
GEMMs are the same, only the gather/scatter between images and columns differs.

with ``M = num_output/group`` and ``K = C/group*kh*kw``. Deconvolution swaps the roles
of bottom and top (its forward is Convolution's data backward). On the GPU the im2col/
col2im steps are CUDA kernels (``kernels/im2col.py``) and the GEMMs cuBLAS.
"""
from __future__ import annotations

import numpy as np

from .. import threads
from ..blob import check_allocation
from . import cpu_kernels, workspace
from .base import Layer
from .helpers import canonical_axis
from .fillers import fill
from .im2col import Geometry, col2im_add, im2col_batch_minor, im2col_view, padded_input, unpad
from .kernels.im2col import col2im_gpu, im2col_gpu
from .registry import register

#: Most col elements one GEMM chunk may hold (4 MiB of float32); larger batches are split. Chunks
#: that stay in cache run OpenBLAS's small-M GEMMs faster than one large GEMM (cifar10_quick:
#: 331 -> 277 ms per iteration against 1 << 24) and cost less memory.
MAX_COL_ELEMENTS = 1 << 20


def _per_axis(layer: Layer, name: str, values, h: int, w: int, has_hw: bool, default: int) -> tuple[int, int]:
    """Caffe's rule for kernel/pad/stride/dilation: ``name_h``+``name_w``, or 0, 1 or 2 repeated values."""
    if has_hw:
        if len(values):
            raise layer.error(f"give either {name} or {name}_h/{name}_w, not both")
        return h, w
    values = list(values)
    if len(values) == 0:
        return default, default
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise layer.error(f"{name} has {len(values)} values; only 2-d spatial convolution is supported")


def conv_window(layer: Layer, p) -> tuple[tuple[int, int], ...]:
    """(kernel, pad, stride, dilation) of a ConvolutionParameter, each as (h, w)."""
    has_kernel = p.HasField("kernel_h") or p.HasField("kernel_w")
    if has_kernel and not (p.HasField("kernel_h") and p.HasField("kernel_w")):
        raise layer.error("kernel_h and kernel_w must be given together")
    if not has_kernel and not len(p.kernel_size):
        raise layer.error("kernel_size (or kernel_h and kernel_w) is required")
    kernel = _per_axis(layer, "kernel_size", p.kernel_size, p.kernel_h, p.kernel_w, has_kernel, 0)
    pad = _per_axis(layer, "pad", p.pad, p.pad_h, p.pad_w, p.HasField("pad_h") or p.HasField("pad_w"), 0)
    stride = _per_axis(layer, "stride", p.stride, p.stride_h, p.stride_w,
                       p.HasField("stride_h") or p.HasField("stride_w"), 1)
    dilation = _per_axis(layer, "dilation", p.dilation, 0, 0, False, 1)
    if min(kernel) <= 0 or min(stride) <= 0 or min(dilation) <= 0 or min(pad) < 0:
        raise layer.error(f"kernel {kernel}, stride {stride} and dilation {dilation} must be positive, "
                          f"pad {pad} non-negative")
    return kernel, pad, stride, dilation


def _image_4d(layer: Layer, blob, axis: int):
    """(outer, C, H, W): the blob seen as images, all axes before ``axis`` flattened."""
    if blob.num_axes != axis + 3:
        raise layer.error(f"bottom must have 2 spatial axes after channel axis {axis}, got shape {blob.shape} "
                          "(N-d convolution is not supported)")
    return (blob.count_from(0, axis), *blob.shape[axis:])


class _ConvolutionBase(Layer):
    """Shared machinery of Convolution and Deconvolution (Caffe's BaseConvolutionLayer).

    The *image* side is the one im2col reads (Convolution's bottom, Deconvolution's top);
    the *column* side has ``num_output`` (Convolution) or input (Deconvolution) channels.
    """

    min_bottoms = 1
    min_tops = 1
    equal_num_bottom_top = True
    transposed = False

    def setup(self, bottoms, tops):
        p = self.param.convolution_param
        self.kernel, self.pad, self.stride, self.dilation = conv_window(self, p)
        self.axis = canonical_axis(self, bottoms[0], p.axis)
        _image_4d(self, bottoms[0], self.axis)
        if bottoms[0].count == 0:
            raise self.error(f"bottom of shape {bottoms[0].shape} is empty (a zero batch or zero channels)")
        self.group = p.group
        if self.group <= 0:
            raise self.error(f"group must be positive, got {self.group}")
        self.num_output = p.num_output
        channels = bottoms[0].shape[self.axis]
        if self.num_output <= 0:
            raise self.error("num_output must be positive")
        if channels % self.group or self.num_output % self.group:
            raise self.error(f"group {self.group} must divide the input channels ({channels}) "
                             f"and num_output ({self.num_output})")
        self.channels = channels
        first, second = (channels, self.num_output) if self.transposed else (self.num_output, channels)
        if not self.blobs:
            self.blobs = [self.make_blob((first, second // self.group, *self.kernel), "weight")]
            fill(self.blobs[0], p.weight_filler)
            if p.bias_term:
                self.blobs.append(self.make_blob((self.num_output,), "bias"))
                fill(self.blobs[1], p.bias_filler)
        self.param_propagate_down = [True] * len(self.blobs)

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        for b in bottoms[1:]:
            if b.shape != shape:
                raise self.error(f"all bottoms must have one shape: {b.shape} != {shape}")
        outer, channels, height, width = _image_4d(self, bottoms[0], self.axis)
        if bottoms[0].count == 0:
            raise self.error(f"bottom of shape {shape} is empty (a zero batch): nothing to convolve")
        if channels != self.channels:
            raise self.error(f"bottom has {channels} channels, the weights expect {self.channels}")
        if self.transposed:
            out_h, out_w = (s * (i - 1) + d * (k - 1) + 1 - 2 * p for i, k, p, s, d in
                            zip((height, width), self.kernel, self.pad, self.stride, self.dilation))
            self.geometry = Geometry(self.num_output, out_h, out_w, self.kernel, self.pad, self.stride,
                                     self.dilation)
            column_plane = (height, width)
            top_shape = shape[:self.axis] + (self.num_output, out_h, out_w)
        else:
            self.geometry = Geometry(channels, height, width, self.kernel, self.pad, self.stride, self.dilation)
            column_plane = self.geometry.out_shape
            top_shape = shape[:self.axis] + (self.num_output, *column_plane)
        if min(top_shape[self.axis + 1:]) <= 0:
            raise self.error(f"input {shape} is too small for kernel {self.kernel}, pad {self.pad}, "
                             f"dilation {self.dilation}: output would be {top_shape}")
        for top in tops:
            top.reshape(top_shape)
        self.outer = outer
        self.plane = column_plane[0] * column_plane[1]
        self.col_rows = self.geometry.channels * self.kernel[0] * self.kernel[1]
        largest = max(1, min(outer, MAX_COL_ELEMENTS // max(self.col_rows * self.plane, 1)))
        self.chunk = -(-outer // -(-outer // largest))  # equal chunks: 16 images as 8 + 8, not 9 + 7
        self._allocate_buffers()

    def _allocate_buffers(self):
        xp, g, n = self.xp, self.geometry, self.chunk
        column_channels = self.channels if self.transposed else self.num_output
        check_allocation(self.col_rows * n * self.plane, self.device, f"layer '{self.name}': its im2col buffer")
        check_allocation(n * g.channels * g.padded_shape[0] * g.padded_shape[1], self.device,
                         f"layer '{self.name}': its padded input buffer")
        # The col and column-side buffers are the net's shared workspace (all convolutions
        # run one after another); a chunk of any size views a contiguous prefix, which BLAS needs.
        self._column_channels = column_channels
        # dW transposed, (group, K, M): OpenBLAS runs col @ dy^T 1.5x faster than dy @ col^T for
        # small M; one per worker thread (see _each_chunk)
        self._weight_grad_t = {}
        self._partial_buffers = {}  # worker slot -> its parameter-gradient partials (see _param_diffs)
        self._padded = {}  # CPU-only: see _cpu_padding
        self._batch_minor = False  # the col order of the device running now (set by forward/backward)
        self._col_source = None  # which (bottom data, chunk start) self._col holds, to skip a redo

    # ---- the steps, each for one chunk of n images ----------------------------------------------
    def _col(self, n: int):
        """The col work buffer for n images: (group, K, n*P), contiguous."""
        col = workspace.buffer(self.device, "col", self.col_rows * n * self.plane, owner=self)
        return col.reshape(self.group, -1, n * self.plane)

    def _columns(self, n: int):
        """The column-side work buffer for n images: (group, M, n*P), contiguous."""
        columns = workspace.buffer(self.device, "columns", self._column_channels * n * self.plane, owner=self)
        return columns.reshape(self.group, -1, n * self.plane)

    def _col_still_holds(self, index: int, bottom) -> bool:
        """Whether the shared col buffer still holds what forward put there for this bottom
        (no other layer took it since: true for the last convolution of the net)."""
        return self._col_source is not None and self._col_source[0] == index \
            and self._col_source[1] is bottom.data and workspace.owner(self.device, "col") is self

    def _weights(self):
        return self.blobs[0].data.reshape(self.group, -1, self.col_rows // self.group)

    def _cpu_padding(self, n: int, slot: int):
        """The CPU im2col's zero-bordered copy (C, Hp, Wp, n) of a chunk of n images for worker
        ``slot``, made on first use after a reshape (two sizes at most: the chunk and the last)."""
        if (n, slot) not in self._padded:
            self._padded[n, slot] = np.zeros((self.geometry.channels, *self.geometry.padded_shape, n), np.float32)
        return self._padded[n, slot]

    def _each_chunk(self, work) -> None:
        """``work(part, slot)`` for every chunk of images: on the CPU split across threads
        (:func:`dlsoft.threads.split_work`; the col/columns workspace is per thread, the
        padded copies and weight-gradient partials per slot), on the GPU in order."""
        if self._batch_minor:
            threads.split_work(work, self._chunks())
            return
        for part in self._chunks():  # GPU: one stream, in order
            work(part, 0)

    # The im2col/col2im steps: the one place where the two devices differ. The CPU methods
    # pass the numpy steps, the GPU methods the kernels, to the same algorithm.
    def _im2col_cpu(self, images, slot: int = 0):
        """col (group, K, P*n), the image index innermost, from images (n, C, H, W)."""
        n = images.shape[0]
        col = self._col(n)
        im2col_batch_minor(images, self._cpu_padding(n, slot), col, self.geometry)
        return col

    def _col2im_cpu(self, col, images_diff):
        """Overwrite images_diff (n, C, H, W) with the transpose of im2col applied to col."""
        n, g = images_diff.shape[0], self.geometry
        # Compiled: one pass per channel, where numpy needs kh*kw strided passes over a
        # padded copy (im2col.col2im_add, the numpy form). One image: both orders agree,
        # and col2im's runs along x beat col2im_batch_minor's runs of one image.
        kernel = cpu_kernels.col2im if n == 1 else cpu_kernels.col2im_batch_minor
        kernel(col.reshape(self.col_rows, n * self.plane), images_diff,
               *g.kernel, *g.stride, *g.pad, *g.dilation, *g.out_shape)

    def _im2col_gpu(self, images, slot: int = 0):
        col = self._col(images.shape[0])
        im2col_gpu(images, col, self.geometry, channel_major=True)
        return col

    def _col2im_gpu(self, col, images_diff):
        col2im_gpu(col, images_diff, self.geometry, channel_major=True)

    def forward_cpu(self, bottoms, tops):
        self._batch_minor = True
        self._forward(bottoms, tops, self._im2col_cpu, self._col2im_cpu)

    def backward_cpu(self, tops, propagate_down, bottoms):
        self._batch_minor = True
        self._backward(tops, propagate_down, bottoms, self._im2col_cpu, self._col2im_cpu)

    def forward_gpu(self, bottoms, tops):
        self._batch_minor = False
        self._forward(bottoms, tops, self._im2col_gpu, self._col2im_gpu)

    def backward_gpu(self, tops, propagate_down, bottoms):
        self._batch_minor = False
        self._backward(tops, propagate_down, bottoms, self._im2col_gpu, self._col2im_gpu)

    def _columns_view(self, gathered, n: int):
        """(group, M, columns) seen as (n, group*M, P), whichever the device's col order."""
        if self._batch_minor:  # columns p*n + image
            return gathered.reshape(-1, self.plane, n).transpose(2, 0, 1)
        return gathered.reshape(-1, n, self.plane).transpose(1, 0, 2)

    def _gather(self, columns_side):
        """(n, group*M, P) -> (group, M, n*P) in the col order, a copy into a work buffer."""
        n = columns_side.shape[0]
        out = self._columns(n)
        self._columns_view(out, n)[...] = columns_side
        return out

    def _scatter(self, gathered, columns_side, add_bias: bool):
        """(group, M, n*P) in the col order -> columns_side (n, group*M, P), plus the bias if asked."""
        n = columns_side.shape[0]
        source = self._columns_view(gathered, n)
        if add_bias and len(self.blobs) > 1:
            self.xp.add(source, self.blobs[1].data[:, None], out=columns_side)
        else:
            columns_side[...] = source

    def _chunks(self):
        for start in range(0, self.outer, self.chunk):
            yield slice(start, min(start + self.chunk, self.outer))

    def _as_images(self, array):
        return array.reshape(self.outer, -1, *array.shape[-2:])

    def _param_diffs(self, partials: dict, slot: int):
        """Where worker ``slot`` adds its chunks' parameter gradients in this backward:
        ``partials[0]``, the blobs' diffs (taken before the split: a blob allocates its diff
        on first access, which two threads must not race to), for the others partials of
        their own, zeroed on the slot's first chunk (kept across iterations) and added by
        :meth:`_add_partials` in slot order, so the sums do not depend on thread timing."""
        diffs = partials.get(slot)
        if diffs is None:
            diffs = self._partial_buffers.get(slot)
            if diffs is None:
                diffs = self._partial_buffers[slot] = [self.xp.empty_like(d) for d in partials[0]]
            for part in diffs:
                part.fill(0)
            partials[slot] = diffs
        return diffs

    def _add_partials(self, partials: dict) -> None:
        partials.pop(0, None)  # slot 0 wrote the diffs themselves
        for slot in sorted(partials):
            for blob, part in zip(self.blobs, partials[slot]):
                blob.diff += part

    def _accumulate_weight_grad(self, columns, col, weight_diff, slot: int = 0):
        """``dW[g] += columns[g] @ col[g]^T``, computed as its transpose ``col[g] @ columns[g]^T``."""
        grad_t = self._weight_grad_t.get(slot)
        if grad_t is None:
            grad_t = self._weight_grad_t[slot] = self.xp.empty(
                (self.group, self.col_rows // self.group, self.blobs[0].shape[0] // self.group), np.float32)
        self.xp.matmul(col, columns.transpose(0, 2, 1), out=grad_t)
        weight_diff.reshape(self.group, self.blobs[0].shape[0] // self.group, -1)[...] += grad_t.transpose(0, 2, 1)


@register
class ConvolutionLayer(_ConvolutionBase):
    """2-d convolution (Caffe's ConvolutionLayer), with groups, dilation, per-axis kernel/pad/stride.

    ``y[n, o, y, x] = b[o] + sum_{c in group(o), i, j} W[o, c, i, j] * x_pad[n, c, y*sh + i*dh, x*sw + j*dw]``;
    weight (num_output, C/group, kh, kw), bias (num_output,).
    """

    type = "Convolution"

    def _pointwise_view(self, images):
        """A 1x1 kernel (stride 1, no pad) on one image needs no im2col: col is the image."""
        g = self.geometry
        if images.shape[0] == 1 and g.kernel == (1, 1) and g.stride == (1, 1) and g.pad == (0, 0):
            return images.reshape(self.group, -1, self.plane)
        return None

    def _forward(self, bottoms, tops, im2col, col2im):
        weights = self._weights()
        for index, (bottom, top) in enumerate(zip(bottoms, tops)):
            images, outputs = self._as_images(bottom.data), top.data.reshape(self.outer, self.num_output, -1)

            def chunk(part, slot):
                col = self._pointwise_view(images[part])
                if col is None:
                    col = im2col(images[part], slot)
                n = col.shape[2] // self.plane
                if n == 1:  # one image: the GEMM writes the top directly
                    out = outputs[part].reshape(self.group, -1, self.plane)
                    self.xp.matmul(weights, col, out=out)
                    if len(self.blobs) > 1:
                        out += self.blobs[1].data.reshape(self.group, -1, 1)
                    return
                columns = self._columns(n)
                self.xp.matmul(weights, col, out=columns)
                self._scatter(columns, outputs[part], add_bias=True)

            self._each_chunk(chunk)
            self._col_source = (index, bottom.data) if self.chunk >= self.outer else None

    def _backward(self, tops, propagate_down, bottoms, im2col, col2im):
        weights = self._weights()
        for index, (bottom, top, down) in enumerate(zip(bottoms, tops, propagate_down)):
            top_diff = top.diff.reshape(self.outer, self.num_output, -1)
            images = self._as_images(bottom.data)
            cached = self._col_still_holds(index, bottom)  # one chunk only, so one thread
            # every blob array the chunks touch is taken here, in one thread (see _param_diffs)
            partials = {0: [blob.diff for blob in self.blobs]}
            bottom_diff = self._as_images(bottom.diff) if down else None

            def chunk(part, slot):
                n = part.stop - part.start
                diffs = self._param_diffs(partials, slot)
                dy = top_diff[part].reshape(self.group, -1, self.plane) if n == 1 else self._gather(top_diff[part])
                if len(self.blobs) > 1 and self.param_propagate_down[1]:
                    diffs[1][...] += dy.reshape(self.num_output, -1).sum(axis=1)
                pointwise = self._pointwise_view(images[part])
                if self.param_propagate_down[0]:
                    col = pointwise if pointwise is not None else \
                        self._col(n) if cached else im2col(images[part], slot)
                    self._accumulate_weight_grad(dy, col, diffs[0], slot)
                if down:
                    if pointwise is not None:  # col2im of a 1x1 kernel is the identity
                        self.xp.matmul(weights.transpose(0, 2, 1), dy,
                                       out=bottom_diff[part].reshape(self.group, -1, self.plane))
                        return
                    col = self._col(n)
                    self.xp.matmul(weights.transpose(0, 2, 1), dy, out=col)
                    col2im(col, bottom_diff[part])

            self._each_chunk(chunk)
            self._add_partials(partials)
            if any(propagate_down):
                self._col_source = None


@register
class DeconvolutionLayer(_ConvolutionBase):
    """Transposed convolution (Caffe's DeconvolutionLayer): the data gradient of Convolution.

    Weight (C, num_output/group, kh, kw); output size ``stride*(in-1) + dilation*(k-1)+1 - 2*pad``.
    ``y = col2im(W^T x) + b`` per group.
    """

    type = "Deconvolution"
    transposed = True

    def _forward(self, bottoms, tops, im2col, col2im):
        weights = self._weights()
        for bottom, top in zip(bottoms, tops):
            inputs = bottom.data.reshape(self.outer, self.channels, -1)
            outputs = self._as_images(top.data)

            def chunk(part, slot):
                x = self._gather(inputs[part])
                col = self._col(x.shape[2] // self.plane)
                self.xp.matmul(weights.transpose(0, 2, 1), x, out=col)
                col2im(col, outputs[part])

            self._each_chunk(chunk)
            if len(self.blobs) > 1:
                top.data.reshape(self.outer, self.num_output, -1)[...] += self.blobs[1].data[:, None]

    def _backward(self, tops, propagate_down, bottoms, im2col, col2im):
        weights = self._weights()
        for bottom, top, down in zip(bottoms, tops, propagate_down):
            if len(self.blobs) > 1 and self.param_propagate_down[1]:
                self.blobs[1].diff[...] += top.diff.reshape(self.outer, self.num_output, -1).sum(axis=(0, 2))
            inputs = bottom.data.reshape(self.outer, self.channels, -1)
            top_diff = self._as_images(top.diff)
            partials = {0: [blob.diff for blob in self.blobs]}  # taken in one thread (see _param_diffs)
            bottom_diff = bottom.diff.reshape(self.outer, self.channels, -1) if down else None

            def chunk(part, slot):
                col = im2col(top_diff[part], slot)
                if self.param_propagate_down[0]:
                    diffs = self._param_diffs(partials, slot)
                    self._accumulate_weight_grad(self._gather(inputs[part]), col, diffs[0], slot)
                if down:
                    dx = self._columns(col.shape[2] // self.plane)
                    self.xp.matmul(weights, col, out=dx)
                    self._scatter(dx, bottom_diff[part], add_bias=False)

            self._each_chunk(chunk)
            self._add_partials(partials)  # the bias diff above: partials of slots > 0 hold zeros for it



@register
class Im2colLayer(Layer):
    """Caffe's Im2colLayer: top (N, C*kh*kw, oh, ow), row ``c*kh*kw + i*kw + j`` (convolution_param)."""

    type = "Im2col"
    exact_num_bottoms = 1
    exact_num_tops = 1

    def setup(self, bottoms, tops):
        p = self.param.convolution_param
        self.kernel, self.pad, self.stride, self.dilation = conv_window(self, p)
        self.axis = canonical_axis(self, bottoms[0], p.axis)

    def reshape(self, bottoms, tops):
        outer, channels, height, width = _image_4d(self, bottoms[0], self.axis)
        if bottoms[0].count == 0:
            raise self.error(f"bottom of shape {bottoms[0].shape} is empty")
        self.geometry = g = Geometry(channels, height, width, self.kernel, self.pad, self.stride, self.dilation)
        if min(g.out_shape) <= 0:
            raise self.error(f"input {bottoms[0].shape} is too small for kernel {self.kernel}")
        tops[0].reshape(bottoms[0].shape[:self.axis] + (channels * self.kernel[0] * self.kernel[1], *g.out_shape))
        self.outer = outer

    def forward_cpu(self, bottoms, tops):
        g = self.geometry
        images = bottoms[0].data.reshape(self.outer, g.channels, g.height, g.width)
        view = im2col_view(self.xp, padded_input(self.xp, images, g), g)
        tops[0].data.reshape(g.col_shape(self.outer))[...] = view

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        g = self.geometry
        padded = self.xp.zeros((self.outer, g.channels, *g.padded_shape), np.float32)
        col2im_add(tops[0].diff.reshape(g.col_shape(self.outer)), padded, g)
        bottoms[0].diff.reshape(self.outer, g.channels, g.height, g.width)[...] = unpad(padded, g)

    def forward_gpu(self, bottoms, tops):
        g = self.geometry
        im2col_gpu(bottoms[0].data.reshape(self.outer, g.channels, g.height, g.width), tops[0].data, g,
                   channel_major=False)

    def backward_gpu(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            g = self.geometry
            col2im_gpu(tops[0].diff, bottoms[0].diff.reshape(self.outer, g.channels, g.height, g.width), g,
                       channel_major=False)
