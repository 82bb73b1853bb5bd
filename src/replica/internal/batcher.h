// Dynamic batching in a replica, after Ray Serve's @serve.batch: requests wait in a queue; a batch closes
// when it has max_batch_size requests or its oldest request has waited batch_wait_timeout_s, and up to
// max_concurrent_batches run at once. In adaptive mode a batch waits only for as many requests as were about
// recently (the previous batch plus what arrived while it ran, at most max_batch_size), and no longer than
// the missing ones are likely to take to arrive (from the recent gap between arrivals), capped by
// batch_wait_timeout_s. A lone client, whose next request comes only after its answer, is never held
// waiting for company; a fixed pool of N clients gets batches of N.
// Time comes from a Clock (its tests run in simulated time).
// Thread-safe: Add from any thread; batches run on the batcher's own threads.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "common/mutex.h"
#include "spec/spec.h"

namespace ferry::replica {

// The batching config in the batcher's units. Its defaults are the config's (spec::BatchingConfig).
struct BatcherOptions {
  int max_batch_size = spec::BatchingConfig{}.max_batch_size;
  std::chrono::nanoseconds batch_wait_timeout{};
  int max_concurrent_batches = spec::BatchingConfig{}.max_concurrent_batches;
  bool adaptive = false;

  static BatcherOptions From(const spec::BatchingConfig& c) {
    BatcherOptions o;
    o.max_batch_size = c.max_batch_size;
    o.batch_wait_timeout = std::chrono::nanoseconds(static_cast<int64_t>(c.batch_wait_timeout_s * 1e9));
    o.max_concurrent_batches = c.max_concurrent_batches;
    o.adaptive = c.adaptive;
    return o;
  }
};

template <typename Item>
class Batcher {
 public:
  using RunBatch = std::function<void(std::vector<Item>& batch)>;
  Batcher(const BatcherOptions& options, RunBatch run, const Clock* clock = Clock::Real())
      : options_(options), run_(std::move(run)), clock_(clock) {
    for (int i = 0; i < std::max(1, options_.max_concurrent_batches); ++i) threads_.emplace_back([this] { Loop(); });
  }
  ~Batcher() {
    {
      MutexLock lock(&mu_);
      stopping_ = true;
    }
    cv_.SignalAll();
    for (auto& t : threads_) t.join();
  }

  void Add(Item item) {
    std::vector<Item> one;
    one.push_back(std::move(item));
    AddAll(one);
  }

  // Adds several requests under one lock. Batch threads are woken only when there is something new for
  // them to decide: the first request of a batch (its wait starts) or a full batch.
  void AddAll(std::vector<Item>& items) {
    auto now = clock_->Now();
    bool wake = false;
    {
      MutexLock lock(&mu_);
      for (Item& item : items) {
        if (last_arrival_) {
          auto gap = now - *last_arrival_;
          gap_ = gap_.count() == 0 ? gap : gap_ + (gap - gap_) / 8;
        }
        last_arrival_ = now;
        ++arrivals_;
        queue_.push_back({std::move(item), now});
        const size_t n = queue_.size();
        wake = wake || n == 1 || n % static_cast<size_t>(options_.max_batch_size) == 0;
      }
      wake = wake || options_.adaptive;  // the adaptive wait depends on every arrival
    }
    if (wake) cv_.SignalAll();
  }

  size_t queued() const {
    MutexLock lock(&mu_);
    return queue_.size();
  }

 private:
  struct Waiting {
    Item item;
    Clock::TimePoint since;
  };

  // How long the oldest request may wait for the batch to fill.
  // Adaptive: the batch is expected to hold as many requests as were about recently (the last batch and
  // what arrived while it ran), so a fixed pool of N clients gets batches of N without waiting for
  // max_batch_size, and a lone client (a batch of 1, nothing arriving meanwhile) never waits.
  std::chrono::nanoseconds WaitLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!options_.adaptive) return options_.batch_wait_timeout;
    const int64_t expected = std::min<int64_t>(options_.max_batch_size,
                                               static_cast<int64_t>(last_batch_size_ + arrivals_during_last_batch_));
    const int64_t missing = expected - static_cast<int64_t>(queue_.size());
    if (missing <= 0 || gap_.count() == 0 || gap_ >= options_.batch_wait_timeout) return std::chrono::nanoseconds(0);
    return std::min(options_.batch_wait_timeout, std::chrono::nanoseconds(gap_ * missing));
  }

  void Loop() {
    std::vector<Item> batch;
    mu_.Lock();
    for (;;) {
      while (!stopping_ && queue_.empty()) cv_.Wait(&mu_);
      if (queue_.empty()) break;  // stopping
      while (!stopping_ && !queue_.empty() && static_cast<int>(queue_.size()) < options_.max_batch_size) {
        auto deadline = queue_.front().since + WaitLocked();
        if (clock_->Now() >= deadline) break;
        clock_->WaitUntil(&cv_, &mu_, deadline);
      }
      if (queue_.empty()) continue;  // another thread took them
      while (!queue_.empty() && static_cast<int>(batch.size()) < options_.max_batch_size) {
        batch.push_back(std::move(queue_.front().item));
        queue_.pop_front();
      }
      last_batch_size_ = batch.size();
      const uint64_t arrivals_before = arrivals_;
      mu_.Unlock();
      run_(batch);
      batch.clear();  // the requests' memory is freed here, not under the lock when the next batch forms
      mu_.Lock();
      arrivals_during_last_batch_ = arrivals_ - arrivals_before;
    }
    mu_.Unlock();
  }

  const BatcherOptions options_;
  RunBatch run_;
  const Clock* const clock_;
  mutable Mutex mu_;
  CondVar cv_;
  std::deque<Waiting> queue_ ABSL_GUARDED_BY(mu_);
  std::optional<Clock::TimePoint> last_arrival_ ABSL_GUARDED_BY(mu_);
  Clock::Duration gap_ ABSL_GUARDED_BY(mu_){0};  // moving average between arrivals
  uint64_t arrivals_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t arrivals_during_last_batch_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t last_batch_size_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace ferry::replica
