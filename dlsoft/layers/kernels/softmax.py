"""Softmax kernels (``Softmax``, and the softmax losses' forward) and SoftmaxWithLoss's
loss and gradient kernels.

Softmax: one thread per (outer, inner) column of a C-contiguous (outer, dim, inner) array;
each element is read before it is written, so both kernels also work in place.
SoftmaxWithLoss: grid-stride loops over the label positions (outer × inner).
"""
from __future__ import annotations

from . import define

SOFTMAX_FORWARD = define("dl_softmax_forward", r"""
extern "C" __global__ void dl_softmax_forward(
    const float* x, float* y, const long long columns, const int dim, const int inner) {
  CUDA_KERNEL_LOOP(c, columns) {
    const long long base = (c / inner) * dim * (long long)inner + c % inner;
    float largest = -3.402823466e+38f;
    for (int d = 0; d < dim; ++d) largest = fmaxf(largest, x[base + (long long)d * inner]);
    float total = 0.f;
    for (int d = 0; d < dim; ++d) {
      const float e = expf(x[base + (long long)d * inner] - largest);
      y[base + (long long)d * inner] = e;
      total += e;
    }
    const float inverse = 1.f / total;
    for (int d = 0; d < dim; ++d) y[base + (long long)d * inner] *= inverse;
  }
}
""")

SOFTMAX_BACKWARD = define("dl_softmax_backward", r"""
extern "C" __global__ void dl_softmax_backward(
    const float* y, const float* dy, float* dx, const long long columns, const int dim,
    const int inner) {
  CUDA_KERNEL_LOOP(c, columns) {
    const long long base = (c / inner) * dim * (long long)inner + c % inner;
    float dot = 0.f;
    for (int d = 0; d < dim; ++d) dot += dy[base + (long long)d * inner] * y[base + (long long)d * inner];
    for (int d = 0; d < dim; ++d) {
      const long long i = base + (long long)d * inner;
      dx[i] = (dy[i] - dot) * y[i];
    }
  }
}
""")

SOFTMAX_LOSS_FORWARD = define("dl_softmax_loss_forward", r"""
extern "C" __global__ void dl_softmax_loss_forward(
    const float* prob, const float* label, float* loss, float* counts,
    const int outer, const int dim, const int inner, const int has_ignore, const int ignore) {
  const long long positions = (long long)outer * inner;
  CUDA_KERNEL_LOOP(i, positions) {
    const long long n = i / inner, s = i % inner;
    const int lab = (int)label[i];
    if ((has_ignore && lab == ignore) || lab < 0 || lab >= dim) {
      loss[i] = 0.f;
      counts[i] = 0.f;
    } else {
      loss[i] = -logf(fmaxf(prob[(n * dim + lab) * inner + s], 1.17549435e-38f));
      counts[i] = 1.f;
    }
  }
}
""")

SOFTMAX_LOSS_BACKWARD = define("dl_softmax_loss_backward", r"""
extern "C" __global__ void dl_softmax_loss_backward(
    const float* prob, const float* label, const float* scale, float* dx,
    const int outer, const int dim, const int inner, const int has_ignore, const int ignore) {
  const long long total = (long long)outer * dim * inner;
  CUDA_KERNEL_LOOP(i, total) {
    const long long s = i % inner, c = (i / inner) % dim, n = i / ((long long)dim * inner);
    const int lab = (int)label[n * inner + s];
    const bool ignored = (has_ignore && lab == ignore) || lab < 0 || lab >= dim;
    dx[i] = ignored ? 0.f : (prob[i] - (c == lab ? 1.f : 0.f)) * scale[0];
  }
}
""")
