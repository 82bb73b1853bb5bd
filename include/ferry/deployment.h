// Ferry's C++ SDK: subclass ferry::Deployment, export it with FERRY_DEPLOYMENT, and name it in a config
// as `import_path: path/to/libyours.so:ClassName`.
//
//   class Classifier : public ferry::Deployment {
//    public:
//     explicit Classifier(const ferry::Args& args);
//     ferry::Response handle(const ferry::Request& req) override;
//     void reconfigure(const ferry::Json& user_config) override;  // optional
//     bool check_health() override;                               // optional
//     // optional: with `batching` in the config, requests arrive in batches here instead of handle()
//     std::vector<ferry::Response> handle_batch(std::span<const ferry::Request> batch) override;
//     // optional, with batching: per-request work done as each request arrives (see prepare())
//     std::any prepare(const ferry::Request& req) override;
//   };
//   FERRY_DEPLOYMENT(Classifier)
//
// This layer is header-only and compiled into the plugin; it talks to the host through the C ABI in
// <ferry/abi.h> (the adapter is <ferry/internal/deployment_api.h>), so a plugin does not depend on how
// ferry itself was built. A model (typed tensors, the Open Inference Protocol) subclasses ferry::Model
// from <ferry/model.h> instead. Exceptions thrown by user
// code are caught here and become errors: from the constructor, a failed deployment whose message is
// the exception's text; from handle(), an HTTP 500 carrying the text.
#pragma once

#include <any>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <exception>
#include <ferry/abi.h>
#include <ferry/handle.h>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace ferry {

using Json = nlohmann::json;

// The deployment's `args` from the config (a JSON object; empty when the config has none).
// A value that names another deployment becomes a handle to it with handle(key).
class Args {
 public:
  explicit Args(Json json) : json_(std::move(json)) {}
  const Json& json() const { return json_; }
  bool has(std::string_view key) const { return json_.is_object() && json_.contains(key); }
  // The value under `key` converted to T, or `fallback` when absent. Throws when present with another
  // type, so a constructor using it fails with a message naming the key.
  // A handle to the deployment that args.<key> names: its name (a deployment of this application), or
  // {deployment: NAME, application: APP}. Throws std::invalid_argument naming args.<key> when absent or
  // of another shape.
  Handle handle(std::string_view key) const {
    if (!has(key)) throw std::invalid_argument("args." + std::string(key) + ": missing (a deployment to call)");
    return HandleFrom(json_.at(std::string(key)), "args." + std::string(key));
  }
  // Handles to the deployments a list in args.<key> names (each entry as for handle()).
  std::vector<Handle> handle_list(std::string_view key) const {
    std::vector<Handle> out;
    if (!has(key)) return out;
    const Json& list = json_.at(std::string(key));
    if (!list.is_array()) throw std::invalid_argument("args." + std::string(key) + ": expected a list of deployments");
    for (size_t i = 0; i < list.size(); ++i)
      out.push_back(HandleFrom(list[i], "args." + std::string(key) + "[" + std::to_string(i) + "]"));
    return out;
  }
  template <typename T>
  T get(std::string_view key, T fallback) const {
    if (!has(key)) return fallback;
    try {
      return json_.at(std::string(key)).template get<T>();
    } catch (const std::exception& e) {
      throw std::invalid_argument("args." + std::string(key) + ": " + e.what());
    }
  }

 private:
  static Handle HandleFrom(const Json& v, const std::string& where) {
    if (v.is_string()) return get_deployment_handle(v.get<std::string>());
    if (v.is_object() && v.contains("deployment") && v["deployment"].is_string())
      return get_deployment_handle(v["deployment"].get<std::string>(),
                                   v.contains("application") && v["application"].is_string()
                                       ? v["application"].get<std::string>()
                                       : std::string());
    throw std::invalid_argument(where + ": expected a deployment name or {deployment: NAME, application: APP}");
  }
  Json json_;
};

// One HTTP request as the deployment sees it. Borrowed views: valid during handle() only.
// Thread-safe to read; is_cancelled() may be polled from the handling thread.
class Request {
 public:
  explicit Request(const FerryRequest* raw) : raw_(raw) {}
  std::string_view request_id() const { return View(raw_->request_id); }
  std::string_view method() const { return View(raw_->method); }
  std::string_view path() const { return View(raw_->path); }
  std::string_view query() const { return View(raw_->query); }
  std::string_view route_prefix() const { return View(raw_->route_prefix); }
  // The body. A streamed one (body_streamed()) is read to its end on first use (the same view after);
  // throws BodyError when it broke (the client went away, or it passed max_body_bytes).
  std::string_view body() const;
  // True when the body arrives as the client sends it (larger than http_options.body_stream_threshold_bytes,
  // or chunked without a length): read it piece by piece with read_body() to handle it in bounded memory.
  bool body_streamed() const { return HasStreamFields() && raw_->body_streamed != 0; }
  // The next piece of the body: true with `chunk` set (valid until the next read), false at its end. A
  // whole (not streamed) body comes as one piece. Throws BodyError when the body broke. Handling thread only.
  bool read_body(std::string_view* chunk) const;
  size_t num_headers() const { return raw_->num_headers; }
  std::string_view header_name(size_t i) const { return View(raw_->headers[i].name); }
  std::string_view header_value(size_t i) const { return View(raw_->headers[i].value); }
  // The first header named `name` (lower-case), or an empty view.
  std::string_view header(std::string_view name) const {
    for (size_t i = 0; i < raw_->num_headers; ++i)
      if (View(raw_->headers[i].name) == name) return View(raw_->headers[i].value);
    return {};
  }
  // The first value of query parameter `key` (not percent-decoded), or an empty view.
  std::string_view query_param(std::string_view key) const {
    std::string_view q = query();
    while (!q.empty()) {
      size_t amp = q.find('&');
      std::string_view pair = q.substr(0, amp);
      size_t eq = pair.find('=');
      if (pair.substr(0, eq) == key) return eq == std::string_view::npos ? "" : pair.substr(eq + 1);
      if (amp == std::string_view::npos) break;
      q.remove_prefix(amp + 1);
    }
    return {};
  }
  // True once the client went away or the deadline passed: stop working and return anything.
  bool is_cancelled() const { return raw_->is_cancelled && raw_->is_cancelled(raw_) != 0; }
  // What the deployment's prepare() returned for this request, or null (not prepared: no batching, an
  // older host, or prepare() threw). Mutable, so handle_batch() may move parts out of it.
  std::any* prepared() const {
    if (raw_->struct_size < offsetof(FerryRequest, prepared) + sizeof(raw_->prepared)) return nullptr;
    return static_cast<std::any*>(raw_->prepared);
  }
  // The host's view of this request (for the SDK's own use: handles pass it on).
  const FerryRequest* raw() const { return raw_; }

 private:
  static std::string_view View(FerryString s) { return {s.data, s.size}; }
  bool HasStreamFields() const {
    return raw_->struct_size >= offsetof(FerryRequest, read_all_body) + sizeof(raw_->read_all_body);
  }
  const FerryRequest* raw_;
  mutable bool whole_body_read_ = false;  // read_body() on a whole body: handed out already
};

// A streamed request body that broke before its end: the client went away, the request was cancelled,
// or the body passed http_options.max_body_bytes.
class BodyError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Thrown from handle() (or accept_websocket()), answers with `status` and {"error": message} instead
// of 500.
class HttpError : public std::runtime_error {
 public:
  HttpError(int status, const std::string& message) : std::runtime_error(message), status_(status) {}
  int status() const { return status_; }

 private:
  int status_;
};

// What handle() returns: status, headers and body. Content-Length is set by ferry.
struct Response {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;

  static Response Text(std::string body, int status = 200) {
    Response r;
    r.status = status;
    r.headers.emplace_back("content-type", "text/plain; charset=utf-8");
    r.body = std::move(body);
    return r;
  }
  static Response FromJson(const Json& value, int status = 200) {
    Response r;
    r.status = status;
    r.headers.emplace_back("content-type", "application/json");
    r.body = value.dump();
    return r;
  }
};

// A streamed answer that goes on after handle_stream returned (ResponseWriter::detach): write whenever
// there is something to send, from any thread (a timer, a callback, a queue's consumer), and no replica
// thread is held in between — so one replica keeps thousands of quiet streams open (server push, event
// feeds). Copies share the stream; writes are serialized. The stream ends with end() or fail(), or when
// the last copy goes away (complete). It is one ongoing request until it ends.
class DetachedStream {
 public:
  DetachedStream() = default;
  // As ResponseWriter's: false once the stream is over (the client left, the request was cancelled).
  bool write(std::string_view data);
  bool write_event(std::string_view data, std::string_view event = {});
  // Ends the stream: complete, or broken (the client sees the body cut short). Later calls do nothing.
  void end() { Finish(true, {}); }
  void fail(std::string_view why) { Finish(false, why); }
  // False for a stream that could not be detached (inside handle_batch, or an older ferry).
  explicit operator bool() const { return state_ != nullptr; }
  // True once the request is cancelled (the client left, the deadline passed) or the stream ended: stop
  // producing. Cheap; any thread.
  bool cancelled() const;

 private:
  friend class ResponseWriter;
  friend class DeferredResponse;
  struct State {
    explicit State(FerryStream* s) : stream(s) {}
    ~State();
    std::mutex mu;        // one write (or the end) at a time
    FerryStream* stream;  // null once ended
  };
  void Finish(bool ok, std::string_view why);
  std::shared_ptr<State> state_;
};

// An answer that comes after handle_stream returned (ResponseWriter::defer): the handler starts what
// produces it (a call through a handle, with a callback on its end) and returns at once, so no replica
// thread waits meanwhile. Answer once, from any thread: send() in one piece, or stream() to stream it.
// Dropping it unanswered answers 500. The request is one ongoing request until answered. Move-only.
class DeferredResponse {
 public:
  DeferredResponse() = default;
  DeferredResponse(DeferredResponse&& other) noexcept : stream_(std::exchange(other.stream_, nullptr)) {}
  DeferredResponse& operator=(DeferredResponse&& other) noexcept {
    if (this != &other) {
      Drop();
      stream_ = std::exchange(other.stream_, nullptr);
    }
    return *this;
  }
  DeferredResponse(const DeferredResponse&) = delete;
  DeferredResponse& operator=(const DeferredResponse&) = delete;
  ~DeferredResponse() { Drop(); }

  // False when the answer could not be deferred (inside handle_batch, or an older ferry): answer on the
  // handling thread then.
  explicit operator bool() const { return stream_ != nullptr; }
  // True once the request is cancelled (the client left, the deadline passed): no answer will be read.
  // Cheap; any thread (not concurrently with send or stream).
  bool cancelled() const {
    const FerryHostApi* host = internal::Host();
    return stream_ && FERRY_HOST_HAS(host, stream_cancelled) && host->stream_cancelled(stream_) != 0;
  }
  void send(const Response& response);
  // Streams the answer instead: the status and headers go with the first write.
  DetachedStream stream(int status = 200, const std::vector<std::pair<std::string, std::string>>& headers = {});
  // The host's stream of this answer while unanswered (for the SDK's own use: calls made for this request
  // name it as their parent, FerryCallOptions.parent_stream).
  FerryStream* raw() const { return stream_; }

 private:
  friend class ResponseWriter;
  explicit DeferredResponse(FerryStream* stream) : stream_(stream) {}
  void Drop() {
    static constexpr std::string_view kWhy = "the deployment dropped its deferred answer";
    if (stream_)
      internal::Host()->stream_end(std::exchange(stream_, nullptr), 0, FerryString{kWhy.data(), kWhy.size()});
  }
  FerryStream* stream_ = nullptr;
};

// Where a streaming handler writes its answer (see Deployment::handle_stream). The status and headers
// go out with the first write; each write is one chunk the client receives as soon as it is produced
// (chunked transfer encoding, or Server-Sent Events with write_event). A write waits while the client is
// slow, so a producer never runs ahead of its reader by more than a window. Used on the handling thread.
class ResponseWriter {
 public:
  explicit ResponseWriter(FerryResponseSink* sink) : sink_(sink) {}
  ResponseWriter(const ResponseWriter&) = delete;
  ResponseWriter& operator=(const ResponseWriter&) = delete;

  // Before the first write only.
  void set_status(int status);
  void add_header(std::string_view name, std::string_view value);
  // Sends `data` as one chunk (an empty one sends just the status and headers). False once the stream is
  // over (the client went away, the request was cancelled or timed out): stop producing and return.
  bool write(std::string_view data);
  // Sends one Server-Sent Event: each line of `data` as a `data:` line, after an `event:` line when
  // `event` is set. The first sets content-type text/event-stream unless a content type was set.
  bool write_event(std::string_view data, std::string_view event = {});
  bool started() const { return started_; }
  // Answers in one piece instead (an error found before streaming began, say). Before the first write.
  void send(const Response& response);
  // Sends the status and headers (unless a write did) and hands the stream over to a DetachedStream, so
  // that handle_stream may return while the stream stays open; this writer writes no more. An empty
  // DetachedStream where that cannot be (inside handle_batch, or an older ferry): stream here then.
  DetachedStream detach();
  // Lets the answer come later (see DeferredResponse); this writer writes no more. Before the first
  // write. An empty DeferredResponse where that cannot be: answer here then.
  DeferredResponse defer();

 private:
  FerryResponseSink* sink_;
  std::string body_so_far_;  // only with a host that cannot stream
  bool started_ = false;
  bool detached_ = false;
  bool has_content_type_ = false;
};

// A WebSocket session's sending side (see Deployment::accept_websocket). Copyable; usable from any
// thread until the session's on_close() has returned.
class WebSocket {
 public:
  WebSocket() = default;
  explicit WebSocket(FerryWebSocket* ws) : ws_(ws) {}
  // Sends one message, waiting while the client is slow (a window per session). False once the session
  // is closing or closed: stop sending.
  bool send_text(std::string_view text) { return Send(text, false); }
  bool send_binary(std::string_view data) { return Send(data, true); }
  // Closes the session with `code` (1000 normal; 1008 policy; 1011 error; 3000-4999 the application's)
  // and `reason` (at most 123 bytes); on_close() follows.
  void close(int code = 1000, std::string_view reason = {});

 private:
  bool Send(std::string_view data, bool binary);
  FerryWebSocket* ws_ = nullptr;
};

// One WebSocket session's receiving side, made by Deployment::accept_websocket. Its calls come one at a
// time, in order, on any of the replica's threads (never two of one session at once; other sessions'
// run alongside).
class WebSocketSession {
 public:
  virtual ~WebSocketSession() = default;
  // One message from the client (text is valid UTF-8). An exception closes the session with 1011.
  virtual void on_message(std::string_view data, bool binary) = 0;
  // The session is over, once: the client closed it (its code), the deployment did (its code), or the
  // connection broke (1006). The session object is destroyed after this returns.
  virtual void on_close(int code, std::string_view reason) {
    (void)code;
    (void)reason;
  }
};

// Base class of a deployment. One instance per replica process. handle() is called from up to
// max_ongoing_requests threads at once, so shared mutable state needs a lock; reconfigure() and
// check_health() may overlap with handle().
class Deployment {
 public:
  virtual ~Deployment() = default;
  // Answers one request. A deployment that only streams overrides handle_stream() instead.
  virtual Response handle(const Request& request) {
    (void)request;
    throw std::logic_error("this deployment implements neither handle() nor handle_stream()");
  }
  // Answers one request as a stream: writes chunks to `out` as they are produced, and returns when done
  // (an exception after the first write cuts the stream short). The default answers with handle() in one
  // piece. With batching, handle_batch() answers instead.
  virtual void handle_stream(const Request& request, ResponseWriter& out);
  // Called once after construction when the config has a user_config, and again on every change.
  virtual void reconfigure(const Json& user_config) { (void)user_config; }
  // Return false (or throw) to report the replica unhealthy.
  virtual bool check_health() { return true; }
  // With `batching` configured, up to max_batch_size requests at once; one response per request, in
  // order. An item answered with an error status fails only its own request; throwing fails the batch.
  virtual std::vector<Response> handle_batch(std::span<const Request> batch) {
    std::vector<Response> out;
    out.reserve(batch.size());
    for (const Request& r : batch) out.push_back(handle(r));
    return out;
  }
  // With batching: work on one request that needs no other request (parsing, validating), run as soon
  // as the request arrives, on the replica's receiving thread, while its batch is still gathering; what
  // it returns is the request's prepared() in handle_batch(). So the batch, which every request in it
  // waits for, runs only the work that needs the batch. Runs concurrently with handle_batch() and with
  // other prepare() calls. An exception here is logged and the request reaches handle_batch()
  // unprepared (prepared() null), so handle_batch() must cope with both.
  virtual std::any prepare(const Request& request) {
    (void)request;
    return {};
  }
  // A WebSocket session opened on the deployment's route (a GET with Upgrade: websocket): return what
  // receives its messages, keeping `ws` to send. Return null, or throw HttpError(status, why), to refuse
  // (the client is answered that status; 403 for null). A deployment that does not override this takes
  // no sessions (403). The session counts as one ongoing request until it closes.
  virtual std::unique_ptr<WebSocketSession> accept_websocket(const Request& request, WebSocket ws) {
    (void)request;
    (void)ws;
    return nullptr;
  }
};

}  // namespace ferry

// How a class becomes the C table of <ferry/abi.h>: FERRY_DEPLOYMENT's machinery.
#include <ferry/internal/deployment_api.h>

namespace ferry {

inline const FerryRequest* internal::RawOf(const Request* request) { return request ? request->raw() : nullptr; }

inline void ResponseWriter::set_status(int status) {
  if (!started_) internal::Host()->set_status(sink_, status);
}
inline void ResponseWriter::add_header(std::string_view name, std::string_view value) {
  if (started_) return;
  if (name.size() == 12) {
    std::string lower(name);
    for (char& c : lower) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
    if (lower == "content-type") has_content_type_ = true;
  }
  internal::Host()->add_header(sink_, FerryString{name.data(), name.size()}, FerryString{value.data(), value.size()});
}
inline bool ResponseWriter::write(std::string_view data) {
  const FerryHostApi* host = internal::Host();
  if (detached_) return false;
  started_ = true;
  if (host->struct_size < offsetof(FerryHostApi, write_chunk) + sizeof(host->write_chunk) || !host->write_chunk) {
    // A host without streams: the chunks become one body.
    body_so_far_.append(data);
    host->set_body(sink_, FerryString{body_so_far_.data(), body_so_far_.size()});
    return true;
  }
  return host->write_chunk(sink_, FerryString{data.data(), data.size()}) == 0;
}
namespace internal {
// One Server-Sent Event: an `event:` line when named, each line of `data` as a `data:` line, a blank line.
inline std::string EventText(std::string_view data, std::string_view event) {
  std::string text;
  if (!event.empty()) text.append("event: ").append(event).append("\n");
  for (;;) {
    size_t nl = data.find('\n');
    text.append("data: ").append(data.substr(0, nl)).append("\n");
    if (nl == std::string_view::npos) break;
    data.remove_prefix(nl + 1);
  }
  text.append("\n");
  return text;
}
}  // namespace internal

inline bool ResponseWriter::write_event(std::string_view data, std::string_view event) {
  if (!started_ && !has_content_type_) add_header("content-type", "text/event-stream");
  return write(internal::EventText(data, event));
}

inline DetachedStream ResponseWriter::detach() {
  const FerryHostApi* host = internal::Host();
  if (detached_ || !FERRY_HOST_HAS(host, detach_stream)) return {};
  FerryStream* stream = host->detach_stream(sink_);
  if (!stream) return {};
  started_ = detached_ = true;
  DetachedStream d;
  d.state_ = std::make_shared<DetachedStream::State>(stream);
  return d;
}

inline DeferredResponse ResponseWriter::defer() {
  const FerryHostApi* host = internal::Host();
  if (started_ || detached_ || !FERRY_HOST_HAS(host, stream_respond)) return {};
  FerryStream* stream = host->defer_response(sink_);
  if (!stream) return {};
  started_ = detached_ = true;
  return DeferredResponse(stream);
}

namespace internal {
inline std::vector<FerryHeader> HeaderViews(const std::vector<std::pair<std::string, std::string>>& headers) {
  std::vector<FerryHeader> out;
  out.reserve(headers.size());
  for (const auto& [k, v] : headers) out.push_back(FerryHeader{{k.data(), k.size()}, {v.data(), v.size()}});
  return out;
}
}  // namespace internal

inline void DeferredResponse::send(const Response& response) {
  if (!stream_) throw std::logic_error("DeferredResponse::send on an empty or answered DeferredResponse");
  std::vector<FerryHeader> headers = internal::HeaderViews(response.headers);
  internal::Host()->stream_respond(std::exchange(stream_, nullptr), response.status, headers.data(), headers.size(),
                                   FerryString{response.body.data(), response.body.size()});
}

inline DetachedStream DeferredResponse::stream(int status,
                                               const std::vector<std::pair<std::string, std::string>>& headers) {
  if (!stream_) throw std::logic_error("DeferredResponse::stream on an empty or answered DeferredResponse");
  std::vector<FerryHeader> views = internal::HeaderViews(headers);
  internal::Host()->stream_head(stream_, status, views.data(), views.size());
  DetachedStream d;
  d.state_ = std::make_shared<DetachedStream::State>(std::exchange(stream_, nullptr));
  return d;
}

inline DetachedStream::State::~State() {
  if (stream) internal::Host()->stream_end(stream, 1, FerryString{nullptr, 0});
}

inline bool DetachedStream::write(std::string_view data) {
  if (!state_) return false;
  std::lock_guard<std::mutex> lock(state_->mu);
  if (!state_->stream) return false;
  return internal::Host()->stream_write(state_->stream, FerryString{data.data(), data.size()}) == 0;
}

inline bool DetachedStream::write_event(std::string_view data, std::string_view event) {
  return write(internal::EventText(data, event));
}

inline bool DetachedStream::cancelled() const {
  if (!state_) return true;
  std::lock_guard<std::mutex> lock(state_->mu);
  const FerryHostApi* host = internal::Host();
  return !state_->stream || (FERRY_HOST_HAS(host, stream_cancelled) && host->stream_cancelled(state_->stream) != 0);
}
inline void DetachedStream::Finish(bool ok, std::string_view why) {
  if (!state_) return;
  std::lock_guard<std::mutex> lock(state_->mu);
  if (!state_->stream) return;
  FerryStream* stream = state_->stream;
  state_->stream = nullptr;
  internal::Host()->stream_end(stream, ok ? 1 : 0, FerryString{why.data(), why.size()});
}

inline void ResponseWriter::send(const Response& response) {
  if (started_) throw std::logic_error("ResponseWriter::send after the stream began");
  started_ = true;
  internal::Emit(response, sink_);
}

inline void Deployment::handle_stream(const Request& request, ResponseWriter& out) { out.send(handle(request)); }

inline std::string_view Request::body() const {
  if (!body_streamed()) return View(raw_->body);
  int ok = 1;
  FerryString all = raw_->read_all_body(raw_, &ok);
  if (!ok) throw BodyError("the request body broke before its end");
  return View(all);
}

inline bool Request::read_body(std::string_view* chunk) const {
  if (!body_streamed()) {
    if (whole_body_read_) return false;
    whole_body_read_ = true;
    *chunk = View(raw_->body);
    return true;
  }
  FerryString piece{nullptr, 0};
  int rc = raw_->read_body(raw_, &piece);
  if (rc < 0) throw BodyError("the request body broke before its end");
  if (rc == 0) return false;
  *chunk = View(piece);
  return true;
}

inline bool WebSocket::Send(std::string_view data, bool binary) {
  const FerryHostApi* host = internal::Host();
  if (!ws_ || !FERRY_HOST_HAS(host, ws_send)) return false;
  return host->ws_send(ws_, FerryString{data.data(), data.size()}, binary ? 1 : 0) == 0;
}

inline void WebSocket::close(int code, std::string_view reason) {
  const FerryHostApi* host = internal::Host();
  if (ws_ && FERRY_HOST_HAS(host, ws_close)) host->ws_close(ws_, code, FerryString{reason.data(), reason.size()});
}

// Logging from deployment code. A line goes to the replica's log with the replica's id (and, inside
// handle(), the request's id), in the encoding of the deployment's logging_config; lines below its
// log_level are dropped. Thread-safe. Before the host has created the deployment (in static
// initialisers), lines go to standard error as they are.
namespace log {
inline void Write(int level, std::string_view message) {
  const FerryHostApi* host = internal::Host();
  if (host && host->struct_size >= offsetof(FerryHostApi, log) + sizeof(host->log) && host->log) {
    host->log(level, FerryString{message.data(), message.size()});
    return;
  }
  std::string line(message);
  line.push_back('\n');
  std::fwrite(line.data(), 1, line.size(), stderr);
}
inline void Debug(std::string_view message) { Write(FERRY_LOG_DEBUG, message); }
inline void Info(std::string_view message) { Write(FERRY_LOG_INFO, message); }
inline void Warning(std::string_view message) { Write(FERRY_LOG_WARNING, message); }
inline void Error(std::string_view message) { Write(FERRY_LOG_ERROR, message); }
}  // namespace log
}  // namespace ferry

// Exports `Class` (a ferry::Deployment or a ferry::Model) as a deployment named `Class`
// (import_path: libx.so:Class).
#define FERRY_DEPLOYMENT(Class)                                                  \
  extern "C" FERRY_EXPORT const FerryDeploymentApi* ferry_deployment_##Class() { \
    return ::ferry::internal::ApiFor<Class>(#Class);                             \
  }
