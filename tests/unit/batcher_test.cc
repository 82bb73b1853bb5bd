#include "replica/internal/batcher.h"

#include <condition_variable>
#include <gtest/gtest.h>
#include <mutex>
#include <set>
#include <thread>

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

TEST(BatcherTest, AdaptiveModeBatchesAFixedPoolOfClientsWithoutWaitingForMaxBatchSize) {
  // Four clients, each sending its next request only after its answer (a closed loop), far fewer than
  // max_batch_size: with a fixed wait every batch would wait out the hour; adaptive batches them anyway.
  Recorder r;
  BatcherOptions o;
  o.max_batch_size = 64;
  o.batch_wait_timeout = 1h;
  o.adaptive = true;
  std::mutex mu;
  std::condition_variable cv;
  std::set<int> done;
  Batcher<int> b(o, [&](std::vector<int>& batch) {
    r.Run()(batch);
    std::lock_guard<std::mutex> lock(mu);
    for (int i : batch) done.insert(i);
    cv.notify_all();
  });
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c)
    clients.emplace_back([&, c] {
      for (int round = 0; round < 20; ++round) {
        int item = round * 4 + c;
        b.Add(item);
        std::unique_lock<std::mutex> lock(mu);
        ASSERT_TRUE(cv.wait_for(lock, 20s, [&] { return done.count(item) > 0; })) << "item " << item << " waited";
      }
    });
  for (auto& t : clients) t.join();
  ASSERT_TRUE(r.WaitItems(80));
  size_t largest = 0;
  for (const auto& batch : r.batches) largest = std::max(largest, batch.size());
  EXPECT_GE(largest, 2u);
  EXPECT_LE(largest, 4u);
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
