// The proxy's internals: one Worker per I/O thread, each owning its HTTP sessions and its channels to
// replicas. Everything here runs on its worker's thread unless a comment says otherwise.
#pragma once

#include <array>
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/http.hpp>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "common/common.h"
#include "metrics/metrics.h"
#include "proxy/internal/access_log.h"
#include "proxy/proxy.h"
#include "router/router.h"
#include "router/routing_table.h"
#include "tracing/tracing.h"
#include "transport/replica_channel.h"

namespace ferry::proxy {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

class Worker;
class HttpSession;

// The proxy's metric families, shared by its workers.
struct ProxyMetrics {
  explicit ProxyMetrics(metrics::Registry& registry);
  metrics::Family<metrics::Counter>& requests;      // application, route, code
  metrics::Family<metrics::Histogram>& latency;     // application, route: parsed request -> answer written
  metrics::Family<metrics::Histogram>& queue_wait;  // application, deployment: routed -> sent to a replica
  metrics::Family<metrics::Counter>& rejected;      // application, deployment: 503, every replica and the queue full
  metrics::Family<metrics::Counter>& timed_out;     // application, deployment: 504, request_timeout_s passed
  metrics::Family<metrics::Counter>& websocket_closed;    // application, route, code: sessions ended
  metrics::Family<metrics::Counter>& websocket_messages;  // application, route, direction (in, out)
};

// One route's series as a worker holds them: looked up once per route, not per request.
struct RouteSeries {
  std::string application, route, deployment;
  metrics::Histogram* latency = nullptr;
  metrics::Histogram* queue_wait = nullptr;  // null for the proxy's own endpoints
  metrics::Counter* rejected = nullptr;
  metrics::Counter* timed_out = nullptr;
  std::array<metrics::Counter*, 600> codes{};  // by HTTP status, created on first use
};

// What a finished call hands back to its session.
struct CallResult {
  unsigned status = 200;
  transport::HeaderList headers;  // views valid during the completion callback only
  std::string_view body;
};

// A call's whole answer as an HTTP response (without the replica's framing headers, with x-request-id).
http::response<http::string_body> ResponseOf(const CallResult& result, unsigned version, const std::string& request_id);

// Who a call answers: an HTTP session, or a WebSocket session. On the worker's thread.
class CallSink {
 public:
  virtual ~CallSink() = default;
  // The whole answer (or the proxy's error instead of one).
  virtual void Deliver(const CallResult& result, const std::string& request_id) = 0;
  // A streamed answer: the head (for a WebSocket session, its 101), each chunk, the end (broken: not ok).
  virtual void BeginStream(const transport::ResponseStart& head, const std::string& request_id) = 0;
  virtual void StreamChunk(std::string_view data) = 0;
  virtual void FinishStream(bool ok) = 0;
  // The replica takes more of what the client sends (a streamed body, a session's messages).
  virtual void ResumeInbound() {}
  // A WebSocket session: a message from the deployment, and its close.
  virtual void OnMessage(const transport::WsMessage& message) { (void)message; }
  virtual void OnClose(const transport::WsClose& close) { (void)close; }
};

// One request from the moment it has a route to the moment it has an answer: waits in the router's queue,
// holds a replica slot, is forwarded over a channel, and may time out or be cancelled by the client.
// OnAssigned (from the router) may run on any thread; it moves the call back to its worker.
class Call : public router::Waiter, public transport::StreamListener, public std::enable_shared_from_this<Call> {
 public:
  enum class State { kQueued, kDispatched, kDone };
  Call(Worker& worker, std::shared_ptr<CallSink> session, std::shared_ptr<const router::RoutingTable> table,
       const router::Route* route, std::string request_id, RouteSeries* series);

  // How the request's body travels (before Start): whole (in `request`), streamed (SendBody and EndBody
  // after Start), or a WebSocket session (SendMessage and SendClose once the 101 came).
  void SetBodyMode(transport::BodyMode mode) { body_mode_ = mode; }
  // Runs the call: takes a slot or queues, arms the deadline. Answers at once when shed.
  void Start(http::request<http::string_body>&& request);
  // What the client sends after the request. Each spends credit: send only while WantsInbound(); the
  // sink's ResumeInbound says when there is more.
  bool WantsInbound() const { return inbound_credit_ > 0 && state_ != State::kDone; }
  void SendBody(std::string_view data);
  void EndBody(bool ok);
  void SendMessage(const transport::WsMessage& message);
  void SendClose(const transport::WsClose& close);
  void OnCredit(uint32_t bytes) override;
  void OnMessage(const transport::WsMessage& message) override;
  void OnClose(const transport::WsClose& close) override;
  // Traces this call under the proxy's span `context` (sampled): a queue span, and the replica's
  // traceparent. Before Start.
  void SetTrace(const tracing::SpanContext& context);
  const tracing::SpanContext& trace() const { return trace_; }
  const std::string& traceparent() const { return traceparent_; }
  void OnAssigned(router::ReplicaLease lease) override;  // any thread
  // From the channel: the replica's answer (whole, or a stream's head, chunks and end), or the channel's
  // failure (before the request was delivered: routed again; after: 502, or a broken stream).
  void OnResponse(const transport::ResponseMessage& response) override;
  void OnStreamStart(const transport::ResponseStart& head) override;
  void OnStreamChunk(std::string_view data) override;
  void OnStreamEnd(const transport::StreamEnd& end) override;
  void OnChannelFailed(bool delivered, std::string_view why) override;
  // From the session: `bytes` of the stream reached the client, so the replica may send that many more.
  void Credit(uint32_t bytes);
  bool streaming() const { return streaming_; }
  // The client went away: stop the work, answer nobody.
  void Abandon();
  const std::string& request_id() const { return request_id_; }
  State state() const { return state_; }
  // The replica it was last sent to; empty before that.
  std::string_view replica_id() const { return replica_ ? std::string_view(replica_->replica_id) : std::string_view(); }

 private:
  static constexpr int kMaxReroutes = 3;
  void Route();
  void Dispatch(router::ReplicaLease lease);
  // The request frame's fields, from the HTTP request (header names lower-cased into a reused arena).
  transport::RequestMessage Encode(uint32_t timeout_ms);
  void Finish(const CallResult& result);  // the replica's answer, or the proxy's error instead of one
  void OnReplicaUnreachable(std::string_view why);
  void OnDeadline();
  void Answer(const CallResult& result);
  void Fail(unsigned status, std::string_view message);

  Worker& worker_;
  std::shared_ptr<CallSink> session_;                  // the session drops its call when done, breaking the cycle
  std::shared_ptr<const router::RoutingTable> table_;  // keeps route_ alive
  const router::Route* route_;
  std::string request_id_;
  http::request<http::string_body> request_;
  router::ReplicaLease lease_;
  asio::steady_timer deadline_;
  State state_ = State::kQueued;
  bool answered_ = false;
  std::shared_ptr<transport::ReplicaChannel> channel_;
  uint64_t stream_id_ = 0;
  int reroutes_ = 0;
  bool abandoned_ = false;  // timed out or the client left: never routed again
  bool streaming_ = false;  // the replica began a streamed answer: no deadline from here
  RouteSeries* series_;     // null when the proxy keeps no metrics
  SteadyClock::time_point routed_at_ = SteadyClock::now();
  std::shared_ptr<const router::ReplicaEndpoint> replica_;
  tracing::SpanContext trace_;  // the proxy span's; not sampled: no spans
  std::string traceparent_;     // what the replica is sent when traced
  int64_t queued_at_ns_ = 0;
  // After the request: what the client sends (a streamed body's pieces, held until dispatch; a session's
  // messages), and the replica's credit for it.
  transport::BodyMode body_mode_ = transport::BodyMode::kWhole;
  int64_t inbound_credit_ = transport::kStreamWindow;
  std::string body_pending_;
  std::optional<bool> body_end_;  // the body's end (ok or broken), once the client finished sending
  bool inbound_sent_ = false;     // some of it went to a replica: never routed again
};

// A client connection as its worker sees it: an HTTP session or a WebSocket session.
class Session {
 public:
  virtual ~Session() = default;
  // The worker's sweep, a few times a second: closes a session whose deadline passed.
  virtual void CheckDeadline(SteadyClock::time_point now) = 0;
  // Draining: closes a session between requests (an HTTP one with a request in flight closes after
  // answering; a WebSocket session closes with 1001).
  virtual void CloseWhenIdle() = 0;
  // Closes now, abandoning what is in flight.
  virtual void CloseNow() = 0;
};

// One I/O thread: an io_context, an acceptor, sessions, channels to replicas.
class Worker {
 public:
  Worker(const ProxyOptions& options, router::RoutingTableCell* routing, std::atomic<int>* in_flight,
         std::atomic<bool>* draining, ProxyMetrics* metrics);
  absl::Status Listen(const tcp::endpoint& endpoint, bool reuse_port);
  uint16_t port() const;
  void Start();       // spawns nothing: the caller runs io().run() on a thread
  void BeginDrain();  // worker thread: stop accepting, close idle sessions
  void CloseAll();    // worker thread: close every session (queued calls leave their routers)

  asio::io_context& io() { return io_; }
  const ProxyOptions& options() const { return options_; }
  // The routing table in force (this worker's view of the cell; only a publish makes it re-read).
  const std::shared_ptr<const router::RoutingTable>& table() { return routing_.Get(); }
  std::atomic<int>& in_flight() { return *in_flight_; }
  bool draining() const { return draining_->load(std::memory_order_relaxed); }
  // This worker's channel to `replica` (made, and connected, on first use).
  std::shared_ptr<transport::ReplicaChannel> ChannelTo(const std::shared_ptr<const router::ReplicaEndpoint>& replica);
  void AddSession(Session* s) { sessions_.insert(s); }
  void RemoveSession(Session* s) { sessions_.erase(s); }

  // The series of `route` in `table` (null route: the proxy's own endpoints and unmatched paths); null
  // when the proxy keeps no metrics.
  RouteSeries* Series(const std::shared_ptr<const router::RoutingTable>& table, const router::Route* route);
  // Counts an answer with `status` on `series`, and its latency (none for errors before a request was parsed).
  void RecordResponse(RouteSeries* series, unsigned status, std::optional<double> seconds);
  // Counts a WebSocket session that ended with `close_code`, and its messages.
  void RecordWebSocketSession(RouteSeries* series, unsigned close_code, uint64_t messages_in, uint64_t messages_out);
  // This worker's access lines, written in one block by the sweep (or when the block is large).
  AccessLog& access_log() { return access_log_; }
  tracing::Tracer* tracer() const { return options_.tracer; }

 private:
  void DoAccept();
  void Sweep();
  const ProxyOptions& options_;
  router::RoutingTableCell::Reader routing_;
  std::atomic<int>* in_flight_;
  std::atomic<bool>* draining_;
  // Declared before io_ so that they outlive the sessions io_ destroys with its handlers.
  std::unordered_set<Session*> sessions_;
  AccessLog access_log_;
  asio::io_context io_{1};
  tcp::acceptor acceptor_{io_};
  asio::steady_timer sweep_{io_};  // checks sessions' deadlines: one timer per thread, not per request
  std::unordered_map<uint64_t, std::shared_ptr<transport::ReplicaChannel>> channels_;
  // Metrics: series by route for the table in use (pointer keys, cleared when the table changes), and
  // every series this worker made, by "application\nroute\ndeployment".
  ProxyMetrics* metrics_;  // null: no metrics
  std::shared_ptr<const router::RoutingTable> series_table_;
  std::unordered_map<const router::Route*, RouteSeries*> series_by_route_;
  std::unordered_map<std::string, std::unique_ptr<RouteSeries>> series_;
};

// Starts serving one accepted connection.
void StartHttpSession(Worker& worker, tcp::socket socket);

// What an HTTP session hands a WebSocket session when a request upgrades: the connection, the request,
// where it goes, and what the HTTP session already knew of it.
struct Upgrade {
  tcp::socket socket;
  http::request<http::string_body> request;
  std::shared_ptr<const router::RoutingTable> table;
  const router::Route* route = nullptr;
  RouteSeries* series = nullptr;
  std::string request_id;
  SteadyClock::time_point started;
  bool access_log = false;
  std::optional<tracing::Span> span;  // the proxy's span of the session, when traced
  tracing::SpanContext trace;
};
// Runs a WebSocket session on `upgrade`'s connection (ws_session.cc): the deployment accepts or refuses
// it, then messages go both ways until either side closes.
void StartWebSocketSession(Worker& worker, Upgrade&& upgrade);
// Whether `request` asks to become a WebSocket session (GET, Connection: upgrade, Upgrade: websocket).
bool IsWebSocketUpgrade(const http::request<http::string_body>& request);

}  // namespace ferry::proxy
