#include "node/node_agent.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/read.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "common/common.h"
#include "transport/connection.h"

namespace ferry::node {

namespace asio = boost::asio;

// The agent's control connection to one ready replica: health checks and reconfigures, each answered by
// its reply frame with the same stream id.
class ControlChannel : public transport::FrameConnection::Handler, public std::enable_shared_from_this<ControlChannel> {
 public:
  ControlChannel(asio::io_context& io, const std::string& socket_path)
      : connection_(std::make_shared<transport::FrameConnection>(io.get_executor(), socket_path, this)) {}
  ~ControlChannel() override { Close(); }

  void Start() {
    transport::AppendHello(connection_->output(), 0, {transport::kProtocolVersion, "node-agent"});
    connection_->Start();
  }
  void Close() {
    connection_->Detach();
    FailAll(absl::UnavailableError("control connection closed"));
  }
  // The reply's payload reaches `reply` (status and stats replies); errors reach it with an empty payload.
  using Reply = std::function<void(const absl::Status&, std::string_view payload)>;

  void Call(transport::FrameKind kind, std::string_view json, ReplicaLauncher::Done done) {
    CallForReply(kind, json, [done = std::move(done)](const absl::Status& s, std::string_view payload) {
      if (!s.ok()) return done(s);
      transport::StatusReply reply;
      absl::Status decoded = transport::DecodeStatusReply(payload, &reply);
      if (decoded.ok() && !reply.ok) decoded = absl::UnavailableError(std::string(reply.message));
      done(decoded);
    });
  }

  void CallForReply(transport::FrameKind kind, std::string_view json, Reply done) {
    if (connection_->closed()) {
      done(absl::UnavailableError("control connection to the replica is closed"), {});
      return;
    }
    uint64_t id = next_id_++;
    pending_[id] = std::move(done);
    if (kind == transport::FrameKind::kReconfigure) {
      transport::AppendReconfigure(connection_->output(), id, json);
    } else {
      transport::AppendEmpty(connection_->output(), kind, id);
    }
    connection_->Flush();
  }

  void OnFrame(const transport::FrameHeader& header, std::string_view payload) override {
    if (header.kind != transport::FrameKind::kHealthReply && header.kind != transport::FrameKind::kReconfigureReply &&
        header.kind != transport::FrameKind::kStatsReply)
      return;
    auto it = pending_.find(header.stream_id);
    if (it == pending_.end()) return;
    Reply done = std::move(it->second);
    pending_.erase(it);
    done(absl::OkStatus(), payload);
  }
  void OnClosed(const absl::Status& why) override {
    FailAll(absl::UnavailableError(StrCat("control connection lost: ", Message(why))));
  }

 private:
  void FailAll(const absl::Status& why) {
    auto pending = std::move(pending_);
    pending_.clear();
    for (auto& [id, done] : pending) done(why, {});
  }
  std::shared_ptr<transport::FrameConnection> connection_;
  std::map<uint64_t, Reply> pending_;
  uint64_t next_id_ = 1;
};

absl::StatusOr<std::unique_ptr<NodeAgent>> NodeAgent::Create(asio::io_context& io, std::string ferry_binary,
                                                             std::string run_dir, ReplicaListener* listener) {
  std::error_code ec;
  std::filesystem::create_directories(run_dir, ec);
  if (ec) return absl::UnavailableError(ferry::StrCat("cannot create ", run_dir, ": ", ec.message()));
  auto agent = std::unique_ptr<NodeAgent>(new NodeAgent(io, std::move(ferry_binary), std::move(run_dir), listener));
  agent->WatchChildren();
  return agent;
}

NodeAgent::NodeAgent(asio::io_context& io, std::string ferry_binary, std::string run_dir, ReplicaListener* listener)
    : io_(io),
      ferry_binary_(std::move(ferry_binary)),
      run_dir_(std::move(run_dir)),
      listener_(listener),
      sigchld_(io, SIGCHLD) {}

NodeAgent::~NodeAgent() { KillAll(); }

absl::Status NodeAgent::StartReplica(const replica::ReplicaSpec& spec) {
  auto p = std::make_unique<Process>();
  p->replica_id = spec.replica_id;
  // Socket paths are limited to 108 bytes: name files by a short id, not the deployment's name.
  std::string file_id = NewShortId(12);
  p->socket_path = ferry::StrCat(run_dir_, "/r-", file_id, ".sock");
  p->spec_path = ferry::StrCat(run_dir_, "/r-", file_id, ".json");
  if (p->socket_path.size() >= 100)
    return absl::InvalidArgumentError(ferry::StrCat("run directory path too long: ", run_dir_));
  {
    std::ofstream out(p->spec_path);
    out << spec.ToJson().dump();
    if (!out) return absl::UnavailableError(ferry::StrCat("cannot write ", p->spec_path));
  }
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return absl::UnavailableError(ferry::StrCat("pipe: ", std::strerror(errno)));
  // Everything the child needs is prepared before fork: after it, only async-signal-safe calls.
  std::string status_fd = std::to_string(fds[1]);
  static const char* kLevels[] = {"debug", "info", "warning", "error"};
  std::vector<std::string> args = {
      ferry_binary_,  "replica",     "--spec",  p->spec_path,  "--socket",
      p->socket_path, "--status-fd", status_fd, "--log-level", kLevels[static_cast<int>(Log::level())]};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return absl::UnavailableError(ferry::StrCat("fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, nullptr);
    fcntl(fds[1], F_SETFD, 0);  // the status pipe's write end survives exec
    CloseInheritedDescriptors(fds[1]);  // the node's listeners and connections do not
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(fds[1]);
  p->pid = pid;
  p->status_pipe = std::make_unique<asio::posix::stream_descriptor>(io_, fds[0]);
  FERRY_LOG(kInfo, "node", "starting replica ", spec.replica_id, " (pid ", pid, ")");
  std::string id = spec.replica_id;
  processes_[id] = std::move(p);
  ReadStatus(id);
  return absl::OkStatus();
}

void NodeAgent::ReadStatus(const std::string& replica_id) {
  auto it = processes_.find(replica_id);
  if (it == processes_.end()) return;
  Process* p = it->second.get();
  auto chunk = std::make_shared<std::array<char, 4096>>();
  p->status_pipe->async_read_some(
      asio::buffer(*chunk), [this, replica_id, chunk](const boost::system::error_code& ec, size_t n) {
        auto it = processes_.find(replica_id);
        if (it == processes_.end()) return;
        Process* p = it->second.get();
        if (ec) {  // EOF: the replica closed the pipe after reporting, or died
          p->status_pipe.reset();
          return;
        }
        p->status_buffer.append(chunk->data(), n);
        size_t nl = p->status_buffer.find('\n');
        if (nl == std::string::npos) {
          ReadStatus(replica_id);
          return;
        }
        nlohmann::json line = nlohmann::json::parse(p->status_buffer.substr(0, nl), nullptr, false);
        p->status_buffer.clear();
        if (line.is_object() && line.value("ready", false)) {
          p->ready = true;
          p->control = std::make_shared<ControlChannel>(io_, p->socket_path);
          p->control->Start();
          listener_->OnReplicaReady(replica_id, p->socket_path, p->pid);
        } else if (line.is_object() && line.contains("error") && line["error"].is_string()) {
          p->start_error = line["error"].get<std::string>();
        }
        ReadStatus(replica_id);
      });
}

void NodeAgent::DrainStatus(Process& p) {
  // The child is gone, so whatever it wrote is in the pipe: read it now rather than race the async read.
  if (!p.status_pipe || !p.start_error.empty()) return;
  boost::system::error_code ec;
  p.status_pipe->non_blocking(true, ec);
  char chunk[4096];
  for (;;) {
    size_t n = p.status_pipe->read_some(asio::buffer(chunk), ec);
    if (ec || n == 0) break;
    p.status_buffer.append(chunk, n);
  }
  size_t nl = p.status_buffer.find('\n');
  if (nl == std::string::npos) return;
  nlohmann::json line = nlohmann::json::parse(p.status_buffer.substr(0, nl), nullptr, false);
  if (line.is_object() && line.contains("error") && line["error"].is_string())
    p.start_error = line["error"].get<std::string>();
}

void NodeAgent::WatchChildren() {
  sigchld_.async_wait([this](const boost::system::error_code& ec, int) {
    if (ec) return;
    Reap();
    WatchChildren();
  });
}

void NodeAgent::Reap() {
  for (;;) {
    int status = 0;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) return;
    for (auto it = processes_.begin(); it != processes_.end(); ++it) {
      Process* p = it->second.get();
      if (p->pid != pid) continue;
      DrainStatus(*p);
      std::string message;
      if (!p->start_error.empty())
        message = p->start_error;
      else if (WIFSIGNALED(status))
        message = ferry::StrCat("killed by signal ", WTERMSIG(status), " (", strsignal(WTERMSIG(status)), ")");
      else
        message = ferry::StrCat("exited with code ", WEXITSTATUS(status));
      if (!p->ready && p->start_error.empty() && WIFEXITED(status) && WEXITSTATUS(status) == 127)
        message = ferry::StrCat("cannot execute ", ferry_binary_);
      bool was_ready = p->ready;
      std::string id = p->replica_id;
      if (p->control) p->control->Close();
      LogLevel level = p->stop_requested ? LogLevel::kInfo : LogLevel::kWarning;
      std::error_code ignored;
      std::filesystem::remove(p->socket_path, ignored);
      std::filesystem::remove(p->spec_path, ignored);
      processes_.erase(it);
      Log::Write(level, "node", ferry::StrCat("replica ", id, " (pid ", pid, ") ", message));
      listener_->OnReplicaExited(id, was_ready, message);
      break;
    }
  }
}

void NodeAgent::StopReplica(const std::string& replica_id, std::chrono::milliseconds timeout) {
  auto it = processes_.find(replica_id);
  if (it == processes_.end()) return;
  Process* p = it->second.get();
  p->stop_requested = true;
  ::kill(p->pid, SIGTERM);
  p->kill_timer = std::make_unique<asio::steady_timer>(io_, timeout);
  pid_t pid = p->pid;
  p->kill_timer->async_wait([this, replica_id, pid](const boost::system::error_code& ec) {
    if (ec) return;
    auto it = processes_.find(replica_id);
    if (it == processes_.end() || it->second->pid != pid) return;
    FERRY_LOG(kWarning, "node", "replica ", replica_id, " did not stop in time; killing it");
    ::kill(pid, SIGKILL);
  });
}

ControlChannel* NodeAgent::ControlOf(const std::string& replica_id) {
  auto it = processes_.find(replica_id);
  return it == processes_.end() ? nullptr : it->second->control.get();
}

void NodeAgent::CheckHealth(const std::string& replica_id, Done done) {
  ControlChannel* control = ControlOf(replica_id);
  if (!control) return done(absl::NotFoundError(StrCat("replica ", replica_id, " is not running")));
  control->Call(transport::FrameKind::kHealth, {}, std::move(done));
}

void NodeAgent::Reconfigure(const std::string& replica_id, const nlohmann::json& update, Done done) {
  ControlChannel* control = ControlOf(replica_id);
  if (!control) return done(absl::NotFoundError(StrCat("replica ", replica_id, " is not running")));
  control->Call(transport::FrameKind::kReconfigure, update.dump(), std::move(done));
}

void NodeAgent::GetStats(const std::string& replica_id, StatsDone done) {
  ControlChannel* control = ControlOf(replica_id);
  if (!control) return done(absl::NotFoundError(StrCat("replica ", replica_id, " is not running")));
  control->CallForReply(transport::FrameKind::kStats, {},
                        [done = std::move(done)](const absl::Status& s, std::string_view payload) {
                          if (!s.ok()) return done(s);
                          transport::StatsReply reply;
                          absl::Status decoded = transport::DecodeStatsReply(payload, &reply);
                          if (!decoded.ok()) return done(decoded);
                          done(std::move(reply));
                        });
}

void NodeAgent::KillAll() {
  for (auto& [id, p] : processes_) {
    if (p->control) p->control->Close();
    ::kill(p->pid, SIGKILL);
  }
  for (auto& [id, p] : processes_) {
    int status;
    waitpid(p->pid, &status, 0);
    std::error_code ignored;
    std::filesystem::remove(p->socket_path, ignored);
    std::filesystem::remove(p->spec_path, ignored);
  }
  processes_.clear();
}

}  // namespace ferry::node
