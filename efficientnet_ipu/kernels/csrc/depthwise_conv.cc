// Gradients of the depthwise convolution (paper 001's G1 group convolution, channel
// multiplier 1), NHWC, float32, on x86-64 CPUs with AVX2 and FMA, as two TensorFlow ops:
//
//   dx[n, ih, iw, c] = sum_{i, j} w[i, j, c] dy[n, oh, ow, c]
//       over the taps with oh s + i - pt = ih and ow s + j - pl = iw
//   dw[i, j, c] = sum_{n, oh, ow} x[n, oh s + i - pt, ow s + j - pl, c] dy[n, oh, ow, c]
//
// (x outside the image is the zero padding). The forward stays tf.nn.depthwise_conv2d.
//
// Why: oneDNN's depthwise gradients on this project's CPU spend most of their time
// outside the arithmetic. For B0-G1 at batch 32, 224 px, its filter gradient took
// 360 ms of op time per training step (52 ms on a 7 x 7 x 1152 5x5 layer whose two
// tensors are 7 MB; 6 ms per 5x5 layer even at 32 px) and its input gradient 112 ms,
// against 44 ms for the forward. Both are a few multiply-adds per
// element read, so they should run at the speed of memory, as the forward does.
//
// Both vectorise over 8 channels (one AVX2 register) and keep the kernel row's
// accumulators (filter gradient) or weights (input gradient) in registers: kernels up to
// 7x7. Padding "SAME" or "VALID" with TensorFlow's rule, square stride s >= 1.
// Compiled and loaded by efficientnet_ipu/kernels/library.py.

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "op_util.h"

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::errors::InvalidArgument;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

namespace {

using efficientnet_ipu::OutputSize;
using efficientnet_ipu::ParallelFor;
using efficientnet_ipu::ReadStridePadding;
using efficientnet_ipu::InputSizesShapeFn;
using efficientnet_ipu::ShapeFromSizes;
using efficientnet_ipu::UseAvx512;

constexpr int kMaxK = 7;  // the largest kernel the register blocks hold

struct Geometry {
  int N, H, W, C, k, s, OH, OW, pt, pl;
};

// Floor division for a possibly negative numerator and a positive divisor.
inline int FloorDiv(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// One tap of the input gradient for an output residue class (InputGradientRow): the
// weights of kernel tap (i, j) and the output-gradient row it reads, dy_row[(t + off) * C]
// for the input pixel iw = r + t s.
struct InputTap {
  const float* w;       // filter + (i k + j) * C
  const float* dy_row;  // row oh = (ih + pt - i) / s of the output gradient
  int off;              // (r + pl - j) / s
};

// 8 channels per register (AVX2 + FMA).
struct Avx2Vec {
  using V = __m256;
  using Mask = __m256i;
  static constexpr int kLanes = 8;
  static Mask TailMask(int lanes) { return efficientnet_ipu::TailMask(lanes); }
  static V Zero() { return _mm256_setzero_ps(); }
  static V Load(const float* p, bool full, Mask m) { return efficientnet_ipu::Load(p, full, m); }
  static void Store(float* p, V v, bool full, Mask m) { efficientnet_ipu::Store(p, v, full, m); }
  static V LoadU(const float* p) { return _mm256_loadu_ps(p); }
  static void StoreU(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V Add(V a, V b) { return _mm256_add_ps(a, b); }
};

namespace avx2 {
using Vec = Avx2Vec;
#include "depthwise_conv_kernels.h"
}  // namespace avx2

#pragma GCC push_options
#pragma GCC target("avx512f")
// 16 channels per register (AVX-512F).
struct Avx512Vec {
  using V = __m512;
  using Mask = __mmask16;
  static constexpr int kLanes = 16;
  static Mask TailMask(int lanes) { return static_cast<Mask>(lanes ? (1u << lanes) - 1 : 0xffff); }
  static V Zero() { return _mm512_setzero_ps(); }
  static V Load(const float* p, bool full, Mask m) {
    return full ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p);
  }
  static void Store(float* p, V v, bool full, Mask m) {
    if (full)
      _mm512_storeu_ps(p, v);
    else
      _mm512_mask_storeu_ps(p, m, v);
  }
  static V LoadU(const float* p) { return _mm512_loadu_ps(p); }
  static void StoreU(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V Add(V a, V b) { return _mm512_add_ps(a, b); }
};

namespace avx512 {
using Vec = Avx512Vec;
#include "depthwise_conv_kernels.h"
}  // namespace avx512
#pragma GCC pop_options

class DepthwiseBase : public OpKernel {
 public:
  explicit DepthwiseBase(OpKernelConstruction* ctx) : OpKernel(ctx), use_avx512_(UseAvx512()) {
    OP_REQUIRES(ctx, __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"),
                tensorflow::errors::FailedPrecondition(
                    "the efficientnet_ipu depthwise-convolution kernels need a CPU with AVX2 "
                    "and FMA; use GroupConv2D implementation='tensorflow'"));
    ReadStridePadding(ctx, &stride_, &same_);
  }

 protected:
  // Fills g from the input shape [N, H, W, C] and the kernel size; checks dy's shape.
  bool MakeGeometry(OpKernelContext* ctx, const TensorShape& in, int k, const Tensor& dy,
                    const char* what, Geometry* g) {
    if (in.dims() != 4) {
      ctx->CtxFailure(InvalidArgument(what, ": the input must be [N, H, W, C], got ",
                                      in.DebugString()));
      return false;
    }
    if (k < 1 || k > kMaxK) {
      ctx->CtxFailure(InvalidArgument(what, ": kernel size must be 1 to ", kMaxK, ", got ",
                                      k));
      return false;
    }
    g->N = static_cast<int>(in.dim_size(0));
    g->H = static_cast<int>(in.dim_size(1));
    g->W = static_cast<int>(in.dim_size(2));
    g->C = static_cast<int>(in.dim_size(3));
    g->k = k;
    g->s = stride_;
    OutputSize(g->H, k, stride_, same_, &g->OH, &g->pt);
    OutputSize(g->W, k, stride_, same_, &g->OW, &g->pl);
    g->OH = std::max(g->OH, 0);  // VALID with the kernel larger than the image
    g->OW = std::max(g->OW, 0);
    const TensorShape expected({g->N, g->OH, g->OW, g->C});
    if (dy.shape() != expected) {
      ctx->CtxFailure(InvalidArgument(what, ": out_backprop must be ", expected.DebugString(),
                                      ", got ", dy.shape().DebugString()));
      return false;
    }
    return true;
  }

  int stride_;
  bool same_;
  const bool use_avx512_;  // UseAvx512() when the kernel was built
};

class DepthwiseBackpropInputOp : public DepthwiseBase {
 public:
  using DepthwiseBase::DepthwiseBase;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& sizes = ctx->input(0);
    const Tensor& filter = ctx->input(1);
    const Tensor& dy = ctx->input(2);
    TensorShape in;
    OP_REQUIRES_OK(ctx, ShapeFromSizes(sizes, "depthwise input gradient: input_sizes", &in));
    const int k = filter.dims() == 4 ? static_cast<int>(filter.dim_size(0)) : 0;
    OP_REQUIRES(ctx, filter.shape() == TensorShape({k, k, in.dim_size(3), 1}),
                InvalidArgument("depthwise input gradient: filter must be [k, k, C, 1] with "
                                "C = ", in.dim_size(3), ", got ",
                                filter.shape().DebugString()));
    Geometry g;
    if (!MakeGeometry(ctx, in, k, dy, "depthwise input gradient", &g)) return;
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, in, &dx));
    if (in.num_elements() == 0) return;
    const float* f = filter.flat<float>().data();
    const float* dyd = dy.flat<float>().data();
    float* dxd = dx->flat<float>().data();
    // One unit per input row; about k^2 / s^2 multiply-adds per 8 channels per pixel.
    const int64_t cost = static_cast<int64_t>(g.W) * (g.C / 8 + 1) *
                         std::max(1, g.k * g.k / (g.s * g.s)) * 2;
    ParallelFor(ctx, static_cast<int64_t>(g.N) * g.H, cost, [&](int64_t b, int64_t e) {
      for (int64_t u = b; u < e; ++u)
        (use_avx512_ ? avx512::InputGradientRow : avx2::InputGradientRow)(
            g, f, dyd, static_cast<int>(u / g.H), static_cast<int>(u % g.H), dxd);
    });
  }
};

class DepthwiseBackpropFilterOp : public DepthwiseBase {
 public:
  explicit DepthwiseBackpropFilterOp(OpKernelConstruction* ctx) : DepthwiseBase(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("kernel_size", &k_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& dy = ctx->input(1);
    Geometry g;
    if (!MakeGeometry(ctx, x.shape(), k_, dy, "depthwise filter gradient", &g)) return;
    Tensor* df = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({k_, k_, g.C, 1}), &df));
    float* dfd = df->flat<float>().data();
    const int taps = k_ * k_;
    if (g.N == 0 || g.OH == 0 || g.OW == 0 || g.C == 0) {
      std::fill(dfd, dfd + static_cast<int64_t>(taps) * g.C, 0.0f);
      return;
    }
    // Units: chunks of the images, each summing into its own [C / L][k k][L] slice
    // (L channels per register); the chunks are added at the end.
    const int lanes = use_avx512_ ? 16 : 8;
    const int threads =
        ctx->device()->tensorflow_cpu_worker_threads()->workers->NumThreads();
    const int chunks = std::min(g.N, 2 * std::max(1, threads));
    const int64_t slice = static_cast<int64_t>((g.C + lanes - 1) / lanes) * taps * lanes;
    std::vector<float> partial(static_cast<size_t>(chunks) * slice, 0.0f);
    const float* xd = x.flat<float>().data();
    const float* dyd = dy.flat<float>().data();
    const int64_t cost = static_cast<int64_t>(g.N / chunks + 1) * g.OH * g.OW *
                         (g.C / lanes + 1) * taps;
    const auto unit = use_avx512_ ? avx512::FilterGradientUnit : avx2::FilterGradientUnit;
    ParallelFor(ctx, chunks, cost, [&](int64_t b, int64_t e) {
      for (int64_t u = b; u < e; ++u)
        unit(g, xd, dyd, g.N * u / chunks, g.N * (u + 1) / chunks, partial.data() + u * slice);
    });
    // df[tap, c] = sum over chunks, in float64.
    for (int t = 0; t < taps; ++t)
      for (int c = 0; c < g.C; ++c) {
        double sum = 0.0;
        for (int chunk = 0; chunk < chunks; ++chunk)
          sum += partial[chunk * slice + (c / lanes) * taps * lanes + t * lanes + c % lanes];
        dfd[static_cast<int64_t>(t) * g.C + c] = static_cast<float>(sum);
      }
  }

 private:
  int k_;
};

}  // namespace

REGISTER_OP("EfficientnetIpuDepthwiseConvBackpropInput")
    .Input("input_sizes: int32")
    .Input("filter: float")
    .Input("out_backprop: float")
    .Output("output: float")
    .Attr("stride: int >= 1")
    .Attr("padding: {'SAME', 'VALID'}")
    .SetShapeFn([](InferenceContext* c) { return InputSizesShapeFn(c, 0); });

REGISTER_OP("EfficientnetIpuDepthwiseConvBackpropFilter")
    .Input("input: float")
    .Input("out_backprop: float")
    .Output("output: float")
    .Attr("kernel_size: int >= 1")
    .Attr("stride: int >= 1")
    .Attr("padding: {'SAME', 'VALID'}")
    .SetShapeFn([](InferenceContext* c) {
      int k;
      TF_RETURN_IF_ERROR(c->GetAttr("kernel_size", &k));
      ShapeHandle in;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &in));
      c->set_output(0, c->MakeShape({k, k, c->Dim(in, 3), 1}));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("EfficientnetIpuDepthwiseConvBackpropInput")
                            .Device(DEVICE_CPU)
                            .HostMemory("input_sizes"),
                        DepthwiseBackpropInputOp);
REGISTER_KERNEL_BUILDER(Name("EfficientnetIpuDepthwiseConvBackpropFilter").Device(DEVICE_CPU),
                        DepthwiseBackpropFilterOp);
