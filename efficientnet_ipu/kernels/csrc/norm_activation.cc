// The second half of a batch-independent normalization (GN, LN, IN; paper 001 sec. 3.2,
// paper 002 sec. 4) and the activation after it, as one TensorFlow op and one gradient
// op, float32, NHWC, on x86-64 CPUs with AVX2+FMA:
//
//   y[n, h, w, c] = act(x[n, h, w, c] * scale[n, c] + shift[n, c])
//                   [* post_scale[c] + post_shift[c]]
//
// scale and shift hold the per-example statistics with the affine (and, under proxy norm,
// PN's gamma and beta) folded in. TensorFlow computes this as a multiply, an add and the
// activation, three passes over the tensor forward and about eight backward (the
// activation's derivative, dx, and the two sums for scale and shift); here it is one pass
// each way. Gradient, with p = x scale + shift:
//   dp = dy act'(p),  dx = dp scale,  dscale[n, c] = sum_hw dp x,  dshift[n, c] = sum_hw dp.
// Activations: swish, relu, gelu (exact) and linear, as in proxy_norm.cc.
// The optional per-channel affine after the activation (``post``, a list of none or two
// [C] tensors) is proxy norm's (a - proxy mean) * proxy scale (paper 002 eq. 7) where no
// convolution follows to fold it into (the stem; the top's mean before pooling): with
// z = a post_scale + post_shift and a = act(p), the gradient uses da = dz post_scale and
// adds dpost_scale[c] = sum_nhw dz a, dpost_shift[c] = sum_nhw dz.
//
// The statistics before it, per example and channel, are the spatial mean and variance
// mean[n, c] = E_hw[x] and variance[n, c] = E_hw[(x - mean)^2] (GN/LN/IN/BN combine them
// over a group of channels or the batch afterwards, on [N, C] tensors, by the parallel
// variance rule): one pass forward, where TensorFlow makes three, and one backward:
// dx = (dmean + 2 (x - mean) dvariance) / (H W). The pass sums x - K and (x - K)^2 with K
// the image's first pixel (a value of the same channel, so the sums do not cancel the
// way E[x^2] - E[x]^2 does when |mean| >> std), runs of up to 64 pixels in float32, the
// runs in float64.
// Loaded by efficientnet_ipu/kernels/library.py, which compiles it.

#include <immintrin.h>

#include <algorithm>
#include <string>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "op_util.h"
#include "vector_math.h"

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

using efficientnet_ipu::Act;
using efficientnet_ipu::Activate;
using efficientnet_ipu::ActFromName;
using efficientnet_ipu::Load;
using efficientnet_ipu::ParallelFor;
using efficientnet_ipu::Store;
using efficientnet_ipu::TailMask;
using efficientnet_ipu::WithAct;

// The CPU check all four ops share.
class NormOpBase : public OpKernel {
 public:
  explicit NormOpBase(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES(ctx, __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"),
                tensorflow::errors::FailedPrecondition(
                    "the efficientnet_ipu normalization kernels need a CPU with AVX2 and FMA"));
  }

 protected:
  // Checks input 0 is [N, H, W, C]; ``what`` names the op in the error.
  static bool CheckImage(OpKernelContext* ctx, const char* what) {
    if (ctx->input(0).dims() == 4) return true;
    ctx->CtxFailure(InvalidArgument(what, ": x must be [N, H, W, C], got ",
                                    ctx->input(0).shape().DebugString()));
    return false;
  }
};

class ScaleShiftBase : public NormOpBase {
 public:
  explicit ScaleShiftBase(OpKernelConstruction* ctx) : NormOpBase(ctx) {
    std::string name;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("activation", &name));
    act_ = ActFromName(name);
  }

 protected:
  // Checks x is [N, H, W, C], scale and shift are [N, C], and post is empty or two [C]
  // tensors; sets *post_scale and *post_shift to their data (nullptr without post).
  // (Outputs, not members: a kernel's Compute may run on several threads at once.)
  static bool CheckInputs(OpKernelContext* ctx, const float** post_scale,
                          const float** post_shift) {
    if (!CheckImage(ctx, "scale_shift_activation")) return false;
    const Tensor& x = ctx->input(0);
    const TensorShape vec({x.dim_size(0), x.dim_size(3)});
    for (int i = 1; i <= 2; ++i) {
      if (ctx->input(i).shape() != vec) {
        ctx->CtxFailure(InvalidArgument("scale_shift_activation: ", i == 1 ? "scale" : "shift",
                                        " must be [N, C] = ", vec.DebugString(), ", got ",
                                        ctx->input(i).shape().DebugString()));
        return false;
      }
    }
    tensorflow::OpInputList post;
    if (!ctx->input_list("post", &post).ok()) return false;
    *post_scale = *post_shift = nullptr;
    if (post.size() == 0) return true;
    const TensorShape channels({x.dim_size(3)});
    if (post.size() != 2 || post[0].shape() != channels || post[1].shape() != channels) {
      ctx->CtxFailure(InvalidArgument(
          "scale_shift_activation: post must be empty or (post_scale, post_shift), each [C] = ",
          channels.DebugString(), ", got ", post.size(), " tensors"));
      return false;
    }
    *post_scale = post[0].flat<float>().data();
    *post_shift = post[1].flat<float>().data();
    return true;
  }

  Act act_;
};

class ScaleShiftActivationOp : public ScaleShiftBase {
 public:
  using ScaleShiftBase::ScaleShiftBase;

  void Compute(OpKernelContext* ctx) override {
    const float *ps = nullptr, *pb = nullptr;
    if (!CheckInputs(ctx, &ps, &pb)) return;
    const Tensor& x = ctx->input(0);
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    if (x.NumElements() == 0) return;
    const int64_t N = x.dim_size(0), H = x.dim_size(1), W = x.dim_size(2), C = x.dim_size(3);
    const float* xd = x.flat<float>().data();
    const float* sd = ctx->input(1).flat<float>().data();
    const float* bd = ctx->input(2).flat<float>().data();
    float* yd = y->flat<float>().data();
    const int64_t c8 = C / 8 * 8;
    const __m256i tail = TailMask(static_cast<int>(C - c8));
    // One unit per image row.
    WithAct(act_, [&](auto kind) {
      constexpr Act act = decltype(kind)::value;
      ParallelFor(ctx, N * H, W * C * 8, [&](int64_t begin, int64_t end) {
        for (int64_t u = begin; u < end; ++u) {
          const int64_t n = u / H;
          const float* a = sd + n * C;
          const float* b = bd + n * C;
          const float* xr = xd + u * W * C;
          float* yr = yd + u * W * C;
          for (int64_t w = 0; w < W; ++w, xr += C, yr += C) {
            for (int64_t c = 0; c < C; c += 8) {
              const bool full = c < c8;
              __m256 v = Activate(act, _mm256_fmadd_ps(Load(xr + c, full, tail),
                                                       Load(a + c, full, tail),
                                                       Load(b + c, full, tail)), nullptr);
              if (ps != nullptr)
                v = _mm256_fmadd_ps(v, Load(ps + c, full, tail), Load(pb + c, full, tail));
              Store(yr + c, v, full, tail);
            }
          }
        }
      });
    });
  }
};

class ScaleShiftActivationGradOp : public ScaleShiftBase {
 public:
  using ScaleShiftBase::ScaleShiftBase;

  void Compute(OpKernelContext* ctx) override {
    const float *ps = nullptr, *pb = nullptr;
    if (!CheckInputs(ctx, &ps, &pb)) return;
    const Tensor& x = ctx->input(0);
    const int num_post = ps == nullptr ? 0 : 2;
    const Tensor& dy = ctx->input(3 + num_post);
    OP_REQUIRES(ctx, dy.shape() == x.shape(),
                InvalidArgument("scale_shift_activation gradient: dy ",
                                dy.shape().DebugString(), " must have x's shape ",
                                x.shape().DebugString()));
    Tensor *dx = nullptr, *dscale = nullptr, *dshift = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, ctx->input(1).shape(), &dscale));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, ctx->input(2).shape(), &dshift));
    const int64_t N = x.dim_size(0), H = x.dim_size(1), W = x.dim_size(2), C = x.dim_size(3);
    tensorflow::OpOutputList dpost;
    OP_REQUIRES_OK(ctx, ctx->output_list("dpost", &dpost));
    // Per-example sums of dz a and dz for the post affine, added over N at the end.
    std::vector<float> post_sums(num_post > 0 ? 2 * N * C : 0, 0.0f);
    const float* xd = x.flat<float>().data();
    const float* sd = ctx->input(1).flat<float>().data();
    const float* bd = ctx->input(2).flat<float>().data();
    const float* dyd = dy.flat<float>().data();
    float* dxd = dx->flat<float>().data();
    float* dsd = dscale->flat<float>().data();
    float* dbd = dshift->flat<float>().data();
    const int64_t c8 = C / 8 * 8, cpad = (C + 7) / 8 * 8;
    const __m256i tail = TailMask(static_cast<int>(C - c8));
    // One unit per example, so each owns its rows of dscale and dshift (no reduction).
    WithAct(act_, [&](auto kind) {
      constexpr Act act = decltype(kind)::value;
      ParallelFor(ctx, N, H * W * C * 12, [&](int64_t begin, int64_t end) {
        std::vector<float> acc(4 * cpad);
        for (int64_t n = begin; n < end; ++n) {
          std::fill(acc.begin(), acc.end(), 0.0f);
          float* as = acc.data();
          float* ab = acc.data() + cpad;
          float* aps = acc.data() + 2 * cpad;
          float* apb = acc.data() + 3 * cpad;
          const float* a = sd + n * C;
          const float* b = bd + n * C;
          const int64_t base = n * H * W * C;
          for (int64_t p = 0; p < H * W; ++p) {
            const float* xp = xd + base + p * C;
            const float* dyp = dyd + base + p * C;
            float* dxp = dxd + base + p * C;
            for (int64_t c = 0; c < cpad; c += 8) {
              const bool full = c < c8;
              const __m256 xv = Load(xp + c, full, tail);
              const __m256 av = Load(a + c, full, tail);
              __m256 gv = Load(dyp + c, full, tail);
              __m256 d;
              const __m256 yv =
                  Activate(act, _mm256_fmadd_ps(xv, av, Load(b + c, full, tail)), &d);
              if (ps != nullptr) {  // dz -> da = dz post_scale; sums for the post affine
                _mm256_storeu_ps(aps + c, _mm256_fmadd_ps(gv, yv, _mm256_loadu_ps(aps + c)));
                _mm256_storeu_ps(apb + c, _mm256_add_ps(gv, _mm256_loadu_ps(apb + c)));
                gv = _mm256_mul_ps(gv, Load(ps + c, full, tail));
              }
              const __m256 dp = _mm256_mul_ps(gv, d);
              Store(dxp + c, _mm256_mul_ps(dp, av), full, tail);
              _mm256_storeu_ps(as + c, _mm256_fmadd_ps(dp, xv, _mm256_loadu_ps(as + c)));
              _mm256_storeu_ps(ab + c, _mm256_add_ps(dp, _mm256_loadu_ps(ab + c)));
            }
          }
          std::copy(as, as + C, dsd + n * C);
          std::copy(ab, ab + C, dbd + n * C);
          if (ps != nullptr) {
            std::copy(aps, aps + C, &post_sums[n * C]);
            std::copy(apb, apb + C, &post_sums[(N + n) * C]);
          }
        }
      });
    });
    for (int i = 0; i < num_post; ++i) {
      Tensor* out = nullptr;
      OP_REQUIRES_OK(ctx, dpost.allocate(i, TensorShape({C}), &out));
      float* od = out->flat<float>().data();
      std::fill(od, od + C, 0.0f);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < C; ++c) od[c] += post_sums[(i * N + n) * C + c];
    }
  }
};

// Lines still to prefetch into L2 while a run of pixels is summed: [next, end),
// ``per_pixel`` of them per pixel step.
struct Prefetch {
  const char* next;
  const char* end;
  int per_pixel;
};

// Adds the sums of v = x - shift and of v^2 over pixels [p0, p1) of one image (x: the
// image, C channels per pixel), for the NB vectors of 8 channels from c, to total
// (float64: sums at [c], squares at [cpad + c]). The sums stay in registers over the
// pixels, in float32, and go to float64 once per call.
template <int NB, bool kFull>
inline void MomentsBlock(const float* x, int64_t C, int64_t p0, int64_t p1, int64_t c,
                         const float* shift, int64_t cpad, __m256i tail, double* total,
                         Prefetch* pf) {
  __m256 s[NB], q[NB], k[NB];
  for (int b = 0; b < NB; ++b) {
    s[b] = q[b] = _mm256_setzero_ps();
    k[b] = _mm256_loadu_ps(shift + c + 8 * b);
  }
  for (int64_t p = p0; p < p1; ++p) {
    for (int i = 0; i < pf->per_pixel && pf->next < pf->end; ++i, pf->next += 64)
      _mm_prefetch(pf->next, _MM_HINT_T1);
    const float* xp = x + p * C + c;
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) {
      const __m256 v = _mm256_sub_ps(Load(xp + 8 * b, kFull, tail), k[b]);
      s[b] = _mm256_add_ps(s[b], v);
      q[b] = _mm256_fmadd_ps(v, v, q[b]);
    }
  }
  for (int b = 0; b < NB; ++b) {
    double* ts = total + c + 8 * b;
    double* tq = total + cpad + c + 8 * b;
    _mm256_storeu_pd(ts, _mm256_add_pd(_mm256_loadu_pd(ts),
                                       _mm256_cvtps_pd(_mm256_castps256_ps128(s[b]))));
    _mm256_storeu_pd(ts + 4, _mm256_add_pd(_mm256_loadu_pd(ts + 4),
                                           _mm256_cvtps_pd(_mm256_extractf128_ps(s[b], 1))));
    _mm256_storeu_pd(tq, _mm256_add_pd(_mm256_loadu_pd(tq),
                                       _mm256_cvtps_pd(_mm256_castps256_ps128(q[b]))));
    _mm256_storeu_pd(tq + 4, _mm256_add_pd(_mm256_loadu_pd(tq + 4),
                                           _mm256_cvtps_pd(_mm256_extractf128_ps(q[b], 1))));
  }
}

class ChannelMomentsOp : public NormOpBase {
 public:
  using NormOpBase::NormOpBase;

  void Compute(OpKernelContext* ctx) override {
    if (!CheckImage(ctx, "channel_moments")) return;
    const Tensor& x = ctx->input(0);
    const int64_t N = x.dim_size(0), H = x.dim_size(1), W = x.dim_size(2), C = x.dim_size(3);
    Tensor *mean = nullptr, *variance = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({N, C}), &mean));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({N, C}), &variance));
    if (ctx->num_outputs() == 3) ctx->set_output(2, x);
    OP_REQUIRES(ctx, H * W > 0 || N * C == 0,
                InvalidArgument("channel_moments: empty image ", x.shape().DebugString()));
    const float* xd = x.flat<float>().data();
    float* md = mean->flat<float>().data();
    float* vd = variance->flat<float>().data();
    const int64_t c8 = C / 8 * 8, cpad = (C + 7) / 8 * 8, HW = H * W;
    const __m256i tail = TailMask(static_cast<int>(C - c8));
    const double inv_hw = 1.0 / static_cast<double>(std::max<int64_t>(HW, 1));
    // Each image's pixels in runs of at most 64 (the float32 part of each sum) whose data
    // fit in 32 KB (L1); within a run, each block of up to 32 channels keeps its sums in
    // registers over the run's pixels, and the next run's lines are prefetched into L2
    // as it goes, instead of sums through memory at every pixel.
    const int64_t run = std::clamp<int64_t>(8192 / std::max<int64_t>(C, 1), 1, 64);
    const int64_t blocks = c8 / 32 + (c8 % 32) / 8 + (c8 < C ? 1 : 0);
    ParallelFor(ctx, N, HW * C * 3, [&](int64_t begin, int64_t end) {
      std::vector<float> shift(cpad, 0.0f);
      std::vector<double> total(2 * cpad);
      for (int64_t n = begin; n < end; ++n) {
        const float* xn = xd + n * HW * C;
        std::copy(xn, xn + C, shift.begin());  // K: the first pixel
        std::fill(total.begin(), total.end(), 0.0);
        for (int64_t p0 = 0; p0 < HW; p0 += run) {
          const int64_t p1 = std::min(HW, p0 + run);
          // The next run: the rest of this image's, or the next image's first.
          const float* next = p1 < HW ? xn + p1 * C : (n + 1 < end ? xn + HW * C : nullptr);
          const int64_t lines =
              next ? (std::min(run, p1 < HW ? HW - p1 : HW) * C * 4 + 63) / 64 : 0;
          const int64_t steps = blocks * (p1 - p0);
          Prefetch pf{reinterpret_cast<const char*>(next),
                      reinterpret_cast<const char*>(next) + lines * 64,
                      static_cast<int>(steps > 0 ? (lines + steps - 1) / steps : 0)};
          const float* k = shift.data();
          int64_t c = 0;
          for (; c + 32 <= c8; c += 32)
            MomentsBlock<4, true>(xn, C, p0, p1, c, k, cpad, tail, total.data(), &pf);
          for (; c < c8; c += 8)
            MomentsBlock<1, true>(xn, C, p0, p1, c, k, cpad, tail, total.data(), &pf);
          if (c8 < C)
            MomentsBlock<1, false>(xn, C, p0, p1, c8, k, cpad, tail, total.data(), &pf);
        }
        for (int64_t c = 0; c < C; ++c) {
          const double d = total[c] * inv_hw;  // mean - K
          md[n * C + c] = static_cast<float>(shift[c] + d);
          vd[n * C + c] = static_cast<float>(std::max(total[cpad + c] * inv_hw - d * d, 0.0));
        }
      }
    });
  }
};

class ChannelMomentsGradOp : public NormOpBase {
 public:
  using NormOpBase::NormOpBase;

  void Compute(OpKernelContext* ctx) override {
    if (!CheckImage(ctx, "channel_moments gradient")) return;
    const Tensor& x = ctx->input(0);
    const int64_t N = x.dim_size(0), H = x.dim_size(1), W = x.dim_size(2), C = x.dim_size(3);
    static const char* const kNames[] = {"", "mean", "dmean", "dvariance"};
    for (int i = 1; i <= 3; ++i)
      OP_REQUIRES(ctx, ctx->input(i).shape() == TensorShape({N, C}),
                  InvalidArgument("channel_moments gradient: ", kNames[i], " must be [N, C] = [",
                                  N, ", ", C, "], got ", ctx->input(i).shape().DebugString()));
    // With an addend (the gradient reaching x through ChannelMomentsThrough's third
    // output), dx = addend + the moments' share, written over the addend where TensorFlow
    // lets the buffer go: one pass instead of a second full-size tensor and an AddN.
    OP_REQUIRES(ctx, ctx->num_inputs() <= 5,
                InvalidArgument("channel_moments gradient: at most one addend"));
    const bool add = ctx->num_inputs() == 5;
    OP_REQUIRES(ctx, !add || ctx->input(4).shape() == x.shape(),
                InvalidArgument("channel_moments gradient: addend must have x's shape ",
                                x.shape().DebugString(), ", got ",
                                ctx->input(4).shape().DebugString()));
    Tensor* dx = nullptr;
    if (add)
      OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({4}, 0, x.shape(), &dx));
    else
      OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx));
    if (x.NumElements() == 0) return;
    const float* xd = x.flat<float>().data();
    const float* addd = add ? ctx->input(4).flat<float>().data() : nullptr;
    const float* mnd = ctx->input(1).flat<float>().data();
    const float* dmd = ctx->input(2).flat<float>().data();
    const float* dvd = ctx->input(3).flat<float>().data();
    float* dxd = dx->flat<float>().data();
    const int64_t c8 = C / 8 * 8, cpad = (C + 7) / 8 * 8;
    const __m256i tail = TailMask(static_cast<int>(C - c8));
    const float inv_hw = 1.0f / static_cast<float>(H * W);
    // One unit per image row: dx = x b + a with b = 2 dvariance / HW and
    // a = dmean / HW - mean b, per example and channel.
    ParallelFor(ctx, N * H, W * C * 3, [&](int64_t begin, int64_t end) {
      std::vector<float> a(cpad), b(cpad);
      int64_t current = -1;
      for (int64_t u = begin; u < end; ++u) {
        const int64_t n = u / H;
        if (n != current) {
          for (int64_t c = 0; c < C; ++c) {
            b[c] = 2.0f * dvd[n * C + c] * inv_hw;
            a[c] = dmd[n * C + c] * inv_hw - mnd[n * C + c] * b[c];
          }
          current = n;
        }
        const float* xr = xd + u * W * C;
        const float* ar = add ? addd + u * W * C : nullptr;
        float* dr = dxd + u * W * C;
        for (int64_t w = 0; w < W; ++w, xr += C, dr += C) {
          for (int64_t c = 0; c < C; c += 8) {
            const bool full = c < c8;
            __m256 v = _mm256_fmadd_ps(Load(xr + c, full, tail), _mm256_loadu_ps(&b[c]),
                                       _mm256_loadu_ps(&a[c]));
            if (add) v = _mm256_add_ps(v, Load(ar + w * C + c, full, tail));
            Store(dr + c, v, full, tail);
          }
        }
      }
    });
  }
};

// Shapes of the moments ops: mean and variance [N, C], and x_through (if the op has it)
// x's shape.
absl::Status MomentsShape(InferenceContext* c) {
  ShapeHandle x;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
  ShapeHandle nc = c->MakeShape({c->Dim(x, 0), c->Dim(x, 3)});
  c->set_output(0, nc);
  c->set_output(1, nc);
  if (c->num_outputs() == 3) c->set_output(2, x);
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("EfficientnetIpuChannelMoments")
    .Input("x: float")
    .Output("mean: float")
    .Output("variance: float")
    .SetShapeFn(MomentsShape);

// ChannelMoments that also returns x itself (the same buffer): the normalization's
// scale-shift-activation reads x from here, so that x has one consumer and the two
// gradients that reach it meet in ChannelMomentsGrad's addend instead of an AddN
//.
REGISTER_OP("EfficientnetIpuChannelMomentsThrough")
    .Input("x: float")
    .Output("mean: float")
    .Output("variance: float")
    .Output("x_through: float")
    .SetShapeFn(MomentsShape);

REGISTER_OP("EfficientnetIpuChannelMomentsGrad")
    .Input("x: float")
    .Input("mean: float")
    .Input("dmean: float")
    .Input("dvariance: float")
    .Input("addend: num_addend * float")
    .Output("dx: float")
    .Attr("num_addend: int >= 0 = 0")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("EfficientnetIpuChannelMoments").Device(DEVICE_CPU),
                        ChannelMomentsOp);
REGISTER_KERNEL_BUILDER(Name("EfficientnetIpuChannelMomentsThrough").Device(DEVICE_CPU),
                        ChannelMomentsOp);
REGISTER_KERNEL_BUILDER(Name("EfficientnetIpuChannelMomentsGrad").Device(DEVICE_CPU),
                        ChannelMomentsGradOp);

REGISTER_OP("EfficientnetIpuScaleShiftActivation")
    .Input("x: float")
    .Input("scale: float")
    .Input("shift: float")
    .Input("post: num_post * float")
    .Output("y: float")
    .Attr("activation: {'swish', 'relu', 'gelu', 'linear'}")
    .Attr("num_post: int >= 0")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &x));
      c->set_output(0, x);
      return absl::OkStatus();
    });

REGISTER_OP("EfficientnetIpuScaleShiftActivationGrad")
    .Input("x: float")
    .Input("scale: float")
    .Input("shift: float")
    .Input("post: num_post * float")
    .Input("dy: float")
    .Output("dx: float")
    .Output("dscale: float")
    .Output("dshift: float")
    .Output("dpost: num_post * float")
    .Attr("activation: {'swish', 'relu', 'gelu', 'linear'}")
    .Attr("num_post: int >= 0")
    .SetShapeFn([](InferenceContext* c) {
      for (int i = 0; i < c->num_outputs(); ++i) c->set_output(i, c->input(i));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("EfficientnetIpuScaleShiftActivation").Device(DEVICE_CPU),
                        ScaleShiftActivationOp);
REGISTER_KERNEL_BUILDER(Name("EfficientnetIpuScaleShiftActivationGrad").Device(DEVICE_CPU),
                        ScaleShiftActivationGradOp);
