// Cluster mode's replicas: where they run and who runs them, through etcd.
//   PREFIX/assign/<node>/<replica>  {"spec", "bundle_nodes", "stop_timeout_ms"?}: the leader's request that
//                                   <node> run (or stop) the replica; written fenced on the leadership.
//   PREFIX/replicas/<replica>       {"node", "state": "READY"|"EXITED", "socket", "tcp_address", "pid",
//                                   "was_ready", "message"}: what the node reports, bound to its lease (a dead
//                                   node's reports vanish with it).
// ClusterLauncher is the leading controller's ReplicaLauncher: it places each replica by Ray's rules
// (placement.h) over the nodes' declared resources and what is placed already, writes the assignment, and
// turns the nodes' reports and deaths into the controller's replica events. Health checks, reconfigures
// and stats go straight to the replica (its Unix socket on this node, TCP elsewhere). It mirrors etcd on
// every node, leading or not, so that a new leader takes over (Existing) the replicas still alive.
// NodeWorker runs on every node: it starts and stops the replicas assigned to its node with the node's
// NodeAgent and reports them; back from an outage it reads its assignments again and stops what is no
// longer its own.
// Neither is thread-safe: calls and callbacks on the io_context given; their threads (etcd writes, the
// watches) post there.
#pragma once

#include <sys/types.h>

#include <absl/status/statusor.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "cluster/cluster.h"
#include "cluster/placement.h"
#include "endpoints/endpoints.h"
#include "node/launcher.h"

namespace ferry::node {
class ControlChannel;
class NodeAgent;
}  // namespace ferry::node

namespace ferry::cluster {

class EtcdWriter;
class PrefixMirror;

// A replica's report, as PREFIX/replicas/<replica> holds it.
struct ReplicaReport {
  std::string node;
  bool ready = false;   // state READY
  bool exited = false;  // state EXITED
  std::string socket;
  std::string tcp_address;
  pid_t pid = -1;
  bool was_ready = false;
  std::string message;

  static ReplicaReport Ready(std::string node, std::string socket, std::string tcp_address, pid_t pid) {
    ReplicaReport r;
    r.node = std::move(node);
    r.ready = true;
    r.socket = std::move(socket);
    r.tcp_address = std::move(tcp_address);
    r.pid = pid;
    return r;
  }
  static ReplicaReport Exited(std::string node, bool was_ready, std::string message) {
    ReplicaReport r;
    r.node = std::move(node);
    r.exited = true;
    r.was_ready = was_ready;
    r.message = std::move(message);
    return r;
  }
};
std::string ReplicaReportJson(const ReplicaReport& report);
std::optional<ReplicaReport> ParseReplicaReport(const std::string& text);

// The leader's request, as PREFIX/assign/<node>/<replica> holds it.
struct Assignment {
  std::string node;
  spec::ReplicaSpec spec;
  std::vector<std::string> bundle_nodes;
  std::optional<int64_t> stop_timeout_ms;  // set: stop it
};
std::string AssignmentJson(const Assignment& assignment);
std::optional<Assignment> ParseAssignment(const std::string& node, const std::string& text);

class ClusterLauncher : public node::ReplicaLauncher {
 public:
  // Starts watching etcd at once.
  ClusterLauncher(boost::asio::io_context& io, ClusterMember* member, node::ReplicaListener* listener);
  ~ClusterLauncher() override;

  absl::Status StartReplica(const spec::ReplicaSpec& spec) override;
  void StopReplica(const std::string& replica_id, std::chrono::milliseconds timeout) override;
  void CheckHealth(const std::string& replica_id, Done done) override;
  void Reconfigure(const std::string& replica_id, const spec::ReplicaUpdate& update, Done done) override;
  void GetStats(const std::string& replica_id, StatsDone done) override;
  size_t live_replicas() const override { return tracked_.size(); }
  // Replicas run on their nodes: a leader going away leaves them to the next one.
  void KillAll() override {}
  // Calls `then` on the io thread once this launcher's mirror of etcd has reached `revision` (a new
  // leader's fence: every assignment and report its predecessor made is in the mirror then) with true, or
  // after a second when the watch lags behind with false. A node calls it before restoring its controller
  // as the leader.
  void WhenCaughtUp(int64_t revision, std::function<void(bool caught_up)> then);
  // Hands over the assigned replicas this launcher does not track yet, on live nodes and not being stopped:
  // from the mirror when WhenCaughtUp found it current, else from a read of etcd now (which blocks the
  // calling thread; 20,000 keys take about a second).
  std::vector<node::ExistingReplica> Existing() override;
  node::ReplicaLocation LocationOf(const std::string& replica_id) const override;
  // Its node is draining: the controller replaces it elsewhere, then stops it.
  bool Evicting(const std::string& replica_id) const override;
  // A simulated cluster (bench/cluster/sim.cc) has no replica processes to connect to: its health checks,
  // reconfigures and stats go to `control` instead. Null (the default): to the replicas.
  void SetControlOverride(node::ReplicaLauncher* control) { control_override_ = control; }

 private:
  struct Tracked {
    Assignment assignment;
    bool reported_ready = false;
    std::shared_ptr<node::ControlChannel> control;
  };
  // The mirror's changes, indexed as they come (each value parsed once).
  void OnReset();
  void OnKey(const std::string& key, const std::string* value);
  // The placement's nodes, when a member, its liveness or its draining changed.
  void RefreshNodes();
  // Turns what changed into the controller's replica events (ready, exited, lost with their node) and,
  // while leading, clears what nobody tracks any more. Each pass looks only at what changed.
  void Reconcile();
  // Runs WhenCaughtUp's callback once the mirror has caught up (or `timed_out`).
  void CheckCaughtUp(bool timed_out);
  void Lost(const std::string& replica_id, const std::string& message);
  void Forget(const std::string& replica_id);
  void OpenControl(Tracked& t, const ReplicaReport& report);
  void Clear(const std::string& key);  // deletes it, once, while leading
  std::string AssignKey(const std::string& node, const std::string& replica_id) const;
  std::string ReportKey(const std::string& replica_id) const;
  std::string prefix() const { return member_->options().prefix; }

  boost::asio::io_context& io_;
  ClusterMember* const member_;
  node::ReplicaListener* const listener_;
  std::map<std::string, Tracked> tracked_;  // by replica id
  bool took_over_ = false;                  // Existing() ran: what nobody tracks may be cleared
  std::set<std::string> clearing_;          // keys whose deletion was asked for
  // The cluster as the mirror shows it.
  std::map<std::string, NodeInfo> members_;
  std::set<std::string> alive_, draining_;
  std::map<std::string, Assignment> assigned_;    // by replica id
  std::map<std::string, ReplicaReport> reports_;  // by replica id
  std::set<std::string> dirty_;                   // replica ids whose assignment or report changed
  bool nodes_stale_ = true;                       // the placement's nodes must be rebuilt
  bool liveness_changed_ = true;                  // a node's alive key came or went
  std::unique_ptr<PlacementState> placement_;
  node::ReplicaLauncher* control_override_ = nullptr;
  // WhenCaughtUp's: the revision awaited (until Existing() takes over) and what then.
  int64_t catch_up_revision_ = 0;
  std::function<void(bool)> caught_up_;
  boost::asio::steady_timer catch_up_timer_;
  std::unique_ptr<EtcdWriter> writer_;
  std::unique_ptr<PrefixMirror> mirror_;
  std::shared_ptr<bool> alive_token_ = std::make_shared<bool>(true);
};

class NodeWorker : public node::ReplicaListener {
 public:
  static absl::StatusOr<std::unique_ptr<NodeWorker>> Create(boost::asio::io_context& io, ClusterMember* member,
                                                            std::string ferry_binary, std::string run_dir,
                                                            endpoints::Publisher* publisher);
  // Over any launcher (a simulated node's).
  using LauncherFactory = std::function<std::unique_ptr<node::ReplicaLauncher>(node::ReplicaListener*)>;
  static std::unique_ptr<NodeWorker> CreateWith(boost::asio::io_context& io, ClusterMember* member,
                                                const LauncherFactory& make_launcher);
  ~NodeWorker() override;  // kills what is left

  // Starts following this node's assignments (once the member has joined).
  void Start();
  // Stops every replica (SIGTERM, SIGKILL after its graceful_shutdown_timeout_s); `done` once all exited.
  void StopAll(std::function<void()> done);
  size_t live_replicas() const;

  void OnReplicaReady(const std::string& replica_id, const std::string& socket_path, const std::string& tcp_address,
                      pid_t pid) override;
  void OnReplicaExited(const std::string& replica_id, bool was_ready, const std::string& message) override;

 private:
  struct Local {
    spec::ReplicaSpec spec;
    bool stopping = false;
  };
  NodeWorker(boost::asio::io_context& io, ClusterMember* member);
  // Starts what is assigned and not running, stops what runs and is not assigned (or asked to stop).
  void Reconcile();
  std::string ReportKey(const std::string& replica_id) const;

  boost::asio::io_context& io_;
  ClusterMember* const member_;
  std::unique_ptr<node::ReplicaLauncher> agent_;
  std::map<std::string, Assignment> assigned_;  // what the mirror holds, read (by replica id)
  std::set<std::string> dirty_;                 // assignments changed since the last Reconcile
  std::map<std::string, Local> running_;        // by replica id
  std::set<std::string> finished_;              // ran here and ended (never started again), until unassigned
  std::function<void()> stopped_;               // StopAll's
  bool stopping_all_ = false;
  std::unique_ptr<EtcdWriter> writer_;
  std::unique_ptr<PrefixMirror> mirror_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace ferry::cluster
