// One generic cell, driven by the CellSpec's flags: the pointwise forward and backward of
// one batch row over one slice of hidden units, for the rnn, lstm (every variant) and
// gru kinds. The maths is lstmlab.backends.reference.pointwise, written out by hand.
//
// Buffers (see Layout): per slice of hidden units, row-major (step, batch, columns):
//   gates: the input projection plus the recurrent product, then, in place, the
//       activations (i f g o; gru: r z hn n; rnn: h) that the backward reads.
//   C: the cell state of every step (lstm). dP: the gradients of the pre-activations
//       (gru: the h-side and x-side ones).
// Shared by the slices: S (B, K), the recurrent state the product reads (h, then for FGR
// the previous gate activations a), and the output (T, B, H).
#pragma once
#include <cstdint>
#include <vector>

#include "vecmath.h"

namespace lstmlab {

// The codes of the enums are the kernel's: the module exports each table by name
// (`kinds`, `forget_modes`, `gru_blocks`, and vecmath.h's `activations`), and
// lstmlab.backends.csrc.boundary checks its mirror of them when the module loads.
enum Kind { KIND_RNN = 0, KIND_LSTM = 1, KIND_GRU = 2 };
enum Forget { FORGET_FREE = 0, FORGET_COUPLED = 1, FORGET_NONE = 2 };
enum GruBlock { GRU_R = 0, GRU_Z = 1, GRU_HN = 2, GRU_N = 3 };

inline constexpr EnumName kKinds[] = {{"rnn", KIND_RNN}, {"lstm", KIND_LSTM}, {"gru", KIND_GRU}};
inline constexpr EnumName kForgetModes[] = {{"free", FORGET_FREE}, {"coupled", FORGET_COUPLED}, {"none", FORGET_NONE}};
inline constexpr EnumName kGruBlocks[] = {{"r", GRU_R}, {"z", GRU_Z}, {"hn", GRU_HN}, {"n", GRU_N}};

// The cell, as the CellSpec's flags and the layout of its gates row (csrc/layout.py Plan
// builds it). Python constructs it by name (the module's `Cell(**fields)`, the names in
// kCellFields), and the constructor (lstmlab_cpu.cpp cell_from) checks every field: an
// enum's code is one of its table, an index is in its range, so the kernel never meets a
// value it has no case for.
struct Cell {
  Kind kind;
  Act activation;          // rnn: the nonlinearity; lstm: the cell input's squashing g
  Act output_activation;   // lstm: the squashing of c in h = o act(c)
  int block_i, block_f, block_g, block_o;  // gates-row block of each lstm gate, -1 if absent
  Forget forget;
  int peep_i, peep_f, peep_o;  // peephole vector of i, f, o in weight_ch, -1 if none
  int fed_i, fed_f, fed_o;     // S block (1..n_fed) holding the previous i, f, o (FGR), -1 if none
  bool truncate;               // the 1997 truncated gradient
  int n_blocks;                // blocks in a gates row (one per gate; gru: r z hn n)
  int n_rec_blocks;            // of which the first n_rec_blocks take the recurrent product
  int n_fed;                   // gates fed back through weight_gg (FGR): S's a-blocks
};
// Cell's fields by name, in declaration order (exported as `cell_fields`).
inline constexpr const char* kCellFields[] = {
    "kind",   "activation", "output_activation", "block_i", "block_f", "block_g",  "block_o",      "forget",
    "peep_i", "peep_f",     "peep_o",            "fed_i",   "fed_f",   "fed_o",    "truncate",     "n_blocks",
    "n_rec_blocks", "n_fed"};

// Hidden units are cut into P contiguous slices [bound[p], bound[p+1]), one per thread.
// Each slice keeps its own gates, C and dP buffers (threads never write the same cache
// lines there): a slice's gates row holds n_blocks blocks, each as wide as the slice, the
// n_rec_blocks recurrent ones first, and of those (FGR) the A gates fed back through weight_gg
// first, in weight_gg's order. Kernel-wide vectors and matrices (the bias, the rows of the
// input weights Wx, the recurrent weights Wh: weight_hh's rows, R x H, read in this order)
// are ordered slice by slice the same way. S is h (H, in unit order), then (FGR) the a
// part: per slice its A a-blocks. FGR's gate-to-gate weights Wa (A*H x A*H: weight_gg,
// read) have rows and columns in the a part's order, so that a slice's rows are one
// contiguous range. With one slice all this is torch's layout (i f g o blocks of H; FGR:
// i f o g, and S = cat(h, a)).
//
// With a projection (torch's proj_size, lstm kinds; one slice only: a slice cannot form its
// part of h = m W_hr^T before every slice has its m = o act(c)), h is Q = proj wide: S is
// h (Q), then the a part; the pointwise pass writes m to a buffer of its own, and the
// caller forms h from it.
//
// FGR's step thus costs two products per slice, h Wh^T into all its recurrent blocks and
// a Wa^T into its A gated ones: (n_rec_blocks + A^2) H^2 multiply-adds per batch row (13 H^2 for
// i f o g), none of them on zeros.
struct Layout {
  int64_t H, P, n_blocks, n_rec_blocks, A;
  std::vector<int64_t> bound;
  int64_t Q;  // the projection's width (proj_size), 0 for none
  Layout(const Cell& c, int64_t H_, std::vector<int64_t> b, int64_t Q_ = 0)
      : H(H_),
        P((int64_t)b.size() - 1),
        n_blocks(c.n_blocks),
        n_rec_blocks(c.n_rec_blocks),
        A(c.n_fed),
        bound(std::move(b)),
        Q(Q_) {}
  int64_t Hs() const { return Q > 0 ? Q : H; }  // the width of h (in S, the output)
  int64_t hw(int64_t p) const { return Q > 0 ? Q : w(p); }  // slice p's part of h
  int64_t u0(int64_t p) const { return bound[p]; }
  int64_t w(int64_t p) const { return bound[p + 1] - bound[p]; }
  int64_t gate_cols() const { return n_blocks * H; }  // gates columns, all slices
  int64_t R() const { return n_rec_blocks * H; }      // recurrent gate columns, all slices
  int64_t K() const { return Hs() + A * H; }  // S row width
  int64_t AH() const { return A * H; }        // the a part of S; Wa is AH x AH
  int64_t slice_gate_cols(int64_t p) const { return n_blocks * w(p); }  // a slice's gates row width
  int64_t col(int64_t p, int64_t blk) const { return blk * w(p); }  // a block within a slice row
  // S column of slice p's block j (0: h, 1..A: a-blocks); the a ones are H + arow(p) on.
  int64_t scol(int64_t p, int64_t j) const { return j == 0 ? u0(p) : Hs() + arow(p) + (j - 1) * w(p); }
  int64_t arow(int64_t p) const { return A * u0(p); }  // slice p's first row (column) of Wa
  // Where slice p's part of a per-slice buffer of `rows` rows starts (units: elements).
  int64_t gates_at(int64_t p, int64_t rows) const { return rows * n_blocks * u0(p); }
  int64_t units_at(int64_t p, int64_t rows) const { return rows * u0(p); }
};

template <class T>
struct CellKernel {
  using V = vec_t<T>;
  static constexpr int L = Vec<T>::n;
  const Cell& c;
  const Layout& lay;
  int64_t B;
  const int64_t* len;  // (B,) valid lengths, or nullptr
  const T* peep;       // weight_ch, or nullptr
  bool valid(int64_t t, int64_t b) const { return len == nullptr || t < len[b]; }

  // ---- forward -------------------------------------------------------------------------
  // Pointer arguments: g, dp, cprev, cnew: the slice's rows of its own buffers; bias,
  // dbias: the slice's part of the kernel bias (and its gradient); sprev, snext, ds: S
  // rows; hout, hprev, dout, dcell, dc: rows of (B or T*B, H) tensors, column 0.
  //
  // g holds x W^T + the recurrent product (no bias); the activations overwrite it (gru
  // keeps R_n h + b_hn in its hn block for the backward).
  void forward_row(int64_t p, T* g, const T* bias, const T* sprev, T* snext, const T* cprev, T* cnew,
                   T* hout) const {
    const int64_t u0 = lay.u0(p), w = lay.w(p), H = lay.H;
    T* sh = snext + lay.scol(p, 0);
    T* h = hout + u0;
    if (c.kind == KIND_RNN) {
      const int64_t o = lay.col(p, 0);
      activate_pass(c.activation, g + o, bias + o, g + o, w);
      std::memcpy(h, g + o, sizeof(T) * w);
      std::memcpy(sh, g + o, sizeof(T) * w);
      return;
    }
    if (c.kind == KIND_GRU) {
      const int64_t orr = lay.col(p, GRU_R), oz = lay.col(p, GRU_Z), ohn = lay.col(p, GRU_HN),
                    on = lay.col(p, GRU_N);
      gate_pass(g + orr, bias + orr, nullptr, nullptr, w);
      gate_pass(g + oz, bias + oz, nullptr, nullptr, w);
      for (int64_t u = 0; u < w; u += L) {
        const int n = (int)std::min<int64_t>(L, w - u);
        V hn = ld(g + ohn + u, n) + ld(bias + ohn + u, n);
        st(g + ohn + u, hn, n);
        st(g + on + u, ld(g + on + u, n) + ld(bias + on + u, n) + ld(g + orr + u, n) * hn, n);
      }
      activate_pass(ACT_TANH, g + on, nullptr, g + on, w);
      const T* hp = sprev + lay.scol(p, 0);
      for (int64_t u = 0; u < w; u += L) {
        const int n = (int)std::min<int64_t>(L, w - u);
        V z = ld(g + oz + u, n);
        V hv = (T(1) - z) * ld(g + on + u, n) + z * ld(hp + u, n);
        st(h + u, hv, n);
        st(sh + u, hv, n);
      }
      return;
    }
    // The LSTM step in passes over the slice, each a loop of independent iterations (so
    // the transcendental functions of several vectors are in flight at once), the
    // activation chosen once per pass rather than per element.
    const int64_t oi = c.block_i >= 0 ? lay.col(p, c.block_i) : -1,
                  of = c.block_f >= 0 ? lay.col(p, c.block_f) : -1, og = lay.col(p, c.block_g),
                  oo = c.block_o >= 0 ? lay.col(p, c.block_o) : -1;
    T* gi = oi >= 0 ? g + oi : nullptr;
    T* gf = of >= 0 ? g + of : nullptr;
    T* gg = g + og;
    T* go = oo >= 0 ? g + oo : nullptr;
    const T* cp = cprev;
    T* cn = cnew;
    if (gi) gate_pass(gi, bias + oi, c.peep_i >= 0 ? peep + c.peep_i * H + u0 : nullptr, cp, w);
    if (gf) gate_pass(gf, bias + of, c.peep_f >= 0 ? peep + c.peep_f * H + u0 : nullptr, cp, w);
    activate_pass(c.activation, gg, bias + og, gg, w);
    for (int64_t u = 0; u < w; u += L) {
      const int n = (int)std::min<int64_t>(L, w - u);
      V i = gi ? ld(gi + u, n) : splat(T(1));
      V f = gf ? ld(gf + u, n) : (c.forget == FORGET_COUPLED ? T(1) - i : splat(T(1)));
      st(cn + u, f * ld(cp + u, n) + i * ld(gg + u, n), n);
    }
    if (go) gate_pass(go, bias + oo, c.peep_o >= 0 ? peep + c.peep_o * H + u0 : nullptr, cn, w);
    activate_pass(c.output_activation, cn, nullptr, h, w);
    for (int64_t u = 0; u < w; u += L) {
      const int n = (int)std::min<int64_t>(L, w - u);
      V hv = ld(h + u, n);
      if (go) hv *= ld(go + u, n);
      st(h + u, hv, n);
      if (!lay.Q) st(sh + u, hv, n);  // with a projection, hout is m's row: the caller forms h
    }
    const int64_t ablk[3] = {c.fed_i, c.fed_f, c.fed_o};
    T* const gates_ifo[3] = {gi, gf, go};
    for (int k = 0; k < 3; ++k)
      if (ablk[k] > 0) std::memcpy(snext + lay.scol(p, ablk[k]), gates_ifo[k], sizeof(T) * w);
  }

  // g[u] = sigmoid(g[u] + b[u] + pe[u] * cv[u]) in place (no peephole when pe is null).
  static void gate_pass(T* g, const T* b, const T* pe, const T* cv, int64_t w) {
    for (int64_t u = 0; u < w; u += L) {
      const int n = (int)std::min<int64_t>(L, w - u);
      V pre = ld(g + u, n) + ld(b + u, n);
      if (pe) pre += ld(pe + u, n) * ld(cv + u, n);
      st(g + u, vsigmoid<T>(pre), n);
    }
  }

  // out[u] = act(in[u] + b[u]) (b may be null); the switch (exhaustive over Act) is outside
  // the loop.
  static void activate_pass(Act act, const T* in, const T* b, T* out, int64_t w) {
    auto run = [&](auto fn) {
      for (int64_t u = 0; u < w; u += L) {
        const int n = (int)std::min<int64_t>(L, w - u);
        V x = ld(in + u, n);
        if (b) x += ld(b + u, n);
        st(out + u, fn(x), n);
      }
    };
    switch (act) {
      case ACT_TANH: run([](V x) { return vtanh<T>(x); }); break;
      case ACT_SIGMOID: run([](V x) { return vsigmoid<T>(x); }); break;
      case ACT_RELU: run([](V x) { return x < T(0) ? splat(T(0)) : x; }); break;  // NaN stays NaN
      case ACT_IDENTITY: run([](V x) { return x; }); break;
      case ACT_G1997: run([](V x) { return T(2) * vtanh<T>(T(0.5) * x); }); break;
      case ACT_H1997: run([](V x) { return vtanh<T>(T(0.5) * x); }); break;
      case ACT_GMIN: run([](V x) { return activate<T>(ACT_GMIN, x); }); break;
    }
  }

  // A padded step (t >= length): the state is held, the output (m's row with a
  // projection) is zero.
  void hold_row(int64_t p, const T* sprev, T* snext, const T* cprev, T* cnew, T* hout) const {
    const int64_t u0 = lay.u0(p), w = lay.w(p);
    for (int64_t j = 0; j <= lay.A; ++j)
      std::memcpy(snext + lay.scol(p, j), sprev + lay.scol(p, j), sizeof(T) * (j == 0 ? lay.hw(p) : w));
    if (cnew) std::memcpy(cnew, cprev, sizeof(T) * w);
    std::memset(hout + u0, 0, sizeof(T) * w);
  }

  // ---- backward ------------------------------------------------------------------------
  // g: saved activations row; dp: dP row (written); ds: dS row, in: the gradient reaching
  // h_t (and a_t) from later steps, out: the part of the gradient of h_{t-1} that does not
  // go through the recurrent product (gru's z h term; 0 otherwise); dc: the same for c;
  // hprev (gru) / cprev, cnew (lstm): state rows; dout / dcell: cotangent rows or nullptr;
  // dbias and dpeep accumulate; nh / nc receive the sums of squares of dL/dh_t, dL/dc_t.
  // With a projection (lstm), dm is the row of dL/dm_t (m = o act(c), taken back through
  // W_hr by the caller, dout already in it), read in place of S's h part and dout.
  void backward_row(int64_t p, const T* g, T* dp, T* ds, T* dc, const T* hprev, const T* cprev, const T* cnew,
                    const T* dout, const T* dcell, T* dbias, T* dpeep, T* nh, T* nc, T* dm = nullptr) const {
    const int64_t u0 = lay.u0(p), w = lay.w(p), H = lay.H;
    T* dsh = ds + lay.scol(p, 0);
    V acc_h = V{}, acc_c = V{};
    if (c.kind == KIND_RNN) {
      const int64_t o = lay.col(p, 0);
      for (int64_t u = 0; u < w; u += L) {
        const int n = (int)std::min<int64_t>(L, w - u);
        V dh = ld(dsh + u, n);
        if (dout) dh += ld(dout + u0 + u, n);
        acc_h += dh * dh;
        V d = activate_back<T>(c.activation, dh, ld(g + o + u, n));
        st(dp + o + u, d, n);
        st(dbias + o + u, ld(dbias + o + u, n) + d, n);
        st(dsh + u, V{}, n);
      }
    } else if (c.kind == KIND_GRU) {
      const int64_t orr = lay.col(p, GRU_R), oz = lay.col(p, GRU_Z), ohn = lay.col(p, GRU_HN),
                    on = lay.col(p, GRU_N);
      for (int64_t u = 0; u < w; u += L) {
        const int n = (int)std::min<int64_t>(L, w - u);
        V dh = ld(dsh + u, n);
        if (dout) dh += ld(dout + u0 + u, n);
        acc_h += dh * dh;
        V r = ld(g + orr + u, n), z = ld(g + oz + u, n), hn = ld(g + ohn + u, n), nn = ld(g + on + u, n);
        V hp = ld(hprev + u0 + u, n);
        V dpn = dh * (T(1) - z) * (T(1) - nn * nn);
        // (dh h - dh n), as autograd forms it: dh (h - n) differs where dh is infinite
        V dpz = (dh * hp - dh * nn) * z * (T(1) - z);
        V dpr = dpn * hn * r * (T(1) - r);
        V dhn = dpn * r;
        st(dp + orr + u, dpr, n);
        st(dp + oz + u, dpz, n);
        st(dp + ohn + u, dhn, n);
        st(dp + on + u, dpn, n);
        st(dbias + orr + u, ld(dbias + orr + u, n) + dpr, n);
        st(dbias + oz + u, ld(dbias + oz + u, n) + dpz, n);
        st(dbias + ohn + u, ld(dbias + ohn + u, n) + dhn, n);
        st(dbias + on + u, ld(dbias + on + u, n) + dpn, n);
        st(dsh + u, dh * z, n);
      }
    } else {
      lstm_backward(p, g, dp, ds, dc, cprev, cnew, dout, dcell, dbias, dpeep, acc_h, acc_c, dm);
    }
    *nh += reduce(acc_h);
    if (nc) *nc += reduce(acc_c);
    (void)H;
  }

  void lstm_backward(int64_t p, const T* g, T* dp, T* ds, T* dc, const T* cprev, const T* cnew, const T* dout,
                     const T* dcell, T* dbias, T* dpeep, V& acc_h, V& acc_c, T* dm) const {
    const int64_t u0 = lay.u0(p), w = lay.w(p), H = lay.H;
    const bool full = !c.truncate;
    const int64_t oi = c.block_i >= 0 ? lay.col(p, c.block_i) : -1,
                  of = c.block_f >= 0 ? lay.col(p, c.block_f) : -1, og = lay.col(p, c.block_g),
                  oo = c.block_o >= 0 ? lay.col(p, c.block_o) : -1;
    const T* pe_i = c.peep_i >= 0 ? peep + c.peep_i * H + u0 : nullptr;
    const T* pe_f = c.peep_f >= 0 ? peep + c.peep_f * H + u0 : nullptr;
    const T* pe_o = c.peep_o >= 0 ? peep + c.peep_o * H + u0 : nullptr;
    T* dpe_i = c.peep_i >= 0 ? dpeep + c.peep_i * H + u0 : nullptr;
    T* dpe_f = c.peep_f >= 0 ? dpeep + c.peep_f * H + u0 : nullptr;
    T* dpe_o = c.peep_o >= 0 ? dpeep + c.peep_o * H + u0 : nullptr;
    T* dsh = dm ? dm : ds + lay.scol(p, 0);
    if (dm) dout = nullptr;  // in dm already
    T* da_i = c.fed_i > 0 ? ds + lay.scol(p, c.fed_i) : nullptr;
    T* da_f = c.fed_f > 0 ? ds + lay.scol(p, c.fed_f) : nullptr;
    T* da_o = c.fed_o > 0 ? ds + lay.scol(p, c.fed_o) : nullptr;
    const V one = splat(T(1));
    for (int64_t u = 0; u < w; u += L) {
      const int n = (int)std::min<int64_t>(L, w - u);
      V i = oi >= 0 ? ld(g + oi + u, n) : one;
      V f = of >= 0 ? ld(g + of + u, n) : (c.forget == FORGET_COUPLED ? one - i : one);
      V gv = ld(g + og + u, n);
      V o = oo >= 0 ? ld(g + oo + u, n) : one;
      V cp = ld(cprev + u, n), cn = ld(cnew + u, n);
      V dh = ld(dsh + u, n);
      if (dout) dh += ld(dout + u0 + u, n);
      V dcv = ld(dc + u0 + u, n);
      if (dcell) dcv += ld(dcell + u0 + u, n);
      V ho = activate<T>(c.output_activation, cn);
      dcv += activate_back<T>(c.output_activation, dh * o, ho);
      V dpo = V{};
      if (oo >= 0) {
        V dov = dh * ho;
        if (da_o) dov += ld(da_o + u, n);
        dpo = dov * o * (one - o);
        if (pe_o && full) dcv += dpo * ld(pe_o + u, n);
      }
      acc_h += dh * dh;
      acc_c += dcv * dcv;
      V di = dcv * gv;
      if (da_i) di += ld(da_i + u, n);
      V dpg = activate_back<T>(c.activation, dcv * i, gv);
      V df = dcv * cp;
      if (da_f) df += ld(da_f + u, n);
      if (c.forget == FORGET_COUPLED) di -= df;  // f = 1 - i
      V dcp = dcv * f;
      V dpi = V{}, dpf = V{};
      if (oi >= 0) {
        dpi = di * i * (one - i);
        if (pe_i && full) dcp += dpi * ld(pe_i + u, n);
        st(dp + oi + u, dpi, n);
        st(dbias + oi + u, ld(dbias + oi + u, n) + dpi, n);
      }
      if (of >= 0) {
        dpf = df * f * (one - f);
        if (pe_f && full) dcp += dpf * ld(pe_f + u, n);
        st(dp + of + u, dpf, n);
        st(dbias + of + u, ld(dbias + of + u, n) + dpf, n);
      }
      st(dp + og + u, dpg, n);
      st(dbias + og + u, ld(dbias + og + u, n) + dpg, n);
      if (oo >= 0) {
        st(dp + oo + u, dpo, n);
        st(dbias + oo + u, ld(dbias + oo + u, n) + dpo, n);
      }
      if (dpe_i) st(dpe_i + u, ld(dpe_i + u, n) + dpi * cp, n);
      if (dpe_f) st(dpe_f + u, ld(dpe_f + u, n) + dpf * cp, n);
      if (dpe_o) st(dpe_o + u, ld(dpe_o + u, n) + dpo * cn, n);
      st(dc + u0 + u, dcp, n);
      st(dsh + u, V{}, n);
      if (da_i) st(da_i + u, V{}, n);
      if (da_f) st(da_f + u, V{}, n);
      if (da_o) st(da_o + u, V{}, n);
    }
  }

  // A padded step: the gradient passes through the held state; no pre-activation gradient.
  void skip_row(int64_t p, T* dp) const {
    const int64_t w = lay.w(p);
    for (int64_t blk = 0; blk < lay.n_blocks; ++blk) std::memset(dp + lay.col(p, blk), 0, sizeof(T) * w);
  }

  static T reduce(V v) {
    T s = 0;
    for (int k = 0; k < L; ++k) s += v[k];
    return s;
  }
};

}  // namespace lstmlab
