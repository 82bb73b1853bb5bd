// HttpSession: one client connection. Reads requests (with header and idle deadlines and size limits),
// answers the proxy's own endpoints, starts a Call for the rest, notices when the client hangs up while
// its request runs, and writes answers back in order.
#include <sys/socket.h>

#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <nlohmann/json.hpp>
#include <optional>

#include "common/common.h"
#include "proxy/internal/access_log.h"
#include "proxy/internal/inference_endpoints.h"
#include "proxy/internal/proxy_internal.h"
#include "proxy/internal/request_head.h"

namespace ferry::proxy {

namespace beast = boost::beast;

class HttpSession : public Session, public CallSink, public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(Worker& worker, tcp::socket socket) : worker_(worker), socket_(std::move(socket)) {}
  ~HttpSession() override { worker_.RemoveSession(this); }

  void Start() {
    worker_.AddSession(this);
    boost::system::error_code ignored;
    socket_.set_option(tcp::no_delay(true), ignored);
    EnterIdle();
  }

  void Deliver(const CallResult& result, const std::string& request_id) override {
    if (phase_ != Phase::kProcessing) return;
    if (body_streaming_) close_after_response_ = true;  // answered before the body's end: the rest is not read
    Write(ResponseOf(result, version_, request_id), false);
  }

  // A streamed answer: the head now, then each chunk as it comes (chunked transfer encoding; for an
  // HTTP/1.0 client the raw body, ended by closing). One write at a time; what arrives meanwhile gathers
  // and goes out in the next. Each chunk's bytes are credited back to the replica once written, so a slow
  // client holds its producer to one window (transport::kStreamWindow) ahead of it.
  void BeginStream(const transport::ResponseStart& head, const std::string& request_id) override {
    if (phase_ != Phase::kProcessing) return;
    if (body_streaming_) close_after_response_ = true;
    phase_ = Phase::kStreaming;
    stream_status_ = head.status;
    stream_chunked_ = version_ >= 11;
    if (!stream_chunked_ || worker_.draining()) close_after_response_ = true;
    std::string& out = stream_pending_;
    const auto status = static_cast<http::status>(head.status);
    StrAppend(&out, "HTTP/", version_ / 10, ".", version_ % 10, " ", head.status, " ",
              std::string_view(http::obsolete_reason(status).data(), http::obsolete_reason(status).size()), "\r\n");
    bool event_stream = false;
    for (const auto& [name, value] : head.headers) {
      if (beast::iequals(name, "content-length") || beast::iequals(name, "transfer-encoding") ||
          beast::iequals(name, "connection") || beast::iequals(name, "x-request-id"))
        continue;
      if (beast::iequals(name, "content-type") && value.starts_with("text/event-stream")) event_stream = true;
      StrAppend(&out, name, ": ", value, "\r\n");
    }
    // Server-Sent Events are never cached, and go through buffering reverse proxies as they come.
    if (event_stream) out.append("cache-control: no-cache\r\nx-accel-buffering: no\r\n");
    StrAppend(&out, "x-request-id: ", request_id, "\r\n");
    if (stream_chunked_) out.append("transfer-encoding: chunked\r\n");
    if (close_after_response_)
      out.append("connection: close\r\n");
    else if (version_ < 11)
      out.append("connection: keep-alive\r\n");
    out.append("\r\n");
    FlushStream();
  }

  void StreamChunk(std::string_view data) override {
    if (phase_ != Phase::kStreaming || data.empty()) return;
    if (stream_chunked_) {
      char size[24];
      int n = snprintf(size, sizeof(size), "%zx\r\n", data.size());
      stream_pending_.append(size, static_cast<size_t>(n));
    }
    stream_pending_.append(data);
    if (stream_chunked_) stream_pending_.append("\r\n");
    pending_credit_ += data.size();
    ++stream_chunks_;
    stream_bytes_ += data.size();
    FlushStream();
  }

  void FinishStream(bool ok) override {
    if (phase_ != Phase::kStreaming) return;
    stream_ended_ = true;
    stream_ok_ = ok;
    if (ok && stream_chunked_) stream_pending_.append("0\r\n\r\n");
    if (!ok) close_after_response_ = true;  // the client sees the body cut short
    FlushStream();
  }

  void CloseNow() override { Close(); }

  void CloseWhenIdle() override {
    close_after_response_ = true;
    if (phase_ == Phase::kIdle) Close();
  }

  // The replica takes more of a streamed body.
  void ResumeInbound() override {
    if (body_paused_) ReadBodyPiece();
  }

  enum class Phase { kIdle, kReadingHeader, kReadingBody, kProcessing, kStreaming, kWriting, kLingering, kClosed };

  // Called by the worker's sweep a few times a second. Idle too long between requests, or too slow sending
  // one: close. Requests being processed have their own deadline in their Call.
  void CheckDeadline(SteadyClock::time_point now) override {
    if (now < deadline_) return;
    if (phase_ == Phase::kLingering) {  // the client went quiet without closing: enough
      Close();
      return;
    }
    if (phase_ == Phase::kProcessing && reading_body_) {
      FERRY_LOG(kInfo, "proxy", "request ", request_id_, ": the client stopped sending its body; closing");
      Close();
      return;
    }
    if (phase_ == Phase::kIdle || phase_ == Phase::kReadingHeader || phase_ == Phase::kReadingBody) {
      if (phase_ != Phase::kIdle)
        FERRY_LOG(kInfo, "proxy", "closing a connection that did not finish its request in time");
      Close();
    }
  }

 private:
  void SetDeadline(std::chrono::milliseconds after) { deadline_ = SteadyClock::now() + after; }

  void EnterIdle() {
    phase_ = Phase::kIdle;
    call_.reset();
    body_parser_.reset();
    if (close_after_response_ || worker_.draining()) {
      Close();
      return;
    }
    SetDeadline(worker_.options().keep_alive_timeout);
    if (buffer_.size() > 0) {
      ReadHeader();
      return;
    }
    ReadAhead();
  }

  // Reads whatever comes next into the buffer: the next request, or the client hanging up. It runs while a
  // request is processed too, which is how a disconnect cancels the request.
  void ReadAhead() {
    if (reading_ahead_) return;
    reading_ahead_ = true;
    socket_.async_read_some(buffer_.prepare(kReadAhead),
                            [self = shared_from_this()](const boost::system::error_code& ec, size_t n) {
                              self->reading_ahead_ = false;
                              self->buffer_.commit(n);
                              self->OnReadAhead(ec);
                            });
  }

  void OnReadAhead(const boost::system::error_code& ec) {
    if (phase_ == Phase::kClosed) return;
    if (ec) {
      if (call_ && call_->state() != Call::State::kDone)
        FERRY_LOG(kInfo, "proxy", "request ", call_->request_id(), ": client disconnected; cancelling");
      Close();
      return;
    }
    if (phase_ == Phase::kIdle) ReadHeader();
    // While processing or writing, the next (pipelined) request waits in the buffer until the answer is out.
  }

  void ReadHeader() {
    phase_ = Phase::kReadingHeader;
    parser_.emplace();
    ConfigureParser(*parser_, worker_.options());
    SetDeadline(worker_.options().header_timeout);
    http::async_read_header(
        socket_, buffer_, *parser_,
        [self = shared_from_this()](const boost::system::error_code& ec, size_t) { self->OnHeader(ec); });
  }

  void OnHeader(const boost::system::error_code& ec) {
    if (phase_ == Phase::kClosed) return;
    if (ec) {
      OnReadError(ec);
      return;
    }
    const auto& req = parser_->get();
    version_ = req.version();
    if (std::optional<ErrorAnswer> refused = CheckHeader(req)) {
      WriteError(refused->status, refused->message, refused->close);
      return;
    }
    if (parser_->is_done()) {
      OnRequest();
      return;
    }
    phase_ = Phase::kReadingBody;
    const bool stream = StreamsBody(req);
    auto read_body = [self = shared_from_this(), stream] {
      if (stream) {
        self->OnStreamedHead();
        return;
      }
      self->SetDeadline(std::max(self->worker_.options().header_timeout, std::chrono::milliseconds(60000)));
      http::async_read(self->socket_, self->buffer_, *self->parser_,
                       [self](const boost::system::error_code& ec, size_t) {
                         if (self->phase_ == Phase::kClosed) return;
                         if (ec) {
                           self->OnReadError(ec);
                           return;
                         }
                         self->OnRequest();
                       });
    };
    if (beast::iequals(req[http::field::expect], "100-continue")) {
      static const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      asio::async_write(socket_, asio::buffer(kContinue),
                        [self = shared_from_this(), read_body](const boost::system::error_code& ec, size_t) {
                          if (ec || self->phase_ == Phase::kClosed) return self->Close();
                          read_body();
                        });
      return;
    }
    read_body();
  }

  // Whether a request's body goes to its replica as it arrives: larger than body_stream_threshold_bytes,
  // or chunked without a length. Only for routes (the proxy's own endpoints and the inference protocol
  // take whole bodies).
  bool StreamsBody(const http::request<http::string_body>& req) const {
    const auto& parser = *parser_;
    if (parser.content_length() && *parser.content_length() <= worker_.options().body_stream_threshold_bytes)
      return false;
    return Classify(req).kind == RequestHead::Kind::kRoute;
  }

  // A request whose body streams: it goes to its deployment now, its body piece by piece as the replica
  // takes it (credit), the rest on the stream. `max_body_bytes` still bounds the whole: past it, a request
  // not yet answered gets 413 and the deployment's request is cancelled (its reads of the body fail).
  void OnStreamedHead() {
    deadline_ = SteadyClock::time_point::max();
    phase_ = Phase::kProcessing;
    body_parser_.emplace(std::move(*parser_));
    parser_.reset();
    body_parser_->body_limit(static_cast<uint64_t>(worker_.options().max_body_bytes));
    buffer_.reserve(kBodyPiece);  // reads as large as a piece, not the read-ahead's 4 KiB
    http::request<http::string_body> req(body_parser_->get().base());
    const RequestHead head = Classify(req);
    request_id_ = RequestIdFrom(req);
    started_ = SteadyClock::now();
    series_ = nullptr;
    worker_.in_flight().fetch_add(1, std::memory_order_relaxed);
    counted_ = true;
    close_after_response_ = close_after_response_ || !req.keep_alive();
    std::shared_ptr<const router::RoutingTable> table = worker_.table();
    const router::Route* route = table->Match(head.path);
    if (!route) {
      if (table->access_log()) BeginAccess(req, head.path, nullptr);
      if (!table->refusal().empty()) return WriteError(http::status::service_unavailable, table->refusal(), true);
      WriteError(http::status::not_found, ferry::StrCat("no application is routed at ", head.path), true);
      return;
    }
    body_streaming_ = true;
    StartCall(std::move(req), head.path, std::move(table), route, transport::BodyMode::kStreamed);
    ReadBodyPiece();
  }

  void ReadBodyPiece() {
    if (!body_streaming_ || phase_ == Phase::kClosed || reading_body_) return;
    if (!call_ || !call_->WantsInbound()) {
      body_paused_ = true;  // the replica has a window of it unread: wait for its credit
      deadline_ = SteadyClock::time_point::max();
      return;
    }
    body_paused_ = false;
    if (!piece_) piece_ = std::make_unique<char[]>(kBodyPiece);
    auto& body = body_parser_->get().body();
    body.data = piece_.get();
    body.size = kBodyPiece;
    body.more = true;
    SetDeadline(std::max(worker_.options().header_timeout, std::chrono::milliseconds(60000)));
    reading_body_ = true;
    http::async_read_some(socket_, buffer_, *body_parser_,
                          [self = shared_from_this()](boost::system::error_code ec, size_t) {
                            self->reading_body_ = false;
                            self->OnBodyPiece(ec);
                          });
  }

  void OnBodyPiece(boost::system::error_code ec) {
    if (phase_ == Phase::kClosed || !body_streaming_) return;
    if (ec == http::error::need_buffer) ec = {};
    const size_t got = kBodyPiece - body_parser_->get().body().size;
    if (got > 0 && call_) call_->SendBody(std::string_view(piece_.get(), got));
    if (ec) {
      body_streaming_ = false;
      if (call_) call_->EndBody(false);
      // The connection ending mid-body (partial_message) is the client leaving, not a malformed request.
      std::optional<ErrorAnswer> answer;
      if (ec != http::error::partial_message) answer = AnswerToReadError(ec, worker_.options());
      if (answer && phase_ == Phase::kProcessing) {
        // Nothing was answered yet: the client hears what was wrong; the deployment's request is cancelled.
        FERRY_LOG(kInfo, "proxy", "request ", request_id_, ": body refused mid-stream (", answer->message,
                  "); cancelling it");
        if (call_) call_->Abandon();
        linger_ = true;  // the client is likely still sending: let it, so that it reads the answer
        WriteError(answer->status, answer->message, true);
        return;
      }
      Close();
      return;
    }
    if (body_parser_->is_done()) {
      body_streaming_ = false;
      piece_.reset();
      buffer_.shrink_to_fit();
      deadline_ = SteadyClock::time_point::max();
      if (call_) call_->EndBody(true);
      if (phase_ == Phase::kProcessing && buffer_.size() == 0) ReadAhead();
      return;
    }
    ReadBodyPiece();
  }

  void OnReadError(const boost::system::error_code& ec) {
    if (std::optional<ErrorAnswer> answer = AnswerToReadError(ec, worker_.options())) {
      linger_ = answer->close;  // a body may be on its way (a length over max_body_bytes, say)
      WriteError(answer->status, answer->message, answer->close);
    } else {
      Close();
    }
  }

  // After an answer that ends the connection while the client may still be sending (a body refused
  // mid-stream or by its length): stop sending, then read and drop what still comes before closing, as
  // nginx's lingering close does. Closing with unread data would reset the connection, and a client still
  // writing its body would get a broken pipe instead of the answer. Bounded: 2 s without data, 64 MiB.
  void Linger() {
    phase_ = Phase::kLingering;
    boost::system::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_send, ignored);
    linger_left_ = 64 << 20;
    if (!piece_) piece_ = std::make_unique<char[]>(kBodyPiece);
    LingerRead();
  }
  void LingerRead() {
    SetDeadline(std::chrono::milliseconds(2000));
    socket_.async_read_some(asio::buffer(piece_.get(), kBodyPiece),
                            [self = shared_from_this()](const boost::system::error_code& ec, size_t n) {
                              if (self->phase_ != Phase::kLingering) return;
                              if (ec || n >= self->linger_left_) {
                                self->Close();
                                return;
                              }
                              self->linger_left_ -= n;
                              self->LingerRead();
                            });
  }

  void OnRequest() {
    deadline_ = SteadyClock::time_point::max();
    phase_ = Phase::kProcessing;
    http::request<http::string_body> req = parser_->release();
    parser_.reset();
    const RequestHead head = Classify(req);
    const std::string_view path = head.path;
    request_id_ = RequestIdFrom(req);
    started_ = SteadyClock::now();
    series_ = nullptr;  // the proxy's own endpoints and unmatched paths: set on first use below
    worker_.in_flight().fetch_add(1, std::memory_order_relaxed);
    counted_ = true;
    if (!req.keep_alive()) close_after_response_ = true;
    switch (head.kind) {
      case RequestHead::Kind::kOwnEndpoint:
        ServeOwnEndpoint(path);
        return;
      case RequestHead::Kind::kInferenceProtocol:
        ServeInferenceProtocol(std::move(req), path);
        return;
      case RequestHead::Kind::kReject:
        WriteError(head.error.status, head.error.message, head.error.close);
        return;
      case RequestHead::Kind::kRoute:
        break;
    }
    std::shared_ptr<const router::RoutingTable> table = worker_.table();
    const router::Route* route = table->Match(path);
    if (!route) {
      if (table->access_log()) BeginAccess(req, path, nullptr);
      if (!table->refusal().empty()) return WriteError(http::status::service_unavailable, table->refusal(), false);
      WriteError(http::status::not_found, ferry::StrCat("no application is routed at ", path), false);
      return;
    }
    if (IsWebSocketUpgrade(req)) {
      HandOff(std::move(req), path, std::move(table), route);
      return;
    }
    // While the call runs, watch for the client hanging up (or its next pipelined request).
    if (buffer_.size() == 0) ReadAhead();
    StartCall(std::move(req), path, std::move(table), route);
  }

  // A WebSocket session leaves this session with the connection: it answers, logs and counts itself.
  void HandOff(http::request<http::string_body>&& req, std::string_view path,
               std::shared_ptr<const router::RoutingTable> table, const router::Route* route) {
    Upgrade up{std::move(socket_), {}, std::move(table), route, nullptr, request_id_, *started_, false, {}, {}};
    up.series = worker_.Series(up.table, route);
    up.access_log = route->access_log;
    if (tracing::Tracer* tracer = worker_.tracer(); tracer && tracer->enabled()) {
      up.trace = BeginTrace(*tracer, req, path, route);
      up.span = std::move(span_);
      span_.reset();
    }
    up.request = std::move(req);
    Uncount();
    phase_ = Phase::kClosed;
    series_ = nullptr;
    StartWebSocketSession(worker_, std::move(up));
  }

  // Sends a request to `route`'s deployment: its metrics series, its access line, its trace.
  void StartCall(http::request<http::string_body>&& req, std::string_view path,
                 std::shared_ptr<const router::RoutingTable> table, const router::Route* route,
                 transport::BodyMode body_mode = transport::BodyMode::kWhole) {
    series_ = worker_.Series(table, route);
    if (route->access_log) BeginAccess(req, path, route);
    tracing::SpanContext trace;
    if (tracing::Tracer* tracer = worker_.tracer(); tracer && tracer->enabled())
      trace = BeginTrace(*tracer, req, path, route);
    call_ = std::make_shared<Call>(worker_, shared_from_this(), std::move(table), route, request_id_, series_);
    if (trace.sampled) call_->SetTrace(trace);
    call_->SetBodyMode(body_mode);
    call_->Start(std::move(req));
  }

  void BeginAccess(const http::request<http::string_body>& req, std::string_view path, const router::Route* route) {
    access_.Begin(std::string_view(req.method_string().data(), req.method_string().size()), path, route);
  }

  tracing::SpanContext BeginTrace(const tracing::Tracer& tracer, const http::request<http::string_body>& req,
                                  std::string_view path, const router::Route* route) {
    tracing::SpanContext parent;
    if (auto it = req.find("traceparent"); it != req.end())
      tracing::ParseTraceparent(std::string_view(it->value().data(), it->value().size()), &parent);
    tracing::SpanContext context = tracer.StartSpan(parent);
    if (!context.sampled) return context;
    span_.emplace();
    span_->trace_id = context.trace_id;
    span_->span_id = context.span_id;
    span_->parent_span_id = parent.valid() ? parent.span_id : 0;
    span_->kind = tracing::SpanKind::kServer;
    span_->start_unix_ns = tracing::UnixNanos();
    std::string_view method(req.method_string().data(), req.method_string().size());
    span_->name = ferry::StrCat(method, " ", route->route_prefix);
    span_->attributes = {{"http.request.method", std::string(method)},
                         {"url.path", std::string(path)},
                         {"http.route", route->route_prefix},
                         {"ferry.application", route->application},
                         {"ferry.deployment", route->ingress_deployment},
                         {"ferry.request_id", request_id_}};
    return context;
  }

  void ServeOwnEndpoint(std::string_view path) {
    if (path == "/-/healthz") {
      if (worker_.draining()) {
        WriteText(http::status::service_unavailable, "This node is being drained.", "text/plain");
      } else {
        WriteText(http::status::ok, "success", "text/plain");
      }
      return;
    }
    if (path == "/-/routes") {
      nlohmann::json routes = nlohmann::json::object();
      for (const auto& r : worker_.table()->routes()) routes[r.route_prefix] = r.application;
      WriteText(http::status::ok, routes.dump(), "application/json");
      return;
    }
    WriteError(http::status::not_found, ferry::StrCat("no proxy endpoint at ", path), false);
  }

  // The Open Inference Protocol (V2): health and server metadata here; a model's metadata and infer go
  // to one of its replicas, whose SDK speaks the protocol.
  void ServeInferenceProtocol(http::request<http::string_body>&& req, std::string_view path) {
    std::shared_ptr<const router::RoutingTable> table = worker_.table();
    InferenceAnswer a = AnswerInferenceProtocol(req.method(), path, *table, worker_.draining());
    if (!a.route) {
      if (a.error)
        WriteError(a.status, a.body, false);
      else
        WriteText(a.status, std::move(a.body), "application/json");
      return;
    }
    if (buffer_.size() == 0) ReadAhead();
    StartCall(std::move(req), path, table, a.route);
  }

  void WriteText(http::status status, std::string body, std::string_view content_type) {
    http::response<http::string_body> res{status, version_};
    res.set(http::field::content_type, beast::string_view(content_type.data(), content_type.size()));
    res.set("x-request-id", request_id_);
    res.body() = std::move(body);
    Write(std::move(res), false);
  }

  void WriteError(http::status status, std::string_view message, bool close) {
    if (request_id_.empty()) request_id_ = NewRequestId();
    nlohmann::json body = {{"error", message}, {"request_id", request_id_}};
    http::response<http::string_body> res{status, version_ ? version_ : 11};
    res.set(http::field::content_type, "application/json");
    res.set("x-request-id", request_id_);
    if (status == http::status::service_unavailable) res.set(http::field::retry_after, "1");
    res.body() = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    Write(std::move(res), close);
  }

  void Write(http::response<http::string_body>&& res, bool close) {
    RecordResponse(res.result_int());
    deadline_ = SteadyClock::time_point::max();
    phase_ = Phase::kWriting;
    if (close || close_after_response_ || worker_.draining()) close_after_response_ = true;
    res.keep_alive(!close_after_response_);
    res.prepare_payload();
    response_ = std::move(res);
    http::async_write(socket_, response_, [self = shared_from_this()](const boost::system::error_code& ec, size_t) {
      self->OnWritten(ec);
    });
  }

  void FlushStream() {
    if (stream_writing_now_ || phase_ != Phase::kStreaming) return;
    if (stream_pending_.empty()) {
      if (stream_ended_) EndOfStream();
      return;
    }
    stream_writing_.swap(stream_pending_);
    writing_credit_ = pending_credit_;
    pending_credit_ = 0;
    stream_writing_now_ = true;
    asio::async_write(socket_, asio::buffer(stream_writing_),
                      [self = shared_from_this()](const boost::system::error_code& ec, size_t) {
                        self->stream_writing_now_ = false;
                        self->stream_writing_.clear();
                        if (self->phase_ != Phase::kStreaming) return;
                        if (ec) {
                          self->Close();  // the client is gone: the call cancels the stream
                          return;
                        }
                        const uint64_t written = self->writing_credit_;
                        self->writing_credit_ = 0;
                        if (self->call_ && written > 0) self->call_->Credit(static_cast<uint32_t>(written));
                        self->FlushStream();
                      });
  }

  // Everything of the stream is written: count it, log it, and go on with the connection (or close it).
  void EndOfStream() {
    access_.SetStream(stream_chunks_, stream_bytes_);
    if (span_) {
      span_->attributes.push_back({"ferry.stream.chunks", static_cast<int64_t>(stream_chunks_)});
      span_->attributes.push_back({"ferry.stream.bytes", static_cast<int64_t>(stream_bytes_)});
    }
    RecordResponse(stream_ok_ ? stream_status_ : 502);
    stream_chunks_ = stream_bytes_ = 0;
    stream_ended_ = false;
    phase_ = Phase::kWriting;
    OnWritten(stream_ok_ ? boost::system::error_code() : asio::error::connection_aborted);
  }

  void OnWritten(const boost::system::error_code& ec) {
    Uncount();
    request_id_.clear();
    response_ = {};
    if (ec || close_after_response_) {
      if (!ec && linger_) {
        Linger();
        return;
      }
      Close();
      return;
    }
    EnterIdle();
  }

  // Counts this answer: on its route's series, or the proxy's own (own endpoints, unmatched paths, and
  // errors before a request was parsed, which have no latency).
  void RecordResponse(unsigned status) {
    RouteSeries* series = series_ ? series_ : worker_.Series(worker_.table(), nullptr);
    const std::optional<double> seconds = Elapsed();
    worker_.RecordResponse(series, status, seconds);
    if (span_ || access_.pending()) EndRequest(status, seconds);
    series_ = nullptr;
    started_.reset();
  }

  // Seconds since the current request was parsed; none before that.
  std::optional<double> Elapsed() const {
    if (!started_) return std::nullopt;
    return std::chrono::duration<double>(SteadyClock::now() - *started_).count();
  }

  // The current request's span and access line, once its outcome (`status`) is known.
  void EndRequest(unsigned status, std::optional<double> seconds) {
    std::string_view replica = call_ ? call_->replica_id() : std::string_view();
    std::string trace_id = span_ && access_.pending() ? tracing::TraceIdHex(span_->trace_id) : std::string();
    if (span_) EndTrace(status, replica);
    if (access_.pending())
      access_.Write(worker_.access_log(), request_id_, status, replica, trace_id, seconds.value_or(0) * 1000);
  }

  void EndTrace(unsigned status, std::string_view replica) {
    span_->end_unix_ns = tracing::UnixNanos();
    span_->attributes.push_back({"http.response.status_code", static_cast<int64_t>(status)});
    if (!replica.empty()) span_->attributes.push_back({"ferry.replica", std::string(replica)});
    span_->error = status >= 500;  // OpenTelemetry's HTTP server rule: 4xx are the client's
    worker_.tracer()->Record(std::move(*span_));
    span_.reset();
  }

  void Uncount() {
    if (counted_) worker_.in_flight().fetch_sub(1, std::memory_order_relaxed);
    counted_ = false;
  }

  void Close() {
    if (phase_ == Phase::kClosed) return;
    const Phase phase = phase_;
    phase_ = Phase::kClosed;
    body_streaming_ = false;
    Uncount();
    if (call_) call_->Abandon();
    if (phase == Phase::kStreaming) access_.SetStream(stream_chunks_, stream_bytes_);
    // A request the client gave up on still gets its span and access line, with nginx's 499.
    if (span_ || access_.pending()) EndRequest(kClientClosedRequest, Elapsed());
    call_.reset();
    boost::system::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
  }

  bool linger_ = false;     // closing after the answer: linger first (see Linger)
  size_t linger_left_ = 0;  // bytes a lingering connection may still drop
  static constexpr size_t kReadAhead = 4096;
  static constexpr size_t kBodyPiece = 64 * 1024;
  static constexpr unsigned kClientClosedRequest = 499;
  Worker& worker_;
  tcp::socket socket_;
  SteadyClock::time_point deadline_ = SteadyClock::time_point::max();
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  // A streamed body: its parser (the head's, converted), the buffer each piece is read into, and whether a
  // read is in flight or waits for the replica's credit.
  std::optional<http::request_parser<http::buffer_body>> body_parser_;
  std::unique_ptr<char[]> piece_;
  bool body_streaming_ = false;
  bool reading_body_ = false;
  bool body_paused_ = false;
  http::response<http::string_body> response_;
  std::shared_ptr<Call> call_;
  std::string request_id_;
  Phase phase_ = Phase::kIdle;
  unsigned version_ = 11;
  bool reading_ahead_ = false;
  bool close_after_response_ = false;
  bool counted_ = false;
  // The current streamed answer: bytes waiting for the write in flight, and its figures.
  std::string stream_pending_, stream_writing_;
  uint64_t pending_credit_ = 0, writing_credit_ = 0;  // chunk bytes in each, credited once written
  uint64_t stream_chunks_ = 0, stream_bytes_ = 0;
  unsigned stream_status_ = 200;
  bool stream_chunked_ = true;
  bool stream_writing_now_ = false;
  bool stream_ended_ = false;
  bool stream_ok_ = true;
  RouteSeries* series_ = nullptr;                   // the current request's, once routed
  std::optional<SteadyClock::time_point> started_;  // when the current request was parsed
  AccessLine access_;                               // the current request's, written when it is answered
  std::optional<tracing::Span> span_;               // the proxy's span of the current request, when it is traced
};

void StartHttpSession(Worker& worker, tcp::socket socket) {
  std::make_shared<HttpSession>(worker, std::move(socket))->Start();
}

}  // namespace ferry::proxy
