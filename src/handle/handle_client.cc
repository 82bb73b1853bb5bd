#include "handle/handle_client.h"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "common/mutex.h"
#include "endpoints/wire.h"
#include "metrics/metrics.h"
#include "router/router_set.h"
#include "tracing/tracing.h"
#include "transport/direct_channel.h"
#include "transport/replica_channel.h"

namespace ferry::handle {

namespace asio = boost::asio;

namespace {
constexpr int kMaxReroutes = 3;
// A call made before the first snapshot arrived waits for it this long at most (when it has no deadline).
constexpr auto kFirstSnapshotWait = std::chrono::seconds(30);
// Calls in flight (this one included) up to which an on-demand call goes the direct way: a lone call, or
// a pair (a fan-out of two).
constexpr int kMaxDirectCalls = 2;
}  // namespace

class HandleClient::Impl {
 public:
  Impl(HandleClient& owner, tracing::Tracer* tracer)
      : owner_(owner), tracer_(tracer), routers_([&owner] {
          if (owner.wake_) owner.wake_();
        }) {}
  ~Impl() { Stop(); }

  void StartThread() {
    MutexLock lock(&mu_);
    if (thread_.joinable()) return;
    thread_ = std::thread([this] { io_.run(); });
  }
  void Stop() {
    work_.reset();
    io_.stop();
    if (thread_.joinable()) thread_.join();
    // The I/O thread is gone: calls still waiting on a channel (cancelled, their callee not yet confirmed)
    // and their channels hold each other; let go of both.
    for (auto& [key, channel] : channels_) channel->Drop();
    channels_.clear();
    waiting_.clear();
    // Direct channels: their calls fail, and their watchers let go of the io_context before it goes.
    for (auto& [key, channel] : TakeDirect()) {
      channel->Close("the handle client stopped");
      channel->StopWatching();
    }
  }

  // The direct connection to `replica` (made now if there is none); null when it cannot connect at once
  // (the call then goes the I/O thread's way).
  std::shared_ptr<transport::DirectChannel> DirectTo(const router::ReplicaEndpoint& replica);
  // Whether a call may go the direct way now: while few calls are in flight (this one included). A thread
  // that reads its own answer saves two wake-ups per call; under load the I/O thread's way batches many
  // answers into one read, and callers that can answer later (builtin:call) hold no thread meanwhile,
  // which costs less per call than every caller reading for itself (bench/composition at 64
  // connections: the chain does 0.38x echo's requests/s this way, 0.19-0.26x with every call direct).
  bool MayGoDirect() const {
    return calls_.load(std::memory_order_relaxed) <= max_direct_.load(std::memory_order_relaxed);
  }
  void SetMaxDirect(int n) { max_direct_.store(n); }
  void CallStarted() { calls_.fetch_add(1, std::memory_order_relaxed); }
  void CallEnded() { calls_.fetch_sub(1, std::memory_order_relaxed); }
  // Closes the direct channels to replicas a snapshot no longer has, once nothing is in flight on them.
  void PruneDirect(const endpoints::Snapshot& snapshot);

  asio::io_context& io() { return io_; }
  tracing::Tracer* tracer() const { return tracer_; }
  router::RouterSet& routers() { return routers_; }
  const router::RouterSet& routers() const { return routers_; }
  HandleClient& owner() { return owner_; }

  // I/O thread.
  std::shared_ptr<transport::ReplicaChannel> ChannelTo(const router::ReplicaEndpoint& replica) {
    auto it = channels_.find(replica.key);
    if (it != channels_.end() && !it->second->closed()) return it->second;
    auto channel = std::make_shared<transport::ReplicaChannel>(io_.get_executor(), replica.socket_path, "handle",
                                                               [this, key = replica.key](transport::ReplicaChannel* c) {
                                                                 auto it = channels_.find(key);
                                                                 if (it != channels_.end() && it->second.get() == c)
                                                                   channels_.erase(it);
                                                               });
    channels_[replica.key] = channel;
    channel->Start();
    return channel;
  }

  // Calls that came before the first snapshot; started when it arrives (I/O thread).
  void WaitForSnapshot(std::shared_ptr<HandleCall> call) { waiting_.push_back(std::move(call)); }
  void OnSnapshot();
  bool has_snapshot() const { return has_snapshot_.load(); }
  void MarkSnapshot() { has_snapshot_.store(true); }

  void Record(const std::string& callee, bool ok, double seconds) {
    MutexLock lock(&stats_mu_);
    Stats& s = stats_[callee];
    (ok ? s.ok : s.errors)++;
    s.latency.Observe(seconds);
  }
  std::vector<CalleeStats> StatsCopy() const {
    MutexLock lock(&stats_mu_);
    std::vector<CalleeStats> out;
    for (const auto& [callee, s] : stats_) {
      CalleeStats c;
      c.callee = callee;
      c.ok = s.ok;
      c.errors = s.errors;
      for (size_t i = 0; i <= s.latency.bounds().size(); ++i) c.latency_counts.push_back(s.latency.bucket(i));
      c.latency_sum = s.latency.sum();
      out.push_back(std::move(c));
    }
    return out;
  }
  uint64_t NextCallNumber() { return next_call_.fetch_add(1) + 1; }

 private:
  std::unordered_map<uint64_t, std::shared_ptr<transport::DirectChannel>> TakeDirect() {
    MutexLock lock(&direct_mu_);
    return std::exchange(direct_, {});
  }

  struct Stats {
    uint64_t ok = 0, errors = 0;
    metrics::Histogram latency{metrics::LatencyBucketsSeconds()};
  };
  HandleClient& owner_;
  tracing::Tracer* tracer_;
  router::RouterSet routers_;
  asio::io_context io_{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_{io_.get_executor()};
  Mutex mu_;
  std::thread thread_;
  std::unordered_map<uint64_t, std::shared_ptr<transport::ReplicaChannel>> channels_;  // I/O thread
  std::vector<std::shared_ptr<HandleCall>> waiting_;                                   // I/O thread
  std::atomic<bool> has_snapshot_{false};
  mutable Mutex stats_mu_;
  std::map<std::string, Stats> stats_ ABSL_GUARDED_BY(stats_mu_);
  std::atomic<uint64_t> next_call_{0};
  std::atomic<int> calls_{0};  // calls that have not ended
  std::atomic<int> max_direct_{kMaxDirectCalls};
  Mutex direct_mu_;
  // The direct way's connections, one per callee replica, shared by every calling thread.
  std::unordered_map<uint64_t, std::shared_ptr<transport::DirectChannel>> direct_ ABSL_GUARDED_BY(direct_mu_);
};

std::shared_ptr<transport::DirectChannel> HandleClient::Impl::DirectTo(const router::ReplicaEndpoint& replica) {
  MutexLock lock(&direct_mu_);
  if (auto it = direct_.find(replica.key); it != direct_.end()) {
    if (!it->second->closed()) return it->second;
    direct_.erase(it);
  }
  // A non-blocking connect: it succeeds or fails at once.
  auto channel = transport::DirectChannel::Connect(replica.socket_path, "handle");
  if (!channel.ok()) {
    FERRY_LOG(kDebug, "handle", "no direct channel to replica ", replica.replica_id, ": ", Message(channel.status()));
    return nullptr;
  }
  return direct_[replica.key] = *std::move(channel);
}

void HandleClient::Impl::PruneDirect(const endpoints::Snapshot& snapshot) {
  std::unordered_set<uint64_t> live;
  for (const auto& [name, set] : snapshot.sets)
    for (const auto& e : set->endpoints) live.insert(e.key);
  std::vector<std::shared_ptr<transport::DirectChannel>> idle;
  {
    MutexLock lock(&direct_mu_);
    for (auto it = direct_.begin(); it != direct_.end();) {
      if (it->second->closed() || (!live.count(it->first) && it->second->in_flight() == 0)) {
        idle.push_back(std::move(it->second));
        it = direct_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& channel : idle) channel->Close("the replica left");
}

// One call from the moment it is made to its end. The I/O thread's way: everything runs on the client's
// I/O thread, except OnAssigned (the router's, any thread) which moves it there. The direct way: it starts
// on the calling thread, its frames are delivered on whichever thread reads its channel, and it is
// cancelled on the cancelling thread. Either way its state changes under mu_, which is held while the
// observer hears, so a call's events never interleave.
class HandleCall : public router::Waiter,
                   public transport::StreamListener,
                   public std::enable_shared_from_this<HandleCall> {
 public:
  HandleCall(HandleClient::Impl& client, CallRequest request, std::shared_ptr<CallObserver> observer)
      : client_(client),
        request_(std::move(request)),
        observer_(std::move(observer)),
        deadline_(client.io()),
        started_(SteadyClock::now()) {
    client.CallStarted();
    request_id_ = request_.parent_request_id.empty() ? NewRequestId()
                                                     : StrCat(request_.parent_request_id, ".", client.NextCallNumber());
  }

  const std::string& request_id() const { return request_id_; }
  HandleClient::Impl& client() { return client_; }
  // The multiplexed model the call is for (Ray's multiplexed_model_id option, sent as a header): routers
  // prefer replicas that have it loaded.
  std::string_view ModelId() const {
    for (const auto& [name, value] : request_.headers)
      if (name == "serve_multiplexed_model_id") return value;
    return {};
  }
  // Went the direct way (set before its CallRef exists; never changes after).
  bool direct() const { return direct_ != nullptr; }

  // The direct way, on the calling thread: true when the request was sent on this thread's own channel to
  // a replica that had room; false (nothing changed) when the call must take the I/O thread's way.
  bool StartDirect() {
    if (!request_.on_demand || !client_.has_snapshot() || !client_.MayGoDirect()) return false;
    if (request_.deadline && *request_.deadline <= SteadyClock::now()) return false;
    std::shared_ptr<router::Router> router = client_.routers().Find(request_.deployment_key);
    if (!router) return false;
    router::ReplicaLease lease;
    if (!router->TryAcquire(&lease, ModelId())) return false;
    std::shared_ptr<transport::DirectChannel> channel = client_.DirectTo(lease.replica());
    if (!channel) return false;
    transport::RequestMessage m;
    {
      MutexLock lock(&mu_);
      PrepareTrace();
      router_ = std::move(router);
      lease_ = std::move(lease);
      replica_ = lease_.replica_ptr();
      state_ = State::kDispatched;
      m = Frame();
      direct_ = channel;  // before Send: its answer may be read by another thread at once
    }
    // Without the lock: a failing write fails the channel's other calls, and their listeners lock.
    absl::StatusOr<uint64_t> id = channel->Send(shared_from_this(), m);
    MutexLock lock(&mu_);
    if (!id.ok()) {  // not sent, and nothing heard: the I/O thread's way may still reach another replica
      direct_.reset();
      lease_.Release();
      replica_.reset();
      state_ = State::kNew;
      return false;
    }
    stream_id_ = *id;
    return true;
  }

  void Start() {
    MutexLock lock(&mu_);
    PrepareTrace();
    auto when = request_.deadline;
    if (!when && !client_.has_snapshot()) when = SteadyClock::now() + kFirstSnapshotWait;
    if (when) ArmDeadline(*when);
    if (!client_.has_snapshot()) {
      client_.WaitForSnapshot(shared_from_this());
      return;
    }
    Route();
  }

  // After the first snapshot (calls that waited for it).
  void Resume() {
    MutexLock lock(&mu_);
    if (state_ != State::kNew) return;
    if (!request_.deadline) deadline_.cancel();
    Route();
  }

  void OnAssigned(router::ReplicaLease lease) override {
    asio::post(client_.io(), [self = shared_from_this(), lease = std::move(lease)]() mutable {
      MutexLock lock(&self->mu_);
      if (self->state_ != State::kQueued) return;  // ended meanwhile: the lease goes back
      self->Dispatch(std::move(lease));
    });
  }

  void OnResponse(const transport::ResponseMessage& response) override {
    MutexLock lock(&mu_);
    if (state_ != State::kDispatched) return;
    Release();
    if (ended_) return;
    observer_->OnHead(response.status, response.headers, false);
    observer_->OnChunk(response.body);
    End(true, response.status, {});
  }
  void OnStreamStart(const transport::ResponseStart& head) override {
    MutexLock lock(&mu_);
    if (state_ != State::kDispatched || ended_) return;
    streaming_ = true;
    if (request_.deadline) CancelDeadline();  // as at the proxy: the deadline bounds the first byte
    observer_->OnHead(head.status, head.headers, true);
    status_ = head.status;
    Delivered();
  }
  void OnStreamChunk(std::string_view data) override {
    MutexLock lock(&mu_);
    if (ended_) {
      CreditLocked(data.size());  // nobody reads it: let the callee reach its end (or our cancel)
      return;
    }
    observer_->OnChunk(data);
    Delivered();
  }
  void OnStreamEnd(const transport::StreamEnd& end) override {
    MutexLock lock(&mu_);
    if (state_ != State::kDispatched) return;
    Release();
    if (ended_) return;
    if (end.ok)
      End(true, status_, {});
    else
      End(false, 502, StrCat("the stream from deployment ", request_.deployment_key, " broke: ", end.message));
  }
  void OnChannelFailed(bool delivered, std::string_view why) override {
    MutexLock lock(&mu_);
    if (state_ != State::kDispatched) return;
    if (!delivered && !ended_ && !streaming_ && !direct() && ++reroutes_ <= kMaxReroutes) {
      if (router_ && replica_) router_->ReportUnreachable(replica_->key);
      lease_.Release();
      channel_.reset();
      Route();
      return;
    }
    Release();
    End(false, 502,
        StrCat("deployment ", request_.deployment_key, " failed: replica ", replica_->replica_id,
               delivered ? " went away" : " unreachable", " (", why, ")"));
  }

  // The caller's side: on the I/O thread (posted) for the I/O thread's way, on the caller's thread for the
  // direct way.
  void Cancel() {
    if (ended_) return;  // also what an observer's own callback sees when it cancels the call that ended
    {
      MutexLock lock(&mu_);
      CancelLocked();
    }
    if (direct_) direct_->Wake();  // a thread waiting for this call looks again
  }
  void Consumed(size_t bytes) {
    if (ended_) return;  // (and an observer's callback may consume from a call that just ended)
    MutexLock lock(&mu_);
    CreditLocked(bytes);
  }

  // The direct way's waiting (CallRef::Wait): reads the call's channel on this thread until it has news.
  bool Wait(bool block) {
    if (!direct_ || watched_) return false;
    auto news = [this] { return ended_.load() || events_.load() != events_seen_; };
    if (!block) {
      if (!news()) direct_->PumpReady();
    } else if (request_.deadline && !streaming_.load()) {
      if (!direct_->Pump(news, request_.deadline) && !news()) {
        // The deadline passed first: the call ends with 504, the callee is cancelled, and the I/O thread
        // reads its confirmation (which gives the slot back).
        {
          MutexLock lock(&mu_);
          if (!ended_) {
            timed_out_ = true;
            CancelLocked();
          }
        }
        direct_->Wake();
      }
    } else {
      direct_->Pump(news, std::nullopt);
    }
    events_seen_ = events_.load();
    return true;
  }
  // CallRef::Watch: from now on the I/O thread reads this call's answer (and keeps its deadline).
  void Watch() {
    if (!direct_) return;
    {
      MutexLock lock(&mu_);
      if (watched_) return;
      watched_ = true;
      if (request_.deadline && !ended_ && !streaming_)
        asio::post(client_.io(), [self = shared_from_this()] {
          MutexLock lock(&self->mu_);
          if (!self->ended_) self->ArmDeadline(*self->request_.deadline);
        });
    }
    direct_->Watch(stream_id_, client_.io().get_executor());
  }

 private:
  enum class State { kNew, kQueued, kDispatched, kDone };

  void PrepareTrace() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    tracing::SpanContext parent;
    if (client_.tracer() && !request_.traceparent.empty() && tracing::ParseTraceparent(request_.traceparent, &parent) &&
        parent.sampled) {
      trace_ = parent;
      span_id_ = tracing::NewSpanId();
      span_start_ns_ = tracing::UnixNanos();
      tracing::SpanContext mine = parent;
      mine.span_id = span_id_;
      traceparent_ = tracing::FormatTraceparent(mine);
    }
  }

  // The deadline timer lives on the I/O thread: armed there, cancelled there.
  void ArmDeadline(SteadyClock::time_point when) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    timer_armed_ = true;
    deadline_.expires_at(when);
    deadline_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
      if (!ec) self->OnDeadline();
    });
  }
  void CancelDeadline() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!timer_armed_) return;
    timer_armed_ = false;
    if (!direct_) {
      deadline_.cancel();
      return;
    }
    asio::post(client_.io(), [self = shared_from_this()] { self->deadline_.cancel(); });
  }

  void Route() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (ended_) return;
    router_ = client_.routers().Find(request_.deployment_key);
    if (!router_) {
      state_ = State::kDone;
      End(false, 404, StrCat("no deployment ", request_.deployment_key, " to call"));
      return;
    }
    state_ = State::kQueued;
    router::ReplicaLease lease;
    switch (router_->Acquire(shared_from_this(), &lease, ModelId())) {
      case router::Router::Result::kAssigned:
        Dispatch(std::move(lease));
        return;
      case router::Router::Result::kQueued:
        return;
      case router::Router::Result::kRejected:
        state_ = State::kDone;
        End(false, 503,
            StrCat("deployment ", request_.deployment_key,
                   " is overloaded: every replica is at max_ongoing_requests and the queue is full "
                   "(max_queued_requests)"));
        return;
    }
  }

  // The request frame (its views point into this call, valid while it lives).
  transport::RequestMessage Frame() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    uint32_t timeout_ms = 0;
    if (request_.deadline) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*request_.deadline - SteadyClock::now());
      timeout_ms = static_cast<uint32_t>(std::max<int64_t>(1, left.count()));
    }
    headers_.clear();
    for (const auto& [k, v] : request_.headers) {
      if (k == "traceparent" && !traceparent_.empty()) continue;
      if (k == "x-ferry-method") continue;
      headers_.emplace_back(k, v);
    }
    if (!traceparent_.empty()) headers_.emplace_back("traceparent", traceparent_);
    if (!request_.method_name.empty()) headers_.emplace_back("x-ferry-method", request_.method_name);
    headers_.emplace_back("x-ferry-caller", client_.owner().caller());
    transport::RequestMessage m;
    m.request_id = request_id_;
    m.method = request_.http_method;
    m.path = request_.path.empty() ? std::string_view("/") : std::string_view(request_.path);
    m.query = request_.query;
    m.route_prefix = "";
    m.headers = headers_;
    m.body = request_.body;
    m.timeout_ms = timeout_ms;
    return m;
  }

  void Dispatch(router::ReplicaLease lease) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    lease_ = std::move(lease);
    replica_ = lease_.replica_ptr();
    state_ = State::kDispatched;
    transport::RequestMessage m = Frame();
    channel_ = client_.ChannelTo(*replica_);
    stream_id_ = channel_->Send(shared_from_this(), m);
  }

  void CancelLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (ended_) return;
    if (state_ == State::kQueued) {
      if (router_) router_->Cancel(this);
      state_ = State::kDone;
    } else if (state_ == State::kDispatched && direct_) {
      // The slot stays taken until the callee confirms; nobody waits for this call any more, so the I/O
      // thread reads that confirmation.
      direct_->Cancel(stream_id_);
      if (!watched_) {
        watched_ = true;
        direct_->Watch(stream_id_, client_.io().get_executor());
      }
    } else if (state_ == State::kDispatched && channel_) {
      channel_->Cancel(stream_id_);  // the slot stays taken until the callee confirms
    } else if (state_ == State::kNew) {
      state_ = State::kDone;
    }
    End(false, 499, StrCat("the call to deployment ", request_.deployment_key, " was cancelled"));
  }

  void CreditLocked(size_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (state_ != State::kDispatched || bytes == 0) return;
    const auto n = static_cast<uint32_t>(std::min<size_t>(bytes, UINT32_MAX));
    if (direct_)
      direct_->Credit(stream_id_, n);
    else if (channel_)
      channel_->Credit(stream_id_, n);
  }

  void OnDeadline() {
    MutexLock lock(&mu_);
    timer_armed_ = false;
    if (ended_ || streaming_) return;
    timed_out_ = true;
    CancelLocked();
    if (direct_) direct_->Wake();
  }

  void Release() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    state_ = State::kDone;
    lease_.Release();
    channel_.reset();
  }

  void Delivered() { events_.fetch_add(1); }

  void End(bool ok, int status, std::string_view error) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (ended_) return;
    ended_ = true;
    client_.CallEnded();
    CancelDeadline();
    std::string message(error);
    if (timed_out_ && request_.deadline) {
      status = 504;
      message = StrCat("the call to deployment ", request_.deployment_key, " timed out (the caller's deadline)");
    } else if (timed_out_) {
      status = 503;
      message = StrCat("cannot call deployment ", request_.deployment_key, ": no endpoints from the node within ",
                       kFirstSnapshotWait.count(), " s");
    }
    if (!ok && status == 499)
      FERRY_LOG(kInfo, "handle", "call ", request_id_, " to ", request_.deployment_key, " cancelled");
    else if (!ok)
      FERRY_LOG(kWarning, "handle", "call ", request_id_, " to ", request_.deployment_key, " failed with ", status,
                ": ", message);
    const double seconds = std::chrono::duration<double>(SteadyClock::now() - started_).count();
    client_.Record(request_.deployment_key, ok && status < 500, seconds);
    if (span_id_) RecordSpan(status, !ok || status >= 500);
    observer_->OnEnd(ok, status, message);
    Delivered();
  }

  void RecordSpan(int status, bool error) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    tracing::Span span;
    span.trace_id = trace_.trace_id;
    span.span_id = span_id_;
    span.parent_span_id = trace_.span_id;
    span.kind = tracing::SpanKind::kClient;
    span.name = StrCat("ferry.call ", request_.deployment_key);
    span.start_unix_ns = span_start_ns_;
    span.end_unix_ns = tracing::UnixNanos();
    span.attributes = {{"ferry.callee", request_.deployment_key},
                       {"ferry.caller", client_.owner().caller()},
                       {"ferry.request_id", request_id_},
                       {"http.response.status_code", static_cast<int64_t>(status)}};
    if (!request_.method_name.empty()) span.attributes.push_back({"ferry.method", request_.method_name});
    if (replica_) span.attributes.push_back({"ferry.replica", replica_->replica_id});
    span.error = error;
    client_.tracer()->Record(std::move(span));
  }

  HandleClient::Impl& client_;
  CallRequest request_;
  std::shared_ptr<CallObserver> observer_;
  std::string request_id_;
  asio::steady_timer deadline_;  // the I/O thread's
  SteadyClock::time_point started_;
  // The call's state. Plain members are changed under mu_; the atomics are also read without it (by a
  // waiting thread deciding whether it has news).
  Mutex mu_;
  State state_ = State::kNew;
  std::atomic<bool> ended_{false};  // the observer heard OnEnd
  std::atomic<bool> streaming_{false};
  std::atomic<uint64_t> events_{0};  // events the observer heard
  uint64_t events_seen_ = 0;         // by the thread in Wait (a call belongs to one thread at a time)
  bool timed_out_ = false;
  bool timer_armed_ = false;
  std::atomic<bool> watched_{false};  // a direct call whose channel the I/O thread reads too
  int status_ = 200;
  int reroutes_ = 0;
  std::shared_ptr<router::Router> router_;
  router::ReplicaLease lease_;
  std::shared_ptr<const router::ReplicaEndpoint> replica_;
  std::shared_ptr<transport::ReplicaChannel> channel_;  // the I/O thread's way
  std::shared_ptr<transport::DirectChannel> direct_;    // the direct way
  uint64_t stream_id_ = 0;
  transport::HeaderList headers_;  // views into request_ for the frame being encoded
  tracing::SpanContext trace_;
  uint64_t span_id_ = 0;  // 0: not traced
  int64_t span_start_ns_ = 0;
  std::string traceparent_;  // what the callee is sent when traced
};

void HandleClient::Impl::OnSnapshot() {
  auto waiting = std::move(waiting_);
  waiting_.clear();
  for (auto& call : waiting) call->Resume();
}

void CallRef::Cancel() const {
  if (!call_) return;
  if (call_->direct())
    call_->Cancel();
  else
    asio::post(call_->client().io(), [call = call_] { call->Cancel(); });
}

void CallRef::Consumed(size_t bytes) const {
  if (!call_ || bytes == 0) return;
  if (call_->direct())
    call_->Consumed(bytes);
  else
    asio::post(call_->client().io(), [call = call_, bytes] { call->Consumed(bytes); });
}

bool CallRef::Wait(bool block) const { return call_ && call_->Wait(block); }

void CallRef::Watch() const {
  if (call_) call_->Watch();
}

const std::string& CallRef::request_id() const {
  static const std::string kNone;
  return call_ ? call_->request_id() : kNone;
}

HandleClient::HandleClient(std::string caller, tracing::Tracer* tracer)
    : caller_(std::move(caller)), impl_(std::make_unique<Impl>(*this, tracer)) {}

HandleClient::~HandleClient() { impl_->Stop(); }

void HandleClient::SetSubscribe(std::function<void()> subscribe) { subscribe_ = std::move(subscribe); }

void HandleClient::SetWake(std::function<void()> wake) { wake_ = std::move(wake); }

void HandleClient::SetMaxDirectCalls(int n) { impl_->SetMaxDirect(n); }

void HandleClient::Want() {
  if (wanted_.exchange(true)) return;
  impl_->StartThread();
  if (subscribe_) subscribe_();
}

CallRef HandleClient::Start(CallRequest request, std::shared_ptr<CallObserver> observer) {
  Want();
  auto call = std::make_shared<HandleCall>(*impl_, std::move(request), std::move(observer));
  if (!call->StartDirect()) asio::post(impl_->io(), [call] { call->Start(); });
  return CallRef(call);
}

void HandleClient::OnPublished(std::shared_ptr<const endpoints::Snapshot> snapshot) {
  impl_->PruneDirect(*snapshot);
  impl_->routers().OnPublished(std::move(snapshot));
  if (!impl_->has_snapshot()) {
    impl_->MarkSnapshot();
    asio::post(impl_->io(), [impl = impl_.get()] { impl->OnSnapshot(); });
  }
}

endpoints::ConsumerReport HandleClient::Report() const { return impl_->routers().Report(); }

std::vector<CalleeStats> HandleClient::Stats() const { return impl_->StatsCopy(); }

std::string LoadReplyJson(const HandleClient& client) {
  nlohmann::json out = endpoints::ReportToJson(client.Report());
  nlohmann::json calls = nlohmann::json::array();
  for (const CalleeStats& s : client.Stats())
    calls.push_back({{"callee", s.callee},
                     {"ok", s.ok},
                     {"errors", s.errors},
                     {"latency_counts", s.latency_counts},
                     {"latency_sum", s.latency_sum}});
  out["calls"] = std::move(calls);
  out["caller"] = client.caller();
  return out.dump();
}

}  // namespace ferry::handle
