// The replica's executor: how many tasks run at once, which thread runs which, when idle threads are woken,
// and its threads' lifetime. Deterministic: the tests call Next/Submit/Done themselves; only the thread
// tests start threads, whose body here just waits to be woken.
#include "replica/internal/executor.h"

#include <atomic>
#include <chrono>
#include <gtest/gtest.h>
#include <vector>

#include "common/mutex.h"

namespace ferry::replica {
namespace {

using std::chrono::microseconds;

std::vector<TaskPtr> Tasks(int n) {
  std::vector<TaskPtr> tasks;
  for (int i = 0; i < n; ++i) {
    tasks.push_back(std::make_shared<Task>());
    tasks.back()->stream_id = static_cast<uint64_t>(i);
  }
  return tasks;
}

// Counts wake-ups; a thread body that waits for them.
struct Wakes {
  Mutex mu;
  CondVar cv;
  uint64_t pending ABSL_GUARDED_BY(mu) = 0;
  uint64_t total ABSL_GUARDED_BY(mu) = 0;
  std::atomic<int> threads_started{0};
  void Wake(uint64_t n) {
    MutexLock lock(&mu);
    pending += n;
    total += n;
    cv.SignalAll();
  }
  void Body(const Executor& executor) {
    threads_started.fetch_add(1);
    while (!executor.stopping()) {
      MutexLock lock(&mu);
      while (pending == 0) cv.Wait(&mu);
      --pending;
    }
  }
  uint64_t Total() {
    MutexLock lock(&mu);
    return total;
  }
};

TEST(ExecutorTest, TheReadingThreadRunsOneAndTheRestWaitForALimitSlot) {
  Wakes wakes;
  Executor executor(
      2, [] {}, [&](uint64_t n) { wakes.Wake(n); });
  std::vector<TaskPtr> tasks = Tasks(3);
  TaskPtr mine = executor.Submit(tasks);
  ASSERT_NE(mine, nullptr);
  EXPECT_EQ(mine->stream_id, 0u) << "the first of a read is run by the thread that read it";
  EXPECT_TRUE(tasks.empty());
  TaskPtr second = executor.Next();
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(second->stream_id, 1u);
  EXPECT_EQ(executor.Next(), nullptr) << "two running: max_running 2";
  executor.Done(microseconds(500));
  TaskPtr third = executor.Next();
  ASSERT_NE(third, nullptr);
  EXPECT_EQ(third->stream_id, 2u);
  EXPECT_EQ(executor.Next(), nullptr);
}

TEST(ExecutorTest, QueuedTasksGoFirstAReadDoesNotOvertakeThem) {
  Executor executor(
      1, [] {}, [](uint64_t) {});
  std::vector<TaskPtr> first = Tasks(2);
  ASSERT_NE(executor.Submit(first), nullptr);  // runs 0, queues 1
  executor.Done(microseconds(10));
  std::vector<TaskPtr> later = Tasks(1);
  later[0]->stream_id = 99;
  EXPECT_EQ(executor.Submit(later), nullptr) << "a slot is free, but task 1 waited first";
  EXPECT_EQ(executor.Next()->stream_id, 1u);
  executor.Done(microseconds(10));
  EXPECT_EQ(executor.Next()->stream_id, 99u);
}

TEST(ExecutorTest, SlowHandlersWakeAThreadPerQueuedTaskFastOnesDoNot) {
  Wakes wakes;
  Executor executor(
      8, [] {}, [&](uint64_t n) { wakes.Wake(n); });
  std::vector<TaskPtr> tasks = Tasks(4);
  ASSERT_NE(executor.Submit(tasks), nullptr);
  EXPECT_EQ(wakes.Total(), 3u) << "a new deployment counts as slow until it has shown otherwise";
  executor.Done(microseconds(2));
  while (executor.Next()) executor.Done(microseconds(2));
  for (int i = 0; i < 40; ++i) {
    std::vector<TaskPtr> one = Tasks(1);
    TaskPtr t = executor.Submit(one);
    if (!t) t = executor.Next();
    ASSERT_NE(t, nullptr);
    executor.Done(microseconds(2));
  }
  EXPECT_LT(executor.average_handle_time(), microseconds(50));
  uint64_t before = wakes.Total();
  while (executor.Next()) executor.Done(microseconds(2));
  std::vector<TaskPtr> more = Tasks(4);
  ASSERT_NE(executor.Submit(more), nullptr);
  EXPECT_EQ(wakes.Total(), before) << "fast handlers: queued tasks wait for the threads already running";
}

TEST(ExecutorTest, StartsLimitPlusOneThreadsGrowsWithTheLimitAndStopJoinsThem) {
  Wakes wakes;
  Executor* self = nullptr;
  Executor executor(
      2, [&] { wakes.Body(*self); }, [&](uint64_t n) { wakes.Wake(n); });
  self = &executor;
  executor.SetMaxRunning(3);
  EXPECT_EQ(wakes.threads_started.load(), 0) << "no thread before Start";
  executor.Start();
  executor.SetMaxRunning(5);
  EXPECT_EQ(executor.max_running(), 5);
  executor.SetMaxRunning(1);  // fewer may run; threads stay
  executor.Stop();            // wakes every thread and joins: returns only once all six have left
  EXPECT_EQ(wakes.threads_started.load(), 6);
  EXPECT_TRUE(executor.stopping());
  executor.Stop();  // twice is fine
}

}  // namespace
}  // namespace ferry::replica
