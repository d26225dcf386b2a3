"""CUDA kernels of the vision layers: pooling and LRN sources, and launch helpers.

Kernels are CUDA C source strings compiled lazily by ``cupy.RawKernel`` on first use and
cached. Every kernel is a grid-stride loop over one output element per thread, written
as the direct definition of the CPU code in ``vision.py`` (Caffe's pooling_layer.cu and
lrn_layer.cu ideas). Arrays must be C-contiguous float32; sizes are passed as int32.
"""
from __future__ import annotations

import numpy as np

from . import cuda
from .im2col import COL2IM_SOURCE, IM2COL_SOURCE, Geometry

MAX_POOL_FORWARD_SOURCE = r"""
extern "C" __global__ void dl_max_pool_forward(
    const float* x, float* y, float* mask, const long long total, const int height, const int width,
    const int oh, const int ow, const int kh, const int kw, const int sh, const int sw,
    const int ph, const int pw) {
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const int ox = index % ow;
    const int oy = (index / ow) % oh;
    const long long plane = index / ((long long)ow * oh);
    int ys = oy * sh - ph, xs = ox * sw - pw;
    const int ye = min(ys + kh, height), xe = min(xs + kw, width);
    ys = max(ys, 0); xs = max(xs, 0);
    const float* xplane = x + plane * height * width;
    float best = -3.402823466e+38f;
    int best_index = -1;
    for (int yy = ys; yy < ye; ++yy) {
      for (int xx = xs; xx < xe; ++xx) {
        const float v = xplane[yy * width + xx];
        if (v > best) { best = v; best_index = yy * width + xx; }
      }
    }
    y[index] = best;
    mask[index] = (float)best_index;
  }
}
"""

MAX_POOL_BACKWARD_SOURCE = r"""
extern "C" __global__ void dl_max_pool_backward(
    const float* dy, const float* mask, float* dx, const long long total, const int height,
    const int width, const int oh, const int ow, const int kh, const int kw, const int sh,
    const int sw, const int ph, const int pw) {
  // One thread per input pixel: sum the output diffs whose argmax is this pixel.
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const int xx = index % width;
    const int yy = (index / width) % height;
    const long long plane = index / ((long long)width * height);
    const int oys = (yy + ph < kh) ? 0 : (yy + ph - kh) / sh + 1;
    const int oye = min((yy + ph) / sh + 1, oh);
    const int oxs = (xx + pw < kw) ? 0 : (xx + pw - kw) / sw + 1;
    const int oxe = min((xx + pw) / sw + 1, ow);
    const float here = (float)(yy * width + xx);
    const long long offset = plane * oh * ow;
    float sum = 0.f;
    for (int oy = oys; oy < oye; ++oy) {
      for (int ox = oxs; ox < oxe; ++ox) {
        if (mask[offset + oy * ow + ox] == here) sum += dy[offset + oy * ow + ox];
      }
    }
    dx[index] = sum;
  }
}
"""

AVE_POOL_FORWARD_SOURCE = r"""
extern "C" __global__ void dl_ave_pool_forward(
    const float* x, float* y, const long long total, const int height, const int width,
    const int oh, const int ow, const int kh, const int kw, const int sh, const int sw,
    const int ph, const int pw) {
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const int ox = index % ow;
    const int oy = (index / ow) % oh;
    const long long plane = index / ((long long)ow * oh);
    int ys = oy * sh - ph, xs = ox * sw - pw;
    int ye = min(ys + kh, height + ph), xe = min(xs + kw, width + pw);
    const int pool_size = (ye - ys) * (xe - xs);  // clipped to the padded input, as Caffe
    ys = max(ys, 0); xs = max(xs, 0); ye = min(ye, height); xe = min(xe, width);
    const float* xplane = x + plane * height * width;
    float sum = 0.f;
    for (int yy = ys; yy < ye; ++yy) {
      for (int xx = xs; xx < xe; ++xx) sum += xplane[yy * width + xx];
    }
    y[index] = sum / pool_size;
  }
}
"""

AVE_POOL_BACKWARD_SOURCE = r"""
extern "C" __global__ void dl_ave_pool_backward(
    const float* dy, float* dx, const long long total, const int height, const int width,
    const int oh, const int ow, const int kh, const int kw, const int sh, const int sw,
    const int ph, const int pw) {
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const int xx = index % width + pw;  // coordinates in the padded input
    const int yy = (index / width) % height + ph;
    const long long plane = index / ((long long)width * height);
    const int oys = (yy < kh) ? 0 : (yy - kh) / sh + 1;
    const int oye = min(yy / sh + 1, oh);
    const int oxs = (xx < kw) ? 0 : (xx - kw) / sw + 1;
    const int oxe = min(xx / sw + 1, ow);
    const float* dplane = dy + plane * oh * ow;
    float sum = 0.f;
    for (int oy = oys; oy < oye; ++oy) {
      for (int ox = oxs; ox < oxe; ++ox) {
        const int ys = oy * sh - ph, xs = ox * sw - pw;
        const int ye = min(ys + kh, height + ph), xe = min(xs + kw, width + pw);
        sum += dplane[oy * ow + ox] / ((ye - ys) * (xe - xs));
      }
    }
    dx[index] = sum;
  }
}
"""

LRN_FILL_SCALE_SOURCE = r"""
extern "C" __global__ void dl_lrn_fill_scale(
    const float* x, float* scale, const long long total, const int channels, const int plane_size,
    const int size, const float alpha_over_size, const float k) {
  // scale[n, c, p] = k + alpha/size * sum of x^2 over channels c - (size-1)/2 .. c + size/2 (clipped)
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const int c = (index / plane_size) % channels;
    const long long base = index - (long long)c * plane_size;  // element (n, 0, p)
    const int pre = (size - 1) / 2;
    const int cs = max(c - pre, 0), ce = min(c - pre + size, channels);
    float accum = 0.f;
    for (int cc = cs; cc < ce; ++cc) {
      const float v = x[base + (long long)cc * plane_size];
      accum += v * v;
    }
    scale[index] = k + alpha_over_size * accum;
  }
}
"""

LRN_OUTPUT_SOURCE = r"""
extern "C" __global__ void dl_lrn_output(
    const float* x, const float* scale, float* y, const long long total, const float neg_beta) {
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    y[index] = x[index] * powf(scale[index], neg_beta);
  }
}
"""

LRN_BACKWARD_SOURCE = r"""
extern "C" __global__ void dl_lrn_backward(
    const float* x, const float* y, const float* scale, const float* dy, float* dx,
    const long long total, const int channels, const int plane_size, const int size,
    const float neg_beta, const float cache_ratio) {
  // dx = dy * scale^-beta - 2*alpha*beta/size * x * sum_window(dy * y / scale)
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const int c = (index / plane_size) % channels;
    const long long base = index - ((long long)c * plane_size);
    // Channel c' sums channel c when c lies in its window: c' in c - size/2 .. c + (size-1)/2.
    const int post = size / 2, pre = (size - 1) / 2;
    const int cs = max(c - post, 0), ce = min(c + pre + 1, channels);
    float accum = 0.f;
    for (int cc = cs; cc < ce; ++cc) {
      const long long at = base + (long long)cc * plane_size;
      accum += dy[at] * y[at] / scale[at];
    }
    dx[index] = dy[index] * powf(scale[index], neg_beta) - cache_ratio * x[index] * accum;
  }
}
"""

#: Every RawKernel source of the vision layers, by kernel name (the NVRTC test compiles each).
LRN_WINDOW_SUM_SOURCE = r"""
extern "C" __global__ void dl_lrn_window_sum(
    const float* values, float* out, const long long total, const int height, const int width,
    const int size) {
  // WITHIN_CHANNEL: the sum over the size x size window centred on each pixel (zero-padded).
  const int half = (size - 1) / 2;
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < total;
       index += (long long)blockDim.x * gridDim.x) {
    const int x = index % width;
    const int y = (index / width) % height;
    const float* plane = values + (index / ((long long)width * height)) * height * width;
    const int ys = max(y - half, 0), ye = min(y + half + 1, height);
    const int xs = max(x - half, 0), xe = min(x + half + 1, width);
    float sum = 0.f;
    for (int yy = ys; yy < ye; ++yy) {
      for (int xx = xs; xx < xe; ++xx) sum += plane[yy * width + xx];
    }
    out[index] = sum;
  }
}
"""

SOURCES = {
    "dl_im2col": IM2COL_SOURCE,
    "dl_col2im": COL2IM_SOURCE,
    "dl_max_pool_forward": MAX_POOL_FORWARD_SOURCE,
    "dl_max_pool_backward": MAX_POOL_BACKWARD_SOURCE,
    "dl_ave_pool_forward": AVE_POOL_FORWARD_SOURCE,
    "dl_ave_pool_backward": AVE_POOL_BACKWARD_SOURCE,
    "dl_lrn_fill_scale": LRN_FILL_SCALE_SOURCE,
    "dl_lrn_output": LRN_OUTPUT_SOURCE,
    "dl_lrn_backward": LRN_BACKWARD_SOURCE,
    "dl_lrn_window_sum": LRN_WINDOW_SUM_SOURCE,
}


def launch(name: str, total: int, *args) -> None:
    """Run kernel ``name`` of this module over ``total`` elements."""
    cuda.launch(SOURCES[name], name, total, *args)


def i32(value: int) -> np.int32:
    return np.int32(value)


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
