#include "replica/replica.h"

#include <fcntl.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "common/common.h"
#include "replica/internal/deployment_host.h"
#include "transport/connection.h"

namespace ferry::replica {

namespace asio = boost::asio;
using transport::FrameConnection;
using transport::FrameHeader;
using transport::FrameKind;

nlohmann::json ReplicaSpec::ToJson() const {
  return {{"replica_id", replica_id},   {"application", application}, {"deployment", deployment},
          {"import_path", import_path}, {"builtin", builtin},         {"plugin_path", plugin_path},
          {"symbol", symbol},           {"args", args},               {"user_config", user_config},
          {"max_ongoing_requests", max_ongoing_requests},             {"num_cpus", num_cpus},
          {"graceful_shutdown_timeout_s", graceful_shutdown_timeout_s}};
}

absl::StatusOr<ReplicaSpec> ReplicaSpec::FromJson(const nlohmann::json& j) {
  try {
    ReplicaSpec s;
    s.replica_id = j.at("replica_id").get<std::string>();
    s.application = j.at("application").get<std::string>();
    s.deployment = j.at("deployment").get<std::string>();
    s.import_path = j.at("import_path").get<std::string>();
    s.builtin = j.at("builtin").get<bool>();
    s.plugin_path = j.at("plugin_path").get<std::string>();
    s.symbol = j.at("symbol").get<std::string>();
    s.args = j.at("args");
    s.user_config = j.at("user_config");
    s.max_ongoing_requests = j.at("max_ongoing_requests").get<int>();
    s.num_cpus = j.at("num_cpus").get<double>();
    s.graceful_shutdown_timeout_s = j.at("graceful_shutdown_timeout_s").get<double>();
    return s;
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(ferry::StrCat("bad replica spec: ", e.what()));
  }
}

namespace {

// Runs closures on a fixed set of threads, in FIFO order. Thread-safe.
class WorkerPool {
 public:
  explicit WorkerPool(int threads) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Loop(); });
  }
  ~WorkerPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  void Submit(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      tasks_.push_back(std::move(task));
    }
    cv_.notify_one();
  }

 private:
  void Loop() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
        if (tasks_.empty()) return;
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

// One request being handled. The payload owns the bytes the decoded message points into.
struct Task {
  std::string payload;
  transport::RequestMessage request;
  std::atomic<bool> cancelled{false};
};

class ReplicaServer;

// One client connection (a proxy thread or the node agent). Lives on the I/O thread.
class ClientSession : public FrameConnection::Handler, public std::enable_shared_from_this<ClientSession> {
 public:
  ClientSession(ReplicaServer& server, FrameConnection::Socket socket);
  void Start() {
    keep_alive_ = shared_from_this();
    connection_->Start();
  }
  void OnFrame(const FrameHeader& header, std::string_view payload) override;
  void OnClosed(const absl::Status& why) override;
  // From a worker: the encoded response frame of `stream_id`.
  void Complete(uint64_t stream_id, std::string frame);

 private:
  void HandleRequest(uint64_t stream_id, std::string_view payload);
  ReplicaServer& server_;
  std::shared_ptr<FrameConnection> connection_;
  std::unordered_map<uint64_t, std::shared_ptr<Task>> tasks_;
  std::shared_ptr<ClientSession> keep_alive_;  // the session owns itself until its connection closes
};

class ReplicaServer {
 public:
  ReplicaServer(const ReplicaSpec& spec, std::unique_ptr<DeploymentHost> host)
      : spec_(spec),
        host_(std::move(host)),
        acceptor_(io_),
        signals_(io_, SIGTERM, SIGINT),
        drain_timer_(io_),
        workers_(std::clamp(spec.max_ongoing_requests, 1, 256)),
        control_(1) {}

  absl::Status Listen(const std::string& path) {
    ::unlink(path.c_str());
    boost::system::error_code ec;
    acceptor_.open(asio::local::stream_protocol(), ec);
    if (!ec) acceptor_.bind(asio::local::stream_protocol::endpoint(path), ec);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return absl::UnavailableError(ferry::StrCat("listen on ", path, ": ", ec.message()));
    socket_path_ = path;
    return absl::OkStatus();
  }

  void Run() {
    DoAccept();
    signals_.async_wait([this](const boost::system::error_code& ec, int signo) {
      if (ec) return;
      FERRY_LOG(kInfo, "replica", "signal ", signo, ": draining ", ongoing_.load(), " ongoing requests");
      boost::system::error_code ignored;
      acceptor_.close(ignored);
      drain_deadline_ = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(spec_.graceful_shutdown_timeout_s * 1000));
      WaitDrained();
    });
    io_.run();
    ::unlink(socket_path_.c_str());
  }

  asio::io_context& io() { return io_; }
  DeploymentHost& host() { return *host_; }
  const ReplicaSpec& spec() const { return spec_; }
  WorkerPool& workers() { return workers_; }
  WorkerPool& control() { return control_; }
  std::atomic<uint32_t>& ongoing() { return ongoing_; }
  std::atomic<uint64_t>& total() { return total_; }

 private:
  void DoAccept() {
    acceptor_.async_accept([this](const boost::system::error_code& ec, FrameConnection::Socket socket) {
      if (ec) return;  // closed while draining
      auto session = std::make_shared<ClientSession>(*this, std::move(socket));
      session->Start();
      DoAccept();
    });
  }

  void WaitDrained() {
    if (ongoing_.load() == 0 || Clock::now() >= drain_deadline_) {
      if (ongoing_.load() > 0) FERRY_LOG(kWarning, "replica", "graceful shutdown timeout with ", ongoing_.load(), " requests ongoing");
      io_.stop();
      return;
    }
    drain_timer_.expires_after(std::chrono::milliseconds(20));
    drain_timer_.async_wait([this](const boost::system::error_code&) { WaitDrained(); });
  }

  const ReplicaSpec& spec_;
  std::unique_ptr<DeploymentHost> host_;
  asio::io_context io_{1};
  asio::local::stream_protocol::acceptor acceptor_;
  asio::signal_set signals_;
  asio::steady_timer drain_timer_;
  Clock::time_point drain_deadline_;
  std::string socket_path_;
  std::atomic<uint32_t> ongoing_{0};
  std::atomic<uint64_t> total_{0};
  WorkerPool workers_;
  WorkerPool control_;
};

ClientSession::ClientSession(ReplicaServer& server, FrameConnection::Socket socket)
    : server_(server), connection_(std::make_shared<FrameConnection>(std::move(socket), this)) {}

void ClientSession::OnClosed(const absl::Status& why) {
  std::shared_ptr<ClientSession> self = std::move(keep_alive_);
  // The client is gone: every request it sent is cancelled.
  for (auto& [id, task] : tasks_) task->cancelled.store(true);
  tasks_.clear();
  FERRY_LOG(kDebug, "replica", "client connection closed: ", why.message());
  connection_->Detach();
}

void ClientSession::Complete(uint64_t stream_id, std::string frame) {
  tasks_.erase(stream_id);
  if (connection_->closed()) return;
  connection_->output().append(frame);
  connection_->Flush();
}

void ClientSession::OnFrame(const FrameHeader& header, std::string_view payload) {
  switch (header.kind) {
    case FrameKind::kRequest:
      HandleRequest(header.stream_id, payload);
      return;
    case FrameKind::kCancel: {
      auto it = tasks_.find(header.stream_id);
      if (it != tasks_.end()) it->second->cancelled.store(true);
      return;
    }
    case FrameKind::kHello: {
      transport::Hello hello;
      absl::Status s = transport::DecodeHello(payload, &hello);
      if (!s.ok() || hello.version != transport::kProtocolVersion) {
        connection_->Close(s.ok() ? absl::FailedPreconditionError("protocol version mismatch") : s);
        return;
      }
      transport::AppendHelloAck(connection_->output(), header.stream_id,
                                {transport::kProtocolVersion, server_.spec().replica_id, server_.spec().deployment});
      return;
    }
    case FrameKind::kStats:
      transport::AppendStatsReply(connection_->output(), header.stream_id,
                                  {server_.ongoing().load(), 0, server_.total().load()});
      return;
    case FrameKind::kHealth:
    case FrameKind::kReconfigure: {
      std::string body(payload);
      bool health = header.kind == FrameKind::kHealth;
      server_.control().Submit([self = shared_from_this(), body = std::move(body), health, id = header.stream_id] {
        absl::Status s;
        if (health) {
          s = self->server_.host().CheckHealth();
        } else {
          std::string_view config;
          s = transport::DecodeReconfigure(body, &config);
          if (s.ok()) s = self->server_.host().Reconfigure(std::string(config));
        }
        std::string frame;
        transport::AppendStatusReply(frame, health ? FrameKind::kHealthReply : FrameKind::kReconfigureReply, id,
                                     {s.ok(), Message(s)});
        asio::post(self->server_.io(), [self, id, frame = std::move(frame)]() mutable {
          if (self->connection_->closed()) return;
          self->connection_->output().append(frame);
          self->connection_->Flush();
        });
      });
      return;
    }
    default:
      connection_->Close(absl::InvalidArgumentError(
          ferry::StrCat("unexpected ", transport::FrameKindName(header.kind), " frame from a client")));
  }
}

void ClientSession::HandleRequest(uint64_t stream_id, std::string_view payload) {
  auto task = std::make_shared<Task>();
  task->payload.assign(payload);
  absl::Status s = transport::DecodeRequest(task->payload, &task->request);
  if (!s.ok()) {
    connection_->Close(s);
    return;
  }
  tasks_[stream_id] = task;
  server_.ongoing().fetch_add(1);
  server_.workers().Submit([self = shared_from_this(), task, stream_id] {
    FerryResponseSink response;
    if (task->cancelled.load()) {
      response.status = 499;
      response.body = R"({"error": "request cancelled before it started"})";
    } else {
      self->server_.host().Handle(task->request, task->cancelled, &response);
    }
    transport::HeaderList headers;
    headers.reserve(response.headers.size());
    for (const auto& [k, v] : response.headers) headers.emplace_back(k, v);
    std::string frame;
    transport::AppendResponse(frame, stream_id, {static_cast<uint16_t>(response.status), headers, response.body});
    self->server_.ongoing().fetch_sub(1);
    self->server_.total().fetch_add(1);
    asio::post(self->server_.io(), [self, stream_id, frame = std::move(frame)]() mutable {
      self->Complete(stream_id, std::move(frame));
    });
  });
}

void WriteStatus(int fd, const nlohmann::json& line) {
  if (fd < 0) return;
  std::string text = line.dump() + "\n";
  ssize_t n = ::write(fd, text.data(), text.size());
  (void)n;
}

}  // namespace

int RunReplica(const ReplicaOptions& options) {
  // Die with the node: a replica never outlives the process that started it.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() == 1) return 1;
  std::ifstream in(options.spec_path);
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json spec_json = nlohmann::json::parse(text.str(), nullptr, false);
  absl::StatusOr<ReplicaSpec> spec = ReplicaSpec::FromJson(spec_json);
  if (!spec.ok()) {
    WriteStatus(options.status_fd, {{"error", std::string(spec.status().message())}});
    return 2;
  }
  Log::SetProcessTag(spec->replica_id);
  absl::StatusOr<std::unique_ptr<DeploymentHost>> host = DeploymentHost::Create(*spec);
  if (!host.ok()) {
    FERRY_LOG(kError, "replica", host.status().message());
    WriteStatus(options.status_fd, {{"error", std::string(host.status().message())}});
    return 1;
  }
  ReplicaServer server(*spec, std::move(*host));
  absl::Status listening = server.Listen(options.socket_path);
  if (!listening.ok()) {
    WriteStatus(options.status_fd, {{"error", std::string(listening.message())}});
    return 1;
  }
  WriteStatus(options.status_fd, {{"ready", true}, {"pid", getpid()}});
  if (options.status_fd >= 0) ::close(options.status_fd);
  FERRY_LOG(kInfo, "replica", "serving ", spec->deployment, " on ", options.socket_path);
  server.Run();
  FERRY_LOG(kInfo, "replica", "stopped");
  return 0;
}

}  // namespace ferry::replica
