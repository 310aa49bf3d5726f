// The fused CPU backend: one layer and direction of any registered cell over a whole
// sequence, forward and backward (lstmlab.backends.cpu wraps these two functions in a
// torch.autograd.Function; csrc/layout.py packs the weights into the kernel's layout).
//
// The hidden units are cut into slices, one per thread (steps.h); each slice owns its
// rows of the gates, C and dP buffers (cells.h Layout).
// forward: per step and slice, one recurrent product into the slice's gate columns and
//   one vectorised pointwise pass (cells.h). The input projection x W^T is one product
//   per chunk of steps and slice (the chunk's gates are still in cache when the loop
//   reaches them). Saves the activations, every c_t and the outputs.
// backward: per step (last to first) and slice, the product of the next step's
//   pre-activation gradients with the recurrent weights, then the pointwise backward.
//   dP, the pre-activation gradients, lives in a ring of two chunks: when a chunk is
//   done, each thread forms its slice's share of dx, dW_ih and dW_hh from it with products
//   over the whole chunk. Bias and peephole gradients accumulate in the pointwise pass.
//
// tune = {small_limit, allow_pack, chunk}: products up to small_limit multiply-adds use
//   the built-in kernel; allow_pack lets float products use MKL's packed weights; chunk:
//   steps per chunk (0: chosen here).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>

#include "cells.h"
#include "clock.h"
#include "gemm.h"
#include "steps.h"

namespace lstmlab {
namespace {

// Optional tensors arrive as empty tensors.
bool has(const at::Tensor& t) { return t.defined() && t.numel() > 0; }
template <class T> T* ptr(const at::Tensor& t) { return has(t) ? t.data_ptr<T>() : nullptr; }

void check(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  if (!has(t)) return;
  TORCH_CHECK(t.device().is_cpu(), "lstmlab cpu backend: ", name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == dtype, "lstmlab cpu backend: ", name, " has dtype ", t.scalar_type(),
              ", expected ", dtype);
  TORCH_CHECK(t.is_contiguous(), "lstmlab cpu backend: ", name, " must be contiguous");
}

// Steps per chunk: about 256 rows (chunk * B) for efficient weight-gradient products, at
// most 2 MiB of a slice's gates (about the L2 cache of a core). Measured: BENCHMARKS.md.
int64_t chunk_steps(int64_t requested, int64_t T, int64_t B, int64_t GS, int64_t P, int64_t elt) {
  if (requested > 0) return std::min(requested, T);
  const int64_t by_rows = (256 + B - 1) / B;
  const int64_t by_bytes = std::max<int64_t>(1, (2 << 20) / std::max<int64_t>(1, B * GS / P * elt));
  return std::max<int64_t>(1, std::min({by_rows, by_bytes, T}));
}

// Buffers with one part per slice: slice p's rows (step, batch) of width `width(p)`.
template <class T>
struct SliceBuffer {
  T* base;
  const Layout& lay;
  int64_t rows;  // steps * batch held per slice
  bool gates;    // gates-wide (Gs blocks) rather than unit-wide rows
  int64_t width(int64_t p) const { return gates ? lay.gs(p) : lay.w(p); }
  T* row(int64_t p, int64_t r) const {
    return base + (gates ? lay.gates_at(p, rows) : lay.units_at(p, rows)) + r * width(p);
  }
};

template <class T>
std::vector<at::Tensor> forward_impl(const Cell& cell, const Layout& lay, const at::Tensor& x, const at::Tensor& s0,
                                     const at::Tensor& c0, const at::Tensor& Wx, const at::Tensor& bx,
                                     const at::Tensor& Wr, const at::Tensor& peep, const at::Tensor& lengths,
                                     bool keep, bool return_cells, const std::vector<int64_t>& tune) {
  const int64_t T_ = x.size(0), B = x.size(1), I = x.size(2), H = lay.H;
  const int64_t GS = lay.GS(), K = lay.K(), P = lay.P, Gs = lay.Gs, Gr = lay.Gr;
  const int64_t CH = chunk_steps(tune[2], T_, B, GS, P, sizeof(T));
  const bool lstm = cell.kind == KIND_LSTM;
  const bool keep_c = keep || return_cells;
  // Without a backward to feed, gates and c are rings (a chunk, two steps).
  const int64_t Tg = keep ? T_ : CH, Tc = lstm ? (keep_c ? T_ : 2) : 0;
  auto opts = x.options();
  at::Tensor gates = at::empty({Tg * B * GS}, opts);
  at::Tensor out = at::empty({T_, B, H}, opts);
  at::Tensor C = at::empty({Tc * B * H}, opts);
  at::Tensor S = at::empty({2, B, K}, opts);
  S[0].copy_(s0);
  const SliceBuffer<T> G{ptr<T>(gates), lay, Tg * B, true}, Cb{ptr<T>(C), lay, Tc * B, false};

  const T *wr = ptr<T>(Wr), *wx = ptr<T>(Wx), *xp = ptr<T>(x), *bxp = ptr<T>(bx), *c0p = ptr<T>(c0);
  std::vector<typename StepProduct<T>::Part> parts;  // slice p: its recurrent gate rows of Wr, transposed
  for (int64_t p = 0; p < P; ++p) parts.push_back({wr + Gr * lay.u0(p) * K, K, K, Gr * lay.w(p), true});
  const StepProduct<T> product(B, parts, tune[0], tune[1] != 0);
  SliceClock clock(P);

  const CellKernel<T> kern{cell, lay, B, ptr<int64_t>(lengths), ptr<T>(peep)};
  T *Sp = ptr<T>(S), *o = ptr<T>(out);
  auto gates_row = [&](int64_t p, int64_t t, int64_t b) { return G.row(p, (t % Tg) * B + b); };
  auto c_row = [&](int64_t p, int64_t t, int64_t b) {  // c_t of row b, slice p (t = -1: c0)
    return t < 0 ? const_cast<T*>(c0p) + b * H + lay.u0(p) : Cb.row(p, (keep_c ? t : (t & 1)) * B + b);
  };
  run_steps(T_, P, [&](int64_t t, int64_t p) {
    auto since = clock.now();
    const int64_t gsp = lay.gs(p);
    if (t % CH == 0) {  // this chunk's input projection for the slice (the bias is added below)
      const int64_t n = std::min(CH, T_ - t);
      gemm_blas<T>(false, true, n * B, gsp, I, xp + t * B * I, I, wx + Gs * lay.u0(p) * I, I, gates_row(p, t, 0),
                   gsp, false);
      clock.add(p, F_INPUT, since);
    }
    const T* sprev = Sp + (t & 1) * B * K;
    T* snext = Sp + ((t + 1) & 1) * B * K;
    product(p, sprev, K, gates_row(p, t, 0), gsp, true);
    clock.add(p, F_PRODUCT, since);
    const T* bias = bxp + Gs * lay.u0(p);
    for (int64_t b = 0; b < B; ++b) {
      T* hout = o + (t * B + b) * H;
      const T* cp = lstm ? c_row(p, t - 1, b) : nullptr;
      T* cn = lstm ? c_row(p, t, b) : nullptr;
      if (kern.valid(t, b))
        kern.forward_row(p, gates_row(p, t, b), bias, sprev + b * K, snext + b * K, cp, cn, hout);
      else
        kern.hold_row(p, sprev + b * K, snext + b * K, cp, cn, hout);
    }
    clock.add(p, F_POINTWISE, since);
  });
  clock.fold();
  if (g_clock.on) g_clock.flops[0] += 2.0 * T_ * B * lay.R() * K;
  at::Tensor s_final = S[T_ & 1].clone();
  // c_n, and every c_t for return_cells, in (B, H) / (T, B, H) from the slices' rows
  auto gather_c = [&](int64_t t, T* dst) {
    for (int64_t b = 0; b < B; ++b)
      for (int64_t p = 0; p < P; ++p) std::memcpy(dst + b * H + lay.u0(p), c_row(p, t, b), sizeof(T) * lay.w(p));
  };
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
  if (!keep) gates = at::empty({0}, opts), C = at::empty({0}, opts);
  return {out, gates, C, s_final, c_final, cells};
}

template <class T>
std::vector<at::Tensor> backward_impl(const Cell& cell, const Layout& lay, const at::Tensor& x,
                                      const at::Tensor& s0, const at::Tensor& c0, const at::Tensor& Wx,
                                      const at::Tensor& Wr, const at::Tensor& peep, const at::Tensor& lengths,
                                      const at::Tensor& out, const at::Tensor& gates, const at::Tensor& C,
                                      const at::Tensor& dout, const at::Tensor& ds_final, const at::Tensor& dc_final,
                                      const at::Tensor& dcells, bool want_norms, const std::vector<int64_t>& tune) {
  const int64_t T_ = x.size(0), B = x.size(1), I = x.size(2), H = lay.H;
  const int64_t GS = lay.GS(), R = lay.R(), K = lay.K(), P = lay.P, A = lay.A, Gs = lay.Gs, Gr = lay.Gr;
  const int64_t CH = chunk_steps(tune[2], T_, B, GS, P, sizeof(T));
  const int64_t RING = std::min(2 * CH, T_);  // dP: a ring of two chunks
  const bool lstm = cell.kind == KIND_LSTM;
  auto opts = x.options();
  at::Tensor dP = at::empty({RING * B * GS}, opts);
  at::Tensor stage = at::empty({P > 1 ? 2 : 0, B, R}, opts);
  at::Tensor dS = has(ds_final) ? ds_final.clone() : at::zeros({B, K}, opts);
  at::Tensor dC = lstm ? (has(dc_final) ? dc_final.clone() : at::zeros({B, H}, opts)) : at::empty({0}, opts);
  at::Tensor dbx = at::zeros({GS}, opts);
  at::Tensor dpeep = at::zeros({peep.numel()}, opts);
  at::Tensor dWx = at::zeros({GS, I}, opts);
  at::Tensor dWr = at::zeros({R, K}, opts);
  at::Tensor dx = P == 1 ? at::empty({T_, B, I}, opts) : at::empty({P, T_, B, I}, opts);  // per-slice shares
  at::Tensor norms = at::zeros({want_norms ? 2 : 0, P, T_, B}, opts);

  const T* wr = ptr<T>(Wr);
  std::vector<typename StepProduct<T>::Part> parts;  // slice p: the columns of Wr for its part of S
  for (int64_t p = 0; p < P; ++p) parts.push_back({wr + lay.scol(p, 0), K, cell.truncate ? 0 : R, (1 + A) * lay.w(p), false});
  const StepProduct<T> product(B, parts, tune[0], tune[1] != 0);
  SliceClock clock(P);

  const CellKernel<T> kern{cell, lay, B, ptr<int64_t>(lengths), ptr<T>(peep)};
  const SliceBuffer<T> G{ptr<T>(gates), lay, T_ * B, true}, Cb{ptr<T>(C), lay, T_ * B, false},
      D{ptr<T>(dP), lay, RING * B, true};
  T *ds = ptr<T>(dS), *dc = ptr<T>(dC), *db = ptr<T>(dbx), *dpe = ptr<T>(dpeep), *stg = ptr<T>(stage);
  T *dwx = ptr<T>(dWx), *dwr = ptr<T>(dWr), *dxp = ptr<T>(dx), *nrm = ptr<T>(norms);
  const T *c0p = ptr<T>(c0), *o = ptr<T>(out), *s0p = ptr<T>(s0);
  const T *xp = ptr<T>(x), *wx = ptr<T>(Wx), *dop = ptr<T>(dout), *dcl = ptr<T>(dcells);
  auto dp_row = [&](int64_t p, int64_t t, int64_t b) { return D.row(p, (((t / CH) & 1) * CH + t % CH) * B + b); };
  // The next step's product reads the recurrent part of dP_t as one (B, R) matrix: with one
  // slice that is dP itself, with several a staged copy (by step parity).
  const bool staged = P > 1 && !cell.truncate;
  const int64_t rec_ld = P > 1 ? R : GS;
  auto rec_grads = [&](int64_t t) -> const T* { return P > 1 ? stg + (t & 1) * B * R : dp_row(0, t, 0); };

  // dW_hh (and FGR's dW_gg) rows of slice p += dP[t0:t0+n]^T S_{t-1}, S_{t-1} being s0 at
  // t = 0, the outputs (h part) and the saved gate activations (FGR's a part) after.
  auto recurrent_weight_grads = [&](int64_t p, int64_t t0, int64_t n) {
    const int64_t gsp = lay.gs(p), nr = Gr * lay.w(p);
    T* dst = dwr + Gr * lay.u0(p) * K;
    auto block = [&](int64_t scol, int64_t w, const T* from, int64_t ld, const T* s0_part) {
      int64_t t = t0, m = n;
      if (t0 == 0) {
        gemm_blas<T>(true, false, nr, w, B, dp_row(p, 0, 0), gsp, s0_part, K, dst + scol, K, true);
        t = 1, m = n - 1;
      }
      if (m > 0) gemm_blas<T>(true, false, nr, w, m * B, dp_row(p, t, 0), gsp, from + (t - 1) * B * ld, ld,
                              dst + scol, K, true);
    };
    if (A == 0) return block(0, H, o, H, s0p);
    for (int64_t q = 0; q < P; ++q) {
      const int64_t w = lay.w(q);
      block(lay.scol(q, 0), w, o + lay.u0(q), H, s0p + lay.scol(q, 0));
      for (int64_t j = 1; j <= A; ++j) {
        const int blk = j == cell.ai ? cell.bi : (j == cell.af ? cell.bf : cell.bo);
        block(lay.scol(q, j), w, G.row(q, 0) + lay.col(q, blk), lay.gs(q), s0p + lay.scol(q, j));
      }
    }
  };
  // Slice p's share of a finished chunk: dx (its columns' part), dW_ih and dW_hh rows.
  auto chunk_grads = [&](int64_t p, int64_t t0, int64_t n) {
    const T* dpc = dp_row(p, t0, 0);
    const int64_t gsp = lay.gs(p), r0 = Gs * lay.u0(p);
    T* dxs = dxp + (P == 1 ? 0 : p * T_ * B * I) + t0 * B * I;
    gemm_blas<T>(false, false, n * B, I, gsp, dpc, gsp, wx + r0 * I, I, dxs, I, false);
    gemm_blas<T>(true, false, gsp, I, n * B, dpc, gsp, xp + t0 * B * I, I, dwx + r0 * I, I, true);
    recurrent_weight_grads(p, t0, n);
  };

  run_steps(T_, P, [&](int64_t k, int64_t p) {
    const int64_t t = T_ - 1 - k;
    const int64_t sc = lay.scol(p, 0), nr = Gr * lay.w(p);
    auto since = clock.now();
    if (t < T_ - 1 && !cell.truncate) product(p, rec_grads(t + 1), rec_ld, ds + sc, K, true);
    clock.add(p, B_PRODUCT, since);
    T* nh = nrm ? nrm + (p * T_ + t) * B : nullptr;
    T* nc = nrm ? nrm + ((P + p) * T_ + t) * B : nullptr;
    T scratch_h = 0, scratch_c = 0;
    T* st = staged ? stg + (t & 1) * B * R + Gr * lay.u0(p) : nullptr;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t row = t * B + b;
      T* dpr = dp_row(p, t, b);
      if (!kern.valid(t, b)) {
        kern.skip_row(p, dpr);
      } else {
        const T* hprev = t == 0 ? s0p + b * K : o + (row - B) * H;
        const T* cprev = lstm ? (t == 0 ? c0p + b * H + lay.u0(p) : Cb.row(p, row - B)) : nullptr;
        const T* cnew = lstm ? Cb.row(p, row) : nullptr;
        kern.backward_row(p, G.row(p, row), dpr, ds + b * K, lstm ? dc + b * H : nullptr, hprev, cprev, cnew,
                          dop ? dop + row * H : nullptr, dcl ? dcl + row * H : nullptr, db + Gs * lay.u0(p), dpe,
                          nh ? nh + b : &scratch_h, lstm ? (nc ? nc + b : &scratch_c) : nullptr);
      }
      if (staged) std::memcpy(st + b * R, dpr, sizeof(T) * nr);
    }
    clock.add(p, B_POINTWISE, since);
    if (t % CH == 0) chunk_grads(p, t, std::min(CH, T_ - t));
    clock.add(p, B_CHUNK, since);
  });
  clock.fold();
  if (g_clock.on) g_clock.flops[1] += cell.truncate ? 0.0 : 2.0 * (T_ - 1) * B * R * K;
  if (!cell.truncate)  // the gradient of the initial state through the first product
    gemm_blas<T>(false, false, B, K, R, rec_grads(0), rec_ld, wr, K, ds, K, true);
  if (P > 1) dx = dx.sum(0);
  at::Tensor norm_h = at::empty({0}, opts), norm_c = at::empty({0}, opts);
  if (want_norms) {
    at::Tensor sums = norms.sum(1);  // (2, T, B)
    norm_h = sums[0].sqrt();
    if (lstm) norm_c = sums[1].sqrt();
  }
  return {dx, dS, dC, dWx, dbx, dWr, dpeep, norm_h, norm_c};
}

std::vector<at::Tensor> forward(std::vector<int64_t> cfg, std::vector<int64_t> bounds, at::Tensor x, at::Tensor s0,
                                at::Tensor c0, at::Tensor Wx, at::Tensor bx, at::Tensor Wr, at::Tensor peep,
                                at::Tensor lengths, bool keep, bool return_cells, std::vector<int64_t> tune) {
  TORCH_CHECK((int64_t)cfg.size() == Cell::kFields && tune.size() == 3, "lstmlab cpu backend: bad configuration");
  Cell cell(cfg);
  Layout lay(cell, Wr.size(1) / (1 + cell.A), std::move(bounds));
  const auto dt = x.scalar_type();
  for (auto& [t, n] : {std::pair{&x, "x"}, {&s0, "s0"}, {&Wx, "Wx"}, {&bx, "bx"}, {&Wr, "Wr"}, {&c0, "c0"},
                       {&peep, "peep"}})
    check(*t, n, dt);
  check(lengths, "lengths", at::kLong);
  if (dt == at::kFloat)
    return forward_impl<float>(cell, lay, x, s0, c0, Wx, bx, Wr, peep, lengths, keep, return_cells, tune);
  TORCH_CHECK(dt == at::kDouble, "lstmlab cpu backend: dtype ", dt, " is not supported (float32, float64)");
  return forward_impl<double>(cell, lay, x, s0, c0, Wx, bx, Wr, peep, lengths, keep, return_cells, tune);
}

std::vector<at::Tensor> backward(std::vector<int64_t> cfg, std::vector<int64_t> bounds, at::Tensor x, at::Tensor s0,
                                 at::Tensor c0, at::Tensor Wx, at::Tensor Wr, at::Tensor peep, at::Tensor lengths,
                                 at::Tensor out, at::Tensor gates, at::Tensor C, at::Tensor dout,
                                 at::Tensor ds_final, at::Tensor dc_final, at::Tensor dcells, bool want_norms,
                                 std::vector<int64_t> tune) {
  TORCH_CHECK((int64_t)cfg.size() == Cell::kFields && tune.size() == 3, "lstmlab cpu backend: bad configuration");
  Cell cell(cfg);
  Layout lay(cell, Wr.size(1) / (1 + cell.A), std::move(bounds));
  const auto dt = x.scalar_type();
  for (auto& [t, n] : {std::pair{&out, "out"}, {&gates, "gates"}, {&dout, "dout"}, {&ds_final, "ds_final"},
                       {&dc_final, "dc_final"}, {&dcells, "dcells"}, {&C, "C"}})
    check(*t, n, dt);
  if (dt == at::kFloat)
    return backward_impl<float>(cell, lay, x, s0, c0, Wx, Wr, peep, lengths, out, gates, C, dout, ds_final,
                                dc_final, dcells, want_norms, tune);
  return backward_impl<double>(cell, lay, x, s0, c0, Wx, Wr, peep, lengths, out, gates, C, dout, ds_final,
                               dc_final, dcells, want_norms, tune);
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

}  // namespace
}  // namespace lstmlab

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lstmlab fused CPU backend (see lstmlab.backends.cpu)";
  // The GIL is released while a sequence runs (no Python object is touched there).
  m.def("forward", &lstmlab::forward, py::call_guard<py::gil_scoped_release>());
  m.def("backward", &lstmlab::backward, py::call_guard<py::gil_scoped_release>());
  m.def("set_clock", &lstmlab::set_clock);
  m.def("read_clock", &lstmlab::read_clock);
  m.attr("vector_bytes") = lstmlab::kVecBytes;
  m.attr("have_blas") = lstmlab::have_blas();
}
