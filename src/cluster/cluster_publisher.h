// Cluster mode's published state. The node's routers (its proxy's, its driver calls') subscribe here, and
// the node's controller publishes here, as on one node; in between, the source of what they route by
// depends on who leads:
//   - while this node leads: its controller's snapshots, which are also written to etcd (PREFIX/endpoints,
//     one JSON document, fenced on the leadership, the latest only: a slow etcd coalesces);
//   - otherwise: the leader's, read from etcd by a watch, with the leader's replicas reached over TCP
//     (each endpoint's tcp_address; endpoints without one are left out).
// Consumers see one increasing version sequence across source changes (each source's versions are
// shifted to follow the last delivered), and the controller's report collection is shifted back.
// The leader's controller hears every node's data plane: each node answers GET /api/ferry/reports with its
// consumers' reports in the leader's numbering (RemoteReports), and the leader polls them (every 100 ms)
// into its CollectReports, so autoscaling sees the whole cluster's load and a replica is stopped only once
// no node's router can still send it a request.
// The data plane keeps the last snapshot it has when etcd or the leader is gone.
// Thread-safe.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "cluster/cluster.h"
#include "endpoints/endpoints.h"

namespace ferry::cluster {

class ClusterPublisher : public endpoints::Publisher {
 public:
  // `local` carries snapshots to this node's consumers; both outlive this. Consumers expect snapshots on
  // the publisher's (the controller's) thread: what the watch or a leadership change brings is handed to
  // `run_on_publisher_thread` (which runs it there), while the controller's own come on that thread.
  using Runner = std::function<void(std::function<void()>)>;
  // `admin_token`: the bearer token of the nodes' admin APIs (one per cluster), for polling their reports.
  ClusterPublisher(ClusterMember* member, endpoints::LocalPublisher* local, Runner run_on_publisher_thread,
                   std::string admin_token = "");
  ~ClusterPublisher() override;  // Stop()

  // Starts the etcd writer and watcher threads.
  void Start();
  void Stop();
  // The node's leadership changed: route by the other source now.
  void SourceChanged();

  void Subscribe(endpoints::Consumer* consumer) override { local_->Subscribe(consumer); }
  void Unsubscribe(endpoints::Consumer* consumer) override { local_->Unsubscribe(consumer); }
  void Publish(std::shared_ptr<const endpoints::Snapshot> snapshot) override;
  std::vector<endpoints::ConsumerReport> CollectReports() override;
  void SetWakeHook(std::function<void()> wake) override { local_->SetWakeHook(std::move(wake)); }
  void Wake() override { local_->Wake(); }

  std::string key() const { return member_->options().prefix + "endpoints"; }

  // This node's consumers' reports in the leader's numbering, for the leader: {"fence", "reports"}; null
  // while the node routes by its own controller's snapshots. On the publisher's thread.
  nlohmann::json RemoteReports();

 private:
  enum class Source { kNone, kLocal, kRemote };
  // Delivers the selected source's latest snapshot if it is newer than what consumers have. Under mu_.
  void DeliverLocked();
  void WriterLoop();
  void WatcherLoop();
  void PollerLoop();
  // The leader's document as this node routes by it (other nodes' endpoints reached over TCP).
  std::shared_ptr<const endpoints::Snapshot> FromDocument(const std::string& text) const;

  ClusterMember* const member_;
  endpoints::LocalPublisher* const local_;
  const Runner run_;
  std::mutex mu_;
  std::condition_variable wake_writer_;
  std::shared_ptr<const endpoints::Snapshot> local_latest_;  // from this node's controller, as routed here
  struct RoutedSet {
    std::shared_ptr<const endpoints::EndpointSet> source;  // the controller's
    std::shared_ptr<const endpoints::EndpointSet> routed;  // null: the same as source
  };
  std::map<std::string, RoutedSet> routed_sets_;              // by deployment, for the last local snapshot; under mu_
  std::shared_ptr<const endpoints::Snapshot> remote_latest_;  // from etcd
  uint64_t remote_epoch_ = 0;  // grows with each remote snapshot (a new leader restarts its numbering)
  Source delivered_source_ = Source::kNone;
  uint64_t delivered_source_version_ = 0;  // the delivered snapshot's version in its own source's numbering
  uint64_t out_version_ = 0;               // the last version consumers got
  int64_t local_offset_ = 0;               // out = local version + local_offset_ (while delivering local ones)
  // The latest local snapshot, not yet in etcd (null: none); the writer thread makes its document (10,000
  // endpoints take milliseconds to encode: not on the controller's thread, and only the latest).
  std::shared_ptr<const endpoints::Snapshot> to_write_;
  // The leader's document being delivered: its fence, and which out version carried which of its versions.
  int64_t remote_fence_ = 0;
  uint64_t remote_source_version_ = 0;
  std::deque<std::pair<uint64_t, uint64_t>> remote_delivered_;  // (out version, leader's version), newest last
  int64_t delivered_fence_ = 0;
  // Other nodes' reports, polled while leading.
  struct NodeReports {
    std::chrono::steady_clock::time_point at;
    std::vector<endpoints::ConsumerReport> reports;
  };
  std::map<std::string, NodeReports> node_reports_;
  const std::string admin_token_;
  bool stopping_ = false;
  std::atomic<bool> stop_watch_{false};
  std::thread writer_;
  std::thread watcher_;
  std::thread poller_;
};

}  // namespace ferry::cluster
