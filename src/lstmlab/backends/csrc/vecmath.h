// Vector types and the activations of the cell family, written with GCC vector
// extensions so the same code compiles to AVX-512, AVX2 or NEON. exp, sigmoid and tanh
// are Cephes-style range reduction + polynomial, accurate to a few ulp in float and
// double; no -ffast-math is needed and IEEE semantics are kept everywhere else.
//
// Non-finite values come out as torch's do (the reference backend): NaN in, NaN out (the
// clamps below keep it); sigmoid(+-inf) = 1, 0; tanh(+-inf) = +-1; relu(NaN) = NaN, and
// relu's backward selects rather than multiplies, as torch's threshold_backward does.
#pragma once
#include <cstdint>
#include <cstring>
#include <limits>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace lstmlab {

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#else
constexpr int kVecBytes = 32;
#endif

template <class T> struct Vec;
template <> struct Vec<float> {
  typedef float type __attribute__((vector_size(kVecBytes)));
  typedef int32_t itype __attribute__((vector_size(kVecBytes)));
  static constexpr int n = kVecBytes / 4;
};
template <> struct Vec<double> {
  typedef double type __attribute__((vector_size(kVecBytes)));
  typedef int64_t itype __attribute__((vector_size(kVecBytes)));
  static constexpr int n = kVecBytes / 8;
};

template <class T> using vec_t = typename Vec<T>::type;

// (s - 0 rather than 0 + s: the latter turns -0.0 into +0.0)
template <class T> inline vec_t<T> splat(T s) { return s - vec_t<T>{}; }

template <class T> inline vec_t<T> load(const T* p) {
  vec_t<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class T> inline void store(T* p, vec_t<T> v) { std::memcpy(p, &v, sizeof v); }

// Loads / stores of the first n (< lanes) elements; the rest of the vector is zero.
// With AVX-512 and AVX2 these are masked moves, which never touch memory past p + n (a
// memcpy of a run-time length, the fallback, is a library call: the built-in product's
// last part-filled panel ran at 4 GFLOP/s on a Zen 1 where whole ones ran at 30).
#if defined(__AVX2__) && !defined(__AVX512F__)
inline __m256i lanes_below(int n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
inline __m256i lanes_below_pd(int n) { return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3)); }
#endif
inline vec_t<float> load_n(const float* p, int n) {
#if defined(__AVX512F__)
  return (vec_t<float>)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p);
#elif defined(__AVX2__)
  return (vec_t<float>)_mm256_maskload_ps(p, lanes_below(n));
#else
  vec_t<float> v = {};
  std::memcpy(&v, p, sizeof(float) * n);
  return v;
#endif
}
inline vec_t<double> load_n(const double* p, int n) {
#if defined(__AVX512F__)
  return (vec_t<double>)_mm512_maskz_loadu_pd((__mmask8)((1u << n) - 1), p);
#elif defined(__AVX2__)
  return (vec_t<double>)_mm256_maskload_pd(p, lanes_below_pd(n));
#else
  vec_t<double> v = {};
  std::memcpy(&v, p, sizeof(double) * n);
  return v;
#endif
}
inline void store_n(float* p, vec_t<float> v, int n) {
#if defined(__AVX512F__)
  _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), (__m512)v);
#elif defined(__AVX2__)
  _mm256_maskstore_ps(p, lanes_below(n), (__m256)v);
#else
  std::memcpy(p, &v, sizeof(float) * n);
#endif
}
inline void store_n(double* p, vec_t<double> v, int n) {
#if defined(__AVX512F__)
  _mm512_mask_storeu_pd(p, (__mmask8)((1u << n) - 1), (__m512d)v);
#elif defined(__AVX2__)
  _mm256_maskstore_pd(p, lanes_below_pd(n), (__m256d)v);
#else
  std::memcpy(p, &v, sizeof(double) * n);
#endif
}

// Load n elements (n <= lanes): the full-width load when n == lanes.
template <class T> inline vec_t<T> ld(const T* p, int n) { return n == Vec<T>::n ? load(p) : load_n(p, n); }
template <class T> inline void st(T* p, vec_t<T> v, int n) {
  if (n == Vec<T>::n) store(p, v); else store_n(p, v, n);
}

// x clamped to [lo, hi], NaN kept (each comparison is false for NaN, which then stays).
template <class T> inline vec_t<T> clamp(vec_t<T> x, T lo, T hi) {
  x = x < lo ? splat(lo) : x;
  return x > hi ? splat(hi) : x;
}

// ---- exp ------------------------------------------------------------------------------
#if defined(__AVX512F__)
// exp(x) = 2^n 2^f, n = round(x log2 e), f = x log2 e - n in [-1/2, 1/2] (computed with
// log2 e split in two, so f is accurate); 2^f by a degree-6 fit (relative error 1e-7);
// vscalefps applies 2^n. x is clamped to [-87, 87]: exp(x), and 1 / (1 + exp(x)) in the
// sigmoid, stay normal numbers (denormals cost a hundred cycles each); exp(x) for x < -87
// is then 1.6e-38 instead of smaller, an absolute error below 2e-38 where the cells add
// it to numbers of order 1 (vsigmoid treats its own tail exactly). A NaN passes the clamp
// (vminps / vmaxps return their second operand when either is NaN) and gives NaN.
inline vec_t<float> vexp(vec_t<float> x) {
  using V = vec_t<float>;
  const __m512 v = _mm512_max_ps(_mm512_set1_ps(-87.0f), _mm512_min_ps(_mm512_set1_ps(87.0f), (__m512)x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_fmsub_ps(v, _mm512_set1_ps(1.44269502162933349609375f), n);
  f = _mm512_fmadd_ps(v, _mm512_set1_ps(1.925963033500011e-08f), f);
  const V r = (V)f;
  V p = splat(1.5337577497120947e-04f);
  p = p * r + 1.3399859890341759e-03f;
  p = p * r + 9.618519805371761e-03f;
  p = p * r + 5.550329014658928e-02f;
  p = p * r + 2.4022646248340607e-01f;
  p = p * r + 6.931471824645996e-01f;
  p = p * r + 1.0f;
  return (V)_mm512_scalef_ps((__m512)p, n);
}
#else
// Cephes' expf: the same range reduction by bit tricks, a degree-5 polynomial; x clamped
// to [-87, 87] as above (a NaN stays NaN).
inline vec_t<float> vexp(vec_t<float> x) {
  using V = vec_t<float>;
  using I = Vec<float>::itype;
  x = clamp<float>(x, -87.0f, 87.0f);
  const V magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  V t = x * 1.44269504088896341f + magic;
  V n = t - magic;
  V r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V y = splat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  I ni = (I)t - (I)magic;               // the integer n, from the bits of t
  V pow2n = (V)((ni + 127) << 23);
  return y * pow2n;
}
#endif

inline vec_t<double> vexp(vec_t<double> x) {
  using V = vec_t<double>;
  using I = Vec<double>::itype;
  x = clamp<double>(x, -708.0, 708.0);  // normal results, NaN kept, as above
  const V magic = splat(6755399441055744.0);  // 1.5 * 2^52
  V t = x * 1.4426950408889634073599 + magic;
  V n = t - magic;
  V r = x - n * 6.93145751953125e-1;
  r = r - n * 1.42860682030941723212e-6;
  V rr = r * r;
  V px = r * ((rr * 1.26177193074810590878e-4 + 3.02994407707441961300e-2) * rr + 9.99999999999999999910e-1);
  V qx = ((rr * 3.00198505138664455042e-6 + 2.52448340349684104192e-3) * rr + 2.27265548208155028766e-1) * rr
         + 2.00000000000000000009e0;
  V y = 1.0 + 2.0 * (px / (qx - px));
  I ni = (I)t - (I)magic;
  V pow2n = (V)((ni + 1023) << 52);
  return y * pow2n;
}

// 1 / d for d >= 1 (all uses here): AVX-512's 14-bit reciprocal refined by Newton steps
// (one for float, two for double: a few ulp) is several times cheaper than a division.
inline vec_t<float> vrecip(vec_t<float> d) {
#if defined(__AVX512F__)
  vec_t<float> r = (vec_t<float>)_mm512_rcp14_ps((__m512)d);
  return r * (2.0f - d * r);
#else
  return 1.0f / d;
#endif
}
inline vec_t<double> vrecip(vec_t<double> d) {
#if defined(__AVX512F__)
  vec_t<double> r = (vec_t<double>)_mm512_rcp14_pd((__m512d)d);
  r = r * (2.0 - d * r);
  return r * (2.0 - d * r);
#else
  return 1.0 / d;
#endif
}

// Whether any lane of a comparison's result (all bits set where true) is true.
template <class T> inline bool any_lane(typename Vec<T>::itype m) {
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4) return _mm512_test_epi32_mask((__m512i)m, (__m512i)m) != 0;
  else return _mm512_test_epi64_mask((__m512i)m, (__m512i)m) != 0;
#elif defined(__AVX__)
  return !_mm256_testz_si256((__m256i)m, (__m256i)m);
#else
  typename Vec<T>::itype z = {};
  return std::memcmp(&m, &z, sizeof m) != 0;
#endif
}

// Where vexp's clamp begins (below it vexp(x) = exp(-87) or exp(-708)), and the last x at
// which torch's sigmoid 1 / (1 + exp(-x)) is not exactly 0: below it exp(-x) overflows
// (float: exp(88.72283172607422) is finite, exp of the next float, 88.72283935546875, is not).
template <class T> struct SigmoidTail;
template <> struct SigmoidTail<float> {
  static constexpr float clamp = -87.0f, zero = -88.72283172607422f;
};
template <> struct SigmoidTail<double> {
  static constexpr double clamp = -708.0, zero = -709.782712893384;
};

// 1 / (1 + exp(-x)), as torch computes it at both ends: below vexp's clamp it is exp(x)
// (1 + exp(x) rounds to 1 there), computed as exp(x / 2)^2 so that it reaches the denormal
// numbers with one rounding more than exp's own, and exactly 0 where torch's exp(-x)
// overflows (-inf included). A gate multiplies an unbounded candidate in some cells
// (minGRU's z h~ with h~ = g(x) or x; an LSTM with activation="identity"), so 1.6e-38 in
// place of 0 would not be a small error there. NaN stays NaN (every comparison is false).
template <class T> inline vec_t<T> vsigmoid(vec_t<T> x) {
  using V = vec_t<T>;
  const V s = vrecip(T(1) + vexp(-x));
  const auto tail = x < SigmoidTail<T>::clamp;
  if (__builtin_expect(!any_lane<T>(tail), 1)) return s;
  const V half = vexp(x * T(0.5));
  return x < SigmoidTail<T>::zero ? splat(T(0)) : (tail ? half * half : s);
}

template <class T> inline typename Vec<T>::itype sign_mask() {
  using I = typename Vec<T>::itype;
  using S = decltype(I{}[0]);
  return I{} + (S)((unsigned long long)1 << (8 * sizeof(S) - 1));
}

template <class T> inline vec_t<T> vabs(vec_t<T> x) {
  using I = typename Vec<T>::itype;
  return (vec_t<T>)((I)x & ~sign_mask<T>());
}

// tanh: a polynomial for |x| < 0.625 (no cancellation near 0), (1 - e)/(1 + e) with
// e = exp(-2|x|) elsewhere, the sign restored from x.
inline vec_t<float> tanh_small(vec_t<float> x) {
  vec_t<float> z = x * x;
  vec_t<float> p = splat(-5.70498872745e-3f);
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  return x + x * z * p;
}
inline vec_t<double> tanh_small(vec_t<double> x) {
  vec_t<double> z = x * x;
  vec_t<double> p = (z * -9.64399179425052238628e-1 - 9.92877231001918586564e1) * z - 1.61468768441708447952e3;
  vec_t<double> q = ((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z + 4.84406305325125486048e3;
  return x + x * z * (p / q);
}

template <class T> inline vec_t<T> vtanh(vec_t<T> x) {
  using V = vec_t<T>;
  using I = typename Vec<T>::itype;
  V ax = vabs<T>(x);
  V e = vexp(T(-2) * ax);
  V big = (T(1) - e) * vrecip(T(1) + e);
  big = (V)((I)big | ((I)x & sign_mask<T>()));
  return ax < T(0.625) ? tanh_small(x) : big;
}

// ---- the activations of CellSpec, and their derivatives as functions of the output --
// The codes are those of lstmlab.cells.ACTIVATIONS (each Activation's `code`); the module
// exports kActivations as `activations`, and Python checks that the two agree when it
// loads. A Cell holds an Act only after its constructor checked the code against
// kActivations (lstmlab_cpu.cpp cell_from), so the switches below are exhaustive over
// Act (no default: the compiler's -Wswitch names a case left out) and never reached with
// another value.
enum Act { ACT_TANH = 0, ACT_SIGMOID = 1, ACT_RELU = 2, ACT_IDENTITY = 3, ACT_G1997 = 4, ACT_H1997 = 5, ACT_GMIN = 6 };
// One entry of an enum's table of names, as the module exports it (name -> code).
struct EnumName {
  const char* name;
  int code;
};
inline constexpr EnumName kActivations[] = {{"tanh", ACT_TANH},         {"sigmoid", ACT_SIGMOID}, {"relu", ACT_RELU},
                                            {"identity", ACT_IDENTITY}, {"g1997", ACT_G1997},     {"h1997", ACT_H1997},
                                            {"g_min", ACT_GMIN}};

template <class T> inline vec_t<T> activate(Act a, vec_t<T> x) {
  switch (a) {
    case ACT_TANH: return vtanh<T>(x);
    case ACT_SIGMOID: return vsigmoid<T>(x);
    case ACT_RELU: return x < T(0) ? splat(T(0)) : x;  // NaN stays NaN
    case ACT_IDENTITY: return x;
    case ACT_G1997: return T(2) * vtanh<T>(T(0.5) * x);  // = 4 sigma(x) - 2
    case ACT_H1997: return vtanh<T>(T(0.5) * x);         // = 2 sigma(x) - 1
    case ACT_GMIN: return x >= T(0) ? x + T(0.5) : vsigmoid<T>(x);  // Feng et al.'s g (minlstm, mingru)
  }
  __builtin_unreachable();  // an Act is one of the cases (see above)
}

// d act / d x, given y = act(x) (the same formulas torch's autograd uses).
template <class T> inline vec_t<T> activate_grad(Act a, vec_t<T> y) {
  switch (a) {
    case ACT_TANH: return T(1) - y * y;
    case ACT_SIGMOID: return y * (T(1) - y);
    case ACT_RELU: return y > T(0) ? splat(T(1)) : splat(T(0));
    case ACT_IDENTITY: return splat(T(1));
    case ACT_G1997: return (y + T(2)) * (T(2) - y) * T(0.25);  // 4 s (1 - s), s = (y + 2) / 4
    case ACT_H1997: return (T(1) + y) * (T(1) - y) * T(0.5);   // 2 s (1 - s), s = (y + 1) / 2
    // g_min: the branch read off y (y >= 1/2 for x >= 0), which is not exact where a tiny
    // negative x rounds sigmoid(x) to 1/2: the min cells (modern.h) take it from x instead,
    // and the generic cells do not get g_min (lstmlab.backends.csrc.boundary.supports)
    case ACT_GMIN: return y >= T(0.5) ? splat(T(1)) : y * (T(1) - y);
  }
  __builtin_unreachable();  // an Act is one of the cases (see above)
}

// The gradient d of act's output taken back through it, given y = act(x): d act'(x), but
// for relu a selection, as torch's threshold_backward: 0 where y <= 0, else d (NaN or inf
// in d do not leak through a unit that is off; NaN in y lets d through).
template <class T> inline vec_t<T> activate_back(Act a, vec_t<T> d, vec_t<T> y) {
  if (a == ACT_RELU) return y <= T(0) ? splat(T(0)) : d;
  return d * activate_grad<T>(a, y);
}

}  // namespace lstmlab
