"""im2col / col2im kernels and their launch helpers (``Convolution``, ``Deconvolution``, ``Im2col``).

Both kernels take a ``layout`` flag for the col array: 0 = batch-major (N, C, kh, kw, oh, ow),
Caffe's per-image order; 1 = channel-major (C, kh, kw, N, oh, ow), the convolution GEMM order.
"""
from __future__ import annotations

from ..im2col import Geometry
from . import define, i32, launch

IM2COL = define("dl_im2col", r"""
extern "C" __global__ void dl_im2col(
    const float* x, float* col, const int num, const int channels, const int height, const int width,
    const int kh, const int kw, const int ph, const int pw, const int sh, const int sw,
    const int dh, const int dw, const int oh, const int ow, const int layout) {
  const long long total = (long long)num * channels * kh * kw * oh * ow;
  CUDA_KERNEL_LOOP(index, total) {
    const int ox = index % ow;
    const int oy = (index / ow) % oh;
    long long rest = index / ((long long)ow * oh);
    int n, c, i, j;
    if (layout == 0) {
      j = rest % kw; rest /= kw; i = rest % kh; rest /= kh; c = rest % channels; n = rest / channels;
    } else {
      n = rest % num; rest /= num; j = rest % kw; rest /= kw; i = rest % kh; c = rest / kh;
    }
    const int y = oy * sh - ph + i * dh;
    const int xx = ox * sw - pw + j * dw;
    float value = 0.f;
    if (y >= 0 && y < height && xx >= 0 && xx < width) {
      value = x[(((long long)n * channels + c) * height + y) * width + xx];
    }
    col[index] = value;
  }
}
""")

COL2IM = define("dl_col2im", r"""
extern "C" __global__ void dl_col2im(
    const float* col, float* x, const int num, const int channels, const int height, const int width,
    const int kh, const int kw, const int ph, const int pw, const int sh, const int sw,
    const int dh, const int dw, const int oh, const int ow, const int layout) {
  // One thread per input pixel gathers every col entry read from it: no atomics needed.
  const long long total = (long long)num * channels * height * width;
  CUDA_KERNEL_LOOP(index, total) {
    const int xx = index % width;
    const int y = (index / width) % height;
    const int c = (index / ((long long)width * height)) % channels;
    const int n = index / ((long long)width * height * channels);
    float sum = 0.f;
    for (int i = 0; i < kh; ++i) {
      const int ty = y + ph - i * dh;
      if (ty < 0 || ty % sh != 0) continue;
      const int oy = ty / sh;
      if (oy >= oh) continue;
      for (int j = 0; j < kw; ++j) {
        const int tx = xx + pw - j * dw;
        if (tx < 0 || tx % sw != 0) continue;
        const int ox = tx / sw;
        if (ox >= ow) continue;
        long long row;
        if (layout == 0) {
          row = (((long long)n * channels + c) * kh + i) * kw + j;
        } else {
          row = (((long long)c * kh + i) * kw + j) * num + n;
        }
        sum += col[(row * oh + oy) * ow + ox];
      }
    }
    x[index] = sum;
  }
}
""")


def _geometry_args(g: Geometry, num: int, layout: int):
    oh, ow = g.out_shape
    return tuple(map(i32, (num, g.channels, g.height, g.width, *g.kernel, *g.pad, *g.stride, *g.dilation,
                           oh, ow, layout)))


def im2col_gpu(x, col, g: Geometry, channel_major: bool) -> None:
    """Fill ``col`` from ``x`` (n, C, H, W), layout (C, kh, kw, n, oh, ow) if
    ``channel_major`` else (n, C, kh, kw, oh, ow)."""
    num = x.shape[0]
    launch("dl_im2col", col.size, x, col, *_geometry_args(g, num, int(channel_major)))


def col2im_gpu(col, dx, g: Geometry, channel_major: bool) -> None:
    """Overwrite ``dx`` (n, C, H, W) with the transpose of im2col applied to ``col``."""
    num = dx.shape[0]
    launch("dl_col2im", dx.size, col, dx, *_geometry_args(g, num, int(channel_major)))
