// The inner loops of depthwise_conv.cc, written once over a vector type ``Vec`` (one
// register of Vec::kLanes channels with loads, stores and multiply-adds; AVX2 or
// AVX-512) and included twice by depthwise_conv.cc, once in namespace avx2 and once in
// namespace avx512 under `#pragma GCC target("avx512f")`, each with its own ``Vec``. No
// include guard on purpose. Needs Geometry, InputTap, FloorDiv and kMaxK from the
// includer.

// out[(r + t s) * C + c .. + kLanes] = sum over taps of w[c] * dy_row[(t + off) * C + c],
// for the P pixels t0 .. t0 + P - 1, whose taps all lie inside the output row. P
// independent accumulators (two when P = 1, even and odd taps), so the multiply-adds of
// one pixel do not wait on each other.
template <int P, bool kFull>
inline void InputGradientBlock(const InputTap* taps, int ntaps, int C, int t0, int c,
                               int64_t out_stride, float* out, typename Vec::Mask tail) {
  constexpr int A = P == 1 ? 2 : P;
  typename Vec::V acc[A];
  for (int a = 0; a < A; ++a) acc[a] = Vec::Zero();
  for (int q = 0; q < ntaps; ++q) {
    const typename Vec::V w = Vec::Load(taps[q].w + c, kFull, tail);
    const float* d = taps[q].dy_row + static_cast<int64_t>(t0 + taps[q].off) * C + c;
    if (P == 1) {
      acc[q & 1] = Vec::Fma(w, Vec::Load(d, kFull, tail), acc[q & 1]);
      continue;
    }
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p)
      acc[p] = Vec::Fma(w, Vec::Load(d + static_cast<int64_t>(p) * C, kFull, tail), acc[p]);
  }
  if (P == 1) acc[0] = Vec::Add(acc[0], acc[1]);
  for (int p = 0; p < P; ++p) Vec::Store(out + p * out_stride + c, acc[p], kFull, tail);
}

// Runs block(c, full) for every group of kLanes channels of a pixel block: full groups,
// then the masked tail. ``full`` is std::true_type or std::false_type, so that the block
// can pass decltype(full)::value on as a template argument.
template <typename Block>
inline void ForEachChannelGroup(int C, int c_end, Block block) {
  for (int c = 0; c < c_end; c += Vec::kLanes) block(c, std::true_type());
  if (c_end < C) block(c_end, std::false_type());
}

// Zeros for the taps that fall outside a row (pointer-table blocks below): at least C
// floats, one buffer per thread.
inline const float* Zeros(int C) {
  thread_local std::vector<float> zeros;
  if (static_cast<int>(zeros.size()) < C) zeros.assign(C, 0.0f);
  return zeros.data();
}

// True where a row of ``count`` pixels, of which [lo, hi) have all their taps inside,
// runs as pointer-table blocks end to end: at most 8 pixels, or ends of at least 30 %.
inline bool MostlyEnds(int count, int lo, int hi) {
  return count <= 8 || 10 * (lo + count - hi) >= 3 * count;
}

// Splits [t0, t1) into the fewest blocks of at most 8 pixels, as even as possible (10 as
// 5 + 5, not 8 + 2), and calls block(t, P) with P a std::integral_constant for each.
template <typename Block>
inline void EvenBlocks(int t0, int t1, Block block) {
  const int n = t1 - t0, nb = (n + 7) / 8;
  for (int b = 0, t = t0; b < nb; ++b) {
    const int size = n / nb + (b < n % nb ? 1 : 0);
    switch (size) {
      case 1: block(t, std::integral_constant<int, 1>()); break;
      case 2: block(t, std::integral_constant<int, 2>()); break;
      case 3: block(t, std::integral_constant<int, 3>()); break;
      case 4: block(t, std::integral_constant<int, 4>()); break;
      case 5: block(t, std::integral_constant<int, 5>()); break;
      case 6: block(t, std::integral_constant<int, 6>()); break;
      case 7: block(t, std::integral_constant<int, 7>()); break;
      default: block(t, std::integral_constant<int, 8>()); break;
    }
    t += size;
  }
}

// InputGradientBlock for pixels some of whose taps fall outside the output row: tap q of
// pixel p reads d[q P + p] + c, which points at Zeros() for the taps outside; only the
// taps in ``live`` (those inside the row for some pixel of the block) run.
template <int P, bool kFull>
inline void InputGradientTableBlock(const InputTap* taps, const int* live, int nlive,
                                    const float* const* d, int c, int64_t out_stride,
                                    float* out, typename Vec::Mask tail) {
  typename Vec::V acc[P];
  for (int p = 0; p < P; ++p) acc[p] = Vec::Zero();
  for (int l = 0; l < nlive; ++l) {
    const int q = live[l];
    const typename Vec::V w = Vec::Load(taps[q].w + c, kFull, tail);
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p)
      acc[p] = Vec::Fma(w, Vec::Load(d[q * P + p] + c, kFull, tail), acc[p]);
  }
  for (int p = 0; p < P; ++p) Vec::Store(out + p * out_stride + c, acc[p], kFull, tail);
}

// The input pixels iw = r + t s of one row, t in [t0, t1), in EvenBlocks through tap
// pointer tables: the row's ends, where taps fall outside the output row, and whole rows
// that are mostly ends (InputGradientRow): single-pixel blocks at the ends leave the
// small 5x5 layers slower than oneDNN's. A table block loads a pointer per
// multiply-add, so where the ends are short (3x3 at 10-14 px) the interior keeps its
// blocks: end to end there, the 3x3 rows ran 0.75-0.8x.
inline void InputGradientTable(const Geometry& g, const InputTap* taps, int ntaps, int r,
                               int t0, int t1, float* out_row, typename Vec::Mask tail) {
  const int C = g.C, c_end = C / Vec::kLanes * Vec::kLanes;
  const float* zeros = Zeros(C);
  EvenBlocks(t0, t1, [&](int t, auto pixels) {
    constexpr int P = decltype(pixels)::value;
    const float* d[kMaxK * kMaxK * P];
    int live[kMaxK * kMaxK], nlive = 0;
    for (int q = 0; q < ntaps; ++q) {
      bool inside = false;
      for (int p = 0; p < P; ++p) {
        const int ow = t + p + taps[q].off;
        inside |= ow >= 0 && ow < g.OW;
        d[q * P + p] = ow >= 0 && ow < g.OW ? taps[q].dy_row + static_cast<int64_t>(ow) * C
                                            : zeros;
      }
      if (inside) live[nlive++] = q;
    }
    float* out = out_row + static_cast<int64_t>(r + t * g.s) * C;
    const int64_t out_stride = static_cast<int64_t>(g.s) * C;
    ForEachChannelGroup(C, c_end, [&](int c, auto full) {
      InputGradientTableBlock<P, decltype(full)::value>(taps, live, nlive, d, c, out_stride,
                                                        out, tail);
    });
  });
}

// The input pixels iw = r + t s of one row, t in [t0, t1), all taps inside the output
// row: blocks of 8 pixels, then 4, 2 and 1; each block runs over all channels
// before the next. The 8-pixel blocks prefetch the next block's lines of the
// output-gradient rows into L1 as they go, a share with each group of channels: without
// it the loads wait on memory.
inline void InputGradientInterior(const Geometry& g, const InputTap* taps, int ntaps, int r,
                                  int t0, int t1, float* out_row, typename Vec::Mask tail) {
  const int C = g.C, c_end = C / Vec::kLanes * Vec::kLanes;
  const int64_t out_stride = static_cast<int64_t>(g.s) * C;
  const float* rows[kMaxK];  // the taps' distinct output-gradient rows
  int nrows = 0, min_off = 0, max_off = 0;
  for (int q = 0; q < ntaps; ++q) {
    min_off = q ? std::min(min_off, taps[q].off) : taps[q].off;
    max_off = q ? std::max(max_off, taps[q].off) : taps[q].off;
    if (std::find(rows, rows + nrows, taps[q].dy_row) == rows + nrows)
      rows[nrows++] = taps[q].dy_row;
  }
  const int groups = (C + Vec::kLanes - 1) / Vec::kLanes;
  const int64_t lines = (static_cast<int64_t>(8 + max_off - min_off) * C * 4 + 63) / 64;
  int t = t0;
  auto blocks = [&](auto pixels) {  // blocks of P pixels (a std::integral_constant) while they fit
    constexpr int P = decltype(pixels)::value;
    for (; t + P <= t1; t += P) {
      float* out = out_row + static_cast<int64_t>(r + t * g.s) * C;
      const int64_t next = static_cast<int64_t>(t + 8 + min_off) * C;  // floats into a row
      int group = 0;
      ForEachChannelGroup(C, c_end, [&](int c, auto full) {
        if (P == 8) {  // this group's share of the next block's lines
          const int64_t l0 = lines * group / groups, l1 = lines * (group + 1) / groups;
          for (int q = 0; q < nrows; ++q)
            for (int64_t l = l0; l < l1; ++l)
              _mm_prefetch(reinterpret_cast<const char*>(rows[q] + next) + l * 64,
                           _MM_HINT_T0);
        }
        ++group;
        InputGradientBlock<P, decltype(full)::value>(taps, ntaps, C, t, c, out_stride, out,
                                                     tail);
      });
    }
  };
  blocks(std::integral_constant<int, 8>());
  blocks(std::integral_constant<int, 4>());
  blocks(std::integral_constant<int, 2>());
  blocks(std::integral_constant<int, 1>());
}

// Input gradient of row ih of image n, all channels. f: filter [k, k, C]. The pixels of
// the row fall into s residue classes iw = r + t s; within one, every pixel has the same
// taps (i, j) (those with ih + pt - i and r + pl - j multiples of s), reading output
// pixel ow = t + off. The pixels near the ends of the row, where some taps fall outside
// the output row, run InputGradientTable; so does the whole row where MostlyEnds.
void InputGradientRow(const Geometry& g, const float* f, const float* dy, int n, int ih,
                      float* dx) {
  const int s = g.s, k = g.k, C = g.C;
  float* out_row = dx + (static_cast<int64_t>(n) * g.H + ih) * g.W * C;
  const float* dy_image = dy + static_cast<int64_t>(n) * g.OH * g.OW * C;
  const int c_end = C / Vec::kLanes * Vec::kLanes;
  const typename Vec::Mask tail = Vec::TailMask(C - c_end);
  InputTap taps[kMaxK * kMaxK];
  for (int r = 0; r < s && r < g.W; ++r) {
    int ntaps = 0, min_off = 0, max_off = 0;
    for (int i = 0; i < k; ++i) {
      const int num = ih + g.pt - i;  // oh s
      if (num < 0 || num % s != 0 || num / s >= g.OH) continue;
      for (int j = 0; j < k; ++j) {
        const int m = r + g.pl - j;  // (ow - t) s
        if (((m % s) + s) % s != 0) continue;
        const int off = FloorDiv(m, s);
        min_off = ntaps ? std::min(min_off, off) : off;
        max_off = ntaps ? std::max(max_off, off) : off;
        taps[ntaps++] = {f + (static_cast<int64_t>(i) * k + j) * C,
                         dy_image + static_cast<int64_t>(num / s) * g.OW * C, off};
      }
    }
    const int count = (g.W - r + s - 1) / s;  // pixels iw = r + t s < W
    // [lo, hi): the t whose taps all lie inside the output row.
    const int lo = ntaps ? std::min(count, std::max(0, -min_off)) : count;
    const int hi = ntaps ? std::max(lo, std::min(count, g.OW - max_off)) : count;
    if (ntaps == 0) {  // no tap reaches these pixels
      for (int t = 0; t < count; ++t)
        std::fill_n(out_row + static_cast<int64_t>(r + t * s) * C, C, 0.0f);
    } else if (MostlyEnds(count, lo, hi)) {
      InputGradientTable(g, taps, ntaps, r, 0, count, out_row, tail);
    } else {
      InputGradientTable(g, taps, ntaps, r, 0, lo, out_row, tail);
      InputGradientInterior(g, taps, ntaps, r, lo, hi, out_row, tail);
      InputGradientTable(g, taps, ntaps, r, hi, count, out_row, tail);
    }
  }
}

// dw[tap][0:kLanes] += the filter gradient of one group of channels (c) from output
// pixels ow0 .. ow0 + P - 1 of one row, whose taps all lie inside the input row: the P
// output gradients stay in registers, and each valid kernel row's taps add to their
// sums (two accumulators each, even and odd pixels).
template <int P, bool kFull>
inline void FilterGradientBlock(const Geometry& g, const float* const* x_rows,
                                const int* rows, int nrows, const float* dy_row, int ow0,
                                int c, float* dw, typename Vec::Mask tail) {
  const int C = g.C, k = g.k, s = g.s;
  typename Vec::V d[P];
  for (int p = 0; p < P; ++p)
    d[p] = Vec::Load(dy_row + static_cast<int64_t>(ow0 + p) * C + c, kFull, tail);
  for (int q = 0; q < nrows; ++q) {
    const float* x0 = x_rows[q] + static_cast<int64_t>(ow0 * s - g.pl) * C + c;
    float* acc_row = dw + rows[q] * k * Vec::kLanes;
    for (int j = 0; j < k; ++j) {
      const float* xj = x0 + static_cast<int64_t>(j) * C;
      typename Vec::V a0 = Vec::LoadU(acc_row + j * Vec::kLanes), a1 = Vec::Zero();
#pragma GCC unroll 8
      for (int p = 0; p < P; p += 2) {
        a0 = Vec::Fma(Vec::Load(xj + static_cast<int64_t>(p) * s * C, kFull, tail), d[p], a0);
        if (p + 1 < P)
          a1 = Vec::Fma(Vec::Load(xj + static_cast<int64_t>(p + 1) * s * C, kFull, tail),
                        d[p + 1], a1);
      }
      Vec::StoreU(acc_row + j * Vec::kLanes, Vec::Add(a0, a1));
    }
  }
}

// FilterGradientBlock for output pixels some of whose taps fall outside the input row:
// tap j of kernel row q for pixel p reads x[(q k + j) P + p] + c, which points at Zeros()
// for the taps outside; only the taps in ``live`` run, as pairs (table index q k + j,
// accumulator tap i k + j) of the taps inside the row for some pixel of the block.
template <int P, bool kFull>
inline void FilterGradientTableBlock(const Geometry& g, const float* const* x,
                                     const int (*live)[2], int nlive, const float* dy_row,
                                     int ow0, int c, float* dw, typename Vec::Mask tail) {
  const int C = g.C;
  typename Vec::V d[P];
  for (int p = 0; p < P; ++p)
    d[p] = Vec::Load(dy_row + static_cast<int64_t>(ow0 + p) * C + c, kFull, tail);
  for (int l = 0; l < nlive; ++l) {
    const float* const* xj = x + live[l][0] * P;
    float* acc = dw + live[l][1] * Vec::kLanes;
    typename Vec::V a0 = Vec::LoadU(acc), a1 = Vec::Zero();
#pragma GCC unroll 8
    for (int p = 0; p < P; p += 2) {
      a0 = Vec::Fma(Vec::Load(xj[p] + c, kFull, tail), d[p], a0);
      if (p + 1 < P) a1 = Vec::Fma(Vec::Load(xj[p + 1] + c, kFull, tail), d[p + 1], a1);
    }
    Vec::StoreU(acc, Vec::Add(a0, a1));
  }
}

// The filter gradient's share of output pixels [ow0, ow1) of one row, in EvenBlocks
// through tap pointer tables (FilterGradientUnit: the row's ends, and whole rows that are
// mostly ends).
inline void FilterGradientTable(const Geometry& g, const float* const* x_rows,
                                const int* rows, int nrows, const float* dy_row, int ow0,
                                int ow1, float* dw, typename Vec::Mask tail) {
  const int C = g.C, k = g.k, L = Vec::kLanes, c_end = C / L * L;
  const int64_t taps_l = static_cast<int64_t>(k) * k * L;
  const float* zeros = Zeros(C);
  EvenBlocks(ow0, ow1, [&](int ow, auto pixels) {
    constexpr int P = decltype(pixels)::value;
    const float* x[kMaxK * kMaxK * P];
    int live[kMaxK * kMaxK][2], nlive = 0;
    for (int q = 0; q < nrows; ++q)
      for (int j = 0; j < k; ++j) {
        bool inside = false;
        for (int p = 0; p < P; ++p) {
          const int iw = (ow + p) * g.s + j - g.pl;
          inside |= iw >= 0 && iw < g.W;
          x[(q * k + j) * P + p] =
              iw >= 0 && iw < g.W ? x_rows[q] + static_cast<int64_t>(iw) * C : zeros;
        }
        if (inside) {
          live[nlive][0] = q * k + j;
          live[nlive++][1] = rows[q] * k + j;
        }
      }
    ForEachChannelGroup(C, c_end, [&](int c, auto full) {
      FilterGradientTableBlock<P, decltype(full)::value>(g, x, live, nlive, dy_row, ow, c,
                                                         dw + (c / L) * taps_l, tail);
    });
  });
}

// Adds the filter gradient of images [n0, n1) to dw ([groups of kLanes channels][k k]
// [kLanes] floats). Blocks of 8, then 4 and 2 output pixels where all taps fall inside
// the input row (the 8-pixel blocks prefetch the next block's lines as the input gradient
// does), FilterGradientTable elsewhere, and for whole rows where MostlyEnds.
void FilterGradientUnit(const Geometry& g, const float* x, const float* dy, int n0, int n1,
                        float* dw) {
  const int C = g.C, k = g.k, s = g.s, L = Vec::kLanes;
  const int c_end = C / L * L;
  const typename Vec::Mask tail = Vec::TailMask(C - c_end);
  const int64_t taps_l = static_cast<int64_t>(k) * k * L;
  // [lo, hi): the outputs whose k taps all fall inside the input row.
  const int lo = std::min(g.OW, (g.pl + s - 1) / s);
  const int hi = std::max(lo, std::min(g.OW, FloorDiv(g.W - k + g.pl, s) + 1));
  const int groups = (C + L - 1) / L;
  const int64_t x_lines = (static_cast<int64_t>(8 * s + k - 1) * C * 4 + 63) / 64;
  const int64_t dy_lines = (static_cast<int64_t>(8) * C * 4 + 63) / 64;
  const float* x_rows[kMaxK];
  int rows[kMaxK];
  for (int n = n0; n < n1; ++n)
    for (int oh = 0; oh < g.OH; ++oh) {
      int nrows = 0;
      for (int i = 0; i < k; ++i) {
        const int ih = oh * s + i - g.pt;
        if (ih < 0 || ih >= g.H) continue;
        x_rows[nrows] = x + (static_cast<int64_t>(n) * g.H + ih) * g.W * C;
        rows[nrows++] = i;
      }
      const float* dy_row = dy + (static_cast<int64_t>(n) * g.OH + oh) * g.OW * C;
      if (MostlyEnds(g.OW, lo, hi)) {
        FilterGradientTable(g, x_rows, rows, nrows, dy_row, 0, g.OW, dw, tail);
        continue;
      }
      FilterGradientTable(g, x_rows, rows, nrows, dy_row, 0, lo, dw, tail);
      int ow = lo;
      auto blocks = [&](auto pixels) {  // blocks of P pixels (a std::integral_constant)
        constexpr int P = decltype(pixels)::value;
        for (; ow + P <= hi; ow += P) {
          const float* next_x = x_rows[0] + static_cast<int64_t>((ow + 8) * s - g.pl) * C;
          const char* next_dy = reinterpret_cast<const char*>(dy_row + (ow + 8) * C);
          int group = 0;
          ForEachChannelGroup(C, c_end, [&](int c, auto full) {
            if (P == 8) {  // this group's share of the next block's lines
              const int64_t x0 = x_lines * group / groups;
              const int64_t x1 = x_lines * (group + 1) / groups;
              for (int q = 0; q < nrows; ++q) {
                const char* base =
                    reinterpret_cast<const char*>(next_x + (x_rows[q] - x_rows[0]));
                for (int64_t l = x0; l < x1; ++l) _mm_prefetch(base + l * 64, _MM_HINT_T0);
              }
              for (int64_t l = dy_lines * group / groups;
                   l < dy_lines * (group + 1) / groups; ++l)
                _mm_prefetch(next_dy + l * 64, _MM_HINT_T0);
            }
            ++group;
            FilterGradientBlock<P, decltype(full)::value>(g, x_rows, rows, nrows, dy_row, ow,
                                                          c, dw + (c / L) * taps_l, tail);
          });
        }
      };
      blocks(std::integral_constant<int, 8>());
      blocks(std::integral_constant<int, 4>());
      blocks(std::integral_constant<int, 2>());
      FilterGradientTable(g, x_rows, rows, nrows, dy_row, ow, g.OW, dw, tail);
    }
}
