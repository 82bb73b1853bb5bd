#include "replica/internal/replica_server.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/common.h"
#include "common/handoff.h"
#include "common/mutex.h"
#include "common/unique_fd.h"
#include "metrics/metrics.h"
#include "replica/internal/batcher.h"
#include "tracing/tracing.h"
#include "transport/frame.h"

namespace ferry::replica {

using transport::FrameHeader;
using transport::FrameKind;

namespace {

constexpr uint64_t kListenId = 0;
constexpr uint64_t kWakeId = 1;
constexpr uint64_t kFirstConnectionId = 2;
constexpr auto kStuckWriteLimit = std::chrono::seconds(30);
// Below this average handle() time, queued requests are not worth waking a thread for.
constexpr std::chrono::nanoseconds kInlineBelow = std::chrono::microseconds(50);

class Connection;

// A traced request's spans here: "ferry.replica" from its frame's arrival to its answer, and the user
// code's inside it. The user code sees a `traceparent` naming its own span, so that what it calls joins
// the trace.
struct TaskTrace {
  tracing::SpanContext parent;  // the proxy's span
  uint64_t replica_span = 0;
  uint64_t user_span = 0;
  int64_t arrived_ns = 0;
  int64_t user_start_ns = 0;
  int64_t user_end_ns = 0;
  int64_t prepare_start_ns = 0;  // the deployment's prepare(), when it ran (batched deployments)
  int64_t prepare_end_ns = 0;
  std::string traceparent;  // the value the user code sees
};

// One request between its frame and its answer.
struct Task {
  std::string payload;  // owns the bytes `request` points into
  transport::RequestMessage request;
  uint64_t stream_id = 0;
  std::atomic<bool> cancelled{false};
  std::shared_ptr<Connection> connection;
  std::unique_ptr<TaskTrace> trace;  // null: not traced
  // What the deployment's prepare() made of the request as it arrived (batched deployments); released
  // with the task, after its answer.
  void* prepared = nullptr;
  DeploymentHost* host = nullptr;
  Task() = default;
  Task(const Task&) = delete;
  Task& operator=(const Task&) = delete;
  ~Task() {
    if (prepared) host->Release(prepared);
  }
};

// One client connection. Reading is done by one thread at a time (the epoll registration is one-shot);
// writing is group commit under write_mu_.
class Connection {
 public:
  Connection(int fd, uint64_t id) : fd_(fd), id_(id) {}
  int fd() const { return fd_.get(); }
  uint64_t id() const { return id_; }
  transport::FrameReader& reader() { return reader_; }  // only the thread holding the read event

  // Appends a whole frame and makes sure it is written, by this thread or the one already writing.
  void Send(std::string_view frame) {
    write_mu_.Lock();
    if (broken_ || (pending_.append(frame), flushing_)) {
      write_mu_.Unlock();
      return;
    }
    flushing_ = true;
    // writing_ belongs to the flushing thread (flushing_, set and cleared under the lock, hands it on);
    // it and pending_ swap buffers, so their capacity is reused and a flush allocates nothing.
    while (!pending_.empty() && !broken_) {
      writing_.swap(pending_);
      write_mu_.Unlock();
      bool ok = WriteAll(writing_);
      writing_.clear();
      write_mu_.Lock();
      if (!ok) broken_ = true;
    }
    flushing_ = false;
    write_mu_.Unlock();
  }

  void AddTask(const std::shared_ptr<Task>& task) {
    MutexLock lock(&tasks_mu_);
    tasks_[task->stream_id] = task;
  }
  void RemoveTask(uint64_t stream_id) {
    MutexLock lock(&tasks_mu_);
    tasks_.erase(stream_id);
  }
  void CancelTask(uint64_t stream_id) {
    MutexLock lock(&tasks_mu_);
    auto it = tasks_.find(stream_id);
    if (it != tasks_.end()) it->second->cancelled.store(true);
  }
  // The client is gone: every request it sent is cancelled, and answers to it are dropped.
  void Abandon() {
    {
      MutexLock lock(&write_mu_);
      broken_ = true;
    }
    MutexLock lock(&tasks_mu_);
    for (auto& [id, task] : tasks_) task->cancelled.store(true);
    tasks_.clear();
    ::shutdown(fd_.get(), SHUT_RDWR);
  }

 private:
  bool WriteAll(std::string_view data) {
    auto stuck_since = SteadyClock::now();
    while (!data.empty()) {
      ssize_t n = ::send(fd_.get(), data.data(), data.size(), MSG_NOSIGNAL);
      if (n > 0) {
        data.remove_prefix(static_cast<size_t>(n));
        stuck_since = SteadyClock::now();
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (SteadyClock::now() - stuck_since > kStuckWriteLimit) return false;  // the client stopped reading
        pollfd p{fd_.get(), POLLOUT, 0};
        ::poll(&p, 1, 100);
        continue;
      }
      return false;
    }
    return true;
  }

  const UniqueFd fd_;
  const uint64_t id_;
  transport::FrameReader reader_;  // the thread holding the read event only (see OnReadable)
  Mutex write_mu_;
  std::string pending_ ABSL_GUARDED_BY(write_mu_);
  bool flushing_ ABSL_GUARDED_BY(write_mu_) = false;  // a thread is writing; others only append
  std::string writing_;  // the flushing thread's, outside the lock (see Send)
  bool broken_ ABSL_GUARDED_BY(write_mu_) = false;
  Mutex tasks_mu_;
  std::unordered_map<uint64_t, std::shared_ptr<Task>> tasks_ ABSL_GUARDED_BY(tasks_mu_);
};

// Runs health checks and reconfigures on their own thread, so they never wait behind requests.
class ControlThread {
 public:
  ControlThread() : thread_([this] { Loop(); }) {}
  ~ControlThread() {
    {
      MutexLock lock(&mu_);
      stopping_ = true;
    }
    cv_.SignalAll();
    thread_.join();
  }
  void Submit(std::function<void()> work) {
    {
      MutexLock lock(&mu_);
      work_.push_back(std::move(work));
    }
    cv_.Signal();
  }

 private:
  void Loop() {
    for (;;) {
      std::function<void()> work;
      {
        MutexLock lock(&mu_);
        while (!stopping_ && work_.empty()) cv_.Wait(&mu_);
        if (work_.empty()) return;
        work = std::move(work_.front());
        work_.pop_front();
      }
      work();
    }
  }
  Mutex mu_;
  CondVar cv_;
  std::deque<std::function<void()>> work_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace

void ApplyLogging(const spec::LoggingConfig& logging) {
  Log::SetEncoding(logging.encoding);
  Log::SetLevel(logging.log_level);
}

absl::Status ApplyTracing(tracing::Tracer* tracer, const std::optional<spec::TracingConfig>& t) {
  if (!tracer) return absl::OkStatus();
  tracing::TracingOptions options;
  if (t) {
    options.otlp_endpoint = t->otlp_endpoint;
    options.sampling_ratio = t->sampling_ratio;
  }
  return tracer->Configure(options);
}

class ReplicaServer::Impl {
 public:
  Impl(const ReplicaSpec& spec, DeploymentHost& host, tracing::Tracer* tracer)
      : spec_(spec), host_(host), tracer_(tracer), max_running_(std::clamp(spec.max_ongoing_requests, 1, 256)) {
    if (spec.batching) {
      if (!host.can_batch()) {
        FERRY_LOG(kWarning, "replica", spec.deployment,
                  " has no handle_batch: batching is off, requests go to handle()");
      } else {
        batcher_ = std::make_unique<Batcher<std::shared_ptr<Task>>>(
            BatcherOptions::From(*spec.batching),
            [this](std::vector<std::shared_ptr<Task>>& batch) { RunBatch(batch); });
      }
    }
  }

  // The descriptors close with the UniqueFds, after Run joined every worker.
  ~Impl() = default;

  absl::Status Listen(const std::string& path) {
    epoll_fd_.reset(epoll_create1(EPOLL_CLOEXEC));
    wake_fd_.reset(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC | EFD_SEMAPHORE));
    stop_fd_.reset(eventfd(0, EFD_CLOEXEC));
    listen_fd_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!epoll_fd_ || !wake_fd_ || !stop_fd_ || !listen_fd_)
      return absl::InternalError(StrCat("replica set-up: ", std::strerror(errno)));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof(addr.sun_path)) return absl::InvalidArgumentError(StrCat("socket path too long: ", path));
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    ::unlink(path.c_str());
    if (::bind(listen_fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::listen(listen_fd_.get(), 128) != 0)
      return absl::UnavailableError(StrCat("listen on ", path, ": ", std::strerror(errno)));
    socket_path_ = path;
    Register(listen_fd_.get(), kListenId, EPOLLIN | EPOLLONESHOT, EPOLL_CTL_ADD);
    Register(wake_fd_.get(), kWakeId, EPOLLIN, EPOLL_CTL_ADD);
    return absl::OkStatus();
  }

  void Run() {
    {
      MutexLock lock(&queue_mu_);
      for (int i = 0; i < max_running_ + 1; ++i) workers_.emplace_back([this] { WorkerLoop(); });
    }
    uint64_t value;
    while (::read(stop_fd_.get(), &value, sizeof(value)) < 0 && errno == EINTR) {
    }
    FERRY_LOG(kInfo, "replica", "draining ", ongoing_.load(), " ongoing requests");
    // Stop accepting. The listener stays open (a worker may be in accept4 on it right now) until the
    // workers are joined; unlinked, it gets no new client, and a worker that re-arms it finds it gone.
    accepting_.store(false);
    epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, listen_fd_.get(), nullptr);
    ::unlink(socket_path_.c_str());
    auto deadline =
        SteadyClock::now() + std::chrono::milliseconds(static_cast<int64_t>(spec_.graceful_shutdown_timeout_s * 1000));
    while (ongoing_.load() > 0 && SteadyClock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    if (ongoing_.load() > 0)
      FERRY_LOG(kWarning, "replica", "graceful_shutdown_timeout_s passed with ", ongoing_.load(), " requests ongoing");
    std::vector<std::thread> workers;
    {
      MutexLock lock(&queue_mu_);
      stopping_.store(true);
      workers.swap(workers_);
    }
    uint64_t all = workers.size();
    ssize_t n = ::write(wake_fd_.get(), &all, sizeof(all));
    (void)n;
    for (auto& t : workers) t.join();
    MutexLock lock(&connections_mu_);
    connections_.clear();
  }

  void RequestStop() {
    uint64_t one = 1;
    ssize_t n = ::write(stop_fd_.get(), &one, sizeof(one));
    (void)n;
  }

  uint32_t ongoing() const { return ongoing_.load(); }
  uint64_t total() const { return total_.load(); }

 private:
  void Register(int fd, uint64_t id, uint32_t events, int op) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = id;
    epoll_ctl(epoll_fd_.get(), op, fd, &ev);
  }

  void WorkerLoop() {
    epoll_event ev;
    while (!stopping_.load(std::memory_order_relaxed)) {
      if (std::shared_ptr<Task> task = PopTask()) {
        RunTask(*task);
        continue;
      }
      int n = epoll_wait(epoll_fd_.get(), &ev, 1, -1);
      if (n <= 0) continue;
      if (ev.data.u64 == kWakeId) {
        uint64_t value;
        ssize_t r = ::read(wake_fd_.get(), &value, sizeof(value));  // semaphore: takes one token
        (void)r;
      } else if (ev.data.u64 == kListenId) {
        AcceptAll();
      } else {
        std::shared_ptr<Connection> c = Find(ev.data.u64);
        if (c) {
          HandOff::Acquire(c.get());  // the reader is this thread's now (see OnReadable's re-arm)
          OnReadable(c, ev.events);
        }
      }
    }
  }

  // A queued task, if one may start now. At most max_running_ tasks run at once, so with one thread more
  // than that, some thread is always free to read frames (cancels above all).
  std::shared_ptr<Task> PopTask() {
    MutexLock lock(&queue_mu_);
    if (queue_.empty() || running_ >= max_running_) return nullptr;
    ++running_;
    std::shared_ptr<Task> t = std::move(queue_.front());
    queue_.pop_front();
    return t;
  }

  bool TryStartInline() {
    MutexLock lock(&queue_mu_);
    if (running_ >= max_running_ || !queue_.empty()) return false;
    ++running_;
    return true;
  }

  // Queues tasks for any thread. Whether to wake idle threads for them depends on how long handle()
  // takes: for slow handlers every task gets its own thread; for fast ones (under kInlineBelow on average)
  // a wake-up costs more than the task, so the threads already running drain the queue between reads.
  void PushTasks(std::vector<std::shared_ptr<Task>>& tasks, size_t from) {
    if (from >= tasks.size()) return;
    {
      MutexLock lock(&queue_mu_);
      for (size_t i = from; i < tasks.size(); ++i) queue_.push_back(std::move(tasks[i]));
    }
    if (handle_ns_.load(std::memory_order_relaxed) < kInlineBelow.count()) return;
    uint64_t count = tasks.size() - from;
    ssize_t n = ::write(wake_fd_.get(), &count, sizeof(count));
    (void)n;
  }

  void AcceptAll() {
    for (;;) {
      int fd = ::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) break;
      auto c = std::make_shared<Connection>(fd, next_id_.fetch_add(1));
      {
        MutexLock lock(&connections_mu_);
        connections_[c->id()] = c;
      }
      Register(fd, c->id(), EPOLLIN | EPOLLRDHUP | EPOLLONESHOT, EPOLL_CTL_ADD);
    }
    if (accepting_.load()) Register(listen_fd_.get(), kListenId, EPOLLIN | EPOLLONESHOT, EPOLL_CTL_MOD);
  }

  std::shared_ptr<Connection> Find(uint64_t id) {
    MutexLock lock(&connections_mu_);
    auto it = connections_.find(id);
    return it == connections_.end() ? nullptr : it->second;
  }

  void Drop(const std::shared_ptr<Connection>& c, std::string_view why) {
    FERRY_LOG(kDebug, "replica", "client connection closed: ", why);
    epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, c->fd(), nullptr);
    c->Abandon();
    MutexLock lock(&connections_mu_);
    connections_.erase(c->id());
  }

  // This thread holds the connection's one-shot read event: read what is there, re-arm, then act.
  void OnReadable(const std::shared_ptr<Connection>& c, uint32_t events) {
    static constexpr size_t kChunk = 64 * 1024;
    bool eof = false;
    for (;;) {
      char* at = c->reader().Prepare(kChunk);
      ssize_t n = ::read(c->fd(), at, kChunk);
      if (n > 0) {
        c->reader().Commit(static_cast<size_t>(n));
        if (static_cast<size_t>(n) < kChunk) break;
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      eof = true;  // 0: closed; < 0: error
      break;
    }
    std::vector<std::shared_ptr<Task>> tasks;
    FrameHeader header;
    std::string_view payload;
    for (;;) {
      absl::StatusOr<bool> got = c->reader().Next(&header, &payload);
      if (!got.ok()) {
        Drop(c, Message(got.status()));
        return;
      }
      if (!*got) break;
      absl::Status s = OnFrame(c, header, payload, tasks);
      if (!s.ok()) {
        Drop(c, Message(s));
        return;
      }
    }
    if (eof) {
      Drop(c, "peer closed the connection");
      return;
    }
    // Re-armed, the connection's next read event may go to another thread: this one is done with the reader.
    HandOff::Release(c.get());
    Register(c->fd(), c->id(), EPOLLIN | EPOLLRDHUP | EPOLLONESHOT, EPOLL_CTL_MOD);
    if (tasks.empty()) return;
    if (batcher_) {
      // Each request's own work (a model's parsing and validation) happens now, while its batch
      // gathers, instead of inside the batch that every request in it waits for.
      if (host_.can_prepare()) {
        for (auto& task : tasks) {
          task->host = &host_;
          if (task->trace) task->trace->prepare_start_ns = tracing::UnixNanos();
          task->prepared = host_.Prepare(task->request, task->cancelled);
          if (task->trace) task->trace->prepare_end_ns = tracing::UnixNanos();
        }
      }
      batcher_->AddAll(tasks);
      return;
    }
    if (TryStartInline()) {
      PushTasks(tasks, 1);
      RunTask(*tasks[0]);
    } else {
      PushTasks(tasks, 0);
    }
  }

  absl::Status OnFrame(const std::shared_ptr<Connection>& c, const FrameHeader& header, std::string_view payload,
                       std::vector<std::shared_ptr<Task>>& tasks) {
    switch (header.kind) {
      case FrameKind::kRequest: {
        auto task = std::make_shared<Task>();
        task->payload.assign(payload);
        absl::Status s = transport::DecodeRequest(task->payload, &task->request);
        if (!s.ok()) return s;
        task->stream_id = header.stream_id;
        task->connection = c;
        if (tracer_ && tracer_->enabled()) StartTrace(*task);
        c->AddTask(task);
        ongoing_.fetch_add(1, std::memory_order_relaxed);
        tasks.push_back(std::move(task));
        return absl::OkStatus();
      }
      case FrameKind::kCancel:
        c->CancelTask(header.stream_id);
        return absl::OkStatus();
      case FrameKind::kHello: {
        transport::Hello hello;
        absl::Status s = transport::DecodeHello(payload, &hello);
        if (!s.ok()) return s;
        if (hello.version != transport::kProtocolVersion)
          return absl::FailedPreconditionError(StrCat("client speaks protocol version ", hello.version));
        std::string frame;
        transport::AppendHelloAck(frame, header.stream_id,
                                  {transport::kProtocolVersion, spec_.replica_id, spec_.deployment});
        c->Send(frame);
        return absl::OkStatus();
      }
      case FrameKind::kStats: {
        std::string frame;
        transport::StatsReply stats{ongoing_.load(), 0, total_.load(), Counts(processing_), Counts(batch_size_)};
        if (tracer_) {
          stats.spans_exported = tracer_->exported();
          stats.spans_dropped = tracer_->dropped();
        }
        transport::AppendStatsReply(frame, header.stream_id, stats);
        c->Send(frame);
        return absl::OkStatus();
      }
      case FrameKind::kHealth:
      case FrameKind::kReconfigure: {
        bool health = header.kind == FrameKind::kHealth;
        std::string body(payload);
        control_.Submit([this, c, body = std::move(body), health, id = header.stream_id] {
          absl::Status s;
          if (health) {
            s = host_.CheckHealth();
          } else {
            std::string_view update;
            s = transport::DecodeReconfigure(body, &update);
            if (s.ok()) s = ApplyUpdate(update);
          }
          std::string frame;
          transport::AppendStatusReply(frame, health ? FrameKind::kHealthReply : FrameKind::kReconfigureReply, id,
                                       {s.ok(), Message(s)});
          c->Send(frame);
        });
        return absl::OkStatus();
      }
      default:
        return absl::InvalidArgumentError(
            StrCat("unexpected ", transport::FrameKindName(header.kind), " frame from a client"));
    }
  }

  // Traces `task` when it carries a sampled traceparent.
  void StartTrace(Task& task) {
    for (auto& [name, value] : task.request.headers) {
      if (name != "traceparent") continue;
      tracing::SpanContext parent;
      if (!tracing::ParseTraceparent(value, &parent) || !parent.sampled) return;
      auto t = std::make_unique<TaskTrace>();
      t->parent = parent;
      t->arrived_ns = tracing::UnixNanos();
      t->replica_span = tracing::NewSpanId();
      t->user_span = tracing::NewSpanId();
      t->traceparent = tracing::FormatTraceparent({parent.trace_id, t->user_span, true});
      value = t->traceparent;
      task.trace = std::move(t);
      return;
    }
  }

  // Records the spans of a traced task that was just answered with `status`.
  // `answered_ns`: when its answer was handed to the connection.
  void EndTrace(const Task& task, int status, size_t batch_size, int64_t answered_ns) {
    const TaskTrace& t = *task.trace;
    const std::string request_id(task.request.request_id);
    if (t.prepare_start_ns != 0) {
      tracing::Span prepare;
      prepare.trace_id = t.parent.trace_id;
      prepare.span_id = tracing::NewSpanId();
      prepare.parent_span_id = t.replica_span;
      prepare.name = StrCat(spec_.deployment, ".prepare");
      prepare.start_unix_ns = t.prepare_start_ns;
      prepare.end_unix_ns = t.prepare_end_ns;
      prepare.attributes = {{"ferry.deployment", spec_.deployment},
                            {"code.function", std::string("prepare")},
                            {"ferry.request_id", request_id}};
      tracer_->Record(std::move(prepare));
    }
    if (t.user_start_ns != 0) {
      tracing::Span user;
      user.trace_id = t.parent.trace_id;
      user.span_id = t.user_span;
      user.parent_span_id = t.replica_span;
      user.name = StrCat(spec_.deployment, batch_size ? ".handle_batch" : ".handle");
      user.start_unix_ns = t.user_start_ns;
      user.end_unix_ns = t.user_end_ns;
      user.attributes = {{"ferry.deployment", spec_.deployment},
                         {"code.function", std::string(batch_size ? "handle_batch" : "handle")},
                         {"ferry.request_id", request_id}};
      if (batch_size) user.attributes.push_back({"ferry.batch_size", static_cast<int64_t>(batch_size)});
      user.error = status >= 500;
      tracer_->Record(std::move(user));
    }
    tracing::Span replica;
    replica.trace_id = t.parent.trace_id;
    replica.span_id = t.replica_span;
    replica.parent_span_id = t.parent.span_id;
    replica.name = "ferry.replica";
    replica.kind = tracing::SpanKind::kServer;
    replica.start_unix_ns = t.arrived_ns;
    replica.end_unix_ns = answered_ns;
    replica.attributes = {{"ferry.application", spec_.application},
                          {"ferry.deployment", spec_.deployment},
                          {"ferry.replica", spec_.replica_id},
                          {"ferry.request_id", request_id},
                          {"http.response.status_code", static_cast<int64_t>(status)}};
    replica.error = status >= 500;
    tracer_->Record(std::move(replica));
  }

  // A reconfigure frame's JSON: {"user_config": ..., "max_ongoing_requests": N, "logging_config": {...},
  // "tracing": {...} or null}, every key optional.
  absl::Status ApplyUpdate(std::string_view text) {
    absl::StatusOr<spec::ReplicaUpdate> update =
        spec::ReplicaUpdateFromJson(nlohmann::json::parse(text, nullptr, false));
    if (!update.ok()) return update.status();
    if (update->logging) ApplyLogging(*update->logging);
    if (update->tracing) {
      if (absl::Status s = ApplyTracing(tracer_, *update->tracing); !s.ok()) return s;
    }
    if (update->max_ongoing_requests) SetMaxRunning(std::clamp(*update->max_ongoing_requests, 1, 256));
    if (update->user_config) return host_.Reconfigure(update->user_config->dump());
    return absl::OkStatus();
  }

  // More threads when the limit grows; a lower limit just lets fewer run.
  void SetMaxRunning(int n) {
    MutexLock lock(&queue_mu_);
    max_running_ = n;
    while (static_cast<int>(workers_.size()) < n + 1 && !stopping_.load())
      workers_.emplace_back([this] { WorkerLoop(); });
  }

  void RunBatch(std::vector<std::shared_ptr<Task>>& batch) {
    std::vector<const transport::RequestMessage*> requests;
    std::vector<const std::atomic<bool>*> cancelled;
    std::vector<void*> prepared;
    std::vector<Task*> live;
    for (auto& task : batch) {
      if (task->cancelled.load()) {  // gone before its batch ran: answered alone
        FerryResponseSink response;
        response.status = 499;
        response.body = R"({"error": "request cancelled before it started"})";
        Complete(*task, response);
        continue;
      }
      requests.push_back(&task->request);
      cancelled.push_back(&task->cancelled);
      prepared.push_back(task->prepared);
      live.push_back(task.get());
    }
    if (live.empty()) return;
    std::vector<FerryResponseSink> responses;
    auto start = SteadyClock::now();
    const bool traced = std::any_of(live.begin(), live.end(), [](Task* t) { return t->trace != nullptr; });
    const int64_t user_start = traced ? tracing::UnixNanos() : 0;
    host_.HandleBatch(requests, cancelled, prepared, &responses);
    if (traced) {
      const int64_t user_end = tracing::UnixNanos();
      for (Task* t : live)
        if (t->trace) t->trace->user_start_ns = user_start, t->trace->user_end_ns = user_end;
    }
    // Every request of a batch took the batch's time.
    double took = std::chrono::duration<double>(SteadyClock::now() - start).count();
    for (size_t i = 0; i < live.size(); ++i) processing_.Observe(took);
    batch_size_.Observe(static_cast<double>(live.size()));
    // A batch's answers leave together: one write per connection, not one per request.
    std::map<Connection*, std::string> frames;
    transport::HeaderList headers;
    for (size_t i = 0; i < live.size(); ++i) {
      headers.clear();
      for (const auto& [k, v] : responses[i].headers) headers.emplace_back(k, v);
      transport::AppendResponse(frames[live[i]->connection.get()], live[i]->stream_id,
                                {static_cast<uint16_t>(responses[i].status), headers, responses[i].body});
    }
    const int64_t answered_ns = traced ? tracing::UnixNanos() : 0;
    for (auto& [connection, bytes] : frames) connection->Send(bytes);
    for (size_t i = 0; i < live.size(); ++i)
      if (live[i]->trace) EndTrace(*live[i], responses[i].status, live.size(), answered_ns);
    for (Task* task : live) Forget(*task);
  }

  void Forget(Task& task) {
    task.connection->RemoveTask(task.stream_id);
    ongoing_.fetch_sub(1, std::memory_order_relaxed);
    total_.fetch_add(1, std::memory_order_relaxed);
  }

  // Sends `task`'s answer and forgets it.
  void Complete(Task& task, const FerryResponseSink& response) {
    thread_local transport::HeaderList headers;
    thread_local std::string frame;
    headers.clear();
    for (const auto& [k, v] : response.headers) headers.emplace_back(k, v);
    frame.clear();
    transport::AppendResponse(frame, task.stream_id, {static_cast<uint16_t>(response.status), headers, response.body});
    const int64_t answered_ns = task.trace ? tracing::UnixNanos() : 0;
    task.connection->Send(frame);
    if (task.trace) EndTrace(task, response.status, 0, answered_ns);
    Forget(task);
  }

  void RunTask(Task& task) {
    FerryResponseSink response;
    if (task.cancelled.load()) {
      response.status = 499;
      response.body = R"({"error": "request cancelled before it started"})";
    } else {
      auto start = SteadyClock::now();
      if (task.trace) task.trace->user_start_ns = tracing::UnixNanos();
      host_.Handle(task.request, task.cancelled, &response);
      if (task.trace) task.trace->user_end_ns = tracing::UnixNanos();
      // Moving average of handle() time, 1/8 weight to the newest.
      int64_t took = std::chrono::duration_cast<std::chrono::nanoseconds>(SteadyClock::now() - start).count();
      processing_.Observe(static_cast<double>(took) / 1e9);
      int64_t avg = handle_ns_.load(std::memory_order_relaxed);
      handle_ns_.store(avg + (took - avg) / 8, std::memory_order_relaxed);
    }
    Complete(task, response);
    MutexLock lock(&queue_mu_);
    --running_;
  }

  static transport::HistogramCounts Counts(const metrics::Histogram& h) {
    transport::HistogramCounts out;
    for (size_t i = 0; i <= h.bounds().size(); ++i) out.counts.push_back(h.bucket(i));
    out.sum = h.sum();
    return out;
  }

  const ReplicaSpec& spec_;
  DeploymentHost& host_;
  tracing::Tracer* tracer_;
  // Reported in stats replies; the node renders them as this replica's histograms.
  metrics::Histogram processing_{metrics::LatencyBucketsSeconds()};
  metrics::Histogram batch_size_{metrics::BatchSizeBuckets()};

  // Set in Listen, before the workers start; read-only while they run.
  UniqueFd epoll_fd_;
  UniqueFd listen_fd_;
  UniqueFd wake_fd_;
  UniqueFd stop_fd_;
  std::atomic<bool> accepting_{true};
  std::string socket_path_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint32_t> ongoing_{0};
  // Starts high, so a new deployment gets parallel threads until it has shown that it is fast.
  std::atomic<int64_t> handle_ns_{1'000'000};
  std::atomic<uint64_t> total_{0};
  std::atomic<uint64_t> next_id_{kFirstConnectionId};
  Mutex connections_mu_;
  std::unordered_map<uint64_t, std::shared_ptr<Connection>> connections_ ABSL_GUARDED_BY(connections_mu_);
  Mutex queue_mu_;
  std::deque<std::shared_ptr<Task>> queue_ ABSL_GUARDED_BY(queue_mu_);
  int running_ ABSL_GUARDED_BY(queue_mu_) = 0;
  int max_running_ ABSL_GUARDED_BY(queue_mu_);
  std::vector<std::thread> workers_ ABSL_GUARDED_BY(queue_mu_);
  ControlThread control_;
  // Last: destroyed first, so no batch runs while the rest goes away.
  std::unique_ptr<Batcher<std::shared_ptr<Task>>> batcher_;
};

ReplicaServer::ReplicaServer(const ReplicaSpec& spec, DeploymentHost& host, tracing::Tracer* tracer)
    : impl_(std::make_unique<Impl>(spec, host, tracer)) {}
ReplicaServer::~ReplicaServer() = default;
absl::Status ReplicaServer::Listen(const std::string& path) { return impl_->Listen(path); }
void ReplicaServer::Run() { impl_->Run(); }
void ReplicaServer::RequestStop() { impl_->RequestStop(); }
uint32_t ReplicaServer::ongoing() const { return impl_->ongoing(); }
uint64_t ReplicaServer::total() const { return impl_->total(); }

}  // namespace ferry::replica
