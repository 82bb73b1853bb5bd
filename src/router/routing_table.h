// The routing table: route_prefix -> application -> its ingress deployment's router, and model name ->
// the model's deployment router (the Open Inference Protocol's /v2/models/{name}). The controller builds
// a new table on every change and publishes it; the data plane reads immutable snapshots.
// Thread-safe: a RoutingTable is immutable; RoutingTableCell hands out snapshots under a lock.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/mutex.h"
#include "router/router.h"

namespace ferry::router {

struct Route {
  std::string route_prefix;  // "/", "/echo", "/a/b"
  std::string application;
  std::string ingress_deployment;
  std::shared_ptr<Router> router;
  bool access_log = true;  // the proxy writes an access line for each request (logging_config.enable_access_log)
};

// A deployment served as a model. `route` is its router, with route_prefix "/v2/models/{name}".
struct ModelRoute {
  std::string name;
  std::string version;  // empty: unversioned
  Route route;
};

class RoutingTable {
 public:
  // `access_log`: whether requests that match no route get access lines (the top level's setting).
  // `refusal`: set when this node's proxy does not serve HTTP (proxy_location): why, for a 503.
  explicit RoutingTable(std::vector<Route> routes, std::vector<ModelRoute> models = {}, bool access_log = true,
                        std::string refusal = "");
  // The route with the longest route_prefix that matches `path` at a segment boundary, or nullptr.
  const Route* Match(std::string_view path) const;
  const std::vector<Route>& routes() const { return routes_; }
  // The model named `name`, or nullptr.
  const ModelRoute* FindModel(std::string_view name) const;
  const std::vector<ModelRoute>& models() const { return models_; }  // by name
  bool access_log() const { return access_log_; }
  const std::string& refusal() const { return refusal_; }

 private:
  std::vector<Route> routes_;  // longest prefix first
  std::vector<ModelRoute> models_;
  bool access_log_;
  std::string refusal_;
};

// Holds the current table. Writers publish whole tables; readers take a snapshot per request.
// (Not std::atomic<std::shared_ptr>: libstdc++ 12's load releases its lock with a relaxed store, a race
// ThreadSanitizer reports; and a Reader per thread makes the common read one atomic load, no lock.)
class RoutingTableCell {
 public:
  RoutingTableCell() : table_(std::make_shared<const RoutingTable>(std::vector<Route>{})) {}
  void Publish(std::shared_ptr<const RoutingTable> table) {
    MutexLock lock(&mu_);
    table_ = std::move(table);
    version_.fetch_add(1, std::memory_order_release);
  }
  std::shared_ptr<const RoutingTable> Get() const {
    MutexLock lock(&mu_);
    return table_;
  }

  // One reading thread's view of a cell: re-reads the cell only after a publish. Not thread-safe.
  class Reader {
   public:
    explicit Reader(const RoutingTableCell* cell) : cell_(cell) {}
    const std::shared_ptr<const RoutingTable>& Get() {
      const uint64_t version = cell_->version_.load(std::memory_order_acquire);
      if (version != seen_ || !table_) {
        table_ = cell_->Get();  // at least as new as `version`
        seen_ = version;
      }
      return table_;
    }

   private:
    const RoutingTableCell* cell_;
    uint64_t seen_ = 0;
    std::shared_ptr<const RoutingTable> table_;
  };

 private:
  mutable Mutex mu_;
  std::shared_ptr<const RoutingTable> table_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> version_{0};
};

// True when `path` is under `prefix` ("/a" matches "/a", "/a/", "/a/b", not "/ab"; "/" matches all).
bool PrefixMatches(std::string_view prefix, std::string_view path);

}  // namespace ferry::router
