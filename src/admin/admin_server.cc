#include "admin/admin_server.h"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <thread>

#include "admin/render.h"
#include "common/common.h"
#include "common/http_client.h"
#include "common/mutex.h"
#include "metrics/metrics.h"

namespace ferry::admin {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using nlohmann::json;

namespace {

constexpr uint64_t kMaxConfigBytes = 16 << 20;
constexpr auto kControllerWait = std::chrono::seconds(30);

class DriverCall;

struct Reply {
  Reply() = default;
  Reply(http::status s, json b) : status(s), body(std::move(b)) {}
  http::status status = http::status::ok;
  json body;
  std::optional<std::string> text;  // sent instead of `body`: the Prometheus text format
  std::string content_type;         // of `text`; empty: Prometheus's
  std::vector<std::pair<std::string, std::string>> headers;
  std::shared_ptr<DriverCall> stream;  // sent instead of all the above: a driver's streamed call
};

// A driver's call. The admin thread that took the request takes the callee's answer piece by piece
// (crediting the callee as it goes, so a stream moves at the pace its reader reads): gathered whole, or,
// when the driver asked for a stream (x-ferry-stream) and the callee streams, passed on chunk by chunk.
class DriverCall : public handle::CallObserver {
 public:
  void OnHead(int status, const transport::HeaderList& headers, bool stream) override {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = status;
    streamed_ = stream;
    head_ = true;
    for (const auto& [k, v] : headers) headers_.emplace_back(k, v);
    cv_.notify_all();
  }
  void OnChunk(std::string_view data) override {
    std::lock_guard<std::mutex> lock(mu_);
    chunks_.emplace_back(data);
    cv_.notify_all();
  }
  void OnEnd(bool ok, int status, std::string_view error) override {
    std::lock_guard<std::mutex> lock(mu_);
    ended_ = true;
    ok_ = ok;
    if (status_ == 0) status_ = status;
    error_.assign(error);
    cv_.notify_all();
  }
  void set_ref(handle::CallRef ref) { ref_ = std::move(ref); }
  const handle::CallRef& ref() const { return ref_; }

  // True when the callee's answer is a stream (chunks follow, from Next); false when the call ended
  // without one or answered whole.
  bool WaitForHead() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return head_ || ended_; });
    return head_ && streamed_;
  }
  // The next piece of the answer: true with `chunk` set (the callee is credited for it); false at the end.
  bool Next(std::string* chunk) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !chunks_.empty() || ended_; });
    if (chunks_.empty()) return false;
    *chunk = std::move(chunks_.front());
    chunks_.pop_front();
    lock.unlock();
    ref_.Consumed(chunk->size());
    return true;
  }
  // The callee's status and headers (content-type apart), with x-ferry-call-ok (how the call ended, or
  // for a stream "1" so far) and x-ferry-call-error (why it ended without an answer).
  Reply Head(bool so_far) {
    std::lock_guard<std::mutex> lock(mu_);
    Reply r;
    r.status = static_cast<http::status>(status_);
    r.headers = headers_;
    r.headers.emplace_back("x-ferry-call-ok", so_far || ok_ ? "1" : "0");
    if (!so_far && !error_.empty()) r.headers.emplace_back("x-ferry-call-error", error_);
    r.content_type = "application/octet-stream";
    for (auto it = r.headers.begin(); it != r.headers.end(); ++it)
      if (it->first == "content-type") {
        r.content_type = it->second;
        r.headers.erase(it);
        break;
      }
    return r;
  }
  // The whole answer, once the call ended.
  Reply Whole() {
    std::string body, chunk;
    while (Next(&chunk)) body.append(chunk);
    Reply r = Head(false);
    r.text = std::move(body);
    return r;
  }
  // How a streamed answer ended: ok, or the reason it broke.
  bool ended_ok(std::string* error) {
    std::lock_guard<std::mutex> lock(mu_);
    *error = error_;
    return ok_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool head_ = false, streamed_ = false, ended_ = false, ok_ = false;
  int status_ = 0;
  std::vector<std::pair<std::string, std::string>> headers_;
  std::deque<std::string> chunks_;
  std::string error_;
  handle::CallRef ref_;
};

Reply Error(http::status status, std::string_view message) { return {status, {{"error", message}}}; }

std::vector<std::string> Lines(std::string_view text) {
  std::vector<std::string> out;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    out.emplace_back(text.substr(0, nl));
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
  return out;
}

// Constant-time comparison, so the token cannot be guessed byte by byte from response times.
bool SameToken(std::string_view given, std::string_view expected) {
  if (expected.empty() || given.size() != expected.size()) return false;
  unsigned diff = 0;
  for (size_t i = 0; i < given.size(); ++i)
    diff |= static_cast<unsigned char>(given[i]) ^ static_cast<unsigned char>(expected[i]);
  return diff == 0;
}

}  // namespace

class AdminServer::Impl {
 public:
  Impl(AdminServerOptions options, asio::io_context& control_io, controller::Controller* controller)
      : options_(std::move(options)), control_io_(control_io), controller_(controller) {}

  absl::Status Listen() {
    boost::system::error_code ec;
    auto address = asio::ip::make_address(options_.host, ec);
    if (ec) return absl::InvalidArgumentError(StrCat("admin.host: not an IP address: ", options_.host));
    tcp::endpoint endpoint(address, static_cast<uint16_t>(options_.port));
    acceptor_.open(endpoint.protocol(), ec);
    if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor_.bind(endpoint, ec);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec)
      return absl::UnavailableError(
          StrCat("admin API: cannot listen on ", options_.host, ":", options_.port, ": ", ec.message()));
    return absl::OkStatus();
  }

  uint16_t port() const {
    boost::system::error_code ec;
    return acceptor_.local_endpoint(ec).port();
  }

  void Start() {
    DoAccept();
    thread_ = std::thread([this] { io_.run(); });
  }

  void Stop() {
    io_.stop();
    if (thread_.joinable()) thread_.join();
    // Connections are served on their own threads: shut their sockets and wait for them to finish.
    MutexLock lock(&mu_);
    stopping_ = true;
    for (int fd : open_) ::shutdown(fd, SHUT_RDWR);
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(35);
    while (!open_.empty())
      if (!idle_.WaitUntil(&mu_, until)) break;
  }

 private:
  void DoAccept() {
    acceptor_.async_accept([this](const boost::system::error_code& ec, tcp::socket socket) {
      if (ec) return;
      {
        MutexLock lock(&mu_);
        if (stopping_) return;
        open_.insert(socket.native_handle());
      }
      std::thread([this, socket = std::move(socket)]() mutable {
        Serve(socket);
        MutexLock lock(&mu_);
        open_.erase(socket.native_handle());  // before the socket closes and its number can be reused
        idle_.SignalAll();
      }).detach();
      DoAccept();
    });
  }

  // One connection, served synchronously on its own short-lived thread: the admin API is low-volume and a
  // slow deploy must not hold up a status call.
  void Serve(tcp::socket& socket) {
    beast::flat_buffer buffer;
    struct timeval tv {
      30, 0
    };
    setsockopt(socket.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    for (;;) {
      http::request_parser<http::string_body> parser;
      parser.body_limit(kMaxConfigBytes);
      parser.header_limit(16 * 1024);
      boost::system::error_code ec;
      http::read(socket, buffer, parser, ec);
      if (ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset) return;
      Reply reply;
      bool keep_alive = false;
      if (ec == http::error::body_limit) {
        reply = Error(http::status::payload_too_large, "config larger than 16 MiB");
      } else if (ec) {
        reply = Error(http::status::bad_request, StrCat("malformed HTTP request: ", ec.message()));
      } else {
        keep_alive = parser.get().keep_alive();
        // A bug in rendering must cost this answer, not the node (an exception escaping this thread would
        // end the process).
        try {
          reply = Handle(parser.get());
        } catch (const std::exception& e) {
          FERRY_LOG(kError, "admin", "answering ", parser.get().target(), " failed: ", e.what());
          reply = Error(http::status::internal_server_error, StrCat("the admin API failed: ", e.what()));
        }
      }
      if (reply.stream) {
        if (!WriteStream(socket, *reply.stream, keep_alive)) return;
        continue;
      }
      http::response<http::string_body> res{reply.status, 11};
      res.set(http::field::content_type, !reply.content_type.empty() ? reply.content_type
                                         : reply.text                ? "text/plain; version=0.0.4; charset=utf-8"
                                                                     : "application/json");
      for (const auto& [k, v] : reply.headers) res.insert(k, v);
      if (reply.status == http::status::unauthorized) res.set(http::field::www_authenticate, "Bearer");
      if (reply.text)
        res.body() = std::move(*reply.text);
      else
        res.body() = reply.body.is_null() ? std::string()
                                          : reply.body.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
      res.keep_alive(keep_alive);
      res.prepare_payload();
      http::write(socket, res, ec);
      if (ec || !keep_alive) return;
    }
  }

  // Runs `work` on the controller's thread and waits for its answer.
  template <typename T>
  std::optional<T> OnController(std::function<T()> work) {
    auto promise = std::make_shared<std::promise<T>>();
    std::future<T> future = promise->get_future();
    asio::post(control_io_, [promise, work = std::move(work)] { promise->set_value(work()); });
    if (future.wait_for(kControllerWait) != std::future_status::ready) return std::nullopt;
    return future.get();
  }

  Reply Handle(const http::request<http::string_body>& req) {
    if (!options_.token.empty()) {
      auto it = req.find(http::field::authorization);
      std::string_view given =
          it == req.end() ? std::string_view() : std::string_view(it->value().data(), it->value().size());
      if (given.rfind("Bearer ", 0) != 0 || !SameToken(given.substr(7), options_.token))
        return Error(http::status::unauthorized,
                     "missing or wrong bearer token (Authorization: Bearer <admin.auth_token>)");
    }
    std::string_view target(req.target().data(), req.target().size());
    std::string_view path = target.substr(0, target.find('?'));
    if (!path.empty() && path.back() != '/' && path == "/api/serve/applications") path = "/api/serve/applications/";
    const http::verb method = req.method();
    if (path == "/api/ferry/nodes") {
      if (method != http::verb::get) return Error(http::status::method_not_allowed, "use GET on /api/ferry/nodes");
      if (!options_.nodes)
        return Error(http::status::not_found, "this node is not in a cluster (start it with ferry start --cluster)");
      absl::StatusOr<json> nodes = options_.nodes();
      if (!nodes.ok())
        return Error(http::status::service_unavailable,
                     StrCat("cannot read the cluster's nodes: ", Message(nodes.status())));
      return {http::status::ok, {{"nodes", *nodes}}};
    }
    if (path == "/api/ferry/reports") {
      if (method != http::verb::get) return Error(http::status::method_not_allowed, "use GET on /api/ferry/reports");
      if (!options_.reports)
        return Error(http::status::not_found, "this node is not in a cluster (start it with ferry start --cluster)");
      std::optional<json> reports = OnController<json>([this] { return options_.reports(); });
      if (!reports) return Error(http::status::service_unavailable, "the controller did not answer in time");
      return {http::status::ok, reports->is_null() ? json{{"fence", 0}, {"reports", json::array()}} : *reports};
    }
    static constexpr std::string_view kRollback = "/api/ferry/applications/";
    static constexpr std::string_view kNodes = "/api/ferry/nodes/";
    const bool node_action = path.rfind(kNodes, 0) == 0;
    const bool controller_endpoint = path == "/api/serve/applications/" || path == "/api/ferry/history" ||
                                     path == "/api/ferry/config" || path.rfind(kRollback, 0) == 0 || node_action;
    if (controller_endpoint && options_.leader_admin) {
      if (std::optional<std::string> leader = options_.leader_admin()) {
        // Forwarded once at most: a node that thinks the sender leads while the sender thinks it does not
        // (the leadership just moved) answers 503 rather than sending it back.
        if (req.find("x-ferry-forwarded") != req.end()) leader = std::string();
        return ToLeader(req, *leader);
      }
    }
    if (node_action) {
      std::string_view rest = path.substr(kNodes.size());
      const size_t slash = rest.find('/');
      if (slash == std::string_view::npos || rest.substr(slash) != "/drain" || slash == 0)
        return Error(http::status::not_found,
                     StrCat("no such endpoint: ", path, " (POST /api/ferry/nodes/NODE/drain)"));
      if (method != http::verb::post) return Error(http::status::method_not_allowed, "use POST to drain a node");
      if (!options_.drain)
        return Error(http::status::not_found, "this node is not in a cluster (start it with ferry start --cluster)");
      const std::string node(rest.substr(0, slash));
      absl::Status drained = options_.drain(node);
      if (absl::IsNotFound(drained)) return Error(http::status::not_found, Message(drained));
      if (!drained.ok()) return Error(http::status::service_unavailable, Message(drained));
      return {http::status::accepted, {{"draining", node}}};
    }
    if (path == "/api/serve/applications/") {
      if (method == http::verb::get) {
        // The snapshot is taken on the controller's thread; rendering happens here, off it.
        std::optional<controller::ControllerSnapshot> snapshot =
            OnController<controller::ControllerSnapshot>([this] { return controller_->Snapshot(); });
        if (!snapshot) return Error(http::status::service_unavailable, "the controller did not answer in time");
        return {http::status::ok, StatusJson(*snapshot)};
      }
      if (method == http::verb::put) return Deploy(req);
      if (method == http::verb::delete_) return Apply([this] { return controller_->DeleteAll(); }, "deleted");
      return Error(http::status::method_not_allowed, "use GET, PUT or DELETE on /api/serve/applications/");
    }
    if (path == "/metrics") {
      if (method != http::verb::get) return Error(http::status::method_not_allowed, "use GET on /metrics");
      if (!options_.metrics)
        return Error(http::status::not_found, "metrics are off: this node was started with --no-metrics");
      // The node's own series (proxy), then what the controller's state says (replicas, queues, scaling).
      std::optional<controller::ControllerSnapshot> snapshot =
          OnController<controller::ControllerSnapshot>([this] { return controller_->Snapshot(); });
      std::optional<std::string> state;
      if (snapshot) state = MetricsText(*snapshot);
      if (!state) return Error(http::status::service_unavailable, "the controller did not answer in time");
      Reply r;
      r.text = options_.metrics->Render() + *state;
      return r;
    }
    if (path == "/api/ferry/history" && method == http::verb::get)
      return Wrap(OnController<json>([this] { return controller_->HistoryJson(); }));
    if (path == "/api/ferry/config" && method == http::verb::get) {
      return Wrap(OnController<json>([this] {
        const auto& applied = controller_->applied_config();
        return applied ? config::ToJson(*applied) : json(nullptr);
      }));
    }
    if (path.rfind(kRollback, 0) == 0 && path.size() > kRollback.size() + 9 &&
        path.substr(path.size() - 9) == "/rollback") {
      if (method != http::verb::post) return Error(http::status::method_not_allowed, "use POST to roll back");
      std::string app(path.substr(kRollback.size(), path.size() - kRollback.size() - 9));
      return Apply([this, app] { return controller_->Rollback(app); }, "rolled back");
    }
    static constexpr std::string_view kCall = "/api/ferry/call/";
    if (path.rfind(kCall, 0) == 0) {
      if (method != http::verb::post) return Error(http::status::method_not_allowed, "use POST to call a deployment");
      std::string_view key = path.substr(kCall.size());
      const size_t slash = key.find('/');
      if (slash == 0 || slash == std::string_view::npos || slash + 1 == key.size() ||
          key.find('/', slash + 1) != std::string_view::npos)
        return Error(http::status::bad_request, "expected /api/ferry/call/{application}/{deployment}");
      return CallDeployment(req, key);
    }
    if (path == "/api/ferry/shutdown") {
      if (method != http::verb::post) return Error(http::status::method_not_allowed, "use POST to shut down");
      if (options_.on_shutdown) options_.on_shutdown();
      return {http::status::ok, {{"result", "shutting down"}}};
    }
    return Error(http::status::not_found, StrCat("no admin endpoint at ", path));
  }

  // A request for the controller on a node that does not lead the cluster: sent on to the leader's admin
  // API as it came (with its token), and its answer passed back.
  Reply ToLeader(const http::request<http::string_body>& req, const std::string& leader) {
    if (leader.empty())
      return Error(http::status::service_unavailable,
                   "no controller leads the cluster right now (an election is under way, or etcd is out of reach); "
                   "retry in a few seconds");
    absl::StatusOr<HttpEndpoint> endpoint = ParseHttpEndpoint(leader);
    if (!endpoint.ok())
      return Error(http::status::bad_gateway,
                   StrCat("the leader's admin URL ", leader, ": ", Message(endpoint.status())));
    HttpCall call;
    call.method = std::string(req.method_string());
    call.path = std::string(req.target());
    call.body = req.body();
    if (auto it = req.find(http::field::content_type); it != req.end()) call.content_type = std::string(it->value());
    for (const auto& field : req) {
      std::string name(field.name_string());
      for (char& ch : name) ch = static_cast<char>(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
      if (name == "authorization" || name.rfind("x-ferry-", 0) == 0)
        call.headers.emplace_back(name, std::string(field.value()));
    }
    call.headers.emplace_back("x-ferry-forwarded", "1");
    call.timeout = kControllerWait + std::chrono::seconds(5);
    absl::StatusOr<HttpResponse> answer = SendHttp(*endpoint, call);
    if (!answer.ok()) {
      // Its node may have just died: until its lease lapses and another node leads, nobody can answer.
      Reply r = Error(http::status::service_unavailable,
                      StrCat("the leading node's admin API (", leader, ") did not answer (", Message(answer.status()),
                             "); if that node is gone, another one leads within the lease TTL: retry"));
      r.headers.emplace_back("Retry-After", "1");
      return r;
    }
    Reply r;
    r.status = static_cast<http::status>(answer->status);
    r.text = std::move(answer->body);
    r.content_type = "application/json";
    r.headers.emplace_back("x-ferry-leader", leader);
    return r;
  }

  // A call from a driver script (ferry.serve's handles outside a replica), through the node's handle
  // client: as a deployment's call, with the request's x-ferry-* headers (method, arguments), its
  // content type and model id. The admin API's authentication is the caller's: loopback or the token.
  Reply CallDeployment(const http::request<http::string_body>& req, std::string_view key) {
    if (!options_.handles) return Error(http::status::not_found, "this node takes no calls from drivers");
    handle::CallRequest call;
    call.deployment_key = std::string(key);
    for (const auto& field : req) {
      std::string name(field.name_string());
      for (char& c : name) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
      std::string value(field.value());
      if (name == "x-ferry-method") {
        call.method_name = value;
      } else if (name == "x-ferry-timeout-s") {
        double s = std::strtod(value.c_str(), nullptr);
        if (s > 0) call.deadline = SteadyClock::now() + std::chrono::microseconds(static_cast<int64_t>(s * 1e6));
      } else if (name.rfind("x-ferry-", 0) == 0 || name == "content-type" || name == "serve_multiplexed_model_id") {
        call.headers.emplace_back(std::move(name), std::move(value));
      }
    }
    call.body = req.body();
    const bool wants_stream = req.find("x-ferry-stream") != req.end();
    auto driver = std::make_shared<DriverCall>();
    options_.handles->Want();
    driver->set_ref(options_.handles->Start(std::move(call), driver));
    if (wants_stream && driver->WaitForHead()) {
      Reply r;
      r.stream = std::move(driver);
      return r;
    }
    return driver->Whole();
  }

  // A streamed answer to a driver, chunked as the callee sends it. False when the connection is done
  // with: the client went away (the call is cancelled), or the stream broke (cut short without its last
  // chunk, which the driver reads as the stream breaking).
  bool WriteStream(tcp::socket& socket, DriverCall& call, bool keep_alive) {
    Reply head = call.Head(/*so_far=*/true);
    http::response<http::empty_body> res{head.status, 11};
    res.set(http::field::content_type, head.content_type);
    for (const auto& [k, v] : head.headers) res.insert(k, v);
    res.chunked(true);
    res.keep_alive(keep_alive);
    http::response_serializer<http::empty_body> serializer{res};
    boost::system::error_code ec;
    http::write_header(socket, serializer, ec);
    std::string chunk;
    while (!ec && call.Next(&chunk)) asio::write(socket, http::make_chunk(asio::buffer(chunk)), ec);
    if (ec) {
      call.ref().Cancel();
      return false;
    }
    std::string error;
    if (!call.ended_ok(&error)) {
      FERRY_LOG(kWarning, "admin", "a driver's stream broke: ", error);
      return false;
    }
    asio::write(socket, http::make_chunk_last(), ec);
    return !ec && keep_alive;
  }

  Reply Wrap(std::optional<json> body) {
    if (!body) return Error(http::status::service_unavailable, "the controller did not answer in time");
    return {http::status::ok, std::move(*body)};
  }

  Reply Apply(std::function<absl::Status()> work, std::string_view done) {
    std::optional<absl::Status> s = OnController<absl::Status>(std::move(work));
    if (!s) return Error(http::status::service_unavailable, "the controller did not answer in time");
    if (s->ok()) return {http::status::ok, {{"result", done}}};
    http::status code = absl::IsNotFound(*s)             ? http::status::not_found
                        : absl::IsFailedPrecondition(*s) ? http::status::conflict
                        : absl::IsInvalidArgument(*s)    ? http::status::bad_request
                                                         : http::status::service_unavailable;
    return Error(code, Message(*s));
  }

  Reply Deploy(const http::request<http::string_body>& req) {
    std::string base_dir = "/";
    auto dir = req.find("x-ferry-config-dir");
    if (dir != req.end() && !dir->value().empty() && dir->value()[0] == '/') base_dir = std::string(dir->value());
    std::string source = "request body";
    auto name = req.find("x-ferry-config-file");
    if (name != req.end() && !name->value().empty()) source = std::string(name->value());
    absl::StatusOr<config::Config> parsed = config::ParseConfig(req.body(), source, base_dir, options_.hooks);
    if (!parsed.ok()) {
      return {http::status::bad_request,
              {{"error", "invalid config: nothing was changed"}, {"errors", Lines(Message(parsed.status()))}}};
    }
    config::Config config = std::move(*parsed);
    // Node-level sections are the node's, set when it starts: the file a node was started with deploys
    // again as it is, and one that asks for other settings deploys its applications with a warning (as
    // Ray Serve logs one for http_options), never a refusal.
    std::vector<std::string> warnings = config.warnings;
    if (config.has_http_options && config::ToJson(config.http_options) != config::ToJson(options_.node_http)) {
      warnings.push_back(StrCat("http_options: the node serves with ", config::ToJson(options_.node_http).dump(),
                                "; http_options are set when the node starts, so the config's are ignored"));
    }
    if (config.has_admin && !SameAdmin(config.admin, options_.node_admin)) {
      warnings.push_back(StrCat("admin: the admin API listens on ", options_.node_admin.host, ":",
                                options_.node_admin.port,
                                " with the token it started with; admin is set when the node starts, so the "
                                "config's is ignored"));
    }
    for (const std::string& w : warnings) FERRY_LOG(kWarning, "admin", "deploy: ", w);
    config.http_options = options_.node_http;
    config.admin = options_.node_admin;
    Reply reply = Apply([this, config] { return controller_->Apply(config); }, "deployed");
    if (reply.status == http::status::ok && !warnings.empty()) reply.body["warnings"] = warnings;
    return reply;
  }

  static bool SameAdmin(const config::AdminOptions& a, const config::AdminOptions& b) {
    return a.host == b.host && a.port == b.port && a.auth_token == b.auth_token &&
           a.auth_token_file == b.auth_token_file;
  }

  AdminServerOptions options_;
  asio::io_context& control_io_;
  controller::Controller* controller_;
  asio::io_context io_{1};
  tcp::acceptor acceptor_{io_};
  std::thread thread_;
  Mutex mu_;
  CondVar idle_;
  std::set<int> open_ ABSL_GUARDED_BY(mu_);  // sockets being served
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

absl::StatusOr<std::unique_ptr<AdminServer>> AdminServer::Create(AdminServerOptions options,
                                                                 asio::io_context& control_io,
                                                                 controller::Controller* controller) {
  auto impl = std::make_unique<Impl>(std::move(options), control_io, controller);
  absl::Status s = impl->Listen();
  if (!s.ok()) return s;
  return std::unique_ptr<AdminServer>(new AdminServer(std::move(impl)));
}

AdminServer::AdminServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AdminServer::~AdminServer() { impl_->Stop(); }
uint16_t AdminServer::port() const { return impl_->port(); }
void AdminServer::Start() { impl_->Start(); }
void AdminServer::Stop() { impl_->Stop(); }

}  // namespace ferry::admin
