// Proxy statistics of a proxy-normalized activation (paper 002 sec. 5, eq. 7; paper 001
// eq. 4) as one TensorFlow op and one gradient op, float32, on x86-64 CPUs with AVX2+FMA.
//
// For each channel c and fixed standard-normal quantiles q_i (i < n):
//   u_i = q_i (1 + proxy_gamma_c) + proxy_beta_c        (the proxy variable Y~)
//   z_i = act(gamma_c u_i + beta_c)
//   mean_c = (1/n) sum_i z_i,   var_c = (1/n) sum_i (z_i - mean_c)^2,
//   scale_c = 1 / sqrt(var_c + epsilon)
// which is what efficientnet_ipu/layers/proxy_norm.py computes with about a dozen
// TensorFlow ops forward and two dozen backward per layer. The tensors are tiny
// ([n, C], n = 200), so on CPU that layer's cost is the per-op overhead of TensorFlow's
// executor, about 30 ms per B0 training step at 32 px; these two ops remove it.
//
// Gradient (dmean, dscale given): dvar = -dscale scale^3 / 2,
//   dz_i = dmean / n + 2 dvar (z_i - mean) / n,   dv_i = dz_i d_i, d_i = act'(gamma u_i + beta),
//   S0 = sum_i dv_i, S1 = sum_i dv_i q_i:
//   dgamma = (1 + proxy_gamma) S1 + proxy_beta S0, dbeta = S0,
//   dproxy_gamma = gamma S1, dproxy_beta = gamma S0.
// S0 and S1 are linear in dmean and dvar: S0 = dmean D + 2 dvar E, S1 = dmean Dq + 2 dvar Eq
// with the means over i of d_i, q_i d_i, (z_i - mean) d_i and q_i (z_i - mean) d_i
// (D, Dq, E, Eq), which do not depend on the upstream gradient. So the forward op, which
// has z_i and d_i at hand, also outputs them ([4, C]), and the gradient op is a few
// multiply-adds per channel instead of a second pass over the n quantiles with the
// activation and its derivative again.
// Activations: swish (x sigmoid(x)), relu, gelu (exact, erf form, as tf.nn.gelu's
// default) and linear. Loaded by efficientnet_ipu/kernels/library.py, which compiles it.

#include <immintrin.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/platform/threadpool.h"
#include "op_util.h"
#include "vector_math.h"

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::TensorShapeUtils;
using tensorflow::errors::InvalidArgument;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

namespace {

using efficientnet_ipu::Act;
using efficientnet_ipu::Activate;
using efficientnet_ipu::ActFromName;
using efficientnet_ipu::ParallelFor;
using efficientnet_ipu::Sum;
using efficientnet_ipu::WithAct;

// The quantiles padded with zeros to a multiple of 8, and a 0/1 mask of the real ones.
struct Quantiles {
  int n = 0;
  int n8 = 0;
  std::vector<float> q, mask;
  explicit Quantiles(const Tensor& t) {
    auto flat = t.flat<float>();
    n = static_cast<int>(flat.size());
    n8 = (n + 7) / 8 * 8;
    q.assign(n8, 0.0f);
    mask.assign(n8, 0.0f);
    for (int i = 0; i < n; ++i) {
      q[i] = flat(i);
      mask[i] = 1.0f;
    }
  }
};

class ProxyMeanScaleOp : public OpKernel {
 public:
  explicit ProxyMeanScaleOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::string name;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("activation", &name));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
    act_ = ActFromName(name);
  }

  void Compute(OpKernelContext* ctx) override {
    const int64_t channels = CheckInputs(ctx);
    if (channels < 0) return;
    const Quantiles quantiles(ctx->input(4));
    const float* gamma = ctx->input(0).flat<float>().data();
    const float* beta = ctx->input(1).flat<float>().data();
    const float* pgamma = ctx->input(2).flat<float>().data();
    const float* pbeta = ctx->input(3).flat<float>().data();
    Tensor* mean_t = nullptr;
    Tensor* scale_t = nullptr;
    Tensor* sums_t = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({channels}), &mean_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({channels}), &scale_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({4, channels}), &sums_t));
    float* mean = mean_t->flat<float>().data();
    float* scale = scale_t->flat<float>().data();
    float* sums = sums_t->flat<float>().data();  // D, Dq, E, Eq (header comment), [4][C]
    const int n = quantiles.n, n8 = quantiles.n8;
    // About 8 cycles per quantile per channel (swish, n = 200; 6 before the gradient's
    // sums were added): estimates 7x higher split even B0's 32-channel layers across
    // threads, which cost more to start than the work (see ParallelFor in op_util.h).
    WithAct(act_, [&](auto kind) {  // the activation as a compile-time constant
      constexpr Act act = decltype(kind)::value;
      ParallelFor(ctx, channels, 8 * n8, [&](int64_t begin, int64_t end) {
        std::vector<float> z(n8), d(n8);
        for (int64_t c = begin; c < end; ++c) {
          const __m256 a = _mm256_set1_ps(gamma[c] * (1.0f + pgamma[c]));
          const __m256 b = _mm256_set1_ps(gamma[c] * pbeta[c] + beta[c]);
          __m256 sum = _mm256_setzero_ps(), sum_d = _mm256_setzero_ps();
          __m256 sum_qd = _mm256_setzero_ps();
          for (int i = 0; i < n8; i += 8) {
            const __m256 q = _mm256_loadu_ps(&quantiles.q[i]);
            const __m256 mask = _mm256_loadu_ps(&quantiles.mask[i]);
            __m256 di;
            const __m256 zi = _mm256_mul_ps(Activate(act, _mm256_fmadd_ps(q, a, b), &di), mask);
            di = _mm256_mul_ps(di, mask);
            _mm256_storeu_ps(&z[i], zi);
            _mm256_storeu_ps(&d[i], di);
            sum = _mm256_add_ps(sum, zi);
            sum_d = _mm256_add_ps(sum_d, di);
            sum_qd = _mm256_fmadd_ps(q, di, sum_qd);
          }
          const float m = Sum(sum) / n;
          const __m256 mv = _mm256_set1_ps(m);
          __m256 squares = _mm256_setzero_ps(), sum_e = _mm256_setzero_ps();
          __m256 sum_qe = _mm256_setzero_ps();
          for (int i = 0; i < n8; i += 8) {
            const __m256 dev = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(&z[i]), mv),
                                             _mm256_loadu_ps(&quantiles.mask[i]));
            squares = _mm256_fmadd_ps(dev, dev, squares);
            const __m256 e = _mm256_mul_ps(dev, _mm256_loadu_ps(&d[i]));
            sum_e = _mm256_add_ps(sum_e, e);
            sum_qe = _mm256_fmadd_ps(_mm256_loadu_ps(&quantiles.q[i]), e, sum_qe);
          }
          mean[c] = m;
          scale[c] = 1.0f / std::sqrt(Sum(squares) / n + epsilon_);
          sums[c] = Sum(sum_d) / n;
          sums[channels + c] = Sum(sum_qd) / n;
          sums[2 * channels + c] = Sum(sum_e) / n;
          sums[3 * channels + c] = Sum(sum_qe) / n;
        }
      });
    });
  }

 private:
  // Checks gamma, beta, proxy_gamma, proxy_beta (inputs 0-3) are [C] and the quantiles
  // (input 4) are [n], n >= 2; returns C, or -1 after setting an error.
  int64_t CheckInputs(OpKernelContext* ctx) {
    const int64_t channels = ctx->input(0).NumElements();
    for (int i = 0; i < 4; ++i) {
      const Tensor& t = ctx->input(i);
      if (!TensorShapeUtils::IsVector(t.shape()) || t.NumElements() != channels) {
        ctx->CtxFailure(InvalidArgument("proxy statistics: input ", i,
                                        " must be a vector of ", channels,
                                        " channels, got shape ", t.shape().DebugString()));
        return -1;
      }
    }
    const Tensor& q = ctx->input(4);
    if (!TensorShapeUtils::IsVector(q.shape()) || q.NumElements() < 2) {
      ctx->CtxFailure(InvalidArgument("proxy statistics: quantiles must be a vector of at "
                                      "least 2 values, got shape ", q.shape().DebugString()));
      return -1;
    }
    return channels;
  }

  Act act_;
  float epsilon_;
};

// Inputs: gamma, proxy_gamma, proxy_beta, scale, gradient_sums (the forward op's outputs
// 1 and 2), grad_mean, grad_scale. Outputs: the gradients of gamma, beta, proxy_gamma,
// proxy_beta (header comment). No activation and no quantiles: a few multiply-adds per
// channel, on the calling thread.
class ProxyMeanScaleGradOp : public OpKernel {
 public:
  using OpKernel::OpKernel;

  void Compute(OpKernelContext* ctx) override {
    constexpr int kInputs = 7, kSums = 4;
    const int64_t channels = ctx->input(0).NumElements();
    for (int i = 0; i < kInputs; ++i) {
      const Tensor& t = ctx->input(i);
      const bool ok = i == kSums ? t.shape() == TensorShape({4, channels})
                                 : TensorShapeUtils::IsVector(t.shape()) &&
                                       t.NumElements() == channels;
      OP_REQUIRES(ctx, ok, InvalidArgument("proxy statistics gradient: input ", i, " must be ",
                                           i == kSums ? "[4, C]" : "[C]", " with C = ",
                                           channels, ", got shape ", t.shape().DebugString()));
    }
    const float* in[kInputs];
    for (int i = 0; i < kInputs; ++i) in[i] = ctx->input(i).flat<float>().data();
    float* out[4];
    for (int i = 0; i < 4; ++i) {
      Tensor* t = nullptr;
      OP_REQUIRES_OK(ctx, ctx->allocate_output(i, TensorShape({channels}), &t));
      out[i] = t->flat<float>().data();
    }
    const float* sums = in[kSums];
    for (int64_t c = 0; c < channels; ++c) {
      const float gamma = in[0][c], pgamma = in[1][c], pbeta = in[2][c], scale = in[3][c];
      const float dmean = in[5][c], dscale = in[6][c];
      const float dvar2 = -dscale * scale * scale * scale;  // 2 dvar
      const float sum0 = dmean * sums[c] + dvar2 * sums[2 * channels + c];
      const float sum1 = dmean * sums[channels + c] + dvar2 * sums[3 * channels + c];
      out[0][c] = (1.0f + pgamma) * sum1 + pbeta * sum0;
      out[1][c] = sum0;
      out[2][c] = gamma * sum1;
      out[3][c] = gamma * sum0;
    }
  }
};

absl::Status VectorShapes(InferenceContext* c, int outputs) {
  ShapeHandle v;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &v));
  for (int i = 0; i < outputs; ++i) c->set_output(i, v);
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("EfficientnetIpuProxyMeanScale")
    .Input("gamma: float")
    .Input("beta: float")
    .Input("proxy_gamma: float")
    .Input("proxy_beta: float")
    .Input("quantiles: float")
    .Output("mean: float")
    .Output("scale: float")
    .Output("gradient_sums: float")
    .Attr("activation: {'swish', 'relu', 'gelu', 'linear'}")
    .Attr("epsilon: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle v;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &v));
      c->set_output(0, v);
      c->set_output(1, v);
      c->set_output(2, c->Matrix(4, c->Dim(v, 0)));
      return absl::OkStatus();
    });

REGISTER_OP("EfficientnetIpuProxyMeanScaleGrad")
    .Input("gamma: float")
    .Input("proxy_gamma: float")
    .Input("proxy_beta: float")
    .Input("scale: float")
    .Input("gradient_sums: float")
    .Input("grad_mean: float")
    .Input("grad_scale: float")
    .Output("grad_gamma: float")
    .Output("grad_beta: float")
    .Output("grad_proxy_gamma: float")
    .Output("grad_proxy_beta: float")
    .SetShapeFn([](InferenceContext* c) { return VectorShapes(c, 4); });

REGISTER_KERNEL_BUILDER(Name("EfficientnetIpuProxyMeanScale").Device(DEVICE_CPU),
                        ProxyMeanScaleOp);
REGISTER_KERNEL_BUILDER(Name("EfficientnetIpuProxyMeanScaleGrad").Device(DEVICE_CPU),
                        ProxyMeanScaleGradOp);
