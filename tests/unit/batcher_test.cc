#include "replica/internal/batcher.h"

#include <condition_variable>
#include <gtest/gtest.h>
#include <mutex>
#include <set>
#include <thread>

#include "common/fake_clock.h"

namespace ferry::replica {
namespace {

using namespace std::chrono_literals;

// Records the batches a batcher runs.
struct Recorder {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::vector<int>> batches;

  Batcher<int>::RunBatch Run() {
    return [this](std::vector<int>& batch) {
      std::lock_guard<std::mutex> lock(mu);
      batches.push_back(batch);
      cv.notify_all();
    };
  }
  // Waits (up to 30 s) until `n` items ran.
  bool WaitItems(size_t n) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, 30s, [&] {
      size_t total = 0;
      for (const auto& b : batches) total += b.size();
      return total >= n;
    });
  }
};

TEST(BatcherTest, AFullBatchDoesNotWaitForTheTimeout) {
  Recorder r;
  BatcherOptions o;
  o.max_batch_size = 4;
  o.batch_wait_timeout = 1h;  // only a full batch can close
  Batcher<int> b(o, r.Run());
  for (int i = 0; i < 8; ++i) b.Add(i);
  ASSERT_TRUE(r.WaitItems(8));
  ASSERT_EQ(r.batches.size(), 2u);
  EXPECT_EQ(r.batches[0], (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(r.batches[1], (std::vector<int>{4, 5, 6, 7}));
}

TEST(BatcherTest, APartialBatchClosesAtTheTimeout) {
  Recorder r;
  BatcherOptions o;
  o.max_batch_size = 10;
  o.batch_wait_timeout = 20ms;
  Batcher<int> b(o, r.Run());
  for (int i = 0; i < 3; ++i) b.Add(i);
  ASSERT_TRUE(r.WaitItems(3));
  EXPECT_EQ(r.batches[0], (std::vector<int>{0, 1, 2}));
}

TEST(BatcherTest, AdaptiveModeRunsALoneRequestAtOnce) {
  Recorder r;
  BatcherOptions o;
  o.max_batch_size = 10;
  o.batch_wait_timeout = 1h;  // a fixed wait would never end
  o.adaptive = true;
  Batcher<int> b(o, r.Run());
  for (int i = 0; i < 3; ++i) {
    b.Add(i);
    ASSERT_TRUE(r.WaitItems(static_cast<size_t>(i + 1)));
  }
  EXPECT_EQ(r.batches.size(), 3u);
}

TEST(BatcherTest, AdaptiveModeWaitsForTheRequestsThatWereAboutByTheirArrivalGapInSimulatedTime) {
  // Simulated time: what the batcher decides depends on the clock the test moves, not on how fast this
  // machine runs the threads (the closed-loop version of this test failed under ThreadSanitizer's
  // slowdown).
  testing::FakeClock clock;
  Recorder r;
  BatcherOptions o;
  o.max_batch_size = 64;
  o.batch_wait_timeout = 1h;  // a fixed wait would never end
  o.adaptive = true;
  std::mutex gate_mu;
  std::condition_variable gate_cv;
  bool open = false;
  Batcher<int> b(
      o,
      [&](std::vector<int>& batch) {
        r.Run()(batch);
        std::unique_lock<std::mutex> lock(gate_mu);
        gate_cv.wait(lock, [&] { return open; });  // the first batch runs until the test opens the gate
      },
      &clock);
  std::vector<int> first = {0, 1, 2, 3};
  b.AddAll(first);  // four at once: nothing was about before, so they run at once as one batch
  ASSERT_TRUE(r.WaitItems(4));
  EXPECT_EQ(r.batches[0], (std::vector<int>{0, 1, 2, 3}));
  for (int i = 4; i < 7; ++i) {  // three arrive 1 ms apart while it runs
    clock.Advance(1ms);
    b.Add(i);
  }
  {
    std::lock_guard<std::mutex> lock(gate_mu);
    open = true;
  }
  gate_cv.notify_all();
  // The next batch expects 4 + 3 = 7 requests; 3 are here, so it waits for the 4 missing ones' arrival
  // gap (4 x 1 ms from its oldest request) and not an hour, and not less while the clock stands still.
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(b.queued(), 3u) << "closed before the simulated wait was over";
  clock.Advance(1ms);  // 1 ms short of the wait
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(b.queued(), 3u);
  clock.Advance(1ms);
  ASSERT_TRUE(r.WaitItems(7));
  ASSERT_EQ(r.batches.size(), 2u);
  EXPECT_EQ(r.batches[1], (std::vector<int>{4, 5, 6}));
}

TEST(BatcherTest, NeverMoreThanMaxBatchSize) {
  Recorder r;
  BatcherOptions o;
  o.max_batch_size = 3;
  o.batch_wait_timeout = 5ms;
  o.max_concurrent_batches = 2;
  Batcher<int> b(o, r.Run());
  for (int i = 0; i < 100; ++i) b.Add(i);
  ASSERT_TRUE(r.WaitItems(100));
  for (const auto& batch : r.batches) EXPECT_LE(batch.size(), 3u);
}

}  // namespace
}  // namespace ferry::replica
