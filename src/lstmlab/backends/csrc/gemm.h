// Row-major matrix products C (M x N) [+]= A (M x K) . B (K x N), with leading dimensions.
// Small products (the per-step recurrent product at small batch and hidden size) use a
// register-blocked kernel here: a BLAS call costs more than the arithmetic there. Larger
// ones go to the BLAS that torch is linked with (MKL in the official x86 wheels), called
// directly: its Fortran sgemm_/dgemm_ are declared weak, and where the process has none,
// at::mm on wrapped pointers does the product instead.
//
// Unless the built-in kernel is the faster one on this machine (use_builtin): MKL runs
// its AVX2 code on CPUs that are not Intel's, where this kernel, compiled for the host,
// uses all of AVX-512. On an AMD EPYC (Zen 5) it does 150-220 GFLOP/s a core against MKL's
// 50-85 at the kernel's shapes (BENCHMARKS.md, "The product engines"); on an AVX2 Zen 1,
// where MKL's code is the same width, 30-38 against MKL's 22-33, and 1.7x its rate in the
// loop at 8 rows. Which one is faster is measured once per process and type (about 80 ms
// for both at load, in lstmlab.backends.cpu; measure_engines), or set (LSTMLAB_GEMM). Where the two are close, another process may
// choose the other: for bitwise-equal results across processes, set LSTMLAB_GEMM.
#pragma once
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <functional>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

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
int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
}

namespace lstmlab {

// MKL's CBLAS enums
inline constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kB = 162;

inline bool have_blas() { return sgemm_ != nullptr && dgemm_ != nullptr; }

// Inside a team of threads each thread's BLAS calls run on that thread alone; telling MKL
// so spares every call its check for nested parallelism.
struct OneBlasThread {
  int saved = 0;
  OneBlasThread() {
    if (MKL_Set_Num_Threads_Local) saved = MKL_Set_Num_Threads_Local(1);
  }
  ~OneBlasThread() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(saved);
  }
};

// MR rows x NV vectors of C per block; KS independent accumulator sets over k give the
// FMA pipeline enough independent chains when the block is small.
template <class T, int MR, int NV, int KS, bool TAIL, bool TA = false>
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
        V a = splat(TA ? A[(k + s) * lda + r] : A[r * lda + k + s]);
        for (int j = 0; j < NV; ++j) acc[s][r][j] += a * bv[j];
      }
    }
  }
  for (; k < K; ++k) {
    const T* b = B + k * ldb;
    V bv[NV];
    for (int j = 0; j < NV; ++j) bv[j] = (TAIL && j == NV - 1) ? load_n(b + j * L, last) : load(b + j * L);
    for (int r = 0; r < MR; ++r) {
      V a = splat(TA ? A[k * lda + r] : A[r * lda + k]);
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

template <class T, int MR, int NV, bool TAIL, bool TA = false>
inline void gemm_rows(int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc,
                      int ncols, bool accumulate) {
  constexpr int KS = MR * NV <= 2 ? 4 : (MR * NV <= 4 ? 2 : 1);
  gemm_block<T, MR, NV, KS, TAIL, TA>(K, A, lda, B, ldb, C, ldc, ncols, accumulate);
}

// With 32 vector registers (AVX-512) a block of 8 rows x 3 vectors keeps its 24
// accumulators, the 3 vectors of B and a broadcast in registers; with 16 (AVX2) it would
// spill, and blocks stay at 4 rows. A 4-row block takes 4 vectors (16 accumulators) with
// 32 registers; with 16 (AVX2, and SSE2 or NEON where narrower vectors emulate these) it
// takes 3 (12 accumulators, 3 vectors of B, a broadcast): 4 would spill, and on an AVX2
// Zen 1 the 3-vector panels do 38 GFLOP/s a core where the 4-vector ones did 23-27
// (BENCHMARKS.md, "A third machine: an AVX2 Zen 1").
constexpr bool kEightRowBlocks = kVecBytes >= 64;
constexpr int kFourRowVectors = kVecBytes >= 64 ? 4 : 3;

// One panel of NV vectors of columns, all M rows: blocks of 8 rows (kEightRowBlocks,
// NV <= 3), then of 4, then the rest; the panel of B is read once per block, from the L1
// cache after the first.
template <class T, int NV, bool TAIL, bool TA = false>
inline void gemm_panel(int64_t M, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                       int64_t ldc, int ncols, bool accumulate) {
  const int64_t ra = TA ? 1 : lda;  // A's step from one row of op(A) to the next
  int64_t m = 0;
  if constexpr (kEightRowBlocks && NV <= 3)
    for (; m + 8 <= M; m += 8)
      gemm_rows<T, 8, NV, TAIL, TA>(K, A + m * ra, lda, B, ldb, C + m * ldc, ldc, ncols, accumulate);
  for (; m + 4 <= M; m += 4)
    gemm_rows<T, 4, NV, TAIL, TA>(K, A + m * ra, lda, B, ldb, C + m * ldc, ldc, ncols, accumulate);
  switch (M - m) {
    case 3: gemm_rows<T, 3, NV, TAIL, TA>(K, A + m * ra, lda, B, ldb, C + m * ldc, ldc, ncols, accumulate); break;
    case 2: gemm_rows<T, 2, NV, TAIL, TA>(K, A + m * ra, lda, B, ldb, C + m * ldc, ldc, ncols, accumulate); break;
    case 1: gemm_rows<T, 1, NV, TAIL, TA>(K, A + m * ra, lda, B, ldb, C + m * ldc, ldc, ncols, accumulate); break;
    default: break;
  }
}

// PK: B is packed (pack_panels): the panel from column n0 on is K x its width, contiguous
// from B + n0 K.
template <class T, int NVMAX, bool TA = false, bool PK = false>
void gemm_panels(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                 int64_t ldc, bool accumulate) {
  constexpr int L = Vec<T>::n;
  int64_t n0 = 0;
  for (; n0 + NVMAX * L <= N; n0 += NVMAX * L)
    gemm_panel<T, NVMAX, false, TA>(M, K, A, lda, PK ? B + n0 * K : B + n0, PK ? NVMAX * L : ldb, C + n0, ldc,
                                    NVMAX * L, accumulate);
  const int rest = (int)(N - n0);
  if (rest == 0) return;
  const int nv = (rest + L - 1) / L;
  const bool tail = rest % L != 0;
  const T* Bn = PK ? B + n0 * K : B + n0;
  const int64_t ldn = PK ? rest : ldb;
#define LSTMLAB_PANEL(NV)                                                                             \
  (tail ? gemm_panel<T, NV, true, TA>(M, K, A, lda, Bn, ldn, C + n0, ldc, rest, accumulate)          \
        : gemm_panel<T, NV, false, TA>(M, K, A, lda, Bn, ldn, C + n0, ldc, rest, accumulate))
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

// Panels of kFourRowVectors vectors below 8 rows (4-row blocks), of 3 from 8 rows on
// where the 8-row blocks fit (24 accumulators: each vector of B feeds 8 rows; measured in
// BENCHMARKS.md). TA: op(A) = A^T, A stored K x M (its elements are broadcast one by one,
// so the kernel reads them in either order at the same cost).
template <class T, bool TA = false>
void gemm_small(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                int64_t ldc, bool accumulate) {
  if (kEightRowBlocks && M >= 8)
    gemm_panels<T, 3, TA>(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
  else
    gemm_panels<T, kFourRowVectors, TA>(M, N, K, A, lda, B, ldb, C, ldc, accumulate);
}

// The columns of gemm_small's panels for M rows.
template <class T>
constexpr int64_t panel_width(int64_t M) {
  return (kEightRowBlocks && M >= 8 ? 3 : kFourRowVectors) * Vec<T>::n;
}

// dst (cols x rows) = src (rows x cols) transposed, src's row i at row(i): 16 rows at a
// time, column by column, so that each write fills a cache line of dst and the 16 rows'
// lines of src stay in the L1 cache across the 16 columns each holds. (Square tiles over a
// power-of-two leading dimension would put every line a tile writes in one cache set.)
template <class T, class Row>
void transpose_rows(int64_t rows, int64_t cols, const Row& row, T* dst) {
  constexpr int64_t kRows = 16;
  for (int64_t i0 = 0; i0 < rows; i0 += kRows) {
    const int64_t n = std::min(kRows, rows - i0);
    const T* src[kRows];
    for (int64_t i = 0; i < n; ++i) src[i] = row(i0 + i);
    for (int64_t j = 0; j < cols; ++j)
      for (int64_t i = 0; i < n; ++i) dst[j * rows + i0 + i] = src[i][j];
  }
}
template <class T>
void transpose_into(int64_t rows, int64_t cols, const T* src, int64_t ld, T* dst) {
  transpose_rows<T>(rows, cols, [&](int64_t i) { return src + i * ld; }, dst);
}

// op(B) (K x N; B row-major with leading dimension ldb, or, trans_b, B^T with B stored
// N x K) packed in panels of pw columns (panel_width; the last the rest), each K x its
// width, contiguous, so that the product streams it from memory in order (in a row-major
// B with a wide leading dimension each k's few vectors are on another page).
// (first, stride: the panels first, first + stride, ...; a thread's share)
template <class T>
void pack_panels(int64_t pw, int64_t K, int64_t N, const T* B, int64_t ldb, T* dst, bool trans_b = false,
                 int64_t first = 0, int64_t stride = 1) {
  for (int64_t n0 = first * pw; n0 < N; n0 += stride * pw) {
    const int64_t w = std::min(pw, N - n0);
    if (trans_b)
      transpose_rows<T>(w, K, [&](int64_t j) { return B + (n0 + j) * ldb; }, dst + n0 * K);
    else
      for (int64_t k = 0; k < K; ++k) std::memcpy(dst + n0 * K + k * w, B + k * ldb + n0, sizeof(T) * w);
  }
}

// gemm_small with B packed by pack_panels(pw, ...).
template <class T, bool TA = false>
void gemm_packed(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* Bp, int64_t pw, T* C,
                 int64_t ldc, bool accumulate) {
  if (pw == 3 * Vec<T>::n)
    gemm_panels<T, 3, TA, true>(M, N, K, A, lda, Bp, 0, C, ldc, accumulate);
  else if constexpr (kFourRowVectors == 4)
    gemm_panels<T, 4, TA, true>(M, N, K, A, lda, Bp, 0, C, ldc, accumulate);
}

// A large product with the built-in kernel, depth block by depth block (kDepthBlock of K;
// later ones accumulate): B's block packed in panels (pack_panels; a transposed B, stored
// N x K, transposed into them; a plain one where the rows repay the copy: slstm's dW_hh
// at H = 512 took 10% less time so), then C in blocks of kRowBlock rows (A's block stays
// in the L2 cache while every panel passes), shared between torch's threads by rows (equal
// ranges), or by column ranges of whole panels when there are few rows (below 32 a thread);
// one thread inside a team or for little work. (Blocks of 128 rows dealt out, and columns
// where there were fewer than two blocks a thread, gave one of two threads a third of
// slstm's dW_hh at H = 64, 3 panels: 40 GFLOP/s against 30 with one thread.) The packed
// copy is one depth block's, not all of B's. Returns false, having done nothing, when a
// transposed B finds no memory for its copy (the caller takes the BLAS then; nothing here
// throws, as it may run inside a team of threads); a plain B is read in place then.
template <class T, bool TA = false>
bool gemm_builtin(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                  int64_t ldc, bool accumulate, bool trans_b = false, bool share = true) {
  constexpr int64_t kRowBlock = 128, kDepthBlock = 512;
  const int64_t pw = panel_width<T>(M), blocks = (M + kRowBlock - 1) / kRowBlock, panels = (N + pw - 1) / pw;
  std::unique_ptr<T[]> bp(M >= 16 || trans_b ? new (std::nothrow) T[std::min(kDepthBlock, K) * N] : nullptr);
  if (trans_b && !bp) return false;
  int64_t threads = 1;
#ifdef _OPENMP
  if (share && !omp_in_parallel() && M * N * K >= (int64_t(1) << 20)) threads = std::max(1, at::get_num_threads());
#endif
  // each thread's rows: M / threads, on multiples of 8 (whole blocks of rows)
  auto row_edge = [&](int64_t i, int64_t nt) { return i == nt ? M : M * i / nt / 8 * 8; };
  const bool by_rows = M >= 32 * threads || panels < threads;
  // a thread's copy of a transposed A's row block (or null: read in place)
  auto a_copy = [&] {
    return std::unique_ptr<T[]>(TA && M > 4 ? new (std::nothrow) T[std::min(kRowBlock, M) * std::min(kDepthBlock, K)]
                                            : nullptr);
  };
  auto part = [&](int64_t k0, int64_t m0, int64_t m1, int64_t n0, int64_t n1, T* ap) {
    if (m1 <= m0 || n1 <= n0) return;
    const int64_t kk = std::min(kDepthBlock, K - k0);
    const bool acc = accumulate || k0 > 0;
    const T* a = TA ? A + k0 * lda + m0 : A + m0 * lda + k0;
    int64_t la = lda;
    if (TA && ap) {
      for (int64_t k = 0; k < kk; ++k) std::memcpy(ap + k * (m1 - m0), a + k * lda, sizeof(T) * (m1 - m0));
      a = ap;
      la = m1 - m0;
    }
    T* c = C + m0 * ldc + n0;
    if (bp)
      gemm_packed<T, TA>(m1 - m0, n1 - n0, kk, a, la, bp.get() + n0 * kk, pw, c, ldc, acc);
    else
      gemm_small<T, TA>(m1 - m0, n1 - n0, kk, a, la, B + k0 * ldb + n0, ldb, c, ldc, acc);
  };
  // depth block k0's panels of B, the share from panel `first` in steps of `stride`
  auto pack = [&](int64_t k0, int64_t first, int64_t stride) {
    if (bp)
      pack_panels<T>(pw, std::min(kDepthBlock, K - k0), N, trans_b ? B + k0 : B + k0 * ldb, ldb, bp.get(), trans_b,
                     first, stride);
  };
  if (threads <= 1) {
    const auto ap = a_copy();
    for (int64_t k0 = 0; k0 < K; k0 += kDepthBlock) {
      pack(k0, 0, 1);
      for (int64_t b = 0; b < blocks; ++b) part(k0, b * kRowBlock, std::min(M, (b + 1) * kRowBlock), 0, N, ap.get());
    }
    return true;
  }
#ifdef _OPENMP
  // one team for all depth blocks; each packs its share of a block's panels (the copy made
  // by one thread alone kept the other waiting: slstm's dW_hh at H = 256 copies 512 KiB a
  // block)
#pragma omp parallel num_threads((int)threads)
  {
    const int64_t nt = omp_get_num_threads(), me = omp_get_thread_num();
    const auto ap = a_copy();
    for (int64_t k0 = 0; k0 < K; k0 += kDepthBlock) {
      pack(k0, me, nt);
#pragma omp barrier
      if (by_rows) {
        const int64_t r1 = row_edge(me + 1, nt);
        for (int64_t m0 = row_edge(me, nt); m0 < r1; m0 += kRowBlock)
          part(k0, m0, std::min(r1, m0 + kRowBlock), 0, N, ap.get());
      } else {
        const int64_t n0 = std::min(N, panels * me / nt * pw), n1 = std::min(N, panels * (me + 1) / nt * pw);
        for (int64_t b = 0; b < blocks; ++b)
          part(k0, b * kRowBlock, std::min(M, (b + 1) * kRowBlock), n0, n1, ap.get());
      }
#pragma omp barrier
    }
  }
#endif
  return true;
}

// C (M x N, N below a vector's lanes) [+]= A (M x K) op(B): every element a dot product
// along K of a row of A with a row of op(B)^T (B^T copied, N x K; a transposed B read in
// place), in four vector accumulators; rows shared between the threads as gemm_builtin
// shares them. Returns false, having done nothing, where the copy finds no memory.
template <class T>
bool gemm_narrow(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                 int64_t ldc, bool accumulate, bool trans_b) {
  using V = vec_t<T>;
  constexpr int L = Vec<T>::n;
  std::unique_ptr<T[]> bt(trans_b ? nullptr : new (std::nothrow) T[N * K]);
  if (!trans_b && !bt) return false;
  if (!trans_b) transpose_into<T>(K, N, B, ldb, bt.get());
  const T* b = trans_b ? B : bt.get();
  const int64_t lb = trans_b ? ldb : K;
  // rows shared between torch's threads for much work outside a team (the modern path's dx
  // over the whole sequence); nothing in the loop throws
#ifdef _OPENMP
  const int threads = !omp_in_parallel() && M * N * K >= (int64_t(1) << 20) ? std::max(1, at::get_num_threads()) : 1;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
#endif
  for (int64_t i = 0; i < M; ++i) {
    const T* a = A + i * lda;
    for (int64_t j = 0; j < N; ++j) {
      const T* bj = b + j * lb;
      V s[4] = {};
      int64_t k = 0;
      for (; k + 4 * L <= K; k += 4 * L)
        for (int u = 0; u < 4; ++u) s[u] += load(a + k + u * L) * load(bj + k + u * L);
      for (; k + L <= K; k += L) s[0] += load(a + k) * load(bj + k);
      const V v = (s[0] + s[1]) + (s[2] + s[3]);
      T dot = 0;
      for (int l = 0; l < L; ++l) dot += v[l];
      for (; k < K; ++k) dot += a[k] * bj[k];
      C[i * ldc + j] = accumulate ? C[i * ldc + j] + dot : dot;
    }
  }
  return true;
}

// The built-in kernel with transposed operands. op(A) = A^T is read in place (the kernel
// broadcasts A's elements one by one, in either order at the same cost; gemm_builtin
// copies a large one's row blocks). A transposed B is transposed into the packed panels
// (gemm_builtin). For fewer columns than a vector holds (dx = dP W_ih and dW_ih = dP^T x at
// a small input size), where a panel would be one part-filled vector, gemm_narrow's dot
// products for a plain A (at 128 x 1 over a depth of 128 the panels did 0.5 GFLOP/s on a
// Zen 1); for op(A) = A^T and fewer columns than a panel, not whole vectors, C^T = op(B)^T
// A, formed with op(B)^T's few rows broadcast, and C taken from it (dW_ih at I = 12, H =
// 128: 9.5 GFLOP/s in a part-filled panel, 28 so, on a Zen 1). Returns false, having done
// nothing, where a copy finds no memory (see gemm_builtin).
template <class T>
bool gemm_builtin_op(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                     const T* B, int64_t ldb, T* C, int64_t ldc, bool accumulate) {
  if (!trans_a && N < Vec<T>::n && N < M && gemm_narrow<T>(M, N, K, A, lda, B, ldb, C, ldc, accumulate, trans_b))
    return true;
  if (trans_a && N < M && N < panel_width<T>(M) && N % Vec<T>::n != 0) {
    // op(B)^T (N x K) is B stored K x N read transposed, or B itself (stored N x K)
    std::unique_ptr<T[]> ct(new (std::nothrow) T[N * M]);
    if (ct && (trans_b ? gemm_builtin<T>(N, M, K, B, ldb, A, lda, ct.get(), M, false)
                       : gemm_builtin<T, true>(N, M, K, B, ldb, A, lda, ct.get(), M, false))) {
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j)
          C[i * ldc + j] = accumulate ? C[i * ldc + j] + ct[j * M + i] : ct[j * M + i];
      return true;
    }
  }
  if (trans_a) return gemm_builtin<T, true>(M, N, K, A, lda, B, ldb, C, ldc, accumulate, trans_b);
  return gemm_builtin<T>(M, N, K, A, lda, B, ldb, C, ldc, accumulate, trans_b);
}

// Which engine the products use: measured (GEMM_AUTO) or set (set_gemm_choice).
enum GemmChoice { GEMM_AUTO = 0, GEMM_BLAS = 1, GEMM_BUILTIN = 2 };
inline constexpr EnumName kGemmChoices[] = {{"auto", GEMM_AUTO}, {"blas", GEMM_BLAS}, {"builtin", GEMM_BUILTIN}};
inline std::atomic<int>& gemm_choice() {
  static std::atomic<int> choice{GEMM_AUTO};
  return choice;
}
inline void set_gemm_choice(int64_t c) {
  TORCH_CHECK(c >= GEMM_AUTO && c <= GEMM_BUILTIN, "lstmlab cpu backend: unknown gemm choice ", c);
  gemm_choice() = (int)c;
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

// One thread's time for three products of the layers' kinds with the built-in kernel (as
// the kernel runs them: gemm_builtin's packed copies, or weights packed once) and with the
// BLAS (MKL's packed weights for the third where there are), each the best of 9 rounds after
// an untimed one, the two engines alternating so that a change of clock speed or a neighbour's load falls on
// both alike: the three time ratios (built-in / BLAS), in this order; none without a BLAS
// (at::mm on wrapped pointers then, where the built-in kernel is not slower). use_builtin
// takes the built-in kernel where their geometric mean is below 1. The three: a weight gradient's dP^T x (256 x 128 over a depth
// of 256, op(A) = A^T, most of a backward's products); 64 x 256 by 256 x 512; an in-loop
// product at 8 rows (8 x 256 by the weights 256 x 512). Each counts alike: timed as one sum,
// the in-loop product, the smallest, counted for little, and on an AVX2 Zen 1 the first two
// are within 3% of MKL's time either way while the in-loop products at H = 512 take 1.7x
// longer with MKL; the choice flipped between processes there. (A margin in the BLAS's
// favour made it flip on a Zen 4, where the built-in kernel is faster at every shape.)
template <class T>
std::vector<double> measure_engines() {
  if (!have_blas()) return {};
  constexpr int64_t K = 256, N = 512, kInLoopRows = 8;
  constexpr bool is_float = std::is_same<T, float>::value;
  std::vector<T> a(256 * K), b(K * N), c(256 * N), panels(K * N);
  for (size_t i = 0; i < a.size(); ++i) a[i] = T((i * 7 % 13) - 6) / T(16);
  for (size_t i = 0; i < b.size(); ++i) b[i] = T((i * 5 % 11) - 5) / T(16);
  const OneBlasThread one;
  const T one_ = 1, zero = 0;
  const int64_t pw = panel_width<T>(kInLoopRows);
  pack_panels<T>(pw, K, N, b.data(), N, panels.data());
  at::Tensor mkl_packed;
  if constexpr (is_float)
    if (cblas_sgemm_pack && cblas_sgemm_compute && cblas_sgemm_pack_get_size) {
      mkl_packed = at::empty({(int64_t)cblas_sgemm_pack_get_size(kB, kInLoopRows, N, K)}, at::kByte);
      cblas_sgemm_pack(kRowMajor, kB, kNoTrans, kInLoopRows, N, K, 1.0f, b.data(), N, (float*)mkl_packed.data_ptr());
    }
  // the BLAS, column-major: C (M x N) = op(A) B, A stored K x M when ta
  auto blas = [&](int64_t M, int64_t n_cols, bool ta) {
    const int m = (int)n_cols, n = (int)M, k = (int)K, lb = ta ? n : k;
    blas_call("N", ta ? "T" : "N", &m, &n, &k, &one_, b.data(), &m, a.data(), &lb, &zero, c.data(), &m);
  };
  using Run = std::function<void()>;
  const std::pair<Run, Run> products[] = {
      {[&] { gemm_builtin<T, true>(256, 128, K, a.data(), 256, b.data(), 128, c.data(), 128, false, false, false); },
       [&] { blas(256, 128, true); }},
      {[&] { gemm_builtin<T>(64, N, K, a.data(), K, b.data(), N, c.data(), N, false, false, false); },
       [&] { blas(64, N, false); }},
      {[&] { gemm_packed<T>(kInLoopRows, N, K, a.data(), K, panels.data(), pw, c.data(), N, false); },
       [&] {
         if constexpr (is_float)
           if (mkl_packed.defined())
             return cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, kInLoopRows, N, K, a.data(), K,
                                        (const float*)mkl_packed.data_ptr(), N, 0.0f, c.data(), N);
         blas(kInLoopRows, N, false);
       }},
  };
  auto seconds = [](const Run& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  std::vector<double> ratios;
  for (const auto& [builtin, other] : products) {
    double tb = 1e30, to = 1e30;
    builtin();  // untimed: first touches, the BLAS's set-up
    other();
    for (int r = 0; r < 9; ++r) {
      tb = std::min(tb, seconds(builtin));
      to = std::min(to, seconds(other));
    }
    ratios.push_back(tb / to);
  }
  return ratios;
}

// measure_engines' ratios for T, measured once per process.
template <class T>
const std::vector<double>& engine_ratios() {
  static const std::vector<double> ratios = measure_engines<T>();
  return ratios;
}

// Whether the products of type T use the built-in kernel for every size (measured or set;
// StepProduct's in-loop products use it below small_limit in any case).
template <class T>
bool use_builtin() {
  const int c = gemm_choice();
  if (c != GEMM_AUTO) return c == GEMM_BUILTIN;
  static const bool faster = [] {
    const std::vector<double>& ratios = engine_ratios<T>();
    if (ratios.empty()) return true;  // no BLAS: at::mm on wrapped pointers is not faster
    double log_ratio = 0;
    for (double r : ratios) log_ratio += std::log(r);
    return log_ratio < 0;
  }();
  return faster;
}

// Row-major C (M x N) [+]= op(A) op(B), op(X) = X^T when trans_x (X then stored K x M /
// N x K): the built-in kernel where it is faster (use_builtin), else the BLAS, which is
// column-major: row-major C = A B is column-major C^T = B^T A^T.
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B,
          int64_t ldb, T* C, int64_t ldc, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t m = 0; m < M; ++m) std::memset(C + m * ldc, 0, sizeof(T) * N);
    return;
  }
  if (use_builtin<T>() && gemm_builtin_op<T>(trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc, accumulate)) return;
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
// W^T with W stored n x k. Per part it uses the built-in kernel (small products, or all
// where it is the faster engine: use_builtin), MKL's packed weights (float, few rows, when
// the BLAS is MKL; packed once here) or the plain BLAS call. The built-in kernel reads a
// copy made once here of a transposed part (k x n, or in panels, pack_panels, beyond
// 64 KiB, where it streams op(W) from memory at every step; copies of parts it could read
// in place are bounded in sum), the BLAS at few rows a k x n copy of it.
//
// A part may read a torch parameter in the kernel's order through index maps, so that no
// reordered copy of the weights has to outlive the pass: a transposed part's column j of
// op(W) is row rows[j] of W and its row kk is column cols[kk]; a plain part's row kk is
// row rows[kk] of W (null: j, kk), and its n columns are `groups` blocks of n / groups,
// gstride apart in W (side by side in C). Those that need a copy anyway (transposed ones,
// plain ones with a row map) gather it, and so do grouped ones of at most gather_max bytes
// (one product instead of one per group, for a copy that hardly counts); MKL packs from
// such a copy, dropped at once; the BLAS (and the built-in kernel over the copies' bound)
// runs a larger grouped part group by group, in place.
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
    const bool builtin = use_builtin<T>();
    const bool mkl = is_float && allow_pack && !builtin && cblas_sgemm_pack && cblas_sgemm_compute &&
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
    // The built-in product's copies (panels, pack_panels; a grouped part's groups side by
    // side) are free for the parts copied anyway (transposed, row-mapped) and bounded in sum
    // for those it could read in place: above the bound they are read in place (a grouped
    // part group by group). FGR's backward at H = 512 would otherwise gain 13.6 MB of copies
    // and miss the memory goal.
    auto copied = [&](const Part& q) { return q.transposed || q.rows; };
    size_t in_place = 0;
    for (const Part& q : parts)
      if (!copied(q)) in_place += size_t(q.k * q.n) * sizeof(T);
    const bool copy_in_place = in_place <= kBuiltinCopyMaxBytes;
    for (const Part& q : parts) {
      Plan plan{q, BLAS, at::Tensor(), false};
      if (q.k == 0 || q.n == 0) {
        plan.kind = EMPTY;
      } else if (builtin || M * q.n * q.k <= small_limit || !(q.transposed ? mkl : pack_in_place)) {
        plan.kind = builtin || M * q.n * q.k <= small_limit ? SMALL : BLAS;
        // the built-in kernel, and the BLAS at few rows, read op(W) row by row
        const bool may_copy = plan.kind != SMALL || copied(q) || copy_in_place;
        const bool small_groups = q.groups > 1 && may_copy &&
                                  (plan.kind == SMALL || q.k * q.n * (int64_t)sizeof(T) <= gather_max);
        if (plan.kind == SMALL && q.k * q.n * (int64_t)sizeof(T) > kPanelPackBytes && may_copy) {
          // weights beyond the L1 cache, streamed at every step: in panels (pack_panels)
          plan.copy = gather_panels(q, panel_width<T>(M));
          plan.part = {plan.copy.template data_ptr<T>(), q.n, q.k, q.n, false};
          plan.panels = true;
        } else if (q.transposed || q.rows || small_groups) {
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
        if (pl.panels) return gemm_packed<T>(M_, q.n, q.k, A, lda, q.W, panel_width<T>(M_), C, ldc, accumulate);
        if (q.groups > 1) {  // read in place, group by group
          const int64_t gw = q.n / q.groups;
          for (int64_t g = 0; g < q.groups; ++g)
            gemm_small<T>(M_, gw, q.k, A, lda, q.W + g * q.gstride, q.ld, C + g * gw, ldc, accumulate);
          return;
        }
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
      gemm<T>(false, q.transposed, M_, gw, q.k, A, lda, q.W + g * q.gstride, q.ld, C + g * gw, ldc, accumulate);
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

  // op(q) in pack_panels' order, panels of pw columns, each k x its width, contiguous
  static at::Tensor gather_panels(const Part& q, int64_t pw) {
    if (q.transposed && q.cols) {  // the columns in order first
      at::Tensor rows = gather_rows(q);
      return gather_panels({rows.template data_ptr<T>(), q.k, q.k, q.n, true}, pw);
    }
    at::Tensor copy = at::empty({q.k * q.n}, options());
    const int64_t gw = q.n / q.groups;
    auto panel_copy = [&](int64_t p0) {
      const int64_t w = std::min(pw, q.n - p0);
      T* panel = copy.template data_ptr<T>() + p0 * q.k;
      if (q.transposed) {
        transpose_rows<T>(w, q.k, [&](int64_t j) { return q.W + (q.rows ? q.rows[p0 + j] : p0 + j) * q.ld; }, panel);
        return;
      }
      for (int64_t k = 0; k < q.k; ++k) {
        const T* src = q.W + (q.rows ? q.rows[k] : k) * q.ld;
        for (int64_t c = p0, e; c < p0 + w; c = e) {  // the panel's columns, group by group
          const int64_t g = c / gw;
          e = std::min(p0 + w, (g + 1) * gw);
          std::memcpy(panel + k * w + (c - p0), src + g * q.gstride + (c - g * gw), sizeof(T) * (e - c));
        }
      }
    };
    // The panels between the threads where there is a copy worth sharing (a layer's W_hh at
    // H = 512 is 4 MB, whose transposed copy took ~1 ms a call in one thread); inside a team
    // of threads parallel_for runs them in the calling thread.
    const int64_t panels = (q.n + pw - 1) / pw;
    const int64_t grain = std::max<int64_t>(1, (int64_t(256) << 10) / std::max<int64_t>(1, pw * q.k * sizeof(T)));
    at::parallel_for(0, panels, grain, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) panel_copy(i * pw);
    });
    return copy;
  }

  // op(q) as a k x n row-major copy: one panel as wide as op(q)
  static at::Tensor gather(const Part& q) { return gather_panels(q, q.n); }

  enum Kind { EMPTY, SMALL, PACKED, BLAS };
  struct Plan {
    Part part;
    Kind kind;
    at::Tensor copy;  // the transposed copy or the panels (SMALL) or MKL's packed weights (PACKED)
    bool panels = false;  // SMALL: op(W) in pack_panels' order
  };
  // packing pays off for few rows (measured: see BENCHMARKS.md)
  static constexpr int64_t kPackMaxRows = 16;
  static constexpr size_t kPackMaxBytes = size_t(24) << 20;
  static constexpr int64_t kPanelPackBytes = 64 << 10;
  static constexpr size_t kBuiltinCopyMaxBytes = size_t(8) << 20;
  int64_t M_;
  std::vector<Plan> plans_;
};

}  // namespace lstmlab
