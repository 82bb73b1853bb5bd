#include "node/node_agent.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <boost/asio/read.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "common/common.h"
#include "common/unique_fd.h"
#include "endpoints/wire.h"
#include "node/control_channel.h"
#include "transport/connection.h"

namespace ferry::node {

namespace asio = boost::asio;

// How a replica's printed lines are logged: its encoding (which a reconfigure may change), TEXT tag and
// JSON fields.
struct ReplicaOutputStyle {
  LogEncoding encoding = LogEncoding::kText;
  std::string tag;
  std::vector<std::pair<std::string, std::string>> fields;
};

// Reads one of a replica's output pipes until EOF (every writer gone: the replica and anything it
// started) and logs each line as the replica's. It outlives the replica: what a crashing replica wrote
// last is still in the pipe and still logged. Stdout lines are INFO, stderr lines WARNING; neither is
// filtered by log_level, which governs log calls, not what a process prints.
class ReplicaOutput : public std::enable_shared_from_this<ReplicaOutput> {
 public:
  static constexpr size_t kMaxLine = 16 * 1024;  // longer lines are logged in pieces of this size

  ReplicaOutput(asio::io_context& io, int fd, std::string_view stream, std::shared_ptr<ReplicaOutputStyle> style)
      : pipe_(io, fd),
        stream_(stream),
        level_(stream == "stdout" ? LogLevel::kInfo : LogLevel::kWarning),
        style_(std::move(style)) {}

  void Start() { Read(); }

 private:
  void Read() {
    pipe_.async_read_some(asio::buffer(chunk_),
                          [self = shared_from_this()](const boost::system::error_code& ec, size_t n) {
                            self->buffer_.append(self->chunk_.data(), n);
                            self->LogLines(/*eof=*/static_cast<bool>(ec));
                            if (!ec) self->Read();
                          });
  }

  // Logs the complete lines in the buffer (and, at EOF, what is left), in one write. Blank lines are left out.
  void LogLines(bool eof) {
    std::string out;
    size_t start = 0;
    while (start < buffer_.size()) {
      size_t nl = buffer_.find('\n', start), end, next;
      if (nl != std::string::npos && nl - start <= kMaxLine) {
        end = nl;
        next = nl + 1;
      } else if (buffer_.size() - start >= kMaxLine) {
        end = next = start + kMaxLine;
      } else if (eof) {
        end = next = buffer_.size();
      } else {
        break;
      }
      std::string_view line(buffer_.data() + start, end - start);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (!line.empty()) Log::FormatAs(style_->encoding, style_->tag, style_->fields, level_, stream_, line, {}, &out);
      start = next;
    }
    buffer_.erase(0, start);
    if (!out.empty()) Log::WriteLines(out);
  }

  asio::posix::stream_descriptor pipe_;
  std::string stream_;
  LogLevel level_;
  std::shared_ptr<ReplicaOutputStyle> style_;  // shared by a replica's two streams; a reconfigure changes its encoding
  std::array<char, 8192> chunk_;
  std::string buffer_;
};

absl::StatusOr<std::unique_ptr<NodeAgent>> NodeAgent::Create(asio::io_context& io, std::string ferry_binary,
                                                             std::string run_dir, ReplicaListener* listener,
                                                             endpoints::Publisher* publisher) {
  std::error_code ec;
  std::filesystem::create_directories(run_dir, ec);
  if (ec) return absl::UnavailableError(ferry::StrCat("cannot create ", run_dir, ": ", ec.message()));
  auto agent = std::unique_ptr<NodeAgent>(new NodeAgent(io, std::move(ferry_binary), std::move(run_dir), listener));
  agent->publisher_ = publisher;
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

absl::Status NodeAgent::StartReplica(const spec::ReplicaSpec& spec) {
  auto p = std::make_unique<Process>();
  p->replica_id = spec.replica_id;
  // Socket paths are limited to 108 bytes: name files by a short id, not the deployment's name.
  std::string file_id = NewShortId(12);
  p->socket_path = ferry::StrCat(run_dir_, "/r-", file_id, ".sock");
  p->spec_path = ferry::StrCat(run_dir_, "/r-", file_id, ".json");
  if (p->socket_path.size() >= 100)
    return absl::InvalidArgumentError(ferry::StrCat("run directory path too long: ", run_dir_));
  const LogEncoding encoding = spec.logging.encoding;
  {
    std::ofstream out(p->spec_path);
    out << spec::ToJson(spec).dump();
    if (!out) return absl::UnavailableError(ferry::StrCat("cannot write ", p->spec_path));
  }
  // The status pipe, and the replica's standard output and error.
  Pipe status = Pipe::Make(), out = Pipe::Make(), err = Pipe::Make();
  if (!status.ok || !out.ok || !err.ok) return absl::UnavailableError(ferry::StrCat("pipe: ", std::strerror(errno)));
  // In the child: fd 1 and 2 the output pipes, 3 the status pipe, 4 the node's stderr (its log lines).
  static const char* kLevels[] = {"debug", "info", "warning", "error"};
  std::vector<std::string> args = {
      ferry_binary_, "replica", "--spec",   p->spec_path, "--socket",    p->socket_path,
      "--status-fd", "3",       "--log-fd", "4",          "--log-level", kLevels[static_cast<int>(Log::level())]};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) return absl::UnavailableError(ferry::StrCat("fork: ", std::strerror(errno)));
  if (pid == 0) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, nullptr);
    // Out of the way of 0-4 first, then into place (dup2 clears close-on-exec on the copies).
    const int status_w = fcntl(status.write.get(), F_DUPFD_CLOEXEC, 10);
    const int log_w = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 10);
    const int out_w = fcntl(out.write.get(), F_DUPFD_CLOEXEC, 10), err_w = fcntl(err.write.get(), F_DUPFD_CLOEXEC, 10);
    if (status_w < 0 || log_w < 0 || out_w < 0 || err_w < 0) _exit(126);
    if (dup2(out_w, STDOUT_FILENO) < 0 || dup2(err_w, STDERR_FILENO) < 0 || dup2(status_w, 3) < 0 || dup2(log_w, 4) < 0)
      _exit(126);
    CloseDescriptorsFrom(5);  // nothing else of the node's: its listeners, connections, pipes
    execv(argv[0], argv.data());
    _exit(127);
  }
  status.write.reset();  // the child's ends: this process keeps only the read ends
  out.write.reset();
  err.write.reset();
  auto style = std::make_shared<ReplicaOutputStyle>();
  style->encoding = encoding;
  style->tag = spec.replica_id;
  style->fields = {{"application", spec.application}, {"deployment", spec.deployment}, {"replica", spec.replica_id}};
  p->output_style = style;
  std::make_shared<ReplicaOutput>(io_, out.read.release(), "stdout", style)->Start();
  std::make_shared<ReplicaOutput>(io_, err.read.release(), "stderr", style)->Start();
  p->pid = pid;
  p->status_pipe = std::make_unique<asio::posix::stream_descriptor>(io_, status.read.release());
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
          p->control = std::make_shared<ControlChannel>(io_, p->socket_path, publisher_);
          p->control->Start();
          const std::string tcp = line.contains("tcp_address") && line["tcp_address"].is_string()
                                      ? line["tcp_address"].get<std::string>()
                                      : std::string();
          listener_->OnReplicaReady(replica_id, p->socket_path, tcp, p->pid);
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
  // Only its own replicas: other children of this process (the import of a Python application, a plugin
  // check) are waited for by whoever started them, who needs their exit status.
  std::vector<std::pair<pid_t, int>> exited;
  for (const auto& [id, p] : processes_) {
    int status = 0;
    if (waitpid(p->pid, &status, WNOHANG) == p->pid) exited.emplace_back(p->pid, status);
  }
  for (const auto& [pid, status] : exited) {
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

void NodeAgent::Reconfigure(const std::string& replica_id, const spec::ReplicaUpdate& update, Done done) {
  ControlChannel* control = ControlOf(replica_id);
  if (!control) return done(absl::NotFoundError(StrCat("replica ", replica_id, " is not running")));
  if (update.logging)  // what it prints follows its log lines
    processes_.at(replica_id)->output_style->encoding = update.logging->encoding;
  control->Call(transport::FrameKind::kReconfigure, spec::ToJson(update).dump(), std::move(done));
}

void NodeAgent::GetStats(const std::string& replica_id, StatsDone done) {
  ControlChannel* control = ControlOf(replica_id);
  if (!control) return done(absl::NotFoundError(StrCat("replica ", replica_id, " is not running")));
  GetStatsOver(processes_.at(replica_id)->control, std::move(done));
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
