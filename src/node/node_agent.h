// The node agent: starts, watches and stops replica processes on this machine. Each replica is this same
// ferry binary in replica mode, in its own process group (so a terminal's Ctrl-C reaches only the node),
// killed by the kernel if the node dies. The agent reports what happens to a listener; what to do about it
// (restart, give up) is the controller's decision.
// Not thread-safe: every call, and every listener callback, on the io_context passed to Create.
#pragma once

#include <sys/types.h>

#include <absl/status/statusor.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <string>

#include "replica/replica.h"

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

class NodeAgent {
 public:
  // `ferry_binary` is the executable to start in replica mode; `run_dir` holds sockets and specs.
  static absl::StatusOr<std::unique_ptr<NodeAgent>> Create(boost::asio::io_context& io, std::string ferry_binary,
                                                           std::string run_dir, ReplicaListener* listener);
  ~NodeAgent();

  absl::Status StartReplica(const replica::ReplicaSpec& spec);
  // SIGTERM now (the replica drains its requests), SIGKILL after `timeout`.
  void StopReplica(const std::string& replica_id, std::chrono::milliseconds timeout);
  // SIGKILL every replica; for a node that is going away.
  void KillAll();
  size_t live_replicas() const { return processes_.size(); }
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
  };
  NodeAgent(boost::asio::io_context& io, std::string ferry_binary, std::string run_dir, ReplicaListener* listener);
  void ReadStatus(const std::string& replica_id);
  void DrainStatus(Process& p);
  void WatchChildren();
  void Reap();

  boost::asio::io_context& io_;
  std::string ferry_binary_;
  std::string run_dir_;
  ReplicaListener* listener_;
  boost::asio::signal_set sigchld_;
  std::map<std::string, std::unique_ptr<Process>> processes_;
};

}  // namespace ferry::node
