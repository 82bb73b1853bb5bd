#include "router/router.h"

#include <algorithm>
#include <cstdint>
#include <random>

namespace ferry::router {

ReplicaLease& ReplicaLease::operator=(ReplicaLease&& other) noexcept {
  if (this != &other) {
    Release();
    router_ = std::move(other.router_);
    replica_ = std::move(other.replica_);
    index_hint_ = other.index_hint_;
  }
  return *this;
}

void ReplicaLease::Release() {
  if (!replica_) return;
  std::shared_ptr<Router> router = std::move(router_);
  std::shared_ptr<const ReplicaEndpoint> replica = std::move(replica_);
  router_.reset();
  replica_.reset();
  router->Release(*replica, index_hint_);
}

std::shared_ptr<Router> Router::Create(std::string deployment, int max_ongoing_requests, int max_queued_requests,
                                       uint64_t seed, std::string local_node) {
  return std::shared_ptr<Router>(
      new Router(std::move(deployment), max_ongoing_requests, max_queued_requests, seed, std::move(local_node)));
}

Router::Router(std::string deployment, int max_ongoing, int max_queued, uint64_t seed, std::string local_node)
    : deployment_(std::move(deployment)),
      max_ongoing_(max_ongoing),
      max_queued_(max_queued),
      local_node_(std::move(local_node)) {
  if (seed == 0) {
    std::random_device rd;
    seed = (static_cast<uint64_t>(rd()) << 32) | rd();
  }
  rng_ = seed | 1;  // xorshift's state must not be zero
}

uint64_t Router::NextRandomLocked() {  // xorshift64
  rng_ ^= rng_ << 13;
  rng_ ^= rng_ >> 7;
  rng_ ^= rng_ << 17;
  return rng_;
}

int Router::PickLocked(std::string_view model_id) {
  if (avoid_until_ != std::chrono::steady_clock::time_point{}) {
    const std::chrono::steady_clock::time_point now = std::chrono::steady_clock::now();
    if (now >= avoid_until_) {
      avoid_until_ = {};
    } else {
      // A replica refused a connection a moment ago: any other with room first (this node's first).
      auto reachable = [now](const Slot& s) { return s.unreachable_until <= now; };
      int pick = has_remote_ ? PickAmongLocked([&](const Slot& s) { return s.replica->local && reachable(s); }) : -1;
      if (pick < 0) pick = PickAmongLocked(reachable);
      if (pick >= 0) return pick;
    }
  }
  if (!model_id.empty() && has_models_) {
    // Ray's multiplexed routing: a replica that has the model loaded; else one of those with the fewest
    // models loaded (the likeliest to load it without evicting another's); else any, below.
    int holder = PickAmongLocked([&](const Slot& s) { return s.replica->HasModel(model_id); });
    if (holder >= 0) return holder;
    size_t fewest = SIZE_MAX;
    for (const Slot& s : slots_)
      if (s.in_flight < max_ongoing_) fewest = std::min(fewest, s.replica->model_ids.size());
    if (fewest != SIZE_MAX) {
      int emptiest = PickAmongLocked([&](const Slot& s) { return s.replica->model_ids.size() == fewest; });
      if (emptiest >= 0) return emptiest;
    }
  }
  if (has_remote_) {
    // This node's replicas first, while one has room (no network hop); then any.
    int local = PickAmongLocked([](const Slot& s) { return s.replica->local; });
    if (local >= 0) return local;
    return PickAmongLocked([](const Slot&) { return true; });
  }
  const int n = static_cast<int>(slots_.size());
  if (n == 0) return -1;
  if (n == 1) return slots_[0].in_flight < max_ongoing_ ? 0 : -1;
  // Two random distinct replicas; the less loaded one wins when it has room.
  int a = static_cast<int>(NextRandomLocked() % n);
  int b = static_cast<int>(NextRandomLocked() % (n - 1));
  if (b >= a) ++b;
  int best = slots_[a].in_flight <= slots_[b].in_flight ? a : b;
  if (slots_[best].in_flight < max_ongoing_) return best;
  // Both sampled replicas are full: take the least loaded replica that has room, if any.
  best = -1;
  for (int i = 0; i < n; ++i) {
    if (slots_[i].in_flight < max_ongoing_ && (best < 0 || slots_[i].in_flight < slots_[best].in_flight)) best = i;
  }
  return best;
}

template <typename Eligible>
int Router::PickAmongLocked(const Eligible& eligible) {
  thread_local std::vector<int> candidates;
  candidates.clear();
  for (int i = 0; i < static_cast<int>(slots_.size()); ++i)
    if (eligible(slots_[i])) candidates.push_back(i);
  const int n = static_cast<int>(candidates.size());
  if (n == 0) return -1;
  int best = candidates[0];
  if (n > 1) {
    int a = static_cast<int>(NextRandomLocked() % n);
    int b = static_cast<int>(NextRandomLocked() % (n - 1));
    if (b >= a) ++b;
    best = slots_[candidates[a]].in_flight <= slots_[candidates[b]].in_flight ? candidates[a] : candidates[b];
  }
  if (slots_[best].in_flight < max_ongoing_) return best;
  best = -1;
  for (int i : candidates)
    if (slots_[i].in_flight < max_ongoing_ && (best < 0 || slots_[i].in_flight < slots_[best].in_flight)) best = i;
  return best;
}

ReplicaLease Router::TakeLocked(int index) {
  Slot& slot = slots_[index];
  ++slot.in_flight;
  return ReplicaLease(shared_from_this(), slot.replica, static_cast<size_t>(index));
}

Router::Result Router::Acquire(const std::shared_ptr<Waiter>& waiter, ReplicaLease* lease, std::string_view model_id) {
  std::shared_ptr<const std::function<void()>> starved;
  Result result = AcquireOrQueue(waiter, lease, model_id, &starved);
  if (starved) (*starved)();
  return result;
}

bool Router::TryAcquire(ReplicaLease* lease, std::string_view model_id) {
  MutexLock lock(&mu_);
  if (queued_ != 0) return false;
  int index = PickLocked(model_id);
  if (index < 0) return false;
  *lease = TakeLocked(index);
  return true;
}

void Router::SetStarvedHook(std::function<void()> hook) {
  MutexLock lock(&mu_);
  starved_hook_ = hook ? std::make_shared<const std::function<void()>>(std::move(hook)) : nullptr;
}

void Router::SetDrainedHook(std::function<void()> hook) {
  MutexLock lock(&mu_);
  drained_hook_ = hook ? std::make_shared<const std::function<void()>>(std::move(hook)) : nullptr;
}

Router::Result Router::AcquireOrQueue(const std::shared_ptr<Waiter>& waiter, ReplicaLease* lease,
                                      std::string_view model_id,
                                      std::shared_ptr<const std::function<void()>>* starved) {
  MutexLock lock(&mu_);
  // FIFO: while others wait, a newcomer queues behind them.
  if (queued_ == 0) {
    int index = PickLocked(model_id);
    if (index >= 0) {
      *lease = TakeLocked(index);
      return Result::kAssigned;
    }
  }
  if (max_queued_ >= 0 && queued_ >= max_queued_) return Result::kRejected;
  positions_.emplace(waiter.get(), queue_.insert(queue_.end(), waiter));
  ++queued_;
  if (slots_.empty()) *starved = starved_hook_;
  return Result::kQueued;
}

bool Router::Cancel(Waiter* waiter) {
  MutexLock lock(&mu_);
  auto it = positions_.find(waiter);
  if (it == positions_.end()) return false;
  queue_.erase(it->second);
  positions_.erase(it);
  --queued_;
  return true;
}

void Router::DrainQueueLocked(std::vector<std::pair<std::shared_ptr<Waiter>, ReplicaLease>>* out) {
  while (!queue_.empty()) {
    int index = PickLocked();
    if (index < 0) return;
    std::shared_ptr<Waiter> waiter = std::move(queue_.front());
    queue_.pop_front();
    positions_.erase(waiter.get());
    --queued_;
    out->emplace_back(std::move(waiter), TakeLocked(index));
  }
}

void Router::RunAssignments(std::vector<std::pair<std::shared_ptr<Waiter>, ReplicaLease>>& assignments) {
  for (auto& [waiter, lease] : assignments) waiter->OnAssigned(std::move(lease));
}

void Router::Release(const ReplicaEndpoint& replica, size_t index_hint) {
  std::vector<std::pair<std::shared_ptr<Waiter>, ReplicaLease>> assignments;
  std::shared_ptr<const std::function<void()>> drained;
  {
    MutexLock lock(&mu_);
    Slot* slot = nullptr;
    if (index_hint < slots_.size() && slots_[index_hint].replica->key == replica.key) {
      slot = &slots_[index_hint];
    } else {
      for (Slot& s : slots_)
        if (s.replica->key == replica.key) slot = &s;
    }
    if (slot) {
      --slot->in_flight;
    } else if (auto it = removed_in_flight_.find(replica.key); it != removed_in_flight_.end() && --it->second <= 0) {
      removed_in_flight_.erase(it);
      drained = drained_hook_;
    }
    DrainQueueLocked(&assignments);
  }
  RunAssignments(assignments);
  if (drained) (*drained)();
}

void Router::AddReplica(std::shared_ptr<const ReplicaEndpoint> replica) {
  std::vector<std::pair<std::shared_ptr<Waiter>, ReplicaLease>> assignments;
  {
    MutexLock lock(&mu_);
    for (const Slot& s : slots_)
      if (s.replica->key == replica->key) return;
    has_models_ = has_models_ || !replica->model_ids.empty();
    slots_.push_back(Slot{std::move(replica), 0});
    DrainQueueLocked(&assignments);
  }
  RunAssignments(assignments);
}

void Router::RemoveSlotLocked(size_t i) {
  if (slots_[i].in_flight > 0) removed_in_flight_[slots_[i].replica->key] = slots_[i].in_flight;
  slots_.erase(slots_.begin() + static_cast<long>(i));
}

void Router::RemoveReplica(uint64_t key) {
  MutexLock lock(&mu_);
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (slots_[i].replica->key != key) continue;
    RemoveSlotLocked(i);
    return;
  }
}

void Router::ReportUnreachable(uint64_t key) {
  MutexLock lock(&mu_);
  for (Slot& slot : slots_) {
    if (slot.replica->key != key) continue;
    slot.unreachable_until = std::chrono::steady_clock::now() + std::chrono::seconds(1);
    avoid_until_ = std::max(avoid_until_, slot.unreachable_until);
    return;
  }
}

void Router::Update(const endpoints::EndpointSet& set) {
  std::vector<std::pair<std::shared_ptr<Waiter>, ReplicaLease>> assignments;
  {
    MutexLock lock(&mu_);
    max_ongoing_ = set.max_ongoing_requests;
    max_queued_ = set.max_queued_requests;
    scales_from_zero_ = set.scales_from_zero;
    std::unordered_map<uint64_t, const endpoints::Endpoint*> serving;
    for (const endpoints::Endpoint& e : set.endpoints)
      if (e.state == endpoints::EndpointState::kServing) serving.emplace(e.key, &e);
    for (size_t i = slots_.size(); i-- > 0;) {
      auto it = serving.find(slots_[i].replica->key);
      if (it == serving.end()) {
        RemoveSlotLocked(i);
      } else {
        if (it->second->model_ids != slots_[i].replica->model_ids) {  // leases keep the endpoint they have
          auto updated = std::make_shared<ReplicaEndpoint>(*slots_[i].replica);
          updated->model_ids = it->second->model_ids;
          slots_[i].replica = std::move(updated);
        }
        serving.erase(it);  // routed already: keeps its slot and its count
      }
    }
    for (const endpoints::Endpoint& e : set.endpoints) {  // in the set's order, so routing is repeatable
      if (!serving.count(e.key)) continue;
      auto replica = std::make_shared<ReplicaEndpoint>();
      replica->replica_id = e.replica_id;
      replica->socket_path = e.address;
      replica->key = e.key;
      replica->local = e.node_id.empty() || e.node_id == local_node_;
      replica->model_ids = e.model_ids;
      int in_flight = 0;
      if (auto back = removed_in_flight_.find(e.key); back != removed_in_flight_.end()) {
        in_flight = back->second;
        removed_in_flight_.erase(back);
      }
      slots_.push_back(Slot{std::move(replica), in_flight});
    }
    has_remote_ = has_models_ = false;
    for (const Slot& s : slots_) {
      has_remote_ = has_remote_ || !s.replica->local;
      has_models_ = has_models_ || !s.replica->model_ids.empty();
    }
    DrainQueueLocked(&assignments);
  }
  RunAssignments(assignments);
}

endpoints::DeploymentLoad Router::Load() const {
  MutexLock lock(&mu_);
  endpoints::DeploymentLoad load;
  load.queued = queued_;
  load.in_flight.reserve(slots_.size() + removed_in_flight_.size());
  for (const Slot& slot : slots_) {
    load.ongoing += slot.in_flight;
    if (slot.in_flight > 0) load.in_flight.emplace_back(slot.replica->key, slot.in_flight);
  }
  for (const auto& [key, n] : removed_in_flight_) {
    load.ongoing += n;
    load.in_flight.emplace_back(key, n);
  }
  return load;
}

void Router::SetLimits(int max_ongoing_requests, int max_queued_requests) {
  std::vector<std::pair<std::shared_ptr<Waiter>, ReplicaLease>> assignments;
  {
    MutexLock lock(&mu_);
    max_ongoing_ = max_ongoing_requests;
    max_queued_ = max_queued_requests;
    DrainQueueLocked(&assignments);
  }
  RunAssignments(assignments);
}

int Router::InFlight(uint64_t key) const {
  MutexLock lock(&mu_);
  for (const Slot& slot : slots_)
    if (slot.replica->key == key) return slot.in_flight;
  auto it = removed_in_flight_.find(key);
  return it == removed_in_flight_.end() ? 0 : it->second;
}

RouterStats Router::Stats() const {
  MutexLock lock(&mu_);
  RouterStats s;
  s.replicas = static_cast<int>(slots_.size());
  s.scales_from_zero = scales_from_zero_;
  for (const auto& [key, n] : removed_in_flight_) s.ongoing += n;
  for (const Slot& slot : slots_) s.ongoing += slot.in_flight;
  s.queued = queued_;
  return s;
}

}  // namespace ferry::router
