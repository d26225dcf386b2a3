"""LRN kernels: ACROSS_CHANNELS scale/output/backward, and the WITHIN_CHANNEL window sum
(Caffe's lrn_layer.cu ideas; the CPU definitions are in ``lrn.py``)."""
from __future__ import annotations

from . import define

LRN_FILL_SCALE = define("dl_lrn_fill_scale", r"""
extern "C" __global__ void dl_lrn_fill_scale(
    const float* x, float* scale, const long long total, const int channels, const int plane_size,
    const int size, const float alpha_over_size, const float k) {
  // scale[n, c, p] = k + alpha/size * sum of x^2 over channels c - (size-1)/2 .. c + size/2 (clipped)
  CUDA_KERNEL_LOOP(index, total) {
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
""")

LRN_OUTPUT = define("dl_lrn_output", r"""
extern "C" __global__ void dl_lrn_output(
    const float* x, const float* scale, float* y, const long long total, const float neg_beta) {
  CUDA_KERNEL_LOOP(index, total) {
    y[index] = x[index] * powf(scale[index], neg_beta);
  }
}
""")

LRN_BACKWARD = define("dl_lrn_backward", r"""
extern "C" __global__ void dl_lrn_backward(
    const float* x, const float* y, const float* scale, const float* dy, float* dx,
    const long long total, const int channels, const int plane_size, const int size,
    const float neg_beta, const float cache_ratio) {
  // dx = dy * scale^-beta - 2*alpha*beta/size * x * sum_window(dy * y / scale)
  CUDA_KERNEL_LOOP(index, total) {
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
""")

LRN_WINDOW_SUM = define("dl_lrn_window_sum", r"""
extern "C" __global__ void dl_lrn_window_sum(
    const float* values, float* out, const long long total, const int height, const int width,
    const int size) {
  // WITHIN_CHANNEL: the sum over the size x size window centred on each pixel (zero-padded).
  const int half = (size - 1) / 2;
  CUDA_KERNEL_LOOP(index, total) {
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
""")
