// The kernel's bookkeeping: optional tensors, per-slice buffers, the recurrent weights as
// torch holds them, and who runs what (slices or groups of batch rows, see steps.h).
#pragma once
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cells.h"
#include "gemm.h"

namespace lstmlab {

// Optional tensors arrive as empty tensors.
inline bool has(const at::Tensor& t) { return t.defined() && t.numel() > 0; }
template <class T> T* ptr(const at::Tensor& t) { return has(t) ? t.data_ptr<T>() : nullptr; }

// An argument the kernel reads: absent, or on the CPU, of this dtype, contiguous.
// x's dtype, the one the kernel computes in: float32 or float64, else an error naming it.
inline at::ScalarType kernel_dtype(const at::Tensor& x) {
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "lstmlab cpu backend: dtype ", dt,
              " is not supported (float32, float64)");
  return dt;
}

inline void check(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  if (!has(t)) return;
  TORCH_CHECK(t.device().is_cpu(), "lstmlab cpu backend: ", name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == dtype, "lstmlab cpu backend: ", name, " has dtype ", t.scalar_type(),
              ", expected ", dtype);
  TORCH_CHECK(t.is_contiguous(), "lstmlab cpu backend: ", name, " must be contiguous");
}

// n elements, in vectors: the staged copies are many short rows (a slice's block of a batch
// row), where a call to memcpy would cost more than the copy.
template <class T>
inline void copy_row(T* dst, const T* src, int64_t n) {
  constexpr int L = Vec<T>::n;
  for (int64_t u = 0; u < n; u += L) {
    const int m = (int)std::min<int64_t>(L, n - u);
    st(dst + u, ld(src + u, m), m);
  }
}

// Buffers with one part per slice: slice p's rows (step, batch) of width `width(p)`.
template <class T>
struct SliceBuffer {
  T* base;
  const Layout& lay;
  int64_t rows;  // steps * batch held per slice
  bool gates;    // gates-wide (n_blocks blocks) rather than unit-wide rows
  int64_t width(int64_t p) const { return gates ? lay.slice_gate_cols(p) : lay.w(p); }
  T* row(int64_t p, int64_t r) const {
    return base + (gates ? lay.gates_at(p, rows) : lay.units_at(p, rows)) + r * width(p);
  }
};

// A row-major matrix (rows x n) permuted in place: row i becomes old row row_src[i] and
// column c old column col_src[c] (null: unchanged; both permutations). Rows move along the
// permutation's cycles through one row of scratch, each once; columns move in runs of
// consecutive ones (blocks of a slice's units), so it is one pass of memcpy.
template <class T>
void permute_in_place(T* m, int64_t rows, int64_t n, const int64_t* row_src, const int64_t* col_src) {
  struct Run { int64_t dst, src, len; };
  std::vector<Run> runs;
  for (int64_t c = 0, len; c < n; c += len) {
    len = 1;
    while (c + len < n && (!col_src || col_src[c + len] == col_src[c] + len)) ++len;
    runs.push_back({c, col_src ? col_src[c] : c, len});
  }
  auto move = [&](T* dst, const T* src) {
    for (const Run& r : runs) std::memcpy(dst + r.dst, src + r.src, sizeof(T) * r.len);
  };
  std::vector<T> tmp(n);
  std::vector<char> done(rows, 0);
  for (int64_t i = 0; i < rows; ++i) {
    if (done[i] || (!col_src && (!row_src || row_src[i] == i))) continue;
    std::memcpy(tmp.data(), m + i * n, sizeof(T) * n);
    int64_t j = i;
    for (int64_t k = row_src ? row_src[i] : i; k != i; j = k, k = row_src[k]) {
      move(m + j * n, m + k * n);
      done[j] = 1;
    }
    move(m + j * n, tmp.data());
    done[j] = 1;
  }
}

// The recurrent weights are torch's parameters, weight_hh (R x H) and (FGR) weight_gg
// (AH x AH), read in the kernel's order (cells.h Layout) through h_src (R: for each row of
// the kernel's Wh, the row of weight_hh) and a_src (AH: for each row and column of the
// kernel's Wa, those of weight_gg); empty maps stand for the identity.
struct Weights {
  const at::Tensor &W_hh, &W_gg, &h_src, &a_src;
  int64_t h_row(int64_t r) const { return has(h_src) ? h_src.data_ptr<int64_t>()[r] : r; }
  int64_t a_idx(int64_t i) const { return has(a_src) ? a_src.data_ptr<int64_t>()[i] : i; }
  const int64_t* h_map(int64_t r) const { return has(h_src) ? h_src.data_ptr<int64_t>() + r : nullptr; }
  const int64_t* a_map(int64_t i) const { return has(a_src) ? a_src.data_ptr<int64_t>() + i : nullptr; }
};

// Who runs what: P slices of hidden units over all B rows (G = 1), or G groups of batch
// rows over the one slice (P = 1); worker k is slice k or group k. One StepProduct for
// each distinct number of rows a worker multiplies (B, or a group's).
template <class T>
struct Workers {
  struct Share {
    int64_t p, b0, b1;  // slice, batch rows [b0, b1)
  };
  int64_t B, G, P, n;
  std::vector<StepProduct<T>> products;
  std::vector<size_t> of;  // worker -> its product
  Workers(int64_t B_, int64_t G_, int64_t P_, const std::vector<typename StepProduct<T>::Part>& parts,
          const std::vector<int64_t>& tune)
      : B(B_), G(G_), P(P_), n(G_ > 1 ? G_ : P_) {
    TORCH_CHECK(G >= 1 && G <= std::max<int64_t>(B, 1) && (G == 1 || P == 1),
                "lstmlab cpu backend: bad batch groups");
    std::vector<int64_t> rows;
    for (int64_t k = 0; k < n; ++k) {
      const int64_t m = at(k).b1 - at(k).b0;
      size_t i = std::find(rows.begin(), rows.end(), m) - rows.begin();
      if (i == rows.size()) {
        rows.push_back(m);
        products.emplace_back(m, parts, tune[0], tune[1] != 0, tune[4]);
      }
      of.push_back(i);
    }
  }
  Share at(int64_t k) const { return G > 1 ? Share{0, B * k / G, B * (k + 1) / G} : Share{k, 0, B}; }
  const StepProduct<T>& product(int64_t k) const { return products[of[k]]; }
};

}  // namespace lstmlab
