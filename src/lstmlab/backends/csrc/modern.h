// The modern cells (issue #13): slstm (Beck et al. 2024) and minlstm / mingru (Feng et al.
// 2024), forward and backward over a whole sequence. The maths is
// lstmlab.backends.reference's _slstm_pointwise and _min_pointwise written out by hand, each
// operation in the order torch's autograd forms it, so that NaN and infinities land where
// the reference has them.
//
// Not the generic kernel's time loop (cells.h): these cells have more state (slstm's c, n,
// m) or none of its recurrent product (the min cells), and a dedicated path is shorter:
//   forward   K = x W_ih^T, one product for all steps; per step (slstm) the recurrent
//             product h_{t-1} R^T added to the step's rows of K, one product per block
//             (R is block-diagonal by heads); then the pointwise pass, which keeps K +
//             biases (the pre-activations) in place and, for slstm, every c_t, n_t, m_t.
//   backward  per step (last to first) the pointwise backward, which overwrites the saved
//             pre-activations with their gradients dP (slstm: then dh_{t-1} = dP R, one
//             product per block); afterwards dx = dP W_ih, dW_ih = dP^T x, dW_hh per head
//             (dP^T h_{t-1}), the biases' gradients as sums of dP: products over all steps.
// Workers (threads) share a sequence by units or, slstm, by batch rows. The min cells' units
// never meet: each worker runs every step of its range of units. slstm's blocks (Block
// below; a head's units cut at the same edges in every head) meet at every step, at one
// barrier: the forward product of a block reads all of its head's h_{t-1}, the backward
// product all of its head's dP (csrc/steps.h run_steps; modern_layer.cpp
// modern_forward_impl). slstm's groups of batch rows (small steps, enough rows) never meet:
// each runs every step of its rows, all blocks, and every group reads all the weights.
// Column order of slstm's pre-activations: block-major, a block's gates i f z o side by
// side (Block); the weights are permuted into it once per call (modern_layer.cpp
// slstm_rows). With one head and one block it is torch's (g H + u).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "vecmath.h"

namespace lstmlab {

// The kinds of this path and slstm's forget activations (exported as `modern_kinds` and
// `forget_activations`; lstmlab.backends.csrc.boundary mirrors them).
enum ModernKind { MODERN_SLSTM = 0, MODERN_MINLSTM = 1, MODERN_MINGRU = 2 };
enum ForgetAct { FORGET_SIGMOID = 0, FORGET_EXP = 1 };
inline constexpr EnumName kModernKinds[] = {
    {"slstm", MODERN_SLSTM}, {"minlstm", MODERN_MINLSTM}, {"mingru", MODERN_MINGRU}};
inline constexpr EnumName kForgetActs[] = {{"sigmoid", FORGET_SIGMOID}, {"exp", FORGET_EXP}};

template <class T>
struct ModernMath {
  using V = vec_t<T>;
  static constexpr int L = Vec<T>::n;

  // exp(x) with IEEE's results outside the polynomial's range (0 at -inf and below the
  // smallest normal, inf above the largest, denormals): such lanes take std::exp.
  static V exp(V x) {
    V r = vexp(x);
    const T lo = sizeof(T) == 4 ? T(-87) : T(-708), hi = -lo;
    const auto out = (x < lo) | (x > hi);
    uint64_t words[sizeof out / 8], any = 0;  // the lanes' masks, 64 bits at a time
    std::memcpy(words, &out, sizeof out);
    for (uint64_t w : words) any |= w;
    if (__builtin_expect(any != 0, 0))
      for (int k = 0; k < L; ++k)
        if (out[k]) r[k] = std::exp(x[k]);
    return r;
  }
  // log sigmoid(x) = -softplus(-x) as torch computes softplus (threshold 20): -y for
  // y = -x > 20, else -log1p(exp(y)); std::log1p for double, a vector form for float.
  static V logsig(V x) {
    if constexpr (sizeof(T) == 4) {
      const V y = -x, e = exp(y), w = T(1) + e;
      // log1p(e) = log(w) e / (w - 1) (exact where w = 1 + e rounds; e itself where w == 1)
      const V lp = w == T(1) ? e : vlogf(w) * e / (w - T(1));
      return -(y > T(20) ? y : lp);
    } else {
      V r;
      for (int k = 0; k < L; ++k) {
        const T y = -x[k];
        r[k] = -(y > T(20) ? y : std::log1p(std::exp(y)));
      }
      return r;
    }
  }
  // log(w) for float w >= 1 (finite; other lanes are not read): Cephes' logf, ~1 ulp.
  static vec_t<float> vlogf(vec_t<float> w) {
    using VF = vec_t<float>;
    using I = Vec<float>::itype;
    const I bits = (I)w;
    I e = ((bits >> 23) & 0xff) - 126;
    VF m = (VF)((bits & (I{} + 0x807fffff)) | (I{} + 0x3f000000));  // in [0.5, 1)
    const I small = m < 0.707106781186547524f;  // -1 where true
    e = e + small;
    m = small ? m + m - 1.0f : m - 1.0f;
    const VF z = m * m;
    VF y = splat(7.0376836292e-2f);
    y = y * m - 1.1514610310e-1f;
    y = y * m + 1.1676998740e-1f;
    y = y * m - 1.2420140846e-1f;
    y = y * m + 1.4249322787e-1f;
    y = y * m - 1.6668057665e-1f;
    y = y * m + 2.0000714765e-1f;
    y = y * m - 2.4999993993e-1f;
    y = y * m + 3.3333331174e-1f;
    y = y * m * z;
    const VF ef = __builtin_convertvector(e, VF);
    y = y + ef * -2.12194440e-4f;
    y = y - 0.5f * z;
    return m + y + ef * 0.693359375f;
  }
  // The gradient g of logsig(x) taken back to x: torch's softplus_backward at -x (a sign
  // flip on either side, exact): g where -x > 20, else g e / (e + 1), e = exp(-x).
  static V logsig_back(V g, V x) {
    const V y = -x, e = exp(y);
    const V r = g * e / (e + T(1));
    return y > T(20) ? g : r;
  }
  // torch.maximum: NaN if either is.
  static V maximum(V a, V b) {
    V r = a > b ? a : b;
    r = a != a ? a : r;
    return b != b ? b : r;
  }
  // torch's sigmoid backward: g (1 - s) s.
  static V sigmoid_back(V g, V s) { return g * (T(1) - s) * s; }
  // The candidate h~ = act(k) of the min cells and its backward (g_min as torch.where forms
  // it: g where k >= 0, else g (1 - s) s with s = sigmoid(k)).
  static V cand(Act act, V k) { return act == ACT_IDENTITY ? k : activate<T>(act, k); }
  static V cand_back(Act act, V g, V k) {
    if (act == ACT_IDENTITY) return g;
    return k >= T(0) ? g : sigmoid_back(g, vsigmoid<T>(k));
  }
};

// A block of slstm's units, the path's unit of work: units [j0, j1) of head d (dh units a
// head), whose gates i f z o are the columns base + g w + (j - j0), w = j1 - j0, of the
// pre-activations. Blocks lie head by head, a head's in order of j0, so that a head's
// columns are 4 dh consecutive ones from d 4 dh (its block-diagonal part of the recurrent
// product is one product); with one block a head, the layout is the head-major one above.
struct Block {
  int64_t d, j0, j1, base;
  int64_t w() const { return j1 - j0; }
};

// What a call works on, one dtype T. Pointers: row-major, (T, B, cols) for sequences. Every
// pass works on a range of units (the min cells: [u0, u1) of H; slstm: a Block), so that
// workers may share a step.
template <class T>
struct ModernRun {
  using M = ModernMath<T>;
  using V = vec_t<T>;
  static constexpr int L = Vec<T>::n;
  ModernKind kind;
  Act act;        // min cells: the candidate's activation
  bool fexp;      // slstm: log f = k_f (else logsigmoid(k_f))
  int64_t B, H, dh, G;  // G: gates per unit (slstm 4, minlstm 3, mingru 2)
  const int64_t* len;          // (B,) or null
  bool valid(int64_t t, int64_t b) const { return len == nullptr || t < len[b]; }

  // ---- min cells -----------------------------------------------------------------------
  // One step, rows b, units [u0, u1): k (B, G H) pre-activations without bias (bias added
  // and kept in k), hp (B, H) h_{t-1}, h (B, H) h_t, out (B, H) the step's output row.
  void min_forward_step(int64_t t, T* k, const T* bias, const T* hp, T* h, T* out, int64_t u0, int64_t u1) const {
    for (int64_t b = 0; b < B; ++b) {
      T* kb = k + b * G * H;
      const T* hpb = hp + b * H;
      T* hb = h + b * H;
      if (!valid(t, b)) {
        if (hb != hpb) std::memcpy(hb + u0, hpb + u0, sizeof(T) * (u1 - u0));
        std::memset(out + b * H + u0, 0, sizeof(T) * (u1 - u0));
        continue;
      }
      for (int64_t u = u0; u < u1; u += L) {
        const int n = (int)std::min<int64_t>(L, u1 - u);
        V hv;
        if (kind == MODERN_MINGRU) {  // rows z, h
          V kz = ld(kb + u, n), kh = ld(kb + H + u, n);
          if (bias) kz += ld(bias + u, n), kh += ld(bias + H + u, n);
          st(kb + u, kz, n);
          st(kb + H + u, kh, n);
          const V z = vsigmoid<T>(kz), ht = M::cand(act, kh);
          hv = (T(1) - z) * ld(hpb + u, n) + z * ht;
        } else {  // rows f, i, h
          V kf = ld(kb + u, n), ki = ld(kb + H + u, n), kh = ld(kb + 2 * H + u, n);
          if (bias) kf += ld(bias + u, n), ki += ld(bias + H + u, n), kh += ld(bias + 2 * H + u, n);
          st(kb + u, kf, n);
          st(kb + H + u, ki, n);
          st(kb + 2 * H + u, kh, n);
          const V d = M::logsig(kf) - M::logsig(ki);
          const V f = vsigmoid<T>(d), i = vsigmoid<T>(-d), ht = M::cand(act, kh);
          hv = f * ld(hpb + u, n) + i * ht;
        }
        st(hb + u, hv, n);
        st(out + b * H + u, hv, n);
      }
    }
  }

  // Backward of one step, units [u0, u1): k (B, G H) the kept pre-activations, dk their
  // gradients (0 on padded rows); hp h_{t-1}; dhr (B, H) the gradient reaching h_t from
  // later steps, replaced by that of h_{t-1}; dout the output's gradient row or null; sq
  // (B,) or null: the units' part of ||dL/dh_t||^2.
  void min_backward_step(int64_t t, const T* k, T* dk, const T* hp, T* dhr, const T* dout, T* sq, int64_t u0,
                         int64_t u1) const {
    for (int64_t b = 0; b < B; ++b) {
      const T* kb = k + b * G * H;
      T* db = dk + b * G * H;
      if (!valid(t, b)) {
        for (int64_t g = 0; g < G; ++g) std::memset(db + g * H + u0, 0, sizeof(T) * (u1 - u0));
        if (sq) sq[b] = 0;
        continue;
      }
      const T* hpb = hp + b * H;
      T* dhb = dhr + b * H;
      V acc = V{};
      for (int64_t u = u0; u < u1; u += L) {
        const int n = (int)std::min<int64_t>(L, u1 - u);
        V g = ld(dhb + u, n);
        if (dout) g += ld(dout + b * H + u, n);
        acc += g * g;
        const V hpv = ld(hpb + u, n);
        if (kind == MODERN_MINGRU) {
          const V kz = ld(kb + u, n), kh = ld(kb + H + u, n);
          const V z = vsigmoid<T>(kz), ht = M::cand(act, kh);
          const V dz = g * ht - g * hpv;  // (1 - z) h + z h~: dh h~ + (-(dh h))
          st(db + u, M::sigmoid_back(dz, z), n);
          st(db + H + u, M::cand_back(act, g * z, kh), n);
          st(dhb + u, g * (T(1) - z), n);
        } else {
          const V kf = ld(kb + u, n), ki = ld(kb + H + u, n), kh = ld(kb + 2 * H + u, n);
          const V d = M::logsig(kf) - M::logsig(ki);
          const V f = vsigmoid<T>(d), i = vsigmoid<T>(-d), ht = M::cand(act, kh);
          const V df = g * hpv, di = g * ht;
          const V dd = M::sigmoid_back(df, f) - M::sigmoid_back(di, i);  // i = sigmoid(-d)
          st(db + u, M::logsig_back(dd, kf), n);
          st(db + H + u, M::logsig_back(-dd, ki), n);
          st(db + 2 * H + u, M::cand_back(act, g * i, kh), n);
          st(dhb + u, g * f, n);
        }
      }
      if (sq) sq[b] = reduce(acc);
    }
  }

  // ---- slstm ---------------------------------------------------------------------------
  // One step of block q, rows [b0, b1): k (B, 4H) x W^T + h_{t-1} R^T, biases added and kept in place; sp
  // (B, 3H) the previous c, n, m; s (B, 3H) the new ones; h (B, H) h_t (hp: h_{t-1}); out
  // the output row.
  void slstm_forward_step(int64_t t, T* k, const T* bias, const T* sp, T* s, const T* hp, T* h, T* out,
                          const Block& q, int64_t b0, int64_t b1) const {
    const int64_t w = q.w(), u0 = q.d * dh + q.j0;
    for (int64_t b = b0; b < b1; ++b) {
      T* kb = k + b * 4 * H;
      const T* spb = sp + b * 3 * H;
      T* sb = s + b * 3 * H;
      T* hb = h + b * H;
      if (!valid(t, b)) {
        for (int64_t r = 0; r < 3; ++r) std::memcpy(sb + r * H + u0, spb + r * H + u0, sizeof(T) * w);
        std::memcpy(hb + u0, hp + b * H + u0, sizeof(T) * w);
        std::memset(out + b * H + u0, 0, sizeof(T) * w);
        continue;
      }
      for (int64_t j = 0; j < w; j += L) {
        const int n = (int)std::min<int64_t>(L, w - j);
        const int64_t u = u0 + j, c0 = q.base + j;
        V kv[4];
        for (int g = 0; g < 4; ++g) {
          kv[g] = ld(kb + c0 + g * w, n);
          if (bias) kv[g] += ld(bias + c0 + g * w, n);
          st(kb + c0 + g * w, kv[g], n);
        }
        const V lf = fexp ? kv[1] : M::logsig(kv[1]);
        const V mp = ld(spb + 2 * H + u, n);
        const V a = lf + mp;
        const V mn = M::maximum(a, kv[0]);
        const V iv = M::exp(kv[0] - mn), fv = M::exp(a - mn);
        const V z = vtanh<T>(kv[2]), o = vsigmoid<T>(kv[3]);
        const V c = fv * ld(spb + u, n) + iv * z;
        const V nn = fv * ld(spb + H + u, n) + iv;
        const V hv = o * c / nn;
        st(sb + u, c, n);
        st(sb + H + u, nn, n);
        st(sb + 2 * H + u, mn, n);
        st(hb + u, hv, n);
        st(out + b * H + u, hv, n);
      }
    }
  }

  // Backward of one step of block q, rows [b0, b1): k (B, 4H) kept pre-activations, dk
  // their gradients (0 on padded rows); sp, s the previous and this step's c, n, m; dhr
  // (B, H) the gradient reaching h_t from later steps (read only), dout its output row's
  // (or null); dcn (B, 2H) those of c_t and n_t, replaced by those of c_{t-1}, n_{t-1} on
  // running rows; sq (B,) or null: the block's part of ||dL/dh_t||^2.
  void slstm_backward_step(int64_t t, const T* k, T* dk, const T* sp, const T* s, const T* dhr, const T* dout,
                           T* dcn, T* sq, const Block& q, int64_t b0, int64_t b1) const {
    const int64_t w = q.w(), u0 = q.d * dh + q.j0;
    for (int64_t b = b0; b < b1; ++b) {
      const T* kb = k + b * 4 * H;
      T* db = dk + b * 4 * H;
      if (!valid(t, b)) {
        std::memset(db + q.base, 0, sizeof(T) * 4 * w);
        if (sq) sq[b] = 0;
        continue;
      }
      const T* spb = sp + b * 3 * H;
      const T* sb = s + b * 3 * H;
      T* dcb = dcn + b * 2 * H;
      V acc = V{};
      for (int64_t j = 0; j < w; j += L) {
        const int n = (int)std::min<int64_t>(L, w - j);
        const int64_t u = u0 + j, c0 = q.base + j;
        const V ki = ld(kb + c0, n), kf = ld(kb + c0 + w, n), kz = ld(kb + c0 + 2 * w, n),
                ko = ld(kb + c0 + 3 * w, n);
        const V cp = ld(spb + u, n), np = ld(spb + H + u, n), mp = ld(spb + 2 * H + u, n);
        const V c = ld(sb + u, n), nn = ld(sb + H + u, n), mn = ld(sb + 2 * H + u, n);
        const V lf = fexp ? kf : M::logsig(kf);
        const V a = lf + mp;
        const V iv = M::exp(ki - mn), fv = M::exp(a - mn);
        const V z = vtanh<T>(kz), o = vsigmoid<T>(ko);
        V g = ld(dhr + b * H + u, n);
        if (dout) g += ld(dout + b * H + u, n);
        acc += g * g;
        // h = (o c) / n: torch's div backward, g / n and -g ((q / n) / n)
        const V qv = o * c;
        const V dq = g / nn;
        const V dc = ld(dcb + u, n) + dq * o;
        const V dn = ld(dcb + H + u, n) + (-g) * ((qv / nn) / nn);
        const V dko = M::sigmoid_back(dq * c, o);
        const V df = dc * cp + dn * np;
        const V di = dc * z + dn;
        const V dkz = dc * iv * (T(1) - z * z);
        const V dki = di * iv;
        const V dlf = df * fv;
        st(db + c0, dki, n);
        st(db + c0 + w, fexp ? dlf : M::logsig_back(dlf, kf), n);
        st(db + c0 + 2 * w, dkz, n);
        st(db + c0 + 3 * w, dko, n);
        st(dcb + u, dc * fv, n);
        st(dcb + H + u, dn * fv, n);
      }
      if (sq) sq[b] = reduce(acc);
    }
  }

  static T reduce(V v) {
    T s = 0;
    for (int k = 0; k < L; ++k) s += v[k];
    return s;
  }
};

}  // namespace lstmlab
