// Time as an argument: components that decide by time (the controller's backoff, health deadlines and
// drains; the batcher's waits) read it from a Clock, so their tests run in simulated time. Production
// code uses Clock::Real() (std::chrono::steady_clock).
// Thread-safe: Now and WaitUntil may be called from any thread.
#pragma once

#include <chrono>

#include "common/mutex.h"

namespace ferry {

class Clock {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  using Duration = std::chrono::steady_clock::duration;
  virtual ~Clock() = default;
  virtual TimePoint Now() const = 0;
  // Waits on `cv`, with `mu` held, until it is signalled or this clock reaches `deadline`. It may return
  // early (callers re-check their condition and the time, as with any condition variable).
  virtual void WaitUntil(CondVar* cv, Mutex* mu, TimePoint deadline) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) = 0;

  // The process's steady clock.
  static const Clock* Real();
};

}  // namespace ferry
