// The node agent: starts, watches and stops replica processes on this machine, and carries the
// controller's control calls (check_health, reconfigure) to them. Each replica is this same ferry binary
// in replica mode, in its own process group (so a terminal's Ctrl-C reaches only the node), killed by the
// kernel if the node dies. The agent reports what happens to a listener; what to do about it (restart,
// give up) is the controller's decision. A replica's standard output and error are pipes to the agent,
// which logs each line the replica prints as a line of that replica's (component "stdout" or "stderr"),
// so a log shipper reading JSON gets JSON; the replica's own log lines go straight to the node's stderr.
// Not thread-safe: every call, and every listener callback, on the io_context passed to Create.
#pragma once

#include <sys/types.h>

#include <absl/status/statusor.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "replica/replica.h"
#include "transport/frame.h"

namespace ferry::node {

class ReplicaListener {
 public:
  virtual ~ReplicaListener() = default;
  // The replica constructed its deployment and listens on `socket_path`.
  virtual void OnReplicaReady(const std::string& replica_id, const std::string& socket_path, pid_t pid) = 0;
  // The replica process ended. `message` is the constructor's error when it failed before getting ready,
  // else how it exited ("killed by signal 9", "exited with code 1").
  virtual void OnReplicaExited(const std::string& replica_id, bool was_ready, const std::string& message) = 0;
};

// What the controller asks of the machine that runs replicas. NodeAgent is the single-node implementation;
// cluster mode puts remote agents behind the same calls, and the controller's benchmark a simulated one.
// Callbacks run on the controller's thread.
class ReplicaLauncher {
 public:
  using Done = std::function<void(const absl::Status&)>;
  virtual ~ReplicaLauncher() = default;
  virtual absl::Status StartReplica(const replica::ReplicaSpec& spec) = 0;
  // SIGTERM now (the replica finishes what it has), SIGKILL after `timeout`.
  virtual void StopReplica(const std::string& replica_id, std::chrono::milliseconds timeout) = 0;
  // Runs the replica's check_health. `done` may never run if the replica hangs: callers keep their own
  // deadline.
  virtual void CheckHealth(const std::string& replica_id, Done done) = 0;
  // Applies {"user_config": ..., "max_ongoing_requests": N} (either key optional) in place.
  virtual void Reconfigure(const std::string& replica_id, const nlohmann::json& update, Done done) = 0;
  // The replica's load and histograms (processing time, batch sizes) since it started.
  using StatsDone = std::function<void(absl::StatusOr<transport::StatsReply>)>;
  virtual void GetStats(const std::string& replica_id, StatsDone done) = 0;
  virtual size_t live_replicas() const = 0;
  // SIGKILL every replica; for a node that is going away.
  virtual void KillAll() = 0;
};

class ControlChannel;
struct ReplicaOutputStyle;

class NodeAgent : public ReplicaLauncher {
 public:
  // `ferry_binary` is the executable to start in replica mode; `run_dir` holds sockets and specs.
  static absl::StatusOr<std::unique_ptr<NodeAgent>> Create(boost::asio::io_context& io, std::string ferry_binary,
                                                           std::string run_dir, ReplicaListener* listener);
  ~NodeAgent() override;

  absl::Status StartReplica(const replica::ReplicaSpec& spec) override;
  void StopReplica(const std::string& replica_id, std::chrono::milliseconds timeout) override;
  void CheckHealth(const std::string& replica_id, Done done) override;
  void Reconfigure(const std::string& replica_id, const nlohmann::json& update, Done done) override;
  void GetStats(const std::string& replica_id, StatsDone done) override;
  void KillAll() override;
  size_t live_replicas() const override { return processes_.size(); }
  const std::string& run_dir() const { return run_dir_; }

 private:
  struct Process {
    std::string replica_id;
    pid_t pid = -1;
    std::string socket_path;
    std::string spec_path;
    bool ready = false;
    bool stop_requested = false;
    std::string start_error;
    std::unique_ptr<boost::asio::posix::stream_descriptor> status_pipe;
    std::string status_buffer;
    std::unique_ptr<boost::asio::steady_timer> kill_timer;
    std::shared_ptr<ControlChannel> control;  // opened when the replica is ready
    // What the replica writes to its standard output and error (user code's prints, libraries' warnings,
    // a crash's last words), logged line by line as the replica's, in its logging_config's encoding.
    // (Each stream's reader lives until the pipe's EOF, past the replica's exit: a crash's last words in
    // the pipe are still logged.)
    std::shared_ptr<ReplicaOutputStyle> output_style;
  };
  NodeAgent(boost::asio::io_context& io, std::string ferry_binary, std::string run_dir, ReplicaListener* listener);
  void ReadStatus(const std::string& replica_id);
  void DrainStatus(Process& p);
  void WatchChildren();
  void Reap();
  ControlChannel* ControlOf(const std::string& replica_id);

  boost::asio::io_context& io_;
  std::string ferry_binary_;
  std::string run_dir_;
  ReplicaListener* listener_;
  boost::asio::signal_set sigchld_;
  std::map<std::string, std::unique_ptr<Process>> processes_;
};

}  // namespace ferry::node
