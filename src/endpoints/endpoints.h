// What the control plane publishes and the data plane reads: for each deployment a versioned, immutable
// endpoint set (its replicas with address, code version and state, and its request limits), and the route
// table (route prefix or model name -> application -> ingress deployment). The controller hands whole
// snapshots to a Publisher; every consumer (the proxy's routers, later the handles inside replicas)
// subscribes and keeps its own routers. Consumers answer with reports: their load per deployment (for
// autoscaling, status and metrics) and what they still have in flight on replicas taken out of routing (so
// the controller knows when a drain is done without reading anyone's router).
// The single-node build connects the two sides in-process (LocalPublisher); cluster mode puts etcd behind
// the same two interfaces.
// Thread-safety: the data types are immutable once published. Publisher and Consumer say per method.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/mutex.h"

namespace ferry::endpoints {

enum class EndpointState {
  kServing,   // routers send it new requests
  kDraining,  // it finishes what it has; routers send it nothing new
};

// One replica as the data plane sees it.
struct Endpoint {
  std::string replica_id;  // e.g. "echo#Echo#3fa2c1d0"
  std::string address;     // where it serves frames (a Unix socket path on its node)
  uint64_t key = 0;        // unique for this process incarnation of the replica
  std::string version;     // the deployment's code version the replica runs
  EndpointState state = EndpointState::kServing;
  std::string node_id;                 // the node it runs on; empty: the consumer's own (one node)
  std::vector<std::string> model_ids;  // multiplexed models it has loaded (Ray's), as it last reported them
  std::string tcp_address;             // tcp://IP:PORT for consumers on other nodes (cluster mode); empty: none
};

// A deployment's replicas and limits at one moment. `version` grows with every change of this set.
struct EndpointSet {
  std::string deployment;  // "app/name"
  uint64_t version = 0;
  int max_ongoing_requests = 5;
  int max_queued_requests = -1;
  // It autoscales down to zero replicas on purpose (min_replicas 0) and has not failed: a request that
  // finds no replica starts one, so having none is not being unready.
  bool scales_from_zero = false;
  std::vector<Endpoint> endpoints;
};

struct RouteEntry {
  std::string route_prefix;  // "/", "/echo", "/a/b"
  std::string application;
  std::string ingress_deployment;  // its name within the application
  std::string deployment_key;      // "app/name": the endpoint set to route to
  bool access_log = true;          // logging_config.enable_access_log of the ingress deployment
};

// A deployment served as a model (the Open Inference Protocol's /v2/models/{name}).
struct ModelEntry {
  std::string name;
  std::string version;  // empty: unversioned
  std::string application;
  std::string deployment;
  std::string deployment_key;
  bool access_log = true;
};

struct RouteTable {
  std::vector<RouteEntry> routes;
  std::vector<ModelEntry> models;
  bool access_log = true;  // access lines for requests that match no route (the top level's setting)
  // Which nodes' proxies serve HTTP (Ray's proxy_location): "EveryNode", "HeadOnly" (the node whose
  // controller publishes: `head_node`) or "Disabled" (none: handles only).
  std::string proxy_location = "EveryNode";
  std::string head_node;  // empty on one node
};

// Everything published, at one version. Sets and the route table are shared between snapshots that did
// not change them, so a consumer can tell what changed by comparing pointers or versions.
struct Snapshot {
  uint64_t version = 0;
  std::shared_ptr<const RouteTable> routes = std::make_shared<const RouteTable>();
  std::map<std::string, std::shared_ptr<const EndpointSet>> sets;  // by deployment key
};

// A consumer's load on one deployment.
struct DeploymentLoad {
  std::string deployment;  // "app/name"
  int queued = 0;          // requests waiting for a replica slot
  int ongoing = 0;         // requests holding a slot
  // Requests in flight per endpoint key, for every endpoint with any (serving, draining or gone from the set).
  std::vector<std::pair<uint64_t, int>> in_flight;
};

struct ConsumerReport {
  uint64_t applied_version = 0;  // the newest snapshot this consumer routes by
  std::vector<DeploymentLoad> deployments;
};

// The data plane's side. OnPublished is called on the publisher's thread and must not block; Report may
// be called from any thread.
class Consumer {
 public:
  virtual ~Consumer() = default;
  virtual void OnPublished(std::shared_ptr<const Snapshot> snapshot) = 0;
  virtual ConsumerReport Report() const = 0;
};

// The control plane's side. Called from the controller's thread, except the wake hook (see below).
class Publisher {
 public:
  virtual ~Publisher() = default;
  // A consumer gets the latest snapshot at once, then each one published. It must stay alive until
  // Unsubscribe. Any thread.
  virtual void Subscribe(Consumer* consumer) = 0;
  virtual void Unsubscribe(Consumer* consumer) = 0;
  virtual void Publish(std::shared_ptr<const Snapshot> snapshot) = 0;
  // The latest report of every consumer.
  virtual std::vector<ConsumerReport> CollectReports() = 0;
  // `wake` runs, on any thread, when a consumer needs the controller before its next tick: a request
  // waits for a deployment with no replica (a cold start), or a draining replica's last request ended.
  // Null: nothing runs. Set before consumers can call it, cleared before the controller goes away.
  virtual void SetWakeHook(std::function<void()> wake) = 0;
  // For consumers: runs the wake hook, if any. Any thread.
  virtual void Wake() = 0;
};

// The in-process publisher of a single node: hands each snapshot to its consumers synchronously, and
// collects their reports by asking them. Thread-safe.
class LocalPublisher : public Publisher {
 public:
  void Subscribe(Consumer* consumer) override;
  void Unsubscribe(Consumer* consumer) override;
  void Wake() override;

  void Publish(std::shared_ptr<const Snapshot> snapshot) override;
  std::vector<ConsumerReport> CollectReports() override;
  void SetWakeHook(std::function<void()> wake) override;

 private:
  Mutex mu_;
  std::vector<Consumer*> consumers_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const Snapshot> latest_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const std::function<void()>> wake_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ferry::endpoints
