// A whole ferry node in one process: the HTTP proxy, the controller with its node agent (one child
// process per replica), and the admin API. `ferry run` runs one in the foreground with a config;
// `ferry start` runs one as a daemon that restores its applications from its state directory.
// Not thread-safe: call from the main thread.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "cluster/cluster.h"
#include "config/config.h"

namespace ferry::cli {

struct NodeOptions {
  std::string ferry_binary;  // this executable, started again in replica mode
  std::string run_dir;       // replica sockets; empty: a new directory under $TMPDIR, removed at exit
  std::string state_dir;     // where the controller keeps its state; empty: nothing is kept
  config::HttpOptions http;
  config::AdminOptions admin;
  std::optional<config::Config> initial_config;  // applied at start (after restoring the state dir)
  bool serve_after_ready = false;                // open the HTTP port only once the initial config is running
  bool metrics = true;                 // false (--no-metrics): the proxy records no series and /metrics answers 404
  bool exit_on_start_failure = false;  // a deployment failing to start before that ends the node
  config::ValidationHooks hooks;       // for configs deployed through the admin API
  // Called once the node serves its admin API (and, with serve_after_ready, HTTP): a line to print.
  std::function<void(const std::string& summary)> on_ready;
  // A daemon (`ferry start`): its stdout is the log file, so what it would print there (the ready lines,
  // draining, stopped) is written as log lines instead, in the log's encoding.
  bool daemon = false;
  // Cluster mode (--cluster): membership, leadership and the desired state in etcd. The node's controller
  // acts only while this node leads; otherwise its admin API hands writes to the leader's.
  std::optional<cluster::ClusterOptions> cluster;
};

// Runs until SIGINT/SIGTERM or an admin shutdown; returns the process exit code.
int RunNode(const NodeOptions& options);

}  // namespace ferry::cli
