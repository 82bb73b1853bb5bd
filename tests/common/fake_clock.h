// A clock that moves only when a test says so. Waiters on it re-check every millisecond of real time, so
// what they decide depends only on the simulated time, never on how fast the machine is.
// Thread-safe.
#pragma once

#include <atomic>

#include "common/clock.h"

namespace ferry::testing {

class FakeClock : public Clock {
 public:
  TimePoint Now() const override { return TimePoint(Duration(now_.load())); }
  void WaitUntil(CondVar* cv, Mutex* mu, TimePoint deadline) const override ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (Now() < deadline) cv->WaitFor(mu, std::chrono::milliseconds(1));
  }
  void Advance(Duration d) { now_.fetch_add(d.count()); }

 private:
  std::atomic<Duration::rep> now_{Duration(std::chrono::hours(1)).count()};  // not zero: zero means "unset"
};

}  // namespace ferry::testing
