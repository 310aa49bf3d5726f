// The time loops. Two ways to share a sequence between threads:
//
// run_steps, slices of hidden units: step t of every slice must finish before step t + 1
//   of any slice starts (each slice reads the whole previous state), so the threads meet
//   at a barrier once per step.
// run_groups, groups of batch rows: each group runs the whole sequence on its own rows,
//   so the threads never wait for each other within a chunk of steps; they meet only where
//   the caller asks, to share work on every group's rows (the forward: before a chunk, its
//   input projection; the backward: after a chunk, its weight-gradient products).
//
// The threads are an OpenMP team from the same libgomp torch uses; OpenMP's barrier spins
// briefly and then sleeps, which keeps the loop fast on idle cores and tolerable when
// other processes compete for them. Slices and groups are dealt to the team's threads
// round robin, so both loops are right for any team size, one included.
#pragma once
#include <cstdint>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "gemm.h"

namespace lstmlab {

// f(t, p): step t (0..T-1 in loop order) of slice p. Must not throw.
template <class F>
void run_steps(int64_t T, int64_t P, const F& f) {
#ifdef _OPENMP
  if (P > 1 && !omp_in_parallel()) {
#pragma omp parallel num_threads((int)P)
    {
      const OneBlasThread blas;
      const int64_t nt = omp_get_num_threads(), me = omp_get_thread_num();
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t p = me; p < P; p += nt) f(t, p);
#pragma omp barrier
      }
    }
    return;
  }
#endif
  for (int64_t t = 0; t < T; ++t)
    for (int64_t p = 0; p < P; ++p) f(t, p);
}

// f(t, g): step t (0..T-1 in loop order) of group g. After each step t with meet(t), once
// every group has run it, after(t, g) runs for g = 0..G-1 (each on one thread), before any
// group runs step t + 1. None may throw.
template <class F, class Meet, class After>
void run_groups(int64_t T, int64_t G, const F& f, const Meet& meet, const After& after) {
  // [t0, t1]: the steps up to and including the next meeting point (or the last step)
  auto segments = [&](auto&& run, auto&& sync) {
    for (int64_t t0 = 0, t1; t0 < T; t0 = t1 + 1) {
      for (t1 = t0; t1 < T - 1 && !meet(t1); ++t1) {
      }
      run(t0, t1);
      if (meet(t1)) sync(t1);
    }
  };
#ifdef _OPENMP
  if (G > 1 && !omp_in_parallel()) {
#pragma omp parallel num_threads((int)G)
    {
      const OneBlasThread blas;
      const int64_t nt = omp_get_num_threads(), me = omp_get_thread_num();
      segments(
          [&](int64_t t0, int64_t t1) {
            for (int64_t g = me; g < G; g += nt)
              for (int64_t t = t0; t <= t1; ++t) f(t, g);
          },
          [&](int64_t t) {
#pragma omp barrier
            for (int64_t g = me; g < G; g += nt) after(t, g);
#pragma omp barrier
          });
    }
    return;
  }
#endif
  segments(
      [&](int64_t t0, int64_t t1) {
        for (int64_t g = 0; g < G; ++g)
          for (int64_t t = t0; t <= t1; ++t) f(t, g);
      },
      [&](int64_t t) {
        for (int64_t g = 0; g < G; ++g) after(t, g);
      });
}

}  // namespace lstmlab
