// Where the time goes, for `lstmlab bench` (off by default; a few clock reads per step
// when on). Not thread-safe across concurrent calls: the bench runs one at a time.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

namespace lstmlab {

// Per phase, the busiest slice's seconds, summed over calls; and the recurrent products'
// flops.
enum Phase { F_INPUT, F_PRODUCT, F_POINTWISE, B_PRODUCT, B_POINTWISE, B_CHUNK, kPhases };
struct Clock {
  bool on = false;
  double seconds[kPhases] = {}, flops[2] = {};  // flops: forward, backward products
};
inline Clock g_clock;

// Per-slice stopwatches for one call; folded into g_clock at the end.
struct SliceClock {
  std::vector<double> s;
  int64_t P;
  explicit SliceClock(int64_t P_) : s(g_clock.on ? P_ * kPhases : 0, 0.0), P(P_) {}
  using tp = std::chrono::steady_clock::time_point;
  tp now() const { return g_clock.on ? std::chrono::steady_clock::now() : tp(); }
  void add(int64_t p, Phase ph, tp& since) {
    if (!g_clock.on) return;
    tp t = std::chrono::steady_clock::now();
    s[p * kPhases + ph] += std::chrono::duration<double>(t - since).count();
    since = t;
  }
  void fold() const {
    if (!g_clock.on) return;
    for (int ph = 0; ph < kPhases; ++ph) {
      double m = 0;
      for (int64_t p = 0; p < P; ++p) m = std::max(m, s[p * kPhases + ph]);
      g_clock.seconds[ph] += m;
    }
  }
};

}  // namespace lstmlab
