#include "replica/internal/executor.h"

namespace ferry::replica {

namespace {
// Below this average handle() time, queued requests are not worth waking a thread for.
constexpr std::chrono::nanoseconds kInlineBelow = std::chrono::microseconds(50);
}  // namespace

Executor::Executor(int max_running, std::function<void()> thread_body, std::function<void(uint64_t)> wake)
    : thread_body_(std::move(thread_body)), wake_(std::move(wake)), max_running_(max_running) {}

Executor::~Executor() { Stop(); }

void Executor::Start() {
  MutexLock lock(&mu_);
  started_ = true;
  AddThreadsLocked();
}

void Executor::AddThreadsLocked() {
  while (static_cast<int>(threads_.size()) < max_running_ + 1 && !stopping_.load()) threads_.emplace_back(thread_body_);
}

void Executor::Stop() {
  std::vector<std::thread> threads;
  {
    MutexLock lock(&mu_);
    stopping_.store(true);
    threads.swap(threads_);
    queue_.clear();
  }
  if (threads.empty()) return;
  wake_(threads.size());
  for (auto& t : threads) t.join();
}

TaskPtr Executor::Next() {
  MutexLock lock(&mu_);
  if (queue_.empty() || running_ >= max_running_) return nullptr;
  ++running_;
  TaskPtr t = std::move(queue_.front());
  queue_.pop_front();
  return t;
}

TaskPtr Executor::Submit(std::vector<TaskPtr>& tasks) {
  if (tasks.empty()) return nullptr;
  TaskPtr mine;
  size_t queued = 0;
  {
    MutexLock lock(&mu_);
    size_t from = 0;
    if (running_ < max_running_ && queue_.empty()) {
      ++running_;
      mine = std::move(tasks[0]);
      from = 1;
    }
    for (size_t i = from; i < tasks.size(); ++i) queue_.push_back(std::move(tasks[i]));
    queued = tasks.size() - from;
  }
  tasks.clear();
  if (queued > 0 && handle_ns_.load(std::memory_order_relaxed) >= kInlineBelow.count()) wake_(queued);
  return mine;
}

void Executor::Enqueue(TaskPtr task) {
  {
    MutexLock lock(&mu_);
    if (stopping_.load()) return;
    queue_.push_back(std::move(task));
  }
  wake_(1);
}

void Executor::Done(std::optional<std::chrono::nanoseconds> handle_time) {
  if (handle_time) {
    int64_t avg = handle_ns_.load(std::memory_order_relaxed);
    handle_ns_.store(avg + (handle_time->count() - avg) / 8, std::memory_order_relaxed);
  }
  MutexLock lock(&mu_);
  --running_;
}

void Executor::SetMaxRunning(int n) {
  MutexLock lock(&mu_);
  max_running_ = n;
  if (started_) AddThreadsLocked();
}

int Executor::max_running() const {
  MutexLock lock(&mu_);
  return max_running_;
}

}  // namespace ferry::replica
