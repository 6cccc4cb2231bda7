// The squeeze-and-excitation gate applied to its input (Hu et al., 2018; EfficientNet's
// MBConv; paper 001 sec. 3, paper 002 App. A.1), as one TensorFlow op and one gradient
// op, float32, NHWC, on x86-64 CPUs with AVX2+FMA:
//
//   y[n, h, w, c] = x[n, h, w, c] gate[n, c]
//   dx = dy gate,   dgate[n, c] = sum_hw dy x
//
// TensorFlow's gradient of the broadcast multiply makes two full-size products and a
// reduction (five passes over the tensor); here both gradients come from one pass that
// reads dy and x and writes dx. A third op adds a per-(n, c) bias in place,
// for the squeeze's share of the gradient. Loaded by efficientnet_ipu/kernels/library.py.

#include <immintrin.h>

#include <algorithm>
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

namespace {

using efficientnet_ipu::Load;
using efficientnet_ipu::ParallelFor;
using efficientnet_ipu::Store;
using efficientnet_ipu::TailMask;

class ChannelGateBase : public OpKernel {
 public:
  explicit ChannelGateBase(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES(ctx, __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"),
                tensorflow::errors::FailedPrecondition(
                    "the efficientnet_ipu channel gate kernels need a CPU with AVX2 and FMA"));
  }

 protected:
  // Checks x is [N, H, W, C] and input 1 (named ``second``: gate or bias) [N, C];
  // ``what`` names the op in the error.
  static bool CheckInputs(OpKernelContext* ctx, const char* what,
                          const char* second = "gate") {
    const Tensor& x = ctx->input(0);
    if (x.dims() != 4) {
      ctx->CtxFailure(InvalidArgument(what, ": x must be [N, H, W, C], got ",
                                      x.shape().DebugString()));
      return false;
    }
    const TensorShape nc({x.dim_size(0), x.dim_size(3)});
    if (ctx->input(1).shape() != nc) {
      ctx->CtxFailure(InvalidArgument(what, ": ", second, " must be [N, C] = ",
                                      nc.DebugString(), ", got ",
                                      ctx->input(1).shape().DebugString()));
      return false;
    }
    return true;
  }

  // y[n, h, w, c] = op(x[n, h, w, c], v[n, c]) for 8 channels at a time, one unit per
  // image row; y may be x's buffer.
  template <typename Op>
  static void BroadcastNC(OpKernelContext* ctx, const Tensor& x, const Tensor& v, Tensor* y,
                          Op op) {
    const int64_t H = x.dim_size(1), W = x.dim_size(2), C = x.dim_size(3);
    const float* xd = x.flat<float>().data();
    const float* vd = v.flat<float>().data();
    float* yd = y->flat<float>().data();
    const int64_t c8 = C / 8 * 8;
    const __m256i tail = TailMask(static_cast<int>(C - c8));
    ParallelFor(ctx, x.dim_size(0) * H, W * C * 2, [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {
        const float* vr = vd + u / H * C;
        const float* xr = xd + u * W * C;
        float* yr = yd + u * W * C;
        for (int64_t w = 0; w < W; ++w, xr += C, yr += C)
          for (int64_t c = 0; c < C; c += 8) {
            const bool full = c < c8;
            Store(yr + c, op(Load(xr + c, full, tail), Load(vr + c, full, tail)), full, tail);
          }
      }
    });
  }
};

class ChannelGateOp : public ChannelGateBase {
 public:
  using ChannelGateBase::ChannelGateBase;

  void Compute(OpKernelContext* ctx) override {
    if (!CheckInputs(ctx, "channel_gate")) return;
    const Tensor& x = ctx->input(0);
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    BroadcastNC(ctx, x, ctx->input(1), y, [](__m256 a, __m256 g) { return _mm256_mul_ps(a, g); });
  }
};

class ChannelGateGradOp : public ChannelGateBase {
 public:
  using ChannelGateBase::ChannelGateBase;

  void Compute(OpKernelContext* ctx) override {
    if (!CheckInputs(ctx, "channel_gate gradient")) return;
    const Tensor& x = ctx->input(0);
    const Tensor& dy = ctx->input(2);
    OP_REQUIRES(ctx, dy.shape() == x.shape(),
                InvalidArgument("channel_gate gradient: dy ", dy.shape().DebugString(),
                                " must have x's shape ", x.shape().DebugString()));
    Tensor *dx = nullptr, *dgate = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, ctx->input(1).shape(), &dgate));
    const int64_t N = x.dim_size(0), H = x.dim_size(1), W = x.dim_size(2), C = x.dim_size(3);
    const float* xd = x.flat<float>().data();
    const float* gd = ctx->input(1).flat<float>().data();
    const float* dyd = dy.flat<float>().data();
    float* dxd = dx->flat<float>().data();
    float* dgd = dgate->flat<float>().data();
    const int64_t c8 = C / 8 * 8, cpad = (C + 7) / 8 * 8;
    const __m256i tail = TailMask(static_cast<int>(C - c8));
    // One unit per example, so each owns its row of dgate; each image row is summed in
    // float32 and the rows in float64.
    ParallelFor(ctx, N, H * W * C * 3, [&](int64_t begin, int64_t end) {
      std::vector<float> row(cpad);
      std::vector<double> total(cpad);
      for (int64_t n = begin; n < end; ++n) {
        std::fill(total.begin(), total.end(), 0.0);
        const float* g = gd + n * C;
        for (int64_t h = 0; h < H; ++h) {
          std::fill(row.begin(), row.end(), 0.0f);
          const int64_t base = (n * H + h) * W * C;
          for (int64_t w = 0; w < W; ++w) {
            const float* xp = xd + base + w * C;
            const float* dyp = dyd + base + w * C;
            float* dxp = dxd + base + w * C;
            for (int64_t c = 0; c < cpad; c += 8) {
              const bool full = c < c8;
              const __m256 dv = Load(dyp + c, full, tail);
              Store(dxp + c, _mm256_mul_ps(dv, Load(g + c, full, tail)), full, tail);
              _mm256_storeu_ps(&row[c], _mm256_fmadd_ps(dv, Load(xp + c, full, tail),
                                                        _mm256_loadu_ps(&row[c])));
            }
          }
          for (int64_t c = 0; c < C; ++c) total[c] += row[c];
        }
        for (int64_t c = 0; c < C; ++c) dgd[n * C + c] = static_cast<float>(total[c]);
      }
    });
  }
};

// y[n, h, w, c] = x[n, h, w, c] + bias[n, c], in x's buffer when TensorFlow can forward
// it: how the squeeze's gradient (dmean / HW, broadcast over H and W) joins the gate's in
// the squeeze-excite gradient (blocks.squeeze_excite), one pass where TensorFlow's Tile,
// Mul and AddN made three.
class AddChannelBiasOp : public ChannelGateBase {
 public:
  using ChannelGateBase::ChannelGateBase;

  void Compute(OpKernelContext* ctx) override {
    if (!CheckInputs(ctx, "add_channel_bias", "bias")) return;
    const Tensor& x = ctx->input(0);
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, x.shape(), &y));
    BroadcastNC(ctx, x, ctx->input(1), y, [](__m256 a, __m256 b) { return _mm256_add_ps(a, b); });
  }
};

}  // namespace

REGISTER_OP("EfficientnetIpuAddChannelBias")
    .Input("x: float")
    .Input("bias: float")
    .Output("y: float")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("EfficientnetIpuAddChannelBias").Device(DEVICE_CPU),
                        AddChannelBiasOp);

REGISTER_OP("EfficientnetIpuChannelGate")
    .Input("x: float")
    .Input("gate: float")
    .Output("y: float")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    });

REGISTER_OP("EfficientnetIpuChannelGateGrad")
    .Input("x: float")
    .Input("gate: float")
    .Input("dy: float")
    .Output("dx: float")
    .Output("dgate: float")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(1));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("EfficientnetIpuChannelGate").Device(DEVICE_CPU), ChannelGateOp);
REGISTER_KERNEL_BUILDER(Name("EfficientnetIpuChannelGateGrad").Device(DEVICE_CPU),
                        ChannelGateGradOp);
