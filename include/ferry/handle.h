// Deployment handles: how a deployment calls another (Ray Serve's DeploymentHandle). Take one from the
// args the constructor receives (a value naming a deployment of the same application, or a mapping
// {deployment: NAME, application: APP}), or by name with ferry::get_deployment_handle:
//
//   class Ingress : public ferry::Deployment {
//    public:
//     explicit Ingress(const ferry::Args& args) : model_(args.handle("model")) {}
//     ferry::Response handle(const ferry::Request& req) override {
//       ferry::CallResult r = model_.remote(req.body(), &req).get();   // blocks; throws ferry::CallError
//       return ferry::Response::Text(r.body, r.status);
//     }
//    private:
//     ferry::Handle model_;
//   };
//
// A call is asynchronous: remote()/call() return a ferry::Call at once (a future); get() blocks for the
// whole answer, next() reads a streamed answer chunk by chunk, on_done() runs a callback when it ends.
// Passing the request being handled (`&req`) makes the call carry its remaining deadline, request id and
// trace, and cancels the call when the request is cancelled.
// Thread-safe: a Handle may be shared by every thread; a Call belongs to one thread at a time.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <ferry/abi.h>
#include <ferry/internal/host.h>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ferry {

class Request;

// What a call sends. Header names lower-case.
struct CallOptions {
  std::string method_name;  // the callee's method (Ray's handle.method_name.remote()); empty: its default
  std::string http_method = "POST";
  std::string path;  // the path the callee sees; empty: "/"
  std::string query;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  const Request* parent = nullptr;  // the request being handled: deadline, request id, trace, cancellation
  double timeout_s = 0;             // > 0: at most this long (the parent's deadline still applies)
};

// The callee's answer: its status, headers and body (a stream's chunks joined).
struct CallResult {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  std::string header(std::string_view name) const {
    for (const auto& [k, v] : headers)
      if (k == name) return v;
    return {};
  }
};

// A call that ended without an answer, or whose stream broke: `status` says why (503 the callee is
// overloaded, its max_queued_requests reached: back off or shed; 504 the deadline passed; 502 its replica
// failed; 404 no such deployment; 499 cancelled), what() names the deployment and the reason.
class CallError : public std::runtime_error {
 public:
  CallError(int status, const std::string& message) : std::runtime_error(message), status_(status) {}
  int status() const { return status_; }
  bool overloaded() const { return status_ == 503; }
  bool timed_out() const { return status_ == 504; }

 private:
  int status_;
};

namespace internal {

// A call's state, shared by the thread that delivers its events (the caller's own, in wait_call, or the
// host's I/O thread) and the caller.
struct CallState {
  std::mutex mu;
  std::condition_variable cv;
  bool head = false, stream = false, ended = false, ok = false;
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;
  std::deque<std::string> chunks;
  std::string error;
  std::function<void()> on_done;
  std::function<void()> on_ready;  // at a stream's head, or the end

  static void OnHead(void* user, int status, const FerryHeader* headers, size_t n, int stream) {
    auto* s = static_cast<CallState*>(user);
    std::function<void()> ready;
    {
      std::lock_guard<std::mutex> lock(s->mu);
      s->head = true;
      s->stream = stream != 0;
      s->status = status;
      for (size_t i = 0; i < n; ++i)
        s->headers.emplace_back(std::string(headers[i].name.data, headers[i].name.size),
                                std::string(headers[i].value.data, headers[i].value.size));
      // A whole answer's body and end follow at once: the caller is woken once, by the end.
      if (!s->stream) return;
      s->cv.notify_all();
      ready = std::move(s->on_ready);
      s->on_ready = nullptr;
    }
    if (ready) ready();
  }
  static void OnChunk(void* user, FerryString data) {
    auto* s = static_cast<CallState*>(user);
    std::lock_guard<std::mutex> lock(s->mu);
    s->chunks.emplace_back(data.data, data.size);
    if (s->stream) s->cv.notify_all();
  }
  static void OnEnd(void* user, int ok, int status, FerryString error) {
    auto* s = static_cast<CallState*>(user);
    std::function<void()> done, ready;
    {
      std::lock_guard<std::mutex> lock(s->mu);
      s->ended = true;
      s->ok = ok != 0;
      if (!s->ok) s->status = status;  // why it failed (after a head: the stream broke)
      s->error.assign(error.data, error.size);
      done = std::move(s->on_done);
      ready = std::move(s->on_ready);
      s->on_done = s->on_ready = nullptr;
      s->cv.notify_all();
    }
    // Last: either may drop the last reference to this state.
    if (ready) ready();
    if (done) done();
  }
  static const FerryCallEvents* Events() {
    static const FerryCallEvents events = {sizeof(FerryCallEvents), &OnHead, &OnChunk, &OnEnd};
    return &events;
  }
};

inline const FerryRequest* RawOf(const Request* request);

}  // namespace internal

// One call in flight: a future of the callee's answer. Move-only. Destroying a call that has not ended
// cancels it and waits for its end.
class Call {
 public:
  Call() = default;
  Call(Call&& other) noexcept
      : state_(std::move(other.state_)),
        call_(std::exchange(other.call_, nullptr)),
        pumps_(std::exchange(other.pumps_, false)) {}
  Call& operator=(Call&& other) noexcept {
    if (this != &other) {
      Reset();
      state_ = std::move(other.state_);
      call_ = std::exchange(other.call_, nullptr);
      pumps_ = std::exchange(other.pumps_, false);
    }
    return *this;
  }
  Call(const Call&) = delete;
  Call& operator=(const Call&) = delete;
  ~Call() { Reset(); }

  // Blocks until the call ends and returns the whole answer (a streamed one joined). Throws CallError
  // when there is no answer or the stream broke. Once only, and not after next().
  CallResult get() {
    std::string body;
    std::string chunk;
    while (next(&chunk)) body += chunk;
    CallResult r;
    std::lock_guard<std::mutex> lock(state_->mu);
    r.status = state_->status;
    r.headers = state_->headers;
    r.body = std::move(body);
    return r;
  }
  // Blocks until the callee answered (or the call ended) and returns its status: an answer's or a
  // stream's head. Throws CallError when the call ended without an answer.
  int status() {
    std::unique_lock<std::mutex> lock(state_->mu);
    wait(lock, [&] { return state_->head || state_->ended; });
    if (!state_->head) throw CallError(state_->status, state_->error);
    return state_->status;
  }
  std::vector<std::pair<std::string, std::string>> headers() {
    status();
    std::lock_guard<std::mutex> lock(state_->mu);
    return state_->headers;
  }
  bool streaming() {
    status();
    std::lock_guard<std::mutex> lock(state_->mu);
    return state_->stream;
  }
  // The next piece of the body as it arrives (the whole body, for an answer that is not streamed): true
  // with `*chunk` set, false at the end. Throws CallError when the call fails or its stream breaks.
  bool next(std::string* chunk) {
    size_t taken = 0;
    bool got = false;
    {
      std::unique_lock<std::mutex> lock(state_->mu);
      wait(lock, [&] { return !state_->chunks.empty() || state_->ended; });
      if (!state_->chunks.empty()) {
        *chunk = std::move(state_->chunks.front());
        state_->chunks.pop_front();
        taken = state_->stream ? chunk->size() : 0;  // only a stream's producer waits for credit
        got = true;
      } else if (!state_->ok) {
        throw CallError(state_->status, state_->error);
      }
    }
    const FerryHostApi* host = internal::Host();
    if (got && taken > 0 && FERRY_HOST_HAS(host, call_consumed)) host->call_consumed(call_, taken);
    return got;
  }
  // True when this thread reads the answer itself (the host's direct way, taken while few calls are in
  // flight): waiting for it costs a wake-up of this thread and nothing else. False when the host's I/O
  // thread delivers it (under load, or when it had to queue): a handler that can answer later then
  // frees its thread meanwhile (ResponseWriter::defer, on_ready).
  bool direct() const { return pumps_ && internal::Host()->wait_call(call_, 0) != 0; }
  // True once the call ended (get() will not block).
  bool done() const {
    if (pumps_) internal::Host()->wait_call(call_, 0);  // take in what has arrived
    std::lock_guard<std::mutex> lock(state_->mu);
    return state_->ended;
  }
  // Runs `callback` when the call ends, on the thread that learns of it (the host's I/O thread), or now
  // on this thread if it has ended; it must not block. Read the answer with get() from there or later.
  void on_done(std::function<void()> callback) { Register(&internal::CallState::on_done, false, std::move(callback)); }
  // Runs `callback` once the answer can be read without waiting for its head: when the call ended (a whole
  // answer, or a failure), or when a streamed answer's head arrived (then next() gives the chunks as they
  // come: read them on a thread that may block). Where and how as on_done. How a handler answers later
  // without holding its thread (with ResponseWriter::defer).
  void on_ready(std::function<void()> callback) { Register(&internal::CallState::on_ready, true, std::move(callback)); }
  void cancel() {
    const FerryHostApi* host = internal::Host();
    if (call_ && FERRY_HOST_HAS(host, cancel_call)) host->cancel_call(call_);
  }

 private:
  friend class Handle;
  Call(std::shared_ptr<internal::CallState> state, FerryCall* call, bool pumps)
      : state_(std::move(state)), call_(call), pumps_(pumps) {}
  // Waits, with `lock` held on return, until `ready()`: on this thread (the host reads the call's answer
  // here, wait_call) while the host lets it, else on the condition variable its events signal.
  template <typename Ready>
  void wait(std::unique_lock<std::mutex>& lock, Ready ready) {
    while (!ready()) {
      if (pumps_) {
        lock.unlock();
        const bool pumped = internal::Host()->wait_call(call_, 1) != 0;
        lock.lock();
        if (pumped) continue;
        pumps_ = false;  // its events come from the I/O thread from now on
      }
      state_->cv.wait(lock, ready);
    }
  }
  void Register(std::function<void()> internal::CallState::*slot, bool at_stream_head, std::function<void()> callback) {
    // Nobody waits for this call from now on: its events must reach us without our asking (watch_call
    // below). Before the callback is stored: from then on it may run on another thread, and read this.
    const bool watch = pumps_;
    pumps_ = false;
    bool later = false;
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      if (!state_->ended && !(at_stream_head && state_->head && state_->stream)) {
        (*state_).*slot = std::move(callback);
        later = true;
      }
    }
    if (!later) {
      callback();
      return;
    }
    if (watch) internal::Host()->watch_call(call_);
  }
  void Reset() {
    if (!call_) return;
    {
      std::unique_lock<std::mutex> lock(state_->mu);
      if (!state_->ended) {
        lock.unlock();
        cancel();
        lock.lock();
        wait(lock, [&] { return state_->ended; });
      }
    }
    internal::Host()->release_call(call_);
    call_ = nullptr;
  }
  std::shared_ptr<internal::CallState> state_;
  FerryCall* call_ = nullptr;
  bool pumps_ = false;  // the host delivers this call's events when asked (wait_call)
};

class Handle {
 public:
  Handle() = default;
  bool valid() const { return handle_ != nullptr; }
  const std::string& deployment() const { return deployment_; }

  // A handle whose calls go to `method_name` (Ray's handle.options(method_name=...)).
  Handle method(std::string method_name) const {
    Handle h = *this;
    h.method_ = std::move(method_name);
    return h;
  }
  // Starts a call.
  Call call(CallOptions options) const {
    if (!handle_) throw std::logic_error("call on an empty ferry::Handle");
    const FerryHostApi* host = internal::Host();
    if (options.method_name.empty()) options.method_name = method_;
    std::vector<FerryHeader> headers;
    headers.reserve(options.headers.size());
    for (const auto& [k, v] : options.headers)
      headers.push_back(FerryHeader{{k.data(), k.size()}, {v.data(), v.size()}});
    FerryCallOptions o{};
    o.struct_size = sizeof(FerryCallOptions);
    o.method_name = {options.method_name.data(), options.method_name.size()};
    o.http_method = {options.http_method.data(), options.http_method.size()};
    o.path = {options.path.data(), options.path.size()};
    o.query = {options.query.data(), options.query.size()};
    o.headers = headers.data();
    o.num_headers = headers.size();
    o.body = {options.body.data(), options.body.size()};
    o.parent = internal::RawOf(options.parent);
    o.timeout_s = options.timeout_s;
    // A caller that blocks on the answer reads it itself (no thread between it and the callee).
    const bool on_demand = FERRY_HOST_HAS(host, wait_call) && FERRY_HOST_HAS(host, watch_call);
    o.events_on_demand = on_demand ? 1 : 0;
    auto state = std::make_shared<internal::CallState>();
    FerryCall* call = host->call(handle_, &o, internal::CallState::Events(), state.get());
    return Call(std::move(state), call, on_demand);
  }
  // Ray's handle.remote(body): a POST of `body`, under the request being handled when `parent` is set.
  Call remote(std::string_view body, const Request* parent = nullptr) const {
    CallOptions o;
    o.body.assign(body);
    o.parent = parent;
    return call(std::move(o));
  }

 private:
  friend Handle get_deployment_handle(std::string_view, std::string_view);
  FerryHandle* handle_ = nullptr;
  std::string deployment_;
  std::string method_;
};

// A handle to `deployment` of `application` (empty: this deployment's own), as Ray's
// serve.get_deployment_handle. Throws std::runtime_error when this host cannot make calls.
inline Handle get_deployment_handle(std::string_view deployment, std::string_view application = {}) {
  const FerryHostApi* host = internal::Host();
  if (!FERRY_HOST_HAS(host, get_handle))
    throw std::runtime_error("this ferry host has no deployment handles (built with an older ferry)");
  FerryHandle* raw =
      host->get_handle({application.data(), application.size()}, {deployment.data(), deployment.size()}, nullptr);
  if (!raw) throw std::runtime_error("no handle to deployment \"" + std::string(deployment) + "\"");
  Handle h;
  h.handle_ = raw;
  h.deployment_.assign(deployment);
  return h;
}

// Which replica this is (Ray's serve.get_replica_context()).
struct ReplicaContext {
  std::string app_name;
  std::string deployment;
  std::string replica_id;
};
inline ReplicaContext get_replica_context() {
  const FerryHostApi* host = internal::Host();
  if (!FERRY_HOST_HAS(host, replica_context)) return {};
  FerryString app{}, deployment{}, replica{};
  host->replica_context(&app, &deployment, &replica);
  return {std::string(app.data, app.size), std::string(deployment.data, deployment.size),
          std::string(replica.data, replica.size)};
}

}  // namespace ferry
