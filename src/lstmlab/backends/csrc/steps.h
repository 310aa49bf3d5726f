// The time loop over slices of hidden units. Step t of every slice must finish before
// step t + 1 of any slice starts (each slice reads the whole previous state), so the
// threads meet at a barrier once per step. The threads are an OpenMP team from the same
// libgomp torch uses; OpenMP's barrier spins briefly and then sleeps, which keeps the loop
// fast on idle cores and tolerable when other processes compete for them. Slices are dealt
// to the team's threads round robin, so the loop is right for any team size, one included.
#pragma once
#include <cstdint>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace lstmlab {

// f(t, p): step t (0..T-1 in loop order) of slice p. Must not throw.
template <class F>
void run_steps(int64_t T, int64_t P, const F& f) {
#ifdef _OPENMP
  if (P > 1 && !omp_in_parallel()) {
#pragma omp parallel num_threads((int)P)
    {
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

}  // namespace lstmlab
