// Which thread runs which request, and how many run at once. A pool of max_running + 1 threads; each loops
// on its owner's thread body, which asks Next() for a task that may start and otherwise waits for I/O (the
// frame server's Poll). The thread that read a request runs one itself (no hand-off to another thread) and
// queues any others. At most max_running tasks run at once, so one thread is always free to read (cancels
// above all). Whether queued tasks wake idle threads depends on how long handle() takes: for slow handlers
// every task gets its own thread; for fast ones (under 50 us on average) a wake-up costs more than the
// task, so the threads already running drain the queue between reads.
// Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <optional>
#include <thread>
#include <vector>

#include "common/mutex.h"
#include "replica/internal/task.h"

namespace ferry::replica {

class Executor {
 public:
  // `thread_body` is each thread's loop, which returns once stopping() (it checks between waits);
  // `wake(n)` makes n threads that wait for I/O return to their loop.
  Executor(int max_running, std::function<void()> thread_body, std::function<void(uint64_t)> wake);
  ~Executor();

  // Starts max_running + 1 threads.
  void Start();
  // Wakes and joins every thread; tasks still queued are dropped.
  void Stop();
  bool stopping() const { return stopping_.load(std::memory_order_relaxed); }

  // A queued task, if one may start now; the caller runs it and then calls Done.
  TaskPtr Next();
  // Takes the tasks one read produced: returns the one this thread runs itself now (then Done), or null
  // when none may start here; queues the rest for any thread.
  TaskPtr Submit(std::vector<TaskPtr>& tasks);
  // Queues one task for any thread and wakes one (work that arrives outside a read: a session to close).
  void Enqueue(TaskPtr task);
  // A task that Next or Submit handed out has finished; `handle_time`: how long handle() took, when it ran.
  void Done(std::optional<std::chrono::nanoseconds> handle_time);
  // More threads when the limit grows; a lower limit just lets fewer run.
  void SetMaxRunning(int n);

  int max_running() const;
  std::chrono::nanoseconds average_handle_time() const {
    return std::chrono::nanoseconds(handle_ns_.load(std::memory_order_relaxed));
  }

 private:
  void AddThreadsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::function<void()> thread_body_;
  const std::function<void(uint64_t)> wake_;
  std::atomic<bool> stopping_{false};
  // Moving average of handle() time, 1/8 weight to the newest. Starts high, so a new deployment gets
  // parallel threads until it has shown that it is fast.
  std::atomic<int64_t> handle_ns_{1'000'000};
  mutable Mutex mu_;
  std::deque<TaskPtr> queue_ ABSL_GUARDED_BY(mu_);
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  int max_running_ ABSL_GUARDED_BY(mu_);
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ferry::replica
