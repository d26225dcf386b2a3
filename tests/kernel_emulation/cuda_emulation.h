// CUDA C++ as plain sequential C++: the emulation header the kernel tests put in front of
// every RawKernel source (see __init__.py). A generated launcher loops over the launch's
// blocks and threads in order, setting blockIdx/threadIdx before each call, so a
// grid-stride loop visits each index exactly once, as on the device but sequentially.
#pragma once
#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <math.h>  // libstdc++'s: brings the float overloads (tanh(float), ...) into scope, as CUDA has them

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
// Kernels that share memory between the threads of a block need the launcher to run each
// barrier phase for all threads before the next one; this emulation does not do that, so
// such a kernel fails to compile here, by name, instead of computing nonsense.
#define __shared__ DLSOFT_EMULATION_HAS_NO_SHARED_MEMORY_rewrite_the_kernel_or_split_its_phases
#define __syncthreads() DLSOFT_EMULATION_HAS_NO_BARRIERS_rewrite_the_kernel_or_split_its_phases

struct dlsoft_uint3 { unsigned int x, y, z; };
struct dlsoft_dim3 { unsigned int x, y, z; };
static dlsoft_uint3 blockIdx = {0, 0, 0};
static dlsoft_uint3 threadIdx = {0, 0, 0};
static dlsoft_dim3 blockDim = {1, 1, 1};
static dlsoft_dim3 gridDim = {1, 1, 1};

// CUDA's min/max are overloaded for every arithmetic pair with the usual conversions.
template <class A, class B> inline auto min(A a, B b) -> decltype(a + b) { return b < a ? b : a; }
template <class A, class B> inline auto max(A a, B b) -> decltype(a + b) { return a < b ? b : a; }

// Single-precision math: <cmath>'s float overloads under CUDA's names.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
using std::isfinite;
using std::isinf;
using std::isnan;

// Atomics: a sequential run has no races, so each is the plain read-modify-write.
template <class T> inline T atomicAdd(T* address, T value) { T old = *address; *address = old + value; return old; }
template <class T> inline T atomicMax(T* address, T value) { T old = *address; if (value > old) *address = value; return old; }
template <class T> inline T atomicMin(T* address, T value) { T old = *address; if (value < old) *address = value; return old; }
template <class T> inline T atomicExch(T* address, T value) { T old = *address; *address = value; return old; }
template <class T> inline T __ldg(const T* address) { return *address; }
