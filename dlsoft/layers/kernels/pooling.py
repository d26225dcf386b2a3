"""Pooling kernels (MAX with its argmax mask, AVE with Caffe's padded-window divisor).

One thread per output element forward, one per input pixel backward (a gather: no
atomics), as the CPU code in ``pooling.py`` defines them (Caffe's pooling_layer.cu ideas).
"""
from __future__ import annotations

from . import define

MAX_POOL_FORWARD = define("dl_max_pool_forward", r"""
extern "C" __global__ void dl_max_pool_forward(
    const float* x, float* y, float* mask, const long long total, const int height, const int width,
    const int oh, const int ow, const int kh, const int kw, const int sh, const int sw,
    const int ph, const int pw) {
  CUDA_KERNEL_LOOP(index, total) {
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
""")

MAX_POOL_BACKWARD = define("dl_max_pool_backward", r"""
extern "C" __global__ void dl_max_pool_backward(
    const float* dy, const float* mask, float* dx, const long long total, const int height,
    const int width, const int oh, const int ow, const int kh, const int kw, const int sh,
    const int sw, const int ph, const int pw) {
  // One thread per input pixel: sum the output diffs whose argmax is this pixel.
  CUDA_KERNEL_LOOP(index, total) {
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
""")

AVE_POOL_FORWARD = define("dl_ave_pool_forward", r"""
extern "C" __global__ void dl_ave_pool_forward(
    const float* x, float* y, const long long total, const int height, const int width,
    const int oh, const int ow, const int kh, const int kw, const int sh, const int sw,
    const int ph, const int pw) {
  CUDA_KERNEL_LOOP(index, total) {
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
""")

AVE_POOL_BACKWARD = define("dl_ave_pool_backward", r"""
extern "C" __global__ void dl_ave_pool_backward(
    const float* dy, float* dx, const long long total, const int height, const int width,
    const int oh, const int ow, const int kh, const int kw, const int sh, const int sw,
    const int ph, const int pw) {
  CUDA_KERNEL_LOOP(index, total) {
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
""")
