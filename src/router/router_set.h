// One consumer's routers: the data plane's half of the published state. Keeps a Router per deployment,
// updated in place from each endpoint set the control plane publishes (so in-flight counts and queued
// requests survive an update), and the routing table its request path reads, rebuilt only when routes or
// the set of deployments change. Reports its load and its in-flight counts back, which is how the
// controller learns that a draining replica is done. Today the proxy's workers share one RouterSet;
// handles inside replicas will be consumers of their own.
// Thread-safe: OnPublished on the publisher's thread, Report and Find from any thread; request paths read
// routing() without a lock.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "common/mutex.h"
#include "endpoints/endpoints.h"
#include "router/router.h"
#include "router/routing_table.h"

namespace ferry::router {

class RouterSet : public endpoints::Consumer {
 public:
  // `wake` (may be empty) runs on a request thread when the controller should look now: a request waits
  // for a deployment with no replica, or a replica out of routing finished its last request.
  // `seed`: see Router::Create.
  // `local_node`: the node these routers run on; they prefer its replicas (see Router::Create).
  explicit RouterSet(std::function<void()> wake = nullptr, uint64_t seed = 0, std::string local_node = "");
  ~RouterSet() override;

  RoutingTableCell* routing() { return &routing_; }
  // The router of deployment "app/name", or null.
  std::shared_ptr<Router> Find(const std::string& deployment_key) const;

  void OnPublished(std::shared_ptr<const endpoints::Snapshot> snapshot) override;
  endpoints::ConsumerReport Report() const override;

 private:
  struct Entry {
    std::shared_ptr<Router> router;
    std::shared_ptr<const endpoints::EndpointSet> set;  // the one it routes by
  };
  void PublishTableLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::shared_ptr<Router> RouterOfLocked(const std::string& key) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::function<void()> wake_;
  const uint64_t seed_;
  const std::string local_node_;
  RoutingTableCell routing_;
  mutable Mutex mu_;
  uint64_t applied_version_ ABSL_GUARDED_BY(mu_) = 0;
  std::shared_ptr<const endpoints::RouteTable> routes_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Entry> routers_ ABSL_GUARDED_BY(mu_);  // by deployment key
};

}  // namespace ferry::router
