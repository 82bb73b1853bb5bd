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

#include "endpoints/endpoints.h"
#include "node/launcher.h"

namespace ferry::node {

class ControlChannel;
struct ReplicaOutputStyle;

class NodeAgent : public ReplicaLauncher {
 public:
  // `ferry_binary` is the executable to start in replica mode; `run_dir` holds sockets and specs.
  // `publisher` (may be null) feeds endpoint snapshots to replicas that hold handles, and collects their
  // load with the other consumers'. Called on this agent's io_context, as its consumers are.
  static absl::StatusOr<std::unique_ptr<NodeAgent>> Create(boost::asio::io_context& io, std::string ferry_binary,
                                                           std::string run_dir, ReplicaListener* listener,
                                                           endpoints::Publisher* publisher = nullptr);
  ~NodeAgent() override;

  absl::Status StartReplica(const spec::ReplicaSpec& spec) override;
  void StopReplica(const std::string& replica_id, std::chrono::milliseconds timeout) override;
  void CheckHealth(const std::string& replica_id, Done done) override;
  void Reconfigure(const std::string& replica_id, const spec::ReplicaUpdate& update, Done done) override;
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
  endpoints::Publisher* publisher_ = nullptr;
  boost::asio::signal_set sigchld_;
  std::map<std::string, std::unique_ptr<Process>> processes_;
};

}  // namespace ferry::node
