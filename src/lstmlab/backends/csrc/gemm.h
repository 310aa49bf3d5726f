// Row-major matrix products C (M x N) [+]= A (M x K) . B (K x N), with leading dimensions.
// Small products (the per-step recurrent product at small batch and hidden size) use a
// register-blocked kernel here: a BLAS call costs more than the arithmetic there. Larger
// ones go to the BLAS that torch is linked with (MKL in the official x86 wheels), called
// directly: its Fortran sgemm_/dgemm_ are declared weak, and where the process has none,
// at::mm on wrapped pointers does the product instead.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#include "vecmath.h"

extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
// MKL's packed products: the recurrent weights are packed once per sequence.
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha, const float* src,
                      int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a, int lda,
                         const float* b, int ldb, float beta, float* c, int ldc) __attribute__((weak));
}

namespace lstmlab {

inline bool have_blas() { return sgemm_ != nullptr && dgemm_ != nullptr; }

// MR rows x NV vectors of C per block; KS independent accumulator sets over k give the
// FMA pipeline enough independent chains when the block is small.
template <class T, int MR, int NV, int KS, bool TAIL>
inline void gemm_block(int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc,
                       int ncols, bool accumulate) {
  using V = vec_t<T>;
  constexpr int L = Vec<T>::n;
  const int last = TAIL ? ncols - (NV - 1) * L : L;  // lanes used in the last vector
  V acc[KS][MR][NV];
  for (int s = 0; s < KS; ++s)
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < NV; ++j) acc[s][r][j] = V{};
  int64_t k = 0;
  for (; k + KS <= K; k += KS) {
    for (int s = 0; s < KS; ++s) {
      const T* b = B + (k + s) * ldb;
      V bv[NV];
      for (int j = 0; j < NV; ++j) bv[j] = (TAIL && j == NV - 1) ? load_n(b + j * L, last) : load(b + j * L);
      for (int r = 0; r < MR; ++r) {
        V a = splat(A[r * lda + k + s]);
        for (int j = 0; j < NV; ++j) acc[s][r][j] += a * bv[j];
      }
    }
  }
  for (; k < K; ++k) {
    const T* b = B + k * ldb;
    V bv[NV];
    for (int j = 0; j < NV; ++j) bv[j] = (TAIL && j == NV - 1) ? load_n(b + j * L, last) : load(b + j * L);
    for (int r = 0; r < MR; ++r) {
      V a = splat(A[r * lda + k]);
      for (int j = 0; j < NV; ++j) acc[0][r][j] += a * bv[j];
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int j = 0; j < NV; ++j) {
      V v = acc[0][r][j];
      for (int s = 1; s < KS; ++s) v += acc[s][r][j];
      T* c = C + r * ldc + j * L;
      const int n = (TAIL && j == NV - 1) ? last : L;
      if (accumulate) v += ld(c, n);
      st(c, v, n);
    }
  }
}

template <class T, int MR, int NV, bool TAIL>
inline void gemm_rows(int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc,
                      int ncols, bool accumulate) {
  constexpr int KS = MR * NV <= 2 ? 4 : (MR * NV <= 4 ? 2 : 1);
  gemm_block<T, MR, NV, KS, TAIL>(K, A, lda, B, ldb, C, ldc, ncols, accumulate);
}

// With 32 vector registers (AVX-512) a block of 8 rows x 3 vectors keeps its 24
// accumulators, the 3 vectors of B and a broadcast in registers; with 16 (AVX2) it would
// spill, and blocks stay at 4 rows.
constexpr bool kEightRowBlocks = kVecBytes >= 64;

// One panel of NV vectors of columns, all M rows: blocks of 8 rows (kEightRowBlocks,
// NV <= 3), then of 4, then the rest; the panel of B is read once per block, from the L1
// cache after the first.
template <class T, int NV, bool TAIL>
inline void gemm_panel(int64_t M, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                       int64_t ldc, int ncols, bool accumulate) {
  int64_t m = 0;
  if constexpr (kEightRowBlocks && NV <= 3)
    for (; m + 8 <= M; m += 8)
      gemm_rows<T, 8, NV, TAIL>(K, A + m * lda, lda, B, ldb, C + m * ldc, ldc, ncols, accumulate);
  for (; m + 4 <= M; m += 4)
    gemm_rows<T, 4, NV, TAIL>(K, A + m * lda, lda, B, ldb, C + m * ldc, ldc, ncols, accumulate);
  switch (M - m) {
    case 3: gemm_rows<T, 3, NV, TAIL>(K, A + m * lda, lda, B, ldb, C + m * ldc, ldc, ncols, accumulate); break;
    case 2: gemm_rows<T, 2, NV, TAIL>(K, A + m * lda, lda, B, ldb, C + m * ldc, ldc, ncols, accumulate); break;
    case 1: gemm_rows<T, 1, NV, TAIL>(K, A + m * lda, lda, B, ldb, C + m * ldc, ldc, ncols, accumulate); break;
    default: break;
  }
}

template <class T, int NVMAX>
void gemm_panels(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                 int64_t ldc, bool accumulate) {
  constexpr int L = Vec<T>::n;
  int64_t n0 = 0;
  for (; n0 + NVMAX * L <= N; n0 += NVMAX * L)
    gemm_panel<T, NVMAX, false>(M, K, A, lda, B + n0, ldb, C + n0, ldc, NVMAX * L, accumulate);
  const int rest = (int)(N - n0);
  if (rest == 0) return;
  const int nv = (rest + L - 1) / L;
  const bool tail = rest % L != 0;
#define LSTMLAB_PANEL(NV)                                                                             \
  (tail ? gemm_panel<T, NV, true>(M, K, A, lda, B + n0, ldb, C + n0, ldc, rest, accumulate)          \
        : gemm_panel<T, NV, false>(M, K, A, lda, B + n0, ldb, C + n0, ldc, rest, accumulate))
  switch (nv) {
    case 1: LSTMLAB_PANEL(1); break;
    case 2: LSTMLAB_PANEL(2); break;
    case 3: LSTMLAB_PANEL(3); break;
    default:  // nv is at most NVMAX
      if constexpr (NVMAX >= 4) LSTMLAB_PANEL(4);
      break;
  }
#undef LSTMLAB_PANEL
}

// Panels of 4 vectors below 8 rows (4-row blocks, 16 accumulators), of 3 from 8 rows on
// where the 8-row blocks fit (24 accumulators: each vector of B feeds 8 rows; measured in
// BENCHMARKS.md).
template <class T>
void gemm_small(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                int64_t ldc, bool accumulate) {
  if (kEightRowBlocks && M >= 8)
    gemm_panels<T, 3>(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
  else
    gemm_panels<T, 4>(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
}

inline void blas_call(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
                      const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
                      const int* ldc) {
  sgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void blas_call(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
                      const double* a, const int* lda, const double* b, const int* ldb, const double* beta,
                      double* c, const int* ldc) {
  dgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// Row-major C (M x N) [+]= op(A) op(B), op(X) = X^T when trans_x (X then stored K x M /
// N x K). The BLAS is column-major: row-major C = A B is column-major C^T = B^T A^T.
template <class T>
void gemm_blas(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B,
               int64_t ldb, T* C, int64_t ldc, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t m = 0; m < M; ++m) std::memset(C + m * ldc, 0, sizeof(T) * N);
    return;
  }
  if (have_blas()) {
    const int m = (int)N, n = (int)M, k = (int)K, la = (int)ldb, lb = (int)lda, lc = (int)ldc;
    const T one = 1, beta = accumulate ? T(1) : T(0);
    blas_call(trans_b ? "T" : "N", trans_a ? "T" : "N", &m, &n, &k, &one, B, &la, A, &lb, &beta, C, &lc);
    return;
  }
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto wrap = [&](const T* p, int64_t rows, int64_t cols, int64_t ld, bool trans) {
    at::Tensor t = at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1}, opts);
    return trans ? t.t() : t;
  };
  at::Tensor prod = at::mm(wrap(A, trans_a ? K : M, trans_a ? M : K, lda, trans_a),
                           wrap(B, trans_b ? N : K, trans_b ? K : N, ldb, trans_b));
  at::Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  if (accumulate) c.add_(prod); else c.copy_(prod);
}

// The products with fixed weight blocks, repeated every step: C (M x n) [+]= A (M x k)
// . op(W_part), op(W) = W (k x n, row-major, leading dimension ld) or, when transposed,
// W^T with W stored n x k. Per part it uses the built-in kernel (small products), MKL's
// packed weights (float, few rows, when the BLAS is MKL; packed once here) or the plain
// BLAS call; the built-in kernel and the BLAS read a k x n copy of a transposed part,
// made once here.
//
// A part may read a torch parameter in the kernel's order through index maps, so that no
// reordered copy of the weights has to outlive the pass: a transposed part's column j of
// op(W) is row rows[j] of W and its row kk is column cols[kk]; a plain part's row kk is
// row rows[kk] of W (null: j, kk), and its n columns are `groups` blocks of n / groups,
// gstride apart in W (side by side in C). Those that need a copy anyway (transposed ones,
// plain ones with a row map) gather it, and so do grouped ones of at most gather_max bytes
// (one product instead of one per group, for a copy that hardly counts); MKL packs from
// such a copy, dropped at once; the BLAS runs a larger grouped part group by group, in
// place (beside such products the calls cost little, and a copy would count).
template <class T>
class StepProduct {
 public:
  struct Part {
    const T* W;
    int64_t ld, k, n;
    bool transposed;
    const int64_t* rows = nullptr;
    const int64_t* cols = nullptr;
    int64_t groups = 1, gstride = 0;
  };

  StepProduct(int64_t M, std::vector<Part> parts, int64_t small_limit, bool allow_pack, int64_t gather_max)
      : M_(M) {
    constexpr bool is_float = std::is_same<T, float>::value;
    const bool mkl = is_float && allow_pack && cblas_sgemm_pack && cblas_sgemm_compute &&
                     cblas_sgemm_pack_get_size && M <= kPackMaxRows;
    // A packed copy takes about the memory of the weights it packs (resident; MKL reserves
    // ~7.5 MB more per copy that stays untouched). Transposed parts are copied anyway, so
    // they are always packed; parts read in place gain a copy: their packed copies are kept
    // to a bounded sum.
    bool pack_in_place = mkl;
    if (mkl) {
      size_t bytes = 0;
      for (const Part& q : parts)
        if (!q.transposed && M * q.n * q.k > small_limit && q.k > 0)
          bytes += cblas_sgemm_pack_get_size(kB, (int)M, (int)q.n, (int)q.k);
      pack_in_place = bytes <= kPackMaxBytes;
    }
    for (const Part& q : parts) {
      Plan plan{q, BLAS, at::Tensor()};
      if (q.k == 0 || q.n == 0) {
        plan.kind = EMPTY;
      } else if (M * q.n * q.k <= small_limit || !(q.transposed ? mkl : pack_in_place)) {
        plan.kind = M * q.n * q.k <= small_limit ? SMALL : BLAS;
        // the built-in kernel, and the BLAS at few rows, read op(W) row by row
        const bool small_groups = q.groups > 1 && (plan.kind == SMALL || q.k * q.n * (int64_t)sizeof(T) <= gather_max);
        if (q.transposed || q.rows || small_groups) {
          plan.copy = gather(q);
          plan.part = {plan.copy.template data_ptr<T>(), q.n, q.k, q.n, false};
        }
      } else {
        if constexpr (is_float) {
          plan.kind = PACKED;
          const int m = (int)M, n = (int)q.n, k = (int)q.k;
          at::Tensor from;  // W's rows (transposed parts) or groups in the kernel's order
          if (q.transposed && (q.rows || q.cols)) from = gather_rows(q);
          if (!q.transposed && (q.rows || q.groups > 1)) from = gather(q);
          const float* src = from.defined() ? from.data_ptr<float>() : q.W;
          const int ld = !from.defined() ? (int)q.ld : (q.transposed ? k : n);
          plan.copy = at::empty({(int64_t)cblas_sgemm_pack_get_size(kB, m, n, k)}, at::kByte);
          cblas_sgemm_pack(kRowMajor, kB, q.transposed ? kTrans : kNoTrans, m, n, k, 1.0f, src, ld,
                           (float*)plan.copy.data_ptr());
        }
      }
      plans_.push_back(std::move(plan));
    }
  }

  void operator()(size_t i, const T* A, int64_t lda, T* C, int64_t ldc, bool accumulate) const {
    const Plan& pl = plans_[i];
    const Part& q = pl.part;
    switch (pl.kind) {
      case EMPTY:
        if (!accumulate)
          for (int64_t m = 0; m < M_; ++m) std::memset(C + m * ldc, 0, sizeof(T) * q.n);
        return;
      case SMALL:
        return gemm_small<T>(M_, q.n, q.k, A, lda, q.W, q.ld, C, ldc, accumulate);
      case PACKED:
        if constexpr (std::is_same<T, float>::value)
          return cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, (int)M_, (int)q.n, (int)q.k, A, (int)lda,
                                     (const float*)pl.copy.data_ptr(), (int)q.n, accumulate ? 1.0f : 0.0f, C,
                                     (int)ldc);
        break;
      case BLAS:
        break;
    }
    const int64_t gw = q.n / q.groups;
    for (int64_t g = 0; g < q.groups; ++g)
      gemm_blas<T>(false, q.transposed, M_, gw, q.k, A, lda, q.W + g * q.gstride, q.ld, C + g * gw, ldc, accumulate);
  }

 private:
  static at::TensorOptions options() { return at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value); }

  // A transposed part's W as an n x k row-major copy in the kernel's order: rows through
  // q.rows, columns through q.cols in runs of consecutive ones (memcpy throughout).
  static at::Tensor gather_rows(const Part& q) {
    at::Tensor copy = at::empty({q.n, q.k}, options());
    T* dst = copy.template data_ptr<T>();
    std::vector<std::pair<int64_t, int64_t>> runs;  // (first column of W, length)
    for (int64_t c = 0, len; c < q.k; c += len) {
      len = 1;
      while (c + len < q.k && (!q.cols || q.cols[c + len] == q.cols[c] + len)) ++len;
      runs.push_back({q.cols ? q.cols[c] : c, len});
    }
    for (int64_t j = 0; j < q.n; ++j) {
      const T* src = q.W + (q.rows ? q.rows[j] : j) * q.ld;
      T* d = dst + j * q.k;
      for (const auto& [c, len] : runs) d = std::copy(src + c, src + c + len, d);
    }
    return copy;
  }

  // op(q) as a k x n row-major copy (transposed parts: in 64 x 64 tiles)
  static at::Tensor gather(const Part& q) {
    if (q.transposed && q.cols) {  // the columns in order first, then the plain transposition
      at::Tensor rows = gather_rows(q);
      return gather({rows.template data_ptr<T>(), q.k, q.k, q.n, true});
    }
    at::Tensor copy = at::empty({q.k, q.n}, options());
    T* dst = copy.template data_ptr<T>();
    if (q.transposed) {
      for (int64_t j0 = 0; j0 < q.n; j0 += 64)
        for (int64_t k0 = 0; k0 < q.k; k0 += 64)
          for (int64_t j = j0; j < std::min(q.n, j0 + 64); ++j) {
            const T* src = q.W + (q.rows ? q.rows[j] : j) * q.ld;
            for (int64_t k = k0; k < std::min(q.k, k0 + 64); ++k) dst[k * q.n + j] = src[k];
          }
    } else {
      const int64_t gw = q.n / q.groups;
      for (int64_t k = 0; k < q.k; ++k) {
        const T* src = q.W + (q.rows ? q.rows[k] : k) * q.ld;
        for (int64_t g = 0; g < q.groups; ++g) std::memcpy(dst + k * q.n + g * gw, src + g * q.gstride, sizeof(T) * gw);
      }
    }
    return copy;
  }

  enum Kind { EMPTY, SMALL, PACKED, BLAS };
  struct Plan {
    Part part;
    Kind kind;
    at::Tensor copy;  // the transposed copy (SMALL) or MKL's packed weights (PACKED)
  };
  // MKL's CBLAS enums; packing pays off for few rows (measured: see BENCHMARKS.md)
  static constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kB = 162;
  static constexpr int64_t kPackMaxRows = 16;
  static constexpr size_t kPackMaxBytes = size_t(24) << 20;
  int64_t M_;
  std::vector<Plan> plans_;
};

}  // namespace lstmlab
