// Where the time goes, for `lstmlab bench` (off by default; a few clock reads per step
// when on). Not thread-safe across concurrent calls: the bench runs one at a time.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

namespace lstmlab {

// Per phase, the busiest worker's seconds, summed over calls; and the recurrent products'
// flops.
enum Phase { F_INPUT, F_PRODUCT, F_POINTWISE, B_PRODUCT, B_POINTWISE, B_CHUNK, kPhases };
struct Clock {
  bool on = false;
  double seconds[kPhases] = {}, flops[2] = {};  // flops: forward, backward products
};
inline Clock g_clock;

// Per-worker stopwatches for one call, each on a cache line of its own (the threads write
// them at every step); folded into g_clock at the end.
struct SliceClock {
  struct alignas(64) Slot {
    double s[kPhases] = {};
  };
  std::vector<Slot> slots;
  explicit SliceClock(int64_t P) : slots(g_clock.on ? P : 0) {}
  using tp = std::chrono::steady_clock::time_point;
  tp now() const { return g_clock.on ? std::chrono::steady_clock::now() : tp(); }
  void add(int64_t p, Phase ph, tp& since) {
    if (!g_clock.on) return;
    tp t = std::chrono::steady_clock::now();
    slots[p].s[ph] += std::chrono::duration<double>(t - since).count();
    since = t;
  }
  void fold() const {
    if (!g_clock.on) return;
    for (int ph = 0; ph < kPhases; ++ph) {
      double m = 0;
      for (const Slot& slot : slots) m = std::max(m, slot.s[ph]);
      g_clock.seconds[ph] += m;
    }
  }
};

}  // namespace lstmlab
