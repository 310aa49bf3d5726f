// The fused CPU backend: one layer and direction of any registered cell over a whole
// sequence, forward and backward (lstmlab.backends.cpu wraps these two functions in a
// torch.autograd.Function; csrc/layout.py packs the weights into the kernel's layout).
//
// The threads share a sequence in one of two ways (steps.h; work.h Workers): the hidden
// units are cut into slices, one per thread, which meet at every step; or (small steps,
// batch of at least 8 rows a thread) the batch rows are cut into groups, one per thread, of
// one slice of all units, which meet once per chunk of steps. Each slice owns its rows of the gates,
// C and dP buffers (cells.h Layout); a group, its batch rows of every buffer.
// forward: per step and worker, one recurrent product into the worker's gate columns and
//   rows (FGR: two, h Wh^T and a Wa^T, see cells.h Layout) and one vectorised pointwise
//   pass (cells.h). The input projection x W^T is one product per chunk of steps and slice,
//   whose gates are still in the core's cache when the loop reaches them (groups: each
//   thread a share of the chunk's rows, so that part comes from the other core; per group,
//   one product per step cost as much, BENCHMARKS.md). Saves the activations, every c_t
//   and the outputs.
// backward: per step (last to first) and worker, the product of the next step's
//   pre-activation gradients with the recurrent weights (FGR: with Wh and Wa), then the
//   pointwise backward. dP, the pre-activation gradients, lives in a ring of two chunks:
//   when a chunk is done, each thread forms its share of dx, dW_ih, dW_hh (and dW_gg)
//   from it with products over the whole chunk (a slice: its rows of them; groups: a share
//   of every slice's). Bias and peephole gradients accumulate in the pointwise pass (per
//   group, summed at the end). The weight gradients are permuted into torch's layout in
//   place at the end (no second copy of them).
//
// tune = {small_limit, allow_pack, chunk, own_order, gather}: products up to small_limit
//   multiply-adds use the built-in kernel; allow_pack lets float products use MKL's packed
//   weights; chunk: steps per chunk (0: chosen here); recurrent weights of at most
//   own_order bytes may be read by the backward through a copy in its own row order (see
//   BackwardPass), and grouped weight parts of at most gather bytes through a contiguous
//   copy (gemm.h).
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "cells.h"
#include "clock.h"
#include "gemm.h"
#include "modern_layer.h"
#include "steps.h"
#include "work.h"

namespace lstmlab {
namespace {

// The runs of a slice's gates row (width w) that the input reaches, (first column, length):
// all of it, but for gru not the h-side n block (R_n h + b_hn), whose rows of Wx are zero:
// the products skip it, so that an infinite input gives no 0 * inf = NaN there (nor in dx).
std::vector<std::pair<int64_t, int64_t>> input_runs(const Cell& cell, int64_t w) {
  if (cell.kind == KIND_GRU) return {{0, GRU_HN * w}, {(GRU_HN + 1) * w, (cell.n_blocks - GRU_HN - 1) * w}};
  return {{0, cell.n_blocks * w}};
}


// Steps per chunk: about 256 rows (chunk * B) for efficient weight-gradient products (256
// per group with G groups, which meet once per chunk), at most 2 MiB of a worker's gates
// (about the L2 cache of a core). Measured: BENCHMARKS.md.
int64_t chunk_steps(int64_t requested, int64_t T, int64_t B, int64_t gate_cols, int64_t P, int64_t G, int64_t elt) {
  if (requested > 0) return std::min(requested, T);
  const int64_t by_rows = (256 * G + B - 1) / B;
  const int64_t by_bytes = std::max<int64_t>(1, (2 << 20) / std::max<int64_t>(1, B * gate_cols / std::max(P, G) * elt));
  return std::max<int64_t>(1, std::min({by_rows, by_bytes, T}));
}

// The sizes both passes read: the sequence (T_ steps, B rows, I inputs), the layout's
// widths (csrc/layout.py, cells.h Layout) and the steps per chunk.
struct Sizes {
  const int64_t T_, B, I, H, Hs, Q, gate_cols, R, K, P, A, AH, n_blocks, n_rec_blocks, CH;
  Sizes(const Layout& lay, const at::Tensor& x, int64_t G, const std::vector<int64_t>& tune, int64_t elt)
      : T_(x.size(0)),
        B(x.size(1)),
        I(x.size(2)),
        H(lay.H),
        Hs(lay.Hs()),
        Q(lay.Q),
        gate_cols(lay.gate_cols()),
        R(lay.R()),
        K(lay.K()),
        P(lay.P),
        A(lay.A),
        AH(lay.AH()),
        n_blocks(lay.n_blocks),
        n_rec_blocks(lay.n_rec_blocks),
        CH(chunk_steps(tune[2], T_, B, gate_cols, P, G, elt)) {}
};

// One call of `forward`: its sizes, buffers and workers (set up on construction), what a
// worker does at a step (`step`), and the results. forward_impl runs it.
template <class T>
struct ForwardPass : Sizes {
  using Part = typename StepProduct<T>::Part;
  const Cell& cell;
  const Layout& lay;
  const int64_t G;  // groups of batch rows (1: slices of hidden units)
  const at::Tensor &c0, &lengths;
  const bool keep, return_cells;
  const bool lstm;
  const bool keep_c;  // every c_t kept (for the backward or return_cells)
  // Without a backward to feed, gates and c are rings (a chunk, two steps).
  const int64_t Tg, Tc;
  const at::TensorOptions opts;
  at::Tensor gates, out, C;
  at::Tensor M;  // with a projection, m_t = o act(c_t) of every step (a backward to feed) or of one
  at::Tensor S;  // the state the recurrent product reads, by step parity: (2, B, K)
  const SliceBuffer<T> Gb, Cb;
  const T *wh, *wa, *wx, *xp, *bxp, *c0p;
  // part p: slice p's recurrent gate rows of Wh, transposed; part P + p (FGR): its gated
  // rows of Wa, transposed (columns: the a part of S); then (projection) W_hr, transposed
  const std::vector<Part> parts;
  const size_t proj_part;
  const Workers<T> work;
  SliceClock clock;
  const CellKernel<T> kern;
  T *Sp, *o, *mp;

  ForwardPass(const Cell& cell_, const Layout& lay_, int64_t G_, const at::Tensor& x, const at::Tensor& s0,
              const at::Tensor& c0_, const at::Tensor& Wx, const at::Tensor& bx, const Weights& wts,
              const at::Tensor& peep, const at::Tensor& lengths_, bool keep_, bool return_cells_,
              const std::vector<int64_t>& tune, const at::Tensor& W_hr)
      : Sizes(lay_, x, G_, tune, sizeof(T)),
        cell(cell_),
        lay(lay_),
        G(G_),
        c0(c0_),
        lengths(lengths_),
        keep(keep_),
        return_cells(return_cells_),
        lstm(cell.kind == KIND_LSTM),
        keep_c(keep || return_cells),
        Tg(keep ? T_ : CH),
        Tc(lstm ? (keep_c ? T_ : 2) : 0),
        opts(x.options()),
        gates(at::empty({Tg * B * gate_cols}, opts)),
        out(at::empty({T_, B, Hs}, opts)),
        C(at::empty({Tc * B * H}, opts)),
        M(at::empty({Q > 0 ? (keep ? T_ : 1) * B * H : 0}, opts)),
        S(at::empty({2, B, K}, opts)),
        Gb{ptr<T>(gates), lay, Tg * B, true},
        Cb{ptr<T>(C), lay, Tc * B, false},
        wh(ptr<T>(wts.W_hh)),
        wa(ptr<T>(wts.W_gg)),
        wx(ptr<T>(Wx)),
        xp(ptr<T>(x)),
        bxp(ptr<T>(bx)),
        c0p(ptr<T>(c0)),
        parts(recurrent_parts(wts, W_hr)),
        proj_part(Q > 0 ? parts.size() - 1 : parts.size()),
        work(B, G, P, parts, tune),
        clock(work.n),
        kern{cell, lay, B, ptr<int64_t>(lengths), ptr<T>(peep)},
        Sp(ptr<T>(S)),
        o(ptr<T>(out)),
        mp(ptr<T>(M)) {
    S[0].copy_(s0);
  }

  std::vector<Part> recurrent_parts(const Weights& wts, const at::Tensor& W_hr) const {
    std::vector<Part> parts;
    for (int64_t p = 0; p < P; ++p) {
      const int64_t r0 = n_rec_blocks * lay.u0(p);
      const int64_t* rows = wts.h_map(r0);
      parts.push_back({rows ? wh : wh + r0 * Hs, Hs, Hs, n_rec_blocks * lay.w(p), true, rows});
    }
    for (int64_t p = 0; A > 0 && p < P; ++p) {
      const int64_t a0 = lay.arow(p);
      const int64_t* rows = wts.a_map(a0);
      parts.push_back({rows ? wa : wa + a0 * AH, AH, AH, A * lay.w(p), true, rows, wts.a_map(0)});
    }
    if (Q > 0) parts.push_back({ptr<T>(W_hr), H, H, Q, true});
    return parts;
  }

  T* m_row(int64_t t, int64_t b) const { return mp + ((keep ? t : 0) * B + b) * H; }
  T* gates_row(int64_t p, int64_t t, int64_t b) const { return Gb.row(p, (t % Tg) * B + b); }
  T* c_row(int64_t p, int64_t t, int64_t b) const {  // c_t of row b, slice p (t = -1: c0)
    return t < 0 ? const_cast<T*>(c0p) + b * H + lay.u0(p) : Cb.row(p, (keep_c ? t : (t & 1)) * B + b);
  }

  // Share g of n_shares of the rows of slice p's input projection x W^T for the chunk from
  // step t (the bias is added in the pointwise pass).
  void input_projection(int64_t p, int64_t t, int64_t g, int64_t n_shares) const {
    const int64_t slice_cols = lay.slice_gate_cols(p), rows = B * std::min(CH, T_ - t);
    const int64_t r0 = rows * g / n_shares, r1 = rows * (g + 1) / n_shares;
    T* dst = gates_row(p, t, 0) + r0 * slice_cols;
    for (const auto& [c0, len] : input_runs(cell, lay.w(p)))
      gemm<T>(false, true, r1 - r0, len, I, xp + (t * B + r0) * I, I, wx + (n_blocks * lay.u0(p) + c0) * I, I,
                   dst + c0, slice_cols, false);
    if (cell.kind == KIND_GRU)  // the h-side n block: the recurrent product adds to 0
      for (int64_t r = 0; r < r1 - r0; ++r)
        std::memset(dst + r * slice_cols + GRU_HN * lay.w(p), 0, sizeof(T) * lay.w(p));
  }

  // Step t of worker k: slice p, batch rows [b0, b1).
  void step(int64_t t, int64_t k) {
    const auto [p, b0, b1] = work.at(k);
    const StepProduct<T>& product = work.product(k);
    auto since = clock.now();
    const int64_t slice_cols = lay.slice_gate_cols(p);
    if (G == 1 && t % CH == 0) {
      input_projection(p, t, 0, 1);
      clock.add(k, F_INPUT, since);
    }
    const T* sprev = Sp + (t & 1) * B * K;
    T* snext = Sp + ((t + 1) & 1) * B * K;
    product(p, sprev + b0 * K, K, gates_row(p, t, b0), slice_cols, true);
    if (A > 0) product(P + p, sprev + b0 * K + Hs, K, gates_row(p, t, b0), slice_cols, true);  // gated blocks first
    clock.add(k, F_PRODUCT, since);
    const T* bias = bxp + n_blocks * lay.u0(p);
    for (int64_t b = b0; b < b1; ++b) {
      T* hout = Q > 0 ? m_row(t, b) : o + (t * B + b) * H;
      const T* cp = lstm ? c_row(p, t - 1, b) : nullptr;
      T* cn = lstm ? c_row(p, t, b) : nullptr;
      if (kern.valid(t, b)) {
        kern.forward_row(p, gates_row(p, t, b), bias, sprev + b * K, snext + b * K, cp, cn, hout);
      } else {
        kern.hold_row(p, sprev + b * K, snext + b * K, cp, cn, hout);
        // FGR's backward reads the saved gates as a_t for dW_gg, a padded row's with a zero dP:
        // zeros, not what the product made of its held (maybe not finite) state
        if (A > 0) std::memset(gates_row(p, t, b), 0, sizeof(T) * slice_cols);
      }
    }
    if (Q > 0) {  // h_t = m_t W_hr^T (one slice: all of m is here), into the output and S
      T* ht = o + (t * B + b0) * Q;
      product(proj_part, m_row(t, b0), H, ht, Q, false);
      for (int64_t b = b0; b < b1; ++b) {
        if (kern.valid(t, b))
          std::memcpy(snext + b * K, ht + (b - b0) * Q, sizeof(T) * Q);
        else
          std::memset(ht + (b - b0) * Q, 0, sizeof(T) * Q);
      }
    }
    clock.add(k, F_POINTWISE, since);
  }

  // Every step: slices meet at each step; groups before each chunk, to share its input
  // projection.
  void run() {
    if (G > 1) {
      auto since = clock.now();
      input_projection(0, 0, 0, 1);
      clock.add(0, F_INPUT, since);
      run_groups(
          T_, G, [this](int64_t t, int64_t k) { step(t, k); },
          [this](int64_t t) { return (t + 1) % CH == 0 && t + 1 < T_; },
          [this](int64_t t, int64_t g) {
            auto since = clock.now();
            input_projection(0, t + 1, g, G);
            clock.add(g, F_INPUT, since);
          });
    } else {
      run_steps(T_, P, [this](int64_t t, int64_t k) { step(t, k); });
    }
    clock.fold();
    if (g_clock.on) g_clock.flops[0] += 2.0 * T_ * B * (lay.R() * Hs + AH * AH + Q * H);
  }

  // c_t of every row, (B, H), from the slices' rows
  void gather_c(int64_t t, T* dst) const {
    for (int64_t b = 0; b < B; ++b)
      for (int64_t p = 0; p < P; ++p) std::memcpy(dst + b * H + lay.u0(p), c_row(p, t, b), sizeof(T) * lay.w(p));
  }

  // {out, gates, C, s_final, c_final, cells, M} (see `forward`)
  std::vector<at::Tensor> results() {
    at::Tensor s_final = S[T_ & 1].clone();
    at::Tensor c_final = lstm ? at::empty({B, H}, opts) : at::empty({0}, opts);
    if (lstm) gather_c(T_ - 1, ptr<T>(c_final));
    at::Tensor cells = at::empty({0}, opts);
    if (lstm && return_cells) {
      cells = at::empty({T_, B, H}, opts);
      T* cp = ptr<T>(cells);
      for (int64_t t = 0; t < T_; ++t) gather_c(t, cp + t * B * H);
      if (has(lengths)) {
        const int64_t* len = ptr<int64_t>(lengths);
        for (int64_t t = 0; t < T_; ++t)
          for (int64_t b = 0; b < B; ++b)
            if (t >= len[b]) std::memset(cp + (t * B + b) * H, 0, sizeof(T) * H);
      }
    }
    if (!keep) gates = at::empty({0}, opts), C = at::empty({0}, opts), M = at::empty({0}, opts);
    return {out, gates, C, s_final, c_final, cells, M};
  }
};

template <class T>
std::vector<at::Tensor> forward_impl(const Cell& cell, const Layout& lay, int64_t G, const at::Tensor& x,
                                     const at::Tensor& s0, const at::Tensor& c0, const at::Tensor& Wx,
                                     const at::Tensor& bx, const Weights& wts, const at::Tensor& peep,
                                     const at::Tensor& lengths, bool keep, bool return_cells,
                                     const std::vector<int64_t>& tune, const at::Tensor& W_hr) {
  ForwardPass<T> pass(cell, lay, G, x, s0, c0, Wx, bx, wts, peep, lengths, keep, return_cells, tune, W_hr);
  pass.run();
  return pass.results();
}

// One call of `backward`: its sizes, buffers and workers (set up on construction), what a
// worker does at a step (`step`) and once a chunk of steps is done (`chunk_grads`), and the
// results. backward_impl runs it.
//
// The next step's products read dP_t's recurrent part as one (B, R) matrix D_t and (FGR)
// its gated part as one (B, AH) matrix, and multiply them by weight_hh and weight_gg with
// rows in the same order, in one of two ways. Own order: D_t in the kernel's order, every
// slice's gated blocks, then every slice's others (with one slice that is dP itself), the
// gated part its first AH columns; the products read copies of the weights in that row
// order (made by StepProduct, one pass over the weights). Torch's order: D_t and the
// gated part staged in torch's row order, and the products read the parameters in place,
// so that no copy as large as the weights is made; but the staging interleaves the
// slices' blocks in each row, which the two cores pay for in every step. Own order is
// taken for weights of at most tune[3] bytes that are also at most a quarter of the
// recurrent gradients over the sequence (T B (R + AH) numbers), where one pass over them
// costs less than the staging it saves (measured: BENCHMARKS.md). Staged copies
// alternate by step parity.
template <class T>
struct BackwardPass : Sizes {
  using Part = typename StepProduct<T>::Part;
  // A run of slice p's blocks that stays consecutive in D_t or in the staged gated part:
  // (first column in the slice's dP row, first column there, length).
  struct Run {
    int64_t from, to, len;
  };
  // Where each slice's blocks go in D_t and the staged gated part, and (own order) the row
  // of weight_hh for each row of D_t.
  struct RowOrder {
    std::vector<std::vector<Run>> h_runs, a_runs;
    std::vector<int64_t> own_rows;
    bool own_ident = true;  // own_rows is the identity
  };
  const Cell& cell;
  const Layout& lay;
  const Weights& wts;
  const int64_t G;  // groups of batch rows (1: slices of hidden units)
  const bool want_norms;
  const int64_t RING;  // dP: a ring of two chunks
  const bool lstm;
  const at::TensorOptions opts;
  const bool own;      // the products read the weights in the kernel's row order (copies)
  const bool stage_h;  // D_t is staged (not dP itself)
  const bool stage_a;  // torch's order: i f g o, the gated part apart
  at::Tensor dP, stage, stage_g, dS, dC;
  // the bias and peephole gradients sum over the rows: one share per group
  at::Tensor dbx, dpeep, dWx, dWh;
  // projection: dL/dh_t of every step (0 past a length) for dW_hr = sum_t dh_t^T m_t, one
  // step's dL/dm_t = dh_t W_hr (B, H)
  at::Tensor dWr, DQ, DM;
  at::Tensor dWa;
  at::Tensor dx;  // with slices, per-slice shares (P, T, B, I)
  at::Tensor norms;
  // Rows past their length at step t + 1 have dP = 0 there, and the product through the
  // weights adds 0 * W to their held gradient: NaN where a weight is not finite. Those rows
  // keep the gradient they held (torch does not run them at all); a copy of it sits here.
  at::Tensor held;
  const RowOrder order;
  const T *wh, *wa;
  // part p: the columns of weight_hh for slice p's h; part P + p (FGR): those of weight_gg
  // for its a, one block of its units per gate fed back (H apart; one block with one slice);
  // then (projection) W_hr, for dL/dm = dL/dh W_hr
  const std::vector<Part> parts;
  const size_t proj_part;
  const Workers<T> work;
  SliceClock clock;
  const CellKernel<T> kern;
  const SliceBuffer<T> Gb, Cb, D;
  const int64_t n_peep;
  T *ds, *dc, *db, *dpe, *stg, *stga;
  T *dwx, *dwh, *dwa, *dxp, *nrm;
  at::Tensor s0_zeroed;  // s0_running's copy (declared before s0p, which it initialises)
  const T *c0p, *o, *s0p, *mp;
  T *dq, *dm, *dwr;
  const T *xp, *wx, *dop, *dcl;
  const int64_t rec_ld, gated_ld;  // row strides of rec_grads and gated_grads

  BackwardPass(const Cell& cell_, const Layout& lay_, int64_t G_, const at::Tensor& x, const at::Tensor& s0,
               const at::Tensor& c0, const at::Tensor& Wx, const Weights& wts_, const at::Tensor& peep,
               const at::Tensor& lengths, const at::Tensor& out, const at::Tensor& gates, const at::Tensor& C,
               const at::Tensor& dout, const at::Tensor& ds_final, const at::Tensor& dc_final,
               const at::Tensor& dcells, bool want_norms_, const std::vector<int64_t>& tune, const at::Tensor& W_hr,
               const at::Tensor& M)
      : Sizes(lay_, x, G_, tune, sizeof(T)),
        cell(cell_),
        lay(lay_),
        wts(wts_),
        G(G_),
        want_norms(want_norms_),
        RING(std::min(2 * CH, T_)),
        lstm(cell.kind == KIND_LSTM),
        opts(x.options()),
        own(own_order(tune[3])),
        stage_h(!cell.truncate && (P > 1 || (!own && has(wts.h_src)))),
        stage_a(A > 0 && stage_h && !own),
        dP(at::empty({RING * B * gate_cols}, opts)),
        stage(at::empty({stage_h ? 2 : 0, B, R}, opts)),
        stage_g(at::empty({stage_a ? 2 : 0, B, AH}, opts)),
        dS(has(ds_final) ? ds_final.clone() : at::zeros({B, K}, opts)),
        dC(lstm ? (has(dc_final) ? dc_final.clone() : at::zeros({B, H}, opts)) : at::empty({0}, opts)),
        dbx(at::zeros({G, gate_cols}, opts)),
        dpeep(at::zeros({G, peep.numel()}, opts)),
        dWx(at::zeros({gate_cols, I}, opts)),
        dWh(at::zeros({R, Hs}, opts)),
        dWr(at::zeros({Q, Q > 0 ? H : 0}, opts)),
        DQ(at::empty({Q > 0 ? T_ * B * Q : 0}, opts)),
        DM(at::empty({Q > 0 ? B * H : 0}, opts)),
        dWa(at::zeros({A > 0 ? AH : 0, AH}, opts)),
        dx(P == 1 ? at::empty({T_, B, I}, opts) : at::empty({P, T_, B, I}, opts)),
        norms(at::zeros({want_norms ? 2 : 0, P, T_, B}, opts)),
        held(at::empty({has(lengths) && !cell.truncate ? B * K : 0}, opts)),
        order(row_order()),
        wh(ptr<T>(wts.W_hh)),
        wa(ptr<T>(wts.W_gg)),
        parts(recurrent_parts(W_hr)),
        proj_part(Q > 0 ? parts.size() - 1 : parts.size()),
        work(B, G, P, parts, tune),
        clock(work.n),
        kern{cell, lay, B, ptr<int64_t>(lengths), ptr<T>(peep)},
        Gb{ptr<T>(gates), lay, T_ * B, true},
        Cb{ptr<T>(C), lay, T_ * B, false},
        D{ptr<T>(dP), lay, RING * B, true},
        n_peep(peep.numel()),
        ds(ptr<T>(dS)),
        dc(ptr<T>(dC)),
        db(ptr<T>(dbx)),
        dpe(ptr<T>(dpeep)),
        stg(ptr<T>(stage)),
        stga(ptr<T>(stage_g)),
        dwx(ptr<T>(dWx)),
        dwh(ptr<T>(dWh)),
        dwa(ptr<T>(dWa)),
        dxp(ptr<T>(dx)),
        nrm(ptr<T>(norms)),
        c0p(ptr<T>(c0)),
        o(ptr<T>(out)),
        s0p(ptr<T>(s0_running(s0, lengths))),
        mp(ptr<T>(M)),
        dq(ptr<T>(DQ)),
        dm(ptr<T>(DM)),
        dwr(ptr<T>(dWr)),
        xp(ptr<T>(x)),
        wx(ptr<T>(Wx)),
        dop(ptr<T>(dout)),
        dcl(ptr<T>(dcells)),
        rec_ld(stage_h ? R : gate_cols),
        gated_ld(stage_a ? AH : rec_ld) {}

  bool own_order(int64_t own_max_bytes) const {
    const int64_t weight_bytes = (R * Hs + AH * AH) * (int64_t)sizeof(T);
    return weight_bytes <= own_max_bytes && 4 * weight_bytes <= T_ * B * (R + AH) * (int64_t)sizeof(T);
  }

  RowOrder row_order() const {
    RowOrder r{std::vector<std::vector<Run>>(P), std::vector<std::vector<Run>>(P),
               std::vector<int64_t>(own ? R : 0)};
    for (int64_t p = 0; p < P; ++p) {
      const int64_t u0 = lay.u0(p), w = lay.w(p);
      auto add = [w](std::vector<Run>& runs, int64_t from, int64_t to) {
        if (!runs.empty() && runs.back().from + runs.back().len == from && runs.back().to + runs.back().len == to)
          runs.back().len += w;
        else
          runs.push_back({from, to, w});
      };
      for (int64_t j = 0; j < n_rec_blocks; ++j) {
        const int64_t to = !own  ? wts.h_row(n_rec_blocks * u0 + j * w)
                           : j < A ? A * u0 + j * w
                                   : AH + (n_rec_blocks - A) * u0 + (j - A) * w;
        add(r.h_runs[p], j * w, to);
        for (int64_t i = 0; own && i < w; ++i) {
          r.own_rows[to + i] = wts.h_row(n_rec_blocks * u0 + j * w + i);
          r.own_ident = r.own_ident && r.own_rows[to + i] == to + i;
        }
      }
      for (int64_t j = 0; j < A; ++j) add(r.a_runs[p], j * w, wts.a_idx(lay.arow(p) + j * w));
    }
    return r;
  }

  std::vector<Part> recurrent_parts(const at::Tensor& W_hr) const {
    const int64_t* h_rows = own && !order.own_ident ? order.own_rows.data() : nullptr;
    const int64_t* a_rows = own ? wts.a_map(0) : nullptr;
    std::vector<Part> parts;
    for (int64_t p = 0; p < P; ++p)
      parts.push_back({wh + lay.u0(p), Hs, cell.truncate ? 0 : R, lay.hw(p), false, h_rows});
    for (int64_t p = 0; A > 0 && p < P; ++p)
      parts.push_back({wa + lay.u0(p), AH, cell.truncate ? 0 : AH, A * lay.w(p), false, a_rows, nullptr,
                       P > 1 ? A : 1, H});
    if (Q > 0) parts.push_back({ptr<T>(W_hr), H, Q, H, false});
    return parts;
  }

  T* dp_row(int64_t p, int64_t t, int64_t b) const { return D.row(p, (((t / CH) & 1) * CH + t % CH) * B + b); }
  // D_t and the gated part of step t's pre-activation gradients, as the products read them
  const T* rec_grads(int64_t t) const { return stage_h ? stg + (t & 1) * B * R : dp_row(0, t, 0); }
  const T* gated_grads(int64_t t) const { return stage_a ? stga + (t & 1) * B * AH : rec_grads(t); }

  // share g of n_shares of len rows or columns, [len g / n_shares, len (g + 1) / n_shares);
  // for columns, edges on whole vectors where every share still gets some
  static std::pair<int64_t, int64_t> share(int64_t len, int64_t g, int64_t n_shares, bool columns) {
    const int64_t L = columns && len >= n_shares * Vec<T>::n ? Vec<T>::n : 1;
    auto edge = [&](int64_t i) { return i == n_shares ? len : len * i / n_shares / L * L; };
    return {edge(g), edge(g + 1)};
  }

  // The initial state as the weight-gradient products read it: a row that never runs
  // (length 0) zeroed (into s0_zeroed), as the reference leaves it out (its dP is 0, and
  // 0 * NaN is NaN).
  const at::Tensor& s0_running(const at::Tensor& s0, const at::Tensor& lengths) {
    if (!has(lengths) || !has(s0)) return s0;
    const int64_t* len = lengths.data_ptr<int64_t>();
    if (std::all_of(len, len + lengths.numel(), [](int64_t l) { return l > 0; })) return s0;
    s0_zeroed = s0.clone();
    const int64_t K = s0.numel() / lengths.numel();
    for (int64_t b = 0; b < lengths.numel(); ++b)
      if (len[b] <= 0) std::memset(s0_zeroed.data_ptr<T>() + b * K, 0, sizeof(T) * K);
    return s0_zeroed;
  }

  // Share g of n_shares of slice p's rows of dWh += dP[t0:t0+n]^T h_{t-1}, and (FGR) of its
  // rows of dWa += (its gated columns of dP)^T a_{t-1}; h_{-1}, a_{-1} are s0's, then the
  // outputs and the saved gate activations (per slice q, its gated blocks: Wa's columns of
  // slice q).
  void recurrent_weight_grads(int64_t p, int64_t t0, int64_t n, int64_t g, int64_t n_shares) const {
    const int64_t slice_cols = lay.slice_gate_cols(p);
    const auto [h0, h1] = share(n_rec_blocks * lay.w(p), g, n_shares, true);
    const auto [a0, a1] = share(A * lay.w(p), g, n_shares, true);
    T* dst_h = dwh + (n_rec_blocks * lay.u0(p) + h0) * Hs;
    T* dst_a = dwa + (lay.arow(p) + a0) * AH;
    const int64_t t = t0 == 0 ? 1 : t0, m = t0 == 0 ? n - 1 : n;  // the steps after s0's
    if (t0 == 0) {
      gemm<T>(true, false, h1 - h0, Hs, B, dp_row(p, 0, 0) + h0, slice_cols, s0p, K, dst_h, Hs, true);
      if (A > 0)
        gemm<T>(true, false, a1 - a0, AH, B, dp_row(p, 0, 0) + a0, slice_cols, s0p + Hs, K, dst_a, AH, true);
    }
    if (m <= 0) return;
    gemm<T>(true, false, h1 - h0, Hs, m * B, dp_row(p, t, 0) + h0, slice_cols, o + (t - 1) * B * Hs, Hs, dst_h, Hs,
                 true);
    for (int64_t q = 0; A > 0 && q < P; ++q)
      gemm<T>(true, false, a1 - a0, A * lay.w(q), m * B, dp_row(p, t, 0) + a0, slice_cols, Gb.row(q, (t - 1) * B),
                   lay.slice_gate_cols(q), dst_a + lay.arow(q), AH, true);
  }

  // Share g of n_shares of slice p's work on a finished chunk of n steps from t0: dx (the
  // slice's columns' part; share g of the rows), its rows of dW_ih and of dW_hh (share g of
  // each), and (projection) of dW_hr.
  void chunk_grads(int64_t p, int64_t t0, int64_t n, int64_t g, int64_t n_shares) const {
    const T* dpc = dp_row(p, t0, 0);
    const int64_t slice_cols = lay.slice_gate_cols(p), r0 = n_blocks * lay.u0(p);
    const auto [x0, x1] = share(n * B, g, n_shares, false);
    const auto [w0, w1] = share(slice_cols, g, n_shares, true);
    T* dxs = dxp + (P == 1 ? 0 : p * T_ * B * I) + (t0 * B + x0) * I;
    bool first = true;
    for (const auto& [c0, len] : input_runs(cell, lay.w(p))) {
      gemm<T>(false, false, x1 - x0, I, len, dpc + x0 * slice_cols + c0, slice_cols, wx + (r0 + c0) * I, I, dxs,
                   I, !first);
      first = false;
    }
    gemm<T>(true, false, w1 - w0, I, n * B, dpc + w0, slice_cols, xp + t0 * B * I, I, dwx + (r0 + w0) * I, I,
                 true);
    recurrent_weight_grads(p, t0, n, g, n_shares);
    if (Q > 0) {  // share g of dW_hr's rows += dL/dh^T m over the chunk (one slice)
      const auto [q0, q1] = share(Q, g, n_shares, false);
      gemm<T>(true, false, q1 - q0, H, n * B, dq + t0 * B * Q + q0, Q, mp + t0 * B * H, H, dwr + q0 * H, H, true);
    }
  }

  // the product of the gradients of step t's pre-activations, rows [b0, b1) of worker k,
  // with the recurrent weights: their share of the previous state's gradient
  void through_weights(int64_t t, int64_t k) const {
    const auto [p, b0, b1] = work.at(k);
    const StepProduct<T>& product = work.product(k);
    product(p, rec_grads(t) + b0 * rec_ld, rec_ld, ds + b0 * K + lay.scol(p, 0), K, true);
    if (A > 0) product(P + p, gated_grads(t) + b0 * gated_ld, gated_ld, ds + b0 * K + lay.scol(p, 1), K, true);
  }

  // The rows of worker w past their length at step t: their gradient of S into `held`, or
  // (restore) back from it.
  void keep_held(int64_t t, int64_t w, bool restore) const {
    const auto [p, b0, b1] = work.at(w);
    T* hb = ptr<T>(held);
    for (int64_t b = b0; b < b1; ++b) {
      if (kern.valid(t, b)) continue;
      for (const auto& [col, n] : {std::pair{lay.scol(p, 0), lay.hw(p)}, std::pair{lay.scol(p, 1), A * lay.w(p)}}) {
        T* from = ds + b * K + col;
        T* to = hb + b * K + col;
        std::memcpy(restore ? from : to, restore ? to : from, sizeof(T) * n);
      }
    }
  }

  // Step k (in loop order: t = T - 1 - k) of worker w.
  void step(int64_t k, int64_t w) {
    const int64_t t = T_ - 1 - k;
    const auto [p, b0, b1] = work.at(w);
    auto since = clock.now();
    if (t < T_ - 1 && !cell.truncate) {
      if (held.numel()) keep_held(t + 1, w, false);
      through_weights(t + 1, w);
      if (held.numel()) keep_held(t + 1, w, true);
    }
    clock.add(w, B_PRODUCT, since);
    T* nh = nrm ? nrm + (p * T_ + t) * B : nullptr;
    T* nc = nrm ? nrm + ((P + p) * T_ + t) * B : nullptr;
    T scratch_h = 0, scratch_c = 0;
    T* st = stage_h ? stg + (t & 1) * B * R : nullptr;
    T* sta = stage_a ? stga + (t & 1) * B * AH : nullptr;
    T* dbw = db + w * gate_cols * (G > 1) + n_blocks * lay.u0(p);
    T* dpw = dpe + w * n_peep * (G > 1);
    if (Q > 0) {  // dL/dh_t (S's h part and the output's), then dL/dm_t = dL/dh_t W_hr
      for (int64_t b = b0; b < b1; ++b) {
        T* d = dq + (t * B + b) * Q;
        T* dsb = ds + b * K;
        if (kern.valid(t, b)) {
          T sum = 0;
          for (int64_t q = 0; q < Q; ++q) {
            d[q] = dsb[q] + (dop ? dop[(t * B + b) * Q + q] : T(0));
            sum += d[q] * d[q];
            dsb[q] = 0;
          }
          if (nh) nh[b] += sum;
        } else {
          std::memset(d, 0, sizeof(T) * Q);  // the held state's gradient stays in S
        }
      }
      work.product(w)(proj_part, dq + (t * B + b0) * Q, Q, dm + b0 * H, H, false);
    }
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t row = t * B + b;
      T* dpr = dp_row(p, t, b);
      if (!kern.valid(t, b)) {
        kern.skip_row(p, dpr);
      } else {
        const T* hprev = t == 0 ? s0p + b * K : o + (row - B) * Hs;
        const T* cprev = lstm ? (t == 0 ? c0p + b * H + lay.u0(p) : Cb.row(p, row - B)) : nullptr;
        const T* cnew = lstm ? Cb.row(p, row) : nullptr;
        kern.backward_row(p, Gb.row(p, row), dpr, ds + b * K, lstm ? dc + b * H : nullptr, hprev, cprev, cnew,
                          dop ? dop + row * Hs : nullptr, dcl ? dcl + row * H : nullptr, dbw, dpw,
                          nh && Q == 0 ? nh + b : &scratch_h, lstm ? (nc ? nc + b : &scratch_c) : nullptr,
                          Q > 0 ? dm + b * H : nullptr);
      }
      if (st)
        for (const Run& r : order.h_runs[p]) copy_row(st + b * R + r.to, dpr + r.from, r.len);
      if (sta)
        for (const Run& r : order.a_runs[p]) copy_row(sta + b * AH + r.to, dpr + r.from, r.len);
    }
    clock.add(w, B_POINTWISE, since);
    if (G == 1 && t % CH == 0) chunk_grads(p, t, std::min(CH, T_ - t), 0, 1);
    clock.add(w, B_CHUNK, since);
  }

  // Every step, last to first: slices meet at each step; groups at the end of each chunk,
  // to share its products; then the initial state's gradient.
  void run() {
    if (G > 1)
      run_groups(
          T_, G, [this](int64_t k, int64_t w) { step(k, w); },
          [this](int64_t k) { return (T_ - 1 - k) % CH == 0; },
          [this](int64_t k, int64_t g) {
            auto since = clock.now();
            const int64_t t = T_ - 1 - k;
            chunk_grads(0, t, std::min(CH, T_ - t), g, G);
            clock.add(g, B_CHUNK, since);
          });
    else
      run_steps(T_, P, [this](int64_t k, int64_t w) { step(k, w); });
    clock.fold();
    if (g_clock.on) g_clock.flops[1] += cell.truncate ? 0.0 : 2.0 * (T_ - 1) * B * (R * Hs + AH * AH);
    for (int64_t w = 0; w < work.n && !cell.truncate; ++w) through_weights(0, w);
  }

  static std::vector<int64_t> inverse(const at::Tensor& src) {
    const int64_t* s = src.data_ptr<int64_t>();
    std::vector<int64_t> inv(src.numel());
    for (int64_t i = 0; i < src.numel(); ++i) inv[s[i]] = i;
    return inv;
  }

  // {dx, dS, dC, dWx, dbx, dWh, dWa, dpeep, norm_h, norm_c, dWr} (see `backward`)
  std::vector<at::Tensor> results() {
    // dWh, dWa into torch's layout, in place: weight_hh's row h_src[r] is dWh's row r;
    // weight_gg's row (column) a_src[i] is dWa's row (column) i
    if (has(wts.h_src)) permute_in_place(dwh, R, Hs, inverse(wts.h_src).data(), nullptr);
    if (A > 0 && has(wts.a_src)) {
      const std::vector<int64_t> inv = inverse(wts.a_src);
      permute_in_place(dwa, AH, AH, inv.data(), inv.data());
    }
    if (P > 1) dx = dx.sum(0);
    dbx = dbx.sum(0);
    dpeep = dpeep.sum(0);
    at::Tensor norm_h = at::empty({0}, opts), norm_c = at::empty({0}, opts);
    if (want_norms) {
      at::Tensor sums = norms.sum(1);  // (2, T, B)
      norm_h = sums[0].sqrt();
      if (lstm) norm_c = sums[1].sqrt();
    }
    return {dx, dS, dC, dWx, dbx, dWh, dWa, dpeep, norm_h, norm_c, dWr};
  }
};

template <class T>
std::vector<at::Tensor> backward_impl(const Cell& cell, const Layout& lay, int64_t G, const at::Tensor& x,
                                      const at::Tensor& s0, const at::Tensor& c0, const at::Tensor& Wx,
                                      const Weights& wts, const at::Tensor& peep, const at::Tensor& lengths,
                                      const at::Tensor& out, const at::Tensor& gates, const at::Tensor& C,
                                      const at::Tensor& dout, const at::Tensor& ds_final, const at::Tensor& dc_final,
                                      const at::Tensor& dcells, bool want_norms, const std::vector<int64_t>& tune,
                                      const at::Tensor& W_hr, const at::Tensor& M) {
  BackwardPass<T> pass(cell, lay, G, x, s0, c0, Wx, wts, peep, lengths, out, gates, C, dout, ds_final, dc_final,
                       dcells, want_norms, tune, W_hr, M);
  pass.run();
  return pass.results();
}

// The sizes the kernel divides by: at least one step, batch row and hidden unit
// (lstmlab.backends.cpu.run_layer answers empty sequences without calling it).
void check_sizes(const at::Tensor& x, const at::Tensor& W_hh) {
  TORCH_CHECK(x.dim() == 3, "lstmlab cpu backend: x must be (T, B, I), got ", x.dim(), " dimensions");
  TORCH_CHECK(x.size(0) > 0 && x.size(1) > 0, "lstmlab cpu backend: x has shape ", x.sizes(),
              "; the kernel needs at least one step and one batch row (T, B > 0)");
  TORCH_CHECK(W_hh.dim() == 2 && W_hh.size(0) > 0 && W_hh.size(1) > 0, "lstmlab cpu backend: weight_hh has shape ",
              W_hh.sizes(), "; the kernel needs at least one hidden unit");
}

// ---- the cell across the boundary --------------------------------------------------
// Python builds a Cell by name, Cell(kind=..., activation=..., ...) with every name of
// kCellFields, whole numbers (csrc/layout.py Plan.cfg). Every field is checked here, once
// when the Cell is made (a Python Cell cannot be changed after), never per call: an enum
// field must hold a code of its table, an index must lie in its range. An error names the
// field, the value and what is allowed.

std::string known_codes(const EnumName* table, size_t n) {
  std::string known;
  for (size_t k = 0; k < n; ++k)
    known += (k ? ", " : "") + std::string(table[k].name) + "=" + std::to_string(table[k].code);
  return known;
}

template <class E, size_t N>
E enum_field(const char* field, int64_t value, const EnumName (&table)[N]) {
  for (const EnumName& k : table)
    if (k.code == value) return static_cast<E>(value);
  TORCH_CHECK(false, "lstmlab cpu backend: Cell field ", field, "=", value, " is not a code of its enum; known codes: ",
              known_codes(table, N));
  return E{};
}

int int_field(const char* field, int64_t value, int64_t lo, int64_t hi) {
  TORCH_CHECK(value >= lo && value <= hi, "lstmlab cpu backend: Cell field ", field, "=", value,
              " is out of range; allowed: ", lo, " to ", hi);
  return (int)value;
}

Cell cell_from(const py::kwargs& kw) {
  std::string fields;
  for (const char* f : kCellFields) fields += (fields.empty() ? "" : ", ") + std::string(f);
  for (auto item : kw) {
    const std::string name = py::str(item.first);
    bool known = false;
    for (const char* f : kCellFields) known = known || name == f;
    TORCH_CHECK(known, "lstmlab cpu backend: Cell has no field ", name, "; its fields: ", fields);
  }
  auto get = [&](const char* field) -> int64_t {
    TORCH_CHECK(kw.contains(field), "lstmlab cpu backend: Cell field ", field, " is missing");
    py::handle v = kw[field];
    TORCH_CHECK(py::isinstance<py::int_>(v), "lstmlab cpu backend: Cell field ", field, "=",
                py::repr(v).cast<std::string>(), " is not a whole number");
    return v.cast<int64_t>();
  };
  Cell c;
  c.kind = enum_field<Kind>("kind", get("kind"), kKinds);
  c.activation = enum_field<Act>("activation", get("activation"), kActivations);
  c.output_activation = enum_field<Act>("output_activation", get("output_activation"), kActivations);
  c.forget = enum_field<Forget>("forget", get("forget"), kForgetModes);
  c.truncate = int_field("truncate", get("truncate"), 0, 1) != 0;
  c.n_blocks = int_field("n_blocks", get("n_blocks"), 1, 4);
  c.n_rec_blocks = int_field("n_rec_blocks", get("n_rec_blocks"), 1, c.n_blocks);
  c.n_fed = int_field("n_fed", get("n_fed"), 0, 3);
  c.block_i = int_field("block_i", get("block_i"), -1, c.n_blocks - 1);
  c.block_f = int_field("block_f", get("block_f"), -1, c.n_blocks - 1);
  c.block_g = int_field("block_g", get("block_g"), -1, c.n_blocks - 1);
  c.block_o = int_field("block_o", get("block_o"), -1, c.n_blocks - 1);
  c.peep_i = int_field("peep_i", get("peep_i"), -1, 2);
  c.peep_f = int_field("peep_f", get("peep_f"), -1, 2);
  c.peep_o = int_field("peep_o", get("peep_o"), -1, 2);
  for (auto [field, fed] : {std::pair{"fed_i", &c.fed_i}, {"fed_f", &c.fed_f}, {"fed_o", &c.fed_o}}) {
    *fed = int_field(field, get(field), -1, c.n_fed);
    TORCH_CHECK(*fed != 0, "lstmlab cpu backend: Cell field ", field,
                "=0 is not an a-block of S; allowed: -1 (none) or 1 to ", c.n_fed);
  }
  // the shape of the gates row each kind's code assumes
  if (c.kind == KIND_RNN)
    TORCH_CHECK(c.n_blocks == 1 && c.n_rec_blocks == 1, "lstmlab cpu backend: an rnn Cell has one block (n_blocks=",
                c.n_blocks, ", n_rec_blocks=", c.n_rec_blocks, ")");
  if (c.kind == KIND_GRU)
    TORCH_CHECK(c.n_blocks == 4 && c.n_rec_blocks == 3,
                "lstmlab cpu backend: a gru Cell has the blocks r z hn n, the first 3 recurrent (n_blocks=",
                c.n_blocks, ", n_rec_blocks=", c.n_rec_blocks, ")");
  if (c.kind == KIND_LSTM)
    TORCH_CHECK(c.block_g >= 0, "lstmlab cpu backend: an lstm Cell needs block_g (the cell input), got -1");
  TORCH_CHECK(c.kind == KIND_LSTM || c.n_fed == 0, "lstmlab cpu backend: gate recurrence (n_fed=", c.n_fed,
              ") needs an lstm Cell");
  return c;
}

py::dict cell_dict(const Cell& c) {
  py::dict d;
  const int64_t values[] = {c.kind,   c.activation, c.output_activation, c.block_i, c.block_f, c.block_g,
                            c.block_o, c.forget,     c.peep_i,            c.peep_f,  c.peep_o,  c.fed_i,
                            c.fed_f,   c.fed_o,      c.truncate,          c.n_blocks, c.n_rec_blocks, c.n_fed};
  static_assert(std::size(values) == std::size(kCellFields), "a Cell field without a name, or a name without a field");
  for (size_t k = 0; k < std::size(values); ++k) d[kCellFields[k]] = values[k];
  return d;
}

template <size_t N>
py::dict table(const EnumName (&entries)[N]) {
  py::dict d;
  for (const EnumName& k : entries) d[k.name] = k.code;
  return d;
}

// The Layout of a call, after checking the recurrent weights against it: weight_hh (R, H)
// or, with a projection weight_hr (Q, H) (lstm kinds, one slice), (R, Q),
// (FGR) weight_gg (AH, AH), h_src and a_src permutations of R and AH (or empty), and the
// gates block j holding the gate of S block 1 + j (Layout).
Layout layout_of(const Cell& cell, std::vector<int64_t> bounds, const Weights& wts, const at::Tensor& W_hr) {
  const at::Tensor &Wh = wts.W_hh, &Wa = wts.W_gg;
  TORCH_CHECK(Wh.dim() == 2 && Wh.size(0) % cell.n_rec_blocks == 0, "lstmlab cpu backend: bad weight_hh shape");
  const int64_t H = Wh.size(0) / cell.n_rec_blocks, Q = has(W_hr) ? W_hr.size(0) : 0;
  if (Q > 0) {
    TORCH_CHECK(cell.kind == KIND_LSTM, "lstmlab cpu backend: a projection (weight_hr) needs an lstm cell");
    TORCH_CHECK(W_hr.dim() == 2 && W_hr.size(1) == H, "lstmlab cpu backend: bad weight_hr shape");
    TORCH_CHECK(bounds.size() == 2, "lstmlab cpu backend: a projection runs in one slice of hidden units");
  }
  TORCH_CHECK(Wh.size(1) == (Q > 0 ? Q : H), "lstmlab cpu backend: bad weight_hh shape");
  TORCH_CHECK(bounds.size() >= 2 && bounds.front() == 0 && bounds.back() == H,
              "lstmlab cpu backend: bad slices of hidden units");
  for (size_t p = 1; p < bounds.size(); ++p)
    TORCH_CHECK(bounds[p] > bounds[p - 1], "lstmlab cpu backend: bad slices of hidden units");
  Layout lay(cell, H, std::move(bounds), Q);
  TORCH_CHECK(cell.n_fed == 0 || (Wa.dim() == 2 && Wa.size(0) == lay.AH() && Wa.size(1) == lay.AH()),
              "lstmlab cpu backend: bad weight_gg shape");
  const int blk[3] = {cell.block_i, cell.block_f, cell.block_o}, ablk[3] = {cell.fed_i, cell.fed_f, cell.fed_o};
  for (int k = 0; k < 3; ++k)
    TORCH_CHECK(ablk[k] <= 0 || blk[k] == ablk[k] - 1, "lstmlab cpu backend: bad gate-recurrence layout");
  for (auto& [map, n] : {std::pair{&wts.h_src, lay.R()}, {&wts.a_src, lay.AH()}}) {
    if (!has(*map)) continue;
    check(*map, "index map", at::kLong);
    TORCH_CHECK(map->numel() == n, "lstmlab cpu backend: bad index map");
    std::vector<char> seen(n, 0);
    const int64_t* m = map->data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i) {
      TORCH_CHECK(m[i] >= 0 && m[i] < n && !seen[m[i]], "lstmlab cpu backend: bad index map");
      seen[m[i]] = 1;
    }
  }
  return lay;
}

// The forward of one layer and direction over a whole sequence (lstmlab.backends.cpu
// `_forward_impl` calls it; csrc/layout.py Plan packs what is in the kernel's layout).
// Sizes: T steps, B batch rows, I inputs, H hidden units cut into P slices; Hs the width of
// h (proj_size Q with a projection, else H); A the gates fed back (FGR, else 0); R =
// n_rec_blocks H and gate_cols = n_blocks H (cells.h Cell); K = Hs + A H, S's row. Every
// tensor is contiguous, on the CPU, of x's dtype (float32 or float64) unless said; an
// absent one is an empty tensor.
//   cell          the Cell (cells.h; built from Plan.cfg by name and checked then).
//   bounds        P + 1 slice edges of the hidden units, 0 = bounds[0] < ... < bounds[P] = H
//                 (with a projection, P = 1).
//   groups        G >= 1 groups of batch rows, one per worker (G > 1 needs P = 1; steps.h).
//   x             (T, B, I).
//   s0            (B, K): the initial h, then (FGR) a, in the kernel's column order.
//   c0            (B, H): the initial c (lstm kinds), else absent.
//   Wx, bx        (gate_cols, I), (gate_cols,): weight_ih and bias_ih + bias_hh, rows in the
//                 kernel's order (gru: bias_hh's n part in the h-side n block).
//   W_hh          (R, Hs): torch's weight_hh as it is; h_src (R,) int64: for each row of the
//                 kernel's Wh the row of W_hh, or absent for the identity.
//   W_gg          (A H, A H): torch's weight_gg (FGR), else absent; a_src (A H,) int64: for
//                 each row and column of the kernel's Wa those of W_gg, or absent.
//   peep          (n H,): weight_ch, the peephole vectors of the cell's n peephole gates, or
//                 absent.
//   lengths       (B,) int64: each row's valid steps (steps past it hold the state and
//                 output 0), or absent for all T.
//   keep          save what `backward` needs (gates, C, M below); else they come back empty.
//   return_cells  also return every c_t (lstm kinds).
//   tune          5 whole numbers (see the top of this file): small_limit, allow_pack, chunk,
//                 own_order, gather.
//   W_hr          (Q, H): torch's weight_hr (proj_size Q; lstm kinds, one slice), or absent.
// Returns {out (T, B, Hs), gates (T B gate_cols), C (T B H), s_final (B, K), c_final (B, H),
// cells (T, B, H), M (T B H)}: the outputs (0 past a row's length); the gate activations
// and every c_t in the kernel's per-slice layout (keep; C for lstm kinds); the final state
// S and c (lstm kinds); every c_t in torch's layout, 0 past a row's length (return_cells,
// lstm kinds); every m_t = o act(c_t) (keep, with a projection). Empty where not asked for.
std::vector<at::Tensor> forward(const Cell& cell, std::vector<int64_t> bounds, int64_t groups, at::Tensor x,
                                at::Tensor s0, at::Tensor c0, at::Tensor Wx, at::Tensor bx, at::Tensor W_hh,
                                at::Tensor W_gg, at::Tensor h_src, at::Tensor a_src, at::Tensor peep,
                                at::Tensor lengths, bool keep, bool return_cells, std::vector<int64_t> tune,
                                at::Tensor W_hr) {
  TORCH_CHECK(tune.size() == 5, "lstmlab cpu backend: bad configuration");
  check_sizes(x, W_hh);
  const auto dt = kernel_dtype(x);
  for (auto& [t, n] : {std::pair{&x, "x"}, {&s0, "s0"}, {&Wx, "Wx"}, {&bx, "bx"}, {&W_hh, "weight_hh"},
                       {&W_gg, "weight_gg"}, {&c0, "c0"}, {&peep, "peep"}, {&W_hr, "weight_hr"}})
    check(*t, n, dt);
  check(lengths, "lengths", at::kLong);
  const Weights wts{W_hh, W_gg, h_src, a_src};
  Layout lay = layout_of(cell, std::move(bounds), wts, W_hr);
  if (dt == at::kFloat)
    return forward_impl<float>(cell, lay, groups, x, s0, c0, Wx, bx, wts, peep, lengths, keep, return_cells, tune,
                               W_hr);
  return forward_impl<double>(cell, lay, groups, x, s0, c0, Wx, bx, wts, peep, lengths, keep, return_cells, tune,
                              W_hr);
}

// The backward of `forward` (lstmlab.backends.cpu `_backward_impl`): the gradients of every
// input of one call from those of its outputs. Sizes and the arguments cfg to peep,
// lengths, tune and W_hr as for `forward`, the same tensors as the call being
// differentiated; and:
//   out, gates, C, M  what that call returned (made with keep = true).
//   dout          (T, B, Hs): the gradient of out, or absent (zero).
//   ds_final      (B, K): that of s_final (h_n, then a_n, in the kernel's column order), or
//                 absent.
//   dc_final      (B, H): that of c_final (lstm kinds), or absent.
//   dcells        (T, B, H): that of cells (return_cells), or absent.
//   want_norms    also return ||dL/dh_t|| and ||dL/dc_t|| per step and row.
// Returns {dx (T, B, I), dS (B, K), dC (B, H), dWx (gate_cols, I), dbx (gate_cols,),
// dWh (R, Hs), dWa (A H, A H), dpeep (n H,), norm_h (T, B), norm_c (T, B), dWr (Q, H)}:
// the gradients of x, s0 (the kernel's column order), c0 (lstm kinds), Wx and bx (the
// kernel's row order), W_hh and W_gg (torch's layout, as given), peep and W_hr; the norms
// (want_norms; norm_c for lstm kinds). Empty (or with no rows) where the input is absent.
std::vector<at::Tensor> backward(const Cell& cell, std::vector<int64_t> bounds, int64_t groups, at::Tensor x,
                                 at::Tensor s0, at::Tensor c0, at::Tensor Wx, at::Tensor W_hh, at::Tensor W_gg,
                                 at::Tensor h_src, at::Tensor a_src, at::Tensor peep, at::Tensor lengths,
                                 at::Tensor out, at::Tensor gates, at::Tensor C, at::Tensor dout, at::Tensor ds_final,
                                 at::Tensor dc_final, at::Tensor dcells, bool want_norms, std::vector<int64_t> tune,
                                 at::Tensor W_hr, at::Tensor M) {
  TORCH_CHECK(tune.size() == 5, "lstmlab cpu backend: bad configuration");
  check_sizes(x, W_hh);
  const auto dt = kernel_dtype(x);
  for (auto& [t, n] : {std::pair{&out, "out"}, {&gates, "gates"}, {&dout, "dout"}, {&ds_final, "ds_final"},
                       {&dc_final, "dc_final"}, {&dcells, "dcells"}, {&C, "C"}, {&W_hh, "weight_hh"},
                       {&W_gg, "weight_gg"}, {&W_hr, "weight_hr"}, {&M, "M"}})
    check(*t, n, dt);
  const Weights wts{W_hh, W_gg, h_src, a_src};
  Layout lay = layout_of(cell, std::move(bounds), wts, W_hr);
  TORCH_CHECK(lay.Q == 0 || M.numel() == x.size(0) * x.size(1) * lay.H, "lstmlab cpu backend: bad M");
  if (dt == at::kFloat)
    return backward_impl<float>(cell, lay, groups, x, s0, c0, Wx, wts, peep, lengths, out, gates, C, dout, ds_final,
                                dc_final, dcells, want_norms, tune, W_hr, M);
  return backward_impl<double>(cell, lay, groups, x, s0, c0, Wx, wts, peep, lengths, out, gates, C, dout, ds_final,
                               dc_final, dcells, want_norms, tune, W_hr, M);
}

// `lstmlab bench`: switch the clock on (and reset it) or off; read it.
void set_clock(bool on) { g_clock = Clock{on}; }
py::dict read_clock() {
  static const char* names[kPhases] = {"forward input", "forward product", "forward pointwise",
                                       "backward product", "backward pointwise", "backward chunk"};
  py::dict d;
  for (int ph = 0; ph < kPhases; ++ph) d[names[ph]] = g_clock.seconds[ph];
  d["forward product flops"] = g_clock.flops[0];
  d["backward product flops"] = g_clock.flops[1];
  return d;
}

// C [+]= op(A) op(B) with the engine the kernel's products use now (gemm.h `gemm`), on
// row-major 2-D tensors of one dtype (float32 or float64; rows may be further apart than
// their length, as in a slice of columns; op(X) = X^T when trans_x): for tests of the
// engines against torch.
template <class T>
void product_of(bool trans_a, bool trans_b, const at::Tensor& A, const at::Tensor& B, at::Tensor& C, bool accumulate) {
  const int64_t M = C.size(0), N = C.size(1), K = trans_a ? A.size(0) : A.size(1);
  gemm<T>(trans_a, trans_b, M, N, K, A.data_ptr<T>(), A.stride(0), B.data_ptr<T>(), B.stride(0), C.data_ptr<T>(),
          C.stride(0), accumulate);
}
void product(bool trans_a, bool trans_b, const at::Tensor& A, const at::Tensor& B, at::Tensor& C, bool accumulate) {
  const auto dt = kernel_dtype(C);
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&A, &B, &C})
    TORCH_CHECK(t->device().is_cpu() && t->dim() == 2 && t->scalar_type() == dt && t->stride(1) == 1 &&
                    t->stride(0) >= std::max<int64_t>(1, t->size(1)),
                "product: A, B and C must be row-major 2-D CPU tensors of one dtype");
  const int64_t M = C.size(0), N = C.size(1), K = trans_a ? A.size(0) : A.size(1);
  TORCH_CHECK((trans_a ? A.size(1) : A.size(0)) == M && (trans_b ? B.size(1) : B.size(0)) == K &&
                  (trans_b ? B.size(0) : B.size(1)) == N,
              "product: the shapes of op(A), op(B) and C do not agree");
  if (dt == at::kFloat)
    product_of<float>(trans_a, trans_b, A, B, C, accumulate);
  else
    product_of<double>(trans_a, trans_b, A, B, C, accumulate);
}

}  // namespace
}  // namespace lstmlab

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lstmlab fused CPU backend (see lstmlab.backends.cpu)";
  // The GIL is released while a sequence runs (no Python object is touched there).
  m.def("forward", &lstmlab::forward, py::call_guard<py::gil_scoped_release>());
  m.def("backward", &lstmlab::backward, py::call_guard<py::gil_scoped_release>());
  m.def("modern_forward", &lstmlab::modern_forward, py::call_guard<py::gil_scoped_release>());
  m.def("modern_backward", &lstmlab::modern_backward, py::call_guard<py::gil_scoped_release>());
  m.def("set_clock", &lstmlab::set_clock);
  m.def("set_gemm_choice", &lstmlab::set_gemm_choice);
  m.def("gemm_choice", []() { return (int64_t)lstmlab::gemm_choice().load(); });
  m.def("gemm_uses_builtin", [](bool is_double) {
    return is_double ? lstmlab::use_builtin<double>() : lstmlab::use_builtin<float>();
  });
  m.def("gemm_time_ratios", [](bool is_double) {
    return is_double ? lstmlab::engine_ratios<double>() : lstmlab::engine_ratios<float>();
  });
  m.def("read_clock", &lstmlab::read_clock);
  m.def("product", &lstmlab::product);
  m.attr("vector_bytes") = lstmlab::kVecBytes;
  m.attr("have_blas") = lstmlab::have_blas();
  // The cell, made by name and checked once (cell_from); its enums' tables of names.
  py::class_<lstmlab::Cell>(m, "Cell")
      .def(py::init(&lstmlab::cell_from))
      .def("to_dict", &lstmlab::cell_dict)
      .def("__repr__",
           [](const lstmlab::Cell& c) { return "Cell(" + py::str(lstmlab::cell_dict(c)).cast<std::string>() + ")"; });
  m.attr("cell_fields") =
      py::cast(std::vector<std::string>(std::begin(lstmlab::kCellFields), std::end(lstmlab::kCellFields)));
  m.attr("kinds") = lstmlab::table(lstmlab::kKinds);
  m.attr("forget_modes") = lstmlab::table(lstmlab::kForgetModes);
  m.attr("gru_blocks") = lstmlab::table(lstmlab::kGruBlocks);
  m.attr("activations") = lstmlab::table(lstmlab::kActivations);
  m.attr("modern_kinds") = lstmlab::table(lstmlab::kModernKinds);
  m.attr("forget_activations") = lstmlab::table(lstmlab::kForgetActs);
  m.attr("gemm_choices") = lstmlab::table(lstmlab::kGemmChoices);
}
