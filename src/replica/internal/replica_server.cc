#include "replica/internal/replica_server.h"

#include <errno.h>
#include <sys/eventfd.h>
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
#include "common/mutex.h"
#include "common/unique_fd.h"
#include "endpoints/wire.h"
#include "handle/handle_client.h"
#include "metrics/metrics.h"
#include "replica/internal/batcher.h"
#include "replica/internal/executor.h"
#include "replica/internal/frame_server.h"
#include "replica/internal/span_recorder.h"
#include "replica/internal/task.h"
#include "tracing/tracing.h"
#include "transport/address.h"
#include "transport/frame.h"

namespace ferry::replica {

using transport::FrameHeader;
using transport::FrameKind;

namespace {

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
  ~Impl() {
    while (finishing_.load() > 0) std::this_thread::yield();  // a few instructions left, never a wait on I/O
  }
  Impl(const ReplicaSpec& spec, DeploymentHost& host, tracing::Tracer* tracer, handle::HandleClient* handles)
      : spec_(spec),
        host_(host),
        handles_(handles),
        spans_(spec, tracer),
        tracer_(tracer),
        executor_(
            std::clamp(spec.max_ongoing_requests, 1, 256), [this] { ThreadLoop(); },
            [this](uint64_t n) { frames_.Wake(n); }) {
    if (handles_) {
      handles_->SetSubscribe([this] { SubscribeIfWanted(); });
      handles_->SetWake([this] { WakeController(); });
    }
    if (spec.batching) {
      if (!host.can_batch()) {
        FERRY_LOG(kWarning, "replica", spec.deployment,
                  " has no handle_batch: batching is off, requests go to handle()");
      } else {
        batcher_ = std::make_unique<Batcher<TaskPtr>>(BatcherOptions::From(*spec.batching),
                                                      [this](std::vector<TaskPtr>& batch) { RunBatch(batch); });
      }
    }
  }

  absl::Status Listen(const std::string& path) {
    stop_fd_.reset(eventfd(0, EFD_CLOEXEC));
    if (!stop_fd_) return absl::InternalError(StrCat("replica set-up: ", std::strerror(errno)));
    return frames_.Listen(path);
  }

  absl::StatusOr<uint16_t> ListenTcp(const std::string& host) { return frames_.ListenTcp(host, 0); }

  void Run() {
    executor_.Start();
    uint64_t value;
    while (::read(stop_fd_.get(), &value, sizeof(value)) < 0 && errno == EINTR) {
    }
    FERRY_LOG(kInfo, "replica", "draining ", ongoing_.load(), " ongoing requests");
    frames_.StopAccepting();
    CloseSessions();
    auto deadline =
        SteadyClock::now() + std::chrono::milliseconds(static_cast<int64_t>(spec_.graceful_shutdown_timeout_s * 1000));
    while (ongoing_.load() > 0 && SteadyClock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    if (ongoing_.load() > 0)
      FERRY_LOG(kWarning, "replica", "graceful_shutdown_timeout_s passed with ", ongoing_.load(), " requests ongoing");
    executor_.Stop();
    frames_.CloseAll();
  }

  void RequestStop() {
    uint64_t one = 1;
    ssize_t n = ::write(stop_fd_.get(), &one, sizeof(one));
    (void)n;
  }

  uint32_t ongoing() const { return ongoing_.load(); }
  uint64_t total() const { return total_.load(); }

 private:
  // A polling thread's handler: the requests one read brings are collected, then dispatched once the
  // connection is re-armed.
  class ReadHandler : public FrameServer::Handler {
   public:
    explicit ReadHandler(Impl& server) : server_(server) {}
    absl::Status OnFrame(const std::shared_ptr<ClientConnection>& c, const FrameHeader& header,
                         std::string_view payload) override {
      return server_.OnFrame(c, header, payload, tasks_);
    }
    void OnFramesHandled() override { server_.Dispatch(tasks_); }

   private:
    Impl& server_;
    std::vector<TaskPtr> tasks_;  // reused: its capacity stays with the thread
  };

  void ThreadLoop() {
    ReadHandler handler(*this);
    while (!executor_.stopping()) {
      if (TaskPtr task = executor_.Next()) {
        RunTask(task);
        continue;
      }
      frames_.Poll(handler);
    }
  }

  // Starts the requests one read brought: into their batch, or onto threads (one on this thread).
  void Dispatch(std::vector<TaskPtr>& tasks) {
    if (tasks.empty()) return;
    if (batcher_) {
      // WebSocket sessions run on threads of their own, never in batches.
      thread_local std::vector<TaskPtr> sessions;
      sessions.clear();
      std::erase_if(tasks, [](const TaskPtr& t) {
        if (t->request.body_mode != transport::BodyMode::kWebSocket) return false;
        sessions.push_back(t);
        return true;
      });
      if (TaskPtr mine = executor_.Submit(sessions)) RunTask(mine);
      if (tasks.empty()) return;
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
      tasks.clear();
      return;
    }
    if (TaskPtr mine = executor_.Submit(tasks)) RunTask(mine);
  }

  absl::Status OnFrame(const std::shared_ptr<ClientConnection>& c, const FrameHeader& header, std::string_view payload,
                       std::vector<TaskPtr>& tasks) {
    // A cluster with a token: nothing but a hello that carries it, first.
    if (!transport::FrameToken().empty() && !c->admitted() && header.kind != FrameKind::kHello)
      return absl::PermissionDeniedError("a frame before a hello with the cluster's token");
    switch (header.kind) {
      case FrameKind::kRequest: {
        auto task = std::make_shared<Task>();
        task->payload.assign(payload);
        absl::Status s = transport::DecodeRequest(task->payload, &task->request);
        if (!s.ok()) return s;
        task->stream_id = header.stream_id;
        task->connection = c;
        if (spans_.enabled()) spans_.Start(*task);
        c->Track(task->stream_id, task);
        ongoing_.fetch_add(1, std::memory_order_relaxed);
        switch (task->request.body_mode) {
          case transport::BodyMode::kWhole:
            break;
          case transport::BodyMode::kStreamed:
            // A deployment that takes whole bodies (batches, models) gets this one once it has all come.
            if (batcher_ || host_.is_model()) {
              StartGathering(task);
              return absl::OkStatus();
            }
            break;
          case transport::BodyMode::kWebSocket:
            OpenSession(task);
            break;
        }
        tasks.push_back(std::move(task));
        return absl::OkStatus();
      }
      case FrameKind::kChunk:
      case FrameKind::kEnd:
      case FrameKind::kMessage:
      case FrameKind::kClose:
        return OnInbound(*c, header, payload, tasks);
      case FrameKind::kCancel:
        c->Cancel(header.stream_id);
        return absl::OkStatus();
      case FrameKind::kCredit: {
        uint32_t bytes = 0;
        absl::Status s = transport::DecodeCredit(payload, &bytes);
        if (!s.ok()) return s;
        c->AddCredit(header.stream_id, bytes);
        return absl::OkStatus();
      }
      case FrameKind::kHello: {
        transport::Hello hello;
        absl::Status s = transport::DecodeHello(payload, &hello);
        if (!s.ok()) return s;
        if (hello.version != transport::kProtocolVersion)
          return absl::FailedPreconditionError(StrCat("client speaks protocol version ", hello.version));
        if (!transport::FrameToken().empty()) {
          if (!transport::IsFrameToken(hello.token))
            return absl::PermissionDeniedError("a hello without the cluster's token");
          c->Admit();
        }
        std::string frame;
        transport::AppendHelloAck(frame, header.stream_id,
                                  {transport::kProtocolVersion, spec_.replica_id, spec_.deployment});
        c->Send(frame);
        if (hello.client == "node-agent") {
          {
            MutexLock lock(&node_mu_);
            node_ = c;
            subscribed_ = false;
          }
          SubscribeIfWanted();
        }
        return absl::OkStatus();
      }
      case FrameKind::kEndpoints: {
        std::string_view text;
        absl::Status s = transport::DecodeText(payload, &text);
        if (!s.ok()) return s;
        if (!handles_) return absl::OkStatus();
        nlohmann::json json = nlohmann::json::parse(text, nullptr, false);
        absl::StatusOr<std::shared_ptr<const endpoints::Snapshot>> snapshot = endpoints::SnapshotFromJson(json);
        if (!snapshot.ok()) return snapshot.status();
        handles_->OnPublished(std::move(*snapshot));
        SendLoad(*c, 0);  // the node learns at once which snapshot this replica routes by
        return absl::OkStatus();
      }
      case FrameKind::kLoad:
        if (absl::Status s = transport::DecodeEmpty(payload); !s.ok()) return s;
        SendLoad(*c, header.stream_id);
        return absl::OkStatus();
      case FrameKind::kStats: {
        std::string frame;
        transport::StatsReply stats{ongoing_.load(), 0, total_.load(), Counts(processing_), Counts(batch_size_)};
        stats.user_metrics = UserMetrics().Snapshot();
        stats.model_ids = LoadedModelIds();
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

  // What the client sends after a request on its stream: a streamed body's pieces and end, a WebSocket
  // session's messages and close. Frames for a stream that ended meanwhile are dropped.
  absl::Status OnInbound(ClientConnection& c, const FrameHeader& header, std::string_view payload,
                         std::vector<TaskPtr>& tasks) {
    std::string_view data;
    transport::StreamEnd end;
    transport::WsMessage message;
    transport::WsClose close;
    absl::Status s;
    switch (header.kind) {
      case FrameKind::kChunk:
        s = transport::DecodeChunk(payload, &data);
        break;
      case FrameKind::kEnd:
        s = transport::DecodeEnd(payload, &end);
        break;
      case FrameKind::kMessage:
        s = transport::DecodeMessage(payload, &message);
        break;
      default:
        s = transport::DecodeClose(payload, &close);
        break;
    }
    if (!s.ok()) return s;
    auto task = std::dynamic_pointer_cast<Task>(c.Find(header.stream_id));
    if (!task) return absl::OkStatus();
    const transport::BodyMode mode = task->request.body_mode;
    const bool body_frame = header.kind == FrameKind::kChunk || header.kind == FrameKind::kEnd;
    if ((mode == transport::BodyMode::kStreamed) != body_frame || mode == transport::BodyMode::kWhole)
      return absl::InvalidArgumentError(StrCat("unexpected ", transport::FrameKindName(header.kind),
                                               " frame for request ", task->request.request_id));
    if (header.kind == FrameKind::kChunk) {
      if (!Gather(*task, data)) task->Push(data, false);
      return absl::OkStatus();
    }
    if (header.kind == FrameKind::kEnd) {
      if (!EndGathering(task, end.ok, tasks)) task->EndInbound(end.ok);
      return absl::OkStatus();
    }
    bool schedule = false;
    {
      MutexLock lock(&task->flow_mu);
      if (header.kind == FrameKind::kMessage) {
        task->inbound.push_back(Task::Piece{std::string(message.data), message.binary});
      } else if (!task->inbound_ended) {
        task->inbound_ended = true;
        if (!task->closing) {
          task->close_code = close.code;
          task->close_reason.assign(close.reason);
        }
      }
      schedule = !task->scheduled;
      task->scheduled = true;
    }
    if (schedule) tasks.push_back(std::move(task));
    return absl::OkStatus();
  }

  // A streamed body for a deployment that takes whole ones: its pieces gather in the task (credited back
  // at once: max_body_bytes, which the proxy enforces, bounds them), and the request runs at its end.
  void StartGathering(const TaskPtr& task) {
    {
      MutexLock lock(&task->flow_mu);
      task->gathering = true;
    }
    task->gathered_body.assign(task->request.body);
    task->OnCancel([this, weak = std::weak_ptr<Task>(task)] {
      std::vector<TaskPtr> none;
      if (TaskPtr t = weak.lock()) EndGathering(t, false, none);
    });
  }

  bool Gather(Task& task, std::string_view data) {
    {
      MutexLock lock(&task.flow_mu);
      if (!task.gathering) return false;
    }
    task.gathered_body.append(data);
    SendCredit(task, data.size());
    return true;
  }

  // Ends a gathering body: complete, the request joins `tasks`; broken (or cancelled), it is answered.
  bool EndGathering(const TaskPtr& task, bool ok, std::vector<TaskPtr>& tasks) {
    {
      MutexLock lock(&task->flow_mu);
      if (!task->gathering) return false;
      task->gathering = false;
    }
    if (ok && !task->cancelled.load()) {
      task->request.body = task->gathered_body;
      task->request.body_mode = transport::BodyMode::kWhole;
      tasks.push_back(task);
    } else {
      Complete(*task, Cancelled());
    }
    return true;
  }

  void SendCredit(Task& task, size_t bytes) {
    if (bytes == 0) return;
    std::string frame;
    transport::AppendCredit(frame, task.stream_id, static_cast<uint32_t>(std::min<size_t>(bytes, UINT32_MAX)));
    task.connection->Send(frame);
  }

  // A streamed body as handle() reads it: the bytes that came with the request, then each piece, credited
  // back to the client as it is taken.
  class TaskBody : public BodySource {
   public:
    TaskBody(Impl& server, Task& task) : server_(server), task_(task), first_(task.request.body) {}
    int Next(std::string_view* chunk) override {
      if (!first_.empty()) {
        *chunk = first_;
        first_ = {};
        return 1;
      }
      for (;;) {
        int rc = task_.AwaitPiece(&current_);
        if (rc != 1) return rc;
        if (current_.empty()) continue;
        server_.SendCredit(task_, current_.size());
        *chunk = current_;
        return 1;
      }
    }

   private:
    Impl& server_;
    Task& task_;
    std::string_view first_;
    std::string current_;
  };

  // A WebSocket session's sending side: messages wait for the proxy's credit like a stream's chunks; what
  // the deployment sends before it accepted goes out after the 101.
  class SessionPeer : public WebSocketPeer {
   public:
    SessionPeer(Impl& server, const TaskPtr& task) : server_(server), task_(task.get()), weak_(task) {}
    bool Send(std::string_view data, bool binary) override {
      {
        MutexLock lock(&task_->flow_mu);
        if (task_->closing || task_->inbound_ended) return false;
      }
      if (task_->stream_started && !task_->AwaitCredit()) return false;
      std::string frame;
      transport::AppendMessage(frame, task_->stream_id, {binary, data});
      task_->Spend(data.size());
      ++task_->chunks_sent;
      task_->bytes_sent += data.size();
      return Out(frame);
    }
    void Close(uint16_t code, std::string_view reason) override {
      bool schedule = false;
      {
        MutexLock lock(&task_->flow_mu);
        if (task_->closing || task_->inbound_ended) return;
        task_->closing = true;
        task_->close_code = code;
        task_->close_reason.assign(reason);
        schedule = !task_->scheduled;
        task_->scheduled = true;
      }
      std::string frame;
      transport::AppendClose(frame, task_->stream_id, {code, reason});
      Out(frame);
      if (schedule)
        if (TaskPtr t = weak_.lock()) server_.executor_.Enqueue(std::move(t));
    }
    // The session was accepted: the 101, then what was sent meanwhile.
    void Accepted() {
      std::string frame;
      transport::AppendResponseStart(frame, task_->stream_id, {101, {}});
      MutexLock lock(&mu_);
      frame.append(early_);
      early_.clear();
      accepted_ = true;
      task_->connection->Send(frame);
    }

   private:
    bool Out(std::string_view frame) {
      {
        MutexLock lock(&mu_);
        if (!accepted_) {
          early_.append(frame);
          return true;
        }
      }
      task_->connection->Send(frame);
      return true;
    }
    Impl& server_;
    Task* task_;
    std::weak_ptr<Task> weak_;
    Mutex mu_;
    bool accepted_ ABSL_GUARDED_BY(mu_) = false;
    std::string early_ ABSL_GUARDED_BY(mu_);
  };

  // A new session: it runs (opens) now; a cancel (the client gone) brings it back to a thread to close.
  void OpenSession(const TaskPtr& task) {
    task->peer = std::make_unique<SessionPeer>(*this, task);
    task->ws.peer = task->peer.get();
    {
      MutexLock lock(&task->flow_mu);
      task->scheduled = true;
    }
    task->OnCancel([this, weak = std::weak_ptr<Task>(task)] {
      TaskPtr t = weak.lock();
      if (!t) return;
      bool schedule = false;
      {
        MutexLock lock(&t->flow_mu);
        schedule = !t->scheduled;
        t->scheduled = true;
      }
      if (schedule) executor_.Enqueue(std::move(t));
    });
  }

  // Runs a session on this thread: opens it (the first time), then hands the deployment every message
  // that came, in order, and its close; returns when none is left (the next message schedules it again).
  void RunSession(Task& task) {
    const auto start = SteadyClock::now();
    auto* peer = static_cast<SessionPeer*>(task.peer.get());
    if (!task.ws_opened) {
      task.ws_opened = true;
      FerryResponseSink refusal;
      if (task.cancelled.load()) {
        Complete(task, Cancelled());
        executor_.Done(std::nullopt);
        return;
      }
      if (!host_.OpenWebSocket(task.request, task.cancelled, &task.ws, &task.ws_session, &refusal)) {
        Complete(task, refusal);
        executor_.Done(SteadyClock::now() - start);
        return;
      }
      task.stream_started = true;
      peer->Accepted();
      MutexLock lock(&sessions_mu_);
      sessions_[&task] = std::static_pointer_cast<Task>(task.connection->Find(task.stream_id));
    }
    for (;;) {
      Task::Piece piece;
      bool end = false;
      uint16_t code = 1006;
      std::string reason;
      {
        MutexLock lock(&task.flow_mu);
        if (!task.inbound.empty()) {
          piece = std::move(task.inbound.front());
          task.inbound.pop_front();
        } else if (task.inbound_ended || task.closing || task.cancelled.load()) {
          end = true;
          code = task.close_code;
          reason = task.close_reason;
        } else {
          task.scheduled = false;
          break;
        }
      }
      if (end) {
        host_.WebSocketClosed(task.ws_session, code, reason);
        task.ws_session = nullptr;
        {
          MutexLock lock(&sessions_mu_);
          sessions_.erase(&task);
        }
        FerryResponseSink switched;
        switched.status = 101;
        EndStream(task, switched);
        break;
      }
      absl::Status s = host_.WebSocketMessage(task.ws_session, piece.data, piece.binary);
      SendCredit(task, piece.data.size());
      if (!s.ok()) {
        FERRY_LOG(kWarning, "replica", "request ", task.request.request_id,
                  ": on_message failed; closing the session with 1011: ", s.message());
        const std::string why(s.message());
        peer->Close(1011, std::string_view(why).substr(0, 123));
      }
    }
    executor_.Done(SteadyClock::now() - start);
  }

  // Drain: every open session is closed with 1001 (going away), so that it ends before the grace period.
  void CloseSessions() {
    std::vector<TaskPtr> open;
    {
      MutexLock lock(&sessions_mu_);
      for (auto& [raw, weak] : sessions_)
        if (TaskPtr t = weak.lock()) open.push_back(std::move(t));
    }
    for (auto& t : open) t->peer->Close(1001, "replica shutting down");
  }

  // Asks the node agent for endpoint snapshots once user code holds a handle and the node is connected.
  void SubscribeIfWanted() {
    if (!handles_ || !handles_->wanted()) return;
    std::shared_ptr<ClientConnection> node;
    {
      MutexLock lock(&node_mu_);
      if (subscribed_ || !node_) return;
      subscribed_ = true;
      node = node_;
    }
    std::string frame;
    transport::AppendEmpty(frame, FrameKind::kSubscribe, 0);
    node->Send(frame);
  }

  // A call waits for a deployment with no replica: the node gets this replica's load (the waiting call
  // in it) and then a wake, so that the controller starts a replica now.
  void WakeController() {
    std::shared_ptr<ClientConnection> node;
    {
      MutexLock lock(&node_mu_);
      if (!subscribed_) return;
      node = node_;
    }
    SendLoad(*node, 0);
    std::string frame;
    transport::AppendEmpty(frame, FrameKind::kWake, 0);
    node->Send(frame);
  }

  void SendLoad(ClientConnection& c, uint64_t stream_id) {
    std::string frame;
    transport::AppendText(frame, FrameKind::kLoadReply, stream_id,
                          handles_ && handles_->wanted() ? handle::LoadReplyJson(*handles_) : std::string("{}"));
    c.Send(frame);
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
    if (update->max_ongoing_requests) executor_.SetMaxRunning(std::clamp(*update->max_ongoing_requests, 1, 256));
    if (update->user_config) return host_.Reconfigure(update->user_config->dump());
    return absl::OkStatus();
  }

  void RunBatch(std::vector<TaskPtr>& batch) {
    std::vector<const transport::RequestMessage*> requests;
    std::vector<const std::atomic<bool>*> cancelled;
    std::vector<void*> prepared;
    std::vector<Task*> live;
    for (auto& task : batch) {
      if (task->cancelled.load()) {  // gone before its batch ran: answered alone
        Complete(*task, Cancelled());
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
    std::map<ClientConnection*, std::string> frames;
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
      if (live[i]->trace) spans_.End(*live[i], responses[i].status, live.size(), answered_ns);
    for (Task* task : live) Forget(*task);
  }

  static FerryResponseSink Cancelled() {
    FerryResponseSink response;
    response.status = 499;
    response.body = R"({"error": "request cancelled before it started"})";
    return response;
  }

  void Forget(Task& task) {
    task.connection->Untrack(task.stream_id);
    ongoing_.fetch_sub(1, std::memory_order_relaxed);
    total_.fetch_add(1, std::memory_order_relaxed);
  }

  // Sends `task`'s answer and forgets it.
  // A thread that ends a request (often a detached stream's, outside the executor) is inside the server
  // from its answer's frame to its bookkeeping: the server is not destroyed meanwhile (a client may tear
  // it down as soon as the answer arrives).
  struct Finishing {
    explicit Finishing(std::atomic<int>& n) : n(n) { n.fetch_add(1); }
    ~Finishing() { n.fetch_sub(1); }
    std::atomic<int>& n;
  };

  void Complete(Task& task, const FerryResponseSink& response) {
    Finishing finishing(finishing_);
    if (task.ended.exchange(true)) return;
    thread_local transport::HeaderList headers;
    thread_local std::string frame;
    headers.clear();
    for (const auto& [k, v] : response.headers) headers.emplace_back(k, v);
    frame.clear();
    transport::AppendResponse(frame, task.stream_id, {static_cast<uint16_t>(response.status), headers, response.body});
    const int64_t answered_ns = task.trace ? tracing::UnixNanos() : 0;
    task.connection->Send(frame);
    if (task.trace) spans_.End(task, response.status, 0, answered_ns);
    Forget(task);
  }

  // A task's streamed answer: the head with the first chunk, each chunk once the client has credit for it.
  class TaskStream : public ResponseStream {
   public:
    TaskStream(Impl& server, const TaskPtr& task) : server_(server), task_(*task), ptr_(task) {}
    void OnCancel(std::function<void()> hook) override { task_.OnCancel(std::move(hook)); }
    std::unique_ptr<DetachedSink> Detach(const FerryResponseSink& head) override {
      if (!Write(head, {})) return nullptr;
      // Nobody may write when the client leaves: the cancel ends the stream (and frees its slot) itself.
      task_.OnCancel([&server = server_, weak = std::weak_ptr<Task>(ptr_)] {
        if (TaskPtr t = weak.lock()) server.EndStream(*t, FerryResponseSink{});
      });
      return std::make_unique<Detached>(server_, ptr_);
    }
    std::unique_ptr<DetachedSink> Defer() override {
      if (task_.stream_started.load() || task_.cancelled.load() || task_.ended.load()) return nullptr;
      // A cancel answers 499 in one piece, or ends the stream if one began meanwhile.
      task_.OnCancel([&server = server_, weak = std::weak_ptr<Task>(ptr_)] {
        if (TaskPtr t = weak.lock()) {
          if (t->stream_started.load())
            server.EndStream(*t, FerryResponseSink{});
          else
            server.Complete(*t, Cancelled());
        }
      });
      return std::make_unique<Detached>(server_, ptr_);
    }
    bool Write(const FerryResponseSink& head, std::string_view chunk) override {
      if (task_.stream_started && !chunk.empty() && !task_.AwaitCredit()) return false;
      if (task_.cancelled.load() || task_.ended.load()) return false;
      thread_local std::string frame;
      thread_local transport::HeaderList headers;
      frame.clear();
      if (!task_.stream_started) {
        headers.clear();
        for (const auto& [k, v] : head.headers) headers.emplace_back(k, v);
        transport::AppendResponseStart(frame, task_.stream_id, {static_cast<uint16_t>(head.status), headers});
        task_.stream_started = true;
      }
      if (!chunk.empty()) {
        transport::AppendChunk(frame, task_.stream_id, chunk);
        task_.Spend(chunk.size());
        ++task_.chunks_sent;
        task_.bytes_sent += chunk.size();
      }
      if (!frame.empty()) task_.connection->Send(frame);
      return true;
    }

   private:
    Impl& server_;
    Task& task_;
    TaskPtr ptr_;
  };

  // A stream after handle() returned (or a deferred answer): writes from any thread, one at a time; its
  // end once.
  class Detached : public DetachedSink {
   public:
    Detached(Impl& server, TaskPtr task) : server_(server), task_(std::move(task)), stream_(server, task_) {}
    bool Write(std::string_view chunk) override {
      MutexLock lock(&mu_);
      // A deferred answer's first write sends its head (even with no data); later empty writes send nothing.
      if (chunk.empty() && task_->stream_started.load()) return true;
      return stream_.Write(head_, chunk);
    }
    void End(bool ok, std::string_view message) override {
      // Ended already (a cancel, or the server's own end closing every connection): the server may be gone.
      if (task_->ended.load()) return;
      FerryResponseSink end;
      if (!ok) end.stream_error = message.empty() ? "the stream failed" : std::string(message);
      MutexLock lock(&mu_);
      if (!task_->stream_started.load()) {  // a deferred answer that never came
        FerryResponseSink failed;
        failed.status = ok ? head_.status : 500;
        failed.headers = ok ? head_.headers : decltype(head_.headers){{"content-type", "application/json"}};
        if (!ok)
          failed.body = nlohmann::json{{"error", end.stream_error}, {"request_id", task_->request.request_id}}.dump();
        server_.Complete(*task_, failed);
        return;
      }
      server_.EndStream(*task_, end);
    }
    void SetHead(const FerryResponseSink& head) override {
      MutexLock lock(&mu_);
      head_.status = head.status;
      head_.headers = head.headers;
    }
    bool Cancelled() const override { return task_->cancelled.load() || task_->ended.load(); }
    void OnCancel(std::function<void()> hook) override { task_->OnCancel(std::move(hook)); }
    void Respond(const FerryResponseSink& whole) override {
      if (task_->ended.load()) return;
      MutexLock lock(&mu_);
      if (task_->stream_started.load()) {  // it streamed after all: the stream just ends
        server_.EndStream(*task_, FerryResponseSink{});
        return;
      }
      server_.Complete(*task_, whole);
    }

   private:
    Impl& server_;
    TaskPtr task_;
    Mutex mu_;
    TaskStream stream_ ABSL_GUARDED_BY(mu_);
    FerryResponseSink head_ ABSL_GUARDED_BY(mu_);  // a deferred answer's status and headers
  };

  // Runs a task the executor handed to this thread.
  void RunTask(const TaskPtr& ptr) {
    Task& task = *ptr;
    if (task.request.body_mode == transport::BodyMode::kWebSocket) {
      RunSession(task);
      return;
    }
    if (task.cancelled.load()) {
      Complete(task, Cancelled());
      executor_.Done(std::nullopt);
      return;
    }
    TaskStream stream(*this, ptr);
    FerryResponseSink response;
    response.stream = &stream;
    auto start = SteadyClock::now();
    if (task.trace) task.trace->user_start_ns = tracing::UnixNanos();
    std::optional<TaskBody> body;
    if (task.request.body_mode == transport::BodyMode::kStreamed) body.emplace(*this, task);
    host_.Handle(task.request, task.cancelled, &response, body ? &*body : nullptr);
    if (task.trace) task.trace->user_end_ns = tracing::UnixNanos();
    auto took = std::chrono::duration_cast<std::chrono::nanoseconds>(SteadyClock::now() - start);
    processing_.Observe(static_cast<double>(took.count()) / 1e9);
    if (response.detached) {
      // The stream goes on without this thread; it ends when user code (or a cancel) ends it.
      if (!response.stream_error.empty()) EndStream(task, response);
    } else if (task.stream_started)
      EndStream(task, response);
    else
      Complete(task, response);
    executor_.Done(took);
  }

  // Ends a streamed answer: complete, or broken (handle() failed after the first chunk, or the stream was
  // cancelled), which the client passes on by cutting the body short.
  void EndStream(Task& task, const FerryResponseSink& response) {
    Finishing finishing(finishing_);
    if (task.ended.exchange(true)) return;
    std::string error = response.stream_error;
    if (error.empty() && task.cancelled.load()) error = "cancelled";
    std::string frame;
    transport::AppendEnd(frame, task.stream_id, {error.empty(), error});
    const int64_t answered_ns = task.trace ? tracing::UnixNanos() : 0;
    task.connection->Send(frame);
    if (task.trace) spans_.End(task, error.empty() ? response.status : 500, 0, answered_ns);
    Forget(task);
  }

  static transport::HistogramCounts Counts(const metrics::Histogram& h) {
    transport::HistogramCounts out;
    for (size_t i = 0; i <= h.bounds().size(); ++i) out.counts.push_back(h.bucket(i));
    out.sum = h.sum();
    return out;
  }

  const ReplicaSpec& spec_;
  DeploymentHost& host_;
  handle::HandleClient* handles_;
  Mutex node_mu_;
  std::shared_ptr<ClientConnection> node_ ABSL_GUARDED_BY(node_mu_);  // the node agent's connection
  bool subscribed_ ABSL_GUARDED_BY(node_mu_) = false;
  Mutex sessions_mu_;
  std::unordered_map<Task*, std::weak_ptr<Task>> sessions_ ABSL_GUARDED_BY(sessions_mu_);  // open WebSocket sessions
  const SpanRecorder spans_;
  tracing::Tracer* tracer_;
  // Reported in stats replies; the node renders them as this replica's histograms.
  metrics::Histogram processing_{metrics::LatencyBucketsSeconds()};
  metrics::Histogram batch_size_{metrics::BatchSizeBuckets()};
  UniqueFd stop_fd_;
  std::atomic<uint32_t> ongoing_{0};
  std::atomic<int> finishing_{0};  // threads inside Complete/EndStream (see Finishing)
  std::atomic<uint64_t> total_{0};
  FrameServer frames_;
  Executor executor_;  // after frames_: its threads poll it, so they stop before it goes
  ControlThread control_;
  // Last: destroyed first, so no batch runs while the rest goes away.
  std::unique_ptr<Batcher<TaskPtr>> batcher_;
};

ReplicaServer::ReplicaServer(const ReplicaSpec& spec, DeploymentHost& host, tracing::Tracer* tracer,
                             handle::HandleClient* handles)
    : impl_(std::make_unique<Impl>(spec, host, tracer, handles)) {}
ReplicaServer::~ReplicaServer() = default;
absl::Status ReplicaServer::Listen(const std::string& path) { return impl_->Listen(path); }
absl::StatusOr<uint16_t> ReplicaServer::ListenTcp(const std::string& host) { return impl_->ListenTcp(host); }
void ReplicaServer::Run() { impl_->Run(); }
void ReplicaServer::RequestStop() { impl_->RequestStop(); }
uint32_t ReplicaServer::ongoing() const { return impl_->ongoing(); }
uint64_t ReplicaServer::total() const { return impl_->total(); }

}  // namespace ferry::replica
