// python: — serves Python deployments written with Ray Serve's API (`from ferry import serve`).
//
// Built as its own shared library (libferry_runtime_python.so) against the public SDK, exactly as a
// user's plugin is, and loaded only by replicas that serve Python: the ferry binary never links
// libpython. Each replica process embeds its own CPython 3.11, so replicas share no GIL.
//
// This file is the glue only: the interpreter's start, and `_ferry`, the native module the Python side
// (python/ferry/serve/_private/replica.py) drives: the request it is handed, the writer it answers with,
// and calls through handles (the host's call table, with events kept here until Python takes them).
// Everything about Ray Serve's semantics lives in Python.
//
// Threads: requests arrive on the replica's threads (up to max_ongoing_requests at once). One for an
// async handler is copied, its answer deferred, and handed to the replica's asyncio loop without taking
// the GIL (the async way: one thread runs Python for all of them); one for a sync handler takes the GIL
// on its thread and drops it whenever it waits (a write waiting for the client's credit, a handle call's
// answer, which that thread reads itself). A call's other events arrive on the host's I/O thread, which
// never takes the GIL: it stores them and wakes the waiter (a condition variable for a thread, an eventfd
// the asyncio loop reads).
#include <dlfcn.h>
#include <pybind11/embed.h>
#include <pybind11/stl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <ferry/deployment.h>
#include <filesystem>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace ferry::runtimes::python {
namespace {

using HeaderList = std::vector<std::pair<std::string, std::string>>;

std::string_view View(FerryString s) { return {s.data, s.size}; }
FerryString Str(std::string_view s) { return FerryString{s.data(), s.size()}; }

// The GIL, taken on a replica thread. The thread's Python thread state is made on its first request and
// kept (pybind11 would make and destroy one per acquisition, which costs more than a small handler: a
// 120 us handler measured 300 us p50 at one connection that way, 194 us this way).
class Gil {
 public:
  Gil() {
    thread_local bool kept = false;
    if (!kept) {
      gil_.inc_ref();
      kept = true;
    }
  }

 private:
  py::gil_scoped_acquire gil_;
};

// What other threads hand the asyncio loop: Push from any thread (the first of a batch writes the eventfd
// the loop's reader watches), TakeAll on the loop. Lives as long as the process (the loop may outlive
// statics).
template <typename T>
class LoopQueue {
 public:
  LoopQueue() : fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
  int fd() const { return fd_; }
  void Push(T item) {
    bool wake;
    {
      std::lock_guard<std::mutex> lock(mu_);
      wake = items_.empty();
      items_.push_back(std::move(item));
    }
    if (wake) {
      uint64_t one = 1;
      ssize_t n = ::write(fd_, &one, sizeof(one));
      (void)n;
    }
  }
  std::deque<T> TakeAll() {
    uint64_t count;
    ssize_t n = ::read(fd_, &count, sizeof(count));
    (void)n;
    std::deque<T> taken;
    std::lock_guard<std::mutex> lock(mu_);
    taken.swap(items_);
    return taken;
  }

 private:
  const int fd_;
  std::mutex mu_;
  std::deque<T> items_;
};

// Tokens of calls whose state changed (their awaiting tasks wake).
using ReadyQueue = LoopQueue<uint64_t>;

ReadyQueue& Ready() {
  static ReadyQueue* q = new ReadyQueue();  // lives as long as the process (the loop may outlive statics)
  return *q;
}

// The request a replica thread is handling, for the calls its Python code makes (they inherit its
// deadline, request id, trace and cancellation). Valid until handle_stream returns; Python may keep the
// token longer (a task it spawned), so every use locks it and finds it cleared once the request is over.
class RequestToken {
 public:
  explicit RequestToken(const FerryRequest* raw) : raw_(raw) {}
  void Clear() {
    std::lock_guard<std::mutex> lock(mu_);
    raw_ = nullptr;
  }
  bool cancelled() {
    std::lock_guard<std::mutex> lock(mu_);
    return raw_ && raw_->is_cancelled && raw_->is_cancelled(raw_) != 0;
  }
  template <typename F>
  auto With(F f) {
    std::lock_guard<std::mutex> lock(mu_);
    return f(raw_);
  }

 private:
  std::mutex mu_;
  const FerryRequest* raw_;
};

// One call through a handle: what the callee answered so far. Kept alive by itself until its on_end.
class PyCall : public std::enable_shared_from_this<PyCall> {
 public:
  ~PyCall() {
    if (call_) internal::Host()->release_call(call_);
  }

  // The call's events come when asked (events_on_demand): a thread that waits for the answer reads it
  // itself (the host's direct way: no I/O thread between it and the callee); an asyncio waiter, a
  // timeout or a response Python dropped hands them to the host's I/O thread instead (Watch).
  void Start(FerryHandle* handle, FerryCallOptions& options) {
    static const FerryCallEvents events = {sizeof(FerryCallEvents), &OnHead, &OnChunk, &OnEnd};
    self_ = shared_from_this();
    const FerryHostApi* host = internal::Host();
    const bool on_demand = FERRY_HOST_HAS(host, wait_call) && FERRY_HOST_HAS(host, watch_call);
    options.events_on_demand = on_demand ? 1 : 0;
    FerryCall* c = host->call(handle, &options, &events, this);
    std::lock_guard<std::mutex> lock(mu_);
    call_ = c;
    pumps_ = on_demand;
  }

  // Waits until a streamed chunk or the end is there (`for_chunk`), or the end (not `for_chunk`); false
  // when `timeout_s` (>= 0) passed first. Without the GIL.
  bool Wait(double timeout_s, bool for_chunk) {
    std::unique_lock<std::mutex> lock(mu_);
    auto ready = [&] { return ended_ || (for_chunk && stream_ && !chunks_.empty()); };
    if (timeout_s >= 0 && pumps_) {  // the host's wait has no timeout: its I/O thread reads instead
      lock.unlock();
      Watch();
      lock.lock();
    }
    while (!ready() && pumps_) {
      lock.unlock();
      const bool pumped = internal::Host()->wait_call(call_, 1) != 0;
      lock.lock();
      if (!pumped) pumps_ = false;  // the call went the I/O thread's way: its events come from there
    }
    if (timeout_s < 0) {
      cv_.wait(lock, ready);
      return true;
    }
    return cv_.wait_for(lock, std::chrono::duration<double>(timeout_s), ready);
  }
  // From now on the host's I/O thread delivers this call's events (once; idempotent).
  void Watch() {
    FerryCall* c;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!pumps_) return;
      pumps_ = false;
      c = call_;
    }
    internal::Host()->watch_call(c);
  }
  // Takes in what has arrived for a call whose events come when asked, without waiting.
  void Poll() {
    FerryCall* c;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!pumps_ || ended_) return;
      c = call_;
    }
    if (internal::Host()->wait_call(c, 0) == 0) {
      std::lock_guard<std::mutex> lock(mu_);
      pumps_ = false;
    }
  }
  // The asyncio loop learns of the next event through the ready queue, with this token (0: stop).
  void Notify(uint64_t token) {
    if (token != 0) Watch();
    bool now;
    {
      std::lock_guard<std::mutex> lock(mu_);
      token_ = token;
      now = token != 0 && (ended_ || (stream_ && !chunks_.empty()));
      if (now) token_ = 0;
    }
    if (now) Ready().Push(token);
  }
  void Cancel() {
    FerryCall* c;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (ended_) return;
      c = call_;
    }
    if (c) internal::Host()->cancel_call(c);
  }
  // (status, headers, body, ok, error) once ended; None before.
  py::object Result() {
    Poll();
    std::lock_guard<std::mutex> lock(mu_);
    if (!ended_) return py::none();
    std::string body;
    for (auto& c : chunks_) body += c;
    chunks_.clear();
    return py::make_tuple(status_, headers_, py::bytes(body), ok_, error_);
  }
  // The next chunk of a streamed answer: bytes; None when none is there yet; an empty tuple at the end
  // (then Result() tells how it ended).
  py::object NextChunk() {
    Poll();
    std::string chunk;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (chunks_.empty()) return ended_ ? py::object(py::tuple()) : py::object(py::none());
      chunk = std::move(chunks_.front());
      chunks_.pop_front();
    }
    if (call_ && !chunk.empty()) internal::Host()->call_consumed(call_, chunk.size());
    return py::bytes(chunk);
  }
  // (status, headers, streaming) once the callee answered; None before.
  py::object Head() {
    Poll();
    std::lock_guard<std::mutex> lock(mu_);
    if (!head_) return py::none();
    return py::make_tuple(status_, headers_, stream_);
  }
  bool done() {
    Poll();
    std::lock_guard<std::mutex> lock(mu_);
    return ended_;
  }

 private:
  void Changed(std::unique_lock<std::mutex>& lock) {
    uint64_t token = std::exchange(token_, 0);
    lock.unlock();
    cv_.notify_all();
    if (token) Ready().Push(token);
  }
  static void OnHead(void* user, int status, const FerryHeader* headers, size_t n, int stream) {
    auto* self = static_cast<PyCall*>(user);
    std::unique_lock<std::mutex> lock(self->mu_);
    self->head_ = true;
    self->status_ = status;
    self->stream_ = stream != 0;
    for (size_t i = 0; i < n; ++i) self->headers_.emplace_back(View(headers[i].name), View(headers[i].value));
    self->Changed(lock);
  }
  static void OnChunk(void* user, FerryString data) {
    auto* self = static_cast<PyCall*>(user);
    std::unique_lock<std::mutex> lock(self->mu_);
    self->chunks_.emplace_back(View(data));
    if (self->stream_) self->Changed(lock);
  }
  static void OnEnd(void* user, int ok, int status, FerryString error) {
    auto* self = static_cast<PyCall*>(user);
    std::shared_ptr<PyCall> keep;
    {
      std::unique_lock<std::mutex> lock(self->mu_);
      self->ended_ = true;
      self->ok_ = ok != 0;
      if (!self->head_) self->status_ = status;
      self->error_.assign(View(error));
      keep = std::move(self->self_);
      self->Changed(lock);
    }
    // `keep` may hold the last reference: the call is released here, which on_end allows.
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::shared_ptr<PyCall> self_;  // until on_end
  FerryCall* call_ = nullptr;
  uint64_t token_ = 0;
  bool head_ = false, stream_ = false, ended_ = false, ok_ = false;
  bool pumps_ = false;  // the events come when asked (wait_call), not from the I/O thread
  int status_ = 0;
  HeaderList headers_;
  std::deque<std::string> chunks_;
  std::string error_;
};

// An answer Python gives later, from the asyncio loop (the async way: see Python::handle_stream). Sending
// never waits; a stream's writes wait for the client's credit, so Python makes them off the loop.
// The host's stream of a deferred answer, while it may be named as the parent of the calls the async
// handler makes (FerryCallOptions.parent_stream): cleared, under `mu`, before anything ends the stream,
// so a call never names one the host let go. Shared by the answer and the stream it may become.
struct AnswerLife {
  std::mutex mu;
  FerryStream* raw = nullptr;
  void Clear() {
    std::lock_guard<std::mutex> lock(mu);
    raw = nullptr;
  }
};

class PyStream {
 public:
  PyStream(DetachedStream s, std::shared_ptr<AnswerLife> life) : stream_(std::move(s)), life_(std::move(life)) {}
  ~PyStream() {
    if (life_) life_->Clear();  // the last copy of the stream ends it as it goes
  }
  bool Write(const py::bytes& data) {
    std::string_view view = data;
    py::gil_scoped_release unlocked;
    return stream_.write(view);
  }
  void End() {
    py::gil_scoped_release unlocked;
    if (life_) life_->Clear();
    stream_.end();
  }
  void Fail(const std::string& why) {
    py::gil_scoped_release unlocked;
    if (life_) life_->Clear();
    stream_.fail(why);
  }

 private:
  DetachedStream stream_;
  std::shared_ptr<AnswerLife> life_;
};

// Dropped unanswered (Python lost it), the request answers 500: DeferredResponse's own drop.
class PyDeferred {
 public:
  explicit PyDeferred(DeferredResponse d) : deferred_(std::move(d)), life_(std::make_shared<AnswerLife>()) {
    life_->raw = deferred_.raw();
  }
  ~PyDeferred() {
    std::lock_guard<std::mutex> lock(mu_);
    if (deferred_) life_->Clear();  // dropping it unanswered answers 500; a stream it became lives on
  }
  void Send(int status, const HeaderList& headers, const py::bytes& body) {
    Response r;
    r.status = status;
    r.headers = headers;
    r.body = body;
    py::gil_scoped_release unlocked;
    std::lock_guard<std::mutex> lock(mu_);
    if (!deferred_) throw std::runtime_error("this request was already answered");
    life_->Clear();
    deferred_.send(r);
  }
  bool Cancelled() {
    std::lock_guard<std::mutex> lock(mu_);
    return deferred_.cancelled();
  }
  std::shared_ptr<PyStream> Stream(int status, const HeaderList& headers) {
    py::gil_scoped_release unlocked;
    std::lock_guard<std::mutex> lock(mu_);
    if (!deferred_) throw std::runtime_error("this request was already answered");
    return std::make_shared<PyStream>(deferred_.stream(status, headers), life_);
  }
  // Runs f(stream) with the answer's stream (null once it ended), which stays valid meanwhile.
  template <typename F>
  void WithStream(F f) {
    std::lock_guard<std::mutex> lock(life_->mu);
    f(life_->raw);
  }

 private:
  std::mutex mu_;
  DeferredResponse deferred_;
  std::shared_ptr<AnswerLife> life_;
};

// Requests for the asyncio loop: a replica thread copies the request, defers its answer and pushes it
// here; the loop takes every waiting one at each wake-up of its reader.
struct PendingRequest {
  std::string request_id, method, path, query, route_prefix;
  HeaderList headers;
  std::string body;
  std::shared_ptr<PyDeferred> answer;
};

using RequestQueue = LoopQueue<PendingRequest>;

RequestQueue& Requests() {
  static RequestQueue* q = new RequestQueue();
  return *q;
}

// The life of one WebSocket session, shared by its PyWs and PySession. Python may keep its PyWs past the
// session's end (the ASGI server closes after the app returned, a task sends late), but the host's
// WebSocket is valid only until on_close returns: sends and closes hold `mu` shared and do nothing once
// `over`; the session's end (on_close, or a refusal) sets `over` holding it exclusively, so none is under
// way when the host lets the WebSocket go. (A send waiting for the client's credit ends when the session
// does: the host cancels it.)
struct WsLife {
  std::shared_mutex mu;
  bool over = false;
  void End() {
    std::unique_lock lock(mu);
    over = true;
  }
};

// A WebSocket session of an ingress ASGI app (FastAPI's websocket routes): Python sends through PyWs
// (its sends wait for the client's credit, so Python makes them off the loop), and the session hands
// each message and its end to `deliver`, a Python callable that queues them for the app.
class PyWs {
 public:
  PyWs(WebSocket ws, std::shared_ptr<WsLife> life) : ws_(ws), life_(std::move(life)) {}
  bool SendText(const std::string& text) {
    py::gil_scoped_release unlocked;
    std::shared_lock lock(life_->mu);
    return !life_->over && ws_.send_text(text);
  }
  bool SendBytes(const py::bytes& data) {
    std::string_view view = data;
    py::gil_scoped_release unlocked;
    std::shared_lock lock(life_->mu);
    return !life_->over && ws_.send_binary(view);
  }
  void Close(int code, const std::string& reason) {
    py::gil_scoped_release unlocked;
    std::shared_lock lock(life_->mu);
    if (!life_->over) ws_.close(code, reason);
  }

 private:
  WebSocket ws_;
  std::shared_ptr<WsLife> life_;
};

class PySession : public WebSocketSession {
 public:
  PySession(py::object deliver, std::shared_ptr<WsLife> life) : deliver_(std::move(deliver)), life_(std::move(life)) {}
  ~PySession() override {
    life_->End();
    Gil gil;
    deliver_ = py::object();
  }
  void on_message(std::string_view data, bool binary) override {
    Gil gil;
    if (binary)
      deliver_("message", py::bytes(data.data(), data.size()), 0);
    else
      deliver_("message", py::str(data.data(), data.size()), 0);
  }
  void on_close(int code, std::string_view reason) override {
    life_->End();  // before Python hears of it: from here its sends and closes do nothing
    Gil gil;
    deliver_("close", py::str(reason.data(), reason.size()), code);
  }

 private:
  py::object deliver_;
  std::shared_ptr<WsLife> life_;
};

// A handle to one deployment, from the host (which owns it for the replica's life).
struct PyHandle {
  FerryHandle* raw = nullptr;
};

PyHandle GetHandle(const std::string& app, const std::string& deployment) {
  const FerryHostApi* host = internal::Host();
  if (!FERRY_HOST_HAS(host, get_handle)) throw std::runtime_error("this ferry cannot make calls through handles");
  FerryHandle* raw = host->get_handle(Str(app), Str(deployment), nullptr);
  if (!raw) throw std::runtime_error("no handle to deployment \"" + deployment + "\" of application \"" + app + "\"");
  return PyHandle{raw};
}

// `parent`: the request the calls are made for — a RequestToken (a replica thread's request), a
// Deferred (an async handler's request, answered later), or None.
std::shared_ptr<PyCall> StartCall(const PyHandle& handle, const std::string& method_name,
                                  const std::string& http_method, const std::string& path, const std::string& query,
                                  const HeaderList& headers, const py::bytes& body, double timeout_s,
                                  const py::object& parent) {
  std::string_view body_view = body;
  std::vector<FerryHeader> views;
  views.reserve(headers.size());
  for (const auto& [k, v] : headers) views.push_back(FerryHeader{Str(k), Str(v)});
  FerryCallOptions o{};
  o.struct_size = sizeof(FerryCallOptions);
  o.method_name = Str(method_name);
  o.http_method = Str(http_method);
  o.path = Str(path);
  o.query = Str(query);
  o.headers = views.data();
  o.num_headers = views.size();
  o.body = Str(body_view);
  o.timeout_s = timeout_s;
  auto call = std::make_shared<PyCall>();
  std::shared_ptr<RequestToken> token;
  std::shared_ptr<PyDeferred> answer;
  if (py::isinstance<RequestToken>(parent))
    token = parent.cast<std::shared_ptr<RequestToken>>();
  else if (py::isinstance<PyDeferred>(parent))
    answer = parent.cast<std::shared_ptr<PyDeferred>>();
  py::gil_scoped_release unlocked;
  if (token) {
    token->With([&](const FerryRequest* raw) {
      o.parent = raw;
      call->Start(handle.raw, o);
    });
  } else if (answer) {
    answer->WithStream([&](FerryStream* stream) {
      o.parent_stream = stream;
      call->Start(handle.raw, o);
    });
  } else {
    call->Start(handle.raw, o);
  }
  return call;
}

// The writer of one request's answer, valid during handle_stream only (cleared after).
class PyWriter {
 public:
  explicit PyWriter(ResponseWriter* out) : out_(out) {}
  void Clear() { out_ = nullptr; }
  void Send(int status, const HeaderList& headers, const py::bytes& body) {
    ResponseWriter* out = Get();
    Response r;
    r.status = status;
    r.headers = headers;
    r.body = body;
    out->send(r);
  }
  void Start(int status, const HeaderList& headers) {
    ResponseWriter* out = Get();
    out->set_status(status);
    for (const auto& [k, v] : headers) out->add_header(k, v);
  }
  bool Write(const py::bytes& data) {
    ResponseWriter* out = Get();
    std::string_view view = data;
    py::gil_scoped_release unlocked;  // waits for the client's credit
    return out->write(view);
  }

 private:
  ResponseWriter* Get() {
    if (!out_) throw std::runtime_error("this request was already answered");
    return out_;
  }
  ResponseWriter* out_;
};

// A line of Python's logging: with the request id of the request its code works for when the host cannot
// know it (code on the asyncio loop), else as the host writes it (a request thread's lines carry its id).
void Log(int level, const std::string& message, const std::string& request_id) {
  const FerryHostApi* host = internal::Host();
  if (!request_id.empty() && FERRY_HOST_HAS(host, log_for_request)) {
    host->log_for_request(level, Str(request_id), Str(message));
    return;
  }
  log::Write(level, message);
}

// ferry.serve.metrics: the host's user metrics (ValueError for what the host refuses to define).
int MetricDefine(const std::string& name, const std::string& description, int kind, const std::vector<double>& bounds) {
  const FerryHostApi* host = internal::Host();
  if (!FERRY_HOST_HAS(host, metric_define)) throw std::runtime_error("this ferry has no user metrics");
  FerryString error{nullptr, 0};
  int id = host->metric_define(Str(name), Str(description), kind, bounds.data(), bounds.size(), &error);
  if (id < 0) throw py::value_error(std::string(error.data, error.size));
  return id;
}

bool MetricRecord(int id, const std::vector<std::pair<std::string, std::string>>& tags, double value) {
  const FerryHostApi* host = internal::Host();
  std::vector<FerryHeader> raw;
  raw.reserve(tags.size());
  for (const auto& [k, v] : tags) raw.push_back(FerryHeader{Str(k), Str(v)});
  return host->metric_record(id, raw.data(), raw.size(), value) == 0;
}

// @serve.multiplexed: the models this replica holds, for routers to prefer it for them.
void SetModelIds(const std::vector<std::string>& ids) {
  const FerryHostApi* host = internal::Host();
  if (!FERRY_HOST_HAS(host, set_model_ids)) return;  // an older host: routing ignores models
  std::vector<FerryString> raw;
  raw.reserve(ids.size());
  for (const std::string& id : ids) raw.push_back(Str(id));
  host->set_model_ids(raw.data(), raw.size());
}

PYBIND11_EMBEDDED_MODULE(_ferry, m) {
  m.doc() = "Ferry's replica host, for ferry.serve (internal)";
  m.def("log", &Log);
  m.def("metric_define", &MetricDefine);
  m.def("metric_record", &MetricRecord);
  m.def("set_model_ids", &SetModelIds);
  m.def("replica_context", [] {
    ReplicaContext c = get_replica_context();
    return py::make_tuple(c.app_name, c.deployment, c.replica_id);
  });
  m.def("ready_fd", [] { return Ready().fd(); });
  m.def("take_ready", [] {
    std::deque<uint64_t> tokens = Ready().TakeAll();
    return std::vector<uint64_t>(tokens.begin(), tokens.end());
  });
  py::class_<RequestToken, std::shared_ptr<RequestToken>>(m, "RequestToken").def("cancelled", &RequestToken::cancelled);
  py::class_<PyHandle>(m, "Handle");
  m.def("get_handle", &GetHandle);
  py::class_<PyCall, std::shared_ptr<PyCall>>(m, "Call")
      .def("wait", &PyCall::Wait, py::call_guard<py::gil_scoped_release>())
      .def("notify", &PyCall::Notify)
      .def("watch", &PyCall::Watch, py::call_guard<py::gil_scoped_release>())
      .def("cancel", &PyCall::Cancel, py::call_guard<py::gil_scoped_release>())
      .def("result", &PyCall::Result)
      .def("head", &PyCall::Head)
      .def("next_chunk", &PyCall::NextChunk)
      .def("done", &PyCall::done);
  m.def("start_call", &StartCall);
  m.def("request_fd", [] { return Requests().fd(); });
  // (request_id, method, path, query, route_prefix, headers, body, answer) of each waiting request.
  m.def("take_requests", [] {
    py::list out;
    for (PendingRequest& r : Requests().TakeAll())
      out.append(py::make_tuple(r.request_id, r.method, r.path, r.query, r.route_prefix, r.headers, py::bytes(r.body),
                                r.answer));
    return out;
  });
  py::class_<PyStream, std::shared_ptr<PyStream>>(m, "Stream")
      .def("write", &PyStream::Write)
      .def("end", &PyStream::End)
      .def("fail", &PyStream::Fail);
  py::class_<PyDeferred, std::shared_ptr<PyDeferred>>(m, "Deferred")
      .def("send", &PyDeferred::Send)
      .def("cancelled", &PyDeferred::Cancelled)
      .def("stream", &PyDeferred::Stream);
  py::class_<PyWs, std::shared_ptr<PyWs>>(m, "WebSocket")
      .def("send_text", &PyWs::SendText)
      .def("send_bytes", &PyWs::SendBytes)
      .def("close", &PyWs::Close);
  py::class_<PyWriter, std::shared_ptr<PyWriter>>(m, "Writer")
      .def("send", &PyWriter::Send)
      .def("start", &PyWriter::Start)
      .def("write", &PyWriter::Write);
}

// The interpreter: started by the first deployment instance, never finalized (extension modules such as
// numpy and torch do not survive Py_Finalize; the process ends instead).
void StartInterpreter(const Json& config) {
  static std::once_flag once;
  std::call_once(once, [&] {
    // Extension modules (numpy's, torch's) do not link libpython: its symbols must be global, and this
    // library (and so libpython) was loaded RTLD_LOCAL.
    if (!dlopen("libpython3.11.so.1.0", RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD))
      dlopen("libpython3.11.so.1.0", RTLD_NOW | RTLD_GLOBAL);
    if (config.contains("env_vars") && config["env_vars"].is_object())
      for (const auto& [k, v] : config["env_vars"].items())
        setenv(k.c_str(), v.is_string() ? v.get<std::string>().c_str() : v.dump().c_str(), 1);
    PyConfig pc;
    PyConfig_InitPythonConfig(&pc);
    pc.install_signal_handlers = 0;  // SIGTERM and SIGINT belong to the replica (drain)
    pc.parse_argv = 0;
    py::initialize_interpreter(&pc, 0, nullptr, /*add_program_dir_to_path=*/false);
    {
      py::module_ sys = py::module_::import("sys");
      py::list path = sys.attr("path");
      // The ferry package of this build (the source tree's python/), unless it is installed.
      std::error_code ec;
      if (std::filesystem::is_regular_file(std::filesystem::path(FERRY_PYTHON_DIR) / "ferry" / "__init__.py", ec))
        path.insert(0, FERRY_PYTHON_DIR);
      if (config.contains("sys_path") && config["sys_path"].is_array())
        for (auto it = config["sys_path"].rbegin(); it != config["sys_path"].rend(); ++it)
          path.insert(0, it->get<std::string>());
      // The working_dir (first on sys_path already) is the replica's current directory too, as in Ray.
      if (config.contains("working_dir") && config["working_dir"].is_string()) {
        std::string dir = config["working_dir"].get<std::string>();
        if (chdir(dir.c_str()) != 0) log::Warning("cannot enter working_dir " + dir);
      }
    }
    PyEval_SaveThread();  // the GIL is taken per request from here
  });
}

std::string PythonError(py::error_already_set& e) {
  // The traceback as Python prints it: what a user needs to find the line.
  try {
    return py::module_::import("ferry.serve._private.errors").attr("user_traceback")(e.value()).cast<std::string>();
  } catch (...) {
  }
  try {
    py::module_ tb = py::module_::import("traceback");
    py::object lines = tb.attr("format_exception")(e.type(), e.value(), e.trace());
    return py::str("").attr("join")(lines).cast<std::string>();
  } catch (...) {
    return e.what();
  }
}

class Python : public Deployment {
 public:
  explicit Python(const Args& args) {
    const Json& config = args.json().contains("python") ? args.json()["python"] : args.json();
    StartInterpreter(config);
    Gil gil;
    try {
      py::module_ replica = py::module_::import("ferry.serve._private.replica");
      runtime_ = replica.attr("Replica")(py::module_::import("json").attr("loads")(config.dump()));
      // Which requests take the async way: HTTP ones when __call__ (or the ASGI app) is async, and calls
      // through handles to async methods.
      py::tuple fast = runtime_.attr("async_paths")();
      async_http_ = fast[0].cast<bool>();
      for (auto name : fast[1]) async_methods_.push_back(name.cast<std::string>());
    } catch (py::error_already_set& e) {
      throw std::runtime_error(PythonError(e));
    }
  }
  ~Python() override {
    Gil gil;
    try {
      runtime_.attr("shutdown")();
    } catch (py::error_already_set& e) {
      log::Warning("shutting down: " + PythonError(e));
    }
    runtime_ = py::object();
  }

  void handle_stream(const Request& request, ResponseWriter& out) override {
    if (TryAsync(request, out)) return;
    auto token = std::make_shared<RequestToken>(internal::RawOf(&request));
    auto writer = std::make_shared<PyWriter>(&out);
    {
      Gil gil;
      try {
        const FerryRequest* raw = internal::RawOf(&request);
        HeaderList headers;
        headers.reserve(raw->num_headers);
        for (size_t i = 0; i < raw->num_headers; ++i)
          headers.emplace_back(View(raw->headers[i].name), View(raw->headers[i].value));
        std::string_view body;
        {
          py::gil_scoped_release unlocked;  // a streamed body is read to its end first
          body = request.body();
        }
        runtime_.attr("handle")(request.request_id(), request.method(), request.path(), request.query(),
                                request.route_prefix(), headers, py::bytes(body.data(), body.size()), token, writer);
      } catch (py::error_already_set& e) {
        std::string text = PythonError(e);
        writer->Clear();
        token->Clear();
        throw std::runtime_error(text);
      }
    }
    writer->Clear();
    token->Clear();
  }

  // The async way: a request for an async handler is copied, its answer deferred, and handed to the
  // asyncio loop, which runs it and answers; this thread takes no GIL and goes back to the replica's
  // next request. One thread runs Python for all of them, so concurrent requests do not fight over the
  // GIL (as a uvicorn worker's loop does not).
  bool TryAsync(const Request& request, ResponseWriter& out) {
    if (!async_http_ && async_methods_.empty()) return false;
    const FerryRequest* raw = internal::RawOf(&request);
    std::string_view method, caller, args;
    for (size_t i = 0; i < raw->num_headers; ++i) {
      std::string_view k = View(raw->headers[i].name);
      if (k == "x-ferry-method") method = View(raw->headers[i].value);
      if (k == "x-ferry-caller") caller = View(raw->headers[i].value);
      if (k == "x-ferry-args") args = View(raw->headers[i].value);
    }
    bool async;
    if (caller.empty() || args.empty()) {
      async = async_http_ && method.empty();  // HTTP to __call__ or the ingress app
    } else {
      const std::string_view name = method.empty() ? std::string_view("__call__") : method;
      async = std::find(async_methods_.begin(), async_methods_.end(), name) != async_methods_.end();
    }
    if (!async) return false;
    PendingRequest p;
    p.body = std::string(request.body());  // a streamed body is read to its end here
    DeferredResponse deferred = out.defer();
    if (!deferred) return false;  // inside a batch, or a host that cannot defer
    p.request_id = request.request_id();
    p.method = request.method();
    p.path = request.path();
    p.query = request.query();
    p.route_prefix = request.route_prefix();
    p.headers.reserve(raw->num_headers);
    for (size_t i = 0; i < raw->num_headers; ++i)
      p.headers.emplace_back(View(raw->headers[i].name), View(raw->headers[i].value));
    p.answer = std::make_shared<PyDeferred>(std::move(deferred));
    Requests().Push(std::move(p));
    return true;
  }

  // A WebSocket session for the ingress ASGI app: Python runs the app on the loop until it accepts (or
  // refuses: 403) and returns what takes the session's messages.
  std::unique_ptr<WebSocketSession> accept_websocket(const Request& request, WebSocket ws) override {
    const FerryRequest* raw = internal::RawOf(&request);
    auto life = std::make_shared<WsLife>();
    Gil gil;
    py::object deliver;
    try {
      HeaderList headers;
      for (size_t i = 0; i < raw->num_headers; ++i)
        headers.emplace_back(View(raw->headers[i].name), View(raw->headers[i].value));
      deliver = runtime_.attr("accept_websocket")(request.request_id(), request.path(), request.query(),
                                                  request.route_prefix(), headers, std::make_shared<PyWs>(ws, life));
    } catch (py::error_already_set& e) {
      life->End();
      throw std::runtime_error(PythonError(e));
    }
    if (deliver.is_none()) {
      life->End();  // refused: the host lets the WebSocket go on return
      throw HttpError(403, "the application did not accept the WebSocket session");
    }
    return std::make_unique<PySession>(std::move(deliver), std::move(life));
  }

  void reconfigure(const Json& user_config) override {
    Gil gil;
    try {
      runtime_.attr("reconfigure")(py::module_::import("json").attr("loads")(user_config.dump()));
    } catch (py::error_already_set& e) {
      throw std::runtime_error(PythonError(e));
    }
  }

  bool check_health() override {
    Gil gil;
    try {
      return runtime_.attr("check_health")().cast<bool>();
    } catch (py::error_already_set& e) {
      throw std::runtime_error(PythonError(e));
    }
  }

 private:
  py::object runtime_;
  bool async_http_ = false;
  std::vector<std::string> async_methods_;
};

}  // namespace
}  // namespace ferry::runtimes::python

using Python = ferry::runtimes::python::Python;
FERRY_DEPLOYMENT(Python)
