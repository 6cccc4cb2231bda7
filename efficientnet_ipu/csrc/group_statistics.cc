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
// halves B0-G16's training graph, issue #4). Gradient, per n and g:
//   dr = sum_c gamma_c (dscale_c - (M + o_c) dshift_c),   dV = -r^3 dr / 2,
//   dM = -r sum_c gamma_c dshift_c,
//   dm_c = dM / k + 2 dV (m_c - M) / k,   dvariance_c = dV / k,
//   dmean_c = dm_c,   doffset_c = -dm_c - r gamma_c dshift_c,
//   dgamma_c = sum_n r (dscale_c - (M + o_c) dshift_c),   dbeta_c = sum_n dshift_c.
// Sums are in double. Loaded by efficientnet_ipu/layers/kernels.py, which compiles it.

#include <cmath>
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

class GroupStatisticsBase : public OpKernel {
 public:
  explicit GroupStatisticsBase(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("groups", &groups_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
    OP_REQUIRES(ctx, epsilon_ > 0.0f,
                InvalidArgument("group_scale_shift: epsilon must be > 0, got ", epsilon_));
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

  // M and r of an example's groups, from its shifted means m (C floats:
  // mean - offset, already formed by the caller) and variances v.
  void GroupMoments(const double* m, const float* v, int64_t C, std::vector<Group>* out) const {
    const int64_t k = C / groups_;
    for (int g = 0; g < groups_; ++g) {
      double sum = 0.0;
      for (int64_t c = g * k; c < (g + 1) * k; ++c) sum += m[c];
      const double mean = sum / k;
      double var = 0.0;
      for (int64_t c = g * k; c < (g + 1) * k; ++c) var += v[c] + (m[c] - mean) * (m[c] - mean);
      (*out)[g] = Group{mean, 1.0 / std::sqrt(var / k + epsilon_)};
    }
  }

  int groups_;
  float epsilon_;
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
    std::vector<Group> groups(groups_);
    for (int64_t n = 0; n < N; ++n) {
      const int64_t row = n * C;
      for (int64_t c = 0; c < C; ++c) m[c] = md[row + c] - (offset ? offset[row + c] : 0.0f);
      GroupMoments(m.data(), vd + row, C, &groups);
      for (int64_t c = 0; c < C; ++c) {
        const Group& g = groups[c / k];
        const double s = g.rstd * gamma[c];
        sd[row + c] = static_cast<float>(s);
        bd[row + c] =
            static_cast<float>(beta[c] - (g.mean + (offset ? offset[row + c] : 0.0f)) * s);
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
    std::vector<Group> groups(groups_);
    std::vector<double> dr(groups_), dM(groups_);
    for (int64_t n = 0; n < N; ++n) {
      const int64_t row = n * C;
      for (int64_t c = 0; c < C; ++c) m[c] = md[row + c] - (offset ? offset[row + c] : 0.0f);
      GroupMoments(m.data(), vd + row, C, &groups);
      std::fill(dr.begin(), dr.end(), 0.0);
      std::fill(dM.begin(), dM.end(), 0.0);
      for (int64_t c = 0; c < C; ++c) {
        const Group& g = groups[c / k];
        const double centre = g.mean + (offset ? offset[row + c] : 0.0f);  // M + o_c
        const double dsc = ds[row + c] - centre * db[row + c];
        dr[c / k] += gamma[c] * dsc;
        dM[c / k] -= g.rstd * gamma[c] * db[row + c];
        dgamma_sum[c] += g.rstd * dsc;
        dbeta_sum[c] += db[row + c];
      }
      for (int64_t c = 0; c < C; ++c) {
        const int g = static_cast<int>(c / k);
        const double r = groups[g].rstd;
        const double dV = -0.5 * r * r * r * dr[g];
        const double dm = dM[g] / k + 2.0 * dV * (m[c] - groups[g].mean) / k;
        dmd[row + c] = static_cast<float>(dm);
        dvd[row + c] = static_cast<float>(dV / k);
        if (doffset) doffset[row + c] = static_cast<float>(-dm - r * gamma[c] * db[row + c]);
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
