// The modern cells' layer (csrc/modern.h's maths): one layer and direction of slstm,
// minlstm or mingru over a whole sequence, forward and backward, shared between threads
// (modern.h's header comment says how), and the weights' orders between torch's and the
// path's. lstmlab_cpu.cpp binds modern_forward and modern_backward for Python
// (lstmlab.backends.cpu `_modern_forward` / `_modern_backward`).
#include "modern_layer.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "clock.h"
#include "gemm.h"
#include "steps.h"
#include "work.h"

namespace lstmlab {
namespace {

struct ModernArgs {
  ModernKind kind;
  Act act;
  bool fexp, truncate;
  int64_t T_, B, I, H, G, heads, dh;
  const int64_t* len;
  int64_t small_limit;
  bool allow_pack;
  int64_t groups;               // slstm: groups of batch rows, one a worker (1: none)
  int64_t workers;              // threads that share the sequence (at most one a block or range)
  std::vector<int64_t> edges;   // slstm: cuts of a head's dh units; min cells: of the H units
  std::vector<Block> blocks;    // slstm
  // the min cells' worker k: units [edges[k], edges[k + 1])
  int64_t ranges() const { return (int64_t)edges.size() - 1; }
  // worker w's batch rows
  std::pair<int64_t, int64_t> rows(int64_t w) const {
    return groups > 1 ? std::pair{B * w / groups, B * (w + 1) / groups} : std::pair{int64_t(0), B};
  }
};

ModernArgs modern_args(int64_t kind, int64_t act, int64_t fexp, bool truncate, const at::Tensor& x,
                       const at::Tensor& W_ih, const at::Tensor& W_hh, const at::Tensor& lengths,
                       int64_t small_limit, bool allow_pack, int64_t groups, int64_t workers,
                       std::vector<int64_t> edges) {
  TORCH_CHECK(kind >= 0 && kind <= 2, "lstmlab cpu backend: modern kind ", kind, " unknown");
  TORCH_CHECK(act == ACT_IDENTITY || act == ACT_GMIN || kind == MODERN_SLSTM,
              "lstmlab cpu backend: activation ", act, " not computed for the min cells (identity, g_min)");
  TORCH_CHECK(fexp == 0 || fexp == 1, "lstmlab cpu backend: forget activation ", fexp, " unknown");
  TORCH_CHECK(x.dim() == 3 && x.size(0) > 0 && x.size(1) > 0, "lstmlab cpu backend: x has shape ", x.sizes(),
              "; the kernel needs at least one step and one batch row");
  const int64_t G = kind == MODERN_SLSTM ? 4 : kind == MODERN_MINLSTM ? 3 : 2;
  TORCH_CHECK(W_ih.dim() == 2 && W_ih.size(0) % G == 0 && W_ih.size(0) > 0 && W_ih.size(1) == x.size(2),
              "lstmlab cpu backend: weight_ih has shape ", W_ih.sizes());
  const int64_t H = W_ih.size(0) / G;
  int64_t dh = H;
  if (kind == MODERN_SLSTM) {
    TORCH_CHECK(W_hh.dim() == 2 && W_hh.size(0) == 4 * H && W_hh.size(1) > 0 && H % W_hh.size(1) == 0,
                "lstmlab cpu backend: slstm's weight_hh has shape ", W_hh.sizes(), "; expected (4H, H / heads)");
    dh = W_hh.size(1);
  }
  const int64_t span = kind == MODERN_SLSTM ? dh : H;
  bool ok = edges.size() >= 2 && edges.front() == 0 && edges.back() == span;
  for (size_t e = 1; ok && e < edges.size(); ++e) ok = edges[e] > edges[e - 1];
  TORCH_CHECK(ok, "lstmlab cpu backend: the units' edges must rise strictly from 0 to ", span);
  TORCH_CHECK(workers >= 1 && groups >= 1 && (groups == 1 || kind == MODERN_SLSTM),
              "lstmlab cpu backend: workers ", workers, " and groups ", groups, " must be >= 1 (groups: slstm)");
  ModernArgs a{(ModernKind)kind, (Act)act, fexp == 1, truncate, x.size(0), x.size(1), x.size(2), H, G, H / dh,
               dh, has(lengths) ? lengths.data_ptr<int64_t>() : nullptr, small_limit, allow_pack,
               std::min(groups, x.size(1)), workers, std::move(edges), {}};
  if (kind == MODERN_SLSTM)
    for (int64_t d = 0; d < a.heads; ++d)
      for (int64_t e = 0; e + 1 < (int64_t)a.edges.size(); ++e)
        a.blocks.push_back(Block{d, a.edges[e], a.edges[e + 1], d * 4 * dh + 4 * a.edges[e]});
  a.workers = a.groups > 1 ? a.groups
                           : std::min<int64_t>(workers, kind == MODERN_SLSTM ? (int64_t)a.blocks.size() : a.ranges());
  return a;
}

// slstm's (4H, ...) tensors between torch's row order (gate, head, unit) and the path's
// (block by block, Block): the path's row r is torch's row rows[r]; identity with one block,
// or for an absent tensor.
// Rows move as runs of w consecutive ones (a block's units of one gate), one memcpy each.
at::Tensor slstm_rows(const ModernArgs& a, const at::Tensor& w, bool back) {
  if (a.kind != MODERN_SLSTM || a.blocks.size() == 1 || !has(w)) return w.contiguous();
  const at::Tensor src = w.contiguous();
  at::Tensor dst = at::empty_like(src);
  const int64_t row = src.numel() / src.size(0), elt = src.element_size();
  const char* from = (const char*)src.data_ptr();
  char* to = (char*)dst.data_ptr();
  for (const Block& q : a.blocks)
    for (int64_t g = 0; g < 4; ++g) {
      const int64_t path = q.base + g * q.w(), torch_row = g * a.H + q.d * a.dh + q.j0;
      const int64_t d = back ? torch_row : path, f = back ? path : torch_row;
      std::memcpy(to + d * row * elt, from + f * row * elt, q.w() * row * elt);
    }
  return dst;
}

// f(k) for worker k = 0..n-1 side by side (they never meet).
template <class F>
void each_worker(int64_t n, const F& f) {
  run_steps(1, n, [&](int64_t, int64_t k) { f(k); });
}

template <class T>
ModernRun<T> modern_run(const ModernArgs& a) {
  return ModernRun<T>{a.kind, a.act, a.fexp, a.B, a.H, a.dh, a.G, a.len};
}

// The per-step products with slstm's recurrent weights W_hh (4H, dh) in torch's row order,
// read in the path's (Block) through a row map, one part per block: forward C (B x 4w) +=
// h (B x dh) R_q^T, block q's rows of its head's part of R, from h's columns d dh on into
// C's q.base on; backward (back) C (B x w) = dP (B x 4dh) R_d[:, j0:j1], the units' columns
// of the head's part, from the head's dP. StepProduct (gemm.h) chooses the built-in
// product, MKL's packed weights or the BLAS per part, and copies the weights in the order
// it reads them once (the map costs no pass of its own). M: the rows a worker multiplies.
template <class T>
StepProduct<T> blocks_product(const ModernArgs& a, const at::Tensor& W_hh, const std::vector<int64_t>& rows,
                              bool back, int64_t M) {
  std::vector<typename StepProduct<T>::Part> parts;
  const int64_t dh = a.dh;
  const T* W = W_hh.data_ptr<T>();
  for (const Block& q : a.blocks) {
    const int64_t* map = rows.empty() ? nullptr : rows.data() + (back ? q.d * 4 * dh : q.base);
    const int64_t first = rows.empty() ? (back ? q.d * 4 * dh : q.base) : 0;  // without a map: the rows in place
    parts.push_back(back ? typename StepProduct<T>::Part{W + first * dh + q.j0, dh, 4 * dh, q.w(), false, map}
                         : typename StepProduct<T>::Part{W + first * dh, dh, dh, 4 * q.w(), true, map});
  }
  return StepProduct<T>(M, std::move(parts), a.small_limit, a.allow_pack, int64_t(1) << 20);
}

// For each of slstm's path rows (Block order), its row of W_hh in torch's order; empty with
// one block (the orders agree).
std::vector<int64_t> slstm_torch_rows(const ModernArgs& a) {
  std::vector<int64_t> rows;
  if (a.kind != MODERN_SLSTM || a.blocks.size() == 1) return rows;
  for (const Block& q : a.blocks)
    for (int64_t g = 0; g < 4; ++g)
      for (int64_t j = q.j0; j < q.j1; ++j) rows.push_back(g * a.H + q.d * a.dh + j);
  return rows;
}

// The products of every worker (one StepProduct for each distinct number of rows).
template <class T>
struct WorkerProducts {
  std::vector<StepProduct<T>> products;
  std::vector<size_t> of;  // worker -> its product
  WorkerProducts(const ModernArgs& a, const at::Tensor& W_hh, bool back) {
    const std::vector<int64_t> rows = slstm_torch_rows(a);  // read while the products are made
    std::vector<int64_t> seen;
    for (int64_t w = 0; w < a.workers; ++w) {
      const auto [b0, b1] = a.rows(w);
      size_t i = std::find(seen.begin(), seen.end(), b1 - b0) - seen.begin();
      if (i == seen.size()) {
        seen.push_back(b1 - b0);
        products.push_back(blocks_product<T>(a, W_hh, rows, back, b1 - b0));
      }
      of.push_back(i);
    }
  }
  const StepProduct<T>& operator[](int64_t w) const { return products[of[w]]; }
};

// Worker w's blocks: every block in a group of batch rows, else every workers-th.
inline int64_t first_block(const ModernArgs& a, int64_t w) { return a.groups > 1 ? 0 : w; }
inline int64_t block_stride(const ModernArgs& a) { return a.groups > 1 ? 1 : a.workers; }

// f(t, w) for t = 0..T-1 and every worker: groups of batch rows never meet (each runs all
// its steps); blocks meet after every step.
template <class F>
void slstm_steps(const ModernArgs& a, int64_t T, const F& f) {
  if (a.groups > 1)
    each_worker(a.workers, [&](int64_t w) {
      for (int64_t t = 0; t < T; ++t) f(t, w);
    });
  else
    run_steps(T, a.workers, f);
}

// The bias gradients: sums of dP (rows x cols) over its rows, accumulated in double (float's
// running sum over thousands of rows would lose digits that torch's pairwise sum keeps),
// columns shared between the threads.
template <class T>
void column_sums(const T* k, int64_t rows, int64_t cols, T* out) {
  constexpr int64_t kCols = 64;
  at::parallel_for(0, (cols + kCols - 1) / kCols, 1, [&](int64_t c0, int64_t c1) {
    double acc[kCols];
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t j0 = c * kCols, n = std::min(kCols, cols - j0);
      std::fill(acc, acc + n, 0.0);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < n; ++j) acc[j] += k[r * cols + j0 + j];
      for (int64_t j = 0; j < n; ++j) out[j0 + j] = (T)acc[j];
    }
  });
}

template <class T>
std::vector<at::Tensor> modern_forward_impl(const ModernArgs& a, const at::Tensor& x, const at::Tensor& h0,
                                            const at::Tensor& c0, const at::Tensor& nm0, const at::Tensor& Wx,
                                            const at::Tensor& bias, const at::Tensor& Wh, bool keep) {
  const auto opts = x.options();
  const int64_t T_ = a.T_, B = a.B, H = a.H, GH = a.G * a.H;
  const ModernRun<T> run = modern_run<T>(a);
  at::Tensor K = at::empty({T_ * B * GH}, opts), out = at::empty({T_, B, H}, opts);
  SliceClock clock(a.workers);
  auto since = clock.now();
  gemm<T>(false, true, T_ * B, GH, a.I, x.data_ptr<T>(), a.I, Wx.data_ptr<T>(), a.I, K.data_ptr<T>(), GH, false);
  clock.add(0, F_INPUT, since);
  T* k = K.data_ptr<T>();
  T* o = out.data_ptr<T>();
  const T* b = has(bias) ? bias.data_ptr<T>() : nullptr;
  // an absent result: a tensor of its own each (a custom operator's outputs may not alias)
  auto none = [&] { return at::empty({0}, opts); };
  if (a.kind != MODERN_SLSTM) {
    at::Tensor hs = h0.clone();
    T* h = hs.data_ptr<T>();
    each_worker(a.workers, [&](int64_t w) {
      auto since = clock.now();
      for (int64_t r = w; r < a.ranges(); r += a.workers)
        for (int64_t t = 0; t < T_; ++t)
          run.min_forward_step(t, k + t * B * GH, b, h, h, o + t * B * H, a.edges[r], a.edges[r + 1]);
      clock.add(w, F_POINTWISE, since);
    });
    clock.fold();
    return {out, hs, none(), none(), keep ? K : none(), none()};
  }
  // state rows [c | n | m]: every step's when the backward needs them, else two; h by step
  // parity (a step's product reads h_{t-1} of the head's other blocks while h_t is formed)
  at::Tensor S = at::empty({(keep ? T_ + 1 : 2) * B * 3 * H}, opts), hb = at::empty({2, B, H}, opts);
  T* s = S.data_ptr<T>();
  T* h = hb.data_ptr<T>();
  std::memcpy(h, h0.data_ptr<T>(), sizeof(T) * B * H);
  for (int64_t bb = 0; bb < B; ++bb) {
    std::memcpy(s + bb * 3 * H, c0.data_ptr<T>() + bb * H, sizeof(T) * H);
    std::memcpy(s + bb * 3 * H + H, nm0.data_ptr<T>() + bb * 2 * H, sizeof(T) * 2 * H);
  }
  const WorkerProducts<T> prods(a, Wh, false);
  const int64_t nb = (int64_t)a.blocks.size();
  slstm_steps(a, T_, [&](int64_t t, int64_t w) {
    const auto [b0, b1] = a.rows(w);
    T* kt = k + t * B * GH;
    const T* sp = s + (keep ? t : t % 2) * B * 3 * H;
    T* sn = s + (keep ? t + 1 : (t + 1) % 2) * B * 3 * H;
    const T* hp = h + (t % 2) * B * H;
    T* hn = h + ((t + 1) % 2) * B * H;
    auto since = clock.now();
    for (int64_t i = first_block(a, w); i < nb; i += block_stride(a)) {
      const Block& q = a.blocks[i];
      prods[w](i, hp + b0 * H + q.d * a.dh, H, kt + b0 * GH + q.base, GH, true);
      clock.add(w, F_PRODUCT, since);
      run.slstm_forward_step(t, kt, b, sp, sn, hp, hn, o + t * B * H, q, b0, b1);
      clock.add(w, F_POINTWISE, since);
    }
  });
  clock.fold();
  if (g_clock.on) g_clock.flops[0] += 2.0 * T_ * B * 4 * H * a.dh;
  const T* last = s + (keep ? T_ : T_ % 2) * B * 3 * H;
  at::Tensor h_n = hb[T_ % 2].clone(), c_n = at::empty({B, H}, opts), a_n = at::empty({B, 2 * H}, opts);
  for (int64_t bb = 0; bb < B; ++bb) {
    std::memcpy(c_n.data_ptr<T>() + bb * H, last + bb * 3 * H, sizeof(T) * H);
    std::memcpy(a_n.data_ptr<T>() + bb * 2 * H, last + bb * 3 * H + H, sizeof(T) * 2 * H);
  }
  return {out, h_n, c_n, a_n, keep ? K : none(), keep ? S : none()};
}

template <class T>
std::vector<at::Tensor> modern_backward_impl(const ModernArgs& a, const at::Tensor& x, const at::Tensor& h0,
                                             const at::Tensor& Wx, const at::Tensor& Wh, const at::Tensor& out,
                                             const at::Tensor& K, const at::Tensor& S, const at::Tensor& dout,
                                             const at::Tensor& dh_n, const at::Tensor& dc_n, const at::Tensor& da_n,
                                             bool want_norms) {
  const auto opts = x.options();
  const int64_t T_ = a.T_, B = a.B, H = a.H, GH = a.G * a.H, TB = T_ * B;
  const bool slstm = a.kind == MODERN_SLSTM;
  const ModernRun<T> run = modern_run<T>(a);
  // an absent result: a tensor of its own each (a custom operator's outputs may not alias)
  auto none = [&] { return at::empty({0}, opts); };
  at::Tensor dh = has(dh_n) ? dh_n.clone() : at::zeros({B, H}, opts);
  at::Tensor dcn = none(), tmp = none();
  if (slstm) {
    dcn = at::zeros({B, 2 * H}, opts);
    for (int64_t b = 0; b < B; ++b) {
      if (has(dc_n)) std::memcpy(dcn.data_ptr<T>() + b * 2 * H, dc_n.data_ptr<T>() + b * H, sizeof(T) * H);
      if (has(da_n)) std::memcpy(dcn.data_ptr<T>() + b * 2 * H + H, da_n.data_ptr<T>() + b * 2 * H, sizeof(T) * H);
    }
    tmp = at::empty({B, H}, opts);
  }
  // the units' parts of ||dL/dh_t||^2, (parts, T, B): one part a block or range
  const int64_t nparts = slstm ? (int64_t)a.blocks.size() : a.ranges();
  at::Tensor sq = want_norms ? at::empty({nparts, T_, B}, opts) : none();
  std::optional<WorkerProducts<T>> prods;
  if (slstm && !a.truncate) prods.emplace(a, Wh, true);
  const T* k = K.data_ptr<T>();
  at::Tensor dP = at::empty_like(K);  // the pre-activations' gradients (K stays: a second backward reads it)
  T* dp = dP.data_ptr<T>();
  T* g = dh.data_ptr<T>();
  const T* o = out.data_ptr<T>();
  const T* h0p = h0.data_ptr<T>();
  const T* dO = has(dout) ? dout.data_ptr<T>() : nullptr;
  T* sqp = want_norms ? sq.data_ptr<T>() : nullptr;
  auto sq_at = [&](int64_t part, int64_t t) { return sqp ? sqp + (part * T_ + t) * B : nullptr; };
  SliceClock clock(a.workers);
  if (!slstm) {
    each_worker(a.workers, [&](int64_t w) {
      auto since = clock.now();
      for (int64_t r = w; r < a.ranges(); r += a.workers)
        for (int64_t t = T_ - 1; t >= 0; --t)
          run.min_backward_step(t, k + t * B * GH, dp + t * B * GH, t == 0 ? h0p : o + (t - 1) * B * H, g,
                                dO ? dO + t * B * H : nullptr, sq_at(r, t), a.edges[r], a.edges[r + 1]);
      clock.add(w, B_POINTWISE, since);
    });
  } else {
    // phase i: the product of step T - i (its dP complete, every block's, after the barrier
    // that ends phase i - 1), then the pointwise backward of step T - 1 - i, which reads the
    // dL/dh_t of its own units that the product has just formed
    const T* s = S.data_ptr<T>();
    T* dc = dcn.data_ptr<T>();
    T* r_all = a.len ? tmp.data_ptr<T>() : g;  // the product's dL/dh_{t-1}: staged when rows may be padded
    const int64_t nb = (int64_t)a.blocks.size();
    slstm_steps(a, T_ + 1, [&](int64_t i, int64_t w) {
      const auto [b0, b1] = a.rows(w);
      auto since = clock.now();
      for (int64_t bi = first_block(a, w); bi < nb; bi += block_stride(a)) {
        const Block& q = a.blocks[bi];
        const int64_t u0 = q.d * a.dh + q.j0, uw = q.w();
        if (i > 0) {  // dL/dh_{t-1} of the running rows: the recurrent product's (none when truncated)
          const int64_t t = T_ - i;
          T* r = r_all;
          if (a.truncate)
            for (int64_t b = b0; b < b1; ++b) std::memset(r + b * H + u0, 0, sizeof(T) * uw);
          else
            (*prods)[w](bi, dp + (t * B + b0) * GH + q.d * 4 * a.dh, GH, r + b0 * H + u0, H, false);
          if (a.len)
            for (int64_t b = b0; b < b1; ++b)
              if (run.valid(t, b)) std::memcpy(g + b * H + u0, r + b * H + u0, sizeof(T) * uw);
          clock.add(w, B_PRODUCT, since);
        }
        if (i < T_) {
          const int64_t t = T_ - 1 - i;
          run.slstm_backward_step(t, k + t * B * GH, dp + t * B * GH, s + t * B * 3 * H, s + (t + 1) * B * 3 * H, g,
                                  dO ? dO + t * B * H : nullptr, dc, sq_at(bi, t), q, b0, b1);
          clock.add(w, B_POINTWISE, since);
        }
      }
    });
    if (g_clock.on) g_clock.flops[1] += a.truncate ? 0.0 : 2.0 * (T_ - 1) * B * 4 * H * a.dh;
  }
  auto since = clock.now();
  at::Tensor norm = none();
  if (want_norms) norm = sq.sum(0).sqrt_();
  at::Tensor dx = at::empty({T_, B, a.I}, opts), dWx = at::empty({GH, a.I}, opts), db = at::empty({GH}, opts);
  gemm<T>(false, false, TB, a.I, GH, dp, GH, Wx.data_ptr<T>(), a.I, dx.data_ptr<T>(), a.I, false);
  gemm<T>(true, false, GH, a.I, TB, dp, GH, x.data_ptr<T>(), a.I, dWx.data_ptr<T>(), a.I, false);
  column_sums<T>(dp, TB, GH, db.data_ptr<T>());
  at::Tensor dWh = none(), dc0 = none(), da0 = none();
  if (slstm) {
    // dW_hh per head: dP^T h_{t-1}, h_{t-1} = h0 at the first step and the previous output
    // row after it. A padded row's dP is 0 and so is its output row (its held state, which
    // may not be finite, is never read), as the reference's product leaves such rows out; a
    // row that never runs has h0 zeroed here (0 * NaN would be NaN).
    dWh = at::empty({4 * H, a.dh}, opts);
    at::Tensor h0z;
    if (a.len) {
      h0z = h0.clone();
      for (int64_t b = 0; b < B; ++b)
        if (!run.valid(0, b)) std::memset(h0z.data_ptr<T>() + b * H, 0, sizeof(T) * H);
    }
    const T* h0r = a.len ? h0z.data_ptr<T>() : h0p;
    for (int64_t d = 0; d < a.heads; ++d) {
      T* dw = dWh.data_ptr<T>() + d * 4 * a.dh * a.dh;
      gemm<T>(true, false, 4 * a.dh, a.dh, B, dp + d * 4 * a.dh, GH, h0r + d * a.dh, H, dw, a.dh, false);
      gemm<T>(true, false, 4 * a.dh, a.dh, TB - B, dp + B * GH + d * 4 * a.dh, GH, o + d * a.dh, H, dw, a.dh, true);
    }
    dc0 = at::empty({B, H}, opts);
    da0 = at::zeros({B, 2 * H}, opts);
    for (int64_t b = 0; b < B; ++b) {
      std::memcpy(dc0.data_ptr<T>() + b * H, dcn.data_ptr<T>() + b * 2 * H, sizeof(T) * H);
      std::memcpy(da0.data_ptr<T>() + b * 2 * H, dcn.data_ptr<T>() + b * 2 * H + H, sizeof(T) * H);
    }
  }
  clock.add(0, B_CHUNK, since);
  clock.fold();
  return {dx, dh, dc0, da0, dWx, dWh, db, norm};
}

}  // namespace

// One layer and direction of a modern cell (lstmlab.backends.cpu `_forward_impl`):
//   kind, act, fexp   modern.h's ModernKind, the min cells' activation (identity, g_min),
//                     slstm's ForgetAct.
//   x (T, B, I) (a reverse direction already reversed), h0 (B, H); slstm: c0 (B, H), nm0
//   (B, 2H) [n0 | m0]; W_ih (G H, I), b_ih, b_hh (G H,) or absent, W_hh (4H, H / heads)
//   (slstm) in torch's layout; lengths (B,) or absent; keep: save what the backward needs.
//   groups: slstm's groups of batch rows, one a worker (1: none); workers: threads that
//   share the sequence otherwise; edges: where the units are cut into ranges (min cells: of
//   H, one range a worker) or blocks (slstm: of each head's H / heads).
// Returns {out (T, B, H), h_n, c_n, a_n = [n_n | m_n] (slstm), K, S}: K the pre-activations
// (T B G H, the path's column order), S every step's c, n, m ((T + 1) B 3H, the first the
// initial ones) (slstm), if keep; empty where absent.
std::vector<at::Tensor> modern_forward(int64_t kind, int64_t act, int64_t fexp, at::Tensor x, at::Tensor h0,
                                       at::Tensor c0, at::Tensor nm0, at::Tensor W_ih, at::Tensor b_ih,
                                       at::Tensor W_hh, at::Tensor b_hh, at::Tensor lengths, bool keep,
                                       int64_t small_limit, bool allow_pack, int64_t groups, int64_t workers,
                                       std::vector<int64_t> edges) {
  const auto dt = kernel_dtype(x);
  for (auto& [t, n] : {std::pair{&x, "x"}, {&h0, "h0"}, {&c0, "c0"}, {&nm0, "nm0"}, {&W_ih, "weight_ih"},
                       {&b_ih, "bias_ih"}, {&W_hh, "weight_hh"}, {&b_hh, "bias_hh"}})
    check(*t, n, dt);
  check(lengths, "lengths", at::kLong);
  const ModernArgs a =
      modern_args(kind, act, fexp, false, x, W_ih, W_hh, lengths, small_limit, allow_pack, groups, workers,
                  std::move(edges));
  TORCH_CHECK(h0.numel() == a.B * a.H, "lstmlab cpu backend: h0 has shape ", h0.sizes());
  if (a.kind == MODERN_SLSTM)
    TORCH_CHECK(c0.numel() == a.B * a.H && nm0.numel() == 2 * a.B * a.H,
                "lstmlab cpu backend: slstm needs c0 (B, H) and nm0 (B, 2H)");
  at::Tensor bias = has(b_ih) ? b_ih : b_hh;
  if (has(b_ih) && has(b_hh)) bias = b_ih.add(b_hh);
  const at::Tensor Wx = slstm_rows(a, W_ih, false), bx = slstm_rows(a, bias, false);
  const at::Tensor Wh = W_hh.contiguous();  // torch's order (blocks_product maps it)
  if (dt == at::kFloat) return modern_forward_impl<float>(a, x, h0, c0, nm0, Wx, bx, Wh, keep);
  return modern_forward_impl<double>(a, x, h0, c0, nm0, Wx, bx, Wh, keep);
}

// The backward of modern_forward (lstmlab.backends.cpu `_backward_impl`): the arguments of
// the call being differentiated (less the biases), what it returned (out, K, S; made with
// keep) and the gradients of out, h_n, c_n, a_n (absent: zero; a_n's m part is not read:
// m carries no gradient). truncate: no gradient through the recurrent product.
// Returns {dx, dh0, dc0, da0 ([dn0 | 0]), dW_ih, dW_hh (torch's layouts), db (G H,: the
// gradient of either bias), norm_h (T, B) (want_norms)}; empty where absent.
std::vector<at::Tensor> modern_backward(int64_t kind, int64_t act, int64_t fexp, bool truncate, at::Tensor x,
                                        at::Tensor h0, at::Tensor W_ih, at::Tensor W_hh, at::Tensor lengths,
                                        at::Tensor out, at::Tensor K, at::Tensor S, at::Tensor dout,
                                        at::Tensor dh_n, at::Tensor dc_n, at::Tensor da_n, bool want_norms,
                                        int64_t small_limit, bool allow_pack, int64_t groups, int64_t workers,
                                        std::vector<int64_t> edges) {
  const auto dt = kernel_dtype(x);
  for (auto& [t, n] : {std::pair{&x, "x"}, {&h0, "h0"}, {&W_ih, "weight_ih"}, {&W_hh, "weight_hh"}, {&out, "out"},
                       {&K, "K"}, {&S, "S"}, {&dout, "dout"}, {&dh_n, "dh_n"}, {&dc_n, "dc_n"}, {&da_n, "da_n"}})
    check(*t, n, dt);
  check(lengths, "lengths", at::kLong);
  const ModernArgs a = modern_args(kind, act, fexp, truncate, x, W_ih, W_hh, lengths, small_limit, allow_pack,
                                   groups, workers, std::move(edges));
  TORCH_CHECK(K.numel() == a.T_ * a.B * a.G * a.H && out.numel() == a.T_ * a.B * a.H &&
                  (a.kind != MODERN_SLSTM || S.numel() == (a.T_ + 1) * a.B * 3 * a.H),
              "lstmlab cpu backend: the saved tensors do not match the call");
  const at::Tensor Wx = slstm_rows(a, W_ih, false), Wh = W_hh.contiguous();  // Wh: torch's order (blocks_product)
  auto r = dt == at::kFloat
               ? modern_backward_impl<float>(a, x, h0, Wx, Wh, out, K, S, dout, dh_n, dc_n, da_n, want_norms)
               : modern_backward_impl<double>(a, x, h0, Wx, Wh, out, K, S, dout, dh_n, dc_n, da_n, want_norms);
  r[4] = slstm_rows(a, r[4], true);
  r[5] = slstm_rows(a, r[5], true);
  r[6] = slstm_rows(a, r[6], true);
  return r;
}

}  // namespace lstmlab
