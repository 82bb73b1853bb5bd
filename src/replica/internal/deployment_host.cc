#include "replica/internal/deployment_host.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstddef>

#include "common/common.h"
#include "common/mutex.h"
#include "runtimes/runtimes.h"

namespace ferry::replica {
namespace {

void SetStatus(FerryResponseSink* sink, int status) { sink->status = status; }
void AddHeader(FerryResponseSink* sink, FerryString name, FerryString value) {
  sink->headers.emplace_back(std::string(name.data, name.size), std::string(value.data, value.size));
}
void SetBody(FerryResponseSink* sink, FerryString body) { sink->body.assign(body.data, body.size); }
void SetError(FerryErrorSink* sink, FerryString message) { sink->message.assign(message.data, message.size); }
int WriteChunk(FerryResponseSink* sink, FerryString data) {
  std::string_view chunk(data.data, data.size);
  if (sink->detached) return 1;  // the detached stream writes now
  if (!sink->stream) {
    sink->body.append(chunk);
    return 0;
  }
  if (!sink->stream->Write(*sink, chunk)) return 1;
  sink->streamed = true;
  return 0;
}

// The request this thread is running handle() for: the request id of the lines its code logs.
thread_local std::string_view t_request_id;

// Deployment code's log lines: component "user", with the request id when there is one (the process's
// fields add the replica, deployment and application).
void HostLog(int level, FerryString message) {
  LogLevel l = level <= FERRY_LOG_DEBUG     ? LogLevel::kDebug
               : level == FERRY_LOG_INFO    ? LogLevel::kInfo
               : level == FERRY_LOG_WARNING ? LogLevel::kWarning
                                            : LogLevel::kError;
  if (!Log::Enabled(l)) return;
  std::string_view text(message.data, message.size);
  if (t_request_id.empty())
    Log::Write(l, "user", text);
  else
    Log::Write(l, "user", text, {{"request_id", t_request_id}});
}

void HostLogForRequest(int level, FerryString request_id, FerryString message) {
  std::string_view saved = t_request_id;
  t_request_id = std::string_view(request_id.data, request_id.size);
  HostLog(level, message);
  t_request_id = saved;
}

// Whether the plugin's table is long enough to hold `field` (tables grow by appending).
#define FERRY_HAS(api, field) ((api)->struct_size >= offsetof(FerryDeploymentApi, field) + sizeof((api)->field))

FerryString Str(std::string_view s) { return FerryString{s.data(), s.size()}; }

// What a request's FerryRequest.host_context points to: its cancel flag, and what calls made while
// handling it inherit (deadline, request id, trace, cancellation).
struct CancelContext {
  const std::atomic<bool>* cancelled = nullptr;
  std::optional<SteadyClock::time_point> deadline;
  std::string_view request_id;
  std::string_view traceparent;
  ResponseStream* scope = nullptr;  // null: calls are not cancelled with the request (batches)
  BodySource* body = nullptr;       // a streamed body's source; null: the body is in the request
  std::string gathered;             // read_all_body's answer
  bool gathered_done = false;
  int gathered_ok = 1;
};

handle::HandleClient* g_handles = nullptr;

// A FerryHandle: the deployment key it calls.
struct HostHandle {
  std::string key;  // "app/name"
};

}  // namespace
}  // namespace ferry::replica

struct FerryCall {
  ferry::handle::CallRef ref;
};

namespace ferry::replica {
namespace {

// Hands a call's events to the plugin's callbacks, converting the headers.
class AbiObserver : public handle::CallObserver {
 public:
  AbiObserver(const FerryCallEvents* events, void* user) : events_(*events), user_(user) {}
  void OnHead(int status, const transport::HeaderList& headers, bool stream) override {
    std::vector<FerryHeader> h;
    h.reserve(headers.size());
    for (const auto& [k, v] : headers) h.push_back(FerryHeader{{k.data(), k.size()}, {v.data(), v.size()}});
    events_.on_head(user_, status, h.data(), h.size(), stream ? 1 : 0);
  }
  void OnChunk(std::string_view data) override { events_.on_chunk(user_, FerryString{data.data(), data.size()}); }
  void OnEnd(bool ok, int status, std::string_view error) override {
    events_.on_end(user_, ok ? 1 : 0, status, FerryString{error.data(), error.size()});
  }

 private:
  const FerryCallEvents events_;
  void* const user_;
};

std::string_view ViewOf(FerryString s) { return {s.data, s.size}; }

FerryHandle* GetHandle(FerryString application, FerryString deployment, FerryErrorSink* error) {
  auto fail = [&](std::string_view message) -> FerryHandle* {
    if (error) error->message.assign(message);
    return nullptr;
  };
  if (!g_handles) return fail("this replica cannot make calls (no handle client)");
  if (deployment.size == 0) return fail("get_handle: no deployment named");
  std::string_view app = ViewOf(application);
  const std::string& caller = g_handles->caller();
  if (app.empty()) app = std::string_view(caller).substr(0, caller.find('/'));
  g_handles->Want();
  return reinterpret_cast<FerryHandle*>(new HostHandle{ferry::StrCat(app, "/", ViewOf(deployment))});
}

FerryCall* StartCall(FerryHandle* h, const FerryCallOptions* o, const FerryCallEvents* events, void* user) {
  handle::CallRequest r;
  r.deployment_key = reinterpret_cast<HostHandle*>(h)->key;
  r.method_name = ViewOf(o->method_name);
  if (o->http_method.size) r.http_method = ViewOf(o->http_method);
  r.path = ViewOf(o->path);
  r.query = ViewOf(o->query);
  for (size_t i = 0; i < o->num_headers; ++i)
    r.headers.emplace_back(ViewOf(o->headers[i].name), ViewOf(o->headers[i].value));
  r.body = ViewOf(o->body);
  const CancelContext* parent = o->parent ? static_cast<const CancelContext*>(o->parent->host_context) : nullptr;
  FerryStream* parent_stream =
      !parent && o->struct_size >= offsetof(FerryCallOptions, parent_stream) + sizeof(o->parent_stream)
          ? o->parent_stream
          : nullptr;
  if (parent) {
    r.parent_request_id = parent->request_id;
    r.traceparent = parent->traceparent;
    r.deadline = parent->deadline;
  } else if (parent_stream) {  // a request answered after handle() returned
    r.parent_request_id = parent_stream->request_id;
    r.traceparent = parent_stream->traceparent;
    r.deadline = parent_stream->deadline;
  }
  if (o->struct_size >= offsetof(FerryCallOptions, events_on_demand) + sizeof(o->events_on_demand))
    r.on_demand = o->events_on_demand != 0;
  if (o->timeout_s > 0) {
    auto own = SteadyClock::now() + std::chrono::microseconds(static_cast<int64_t>(o->timeout_s * 1e6));
    if (!r.deadline || own < *r.deadline) r.deadline = own;
  }
  auto* call = new FerryCall{g_handles->Start(std::move(r), std::make_shared<AbiObserver>(events, user))};
  if (parent && parent->scope) parent->scope->OnCancel([ref = call->ref] { ref.Cancel(); });
  if (parent_stream) parent_stream->sink->OnCancel([ref = call->ref] { ref.Cancel(); });
  return call;
}

void CallConsumed(FerryCall* call, size_t bytes) { call->ref.Consumed(bytes); }
void CancelCall(FerryCall* call) { call->ref.Cancel(); }
int WaitCall(FerryCall* call, int block) { return call->ref.Wait(block != 0) ? 1 : 0; }
void WatchCall(FerryCall* call) { call->ref.Watch(); }
void ReleaseCall(FerryCall* call) { delete call; }

// The replica's names, set once before the deployment is created.
struct ReplicaNames {
  std::string application, deployment, replica_id;
};
ReplicaNames g_names;

// What calls made for the request after handle() returned inherit (FerryCallOptions.parent_stream).
FerryStream* WithParentFields(FerryStream* stream, const FerryResponseSink& sink) {
  if (const auto* context = static_cast<const CancelContext*>(sink.request)) {
    stream->request_id = std::string(context->request_id);
    stream->traceparent = std::string(context->traceparent);
    stream->deadline = context->deadline;
  }
  return stream;
}

FerryStream* DetachStream(FerryResponseSink* sink) {
  if (!sink->stream || sink->detached) return nullptr;
  std::unique_ptr<DetachedSink> detached = sink->stream->Detach(*sink);
  if (!detached) return nullptr;
  sink->detached = true;
  sink->streamed = true;
  return WithParentFields(new FerryStream{std::move(detached)}, *sink);
}
FerryStream* DeferResponse(FerryResponseSink* sink) {
  if (!sink->stream || sink->detached || sink->streamed) return nullptr;
  std::unique_ptr<DetachedSink> deferred = sink->stream->Defer();
  if (!deferred) return nullptr;
  sink->detached = true;  // handle() returning does not answer
  return WithParentFields(new FerryStream{std::move(deferred)}, *sink);
}
FerryResponseSink SinkOf(int status, const FerryHeader* headers, size_t n, FerryString body) {
  FerryResponseSink out;
  out.status = status;
  for (size_t i = 0; i < n; ++i) out.headers.emplace_back(ViewOf(headers[i].name), ViewOf(headers[i].value));
  out.body.assign(ViewOf(body));
  return out;
}
void StreamHead(FerryStream* stream, int status, const FerryHeader* headers, size_t n) {
  stream->sink->SetHead(SinkOf(status, headers, n, {}));
}
int StreamCancelled(FerryStream* stream) { return stream->sink->Cancelled() ? 1 : 0; }
void StreamRespond(FerryStream* stream, int status, const FerryHeader* headers, size_t n, FerryString body) {
  stream->sink->Respond(SinkOf(status, headers, n, body));
  delete stream;
}
int StreamWrite(FerryStream* stream, FerryString data) { return stream->sink->Write(ViewOf(data)) ? 0 : 1; }
void StreamEnd(FerryStream* stream, int ok, FerryString message) {
  stream->sink->End(ok != 0, ViewOf(message));
  delete stream;
}

int WsSend(FerryWebSocket* ws, FerryString data, int binary) {
  return ws->peer->Send(ViewOf(data), binary != 0) ? 0 : 1;
}
void WsClose(FerryWebSocket* ws, int code, FerryString reason) {
  // Codes a deployment may send (RFC 6455 7.4): 1000-1003, 1007-1011, 3000-4999; others become 1011.
  const bool sendable =
      (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1011) || (code >= 3000 && code <= 4999);
  std::string_view why = ViewOf(reason).substr(0, 123);
  ws->peer->Close(static_cast<uint16_t>(sendable ? code : 1011), why);
}

void ReplicaContext(FerryString* application, FerryString* deployment, FerryString* replica_id) {
  if (application) *application = Str(g_names.application);
  if (deployment) *deployment = Str(g_names.deployment);
  if (replica_id) *replica_id = Str(g_names.replica_id);
}

metrics::UserRegistry g_user_metrics;

int MetricDefine(FerryString name, FerryString description, int kind, const double* boundaries, size_t num_boundaries,
                 FerryString* error) {
  thread_local std::string why;
  int id = -1;
  if (kind < FERRY_METRIC_COUNTER || kind > FERRY_METRIC_HISTOGRAM)
    why = ferry::StrCat("unknown metric kind ", kind);
  else
    id = g_user_metrics.Define(ViewOf(name), ViewOf(description), static_cast<metrics::Type>(kind),
                               std::vector<double>(boundaries, boundaries + (boundaries ? num_boundaries : 0)), &why);
  if (id < 0 && error) *error = Str(why);
  return id;
}

int MetricRecord(int metric, const FerryHeader* tags, size_t num_tags, double value) {
  std::vector<std::pair<std::string, std::string>> pairs;
  pairs.reserve(num_tags);
  for (size_t i = 0; i < num_tags; ++i) pairs.emplace_back(ViewOf(tags[i].name), ViewOf(tags[i].value));
  return g_user_metrics.Record(metric, std::move(pairs), value) ? 0 : -1;
}

struct LoadedModels {
  Mutex mu;
  std::vector<std::string> ids ABSL_GUARDED_BY(mu);
};
LoadedModels& Models() {
  static LoadedModels models;
  return models;
}

void SetModelIds(const FerryString* model_ids, size_t num_model_ids) {
  std::vector<std::string> ids;
  ids.reserve(num_model_ids);
  for (size_t i = 0; i < num_model_ids; ++i) ids.emplace_back(ViewOf(model_ids[i]));
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  LoadedModels& m = Models();
  MutexLock lock(&m.mu);
  m.ids = std::move(ids);
}

const FerryHostApi kHostApi = {sizeof(FerryHostApi),
                               FERRY_ABI_VERSION,
                               &SetStatus,
                               &AddHeader,
                               &SetBody,
                               &SetError,
                               &HostLog,
                               &ModelHost::AddOutput,
                               &ModelHost::SetInferParameters,
                               &ModelHost::FailInfer,
                               &WriteChunk,
                               &GetHandle,
                               &StartCall,
                               &CallConsumed,
                               &CancelCall,
                               &ReleaseCall,
                               &ReplicaContext,
                               &WsSend,
                               &WsClose,
                               &DetachStream,
                               &StreamWrite,
                               &StreamEnd,
                               &WaitCall,
                               &WatchCall,
                               &DeferResponse,
                               &StreamHead,
                               &StreamRespond,
                               &StreamCancelled,
                               &HostLogForRequest,
                               &MetricDefine,
                               &MetricRecord,
                               &SetModelIds};

int IsCancelled(const FerryRequest* request) {
  return static_cast<const CancelContext*>(request->host_context)->cancelled->load(std::memory_order_relaxed) ? 1 : 0;
}

int ReadBody(const FerryRequest* request, FerryString* chunk) {
  auto* context = static_cast<CancelContext*>(request->host_context);
  if (!context->body) return 0;
  std::string_view piece;
  int rc = context->body->Next(&piece);
  if (rc == 1) *chunk = Str(piece);
  return rc;
}

FerryString ReadAllBody(const FerryRequest* request, int* ok) {
  auto* context = static_cast<CancelContext*>(request->host_context);
  if (!context->gathered_done && context->body) {
    std::string_view piece;
    int rc;
    while ((rc = context->body->Next(&piece)) == 1) context->gathered.append(piece);
    context->gathered_ok = rc == 0 ? 1 : 0;
  }
  context->gathered_done = true;
  if (ok) *ok = context->gathered_ok;
  return Str(context->gathered);
}

// Points `raw` at `request`'s fields; `headers` and `context` must outlive the call it is used for.
void FillRequest(const transport::RequestMessage& request, const std::atomic<bool>& cancelled,
                 std::vector<FerryHeader>& headers, CancelContext& context, FerryRequest& raw,
                 ResponseStream* scope = nullptr, BodySource* body = nullptr) {
  headers.clear();
  context = CancelContext{};
  for (const auto& [k, v] : request.headers) {
    headers.push_back(FerryHeader{Str(k), Str(v)});
    if (k == "traceparent") context.traceparent = v;
  }
  context.cancelled = &cancelled;
  context.request_id = request.request_id;
  context.scope = scope;
  context.body = body;
  if (request.timeout_ms > 0) context.deadline = SteadyClock::now() + std::chrono::milliseconds(request.timeout_ms);
  raw = FerryRequest{};
  raw.struct_size = sizeof(FerryRequest);
  raw.request_id = Str(request.request_id);
  raw.method = Str(request.method);
  raw.path = Str(request.path);
  raw.query = Str(request.query);
  raw.route_prefix = Str(request.route_prefix);
  raw.headers = headers.data();
  raw.num_headers = headers.size();
  raw.body = Str(request.body);
  raw.is_cancelled = &IsCancelled;
  raw.host_context = &context;
  raw.body_streamed = body ? 1 : 0;
  raw.read_body = &ReadBody;
  raw.read_all_body = &ReadAllBody;
}

std::string ErrorText(const FerryErrorSink& error, std::string_view fallback) {
  return error.message.empty() ? std::string(fallback) : error.message;
}

}  // namespace

const FerryHostApi* HostApi() { return &kHostApi; }

metrics::UserRegistry& UserMetrics() { return g_user_metrics; }

std::vector<std::string> LoadedModelIds() {
  LoadedModels& m = Models();
  MutexLock lock(&m.mu);
  return m.ids;
}

void SetHandleClient(handle::HandleClient* client) { g_handles = client; }

absl::StatusOr<std::unique_ptr<DeploymentHost>> DeploymentHost::Create(const ReplicaSpec& spec) {
  g_names = ReplicaNames{spec.application, spec.deployment, spec.replica_id};
  const FerryDeploymentApi* api = nullptr;
  void* library = nullptr;
  if (spec.builtin) {
    api = runtimes::FindBuiltin(spec.symbol);
    if (!api) return absl::NotFoundError(ferry::StrCat("no built-in deployment named \"", spec.symbol, "\""));
  } else {
    library = dlopen(spec.plugin_path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!library) return absl::NotFoundError(ferry::StrCat("cannot load plugin: ", dlerror()));
    std::string entry_name = "ferry_deployment_" + spec.symbol;
    auto entry = reinterpret_cast<FerryDeploymentEntry>(dlsym(library, entry_name.c_str()));
    if (!entry) {
      dlclose(library);
      return absl::NotFoundError(ferry::StrCat("plugin ", spec.plugin_path, " has no symbol ", entry_name));
    }
    api = entry();
  }
  // A model (the tensor entry) needs no handle(): the host calls infer() with tensors instead.
  const bool model = api && api->abi_version == FERRY_ABI_VERSION && FERRY_HAS(api, infer) && api->infer;
  if (!api || api->abi_version != FERRY_ABI_VERSION || api->struct_size < offsetof(FerryDeploymentApi, handle_batch) ||
      !api->create || !api->destroy || (!api->handle && !model)) {
    if (library) dlclose(library);
    return absl::FailedPreconditionError(ferry::StrCat("deployment ", spec.symbol, " was built for ferry ABI version ",
                                                       api ? api->abi_version : 0, ", this ferry speaks ",
                                                       FERRY_ABI_VERSION));
  }
  std::unique_ptr<DeploymentHost> host(new DeploymentHost(api));
  std::string args = spec.args.dump();
  FerryErrorSink error;
  if (api->create(&kHostApi, Str(args), &host->instance_, &error) != FERRY_OK) {
    return absl::FailedPreconditionError(
        ferry::StrCat("constructor of ", spec.deployment, " failed: ", ErrorText(error, "no message")));
  }
  if (model) {
    absl::StatusOr<std::unique_ptr<ModelHost>> m = ModelHost::Create(api, host->instance_, spec.deployment);
    if (!m.ok()) return m.status();
    host->model_ = std::move(*m);
  }
  if (!spec.user_config.is_null()) {
    absl::Status s = host->Reconfigure(spec.user_config.dump());
    if (!s.ok()) return s;
  }
  return host;
}

DeploymentHost::DeploymentHost(const FerryDeploymentApi* api) : api_(api) {
  // Tables from before handle_batch (or prepare) existed end before it.
  if (api->struct_size >= offsetof(FerryDeploymentApi, handle_batch) + sizeof(api->handle_batch))
    handle_batch_ = api->handle_batch;
  if (api->struct_size >= offsetof(FerryDeploymentApi, release) + sizeof(api->release) && api->prepare &&
      api->release) {
    prepare_ = api->prepare;
    release_ = api->release;
  }
  if (FERRY_HAS(api, ws_closed) && api->ws_open && api->ws_message && api->ws_closed) {
    ws_open_ = api->ws_open;
    ws_message_ = api->ws_message;
    ws_closed_ = api->ws_closed;
  }
}

DeploymentHost::~DeploymentHost() {
  if (instance_) api_->destroy(instance_);
  // A plugin's library stays loaded (it is never dlclose'd): threads or atexit handlers of the plugin may
  // still point into it.
}

void DeploymentHost::Handle(const transport::RequestMessage& request, const std::atomic<bool>& cancelled,
                            FerryResponseSink* response, BodySource* body) {
  thread_local std::vector<FerryHeader> headers;
  CancelContext context;
  FerryRequest raw;
  FillRequest(request, cancelled, headers, context, raw, response->stream, body);
  response->request = &context;  // for an answer deferred or detached: what its calls inherit
  struct Forget {                // the context dies with this call: nothing may find it after
    FerryResponseSink* sink;
    ~Forget() { sink->request = nullptr; }
  } forget{response};
  if (model_) {
    std::unique_ptr<ModelHost::Prepared> p = model_->Prepare(request);
    if (p->answer) {
      *response = std::move(*p->answer);
      return;
    }
    t_request_id = request.request_id;
    model_->Run({p.get()}, {&raw}, {response});
    t_request_id = {};
    return;
  }
  FerryErrorSink error;
  t_request_id = request.request_id;
  const int rc = api_->handle(instance_, &raw, response, &error);
  t_request_id = {};
  if (rc != FERRY_OK) {
    // Code that stops with an error because its request was cancelled (a call it made was cancelled with
    // it) did what it should: no warning.
    const LogLevel level = cancelled.load() ? LogLevel::kInfo : LogLevel::kWarning;
    if (Log::Enabled(level))
      Log::Write(level, "replica",
                 ferry::StrCat("request ", request.request_id, " failed in handle()",
                               response->streamed ? " after streaming began: " : ": ", ErrorText(error, "no message")));
    if (response->streamed) {
      response->stream_error = ErrorText(error, "handler failed");
      return;
    }
    ResponseStream* stream = response->stream;
    *response = FerryResponseSink{};
    response->stream = stream;
    response->status = 500;
    response->headers.emplace_back("content-type", "application/json");
    nlohmann::json body = {{"error", ErrorText(error, "handler failed")}, {"request_id", request.request_id}};
    response->body = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
}

bool DeploymentHost::OpenWebSocket(const transport::RequestMessage& request, const std::atomic<bool>& cancelled,
                                   FerryWebSocket* ws, void** session, FerryResponseSink* refusal) {
  *session = nullptr;
  if (!ws_open_) {
    *refusal = ErrorResponse(403, "this deployment takes no WebSocket sessions");
    return false;
  }
  thread_local std::vector<FerryHeader> headers;
  CancelContext context;
  FerryRequest raw;
  FillRequest(request, cancelled, headers, context, raw);
  FerryErrorSink error;
  t_request_id = request.request_id;
  const int rc = ws_open_(instance_, &raw, ws, session, refusal, &error);
  t_request_id = {};
  if (rc != FERRY_OK) {
    FERRY_LOG(kWarning, "replica", "request ", request.request_id,
              ": ws_open failed: ", ErrorText(error, "no message"));
    *refusal = ErrorResponse(500, ErrorText(error, "accept_websocket failed"));
    *session = nullptr;
    return false;
  }
  if (*session) return true;
  if (refusal->status < 400) refusal->status = 403;
  return false;
}

absl::Status DeploymentHost::WebSocketMessage(void* session, std::string_view data, bool binary) {
  FerryErrorSink error;
  if (ws_message_(instance_, session, Str(data), binary ? 1 : 0, &error) == FERRY_OK) return absl::OkStatus();
  return absl::InternalError(ErrorText(error, "on_message failed"));
}

void DeploymentHost::WebSocketClosed(void* session, uint16_t code, std::string_view reason) {
  ws_closed_(instance_, session, code, Str(reason));
}

void* DeploymentHost::Prepare(const transport::RequestMessage& request, const std::atomic<bool>& cancelled) {
  if (model_) return model_->Prepare(request).release();
  if (!prepare_) return nullptr;
  thread_local std::vector<FerryHeader> headers;
  CancelContext context;
  FerryRequest raw;
  FillRequest(request, cancelled, headers, context, raw);
  FerryErrorSink error;
  void* state = nullptr;
  t_request_id = request.request_id;
  const int rc = prepare_(instance_, &raw, &state, &error);
  t_request_id = {};
  if (rc == FERRY_OK) return state;
  FERRY_LOG(kWarning, "replica", "request ", request.request_id,
            " failed in prepare() (handle_batch gets it unprepared): ", ErrorText(error, "no message"));
  return nullptr;
}

void DeploymentHost::Release(void* state) {
  if (!state) return;
  if (model_)
    delete static_cast<ModelHost::Prepared*>(state);
  else
    release_(instance_, state);
}

void DeploymentHost::HandleBatch(const std::vector<const transport::RequestMessage*>& requests,
                                 const std::vector<const std::atomic<bool>*>& cancelled,
                                 const std::vector<void*>& prepared, std::vector<FerryResponseSink>* responses) {
  const size_t n = requests.size();
  std::vector<std::vector<FerryHeader>> headers(n);
  std::vector<CancelContext> contexts(n);
  std::vector<FerryRequest> raw(n);
  std::vector<const FerryRequest*> raw_ptrs(n);
  responses->assign(n, FerryResponseSink{});
  std::vector<FerryResponseSink*> sinks(n);
  for (size_t i = 0; i < n; ++i) {
    FillRequest(*requests[i], *cancelled[i], headers[i], contexts[i], raw[i]);
    if (!prepared.empty() && !model_) raw[i].prepared = prepared[i];
    raw_ptrs[i] = &raw[i];
    sinks[i] = &(*responses)[i];
  }
  if (model_) {
    // Each request was parsed and checked as it arrived (or is now); those answered already (metadata,
    // a bad body) leave the batch, the rest run in one infer() call.
    std::vector<std::unique_ptr<ModelHost::Prepared>> made_now;
    std::vector<ModelHost::Prepared*> runnable;
    std::vector<const FerryRequest*> http;
    std::vector<FerryResponseSink*> out;
    for (size_t i = 0; i < n; ++i) {
      auto* p = prepared.empty() || !prepared[i] ? nullptr : static_cast<ModelHost::Prepared*>(prepared[i]);
      if (!p) p = made_now.emplace_back(model_->Prepare(*requests[i])).get();
      if (p->answer) {
        (*responses)[i] = std::move(*p->answer);
        continue;
      }
      runnable.push_back(p);
      http.push_back(raw_ptrs[i]);
      out.push_back(sinks[i]);
    }
    if (!runnable.empty()) model_->Run(runnable, http, out);
    return;
  }
  FerryErrorSink error;
  if (handle_batch_(instance_, raw_ptrs.data(), n, sinks.data(), &error) == FERRY_OK) return;
  std::string message = ErrorText(error, "handle_batch failed");
  FERRY_LOG(kWarning, "replica", "a batch of ", n, " requests failed in handle_batch(): ", message);
  for (size_t i = 0; i < n; ++i) {
    FerryResponseSink& out = (*responses)[i];
    out = FerryResponseSink{};
    out.status = 500;
    out.headers.emplace_back("content-type", "application/json");
    nlohmann::json body = {{"error", message}, {"request_id", requests[i]->request_id}};
    out.body = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
}

absl::Status DeploymentHost::Reconfigure(const std::string& user_config_json) {
  if (!api_->reconfigure) return absl::OkStatus();
  FerryErrorSink error;
  if (api_->reconfigure(instance_, Str(user_config_json), &error) != FERRY_OK)
    return absl::FailedPreconditionError(ferry::StrCat("reconfigure failed: ", ErrorText(error, "no message")));
  return absl::OkStatus();
}

absl::Status DeploymentHost::CheckHealth() {
  if (!api_->check_health) return absl::OkStatus();
  FerryErrorSink error;
  if (api_->check_health(instance_, &error) != FERRY_OK)
    return absl::UnavailableError(ErrorText(error, "check_health failed"));
  return absl::OkStatus();
}

}  // namespace ferry::replica
