// Helpers shared by this project's CPU ops (x86-64 with AVX2 and FMA): the op's thread
// pool, the AVX-512 switch, TensorFlow's output size and padding, the convolution ops'
// attributes and input-gradient shape, and 8-float loads with a lane mask for the last,
// partial group of channels.
#ifndef EFFICIENTNET_IPU_OP_UTIL_H_
#define EFFICIENTNET_IPU_OP_UTIL_H_

#include <atomic>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/platform/threadpool.h"

namespace efficientnet_ipu {

// Runs fn(begin, end) over [0, units) on TensorFlow's CPU worker threads; ``cost`` is an
// estimate of one unit's cycles, from which Eigen's cost model sizes the shards: below
// about 100k cycles in all, fn runs inline on the calling thread. Estimate it from
// measurement, not high to be safe: on this project's 2-core VM, handing work to a
// second thread took about 40 us per call.
inline void ParallelFor(tensorflow::OpKernelContext* ctx, int64_t units, int64_t cost,
                        const std::function<void(int64_t, int64_t)>& fn) {
  ctx->device()->tensorflow_cpu_worker_threads()->workers->ParallelFor(units, cost, fn);
}

// Which inner blocks the G16 and depthwise ops run, set from Python
// (kernels/settings.py: block_variant and its environment variables) through
// EfficientnetIpuSetBlockOptions (group_conv16.cc); each op reads them when TensorFlow
// constructs its kernel.
struct BlockOptions {
  std::atomic<bool> avx2_only{false};  // the AVX2 blocks on an AVX-512 CPU
  std::atomic<bool> winograd{true};    // Winograd for 3x3 / 5x5 stride-1 layers on AVX-512
  std::atomic<bool> per_group{true};   // the kernel gradient's per-group pass on small images
};
inline BlockOptions g_block_options;

// True where the AVX-512 versions of the inner loops run (group_conv16.cc,
// depthwise_conv.cc): the CPU has AVX-512F and the AVX2 blocks are not asked for. A
// 16-channel group is one AVX-512 register, so a block holds twice the pixels per
// register of AVX2 and every weight or gradient load feeds twice the FLOPs.
inline bool UseAvx512() {
  return __builtin_cpu_supports("avx512f") && !g_block_options.avx2_only.load();
}

// Reads a convolution op's "stride" and "padding" attributes (*same: padding is "SAME").
inline void ReadStridePadding(tensorflow::OpKernelConstruction* ctx, int* stride,
                              bool* same) {
  std::string padding;
  OP_REQUIRES_OK(ctx, ctx->GetAttr("stride", stride));
  OP_REQUIRES_OK(ctx, ctx->GetAttr("padding", &padding));
  *same = padding == "SAME";
}

// The 4-element int32 shape tensor ``sizes`` (input ``name`` of a gradient op) as a
// shape; an InvalidArgument error names it otherwise.
inline absl::Status ShapeFromSizes(const tensorflow::Tensor& sizes, const char* name,
                                   tensorflow::TensorShape* shape) {
  if (sizes.NumElements() != 4)
    return tensorflow::errors::InvalidArgument(name, " must have 4 elements");
  return tensorflow::TensorShapeUtils::MakeShape(sizes.vec<int32_t>().data(), 4, shape);
}

// Shape function of an input gradient op: output 0 has the 4 values of input ``index``
// (its input_sizes).
inline absl::Status InputSizesShapeFn(tensorflow::shape_inference::InferenceContext* c,
                                      int index) {
  tensorflow::shape_inference::ShapeHandle s;
  TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(index, &s));
  TF_RETURN_IF_ERROR(c->WithRank(s, 4, &s));
  c->set_output(0, s);
  return absl::OkStatus();
}

// Output size and padding before the first element along one spatial dimension of
// size ``in``, kernel ``k``, stride ``s``, as TensorFlow computes them (SAME:
// out = ceil(in / s), pad_before = pad_total / 2; VALID: out = (in - k + s) / s, no
// padding; not clamped at 0).
inline void OutputSize(int in, int k, int s, bool same, int* out, int* pad_before) {
  if (same) {
    *out = (in + s - 1) / s;
    const int total = std::max((*out - 1) * s + k - in, 0);
    *pad_before = total / 2;
  } else {
    *out = (in - k + s) / s;
    *pad_before = 0;
  }
}

// Lane mask for the last, partial group of 8 channels (lanes 0 .. lanes - 1 on).
inline __m256i TailMask(int lanes) {
  alignas(32) int m[8];
  for (int j = 0; j < 8; ++j) m[j] = j < lanes ? -1 : 0;
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(m));
}

// 8 floats from p: all 8 if ``full``, else the tail lanes (the others 0).
inline __m256 Load(const float* p, bool full, __m256i tail) {
  return full ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, tail);
}

// Stores 8 floats to p: all 8 if ``full``, else the tail lanes.
inline void Store(float* p, __m256 v, bool full, __m256i tail) {
  if (full)
    _mm256_storeu_ps(p, v);
  else
    _mm256_maskstore_ps(p, tail, v);
}

}  // namespace efficientnet_ipu

#endif  // EFFICIENTNET_IPU_OP_UTIL_H_
