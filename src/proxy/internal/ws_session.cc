// WebSocketSession: a client connection that upgraded to WebSocket (RFC 6455). The deployment decides
// first: the request goes to a replica as a session, which accepts (the proxy then answers 101 and the
// handshake completes) or refuses (its answer goes back as a plain HTTP response). Then messages pass both
// ways, each one credited back when its receiver took it, so neither side outruns the other by more than a
// window; the proxy answers pings, pings a quiet client, enforces the message size limit (1009), closes
// sessions idle too long (1001), and closes with the RFC's codes when the client breaks the protocol. The
// session holds its replica slot (one ongoing request) until both sides are closed.
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/websocket.hpp>
#include <deque>

#include "common/common.h"
#include "proxy/internal/proxy_internal.h"

namespace ferry::proxy {

namespace beast = boost::beast;
namespace websocket = beast::websocket;

bool IsWebSocketUpgrade(const http::request<http::string_body>& request) { return websocket::is_upgrade(request); }

namespace {

// How a read that ended tells the deployment why: the client's close code, or the code the proxy closed
// with (RFC 6455 7.4.1).
transport::WsClose CloseFor(const boost::system::error_code& ec, const websocket::close_reason& client) {
  if (ec == websocket::error::closed) {
    uint16_t code = client.code == websocket::close_code::none ? 1005 : static_cast<uint16_t>(client.code);
    if (code < 1000 || code > 4999) code = 1002;
    return {code, std::string_view(client.reason.data(), client.reason.size())};
  }
  if (ec == websocket::error::message_too_big) return {1009, "message too big"};
  if (ec == websocket::error::bad_frame_payload) return {1007, "invalid UTF-8 in a text message"};
  if (ec.category() == make_error_code(websocket::error::closed).category() ||
      ec == websocket::condition::protocol_violation)
    return {1002, "protocol error"};
  return {1006, "connection lost"};
}

}  // namespace

class WebSocketSession : public Session, public CallSink, public std::enable_shared_from_this<WebSocketSession> {
 public:
  WebSocketSession(Worker& worker, Upgrade&& up) : worker_(worker), up_(std::move(up)), ws_(std::move(up_.socket)) {}
  ~WebSocketSession() override { worker_.RemoveSession(this); }

  void Start() {
    worker_.AddSession(this);
    worker_.in_flight().fetch_add(1, std::memory_order_relaxed);
    counted_ = true;
    std::string_view target(up_.request.target().data(), up_.request.target().size());
    if (up_.access_log) access_.Begin("GET", target.substr(0, target.find('?')), up_.route);
    call_ = std::make_shared<Call>(worker_, shared_from_this(), up_.table, up_.route, up_.request_id, up_.series);
    if (up_.trace.sampled) call_->SetTrace(up_.trace);
    call_->SetBodyMode(transport::BodyMode::kWebSocket);
    http::request<http::string_body> copy = up_.request;  // the handshake still needs it
    call_->Start(std::move(copy));
  }

  // Refused (or never reached a replica: 503, 504, 502): a plain HTTP answer, then the connection closes.
  void Deliver(const CallResult& result, const std::string& request_id) override {
    if (state_ != State::kWaiting) return;
    state_ = State::kRefused;
    call_ended_ = true;
    response_ = ResponseOf(result, 11, request_id);
    response_.keep_alive(false);
    response_.prepare_payload();
    close_code_ = 0;
    http::async_write(ws_.next_layer(), response_, [self = shared_from_this()](boost::system::error_code, size_t) {
      self->socket_done_ = true;
      self->MaybeFinish(self->response_.result_int());
    });
  }

  // Accepted (the replica's 101): the handshake completes, and messages flow.
  void BeginStream(const transport::ResponseStart&, const std::string& request_id) override {
    if (state_ != State::kWaiting) return;
    state_ = State::kHandshake;
    ws_.set_option(websocket::stream_base::decorator([id = request_id](websocket::response_type& res) {
      res.set(http::field::server, "ferry");
      res.set("x-request-id", id);
    }));
    const auto& o = worker_.options();
    websocket::stream_base::timeout timeout{};
    timeout.handshake_timeout = std::chrono::seconds(30);
    // A client silent for a ping interval is pinged; one silent for another is gone.
    timeout.idle_timeout =
        o.websocket_ping_interval.count() > 0
            ? std::chrono::duration_cast<std::chrono::steady_clock::duration>(2 * o.websocket_ping_interval)
            : websocket::stream_base::none();
    timeout.keep_alive_pings = o.websocket_ping_interval.count() > 0;
    ws_.set_option(timeout);
    ws_.read_message_max(o.websocket_max_message_bytes);
    ws_.async_accept(up_.request, [self = shared_from_this()](boost::system::error_code ec) { self->OnAccepted(ec); });
  }

  void StreamChunk(std::string_view) override {}  // a session's answer is messages

  // The replica ended the session: after its close (or, ok, as its close), or broken (its replica failed).
  void FinishStream(bool ok) override {
    call_ended_ = true;
    if (!ok && !close_sent_ && state_ == State::kOpen)
      FERRY_LOG(kWarning, "proxy", "request ", up_.request_id, ": the WebSocket session's replica failed; closing");
    if (!close_sent_ && !socket_done_) {
      if (!pending_close_) pending_close_ = transport::WsClose{static_cast<uint16_t>(ok ? 1000 : 1011), ""};
      if (state_ == State::kOpen) {
        Flush();
      } else if (state_ != State::kRefused) {
        CloseSocket();
      }
    }
    MaybeFinish(101);
  }

  void ResumeInbound() override {
    if (read_paused_) {
      read_paused_ = false;
      Read();
    }
  }

  void OnMessage(const transport::WsMessage& message) override {
    if (close_sent_ || socket_done_) return;
    outbox_.push_back(Outgoing{message.binary, std::string(message.data)});
    Flush();
  }

  void OnClose(const transport::WsClose& close) override {
    if (close_sent_ || socket_done_ || pending_close_) return;
    pending_close_ = transport::WsClose{close.code, close.reason};
    close_reason_text_.assign(close.reason);
    pending_close_->reason = close_reason_text_;
    Flush();
  }

  void CheckDeadline(SteadyClock::time_point now) override {
    if (state_ != State::kOpen) return;
    if (close_sent_) {
      // The client never answered our close: stop waiting.
      if (now - close_sent_at_ > std::chrono::seconds(5)) CloseSocket();
      return;
    }
    const auto idle = worker_.options().websocket_idle_timeout;
    if (idle.count() > 0 && now - last_message_ > idle) {
      FERRY_LOG(kInfo, "proxy", "request ", up_.request_id, ": WebSocket session idle for ", idle.count() / 1000.0,
                " s; closing");
      CloseBoth({1001, "idle timeout"});
    }
  }

  void CloseWhenIdle() override {
    if (state_ == State::kOpen) CloseBoth({1001, "server shutting down"});
  }

  void CloseNow() override {
    if (call_ && !call_ended_) call_->Abandon();
    call_ended_ = true;
    CloseSocket();
    MaybeFinish(state_ == State::kRefused ? response_.result_int() : 101);
  }

 private:
  enum class State { kWaiting, kRefused, kHandshake, kOpen };
  struct Outgoing {
    bool binary;
    std::string data;
  };

  void OnAccepted(const boost::system::error_code& ec) {
    if (ec) {
      FERRY_LOG(kInfo, "proxy", "request ", up_.request_id, ": WebSocket handshake failed: ", ec.message());
      close_code_ = 1006;
      socket_done_ = true;
      if (call_ && !call_ended_) call_->SendClose({1006, "handshake failed"});
      MaybeFinish(101);
      return;
    }
    state_ = State::kOpen;
    last_message_ = SteadyClock::now();
    Read();
    Flush();
  }

  void Read() {
    if (reading_ || socket_done_ || state_ != State::kOpen) return;
    // A closing session reads on, to see the client's close; otherwise only what the replica has room for.
    if (!close_sent_ && (!call_ || !call_->WantsInbound())) {
      read_paused_ = true;
      return;
    }
    reading_ = true;
    ws_.async_read(read_buffer_, [self = shared_from_this()](boost::system::error_code ec, size_t) {
      self->reading_ = false;
      self->OnRead(ec);
    });
  }

  void OnRead(const boost::system::error_code& ec) {
    if (ec) {
      OnReadEnded(ec);
      return;
    }
    if (!close_sent_ && call_ && !call_ended_) {
      std::string data = beast::buffers_to_string(read_buffer_.data());
      ++messages_in_;
      bytes_ += data.size();
      last_message_ = SteadyClock::now();
      call_->SendMessage({!ws_.got_text(), data});
    }
    read_buffer_.consume(read_buffer_.size());
    Read();
  }

  // The client closed, broke the protocol, or went away: the deployment hears why (unless it closed first).
  void OnReadEnded(const boost::system::error_code& ec) {
    const transport::WsClose why = CloseFor(ec, ws_.reason());
    if (!close_sent_) {
      close_code_ = why.code;
      if (why.code == 1002 || why.code == 1007 || why.code == 1009)
        FERRY_LOG(kInfo, "proxy", "request ", up_.request_id, ": WebSocket session closed with ", why.code, ": ",
                  ec.message());
      if (call_ && !call_ended_) call_->SendClose(why);
    }
    socket_done_ = true;
    CloseSocket();
    MaybeFinish(101);
  }

  // Closes toward the client and tells the deployment (idle, draining).
  void CloseBoth(const transport::WsClose& close) {
    if (close_sent_ || pending_close_) return;
    if (call_ && !call_ended_) call_->SendClose(close);
    pending_close_ = close;
    Flush();
  }

  // Writes the deployment's messages one at a time (each credited back once written), then its close.
  void Flush() {
    if (writing_ || socket_done_ || state_ != State::kOpen || close_sent_) return;
    if (outbox_.empty()) {
      if (pending_close_) SendCloseFrame();
      return;
    }
    writing_ = true;
    ws_.binary(outbox_.front().binary);
    ws_.async_write(asio::buffer(outbox_.front().data),
                    [self = shared_from_this()](boost::system::error_code ec, size_t) {
                      self->writing_ = false;
                      const size_t n = self->outbox_.front().data.size();
                      self->outbox_.pop_front();
                      if (ec) return;  // the read sees the connection's end
                      ++self->messages_out_;
                      self->bytes_ += n;
                      self->last_message_ = SteadyClock::now();
                      if (self->call_ && n > 0) self->call_->Credit(static_cast<uint32_t>(n));
                      self->Flush();
                    });
  }

  void SendCloseFrame() {
    close_sent_ = true;
    close_sent_at_ = SteadyClock::now();
    close_code_ = pending_close_->code;
    writing_ = true;
    ws_.async_close(
        websocket::close_reason(static_cast<websocket::close_code>(pending_close_->code),
                                beast::string_view(pending_close_->reason.data(), pending_close_->reason.size())),
        [self = shared_from_this()](boost::system::error_code ec) {
          self->writing_ = false;
          if (ec) self->CloseSocket();
        });
    Read();  // the client's close ends the read
  }

  void CloseSocket() {
    boost::system::error_code ignored;
    beast::get_lowest_layer(ws_).close(ignored);
  }

  // Both sides are done: count, log and trace the session, and let go of its replica slot.
  void MaybeFinish(unsigned status) {
    if (finished_ || !call_ended_ || !socket_done_) return;
    finished_ = true;
    const double seconds = std::chrono::duration<double>(SteadyClock::now() - up_.started).count();
    worker_.RecordResponse(up_.series, status, seconds);
    if (status == 101) worker_.RecordWebSocketSession(up_.series, close_code_, messages_in_, messages_out_);
    std::string_view replica = call_ ? call_->replica_id() : std::string_view();
    std::string trace_id = up_.span ? tracing::TraceIdHex(up_.span->trace_id) : std::string();
    if (up_.span) {
      up_.span->end_unix_ns = tracing::UnixNanos();
      up_.span->attributes.push_back({"http.response.status_code", static_cast<int64_t>(status)});
      if (status == 101) {
        up_.span->attributes.push_back({"ferry.websocket.messages_in", static_cast<int64_t>(messages_in_)});
        up_.span->attributes.push_back({"ferry.websocket.messages_out", static_cast<int64_t>(messages_out_)});
        up_.span->attributes.push_back({"ferry.websocket.close_code", static_cast<int64_t>(close_code_)});
      }
      if (!replica.empty()) up_.span->attributes.push_back({"ferry.replica", std::string(replica)});
      up_.span->error = status >= 500 || close_code_ == 1011;
      worker_.tracer()->Record(std::move(*up_.span));
      up_.span.reset();
    }
    if (access_.pending()) {
      if (status == 101) access_.SetWebSocket(messages_in_ + messages_out_, bytes_, close_code_);
      access_.Write(worker_.access_log(), up_.request_id, status, replica, trace_id, seconds * 1000);
    }
    if (counted_) worker_.in_flight().fetch_sub(1, std::memory_order_relaxed);
    counted_ = false;
    CloseSocket();
    call_.reset();  // breaks the cycle: the call holds this session
  }

  Worker& worker_;
  Upgrade up_;
  websocket::stream<tcp::socket> ws_;
  std::shared_ptr<Call> call_;
  State state_ = State::kWaiting;
  http::response<http::string_body> response_;  // a refusal
  beast::flat_buffer read_buffer_;
  std::deque<Outgoing> outbox_;  // the deployment's messages, written one at a time
  std::optional<transport::WsClose> pending_close_;
  std::string close_reason_text_;  // owns pending_close_'s reason when it came from the replica
  bool reading_ = false, read_paused_ = false, writing_ = false;
  bool close_sent_ = false;
  bool socket_done_ = false;  // the client side is over
  bool call_ended_ = false;   // the replica side is over
  bool finished_ = false;
  bool counted_ = false;
  unsigned close_code_ = 1006;
  uint64_t messages_in_ = 0, messages_out_ = 0, bytes_ = 0;
  SteadyClock::time_point last_message_ = SteadyClock::now();
  SteadyClock::time_point close_sent_at_;
  AccessLine access_;
};

void StartWebSocketSession(Worker& worker, Upgrade&& upgrade) {
  std::make_shared<WebSocketSession>(worker, std::move(upgrade))->Start();
}

}  // namespace ferry::proxy
