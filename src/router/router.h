// The router of one deployment: picks a replica for each request by power of two choices on in-flight
// counts, never lets more than max_ongoing_requests run on one replica, queues the rest in FIFO order up to
// max_queued_requests (-1: unbounded), and sheds beyond that. Independent of I/O: callers bring their own
// threads and get called back when a queued request gets a slot.
// Thread-safe: every method may be called from any thread. No callback runs under the router's lock.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/mutex.h"
#include "endpoints/endpoints.h"

namespace ferry::router {

// A replica as routers see it. Immutable once published.
struct ReplicaEndpoint {
  std::string replica_id;              // e.g. "echo#Echo#3fa2c1d0"
  std::string socket_path;             // where the replica serves frames
  uint64_t key = 0;                    // unique for this process incarnation of the replica
  bool local = true;                   // on the router's own node
  std::vector<std::string> model_ids;  // multiplexed models it has loaded (Ray's), as it last reported them
  bool HasModel(std::string_view id) const {
    for (const std::string& m : model_ids)
      if (m == id) return true;
    return false;
  }
};

class Router;

// One request's slot on a replica. Move-only; gives the slot back when released or destroyed.
// May be moved to and released on any thread.
class ReplicaLease {
 public:
  ReplicaLease() = default;
  ReplicaLease(ReplicaLease&& other) noexcept { *this = std::move(other); }
  ReplicaLease& operator=(ReplicaLease&& other) noexcept;
  ReplicaLease(const ReplicaLease&) = delete;
  ReplicaLease& operator=(const ReplicaLease&) = delete;
  ~ReplicaLease() { Release(); }

  explicit operator bool() const { return replica_ != nullptr; }
  const ReplicaEndpoint& replica() const { return *replica_; }
  const std::shared_ptr<const ReplicaEndpoint>& replica_ptr() const { return replica_; }
  void Release();

 private:
  friend class Router;
  ReplicaLease(std::shared_ptr<Router> router, std::shared_ptr<const ReplicaEndpoint> replica, size_t index_hint)
      : router_(std::move(router)), replica_(std::move(replica)), index_hint_(index_hint) {}
  std::shared_ptr<Router> router_;
  std::shared_ptr<const ReplicaEndpoint> replica_;
  size_t index_hint_ = 0;
};

// A request waiting in the router's queue.
class Waiter {
 public:
  virtual ~Waiter() = default;
  // Called once, on the thread that freed the slot, without the router's lock held; the callee moves
  // the work to its own thread. Never called once Router::Cancel returned true for this waiter.
  virtual void OnAssigned(ReplicaLease lease) = 0;
};

struct RouterStats {
  int replicas = 0;
  bool scales_from_zero = false;  // having no replica is by design (see EndpointSet)
  int ongoing = 0;                // requests holding a slot
  int queued = 0;                 // requests waiting
};

class Router : public std::enable_shared_from_this<Router> {
 public:
  // `seed` makes the choice of replicas repeatable (tests); 0: seeded from std::random_device.
  // `local_node`: the node this router runs on; a replica of another node (an endpoint whose node_id is
  // set and differs) is chosen only when no replica of this node has room.
  static std::shared_ptr<Router> Create(std::string deployment, int max_ongoing_requests, int max_queued_requests,
                                        uint64_t seed = 0, std::string local_node = "");

  enum class Result { kAssigned, kQueued, kRejected };
  // kAssigned: `*lease` holds a slot now. kQueued: `waiter` gets OnAssigned later (or Cancel it).
  // kRejected: the queue is full; answer 503. With a `model_id` (Ray's multiplexed model, the
  // serve_multiplexed_model_id header), replicas that have that model loaded are preferred, then those
  // with the fewest models loaded, then any; a queued request takes the first slot that frees.
  Result Acquire(const std::shared_ptr<Waiter>& waiter, ReplicaLease* lease, std::string_view model_id = {});
  // A slot now, when one has room and nobody waits; otherwise false and nothing queued (the caller then
  // takes Acquire's way).
  bool TryAcquire(ReplicaLease* lease, std::string_view model_id = {});
  // Takes a queued waiter out. True: it was queued and will not be called. False: it has been (or is
  // being) assigned, and its OnAssigned runs or ran.
  bool Cancel(Waiter* waiter);

  // Replicas join when ready and leave when they stop or die; requests in flight on a removed replica keep
  // their lease until they finish.
  void AddReplica(std::shared_ptr<const ReplicaEndpoint> replica);
  void RemoveReplica(uint64_t key);
  // A connection to the replica was refused (it died a moment ago, and the endpoint set has not said so
  // yet): for the next second new requests go to the other replicas while any has room.
  void ReportUnreachable(uint64_t key);
  void SetLimits(int max_ongoing_requests, int max_queued_requests);
  // Routes by a published endpoint set from now on: its serving endpoints take new requests (keeping the
  // in-flight counts of those already here), endpoints that drain or left the set take none and are
  // counted until their last request ends; its limits apply. Queued requests go to any new room at once.
  void Update(const endpoints::EndpointSet& set);
  // Requests holding a slot on the replica, whether it is still routed to or was removed.
  int InFlight(uint64_t key) const;
  // Called (on the caller's thread, without the lock) when a request queues while the router has no
  // replica at all: a cold start is due. Empty: nothing is called.
  void SetStarvedHook(std::function<void()> hook);
  // Called (on the thread that released the slot, without the lock) when the last request on a replica
  // that is out of routing ends: its drain is done. Empty: nothing is called.
  void SetDrainedHook(std::function<void()> hook);
  // Queued and ongoing requests, and in-flight counts per replica key (replicas with none are left out).
  endpoints::DeploymentLoad Load() const;

  RouterStats Stats() const;
  const std::string& deployment() const { return deployment_; }

 private:
  friend class ReplicaLease;
  struct Slot {
    std::shared_ptr<const ReplicaEndpoint> replica;
    int in_flight = 0;
    std::chrono::steady_clock::time_point unreachable_until{};  // ReportUnreachable's: avoided until then
  };
  Router(std::string deployment, int max_ongoing, int max_queued, uint64_t seed, std::string local_node);
  // Power of two choices among the slots `eligible(slot)` admits; -1 when none of them has room.
  template <typename Eligible>
  int PickAmongLocked(const Eligible& eligible) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Result AcquireOrQueue(const std::shared_ptr<Waiter>& waiter, ReplicaLease* lease, std::string_view model_id,
                        std::shared_ptr<const std::function<void()>>* starved);
  void Release(const ReplicaEndpoint& replica, size_t index_hint);
  // Takes slots_[i] out of routing, keeping its in-flight count until its last request ends.
  void RemoveSlotLocked(size_t i) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Index of the replica to use, or -1 when all are full.
  int PickLocked(std::string_view model_id = {}) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t NextRandomLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  ReplicaLease TakeLocked(int index) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Pairs queued waiters with free slots; the caller runs the returned assignments after unlocking.
  void DrainQueueLocked(std::vector<std::pair<std::shared_ptr<Waiter>, ReplicaLease>>* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static void RunAssignments(std::vector<std::pair<std::shared_ptr<Waiter>, ReplicaLease>>& assignments);

  const std::string deployment_;
  mutable Mutex mu_;
  int max_ongoing_ ABSL_GUARDED_BY(mu_);
  int max_queued_ ABSL_GUARDED_BY(mu_);
  const std::string local_node_;
  bool has_remote_ ABSL_GUARDED_BY(mu_) = false;  // some slot is on another node
  bool has_models_ ABSL_GUARDED_BY(mu_) = false;  // some slot has multiplexed models loaded
  bool scales_from_zero_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<Slot> slots_ ABSL_GUARDED_BY(mu_);
  // The latest unreachable_until of any slot: until then, picks look for slots that are not avoided.
  std::chrono::steady_clock::time_point avoid_until_ ABSL_GUARDED_BY(mu_){};
  // Leases still held on replicas that were removed, by replica key: a replica being drained is stopped
  // once its count reaches zero.
  std::unordered_map<uint64_t, int> removed_in_flight_ ABSL_GUARDED_BY(mu_);
  // Waiters in arrival order, and where each is in the queue (Cancel takes one out in O(1)).
  std::list<std::shared_ptr<Waiter>> queue_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<const Waiter*, std::list<std::shared_ptr<Waiter>>::iterator> positions_ ABSL_GUARDED_BY(mu_);
  int queued_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t rng_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const std::function<void()>> starved_hook_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const std::function<void()>> drained_hook_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ferry::router
