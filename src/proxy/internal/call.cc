// Call and ReplicaChannel: the part of the request path between the router and a replica.

#include <boost/asio/post.hpp>
#include <nlohmann/json.hpp>

#include "common/common.h"
#include "proxy/internal/proxy_internal.h"

namespace ferry::proxy {

namespace {

std::string ErrorJson(std::string_view message, std::string_view request_id) {
  nlohmann::json body = {{"error", message}, {"request_id", request_id}};
  return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

const transport::HeaderList& JsonHeaders() {
  static const transport::HeaderList headers = {{"content-type", "application/json"}};
  return headers;
}

// A shed request tells the client when to come back (as Ray Serve's 503s and 429s do).
const transport::HeaderList& RetryLaterHeaders() {
  static const transport::HeaderList headers = {{"content-type", "application/json"}, {"retry-after", "1"}};
  return headers;
}

bool IsTraceparent(boost::beast::string_view name) {
  static constexpr std::string_view kName = "traceparent";
  if (name.size() != kName.size()) return false;
  for (size_t i = 0; i < kName.size(); ++i)
    if ((name[i] | 0x20) != kName[i]) return false;
  return true;
}

}  // namespace

http::response<http::string_body> ResponseOf(const CallResult& result, unsigned version,
                                             const std::string& request_id) {
  namespace beast = boost::beast;
  http::response<http::string_body> res{static_cast<http::status>(result.status), version};
  for (const auto& [name, value] : result.headers) {
    if (beast::iequals(name, "content-length") || beast::iequals(name, "transfer-encoding") ||
        beast::iequals(name, "connection"))
      continue;
    res.insert(beast::string_view(name.data(), name.size()), beast::string_view(value.data(), value.size()));
  }
  res.set("x-request-id", request_id);
  res.body().assign(result.body.data(), result.body.size());
  return res;
}

Call::Call(Worker& worker, std::shared_ptr<CallSink> session, std::shared_ptr<const router::RoutingTable> table,
           const router::Route* route, std::string request_id, RouteSeries* series)
    : worker_(worker),
      session_(session),
      table_(std::move(table)),
      route_(route),
      request_id_(std::move(request_id)),
      deadline_(worker.io()),
      series_(series) {}

void Call::SetTrace(const tracing::SpanContext& context) {
  trace_ = context;
  traceparent_ = tracing::FormatTraceparent(context);
  queued_at_ns_ = tracing::UnixNanos();
}

void Call::Start(http::request<http::string_body>&& request) {
  request_ = std::move(request);
  if (worker_.options().request_timeout) {
    deadline_.expires_after(*worker_.options().request_timeout);
    deadline_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
      if (!ec) self->OnDeadline();
    });
  }
  Route();
}

void Call::Route() {
  state_ = State::kQueued;
  router::ReplicaLease lease;
  // A multiplexed model's requests go first to the replicas that have it loaded.
  switch (route_->router->Acquire(shared_from_this(), &lease, request_["serve_multiplexed_model_id"])) {
    case router::Router::Result::kAssigned:
      Dispatch(std::move(lease));
      return;
    case router::Router::Result::kQueued:
      return;
    case router::Router::Result::kRejected:
      if (series_) series_->rejected->Inc();
      state_ = State::kDone;
      deadline_.cancel();
      FERRY_LOG(kWarning, "proxy", "request ", request_id_, " to ", route_->ingress_deployment,
                " shed: max_queued_requests reached");
      Fail(503, ferry::StrCat("deployment ", route_->ingress_deployment,
                              " is overloaded: every replica is at max_ongoing_requests and the queue is full"));
      return;
  }
}

void Call::OnAssigned(router::ReplicaLease lease) {
  asio::post(worker_.io(), [self = shared_from_this(), lease = std::move(lease)]() mutable {
    if (self->state_ != State::kQueued) return;  // timed out or abandoned meanwhile: the lease goes back
    self->Dispatch(std::move(lease));
  });
}

void Call::Dispatch(router::ReplicaLease lease) {
  if (series_ && reroutes_ == 0)
    series_->queue_wait->Observe(std::chrono::duration<double>(SteadyClock::now() - routed_at_).count());
  lease_ = std::move(lease);
  replica_ = lease_.replica_ptr();
  if (trace_.sampled && reroutes_ == 0) {
    tracing::Span span;
    span.trace_id = trace_.trace_id;
    span.span_id = tracing::NewSpanId();
    span.parent_span_id = trace_.span_id;
    span.name = "ferry.queue";
    span.start_unix_ns = queued_at_ns_;
    span.end_unix_ns = tracing::UnixNanos();
    span.attributes = {{"ferry.application", route_->application},
                       {"ferry.deployment", route_->ingress_deployment},
                       {"ferry.replica", replica_->replica_id},
                       {"ferry.request_id", request_id_}};
    worker_.tracer()->Record(std::move(span));
  }
  state_ = State::kDispatched;
  uint32_t timeout_ms = 0;
  if (worker_.options().request_timeout) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_.expiry() -
                                                                      asio::steady_timer::clock_type::now());
    timeout_ms = static_cast<uint32_t>(std::max<int64_t>(1, left.count()));
  }
  channel_ = worker_.ChannelTo(lease_.replica_ptr());
  stream_id_ = channel_->Send(shared_from_this(), Encode(timeout_ms));
  // A streamed body's pieces that came while the request waited for a replica.
  if (!body_pending_.empty()) {
    channel_->SendChunk(stream_id_, body_pending_);
    body_pending_.clear();
    inbound_sent_ = true;
  }
  if (body_end_) channel_->SendEnd(stream_id_, *body_end_);
}

void Call::SendBody(std::string_view data) {
  if (state_ == State::kDone || data.empty()) return;
  inbound_credit_ -= static_cast<int64_t>(data.size());
  if (state_ == State::kQueued) {
    body_pending_.append(data);
    return;
  }
  inbound_sent_ = true;
  channel_->SendChunk(stream_id_, data);
}

void Call::EndBody(bool ok) {
  if (state_ == State::kDone || body_end_) return;
  body_end_ = ok;
  if (state_ == State::kDispatched) channel_->SendEnd(stream_id_, ok);
}

void Call::SendMessage(const transport::WsMessage& message) {
  if (state_ != State::kDispatched || !streaming_) return;
  inbound_credit_ -= static_cast<int64_t>(message.data.size());
  channel_->SendMessage(stream_id_, message);
}

void Call::SendClose(const transport::WsClose& close) {
  if (state_ == State::kDispatched && streaming_) channel_->SendClose(stream_id_, close);
}

void Call::OnCredit(uint32_t bytes) {
  const bool was_blocked = inbound_credit_ <= 0;
  inbound_credit_ += bytes;
  if (was_blocked && inbound_credit_ > 0 && session_) session_->ResumeInbound();
}

void Call::OnMessage(const transport::WsMessage& message) {
  if (session_) session_->OnMessage(message);
}

void Call::OnClose(const transport::WsClose& close) {
  if (session_) session_->OnClose(close);
}

transport::RequestMessage Call::Encode(uint32_t timeout_ms) {
  // Header names go to replicas in lower case; the arena keeps them alive while the frame is encoded.
  thread_local std::string arena;
  thread_local transport::HeaderList headers;
  size_t total = 0;
  for (const auto& field : request_) total += field.name_string().size();
  arena.clear();
  arena.reserve(total);
  headers.clear();
  const bool traced = trace_.sampled;
  for (const auto& field : request_) {
    if (traced && IsTraceparent(field.name_string())) continue;  // replaced below
    size_t at = arena.size();
    for (char c : field.name_string()) arena.push_back(static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c));
    std::string_view name = std::string_view(arena).substr(at);
    // x-ferry-* headers are what deployments tell each other on calls through handles (the caller, the
    // method, Python's pickled arguments): a client never sets them.
    if (name.rfind("x-ferry-", 0) == 0) {
      arena.resize(at);
      continue;
    }
    headers.emplace_back(name, std::string_view(field.value().data(), field.value().size()));
  }
  // The replica's spans are children of the proxy's.
  if (traced) headers.emplace_back("traceparent", traceparent_);
  std::string_view target(request_.target().data(), request_.target().size());
  size_t q = target.find('?');
  transport::RequestMessage m;
  m.request_id = request_id_;
  m.method = std::string_view(request_.method_string().data(), request_.method_string().size());
  m.path = target.substr(0, q);
  m.query = q == std::string_view::npos ? std::string_view() : target.substr(q + 1);
  m.route_prefix = route_->route_prefix;
  m.headers = headers;
  m.body = request_.body();
  m.timeout_ms = timeout_ms;
  m.body_mode = body_mode_;
  return m;
}

void Call::OnChannelFailed(bool delivered, std::string_view why) {
  if (!delivered) {
    OnReplicaUnreachable(why);
    return;
  }
  if (streaming_) {
    OnStreamEnd(transport::StreamEnd{false, ferry::StrCat("connection to replica lost: ", why)});
    return;
  }
  FERRY_LOG(kWarning, "proxy", "request ", request_id_, " failed with 502: connection to replica ", replica_id(),
            " lost (", why, ")");
  std::string body = ErrorJson(ferry::StrCat("replica ", replica_id(), " failed: ", why), request_id_);
  Finish(CallResult{502, JsonHeaders(), body});
}

void Call::OnReplicaUnreachable(std::string_view why) {
  if (state_ != State::kDispatched) return;
  if (answered_ || abandoned_ || inbound_sent_ || ++reroutes_ > kMaxReroutes) {
    FERRY_LOG(kWarning, "proxy", "request ", request_id_, " failed with 502: replica ", replica_id(), " unreachable (",
              why, ")");
    std::string body = ErrorJson(StrCat("replica ", replica_id(), " unreachable: ", why), request_id_);
    Finish(CallResult{502, JsonHeaders(), body});
    return;
  }
  // The request never reached the replica (it died a moment ago and the controller has not taken it out
  // of routing yet), so it is safe to send it elsewhere.
  FERRY_LOG(kInfo, "proxy", "request ", request_id_, ": replica ", replica_id(), " unreachable (", why,
            "); routing again");
  if (replica_) route_->router->ReportUnreachable(replica_->key);
  lease_.Release();
  channel_.reset();
  Route();
}

void Call::OnResponse(const transport::ResponseMessage& response) {
  Finish(CallResult{response.status, response.headers, response.body});
}

void Call::Finish(const CallResult& result) {
  if (state_ != State::kDispatched) return;
  state_ = State::kDone;
  deadline_.cancel();
  lease_.Release();
  channel_.reset();
  if (!answered_) Answer(result);
}

void Call::OnStreamStart(const transport::ResponseStart& head) {
  if (state_ != State::kDispatched || streaming_) return;
  // request_timeout_s bounds the wait for the first byte; a stream then lasts as long as its producer
  // and its client do.
  streaming_ = true;
  deadline_.cancel();
  if (answered_ || !session_) return;  // timed out meanwhile: the cancel is on its way
  answered_ = true;
  session_->BeginStream(head, request_id_);
}

void Call::OnStreamChunk(std::string_view data) {
  if (!streaming_ || !session_) return;
  session_->StreamChunk(data);
}

void Call::OnStreamEnd(const transport::StreamEnd& end) {
  if (state_ != State::kDispatched) return;
  state_ = State::kDone;
  lease_.Release();
  channel_.reset();
  if (!end.ok && !abandoned_)
    FERRY_LOG(kWarning, "proxy", "request ", request_id_, ": the stream from replica ", replica_id(),
              " broke: ", end.message);
  if (session_) session_->FinishStream(end.ok);
  session_.reset();
}

void Call::Credit(uint32_t bytes) {
  if (state_ == State::kDispatched && channel_ && bytes > 0) channel_->Credit(stream_id_, bytes);
}

void Call::OnDeadline() {
  if (answered_ || streaming_) return;
  if (series_) series_->timed_out->Inc();
  FERRY_LOG(kWarning, "proxy", "request ", request_id_, " to ", route_->ingress_deployment, " timed out after ",
            worker_.options().request_timeout->count(), " ms (", state_ == State::kQueued ? "queued" : "on a replica",
            ")");
  Abandon();
  Fail(504, ferry::StrCat("request timed out after request_timeout_s (",
                          worker_.options().request_timeout->count() / 1000.0, " s)"));
}

void Call::Abandon() {
  abandoned_ = true;
  if (state_ == State::kQueued) {
    route_->router->Cancel(this);  // when this loses a race with OnAssigned, the posted lease is dropped
    state_ = State::kDone;
  } else if (state_ == State::kDispatched && channel_) {
    // The slot stays taken until the replica confirms: it is still working until it sees the cancel.
    channel_->Cancel(stream_id_);
  }
  deadline_.cancel();
}

void Call::Answer(const CallResult& result) {
  answered_ = true;
  if (session_) session_->Deliver(result, request_id_);
  session_.reset();
}

void Call::Fail(unsigned status, std::string_view message) {
  if (answered_) return;
  std::string body = ErrorJson(message, request_id_);
  Answer(CallResult{status, status == 503 ? RetryLaterHeaders() : JsonHeaders(), body});
}

}  // namespace ferry::proxy
