// Vector math shared by this project's CPU ops (proxy_norm.cc, norm_activation.cc): the
// activations and their derivatives for 8 floats at a time (AVX2 + FMA).
#ifndef EFFICIENTNET_IPU_CSRC_VECTOR_MATH_H_
#define EFFICIENTNET_IPU_CSRC_VECTOR_MATH_H_

#include <immintrin.h>

#include <cmath>
#include <string>
#include <type_traits>

namespace efficientnet_ipu {

enum class Act { kSwish, kRelu, kGelu, kLinear };

// The activation named by an op's "activation" attribute.
inline Act ActFromName(const std::string& name) {
  return name == "swish" ? Act::kSwish : name == "relu" ? Act::kRelu
         : name == "gelu" ? Act::kGelu : Act::kLinear;
}

// exp(x) for 8 floats: Cody-Waite range reduction x = k ln2 + r, |r| <= ln2 / 2, and a
// degree-5 polynomial for e^r (the Cephes expf coefficients); relative error about 2e-7.
// Inputs are clamped to [-87.3, 88.3], where float32's exp is finite and normal.
inline __m256 Exp(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// z = act(v) and, if d is not null, *d = act'(v), for 8 values.
inline __m256 Activate(Act act, __m256 v, __m256* d) {
  const __m256 one = _mm256_set1_ps(1.0f);
  switch (act) {
    case Act::kSwish: {
      const __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, Exp(_mm256_sub_ps(
                                                         _mm256_setzero_ps(), v))));
      const __m256 z = _mm256_mul_ps(v, s);
      if (d) *d = _mm256_fmadd_ps(z, _mm256_sub_ps(one, s), s);  // s + z (1 - s)
      return z;
    }
    case Act::kRelu: {
      const __m256 positive = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ);
      if (d) *d = _mm256_and_ps(positive, one);
      return _mm256_and_ps(positive, v);
    }
    case Act::kGelu: {  // rarely used: scalar erf per lane
      alignas(32) float x[8], z[8], dz[8];
      _mm256_store_ps(x, v);
      for (int j = 0; j < 8; ++j) {
        const float cdf = 0.5f * (1.0f + std::erf(x[j] * 0.70710678118654752f));
        z[j] = x[j] * cdf;
        dz[j] = cdf + x[j] * 0.39894228040143268f * std::exp(-0.5f * x[j] * x[j]);
      }
      if (d) *d = _mm256_load_ps(dz);
      return _mm256_load_ps(z);
    }
    default:
      if (d) *d = one;
      return v;
  }
}

// Calls fn(std::integral_constant<Act, act>()), so that a loop over a tensor can take the
// activation as a compile-time constant: a switch on the activation at every vector
// makes the scale-shift-swish loop about 1.5x slower.
template <typename Fn>
inline void WithAct(Act act, Fn fn) {
  switch (act) {
    case Act::kSwish: fn(std::integral_constant<Act, Act::kSwish>()); break;
    case Act::kRelu: fn(std::integral_constant<Act, Act::kRelu>()); break;
    case Act::kGelu: fn(std::integral_constant<Act, Act::kGelu>()); break;
    default: fn(std::integral_constant<Act, Act::kLinear>()); break;
  }
}

inline float Sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace efficientnet_ipu

#endif  // EFFICIENTNET_IPU_CSRC_VECTOR_MATH_H_
