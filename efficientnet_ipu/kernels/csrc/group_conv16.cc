// Group convolution with 16 input and 16 output channels per group (paper 001's G16),
// NHWC, float32, on x86-64 CPUs with AVX2 and FMA: forward, gradient with respect to the
// input and gradient with respect to the kernel, as three TensorFlow ops.
//
// Why: on AVX2 CPUs oneDNN runs 16-channel groups at 40-60 % of its dense-convolution
// FLOP rate. Here each group is a 16x16 matrix per kernel tap, so a block of R
// output pixels x 16 output channels fits in 2R of the 16 AVX2 registers and every
// broadcast input value feeds two fused multiply-adds.
//
// With AVX-512, 3x3 kernels at stride 1 (SAME) run the forward and the input gradient as
// Winograd F(2x2, 3x3) (WinogradPass) on images of at least 100 pixels, and the kernel
// gradient too from 400 pixels: 2.25x fewer multiply-adds. 5x5 kernels at stride 1
// (SAME) run the forward and the input gradient as Winograd F(2x2, 5x5) from 100 pixels:
// 2.8x fewer. Where Winograd applies it goes before the image-stacked blocks (StackSize).
//
// Layouts (as tf.nn.conv2d): input [N, H, W, C], filter [k, k, 16, C] (filter[:, :, i, o]
// reads input channel (o / 16) * 16 + i), output [N, OH, OW, C]. All three ops take
// input_scale [C] and the forward op and the kernel gradient input_offset [C]: they
// convolve (input + input_offset) * input_scale (zero padding stays zero), so that the
// proxy-normalized activation of paper 002 eq. 7 (subtract the proxy mean, divide by the
// proxy std) before the convolution costs no pass and no op of its own. The scale is
// multiplied into the filter as the ops pack it; the kernel gradient's second output is
// the scale's gradient, and the input gradient's second output, its sum over H and W
// [N, C], gives the offset's. Padding "SAME" or "VALID" with TensorFlow's rule (SAME:
// pad_before = pad_total / 2), square stride s >= 1.
// Compiled and loaded by efficientnet_ipu/kernels/library.py.

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/platform/threadpool.h"
#include "op_util.h"

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::errors::InvalidArgument;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

namespace {

using efficientnet_ipu::OutputSize;
using efficientnet_ipu::ParallelFor;
using efficientnet_ipu::ReadStridePadding;
using efficientnet_ipu::InputSizesShapeFn;
using efficientnet_ipu::ShapeFromSizes;
using efficientnet_ipu::UseAvx512;

constexpr int kG = 16;  // channels per group
constexpr int kMaxR = 6;  // AVX2: output pixels per register block (12 accumulators)
constexpr int kMaxR512 = 14;  // AVX-512: output pixels per register block (14 accumulators)

// Cache lines to bring into L2 a few at a time from inside the blocks' loops: line i is
// base0 + i * stride for i < n0, else base1 + (i - n0) * stride. The kernel gradient
// calls Tick(q) for pixel q of a block's row, which issues the next line when
// (q & mask) == 0; the forward's and the input gradient's blocks call Every() for each
// pair of input channels of a tap, which issues one every ``interval`` calls.
struct PrefetchStream {
  const char* base0 = nullptr;
  const char* base1 = nullptr;
  int64_t stride = 0, i = 0, n0 = 0, n = 0;
  int mask = 0;
  int interval = 1 << 30, countdown = 1 << 30;

  // The lines of a group's 16 channels (one line per pixel, C floats apart) of na pixels
  // from a, then nb pixels from b.
  static PrefetchStream Pixels(const float* a, int64_t na, const float* b, int64_t nb,
                               int C) {
    PrefetchStream pf;
    pf.base0 = reinterpret_cast<const char*>(a);
    pf.base1 = reinterpret_cast<const char*>(b);
    pf.stride = static_cast<int64_t>(C) * sizeof(float);
    pf.n0 = na;
    pf.n = na + nb;
    return pf;
  }
  // One line every ``calls / lines`` calls of Every() (at least 1): ``lines`` spread
  // over ``calls``.
  void Spread(int64_t calls, int64_t lines) {
    interval = countdown =
        static_cast<int>(std::max<int64_t>(1, calls / std::max<int64_t>(1, lines)));
  }

  inline void Issue() {
    if (i >= n) return;
    _mm_prefetch(i < n0 ? base0 + i * stride : base1 + (i - n0) * stride, _MM_HINT_T1);
    ++i;
  }
  inline void Tick(int q) {
    if ((q & mask) == 0) Issue();
  }
  inline void Every() {
    if (--countdown != 0) return;
    countdown = interval;
    Issue();
  }
};

// acc[r] (16 floats) = sum over taps t and channels i of src(t, r)[i] * w[t][i][0:16],
// where src(t, r) = base + offs[t] + r * rs; stores acc[r] at dst + r * dstride, and if
// ``sum`` is not null adds the sum over r of acc[r] to sum[0:16] (the input gradient's sum
// over H and W, taken from the registers instead of reading the stored rows back). Calls
// pf->Every() once per 2 input channels of each tap.
template <int R>
inline void Block(const float* base, const int* offs, const float* const* w, int ntaps,
                  int rs, float* dst, int dstride, float* sum, PrefetchStream* pf) {
  __m256 a0[R], a1[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm256_setzero_ps();
  for (int t = 0; t < ntaps; ++t) {
    const float* s = base + offs[t];
    const float* wt = w[t];
#pragma GCC unroll 2
    for (int i = 0; i < kG; ++i) {
      if (i % 2 == 0) pf->Every();
      const __m256 w0 = _mm256_loadu_ps(wt + kG * i);
      const __m256 w1 = _mm256_loadu_ps(wt + kG * i + 8);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m256 b = _mm256_broadcast_ss(s + r * rs + i);
        a0[r] = _mm256_fmadd_ps(b, w0, a0[r]);
        a1[r] = _mm256_fmadd_ps(b, w1, a1[r]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    _mm256_storeu_ps(dst + r * dstride, a0[r]);
    _mm256_storeu_ps(dst + r * dstride + 8, a1[r]);
  }
  if (sum != nullptr) {
    __m256 s0 = _mm256_loadu_ps(sum), s1 = _mm256_loadu_ps(sum + 8);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      s0 = _mm256_add_ps(s0, a0[r]);
      s1 = _mm256_add_ps(s1, a1[r]);
    }
    _mm256_storeu_ps(sum, s0);
    _mm256_storeu_ps(sum + 8, s1);
  }
}

// A register block of r output pixels (1 <= r <= kMaxR): kBlocks[r], and kBlocks512[.][r]
// (r <= kMaxR512) for the AVX-512 version below.
using BlockFn = void (*)(const float* base, const int* offs, const float* const* w,
                         int ntaps, int rs, float* dst, int dstride, float* sum,
                         PrefetchStream* pf);
constexpr BlockFn kBlocks[kMaxR + 1] = {nullptr, Block<1>, Block<2>, Block<3>,
                                        Block<4>, Block<5>, Block<6>};

#pragma GCC push_options
#pragma GCC target("avx512f")
// Block with AVX-512: one register per output pixel of the block (16 channels). A
// block of fewer than 8 pixels keeps two accumulators per pixel (even and odd input
// channels, added at the end), so that at least 8 independent chains of fused
// multiply-adds hide their latency: the 5 and 7 pixel rows of B0's last stages at 160
// and 224 px.
// RS > 0 fixes the pixel stride rs at compile time (16 or 32 floats: stride 1 or 2 in the
// forward, and every gradient block), so that every broadcast address is the row pointer
// plus a constant. With the stride known only at run time, the compiler keeps the R row
// pointers in vector registers and moves them back with vmovq on the FMA ports (11 moves
// per 12 FMAs at R = 12).
template <int R, int RS>
inline void Block512(const float* base, const int* offs, const float* const* w, int ntaps,
                     int rs_arg, float* dst, int dstride, float* sum, PrefetchStream* pf) {
  const int rs = RS > 0 ? RS : rs_arg;
  constexpr int kSplit = R < 8 ? 2 : 1;
  __m512 a[kSplit][R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) a[0][r] = a[kSplit - 1][r] = _mm512_setzero_ps();
  for (int t = 0; t < ntaps; ++t) {
    const float* s = base + offs[t];
    const float* wt = w[t];
#pragma GCC unroll 2
    for (int i = 0; i < kG; i += 2) {
      pf->Every();
      const __m512 w0 = _mm512_loadu_ps(wt + kG * i);
      const __m512 w1 = _mm512_loadu_ps(wt + kG * (i + 1));
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r)
        a[0][r] = _mm512_fmadd_ps(_mm512_set1_ps(s[r * rs + i]), w0, a[0][r]);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r)
        a[kSplit - 1][r] =
            _mm512_fmadd_ps(_mm512_set1_ps(s[r * rs + i + 1]), w1, a[kSplit - 1][r]);
    }
  }
  __m512 total = sum != nullptr ? _mm512_loadu_ps(sum) : _mm512_setzero_ps();
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    const __m512 v = kSplit == 2 ? _mm512_add_ps(a[0][r], a[kSplit - 1][r]) : a[0][r];
    _mm512_storeu_ps(dst + r * dstride, v);
    if (sum != nullptr) total = _mm512_add_ps(total, v);
  }
  if (sum != nullptr) _mm512_storeu_ps(sum, total);
}

#define EFFICIENTNET_IPU_BLOCKS512(RS)                                                   \
  {nullptr,           Block512<1, RS>,  Block512<2, RS>,  Block512<3, RS>,  Block512<4, RS>, \
   Block512<5, RS>,  Block512<6, RS>,  Block512<7, RS>,  Block512<8, RS>,  Block512<9, RS>, \
   Block512<10, RS>, Block512<11, RS>, Block512<12, RS>, Block512<13, RS>, Block512<14, RS>}
// kBlocks512[k][r]: r pixels, pixel stride any (k = 0, given at run time), 16 floats
// (k = 1) or 32 floats (k = 2).
constexpr BlockFn kBlocks512[3][kMaxR512 + 1] = {EFFICIENTNET_IPU_BLOCKS512(0),
                                                 EFFICIENTNET_IPU_BLOCKS512(16),
                                                 EFFICIENTNET_IPU_BLOCKS512(32)};
#undef EFFICIENTNET_IPU_BLOCKS512

// The pixels one kernel-gradient block sums over, for one tap and one group: ``images``
// images of ``rows`` rows of ``count`` pixels. Input pixel (m, y, q) is at
// x + m * xis + y * xrs + q * xs and its output gradient at dy + m * dis + y * drs + q * ds
// (floats; the 16 channels of the group follow each).
struct WeightSpan {
  const float* x;
  int64_t xs, xrs, xis;
  const float* dy;
  int64_t ds, drs, dis;
  int images, rows, count;
};

// The kernel gradient's block (WeightBlock below) with AVX-512: all 16 input channels
// of a group in one pass, one register each.
__attribute__((noinline)) void WeightBlock512(const WeightSpan& s, float* dw,
                                              PrefetchStream* pf) {
  __m512 a[kG];
#pragma GCC unroll 16
  for (int i = 0; i < kG; ++i) a[i] = _mm512_setzero_ps();
  for (int m = 0; m < s.images; ++m)
    for (int y = 0; y < s.rows; ++y) {
      const float* xy = s.x + m * s.xis + y * s.xrs;
      const float* dyy = s.dy + m * s.dis + y * s.drs;
      for (int q = 0; q < s.count; ++q) {
        const __m512 d = _mm512_loadu_ps(dyy + q * s.ds);
        const float* xq = xy + q * s.xs;
        pf->Tick(q);
#pragma GCC unroll 16
        for (int i = 0; i < kG; ++i) a[i] = _mm512_fmadd_ps(_mm512_set1_ps(xq[i]), d, a[i]);
      }
    }
#pragma GCC unroll 16
  for (int i = 0; i < kG; ++i)
    _mm512_storeu_ps(dw + i * kG, _mm512_add_ps(_mm512_loadu_ps(dw + i * kG), a[i]));
}

// Winograd F(2x2, 3x3) (Lavin and Gray, "Fast Algorithms for Convolutional Neural
// Networks", CVPR 2016, arXiv:1509.09308, their F(2x2, 3x3)), for 3x3 kernels at stride 1
// with SAME padding, in the forward and the input gradient: a 2x2 tile of outputs is
// Y = A^T [U . V] A, with U = G w G^T (WinogradFilter) and V = B^T d B for the 4x4 tile d
// of inputs around it, where (.) is, at each of the 16 positions of the 4x4 tile, a
// 16x16 matrix product over the group's channels (WinogradProduct):
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],
//   A^T = [1 1 1 0; 0 1 -1 -1].
// 256 multiply-adds per tile and output channel vector instead of the direct
// convolution's 576, plus 56 additions for the two transforms. The tiles go in chunks of
// up to kMaxR512 (a register block): V and M hold a chunk, position p's 16-channel
// vectors at p * kTileStride + tile * 16, and M overwrites V. The results differ from the
// direct sums by float32 round-off only (relative 5e-7 on [32, 28, 28, 240], 1.4e-6 in the
// kernel gradient's sums over 32 x 28 x 28 pixels).
constexpr int kTileStride = kMaxR512 * kG;  // floats between positions in V and M
// Winograd5Applies from 10x10 images, ahead of the image-stacked blocks (StackSize). At
// 7 px the tiles waste too much (16 tiles, 64 outputs for 49), so the direct blocks stay.
constexpr int kWinograd5MinPixels = 100;
constexpr float kWinogradG[4][3] = {{1.0f, 0.0f, 0.0f}, {0.5f, 0.5f, 0.5f},
                                    {0.5f, -0.5f, 0.5f}, {0.0f, 0.0f, 1.0f}};
constexpr float kWinogradAT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};

// sum_i c[i] x[i] for a row c of a transform matrix: with c a constant row and the loop
// unrolled, the compiler keeps only the nonzero terms, a 1 or -1 as an add or subtract.
template <int N>
inline __m512 Combine(const float (&c)[N], const __m512* x) {
  __m512 acc = _mm512_setzero_ps();
  bool first = true;
#pragma GCC unroll 8
  for (int i = 0; i < N; ++i) {
    if (c[i] == 0.0f) continue;
    if (first) {
      acc = c[i] == 1.0f ? x[i] : _mm512_mul_ps(_mm512_set1_ps(c[i]), x[i]);
    } else if (c[i] == 1.0f) {
      acc = _mm512_add_ps(acc, x[i]);
    } else if (c[i] == -1.0f) {
      acc = _mm512_sub_ps(acc, x[i]);
    } else {
      acc = _mm512_fmadd_ps(_mm512_set1_ps(c[i]), x[i], acc);
    }
    first = false;
  }
  return acc;
}

// V = B^T d B for tiles t0 .. t0 + r - 1 (tile t at tile row a = t / tiles_w, column
// b = t % tiles_w): d[u][v] is pixel (2a - 1 + u, 2b - 1 + v) of the image plane src
// ([H, W, C] at a group's first channel), plus offset (16 floats, or null), and zero
// outside the image. Inside it, the offset's constant 4x4 tile adds only to position
// (1, 1): 4 x offset.
void WinogradInput(const float* src, int H, int W, int C, const float* offset, int tiles_w,
                   int t0, int r, float* V) {
  const __m512 off = offset != nullptr ? _mm512_loadu_ps(offset) : _mm512_setzero_ps();
  const __m512 off4 = _mm512_mul_ps(off, _mm512_set1_ps(4.0f));
  for (int j = 0; j < r; ++j) {
    const int t = t0 + j, a = t / tiles_w, b = t % tiles_w;
    const int y0 = 2 * a - 1, x0 = 2 * b - 1;
    const float* p = src + (static_cast<int64_t>(y0) * W + x0) * C;
    const bool inside = y0 >= 0 && y0 + 3 < H && x0 >= 0 && x0 + 3 < W;
    __m512 d[4][4], e[4][4];
    if (inside) {
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u)
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v)
          d[u][v] = _mm512_loadu_ps(p + (static_cast<int64_t>(u) * W + v) * C);
    } else {
      for (int u = 0; u < 4; ++u)
        for (int v = 0; v < 4; ++v)
          d[u][v] = y0 + u >= 0 && y0 + u < H && x0 + v >= 0 && x0 + v < W
                        ? _mm512_add_ps(
                              _mm512_loadu_ps(p + (static_cast<int64_t>(u) * W + v) * C), off)
                        : _mm512_setzero_ps();
    }
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {  // B^T d: rows
      e[0][v] = _mm512_sub_ps(d[0][v], d[2][v]);
      e[1][v] = _mm512_add_ps(d[1][v], d[2][v]);
      e[2][v] = _mm512_sub_ps(d[2][v], d[1][v]);
      e[3][v] = _mm512_sub_ps(d[1][v], d[3][v]);
    }
    float* out = V + j * kG;
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) {  // (B^T d) B: columns
      __m512 v1 = _mm512_add_ps(e[u][1], e[u][2]);
      if (u == 1 && inside) v1 = _mm512_add_ps(v1, off4);
      _mm512_storeu_ps(out + (4 * u + 0) * kTileStride, _mm512_sub_ps(e[u][0], e[u][2]));
      _mm512_storeu_ps(out + (4 * u + 1) * kTileStride, v1);
      _mm512_storeu_ps(out + (4 * u + 2) * kTileStride, _mm512_sub_ps(e[u][2], e[u][1]));
      _mm512_storeu_ps(out + (4 * u + 3) * kTileStride, _mm512_sub_ps(e[u][1], e[u][3]));
    }
  }
}

// M = V . U in place: per position p, the chunk's R tiles (rows of 16 channels) times U's
// 16x16 matrix of p. Calls pf->Every() once per 2 input channels and position. Before
// position p < R it asks for tile p's output lines, lines[4p .. 4p + 3] (null: outside
// the image), with intent to write (PREFETCHW): WinogradOutput stores 4 lines per tile
// in a burst, and where each store waited on its line the burst stalled the pass. On
// [32, 28, 28, 240], forward + backward, the three ops with the output in memory: 1.19x;
// each forward with a ReLU after it, 1.25-1.33x the direct blocks at 28-112 px against
// 1.03-1.11x without.
template <int R, int P>
void WinogradProduct(float* VM, const float* U, PrefetchStream* pf, const char* const* lines) {
  for (int p = 0; p < P; ++p) {
    if (p < R) {
#pragma GCC unroll 4
      for (int k = 4 * p; k < 4 * p + 4; ++k)
        if (lines[k] != nullptr) asm volatile("prefetchw %0" : : "m"(*lines[k]));
    }
    // One tap of a block of R "pixels" (tiles) 16 floats apart, stored over its input.
    const int tap = 0;
    const float* w = U + p * kG * kG;
    float* v = VM + p * kTileStride;
    Block512<R, kG>(v, &tap, &w, 1, kG, v, kG, nullptr, pf);
  }
}
using ProductFn = void (*)(float*, const float*, PrefetchStream*, const char* const*);
using ProductTable = std::array<ProductFn, kMaxR512 + 1>;  // [r]: blocks of r tiles

template <int P, size_t... R>
constexpr ProductTable MakeProducts(std::index_sequence<R...>) {
  return {nullptr, WinogradProduct<static_cast<int>(R) + 1, P>...};
}
constexpr ProductTable kProducts = MakeProducts<16>(std::make_index_sequence<kMaxR512>());

// Y = A^T M A for the chunk's tiles (A^T: kAT, 2 x N; N x N positions), stored at
// out + (oh * ow_size + ow) * C for the outputs inside [oh_size, ow_size). If ``sum`` is
// not null, adds the stored outputs to sum[0:16].
template <int N, const float (&kAT)[2][N]>
void WinogradOutput(const float* M, int tiles_w, int t0, int r, int oh_size, int ow_size,
                    int C, float* out, float* sum) {
  __m512 total = sum != nullptr ? _mm512_loadu_ps(sum) : _mm512_setzero_ps();
  for (int j = 0; j < r; ++j) {
    const int t = t0 + j, a = t / tiles_w, b = t % tiles_w;
    const float* m = M + j * kG;
    __m512 s[2][N];
#pragma GCC unroll 6
    for (int v = 0; v < N; ++v) {  // A^T M, one column at a time
      __m512 col[N];
#pragma GCC unroll 6
      for (int i = 0; i < N; ++i) col[i] = _mm512_loadu_ps(m + (N * i + v) * kTileStride);
      s[0][v] = Combine(kAT[0], col);
      s[1][v] = Combine(kAT[1], col);
    }
#pragma GCC unroll 2
    for (int u = 0; u < 2; ++u) {  // (A^T M) A
      const int oh = 2 * a + u;
      if (oh >= oh_size) break;
      float* o = out + (static_cast<int64_t>(oh) * ow_size + 2 * b) * C;
      const __m512 y0 = Combine(kAT[0], s[u]);
      _mm512_storeu_ps(o, y0);
      total = _mm512_add_ps(total, y0);
      if (2 * b + 1 < ow_size) {
        const __m512 y1 = Combine(kAT[1], s[u]);
        _mm512_storeu_ps(o + C, y1);
        total = _mm512_add_ps(total, y1);
      }
    }
  }
  if (sum != nullptr) _mm512_storeu_ps(sum, total);
}

// The kernel gradient's Winograd transforms (F(2x2, 3x3) read backwards: with
// T(d, w, h) = sum_i h_i y_i = sum_p (A h)_p (G w)_p (B^T d)_p, the gradient of a 3x3 tile
// of weights from one 2x2 tile of output gradients h and its 4x4 tile of inputs d is
// G^T [(A h A^T) . (B^T d B)] G, with (.) an outer product over the 16 input and 16 output
// channels at each position). D = A' h A'^T for the chunk's tiles, A' = A
// with its last row's sign turned (A'[3] = [0 1]); the final transform
// (WinogradFilterGradient) puts the sign back. h: the output gradient plane ([OH, OW, C]
// at a group's first channel), zero outside it.
void WinogradGradientInput(const float* dy, int OH, int OW, int C, int tiles_w, int t0,
                           int r, float* D) {
  for (int j = 0; j < r; ++j) {
    const int t = t0 + j, a = t / tiles_w, b = t % tiles_w;
    const float* p = dy + (static_cast<int64_t>(2 * a) * OW + 2 * b) * C;
    const bool right = 2 * b + 1 < OW, down = 2 * a + 1 < OH;
    const __m512 h00 = _mm512_loadu_ps(p);
    const __m512 h01 = right ? _mm512_loadu_ps(p + C) : _mm512_setzero_ps();
    const __m512 h10 =
        down ? _mm512_loadu_ps(p + static_cast<int64_t>(OW) * C) : _mm512_setzero_ps();
    const __m512 h11 = right && down ? _mm512_loadu_ps(p + (static_cast<int64_t>(OW) + 1) * C)
                                     : _mm512_setzero_ps();
    // Rows: A' h, 4 x 2.
    const __m512 e[4][2] = {{h00, h01},
                            {_mm512_add_ps(h00, h10), _mm512_add_ps(h01, h11)},
                            {_mm512_sub_ps(h00, h10), _mm512_sub_ps(h01, h11)},
                            {h10, h11}};
    float* out = D + j * kG;
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) {  // (A' h) A'^T: columns
      _mm512_storeu_ps(out + (4 * u + 0) * kTileStride, e[u][0]);
      _mm512_storeu_ps(out + (4 * u + 1) * kTileStride, _mm512_add_ps(e[u][0], e[u][1]));
      _mm512_storeu_ps(out + (4 * u + 2) * kTileStride, _mm512_sub_ps(e[u][0], e[u][1]));
      _mm512_storeu_ps(out + (4 * u + 3) * kTileStride, e[u][1]);
    }
  }
}

// S[p][i][0:16] += sum over the chunk's R tiles of V[p][tile][i] * D[p][tile][0:16], for
// the 16 positions p (S: [16][16][16]). Calls pf->Every() once per position and tile.
template <int R>
void WinogradOuterProducts(const float* V, const float* D, float* S, PrefetchStream* pf) {
  for (int p = 0; p < 16; ++p) {
    const float* v = V + p * kTileStride;
    const float* d = D + p * kTileStride;
    float* sp = S + p * kG * kG;
    __m512 acc[kG];
#pragma GCC unroll 16
    for (int i = 0; i < kG; ++i) acc[i] = _mm512_loadu_ps(sp + i * kG);
#pragma GCC unroll 2
    for (int j = 0; j < R; ++j) {
      pf->Every();
      const __m512 dj = _mm512_loadu_ps(d + j * kG);
#pragma GCC unroll 16
      for (int i = 0; i < kG; ++i)
        acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(v[j * kG + i]), dj, acc[i]);
    }
#pragma GCC unroll 16
    for (int i = 0; i < kG; ++i) _mm512_storeu_ps(sp + i * kG, acc[i]);
  }
}
using OuterFn = void (*)(const float*, const float*, float*, PrefetchStream*);
constexpr OuterFn kOuters[kMaxR512 + 1] = {
    nullptr, WinogradOuterProducts<1>, WinogradOuterProducts<2>, WinogradOuterProducts<3>,
    WinogradOuterProducts<4>, WinogradOuterProducts<5>, WinogradOuterProducts<6>,
    WinogradOuterProducts<7>, WinogradOuterProducts<8>, WinogradOuterProducts<9>,
    WinogradOuterProducts<10>, WinogradOuterProducts<11>, WinogradOuterProducts<12>,
    WinogradOuterProducts<13>, WinogradOuterProducts<14>};
// Winograd F(2x2, 5x5), the same construction with the interpolation points 0, 1, -1, 2,
// -2 and infinity, for 5x5 kernels at stride 1 with SAME padding, in the forward and the
// input gradient: a 2x2 tile of outputs from the 6x6 tile of inputs around it, with a
// 16x16 matrix product at each of 36 positions. 576 multiply-adds per tile and output
// channel vector against the direct convolution's 1600, plus about 260 for the
// transforms. The kernel gradient keeps the direct blocks.
//   B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0;
//          0 4 0 -5 0 1],
//   G = [1/4 0 0 0 0; -1/6 -1/6 -1/6 -1/6 -1/6; -1/6 1/6 -1/6 1/6 -1/6;
//        1/24 1/12 1/6 1/3 2/3; 1/24 -1/12 1/6 -1/3 2/3; 0 0 0 0 1],
//   A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 1].
constexpr float kWinograd5BT[6][6] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0},
                                      {0, 4, -4, -1, 1, 0}, {0, -2, -1, 2, 1, 0},
                                      {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
constexpr float kWinograd5AT[2][6] = {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 1}};
constexpr float kWinograd5G[6][5] = {{1.0f / 4, 0, 0, 0, 0},
                                     {-1.0f / 6, -1.0f / 6, -1.0f / 6, -1.0f / 6, -1.0f / 6},
                                     {-1.0f / 6, 1.0f / 6, -1.0f / 6, 1.0f / 6, -1.0f / 6},
                                     {1.0f / 24, 1.0f / 12, 1.0f / 6, 1.0f / 3, 2.0f / 3},
                                     {1.0f / 24, -1.0f / 12, 1.0f / 6, -1.0f / 3, 2.0f / 3},
                                     {0, 0, 0, 0, 1}};

// V = B^T d B for tiles t0 .. t0 + r - 1 (as WinogradInput): d[u][v] is pixel
// (2a - 2 + u, 2b - 2 + v) of src plus offset (16 floats, or null) inside the image, zero
// outside it.
void Winograd5Input(const float* src, int H, int W, int C, const float* offset, int tiles_w,
                    int t0, int r, float* V) {
  const __m512 off = offset != nullptr ? _mm512_loadu_ps(offset) : _mm512_setzero_ps();
  alignas(64) float e[6][6][kG];  // B^T d
  for (int j = 0; j < r; ++j) {
    const int t = t0 + j, a = t / tiles_w, b = t % tiles_w;
    const int y0 = 2 * a - 2, x0 = 2 * b - 2;
    const float* p = src + (static_cast<int64_t>(y0) * W + x0) * C;
    const bool inside = y0 >= 0 && y0 + 5 < H && x0 >= 0 && x0 + 5 < W;
#pragma GCC unroll 6
    for (int v = 0; v < 6; ++v) {  // B^T d, one column at a time
      __m512 d[6];
#pragma GCC unroll 6
      for (int u = 0; u < 6; ++u) {
        const bool in = inside || (y0 + u >= 0 && y0 + u < H && x0 + v >= 0 && x0 + v < W);
        d[u] = in ? _mm512_add_ps(_mm512_loadu_ps(p + (static_cast<int64_t>(u) * W + v) * C),
                                  off)
                  : _mm512_setzero_ps();
      }
#pragma GCC unroll 6
      for (int u = 0; u < 6; ++u) _mm512_store_ps(e[u][v], Combine(kWinograd5BT[u], d));
    }
    float* out = V + j * kG;
#pragma GCC unroll 6
    for (int u = 0; u < 6; ++u) {  // (B^T d) B, one row at a time
      __m512 row[6];
#pragma GCC unroll 6
      for (int v = 0; v < 6; ++v) row[v] = _mm512_load_ps(e[u][v]);
#pragma GCC unroll 6
      for (int v = 0; v < 6; ++v)
        _mm512_storeu_ps(out + (6 * u + v) * kTileStride, Combine(kWinograd5BT[v], row));
    }
  }
}

constexpr ProductTable kProducts5 = MakeProducts<36>(std::make_index_sequence<kMaxR512>());

#pragma GCC pop_options

// Copies channels [g*16, g*16+16) of image plane src ([rows, cols, C]) into a
// [rows, width, 16] buffer, columns shifted right by pad_l and zeros around them. offset
// (16 floats, or null) is added to the copied values, not to the zeros: the input of
// conv(x + offset) with zero padding. Whole planes, before their blocks: copying rows
// between the rows of blocks would make every row of blocks wait on the copy's loads
// from memory.
void CopyPlane(const float* src, int rows, int cols, int C, int g, int pad_l, int width,
               const float* offset, float* dst) {
  const __m256 o0 = offset ? _mm256_loadu_ps(offset) : _mm256_setzero_ps();
  const __m256 o1 = offset ? _mm256_loadu_ps(offset + 8) : _mm256_setzero_ps();
  for (int y = 0; y < rows; ++y) {
    const float* s = src + (static_cast<int64_t>(y) * cols) * C + g * kG;
    float* row = dst + static_cast<int64_t>(y) * width * kG;
    std::memset(row, 0, sizeof(float) * pad_l * kG);
    std::memset(row + (pad_l + cols) * kG, 0, sizeof(float) * (width - pad_l - cols) * kG);
    float* d = row + pad_l * kG;
    for (int x = 0; x < cols; ++x) {
      _mm256_storeu_ps(d + x * kG, _mm256_add_ps(_mm256_loadu_ps(s + x * C), o0));
      _mm256_storeu_ps(d + x * kG + 8, _mm256_add_ps(_mm256_loadu_ps(s + x * C + 8), o1));
    }
  }
}

// Copies channels [g*16, g*16+16) of the nb images src, src + rows*cols*C, ... (each
// [rows, cols, C]) into dst as [rows][cols][R][16]: image m's pixel at slot m, so that the
// same pixel of R images lies 16 floats apart. offset (16 floats, or null) is added.
void CopyStacked(const float* src, int nb, int R, int rows, int cols, int C, int g,
                 const float* offset, float* dst) {
  const __m256 o0 = offset ? _mm256_loadu_ps(offset) : _mm256_setzero_ps();
  const __m256 o1 = offset ? _mm256_loadu_ps(offset + 8) : _mm256_setzero_ps();
  const int64_t pixels = static_cast<int64_t>(rows) * cols;
  for (int m = 0; m < nb; ++m) {
    const float* s = src + m * pixels * C + g * kG;
    float* d = dst + m * kG;
    for (int64_t p = 0; p < pixels; ++p) {
      _mm256_storeu_ps(d + p * R * kG, _mm256_add_ps(_mm256_loadu_ps(s + p * C), o0));
      _mm256_storeu_ps(d + p * R * kG + 8, _mm256_add_ps(_mm256_loadu_ps(s + p * C + 8), o1));
    }
  }
}

struct Geometry {
  int N, H, W, C, k, s, OH, OW, pt, pl, groups;
  // Columns of an input plane padded so that every tap of every output column reads
  // inside it (zeros outside the image).
  int PaddedWidth() const { return std::max((OW - 1) * s + k, W + pl); }
  // Floats of one input image ([H, W, C]) and of one output image ([OH, OW, C]).
  int64_t InputImage() const { return static_cast<int64_t>(H) * W * C; }
  int64_t OutputImage() const { return static_cast<int64_t>(OH) * OW * C; }
  // True where tap row kh of output row oh reads an input row inside the image.
  bool RowInside(int oh, int kh) const {
    const int ih = oh * s + kh - pt;
    return ih >= 0 && ih < H;
  }
  // The output columns [*q0, *q1) whose tap column kw reads an input column inside the
  // image (q * s + kw - pl in [0, W)); empty where *q0 >= *q1.
  void InsideColumns(int kw, int* q0, int* q1) const {
    *q0 = kw >= pl ? 0 : (pl - kw + s - 1) / s;
    const int last = W - 1 + pl - kw;  // q * s <= last
    *q1 = last < 0 ? 0 : std::min(OW, last / s + 1);
  }
};

absl::Status MakeGeometry(const TensorShape& in, const TensorShape& filter, int stride,
                          bool same, Geometry* g) {
  if (in.dims() != 4)
    return InvalidArgument("input must be [N, H, W, C], got ", in.DebugString());
  if (filter.dims() != 4 || filter.dim_size(0) != filter.dim_size(1) ||
      filter.dim_size(2) != kG || filter.dim_size(3) != in.dim_size(3) ||
      in.dim_size(3) % kG != 0)
    return InvalidArgument("filter must be [k, k, 16, C] with C = input channels, a multiple "
                           "of 16; got input ", in.DebugString(), " filter ",
                           filter.DebugString());
  if (stride < 1) return InvalidArgument("stride must be >= 1, got ", stride);
  g->N = in.dim_size(0);
  g->H = in.dim_size(1);
  g->W = in.dim_size(2);
  g->C = in.dim_size(3);
  g->k = filter.dim_size(0);
  g->s = stride;
  g->groups = g->C / kG;
  OutputSize(g->H, g->k, stride, same, &g->OH, &g->pt);
  OutputSize(g->W, g->k, stride, same, &g->OW, &g->pl);
  if (g->OH < 1 || g->OW < 1)
    return InvalidArgument("input ", in.DebugString(), " is smaller than the ", g->k, "x",
                           g->k, " kernel with VALID padding");
  return absl::OkStatus();
}

// A per-input-channel vector input (``name``: input_offset or input_scale) must be [C].
absl::Status CheckChannelVector(const Tensor& v, const char* name, const Geometry& g) {
  if (v.dims() != 1 || v.dim_size(0) != g.C)
    return InvalidArgument(name, " must be [C] = [", g.C, "], got ", v.shape().DebugString());
  return absl::OkStatus();
}

void CheckCpu(OpKernelConstruction* ctx) {
  OP_REQUIRES(ctx, __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"),
              tensorflow::errors::FailedPrecondition(
                  "the efficientnet_ipu group-convolution kernels need a CPU with AVX2 and "
                  "FMA; use GroupConv2D implementation='grouped' or 'split'"));
}

// Packs filter [k, k, 16, C] times scale[input channel] as [groups][k*k][16][16];
// transpose=false gives w[i][o] (forward), transpose=true gives w[o][i] (gradient with
// respect to the input).
std::vector<float> PackFilter(const float* f, const float* scale, const Geometry& g,
                              bool transpose) {
  const int taps = g.k * g.k;
  std::vector<float> p(static_cast<size_t>(g.groups) * taps * kG * kG);
  for (int gr = 0; gr < g.groups; ++gr)
    for (int t = 0; t < taps; ++t)
      for (int i = 0; i < kG; ++i)
        for (int o = 0; o < kG; ++o) {
          const float v =
              f[(static_cast<int64_t>(t) * kG + i) * g.C + gr * kG + o] * scale[gr * kG + i];
          const int64_t base = (static_cast<int64_t>(gr) * taps + t) * kG * kG;
          p[base + (transpose ? o * kG + i : i * kG + o)] = v;
        }
  return p;
}

#pragma GCC push_options
#pragma GCC target("avx512f")
// The Winograd filter U = G w G^T (G: N x R, kWinogradG or kWinograd5G) of one group's
// R x R packed filter w ([R R][16][16], PackFilter) as u ([N N positions][16][16]), in
// float32, 16 weights (one row of the 16 x 16 matrix of a tap) per register: the R R taps
// of a row in registers, T = G w over the rows, then U = T G^T over the columns, 330
// multiply-adds per weight for 5x5 (the zeros of G skipped at compile time). ``flip``:
// of the filter rotated by 180 degrees (w[R R - 1 - tap]), which with the transposed
// packing is the input gradient's.
template <int N, int R>
void WinogradFilterGroup(const float (&G)[N][R], const float* w, bool flip, float* u) {
  for (int i = 0; i < kG; ++i) {
    __m512 x[R * R];
#pragma GCC unroll 25
    for (int tap = 0; tap < R * R; ++tap)
      x[tap] = _mm512_loadu_ps(w + ((flip ? R * R - 1 - tap : tap) * kG + i) * kG);
#pragma GCC unroll 6
    for (int p = 0; p < N; ++p) {
      __m512 t[R];
#pragma GCC unroll 5
      for (int kw = 0; kw < R; ++kw) {
        t[kw] = _mm512_setzero_ps();
#pragma GCC unroll 5
        for (int kh = 0; kh < R; ++kh)
          if (G[p][kh] != 0.0f)
            t[kw] = _mm512_fmadd_ps(_mm512_set1_ps(G[p][kh]), x[R * kh + kw], t[kw]);
      }
#pragma GCC unroll 6
      for (int q = 0; q < N; ++q) {
        __m512 acc = _mm512_setzero_ps();
#pragma GCC unroll 5
        for (int kw = 0; kw < R; ++kw)
          if (G[q][kw] != 0.0f) acc = _mm512_fmadd_ps(_mm512_set1_ps(G[q][kw]), t[kw], acc);
        _mm512_storeu_ps(u + ((N * p + q) * kG + i) * kG, acc);
      }
    }
  }
}
#pragma GCC pop_options

// WinogradFilterGroup of every group of ``packed`` ([groups][k k][16][16]), on the op's
// threads: F(2x2, 3x3) for k = 3, F(2x2, 5x5) for k = 5. The ops transform the filter at
// every call, so this is a cost per call that does not shrink with the images: float32
// AVX-512 over the op's threads keeps it small.
std::vector<float> WinogradFilterFor(OpKernelContext* ctx, int k,
                                     const std::vector<float>& packed, int groups,
                                     bool flip) {
  const int n = k == 5 ? 6 : 4;
  std::vector<float> u(static_cast<size_t>(groups) * n * n * kG * kG);
  ParallelFor(ctx, groups, 2 * kG * kG * n * (k * k + n * k), [&](int64_t b, int64_t e) {
    for (int64_t gr = b; gr < e; ++gr) {
      const float* w = packed.data() + gr * k * k * kG * kG;
      float* ug = u.data() + gr * n * n * kG * kG;
      if (k == 5)
        WinogradFilterGroup(kWinograd5G, w, flip, ug);
      else
        WinogradFilterGroup(kWinogradG, w, flip, ug);
    }
  });
  return u;
}

// dW[tap = 3 kh + kw] += sum over positions (p, q) of sign G[p][kh] G[q][kw] S[4p + q] for
// one group (S: [16][16][16] from WinogradOuterProducts, dw: [9][16][16]), sign = -1 for
// each of p, q equal to 3 (A' in WinogradGradientInput).
void WinogradFilterGradient(const float* S, float* dw) {
  const auto& G = kWinogradG;
  for (int kh = 0; kh < 3; ++kh)
    for (int kw = 0; kw < 3; ++kw) {
      float* d = dw + (3 * kh + kw) * kG * kG;
      for (int p = 0; p < 4; ++p)
        for (int q = 0; q < 4; ++q) {
          const float c = G[p][kh] * G[q][kw] * (p == 3 ? -1.0f : 1.0f) * (q == 3 ? -1.0f : 1.0f);
          if (c == 0.0f) continue;
          const float* sp = S + (4 * p + q) * kG * kG;
          for (int i = 0; i < kG * kG; ++i) d[i] += c * sp[i];
        }
    }
}

// True unless the direct blocks are asked for the 3x3 and 5x5 stride-1 layers too (for
// tests and for comparing the two; BlockOptions).
bool UseWinograd() { return efficientnet_ipu::g_block_options.winograd.load(); }

// The kernel gradient's per-group pass (GroupConv16BackpropFilterOp::PerGroupPass):
// images per register block, and the largest images (input and output pixels) it runs on.
constexpr int kImagesPerSpan = 8;
constexpr int kPerGroupMaxPixels = 196;
constexpr int kPerGroupMaxOutputPixels = 100;
// True unless the kernel gradient's general pass is asked for small images too (for tests
// and for comparing the two; BlockOptions).
bool UsePerGroup() { return efficientnet_ipu::g_block_options.per_group.load(); }

// The attributes all three ops share: stride and padding, and the CPU check.
class GroupConv16Base : public OpKernel {
 public:
  explicit GroupConv16Base(OpKernelConstruction* ctx)
      : OpKernel(ctx),
        use_avx512_(UseAvx512()),
        use_winograd_(use_avx512_ && UseWinograd()),
        max_block_(use_avx512_ ? kMaxR512 : kMaxR) {
    CheckCpu(ctx);
    ReadStridePadding(ctx, &stride_, &same_);
  }

 protected:
  int stride_;
  bool same_;
  const bool use_avx512_;  // UseAvx512() when the kernel was built
  const bool use_winograd_;  // AVX-512 blocks and UseWinograd() when the kernel was built
  const int max_block_;  // the largest register block: kMaxR512 or kMaxR

  // The register blocks for pixel stride rs (floats): kBlocks512's row for rs, or kBlocks.
  const BlockFn* Blocks(int rs) const {
    if (!use_avx512_) return kBlocks;
    return kBlocks512[rs == 16 ? 1 : rs == 32 ? 2 : 0];
  }

  // Images per stack for the image-stacked blocks, or 0 for blocks along rows of pixels.
  // Stacked, a register block holds the same pixel of up to max_block_ images, so short
  // rows need neither short blocks (split accumulators) nor taps into the zero padding;
  // but each block has its own tap list. That pays on rows of at most 2k pixels (5x5
  // kernels on 5-10 px); on wider rows the blocks along rows are as fast or faster.
  // The stacks are as even as possible (32 images in 11 + 11 + 10, not 14 + 14 + 4: a
  // stack of fewer images than 8 waits on its accumulators, see ForEachBlock), so R is
  // the largest stack's size. Callers check WinogradPassApplies first: where both apply
  // (10 px, 5x5), Winograd is the faster.
  int StackSize(const Geometry& g, int64_t image_floats) const {
    if (g.N < 2 || g.OW > 2 * g.k || image_floats > (int64_t{1} << 30)) return 0;
    const int stacks = (g.N + max_block_ - 1) / max_block_;
    return (g.N + stacks - 1) / stacks;
  }

  // One pass with image-stacked blocks. Units are a stack of at most R images x one group
  // (StackSize): the unit's group
  // planes of src ([N, src_rows, src_cols, C]) are copied stacked (CopyStacked, adding
  // offset[gr * 16 ...] if offset is not null), and each pixel (a, b) of dst ([N, dst_rows,
  // dst_cols, C]) gets one block over the taps (kh, kw) with src_row(a, kh) >= 0 and
  // src_col(b, kw) >= 0: the source row and column the tap reads, or a negative value
  // where it reads none. wp: the packed filter (PackFilter). after_unit(n0, nb, gr) runs
  // after each unit of nb images from n0.
  template <typename SrcRow, typename SrcCol, typename AfterUnit>
  void StackedPass(OpKernelContext* ctx, const Geometry& g, int R, int64_t cost,
                   const float* src, int src_rows, int src_cols, const float* offset,
                   const std::vector<float>& wp, float* dst, int dst_rows, int dst_cols,
                   const SrcRow& src_row, const SrcCol& src_col,
                   const AfterUnit& after_unit) const {
    const BlockFn* blocks = Blocks(kG);
    // Stack m holds images [N * m / stacks, N * (m + 1) / stacks).
    const int stacks = (g.N + R - 1) / R;
    const int64_t src_image = static_cast<int64_t>(src_rows) * src_cols * g.C;
    const int dst_image = dst_rows * dst_cols * g.C;  // < 2^30: StackSize
    // Each dst pixel's taps, the same for every unit: their plane offsets (offs) and
    // kernel taps (tap), from taps[p] on for ntaps[p] entries.
    const int pixels = dst_rows * dst_cols, kk = g.k * g.k;
    std::vector<int> offs(static_cast<size_t>(pixels) * kk), tap(offs.size()), ntaps(pixels);
    for (int p = 0; p < pixels; ++p) {
      int nt = 0;
      for (int kh = 0; kh < g.k; ++kh) {
        const int row = src_row(p / dst_cols, kh);
        if (row < 0) continue;
        for (int kw = 0; kw < g.k; ++kw) {
          const int col = src_col(p % dst_cols, kw);
          if (col < 0) continue;
          offs[p * kk + nt] = (row * src_cols + col) * R * kG;
          tap[p * kk + nt] = kh * g.k + kw;
          ++nt;
        }
      }
      ntaps[p] = nt;
    }
    // The next unit's planes of src and dst (its images' lines are consecutive) are
    // prefetched from inside the blocks, as along rows (NextPlanes): Every() runs 8 times
    // per tap and block.
    int64_t ticks = 0;
    for (int p = 0; p < pixels; ++p) ticks += 8 * ntaps[p];
    const int64_t src_lines = static_cast<int64_t>(R) * src_rows * src_cols;
    const int64_t dst_lines = static_cast<int64_t>(R) * dst_rows * dst_cols;
    auto first_image = [&](int64_t m) { return static_cast<int>(g.N * m / stacks); };
    ParallelFor(ctx, static_cast<int64_t>(stacks) * g.groups, cost * R,
                [&](int64_t b, int64_t e) {
      std::vector<float> plane(static_cast<size_t>(src_rows) * src_cols * R * kG);
      std::vector<const float*> ws(kk);
      for (int64_t u = b; u < e; ++u) {
        const int stack = u / g.groups, gr = u % g.groups;
        const int n0 = first_image(stack), nb = first_image(stack + 1) - n0;
        PrefetchStream pf;
        if (u + 1 < e && src_lines + dst_lines <= 8192) {
          const int64_t n1 = first_image((u + 1) / g.groups), g1 = (u + 1) % g.groups;
          const int64_t nb1 = first_image((u + 1) / g.groups + 1) - n1;
          pf = PrefetchStream::Pixels(src + n1 * src_image + g1 * kG, nb1 * src_rows * src_cols,
                                      dst + n1 * dst_image + g1 * kG, nb1 * dst_rows * dst_cols,
                                      g.C);
          pf.Spread(ticks, src_lines + dst_lines);
        }
        CopyStacked(src + n0 * src_image, nb, R, src_rows, src_cols, g.C, gr,
                    offset ? offset + gr * kG : nullptr, plane.data());
        const float* wg = wp.data() + static_cast<size_t>(gr) * kk * kG * kG;
        float* dst0 = dst + static_cast<int64_t>(n0) * dst_image + gr * kG;
        for (int p = 0; p < pixels; ++p) {
          const int* tp = tap.data() + p * kk;
          for (int j = 0; j < ntaps[p]; ++j) ws[j] = wg + tp[j] * kG * kG;
          blocks[nb](plane.data(), offs.data() + p * kk, ws.data(), ntaps[p], kG,
                     dst0 + static_cast<int64_t>(p) * g.C, dst_image, nullptr, &pf);
        }
        after_unit(n0, nb, gr);
      }
    });
  }

  // The prefetch stream of a unit (image n, group gr) of a pass that reads planes of
  // ``src`` ([N, rows, cols, C]) and writes planes of ``dst`` ([N, dst_rows, dst_cols, C]):
  // the lines of the next unit's planes of both, u + 1 < e (u = n * groups + gr), spread
  // over the unit's ``ticks`` calls of Every(). The output lines come into L2 before the
  // blocks store to them, instead of each store waiting on its line. None where the two
  // planes exceed 512 kB (8192 lines), as at 112x112 px: there, with this unit's plane,
  // its outputs and the scratch copy, they would not fit the 2 MB L2 together
  // (0.95-0.97x).
  static PrefetchStream NextPlanes(const float* src, int rows, int cols, const float* dst,
                                   int dst_rows, int dst_cols, const Geometry& g, int64_t u,
                                   int64_t e, int64_t ticks) {
    const int64_t src_lines = static_cast<int64_t>(rows) * cols;
    const int64_t dst_lines = static_cast<int64_t>(dst_rows) * dst_cols;
    if (u + 1 >= e || src_lines + dst_lines > 8192) return PrefetchStream();
    const int64_t n = (u + 1) / g.groups, gr = (u + 1) % g.groups;
    PrefetchStream pf = PrefetchStream::Pixels(src + n * src_lines * g.C + gr * kG, src_lines,
                                               dst + n * dst_lines * g.C + gr * kG, dst_lines,
                                               g.C);
    pf.Spread(ticks, src_lines + dst_lines);
    return pf;
  }

  // True where an op uses Winograd F(2x2, 3x3) (WinogradPass, and the kernel gradient's
  // WinogradOuterProducts): 3x3 kernels, stride 1, SAME padding, AVX-512 blocks, and
  // images of at least ``min_pixels``: 100 for the forward and the input gradient, 400
  // for the kernel gradient. The forward and the input gradient are then the same
  // convolution: the input gradient's filter is the transposed one rotated by 180 degrees.
  // Below these sizes the direct blocks are as fast or faster: the tiles waste more of
  // their outputs, and in the kernel gradient the loads and stores of the sums weigh more.
  bool WinogradApplies(const Geometry& g, int min_pixels) const {
    return use_winograd_ && g.k == 3 && g.s == 1 && same_ && g.pt == 1 && g.pl == 1 &&
           g.OH == g.H && g.OW == g.W && g.H * g.W >= min_pixels;
  }

  // The same for Winograd F(2x2, 5x5) (Winograd5Input), in the forward and the input
  // gradient only: 5x5 kernels, stride 1, SAME padding, AVX-512 blocks, and images of at
  // least kWinograd5MinPixels.
  bool Winograd5Applies(const Geometry& g) const {
    return use_winograd_ && g.k == 5 && g.s == 1 && same_ && g.pt == 2 && g.pl == 2 &&
           g.OH == g.H && g.OW == g.W && g.H * g.W >= kWinograd5MinPixels;
  }

  // True where the forward and the input gradient run as WinogradPass: 3x3 from 100
  // pixels or 5x5 from kWinograd5MinPixels. Checked before the image-stacked blocks.
  bool WinogradPassApplies(const Geometry& g) const {
    return WinogradApplies(g, 100) || Winograd5Applies(g);
  }

  // dst = the 3x3 or 5x5 (g.k) stride-1 SAME convolution of src (both [N, H, W, C]; of
  // src + offset[c] where offset is not null, zero padding) with the Winograd filter U
  // (WinogradFilterFor),
  // by units of (image, group), as the direct passes; sum (not null: [N, C], zeroed) gets
  // dst summed over H and W. The transforms read src in place, where the next unit's
  // lines were prefetched (NextPlanes), and each chunk's output lines are prefetched for
  // writing (WinogradProduct). Copying the plane first, as the direct passes do, is
  // slower here; non-temporal output stores would leave the next op to read the output
  // from memory.
  void WinogradPass(OpKernelContext* ctx, const Geometry& g, const float* src,
                    const float* offset, const std::vector<float>& U, float* dst,
                    float* sum) const {
    const int tiles_h = (g.H + 1) / 2, tiles_w = (g.W + 1) / 2, tiles = tiles_h * tiles_w;
    const int64_t image = g.InputImage();  // stride 1, SAME: the output's size too
    const bool five = g.k == 5;  // F(2x2, 5x5), else F(2x2, 3x3)
    const int positions = five ? 36 : 16;
    const auto input = five ? Winograd5Input : WinogradInput;
    const auto output =
        five ? WinogradOutput<6, kWinograd5AT> : WinogradOutput<4, kWinogradAT>;
    const ProductTable& products = five ? kProducts5 : kProducts;
    const int64_t ticks = int64_t{positions} * 8 * ((tiles + kMaxR512 - 1) / kMaxR512);
    const int64_t cost = static_cast<int64_t>(tiles) * positions * kG * kG;
    ParallelFor(ctx, static_cast<int64_t>(g.N) * g.groups, cost, [&](int64_t b, int64_t e) {
      std::vector<float> VM(positions * kTileStride);
      for (int64_t u = b; u < e; ++u) {
        const int n = u / g.groups, gr = u % g.groups;
        // The next unit's input lines only (0 output rows): WinogradProduct prefetches
        // the output lines of each chunk itself.
        PrefetchStream pf = NextPlanes(src, g.H, g.W, dst, 0, 0, g, u, e, ticks);
        const float* ug = U.data() + static_cast<size_t>(gr) * positions * kG * kG;
        const float* in = src + n * image + gr * kG;
        const float* off = offset != nullptr ? offset + gr * kG : nullptr;
        float* out = dst + n * image + gr * kG;
        float* s = sum != nullptr ? sum + static_cast<int64_t>(n) * g.C + gr * kG : nullptr;
        ForEachBlock(tiles, [&](int t0, int r) {
          const char* lines[4 * kMaxR512];  // the chunk's output lines, for WinogradProduct
          for (int j = 0; j < r; ++j) {
            const int t = t0 + j, a = t / tiles_w, col = t % tiles_w;
            for (int k = 0; k < 4; ++k) {
              const int oh = 2 * a + k / 2, ow = 2 * col + k % 2;
              lines[4 * j + k] = oh < g.H && ow < g.W ? reinterpret_cast<const char*>(
                  out + (static_cast<int64_t>(oh) * g.W + ow) * g.C) : nullptr;
            }
          }
          input(in, g.H, g.W, g.C, off, tiles_w, t0, r, VM.data());
          products[r](VM.data(), ug, &pf, lines);
          output(VM.data(), tiles_w, t0, r, g.H, g.W, g.C, out, s);
        });
      }
    });
  }

  // The kernel gradient's units over ParallelFor: a chunk of the images [N * chunk /
  // chunks, N * (chunk + 1) / chunks) x a block of the groups. A unit takes its images one
  // by one and, for each, its groups one after another, so that consecutive (image, group)
  // pairs read neighbouring cache lines of one image, as the forward's do. Calls
  // fn(chunk, n, gr, next, scratch) per pair: ``next`` streams the unit's next pair's
  // lines of x and dy (no lines after its last pair), for fn to pace (mask or Spread);
  // ``scratch`` holds scratch_floats floats of the calling thread.
  template <typename Fn>
  void ForEachPair(OpKernelContext* ctx, const Geometry& g, int chunks, int group_blocks,
                   int64_t cost, size_t scratch_floats, const float* x, const float* dy,
                   const Fn& fn) const {
    const int64_t x_image = g.InputImage(), dy_image = g.OutputImage();
    ParallelFor(ctx, static_cast<int64_t>(chunks) * group_blocks, cost, [&](int64_t b, int64_t e) {
      std::vector<float> scratch(scratch_floats);
      for (int64_t u = b; u < e; ++u) {
        const int chunk = u / group_blocks, block = u % group_blocks;
        const int g0 = g.groups * block / group_blocks, g1 = g.groups * (block + 1) / group_blocks;
        const int n0 = g.N * chunk / chunks, n1 = g.N * (chunk + 1) / chunks;
        for (int pair = 0; pair < (n1 - n0) * (g1 - g0); ++pair) {  // images outer
          const int n = n0 + pair / (g1 - g0), gr = g0 + pair % (g1 - g0);
          const int next_n = n0 + (pair + 1) / (g1 - g0), next_gr = g0 + (pair + 1) % (g1 - g0);
          PrefetchStream next;
          if (next_n < n1)
            next = PrefetchStream::Pixels(x + next_n * x_image + next_gr * kG,
                                          static_cast<int64_t>(g.H) * g.W,
                                          dy + next_n * dy_image + next_gr * kG,
                                          static_cast<int64_t>(g.OH) * g.OW, g.C);
          fn(chunk, n, gr, &next, scratch.data());
        }
      }
    });
  }

  // Calls fn(first, r) for register blocks of r pixels that cover [0, pixels), as even
  // as possible (30 pixels in 14-pixel blocks: 10, 10, 10, not 14, 14, 2), because a block
  // of fewer pixels than the FMA units' latency x throughput (8 on AVX-512 CPUs) waits on
  // its accumulators: 1.37x slower per FMA at 4 pixels than at 12.
  template <typename Fn>
  void ForEachBlock(int pixels, const Fn& fn) const {
    int first = 0;
    for (int left = (pixels + max_block_ - 1) / max_block_; left > 0; --left) {
      const int r = (pixels - first + left - 1) / left;
      fn(first, r);
      first += r;
    }
  }
};

class GroupConv16Op : public GroupConv16Base {
 public:
  using GroupConv16Base::GroupConv16Base;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& f = ctx->input(1);
    const Tensor& offset = ctx->input(2);
    const Tensor& scale = ctx->input(3);
    Geometry g;
    OP_REQUIRES_OK(ctx, MakeGeometry(x.shape(), f.shape(), stride_, same_, &g));
    OP_REQUIRES_OK(ctx, CheckChannelVector(offset, "input_offset", g));
    OP_REQUIRES_OK(ctx, CheckChannelVector(scale, "input_scale", g));
    const float* od = offset.flat<float>().data();
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({g.N, g.OH, g.OW, g.C}), &y));
    if (y->NumElements() == 0) return;
    const std::vector<float> wp =
        PackFilter(f.flat<float>().data(), scale.flat<float>().data(), g, false);
    const float* xd = x.flat<float>().data();
    float* yd = y->flat<float>().data();
    const int64_t cost = static_cast<int64_t>(g.OH) * g.OW * g.k * g.k * kG * kG;
    const bool winograd = WinogradPassApplies(g);
    const int R = winograd ? 0 : StackSize(g, g.OutputImage());
    if (R > 0) {  // image-stacked blocks: one per output pixel, R images deep
      StackedPass(
          ctx, g, R, cost, xd, g.H, g.W, od, wp, yd, g.OH, g.OW,
          [&](int oh, int kh) {  // a negative row or column is outside the image
            const int ih = oh * g.s + kh - g.pt;
            return ih < g.H ? ih : -1;
          },
          [&](int ow, int kw) {
            const int iw = ow * g.s + kw - g.pl;
            return iw < g.W ? iw : -1;
          },
          [](int, int, int) {});
      return;
    }
    if (winograd) {
      WinogradPass(ctx, g, xd, od, WinogradFilterFor(ctx, g.k, wp, g.groups, false), yd, nullptr);
      return;
    }
    const int width = g.PaddedWidth();  // scratch plane: all input rows, padded columns
    const BlockFn* blocks = Blocks(g.s * kG);
    // The next unit's input plane is prefetched from inside the blocks: Every() runs 8
    // times per tap and block (once per 2 input channels).
    int64_t ticks = 0;  // Every() calls per unit
    for (int oh = 0; oh < g.OH; ++oh)
      for (int kh = 0; kh < g.k; ++kh)
        ticks += g.RowInside(oh, kh) ? 8 * g.k * ((g.OW + max_block_ - 1) / max_block_) : 0;
    ParallelFor(ctx, static_cast<int64_t>(g.N) * g.groups, cost, [&](int64_t b, int64_t e) {
      std::vector<float> plane(static_cast<size_t>(g.H) * width * kG);
      std::vector<int> offs(g.k * g.k);
      std::vector<const float*> ws(g.k * g.k);
      for (int64_t u = b; u < e; ++u) {
        const int n = u / g.groups, gr = u % g.groups;
        CopyPlane(xd + static_cast<int64_t>(n) * g.H * g.W * g.C, g.H, g.W, g.C, gr, g.pl,
                  width, od + gr * kG, plane.data());
        const float* wg = wp.data() + static_cast<size_t>(gr) * g.k * g.k * kG * kG;
        PrefetchStream pf = NextPlanes(xd, g.H, g.W, yd, g.OH, g.OW, g, u, e, ticks);
        for (int oh = 0; oh < g.OH; ++oh) {
          int nt = 0;
          for (int kh = 0; kh < g.k; ++kh) {
            if (!g.RowInside(oh, kh)) continue;
            const int ih = oh * g.s + kh - g.pt;
            for (int kw = 0; kw < g.k; ++kw) {
              offs[nt] = (ih * width + kw) * kG;  // column of output 0, tap kw
              ws[nt] = wg + (kh * g.k + kw) * kG * kG;
              ++nt;
            }
          }
          float* yrow = yd + ((static_cast<int64_t>(n) * g.OH + oh) * g.OW) * g.C + gr * kG;
          ForEachBlock(g.OW, [&](int ow, int r) {
            blocks[r](plane.data() + ow * g.s * kG, offs.data(), ws.data(), nt, g.s * kG,
                       yrow + static_cast<int64_t>(ow) * g.C, g.C, nullptr, &pf);
          });
        }
      }
    });
  }
};

class GroupConv16BackpropInputOp : public GroupConv16Base {
 public:
  using GroupConv16Base::GroupConv16Base;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& sizes = ctx->input(0);
    const Tensor& f = ctx->input(1);
    const Tensor& dy = ctx->input(2);
    const Tensor& scale = ctx->input(3);
    TensorShape in_shape;
    OP_REQUIRES_OK(ctx, ShapeFromSizes(sizes, "input_sizes", &in_shape));
    Geometry g;
    OP_REQUIRES_OK(ctx, MakeGeometry(in_shape, f.shape(), stride_, same_, &g));
    OP_REQUIRES_OK(ctx, CheckChannelVector(scale, "input_scale", g));
    OP_REQUIRES(ctx, dy.shape() == TensorShape({g.N, g.OH, g.OW, g.C}),
                InvalidArgument("out_backprop ", dy.shape().DebugString(), " does not match"
                                " the output of input ", in_shape.DebugString()));
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, in_shape, &dx));
    Tensor* dx_sum = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({g.N, g.C}), &dx_sum));
    float* sumd = dx_sum->flat<float>().data();
    std::fill(sumd, sumd + dx_sum->NumElements(), 0.0f);
    if (dx->NumElements() == 0) return;
    const std::vector<float> wp =
        PackFilter(f.flat<float>().data(), scale.flat<float>().data(), g, true);
    const float* dyd = dy.flat<float>().data();
    float* dxd = dx->flat<float>().data();
    // dx[ih, iw] = sum over taps (kh, kw) with ih + pt - kh = s * oh and iw + pl - kw =
    // s * ow of W[kh, kw]^T dy[oh, ow].
    const int64_t cost = static_cast<int64_t>(g.H) * g.W * g.k * g.k * kG * kG / (g.s * g.s);
    const BlockFn* blocks = Blocks(kG);
    const bool winograd = WinogradPassApplies(g);
    const int R = winograd ? 0 : StackSize(g, g.InputImage());
    if (R > 0) {  // image-stacked blocks, as in the forward: one per input pixel
      // The output row (column) a tap reaches from input row ih (column iw), or -1.
      auto out_index = [&](int i, int k, int pad, int size) {
        const int num = i + pad - k;
        return num < 0 || num % g.s || num / g.s >= size ? -1 : num / g.s;
      };
      StackedPass(
          ctx, g, R, cost, dyd, g.OH, g.OW, nullptr, wp, dxd, g.H, g.W,
          [&](int ih, int kh) { return out_index(ih, kh, g.pt, g.OH); },
          [&](int iw, int kw) { return out_index(iw, kw, g.pl, g.OW); },
          [&](int n0, int nb, int gr) {  // the sums over H and W, from the cached rows
            for (int m = 0; m < nb; ++m) {
              const float* d = dxd + static_cast<int64_t>(n0 + m) * g.H * g.W * g.C + gr * kG;
              __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
              for (int64_t p = 0; p < static_cast<int64_t>(g.H) * g.W; ++p) {
                s0 = _mm256_add_ps(s0, _mm256_loadu_ps(d + p * g.C));
                s1 = _mm256_add_ps(s1, _mm256_loadu_ps(d + p * g.C + 8));
              }
              _mm256_storeu_ps(sumd + static_cast<int64_t>(n0 + m) * g.C + gr * kG, s0);
              _mm256_storeu_ps(sumd + static_cast<int64_t>(n0 + m) * g.C + gr * kG + 8, s1);
            }
          });
      return;
    }
    if (winograd) {
      WinogradPass(ctx, g, dyd, nullptr, WinogradFilterFor(ctx, g.k, wp, g.groups, true), dxd,
                   sumd);
      return;
    }
    // Along rows: columns with the same remainder px = iw mod s read consecutive dy
    // columns, so they form the register blocks.
    const int pad = g.k + 1;
    const int width = g.OW + 2 * pad + kMaxR512;
    // The next unit's output-gradient plane is prefetched from inside the blocks, as in
    // the forward: Every() runs 8 times per tap and block. Taps per input pixel average
    // k * k / (s * s).
    const int64_t ticks = static_cast<int64_t>(8) * g.k * g.k * g.H *
                          ((g.W + max_block_ - 1) / max_block_) / (g.s * g.s);
    ParallelFor(ctx, static_cast<int64_t>(g.N) * g.groups, cost, [&](int64_t b, int64_t e) {
      std::vector<float> plane(static_cast<size_t>(g.OH) * width * kG);
      std::vector<int> offs(g.k * g.k);
      std::vector<const float*> ws(g.k * g.k);
      for (int64_t u = b; u < e; ++u) {
        const int n = u / g.groups, gr = u % g.groups;
        CopyPlane(dyd + static_cast<int64_t>(n) * g.OH * g.OW * g.C, g.OH, g.OW, g.C, gr, pad,
                  width, nullptr, plane.data());
        const float* wg = wp.data() + static_cast<size_t>(gr) * g.k * g.k * kG * kG;
        // The blocks add their outputs to this unit's slice of the sum over H and W.
        float* sum = sumd + static_cast<int64_t>(n) * g.C + gr * kG;
        PrefetchStream pf = NextPlanes(dyd, g.OH, g.OW, dxd, g.H, g.W, g, u, e, ticks);
        for (int ih = 0; ih < g.H; ++ih) {
          float* xrow = dxd + ((static_cast<int64_t>(n) * g.H + ih) * g.W) * g.C + gr * kG;
          for (int px = 0; px < g.s && px < g.W; ++px) {
            int nt = 0;
            for (int kh = 0; kh < g.k; ++kh) {
              const int num_h = ih + g.pt - kh;
              if (num_h < 0 || num_h % g.s) continue;
              const int oh = num_h / g.s;
              if (oh >= g.OH) continue;
              for (int kw = 0; kw < g.k; ++kw) {
                const int num_w = px + g.pl - kw;  // may be negative
                if (num_w % g.s) continue;  // only exact multiples of s contribute
                const int ow0 = num_w / g.s;    // exact, so truncation is right
                offs[nt] = (oh * width + pad + ow0) * kG;
                ws[nt] = wg + (kh * g.k + kw) * kG * kG;
                ++nt;
              }
            }
            const int cols = (g.W - px + g.s - 1) / g.s;  // iw = px + s * j, j < cols
            ForEachBlock(cols, [&](int j, int r) {
              blocks[r](plane.data() + j * kG, offs.data(), ws.data(), nt, kG,
                         xrow + static_cast<int64_t>(px + g.s * j) * g.C, g.s * g.C, sum, &pf);
            });
          }
        }
      }
    });
  }
};

// dW[t][i][0:16] += sum over the pixels p of span s of x(p)[i0 + i] * dy(p)[0:16], for
// i < IB (WeightSpan). Summing several rows, or several images, per call keeps the
// accumulators in registers for longer, which matters for the small images of the late
// stages (5x5 or 7x7 pixels).
template <int IB>
inline void WeightBlock(const WeightSpan& s, int i0, float* dw, PrefetchStream* pf) {
  __m256 a0[IB], a1[IB];
#pragma GCC unroll 8
  for (int i = 0; i < IB; ++i) a0[i] = a1[i] = _mm256_setzero_ps();
  for (int m = 0; m < s.images; ++m)
    for (int y = 0; y < s.rows; ++y) {
      const float* xy = s.x + m * s.xis + y * s.xrs + i0;
      const float* dyy = s.dy + m * s.dis + y * s.drs;
      for (int q = 0; q < s.count; ++q) {
        const __m256 d0 = _mm256_loadu_ps(dyy + q * s.ds);
        const __m256 d1 = _mm256_loadu_ps(dyy + q * s.ds + 8);
        pf->Tick(q);
#pragma GCC unroll 8
        for (int i = 0; i < IB; ++i) {
          const __m256 b = _mm256_broadcast_ss(xy + q * s.xs + i);
          a0[i] = _mm256_fmadd_ps(b, d0, a0[i]);
          a1[i] = _mm256_fmadd_ps(b, d1, a1[i]);
        }
      }
    }
#pragma GCC unroll 8
  for (int i = 0; i < IB; ++i) {
    _mm256_storeu_ps(dw + i * kG, _mm256_add_ps(_mm256_loadu_ps(dw + i * kG), a0[i]));
    _mm256_storeu_ps(dw + i * kG + 8, _mm256_add_ps(_mm256_loadu_ps(dw + i * kG + 8), a1[i]));
  }
}

class GroupConv16BackpropFilterOp : public GroupConv16Base {
 public:
  using GroupConv16Base::GroupConv16Base;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& f = ctx->input(1);
    const Tensor& dy = ctx->input(2);
    const Tensor& offset = ctx->input(3);
    const Tensor& scale = ctx->input(4);
    Geometry g;
    OP_REQUIRES_OK(ctx, MakeGeometry(x.shape(), f.shape(), stride_, same_, &g));
    OP_REQUIRES(ctx, dy.shape() == TensorShape({g.N, g.OH, g.OW, g.C}),
                InvalidArgument("out_backprop ", dy.shape().DebugString(), " does not match"
                                " the output of input ", x.shape().DebugString()));
    OP_REQUIRES_OK(ctx, CheckChannelVector(offset, "input_offset", g));
    OP_REQUIRES_OK(ctx, CheckChannelVector(scale, "input_scale", g));
    const float* od = offset.flat<float>().data();
    Tensor* df = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, f.shape(), &df));
    Tensor* dscale = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({g.C}), &dscale));
    const float* xd = x.flat<float>().data();
    const float* dyd = dy.flat<float>().data();
    if (PerGroupApplies(g)) {
      PerGroupPass(ctx, g, xd, dyd, od, f, scale, df, dscale);
      return;
    }
    const int taps = g.k * g.k;
    const int64_t x_image = g.InputImage(), dy_image = g.OutputImage();
    // Units: a chunk of the images times a block of the groups, (image, group) pairs
    // images outer (ForEachPair); each (chunk, group) sums into its own slice of
    // ``packed``, and the chunks are added at the end. Against one unit per group, each
    // over all images: 1.06-1.08x at
    // [32, 56, 56, 96] and [32, 28, 28, 240], within noise on 14x14 px and smaller images,
    // and 15 groups on 2 threads no longer run as 8 + 7. Groups are
    // split into blocks only when there are fewer images than 2 units per thread.
    const int threads = ctx->device()->tensorflow_cpu_worker_threads()->num_threads;
    const int chunks = std::min(g.N, 2 * std::max(1, threads));
    const int group_blocks = std::min(g.groups, (2 * std::max(1, threads) + chunks - 1) / chunks);
    const size_t slice = static_cast<size_t>(taps) * kG * kG;  // one group's gradient
    std::vector<float> packed(static_cast<size_t>(chunks) * g.groups * slice, 0.0f);
    // Winograd F(2x2, 3x3) read backwards (WinogradGradientInput) where WinogradApplies:
    // ForEachPair's units and pairs, as the direct pass below, each pair's tiles in chunks
    // of up to 14, and S, the sums of the transformed outer products, per (chunk, group)
    // until the end.
    // Against the direct blocks: 1.08-1.16x at [32, 28, 28, 240], 1.14x at [32, 56, 56, 96],
    // 1.25x and 1.43x at 80 and 112 px (32 channels), 1.08x at [32, 40, 40, 96]; but
    // 0.94-0.99x at 10-14 px and 0.74x at 7 px, where S's loads and stores per chunk
    // weigh more than the multiply-adds saved.
    if (WinogradApplies(g, 400)) {
      const int tiles_w = (g.W + 1) / 2, tiles = (g.H + 1) / 2 * tiles_w;
      const int64_t wcost = static_cast<int64_t>(g.N) * g.groups * tiles * 16 * kG * kG /
                            (static_cast<int64_t>(chunks) * group_blocks);
      // S of each (chunk, group), as packed's slices are: [chunks][groups][16][16][16].
      // Images outer, as in the direct passes; groups outer, with one S in L1, lost
      // 0.84-0.99x at 28-112 px (the pairs no longer read neighbouring lines of one image).
      std::vector<float> sums(static_cast<size_t>(chunks) * g.groups * 16 * kG * kG, 0.0f);
      ForEachPair(ctx, g, chunks, group_blocks, wcost, 2 * 16 * kTileStride, xd, dyd,
                  [&](int chunk, int n, int gr, PrefetchStream* pf, float* scratch) {
        pf->Spread(static_cast<int64_t>(16) * tiles, pf->n);
        float* V = scratch;
        float* D = scratch + 16 * kTileStride;
        const float* xg = xd + n * x_image + gr * kG;
        const float* dg = dyd + n * dy_image + gr * kG;
        float* S = sums.data() + (static_cast<size_t>(chunk) * g.groups + gr) * 16 * kG * kG;
        ForEachBlock(tiles, [&](int t0, int r) {
          WinogradInput(xg, g.H, g.W, g.C, od + gr * kG, tiles_w, t0, r, V);
          WinogradGradientInput(dg, g.OH, g.OW, g.C, tiles_w, t0, r, D);
          kOuters[r](V, D, S, pf);
        });
      });
      for (int chunk = 0; chunk < chunks; ++chunk)
        for (int gr = 0; gr < g.groups; ++gr) {
          const size_t at = static_cast<size_t>(chunk) * g.groups + gr;
          WinogradFilterGradient(sums.data() + at * 16 * kG * kG, packed.data() + at * slice);
        }
      Finish(packed, chunks, g, f, scale, df, dscale);
      return;
    }
    const int width = g.PaddedWidth();
    // Output rows per pass over the taps: cache blocking, and at least ~64 output pixels
    // per pass so that small images sum many pixels per accumulator load and store.
    const int rows_per_pass = std::max(4, (64 + g.OW - 1) / g.OW);
    const int64_t xrs = static_cast<int64_t>(g.s) * width * kG;  // input rows per output row
    const int64_t drs = static_cast<int64_t>(g.OW) * g.C;  // output row stride, in place
    // The output gradient is read in place, 64 bytes (a group's 16 channels) every C
    // floats; the input plane is copied (zero padding, offset added) as in the forward:
    // read in place, its rows would span 3-4 times the pages.
    int64_t pixels_summed = 0;  // per (image, group) pair, over all taps
    for (int kh = 0; kh < g.k; ++kh)
      for (int kw = 0; kw < g.k; ++kw) {
        int rows = 0, q0, q1;
        for (int oh = 0; oh < g.OH; ++oh) rows += g.RowInside(oh, kh);
        g.InsideColumns(kw, &q0, &q1);
        pixels_summed += static_cast<int64_t>(rows) * std::max(0, q1 - q0);
      }
    const int64_t pair_lines = static_cast<int64_t>(g.H) * g.W + static_cast<int64_t>(g.OH) * g.OW;
    // The next pair's lines go one per ``period`` pixels of a block's row: 4 where that
    // covers them (3x3 stride 1: 4.3 pixels summed per line), else 2 (stride 2: 1.8),
    // else 1. Every 2 pixels at 3x3 stride 1 lost 5 % against every 4, every 6-8 lost
    // 10-25 %; at stride 2, every 2 gained 1.17x over every 4.
    const int64_t ratio10 = 10 * pixels_summed / std::max<int64_t>(1, pair_lines);
    const int period = ratio10 >= 30 ? 4 : ratio10 >= 15 ? 2 : 1;
    const int64_t cost = static_cast<int64_t>(g.N) * g.groups * g.OH * g.OW * taps * kG * kG /
                         (static_cast<int64_t>(chunks) * group_blocks);
    ForEachPair(ctx, g, chunks, group_blocks, cost, static_cast<size_t>(g.H) * width * kG,
                xd, dyd, [&](int chunk, int n, int gr, PrefetchStream* pf, float* plane) {
        pf->mask = period - 1;
        float* dwg = packed.data() + (static_cast<size_t>(chunk) * g.groups + gr) * slice;
        CopyPlane(xd + n * x_image, g.H, g.W, g.C, gr, g.pl, width, od + gr * kG, plane);
        const float* dg = dyd + n * dy_image + gr * kG;
        for (int oh0 = 0; oh0 < g.OH; oh0 += rows_per_pass) {
          const int oh1 = std::min(g.OH, oh0 + rows_per_pass);
          ForEachInsideTap(g, oh0, oh1, [&](int kh, int kw, int lo, int hi, int q0, int q1) {
            const WeightSpan span{
                plane + (static_cast<int64_t>(lo * g.s + kh - g.pt) * width + kw +
                         q0 * g.s) * kG, g.s * kG, xrs, 0,
                dg + (static_cast<int64_t>(lo) * g.OW + q0) * g.C, g.C, drs, 0,
                1, hi - lo, q1 - q0};
            WeightBlocks(span, dwg + (kh * g.k + kw) * kG * kG, pf);
          });
        }
    });
    Finish(packed, chunks, g, f, scale, df, dscale);
  }

 private:
  // Calls fn(kh, kw, lo, hi, q0, q1) for each tap (kh, kw) that reads inside the image
  // from some of the output rows [oh0, oh1): the output rows [lo, hi) whose input row
  // oh * s + kh - pt is in [0, H) and the output columns [q0, q1) whose input column
  // q * s + kw - pl is in [0, W). The padding's zeros add nothing (a quarter of the work of
  // a 5x5 kernel on B0's 5x5 px stage).
  template <typename Fn>
  static void ForEachInsideTap(const Geometry& g, int oh0, int oh1, const Fn& fn) {
    for (int kh = 0; kh < g.k; ++kh) {
      int lo = oh0, hi = oh1;
      while (lo < hi && !g.RowInside(lo, kh)) ++lo;
      while (hi > lo && !g.RowInside(hi - 1, kh)) --hi;
      if (lo == hi) continue;
      for (int kw = 0; kw < g.k; ++kw) {
        int q0, q1;
        g.InsideColumns(kw, &q0, &q1);
        if (q0 < q1) fn(kh, kw, lo, hi, q0, q1);
      }
    }
  }

  // The sums of one tap's span (WeightSpan) into dw ([16][16]): one AVX-512 block, or
  // three AVX2 blocks of 6, 6 and 4 input channels, the first issuing the prefetches.
  void WeightBlocks(const WeightSpan& span, float* dw, PrefetchStream* pf) const {
    if (use_avx512_) {
      WeightBlock512(span, dw, pf);
      return;
    }
    PrefetchStream none;
    WeightBlock<6>(span, 0, dw, pf);
    WeightBlock<6>(span, 6, dw + 6 * kG, &none);
    WeightBlock<4>(span, 12, dw + 12 * kG, &none);
  }

  // True where the kernel gradient takes PerGroupPass: small images (at most
  // kPerGroupMaxPixels in, kPerGroupMaxOutputPixels out) on the AVX-512 blocks, unless
  // UsePerGroup() is false. With the AVX2 blocks it is not reliably faster than the
  // general pass, so they keep the general pass.
  bool PerGroupApplies(const Geometry& g) const {
    return use_per_group_ && use_avx512_ && g.H * g.W <= kPerGroupMaxPixels &&
           g.OH * g.OW <= kPerGroupMaxOutputPixels;
  }

  // The kernel gradient of small images (PerGroupApplies). Units are groups. A unit
  // copies the planes of kImagesPerSpan images at a time, input (CopyPlane: padding,
  // offset added) and output gradient, prefetching the next span's lines from inside the
  // blocks, and sums each tap over all of them in registers; its [k * k][16][16] sums stay
  // in L1, and it writes the group's df and dscale itself (FinishGroup). The general
  // pass's (image, group) pairs sum only 14-34 pixels per tap of a 5 or 7 px image before
  // loading and storing the tap's sums, whose copies for all the groups (one per image
  // chunk: 4 x 1.2 MB at [32, 5, 5, 768], 5x5) outgrow L2 and are added in one thread at
  // the end. Per group, those sums stay in L1. Above the limits (14 px, 3x3 stride 2 from
  // 20 px) the general pass is as fast or faster.
  void PerGroupPass(OpKernelContext* ctx, const Geometry& g, const float* xd,
                    const float* dyd, const float* od, const Tensor& f, const Tensor& scale,
                    Tensor* df, Tensor* dscale) const {
    const int taps = g.k * g.k;
    const int width = g.PaddedWidth();
    const int64_t plane = static_cast<int64_t>(g.H) * width * kG;
    const int64_t x_image = g.InputImage(), dy_image = g.OutputImage();
    const int64_t dy_plane = static_cast<int64_t>(g.OH) * g.OW * kG;
    const int span_images = std::min(g.N, kImagesPerSpan);
    const int64_t cost = static_cast<int64_t>(g.N) * g.OH * g.OW * taps * kG * kG;
    ParallelFor(ctx, g.groups, cost, [&](int64_t begin, int64_t end) {
      std::vector<float> planes(span_images * plane);
      std::vector<float> dys(span_images * dy_plane);
      std::vector<float> sums(static_cast<size_t>(taps) * kG * kG);
      for (int64_t gr = begin; gr < end; ++gr) {
        std::fill(sums.begin(), sums.end(), 0.0f);
        for (int n0 = 0; n0 < g.N; n0 += span_images) {
          const int images = std::min(span_images, g.N - n0);
          // The next span's lines (this group's next images, or the next group's first),
          // a few per row of a block, as in ForEachPair.
          const int next_n = n0 + images < g.N ? n0 + images : 0;
          const int64_t next_gr = n0 + images < g.N ? gr : gr + 1;
          const int next_images = std::min(span_images, g.N - next_n);
          PrefetchStream pf;
          if (next_gr < end)
            pf = PrefetchStream::Pixels(
                xd + next_n * x_image + next_gr * kG,
                static_cast<int64_t>(next_images) * g.H * g.W,
                dyd + next_n * dy_image + next_gr * kG,
                static_cast<int64_t>(next_images) * g.OH * g.OW, g.C);
          pf.mask = 3;
          for (int m = 0; m < images; ++m)
            CopyPlane(xd + (n0 + m) * x_image, g.H, g.W, g.C, gr, g.pl, width, od + gr * kG,
                      planes.data() + m * plane);
          for (int m = 0; m < images; ++m)  // [OH, OW, 16] planes of the output gradient
            CopyPlane(dyd + (n0 + m) * dy_image, g.OH, g.OW, g.C, gr, 0, g.OW, nullptr,
                      dys.data() + m * dy_plane);
          ForEachInsideTap(g, 0, g.OH, [&](int kh, int kw, int lo, int hi, int q0, int q1) {
            const WeightSpan span{
                planes.data() + (static_cast<int64_t>(lo * g.s + kh - g.pt) * width + kw +
                                 q0 * g.s) * kG, g.s * kG,
                static_cast<int64_t>(g.s) * width * kG, plane,
                dys.data() + (static_cast<int64_t>(lo) * g.OW + q0) * kG, kG,
                static_cast<int64_t>(g.OW) * kG, dy_plane,
                images, hi - lo, q1 - q0};
            WeightBlocks(span, sums.data() + (kh * g.k + kw) * kG * kG, &pf);
          });
        }
        FinishGroup(sums.data(), 1, 0, gr, g, f, scale, df, dscale);
      }
    });
  }

  // packed ([chunks][groups][k * k][16][16]), summed over the chunks, is the gradient with
  // respect to the scaled filter f * scale: the filter's (df) is that times the scale, and
  // the scale's (dscale) is its product with f summed over taps and output channels.
  static void Finish(const std::vector<float>& packed, int chunks, const Geometry& g,
                     const Tensor& f, const Tensor& scale, Tensor* df, Tensor* dscale) {
    const size_t slice = static_cast<size_t>(g.k) * g.k * kG * kG;
    for (int gr = 0; gr < g.groups; ++gr)
      FinishGroup(packed.data() + gr * slice, chunks, g.groups * slice, gr, g, f, scale, df,
                  dscale);
  }

  // Finish for group gr, whose sums for chunk c are at sums + c * chunk_stride.
  static void FinishGroup(const float* sums, int chunks, size_t chunk_stride, int gr,
                          const Geometry& g, const Tensor& f, const Tensor& scale, Tensor* df,
                          Tensor* dscale) {
    const int taps = g.k * g.k;
    const float* fd = f.flat<float>().data();
    const float* sd = scale.flat<float>().data();
    float* dfd = df->flat<float>().data();
    float* dsd = dscale->flat<float>().data();
    for (int i = 0; i < kG; ++i) dsd[gr * kG + i] = 0.0f;
    for (int t = 0; t < taps; ++t)
      for (int i = 0; i < kG; ++i) {
        const int c = gr * kG + i;
        const int64_t at = (static_cast<int64_t>(t) * kG + i) * g.C + gr * kG;
        const float* src = sums + (static_cast<size_t>(t) * kG + i) * kG;
        const __m256 s = _mm256_set1_ps(sd[c]);
        __m256 d0 = _mm256_loadu_ps(src), d1 = _mm256_loadu_ps(src + 8);
        for (int chunk = 1; chunk < chunks; ++chunk) {
          d0 = _mm256_add_ps(d0, _mm256_loadu_ps(src + chunk * chunk_stride));
          d1 = _mm256_add_ps(d1, _mm256_loadu_ps(src + chunk * chunk_stride + 8));
        }
        _mm256_storeu_ps(dfd + at, _mm256_mul_ps(d0, s));
        _mm256_storeu_ps(dfd + at + 8, _mm256_mul_ps(d1, s));
        __m256 p = _mm256_fmadd_ps(d0, _mm256_loadu_ps(fd + at),
                                   _mm256_mul_ps(d1, _mm256_loadu_ps(fd + at + 8)));
        __m128 q = _mm_add_ps(_mm256_castps256_ps128(p), _mm256_extractf128_ps(p, 1));
        q = _mm_hadd_ps(q, q);
        q = _mm_hadd_ps(q, q);
        dsd[c] += _mm_cvtss_f32(q);
      }
  }

  const bool use_per_group_ = UsePerGroup();  // when the kernel was built
};

absl::Status ForwardShape(InferenceContext* c) {
  ShapeHandle in, f;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &in));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &f));
  int stride;
  std::string padding;
  TF_RETURN_IF_ERROR(c->GetAttr("stride", &stride));
  TF_RETURN_IF_ERROR(c->GetAttr("padding", &padding));
  DimensionHandle k = c->Dim(f, 0);
  auto out = [&](DimensionHandle d) -> DimensionHandle {
    if (!c->ValueKnown(d) || !c->ValueKnown(k)) return c->UnknownDim();
    int o, p;
    OutputSize(c->Value(d), c->Value(k), stride, padding == "SAME", &o, &p);
    return c->MakeDim(o);
  };
  c->set_output(0, c->MakeShape({c->Dim(in, 0), out(c->Dim(in, 1)), out(c->Dim(in, 2)),
                                 c->Dim(in, 3)}));
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("EfficientnetIpuGroupConv16")
    .Input("input: float")
    .Input("filter: float")
    .Input("input_offset: float")
    .Input("input_scale: float")
    .Output("output: float")
    .Attr("stride: int >= 1")
    .Attr("padding: {'SAME', 'VALID'}")
    .SetShapeFn(ForwardShape);

REGISTER_OP("EfficientnetIpuGroupConv16BackpropInput")
    .Input("input_sizes: int32")
    .Input("filter: float")
    .Input("out_backprop: float")
    .Input("input_scale: float")
    .Output("output: float")
    .Output("output_sum: float")
    .Attr("stride: int >= 1")
    .Attr("padding: {'SAME', 'VALID'}")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(InputSizesShapeFn(c, 0));
      ShapeHandle s = c->output(0);
      c->set_output(1, c->MakeShape({c->Dim(s, 0), c->Dim(s, 3)}));
      return absl::OkStatus();
    });

REGISTER_OP("EfficientnetIpuGroupConv16BackpropFilter")
    .Input("input: float")
    .Input("filter: float")
    .Input("out_backprop: float")
    .Input("input_offset: float")
    .Input("input_scale: float")
    .Output("output: float")
    .Output("scale_backprop: float")
    .Attr("stride: int >= 1")
    .Attr("padding: {'SAME', 'VALID'}")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(1));
      c->set_output(1, c->Vector(c->Dim(c->input(1), 3)));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("EfficientnetIpuGroupConv16").Device(DEVICE_CPU), GroupConv16Op);
REGISTER_KERNEL_BUILDER(
    Name("EfficientnetIpuGroupConv16BackpropInput").Device(DEVICE_CPU).HostMemory("input_sizes"),
    GroupConv16BackpropInputOp);
REGISTER_KERNEL_BUILDER(Name("EfficientnetIpuGroupConv16BackpropFilter").Device(DEVICE_CPU),
                        GroupConv16BackpropFilterOp);

// Sets the inner blocks that op kernels constructed from now on run (BlockOptions); called
// by kernels/library.py through ctypes when it loads the library and whenever
// kernels.settings.block_variant changes them.
extern "C" void EfficientnetIpuSetBlockOptions(int avx2_only, int winograd, int per_group) {
  efficientnet_ipu::g_block_options.avx2_only = avx2_only != 0;
  efficientnet_ipu::g_block_options.winograd = winograd != 0;
  efficientnet_ipu::g_block_options.per_group = per_group != 0;
}
