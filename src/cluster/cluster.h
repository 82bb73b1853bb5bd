// A node's membership of a Ferry cluster, kept in etcd (the only shared state; etcd does the consensus):
//   PREFIX/members/<node>   the node's record (address, admin and HTTP URLs, resources, labels), kept
//                           after it dies so that `ferry nodes` can say so;
//   PREFIX/alive/<node>     bound to the node's lease: present while the node keeps its lease alive;
//   PREFIX/leader           the node whose controller leads, bound to its lease. Its create revision is
//                           the leadership's fence: every write the leader makes is a transaction that
//                           holds only while the key still has that revision, so a deposed leader (whose
//                           lease lapsed, even one that does not know it yet) can no longer write;
//   PREFIX/state            the controller's desired state (EtcdStateStore), written fenced;
//   PREFIX/draining/<node>  the node is draining (`ferry drain`, or SIGTERM to it): it takes no new replicas
//                           and the leader moves its replicas away; cleared when the node joins again.
// A thread keeps the lease alive (every TTL/4) and campaigns when nobody leads; another watches the leader
// key, so that its deletion (the leader resigned, or its lease lapsed) is campaigned for at once rather than
// at the next step. The node hears of its election and deposition through callbacks on the first thread.
// Thread-safe.
#pragma once

#include <absl/status/statusor.h>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cluster/etcd.h"
#include "common/tls.h"
#include "controller/state_store.h"

namespace ferry::cluster {

struct ClusterOptions {
  std::vector<HttpEndpoint> etcd;
  std::string prefix = "/ferry/";
  std::string node_id;
  std::string address;                                  // the node's IP address, as others reach it
  nlohmann::json resources = nlohmann::json::object();  // Ray's: {"CPU": 16, "GPU": 2, "memory": ...}
  std::map<std::string, std::string> labels;
  int64_t lease_ttl_s = 2;  // a dead node is noticed (and a dead leader replaced) this long after it died
  // The cluster's shared secret (empty: none). The first node to join with one records a salted SHA-256 of
  // it at PREFIX/token; a node whose token does not match (or that has none) cannot join after that.
  std::string token;
  // This node's frames to other nodes' replicas go over TLS with these files (--tls-ca/--tls-cert/--tls-key;
  // ca empty: in the clear). The first node records the cluster's choice at PREFIX/frame_tls; a node that
  // chose otherwise cannot join.
  TlsFiles frame_tls;
  // Whether this node campaigns to lead. Every `ferry start --cluster` node does; the simulated cluster's
  // agents (bench/cluster/sim.cc) do not, as they stand in for nodes whose controllers it does not run.
  bool campaign = true;
};

// A node as `ferry nodes` and the status show it.
struct NodeInfo {
  std::string node_id;
  std::string address;
  std::string admin_url;
  std::string http_url;
  nlohmann::json resources = nlohmann::json::object();
  std::map<std::string, std::string> labels;
  double started_at_s = 0;
  bool alive = false;
  bool leader = false;
  bool draining = false;
  int replicas = 0;                                          // assigned to it (cluster_launcher.h)
  nlohmann::json resources_used = nlohmann::json::object();  // what they take, by Ray's names
};

nlohmann::json NodeJson(const NodeInfo& node);
// A node's record as etcd holds it (PREFIX/members/<node>); nullopt for one that is not (whatever is in
// etcd is read, never trusted).
std::optional<NodeInfo> NodeFromRecord(const std::string& text);

class ClusterMember {
 public:
  struct Callbacks {
    // This node now leads; `fence` is its leadership's revision. On the member's thread.
    std::function<void(int64_t fence)> on_elected;
    // This node no longer leads (its lease lapsed or etcd was out of reach for longer than the TTL, so
    // another node may lead already). On the member's thread.
    std::function<void()> on_deposed;
    // Another node leads now (seen for the first time since the leader last changed). On the member's thread.
    std::function<void(const NodeInfo& leader)> on_other_leader;
  };

  ClusterMember(ClusterOptions options, Callbacks callbacks);
  ~ClusterMember();  // Stop()

  // Registers once with the URLs of the node's admin API and proxy (an error when etcd cannot be reached,
  // or when a live node already has this id), then starts the thread that keeps the lease and campaigns.
  absl::Status Start(const std::string& admin_url, const std::string& http_url);
  // Resigns (revokes the lease, so that a standby takes over at once) and stops the thread.
  void Stop();
  // Stops the thread without resigning, as a node that dies does: its lease lapses after the TTL
  // (a simulated cluster's node loss).
  void Halt();

  bool leading() const { return fence_.load() != 0; }
  // The node's lease while it is registered (its alive key and its replicas' reports are bound to it), else 0.
  int64_t lease() const { return lease_.load(); }
  // The leadership's fence while leading, else 0.
  int64_t fence() const { return fence_.load(); }
  // The leader's record as last seen (nullopt: nobody leads, as far as this node knows).
  std::optional<NodeInfo> leader() const;
  // The leader's record as etcd holds it now (nullopt: nobody leads); the last seen when etcd cannot be read.
  std::optional<NodeInfo> LeaderNow();
  // Every node ever registered, alive or not, with what is assigned to it, read from etcd now.
  absl::StatusOr<std::vector<NodeInfo>> Nodes();
  // Marks `node` draining (the leader only: a fenced write). NotFound for a node never registered.
  absl::Status Drain(const std::string& node);
  // Marks this node draining (its own key: no fence needed).
  absl::Status DrainSelf();

  const ClusterOptions& options() const { return options_; }
  Etcd& etcd() { return etcd_; }
  std::string leader_key() const { return options_.prefix + "leader"; }

 private:
  void Loop();
  // One pass: register or renew, then campaign or check on the leadership. Returns false to stop at once.
  void Step();
  absl::Status Register();
  // Whether this node may join: its token against the cluster's (set by the first node that has one).
  absl::Status CheckToken();
  // Whether this node's frame TLS is the cluster's (recorded by the first node to join).
  absl::Status CheckFrameTls();
  void Depose(const std::string& why);
  // The watcher's loop: wakes Loop when the leader key is deleted.
  void WatchLeader();
  // Stops and joins the threads; false when they were stopped already.
  bool JoinThread();

  const ClusterOptions options_;
  const Callbacks callbacks_;
  Etcd etcd_;
  std::atomic<int64_t> fence_{0};
  std::atomic<int64_t> lease_{0};  // written by the member's thread only (and Start/Stop while it does not run)
  std::chrono::steady_clock::time_point last_renewed_;
  std::string record_;  // the member record, JSON
  mutable std::mutex mu_;
  std::optional<NodeInfo> leader_;  // under mu_
  std::condition_variable wake_;
  bool stopping_ = false;     // under mu_
  bool leader_gone_ = false;  // under mu_: the watcher saw the leader key deleted
  std::atomic<bool> watch_stop_{false};
  std::thread thread_;
  std::thread watcher_;
};

// The controller's desired state in etcd, at PREFIX/state: read by whichever node leads, written only
// by the leader (a transaction fenced on its leadership's revision: a deposed leader's save fails with
// FailedPrecondition and changes nothing).
class EtcdStateStore : public controller::StateStore {
 public:
  explicit EtcdStateStore(ClusterMember* member) : member_(member) {}
  absl::StatusOr<std::optional<std::string>> Load() override;
  absl::Status Save(const std::string& document) override;

 private:
  ClusterMember* member_;
};

}  // namespace ferry::cluster
