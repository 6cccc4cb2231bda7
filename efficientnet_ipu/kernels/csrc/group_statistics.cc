// From per-example, per-channel moments to the scale and shift of Group Normalization
// (GN, LN = 1 group, IN = one group per channel; paper 001 sec. 3.2, eq. 3; paper 002
// sec. 4), as one TensorFlow op and one gradient op, float32, on CPU. For each example n
// and group g of k = C / G channels, with m_c = mean[n, c] - offset[n, c] (offset
// optional, a folded proxy-norm mean; see MBConvBlock.call_proxy_folded):
//
//   M = (1/k) sum_c m_c,   V = (1/k) sum_c (variance[n, c] + (m_c - M)^2)
//       (the parallel variance rule: the group's mean and biased variance)
//   r = 1 / sqrt(V + epsilon)
//   scale[n, c] = r gamma[c],   shift[n, c] = beta[c] - (M + offset[n, c]) r gamma[c]
//
// so that GN(x - offset) = x scale + shift. TensorFlow computes this as about 20 small
// ops on [N, C] tensors forward and 30 backward, per norm (about 50 norms in a B0; this
// halves B0-G16's training graph). Gradient, per n and g:
//   dr = sum_c gamma_c (dscale_c - (M + o_c) dshift_c),   dV = -r^3 dr / 2,
//   dM = -r sum_c gamma_c dshift_c,
//   dm_c = dM / k + 2 dV (m_c - M) / k,   dvariance_c = dV / k,
//   dmean_c = dm_c,   doffset_c = -dm_c - r gamma_c dshift_c,
//   dgamma_c = sum_n r (dscale_c - (M + o_c) dshift_c),   dbeta_c = sum_n dshift_c.
//
// Batch Normalization's counterpart (Ioffe & Szegedy, 2015, Algorithm 1) combines the same
// per-example moments over the batch instead of over a group of channels: per channel c,
//   M = (1/N) sum_n mean[n, c],   V = (1/N) sum_n (variance[n, c] + (mean[n, c] - M)^2),
//   r = 1 / sqrt(V + epsilon),   scale[c] = r gamma[c],   shift[c] = beta[c] - M r gamma[c],
// and the moving averages: moving <- momentum moving + (1 - momentum) batch (Keras' rule,
// with the biased V, as Keras 3 keeps it). Gradient (the moving averages are constants,
// as under tf.stop_gradient in Keras):
//   dr = gamma (dscale - M dshift),   dV = -r^3 dr / 2,   dM = -r gamma dshift,
//   dmean[n, c] = dM / N + 2 dV (mean[n, c] - M) / N,   dvariance[n, c] = dV / N,
//   dgamma = r (dscale - M dshift),   dbeta = dshift.
// One op each instead of about 25 small ops forward and 25 backward per batch norm (B0:
// 33 of them). Sums are in double; GN's, over the channels of a group, 4 channels per AVX2
// register (one accumulator per lane: scalar sums over channels waited on the adder's
// latency, about 13 cycles per channel in the gradient). Loaded by
// efficientnet_ipu/kernels/library.py, which compiles it.

#include <immintrin.h>

#include <cmath>
#include <initializer_list>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor_shape.h"

using tensorflow::DEVICE_CPU;
using tensorflow::OpInputList;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::OpOutputList;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::errors::InvalidArgument;
using tensorflow::shape_inference::InferenceContext;

namespace {

// One example's statistics of one group: M and r.
struct Group {
  double mean, rstd;
};

// 4 floats from p as doubles; the sum of the 4 lanes of v.
inline __m256d Load4(const float* p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }
inline double Sum4(__m256d v) {
  const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

// Reads the ops' epsilon attribute (> 0; ``what`` names the function in the error).
class EpsilonOp : public OpKernel {
 public:
  EpsilonOp(OpKernelConstruction* ctx, const char* what) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
    OP_REQUIRES(ctx, epsilon_ > 0.0f, InvalidArgument(what, ": epsilon must be > 0, got ",
                                                      epsilon_));
  }

 protected:
  float epsilon_;
};

class GroupStatisticsBase : public EpsilonOp {
 public:
  explicit GroupStatisticsBase(OpKernelConstruction* ctx)
      : EpsilonOp(ctx, "group_scale_shift") {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("groups", &groups_));
  }

 protected:
  // Checks mean, variance [N, C], gamma, beta [C], offset empty or one [N, C], and that
  // groups divides C. Sets *offset to the offset's data or nullptr.
  bool CheckInputs(OpKernelContext* ctx, const float** offset) {
    const TensorShape& nc = ctx->input(0).shape();
    if (nc.dims() != 2 || ctx->input(1).shape() != nc) {
      ctx->CtxFailure(InvalidArgument("group_scale_shift: mean and variance must be [N, C] "
                                      "of the same shape, got ", nc.DebugString(), " and ",
                                      ctx->input(1).shape().DebugString()));
      return false;
    }
    const TensorShape channels({nc.dim_size(1)});
    if (ctx->input(2).shape() != channels || ctx->input(3).shape() != channels) {
      ctx->CtxFailure(InvalidArgument("group_scale_shift: gamma and beta must be [C] = ",
                                      channels.DebugString(), ", got ",
                                      ctx->input(2).shape().DebugString(), " and ",
                                      ctx->input(3).shape().DebugString()));
      return false;
    }
    if (groups_ < 1 || nc.dim_size(1) % groups_ != 0) {
      ctx->CtxFailure(InvalidArgument("group_scale_shift: groups=", groups_,
                                      " must divide the ", nc.dim_size(1), " channels"));
      return false;
    }
    OpInputList list;
    if (!ctx->input_list("offset", &list).ok()) return false;
    *offset = nullptr;
    if (list.size() == 0) return true;
    if (list.size() != 1 || list[0].shape() != nc) {
      ctx->CtxFailure(InvalidArgument("group_scale_shift: offset must be empty or one [N, C] = ",
                                      nc.DebugString(), " tensor"));
      return false;
    }
    *offset = list[0].flat<float>().data();
    return true;
  }

  // m[c] = mean[c] - offset[c] (offset may be nullptr: zeros), for one example's C channels.
  static void ShiftedMeans(const float* mean, const float* offset, int64_t C, double* m) {
    if (offset == nullptr) {
      for (int64_t c = 0; c < C; ++c) m[c] = mean[c];
    } else {
      for (int64_t c = 0; c < C; ++c) m[c] = static_cast<double>(mean[c]) - offset[c];
    }
  }

  // M and r of the group of channels [c0, c1) of one example, from its shifted means m
  // and variances v (the parallel variance rule above).
  Group Moments(const double* m, const float* v, int64_t c0, int64_t c1) const {
    const double k = static_cast<double>(c1 - c0);
    const int64_t c4 = c0 + (c1 - c0) / 4 * 4;
    __m256d sum4 = _mm256_setzero_pd();
    for (int64_t c = c0; c < c4; c += 4) sum4 = _mm256_add_pd(sum4, _mm256_loadu_pd(m + c));
    double sum = Sum4(sum4);
    for (int64_t c = c4; c < c1; ++c) sum += m[c];
    const double mean = sum / k;
    const __m256d mean4 = _mm256_set1_pd(mean);
    __m256d var4 = _mm256_setzero_pd();
    for (int64_t c = c0; c < c4; c += 4) {
      const __m256d d = _mm256_sub_pd(_mm256_loadu_pd(m + c), mean4);
      var4 = _mm256_fmadd_pd(d, d, _mm256_add_pd(var4, Load4(v + c)));
    }
    double var = Sum4(var4);
    for (int64_t c = c4; c < c1; ++c) var += v[c] + (m[c] - mean) * (m[c] - mean);
    return Group{mean, 1.0 / std::sqrt(var / k + epsilon_)};
  }

  int groups_;
};

class GroupScaleShiftOp : public GroupStatisticsBase {
 public:
  using GroupStatisticsBase::GroupStatisticsBase;

  void Compute(OpKernelContext* ctx) override {
    const float* offset = nullptr;
    if (!CheckInputs(ctx, &offset)) return;
    const Tensor& mean = ctx->input(0);
    const int64_t N = mean.dim_size(0), C = mean.dim_size(1), k = C / groups_;
    Tensor *scale = nullptr, *shift = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, mean.shape(), &scale));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, mean.shape(), &shift));
    const float* md = mean.flat<float>().data();
    const float* vd = ctx->input(1).flat<float>().data();
    const float* gamma = ctx->input(2).flat<float>().data();
    const float* beta = ctx->input(3).flat<float>().data();
    float* sd = scale->flat<float>().data();
    float* bd = shift->flat<float>().data();
    std::vector<double> m(C);
    for (int64_t n = 0; n < N; ++n) {
      const int64_t row = n * C;
      const float* o = offset ? offset + row : nullptr;
      ShiftedMeans(md + row, o, C, m.data());
      for (int g = 0; g < groups_; ++g) {
        const int64_t c0 = g * k, c1 = c0 + k;
        const Group s = Moments(m.data(), vd + row, c0, c1);
        for (int64_t c = c0; c < c1; ++c) {
          const double sc = s.rstd * gamma[c];
          sd[row + c] = static_cast<float>(sc);
          bd[row + c] = static_cast<float>(beta[c] - (s.mean + (o ? o[c] : 0.0f)) * sc);
        }
      }
    }
  }
};

class GroupScaleShiftGradOp : public GroupStatisticsBase {
 public:
  using GroupStatisticsBase::GroupStatisticsBase;

  void Compute(OpKernelContext* ctx) override {
    const float* offset = nullptr;
    if (!CheckInputs(ctx, &offset)) return;
    const int num_offset = offset == nullptr ? 0 : 1;
    const Tensor& mean = ctx->input(0);
    const Tensor& dscale = ctx->input(4 + num_offset);
    const Tensor& dshift = ctx->input(5 + num_offset);
    OP_REQUIRES(ctx, dscale.shape() == mean.shape() && dshift.shape() == mean.shape(),
                InvalidArgument("group_scale_shift gradient: dscale and dshift must be [N, C] = ",
                                mean.shape().DebugString()));
    const int64_t N = mean.dim_size(0), C = mean.dim_size(1), k = C / groups_;
    Tensor *dmean = nullptr, *dvariance = nullptr, *dgamma = nullptr, *dbeta = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, mean.shape(), &dmean));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, mean.shape(), &dvariance));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({C}), &dgamma));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({C}), &dbeta));
    OpOutputList doffset_list;
    OP_REQUIRES_OK(ctx, ctx->output_list("doffset", &doffset_list));
    float* doffset = nullptr;
    if (num_offset) {
      Tensor* t = nullptr;
      OP_REQUIRES_OK(ctx, doffset_list.allocate(0, mean.shape(), &t));
      doffset = t->flat<float>().data();
    }
    const float* md = mean.flat<float>().data();
    const float* vd = ctx->input(1).flat<float>().data();
    const float* gamma = ctx->input(2).flat<float>().data();
    const float* ds = dscale.flat<float>().data();
    const float* db = dshift.flat<float>().data();
    float* dmd = dmean->flat<float>().data();
    float* dvd = dvariance->flat<float>().data();
    std::vector<double> m(C), dgamma_sum(C, 0.0), dbeta_sum(C, 0.0);
    for (int64_t n = 0; n < N; ++n) {
      const int64_t row = n * C;
      const float* o = offset ? offset + row : nullptr;
      const float* dsn = ds + row;
      const float* dbn = db + row;
      ShiftedMeans(md + row, o, C, m.data());
      for (int g = 0; g < groups_; ++g) {
        const int64_t c0 = g * k, c1 = c0 + k;
        const Group s = Moments(m.data(), vd + row, c0, c1);
        const int64_t c4 = c0 + k / 4 * 4;  // 4 channels at a time, then the rest
        const __m256d mean4 = _mm256_set1_pd(s.mean), rstd4 = _mm256_set1_pd(s.rstd);
        __m256d dr4 = _mm256_setzero_pd(), dM4 = _mm256_setzero_pd();
        for (int64_t c = c0; c < c4; c += 4) {
          const __m256d centre = o ? _mm256_add_pd(mean4, Load4(o + c)) : mean4;
          const __m256d g = Load4(gamma + c), dbc = Load4(dbn + c);
          const __m256d dsc = _mm256_fnmadd_pd(centre, dbc, Load4(dsn + c));
          dr4 = _mm256_fmadd_pd(g, dsc, dr4);
          dM4 = _mm256_fnmadd_pd(g, dbc, dM4);
          _mm256_storeu_pd(&dgamma_sum[c],
                           _mm256_fmadd_pd(rstd4, dsc, _mm256_loadu_pd(&dgamma_sum[c])));
          _mm256_storeu_pd(&dbeta_sum[c], _mm256_add_pd(_mm256_loadu_pd(&dbeta_sum[c]), dbc));
        }
        double dr = Sum4(dr4), dM = Sum4(dM4);
        for (int64_t c = c4; c < c1; ++c) {
          const double centre = s.mean + (o ? o[c] : 0.0f);  // M + o_c
          const double dsc = dsn[c] - centre * dbn[c];
          dr += gamma[c] * dsc;
          dM -= gamma[c] * dbn[c];
          dgamma_sum[c] += s.rstd * dsc;
          dbeta_sum[c] += dbn[c];
        }
        dM *= s.rstd;
        const double dV = -0.5 * s.rstd * s.rstd * s.rstd * dr;
        const double dm_mean = dM / k, dm_spread = 2.0 * dV / k, dv = dV / k;
        const __m256d dm_mean4 = _mm256_set1_pd(dm_mean), dm_spread4 = _mm256_set1_pd(dm_spread);
        const __m128 dv4 = _mm_set1_ps(static_cast<float>(dv));
        for (int64_t c = c0; c < c4; c += 4) {
          const __m256d dm = _mm256_fmadd_pd(
              dm_spread4, _mm256_sub_pd(_mm256_loadu_pd(&m[c]), mean4), dm_mean4);
          _mm_storeu_ps(dmd + row + c, _mm256_cvtpd_ps(dm));
          _mm_storeu_ps(dvd + row + c, dv4);
          if (doffset) {  // -dm - r gamma_c dshift_c
            const __m256d rg = _mm256_mul_pd(rstd4, Load4(gamma + c));
            _mm_storeu_ps(doffset + row + c, _mm256_cvtpd_ps(_mm256_sub_pd(
                _mm256_fnmadd_pd(rg, Load4(dbn + c), _mm256_setzero_pd()), dm)));
          }
        }
        for (int64_t c = c4; c < c1; ++c) {
          const double dm = dm_mean + dm_spread * (m[c] - s.mean);
          dmd[row + c] = static_cast<float>(dm);
          dvd[row + c] = static_cast<float>(dv);
          if (doffset) doffset[row + c] = static_cast<float>(-dm - s.rstd * gamma[c] * dbn[c]);
        }
      }
    }
    float* dgd = dgamma->flat<float>().data();
    float* dbd = dbeta->flat<float>().data();
    for (int64_t c = 0; c < C; ++c) {
      dgd[c] = static_cast<float>(dgamma_sum[c]);
      dbd[c] = static_cast<float>(dbeta_sum[c]);
    }
  }
};

// Batch Normalization's statistics (header comment): the batch's M and r per channel.
class BatchStatisticsBase : public EpsilonOp {
 public:
  explicit BatchStatisticsBase(OpKernelConstruction* ctx)
      : EpsilonOp(ctx, "batch_norm_statistics") {}

 protected:
  // Checks mean, variance [N, C] (N >= 1) and that the inputs 2 .. 1 + names.size() are
  // [C]; an error names the input (names[i - 2]).
  bool CheckInputs(OpKernelContext* ctx, std::initializer_list<const char*> names) {
    const TensorShape& nc = ctx->input(0).shape();
    if (nc.dims() != 2 || nc.dim_size(0) < 1 || ctx->input(1).shape() != nc) {
      ctx->CtxFailure(InvalidArgument("batch_norm_statistics: mean and variance must be "
                                      "[N, C] of the same shape with N >= 1, got ",
                                      nc.DebugString(), " and ",
                                      ctx->input(1).shape().DebugString()));
      return false;
    }
    const TensorShape channels({nc.dim_size(1)});
    int i = 2;
    for (const char* name : names) {
      if (ctx->input(i).shape() != channels) {
        ctx->CtxFailure(InvalidArgument("batch_norm_statistics: ", name,
                                        " must be [C] = ", channels.DebugString(), ", got ",
                                        ctx->input(i).shape().DebugString()));
        return false;
      }
      ++i;
    }
    return true;
  }

  // The batch's mean M[c] and biased variance V[c] from the per-example moments.
  static void Combine(const Tensor& mean, const Tensor& variance, std::vector<double>* M,
                      std::vector<double>* V) {
    const int64_t N = mean.dim_size(0), C = mean.dim_size(1);
    const float* md = mean.flat<float>().data();
    const float* vd = variance.flat<float>().data();
    M->assign(C, 0.0);
    V->assign(C, 0.0);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) (*M)[c] += md[n * C + c];
    for (int64_t c = 0; c < C; ++c) (*M)[c] /= N;
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        const double d = md[n * C + c] - (*M)[c];
        (*V)[c] += vd[n * C + c] + d * d;
      }
    }
    for (int64_t c = 0; c < C; ++c) (*V)[c] /= N;
  }
};

class BatchNormStatisticsOp : public BatchStatisticsBase {
 public:
  explicit BatchNormStatisticsOp(OpKernelConstruction* ctx) : BatchStatisticsBase(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("momentum", &momentum_));
  }

  void Compute(OpKernelContext* ctx) override {
    if (!CheckInputs(ctx, {"gamma", "beta", "moving_mean", "moving_variance"})) return;
    const Tensor& mean = ctx->input(0);
    const int64_t C = mean.dim_size(1);
    std::vector<double> M, V;
    Combine(mean, ctx->input(1), &M, &V);
    const float* gamma = ctx->input(2).flat<float>().data();
    const float* beta = ctx->input(3).flat<float>().data();
    const float* moving_mean = ctx->input(4).flat<float>().data();
    const float* moving_variance = ctx->input(5).flat<float>().data();
    float* out[4];
    for (int i = 0; i < 4; ++i) {
      Tensor* t = nullptr;
      OP_REQUIRES_OK(ctx, ctx->allocate_output(i, TensorShape({C}), &t));
      out[i] = t->flat<float>().data();
    }
    const double keep = momentum_, take = 1.0 - static_cast<double>(momentum_);
    for (int64_t c = 0; c < C; ++c) {
      const double sc = gamma[c] / std::sqrt(V[c] + epsilon_);
      out[0][c] = static_cast<float>(sc);
      out[1][c] = static_cast<float>(beta[c] - M[c] * sc);
      out[2][c] = static_cast<float>(keep * moving_mean[c] + take * M[c]);
      out[3][c] = static_cast<float>(keep * moving_variance[c] + take * V[c]);
    }
  }

 private:
  float momentum_;
};

class BatchNormStatisticsGradOp : public BatchStatisticsBase {
 public:
  using BatchStatisticsBase::BatchStatisticsBase;

  void Compute(OpKernelContext* ctx) override {
    if (!CheckInputs(ctx, {"gamma", "dscale", "dshift"})) return;
    const Tensor& mean = ctx->input(0);
    const int64_t N = mean.dim_size(0), C = mean.dim_size(1);
    std::vector<double> M, V;
    Combine(mean, ctx->input(1), &M, &V);
    const float* gamma = ctx->input(2).flat<float>().data();
    const float* dscale = ctx->input(3).flat<float>().data();
    const float* dshift = ctx->input(4).flat<float>().data();
    Tensor *dmean = nullptr, *dvariance = nullptr, *dgamma = nullptr, *dbeta = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, mean.shape(), &dmean));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, mean.shape(), &dvariance));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({C}), &dgamma));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({C}), &dbeta));
    const float* md = mean.flat<float>().data();
    float* dmd = dmean->flat<float>().data();
    float* dvd = dvariance->flat<float>().data();
    float* dgd = dgamma->flat<float>().data();
    float* dbd = dbeta->flat<float>().data();
    std::vector<double> dm_mean(C), dm_spread(C);
    for (int64_t c = 0; c < C; ++c) {
      const double r = 1.0 / std::sqrt(V[c] + epsilon_);
      const double dsc = dscale[c] - M[c] * dshift[c];
      const double dV = -0.5 * r * r * r * gamma[c] * dsc;
      dm_mean[c] = -r * gamma[c] * dshift[c] / N;
      dm_spread[c] = 2.0 * dV / N;
      dgd[c] = static_cast<float>(r * dsc);
      dbd[c] = dshift[c];
      const float dv = static_cast<float>(dV / N);
      for (int64_t n = 0; n < N; ++n) dvd[n * C + c] = dv;
    }
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        dmd[n * C + c] = static_cast<float>(dm_mean[c] + dm_spread[c] * (md[n * C + c] - M[c]));
      }
    }
  }
};

}  // namespace

REGISTER_OP("EfficientnetIpuGroupScaleShift")
    .Input("mean: float")
    .Input("variance: float")
    .Input("gamma: float")
    .Input("beta: float")
    .Input("offset: num_offset * float")
    .Output("scale: float")
    .Output("shift: float")
    .Attr("groups: int >= 1")
    .Attr("epsilon: float")
    .Attr("num_offset: int >= 0")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(0));
      return absl::OkStatus();
    });

REGISTER_OP("EfficientnetIpuGroupScaleShiftGrad")
    .Input("mean: float")
    .Input("variance: float")
    .Input("gamma: float")
    .Input("beta: float")
    .Input("offset: num_offset * float")
    .Input("dscale: float")
    .Input("dshift: float")
    .Output("dmean: float")
    .Output("dvariance: float")
    .Output("dgamma: float")
    .Output("dbeta: float")
    .Output("doffset: num_offset * float")
    .Attr("groups: int >= 1")
    .Attr("epsilon: float")
    .Attr("num_offset: int >= 0")
    .SetShapeFn([](InferenceContext* c) {
      for (int i = 0; i < c->num_outputs(); ++i) c->set_output(i, c->input(i));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("EfficientnetIpuGroupScaleShift").Device(DEVICE_CPU),
                        GroupScaleShiftOp);
REGISTER_KERNEL_BUILDER(Name("EfficientnetIpuGroupScaleShiftGrad").Device(DEVICE_CPU),
                        GroupScaleShiftGradOp);

REGISTER_OP("EfficientnetIpuBatchNormStatistics")
    .Input("mean: float")
    .Input("variance: float")
    .Input("gamma: float")
    .Input("beta: float")
    .Input("moving_mean: float")
    .Input("moving_variance: float")
    .Output("scale: float")
    .Output("shift: float")
    .Output("new_moving_mean: float")
    .Output("new_moving_variance: float")
    .Attr("epsilon: float")
    .Attr("momentum: float")
    .SetShapeFn([](InferenceContext* c) {
      for (int i = 0; i < 4; ++i) c->set_output(i, c->input(2));
      return absl::OkStatus();
    });

REGISTER_OP("EfficientnetIpuBatchNormStatisticsGrad")
    .Input("mean: float")
    .Input("variance: float")
    .Input("gamma: float")
    .Input("dscale: float")
    .Input("dshift: float")
    .Output("dmean: float")
    .Output("dvariance: float")
    .Output("dgamma: float")
    .Output("dbeta: float")
    .Attr("epsilon: float")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(0));
      c->set_output(2, c->input(2));
      c->set_output(3, c->input(2));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("EfficientnetIpuBatchNormStatistics").Device(DEVICE_CPU),
                        BatchNormStatisticsOp);
REGISTER_KERNEL_BUILDER(Name("EfficientnetIpuBatchNormStatisticsGrad").Device(DEVICE_CPU),
                        BatchNormStatisticsGradOp);
