#include "cluster/cluster_launcher.h"

#include <boost/asio/post.hpp>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "cluster/placement.h"
#include "common/common.h"
#include "node/control_channel.h"
#include "node/node_agent.h"

namespace ferry::cluster {

using json = nlohmann::json;
namespace asio = boost::asio;

// ---- The documents ----

std::string ReplicaReportJson(const ReplicaReport& r) {
  json j = {{"node", r.node}, {"state", r.ready ? "READY" : r.exited ? "EXITED" : "STARTING"}};
  if (r.ready) {
    j["socket"] = r.socket;
    j["tcp_address"] = r.tcp_address;
    j["pid"] = r.pid;
  }
  if (r.exited) {
    j["was_ready"] = r.was_ready;
    j["message"] = r.message;
  }
  return j.dump();
}

std::optional<ReplicaReport> ParseReplicaReport(const std::string& text) {
  json j = json::parse(text, nullptr, false);
  if (!j.is_object()) return std::nullopt;
  try {
    ReplicaReport r;
    r.node = j.at("node").get<std::string>();
    const std::string state = j.at("state").get<std::string>();
    r.ready = state == "READY";
    r.exited = state == "EXITED";
    if (r.ready) {
      r.socket = j.at("socket").get<std::string>();
      r.tcp_address = j.at("tcp_address").get<std::string>();
      r.pid = j.at("pid").get<pid_t>();
    }
    if (r.exited) {
      r.was_ready = j.at("was_ready").get<bool>();
      r.message = j.at("message").get<std::string>();
    }
    return r;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::string AssignmentJson(const Assignment& a) {
  json j = {{"spec", spec::ToJson(a.spec)}, {"bundle_nodes", a.bundle_nodes}};
  if (a.stop_timeout_ms) j["stop_timeout_ms"] = *a.stop_timeout_ms;
  return j.dump();
}

std::optional<Assignment> ParseAssignment(const std::string& node, const std::string& text) {
  json j = json::parse(text, nullptr, false);
  if (!j.is_object() || !j.contains("spec")) return std::nullopt;
  absl::StatusOr<spec::ReplicaSpec> s = spec::ReplicaSpecFromJson(j["spec"]);
  if (!s.ok()) return std::nullopt;
  Assignment a;
  a.node = node;
  a.spec = std::move(*s);
  try {
    if (j.contains("bundle_nodes")) a.bundle_nodes = j["bundle_nodes"].get<std::vector<std::string>>();
    if (j.contains("stop_timeout_ms")) a.stop_timeout_ms = j["stop_timeout_ms"].get<int64_t>();
  } catch (const std::exception&) {
    return std::nullopt;
  }
  return a;
}

// ---- Writing: a thread that applies the latest wanted value of each key ----

// Keys this node wants in etcd, written by a thread of its own so that the controller's thread never waits
// on etcd. Fenced: the leader's writes, each batch a transaction that holds only while this node leads (a
// deposed leader's pending writes are dropped). Leased: a node's reports, bound to its lease and written
// again under a new lease when the node registers again after an outage.
class EtcdWriter {
 public:
  enum class Mode { kFenced, kLeased };
  EtcdWriter(ClusterMember* member, Mode mode) : member_(member), mode_(mode) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~EtcdWriter() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  void Put(const std::string& key, std::string value) { Set(key, std::move(value)); }
  void Delete(const std::string& key) { Set(key, std::nullopt); }
  // Stops keeping the value of `key` (someone else removed it); a pending delete still goes out.
  void Forget(const std::string& key) {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = entries_.find(key); it != entries_.end() && it->second.value) entries_.erase(it);
  }

 private:
  struct Entry {
    std::optional<std::string> value;  // nullopt: delete
    bool dirty = true;
    int64_t written_lease = 0;
  };
  void Set(const std::string& key, std::optional<std::string> value) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      Entry& e = entries_[key];
      e.value = std::move(value);
      e.dirty = true;
      wanted_ = true;
    }
    wake_.notify_all();
  }

  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    bool more = false;  // the last batch left dirty entries behind: write them without waiting
    while (!stopping_) {
      // What was set while the last transaction was out goes at once (not at the next poll, which is for
      // a lease that changed).
      if (!more) wake_.wait_for(lock, std::chrono::milliseconds(200), [this] { return stopping_ || wanted_; });
      wanted_ = more = false;
      if (stopping_) break;
      const int64_t lease = member_->lease();
      std::vector<std::pair<std::string, std::optional<std::string>>> batch;
      for (auto& [key, e] : entries_) {
        if (mode_ == Mode::kLeased && e.value && e.written_lease != lease) e.dirty = true;  // registered again
        if (!e.dirty) continue;
        if (batch.size() == 100) {  // etcd's max-txn-ops is 128
          more = true;
          break;
        }
        batch.emplace_back(key, e.value);
      }
      if (batch.empty()) continue;
      if (mode_ == Mode::kLeased && lease == 0) {  // not registered now: once it is
        more = false;
        continue;
      }
      const int64_t fence = member_->fence();
      if (mode_ == Mode::kFenced && fence == 0) {
        FERRY_LOG(kWarning, "cluster", "dropping ", batch.size(), " writes: this node no longer leads");
        for (const auto& [key, value] : batch) entries_.erase(key);
        continue;
      }
      lock.unlock();
      std::vector<TxnOp> ops;
      for (const auto& [key, value] : batch)
        ops.push_back(value ? TxnOp::Put(key, *value, mode_ == Mode::kLeased ? lease : 0) : TxnOp::Delete(key));
      std::vector<Compare> guard;
      if (mode_ == Mode::kFenced) guard.push_back(Compare::CreateRevision(member_->leader_key(), fence));
      absl::StatusOr<TxnResult> txn = member_->etcd().Txn(guard, ops);
      lock.lock();
      if (!txn.ok()) {
        FERRY_LOG(kDebug, "cluster", "etcd write failed (", Message(txn.status()), "); trying again");
        wake_.wait_for(lock, std::chrono::milliseconds(300));
        continue;
      }
      for (const auto& [key, value] : batch) {
        auto it = entries_.find(key);
        if (it == entries_.end() || it->second.value != value) continue;  // changed meanwhile: written next
        if (!txn->succeeded || mode_ == Mode::kFenced || !value) {
          entries_.erase(it);  // done (or, fenced out, never to be done by this node)
        } else {
          it->second.dirty = false;
          it->second.written_lease = lease;
        }
      }
      if (!txn->succeeded) FERRY_LOG(kWarning, "cluster", "this node no longer leads: its writes were refused");
    }
  }

  ClusterMember* const member_;
  const Mode mode_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::map<std::string, Entry> entries_;  // under mu_
  bool wanted_ = false;                   // under mu_: something was set since the loop last looked
  bool stopping_ = false;
  std::thread thread_;
};

// ---- Reading: a mirror of a prefix, kept by a watch ----

// The keys under a prefix and their values, kept on the io thread: a thread reads them, then follows a
// watch, posting each change (and a full read again whenever the watch breaks: etcd went away, or the
// revision was compacted).
class PrefixMirror {
 public:
  using Map = std::map<std::string, std::string>;  // key without the prefix -> value
  struct Callbacks {
    std::function<void()> on_change;  // after each batch of changes
    // Optional, for an owner that indexes the keys as they change: every key of a full read (after
    // on_reset), then each key a watch event changes (value null: deleted).
    std::function<void()> on_reset;
    std::function<void(const std::string& key, const std::string* value)> on_key;
  };
  PrefixMirror(asio::io_context& io, Etcd* etcd, std::string prefix, Callbacks callbacks)
      : io_(io), etcd_(etcd), prefix_(std::move(prefix)), callbacks_(std::move(callbacks)) {}
  ~PrefixMirror() {
    stop_.store(true);
    { std::lock_guard<std::mutex> lock(mu_); }
    wake_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  void Start() {
    thread_ = std::thread([this] { Loop(); });
  }
  // Reads the prefix now, on the calling (io) thread.
  absl::Status ReadNow() {
    absl::StatusOr<RangeResult> r = etcd_->GetPrefix(prefix_);
    if (!r.ok()) return r.status();
    Replace(*r);
    return absl::OkStatus();
  }
  const Map& map() const { return map_; }
  bool synced() const { return revision_ > 0; }
  // The etcd revision the mirror shows (0: not read yet).
  int64_t revision() const { return revision_; }

 private:
  void Replace(const RangeResult& r) {
    if (r.revision < revision_) return;
    map_.clear();
    if (callbacks_.on_reset) callbacks_.on_reset();
    for (const KeyValue& kv : r.kvs) {
      std::string key = kv.key.substr(prefix_.size());
      const std::string& value = map_[key] = kv.value;
      if (callbacks_.on_key) callbacks_.on_key(key, &value);
    }
    revision_ = r.revision;
  }
  void Apply(int64_t revision, const std::vector<WatchEvent>& events) {
    if (revision <= revision_) return;
    for (const WatchEvent& e : events) {
      if (e.kv.key.size() < prefix_.size()) continue;
      std::string key = e.kv.key.substr(prefix_.size());
      if (e.type == WatchEvent::Type::kPut) {
        const std::string& value = map_[key] = e.kv.value;
        if (callbacks_.on_key) callbacks_.on_key(key, &value);
      } else {
        map_.erase(key);
        if (callbacks_.on_key) callbacks_.on_key(key, nullptr);
      }
    }
    revision_ = revision;
  }
  void Post(std::function<void()> f) {
    asio::post(io_, [weak = std::weak_ptr<bool>(alive_), f = std::move(f), this] {
      if (weak.expired()) return;
      f();
      callbacks_.on_change();
    });
  }
  void Loop() {
    while (!stop_.load()) {
      absl::StatusOr<RangeResult> r = etcd_->GetPrefix(prefix_);
      if (r.ok()) {
        Post([this, read = *r] { Replace(read); });
        absl::Status watched =
            etcd_->Watch(prefix_, r->revision + 1, stop_, [this](int64_t revision, const std::vector<WatchEvent>& ev) {
              Post([this, revision, ev] { Apply(revision, ev); });
            });
        if (stop_.load()) return;
        FERRY_LOG(kDebug, "cluster", "the watch of ", prefix_, " ended (", Message(watched), "); reading again");
      }
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait_for(lock, std::chrono::milliseconds(500), [this] { return stop_.load(); });
    }
  }

  asio::io_context& io_;
  Etcd* const etcd_;
  const std::string prefix_;
  const Callbacks callbacks_;
  Map map_;  // io thread
  int64_t revision_ = 0;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable wake_;
  std::thread thread_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

// ---- The leader's launcher ----

namespace {

constexpr std::string_view kAssign = "assign/";
constexpr std::string_view kReplicas = "replicas/";
constexpr std::string_view kMembers = "members/";
constexpr std::string_view kAlive = "alive/";
constexpr std::string_view kDraining = "draining/";

ResourceSet ResourcesOf(const json& declared) {
  ResourceSet out;
  if (!declared.is_object()) return out;
  for (const auto& [k, v] : declared.items())
    if (v.is_number()) out[k] = v.get<double>();
  return out;
}

ReplicaRequest RequestOf(const spec::ReplicaSpec& s) {
  ReplicaRequest r;
  r.replica_id = s.replica_id;
  r.deployment = StrCat(s.application, "/", s.deployment);
  r.version = s.version;
  r.resources = s.placement.resources;
  r.bundles = s.placement.bundles;
  r.strategy = ParseBundleStrategy(s.placement.strategy).value_or(BundleStrategy::kPack);
  r.max_replicas_per_node = s.placement.max_replicas_per_node;
  r.label_selector = s.placement.label_selector;
  return r;
}

// What an assignment takes on each node it occupies.
PlacedReplica PlacedOf(const Assignment& a) {
  PlacedReplica p;
  p.replica_id = a.spec.replica_id;
  p.deployment = StrCat(a.spec.application, "/", a.spec.deployment);
  p.version = a.spec.version;
  p.node_id = a.node;
  p.leaving = a.stop_timeout_ms.has_value();
  if (a.spec.placement.bundles.empty() || a.bundle_nodes.size() != a.spec.placement.bundles.size()) {
    p.taken[a.node] = a.spec.placement.resources;
  } else {
    for (size_t i = 0; i < a.bundle_nodes.size(); ++i)
      for (const auto& [k, v] : a.spec.placement.bundles[i]) p.taken[a.bundle_nodes[i]][k] += v;
  }
  return p;
}

}  // namespace

ClusterLauncher::ClusterLauncher(asio::io_context& io, ClusterMember* member, node::ReplicaListener* listener)
    : io_(io),
      member_(member),
      listener_(listener),
      placement_(std::make_unique<PlacementState>()),
      catch_up_timer_(io),
      writer_(std::make_unique<EtcdWriter>(member, EtcdWriter::Mode::kFenced)) {
  PrefixMirror::Callbacks callbacks;
  callbacks.on_change = [this] {
    Reconcile();
    if (caught_up_) CheckCaughtUp(false);
  };
  callbacks.on_reset = [this] { OnReset(); };
  callbacks.on_key = [this](const std::string& key, const std::string* value) { OnKey(key, value); };
  mirror_ = std::make_unique<PrefixMirror>(io, &member->etcd(), member->options().prefix, std::move(callbacks));
  mirror_->Start();
}

void ClusterLauncher::WhenCaughtUp(int64_t revision, std::function<void(bool)> then) {
  catch_up_revision_ = revision;
  caught_up_ = std::move(then);
  catch_up_timer_.expires_after(std::chrono::seconds(1));
  catch_up_timer_.async_wait([this, weak = std::weak_ptr<bool>(alive_token_)](const boost::system::error_code& ec) {
    if (!ec && !weak.expired() && caught_up_) CheckCaughtUp(true);
  });
  asio::post(io_, [this, weak = std::weak_ptr<bool>(alive_token_)] {
    if (!weak.expired() && caught_up_) CheckCaughtUp(false);
  });
}

void ClusterLauncher::CheckCaughtUp(bool timed_out) {
  const bool current = mirror_->revision() >= catch_up_revision_;
  if (!current && !timed_out) return;
  if (!current)
    FERRY_LOG(kWarning, "cluster", "the watch of etcd is still behind after 1 s (at revision ", mirror_->revision(),
              ", not ", catch_up_revision_, ")");
  catch_up_timer_.cancel();
  std::function<void(bool)> then = std::move(caught_up_);
  caught_up_ = nullptr;
  then(current);
}

ClusterLauncher::~ClusterLauncher() {
  mirror_.reset();  // its thread first: nothing more is posted
  for (auto& [id, t] : tracked_)
    if (t.control) t.control->Close();
}

std::string ClusterLauncher::AssignKey(const std::string& node, const std::string& replica_id) const {
  return StrCat(prefix(), kAssign, node, "/", replica_id);
}

std::string ClusterLauncher::ReportKey(const std::string& replica_id) const {
  return StrCat(prefix(), kReplicas, replica_id);
}

void ClusterLauncher::OnReset() {
  members_.clear();
  alive_.clear();
  draining_.clear();
  assigned_.clear();
  reports_.clear();
  clearing_.clear();
  placement_->Clear();
  for (auto& [id, t] : tracked_) {
    placement_->Set(PlacedOf(t.assignment));
    dirty_.insert(id);
  }
  nodes_stale_ = liveness_changed_ = true;
}

void ClusterLauncher::OnKey(const std::string& key, const std::string* value) {
  if (!value) clearing_.erase(key);  // a deletion asked for has happened
  auto node_of = [&](std::string_view prefix) { return key.substr(prefix.size()); };
  if (key.starts_with(kMembers)) {
    std::optional<NodeInfo> n = value ? NodeFromRecord(*value) : std::nullopt;
    if (n)
      members_[node_of(kMembers)] = std::move(*n);
    else
      members_.erase(node_of(kMembers));
    nodes_stale_ = true;
  } else if (key.starts_with(kAlive)) {
    if (value)
      alive_.insert(node_of(kAlive));
    else
      alive_.erase(node_of(kAlive));
    nodes_stale_ = liveness_changed_ = true;
  } else if (key.starts_with(kDraining)) {
    if (value)
      draining_.insert(node_of(kDraining));
    else
      draining_.erase(node_of(kDraining));
    nodes_stale_ = true;
  } else if (key.starts_with(kAssign)) {
    const std::string rest = node_of(kAssign);
    const size_t slash = rest.find('/');
    if (slash == std::string::npos) return;
    const std::string id = rest.substr(slash + 1);
    std::optional<Assignment> a = value ? ParseAssignment(rest.substr(0, slash), *value) : std::nullopt;
    if (a && a->spec.replica_id == id) {
      if (!tracked_.contains(id)) placement_->Set(PlacedOf(*a));
      assigned_[id] = std::move(*a);
    } else {
      assigned_.erase(id);
      if (!tracked_.contains(id)) placement_->Remove(id);
    }
    dirty_.insert(id);
  } else if (key.starts_with(kReplicas)) {
    const std::string id = node_of(kReplicas);
    std::optional<ReplicaReport> r = value ? ParseReplicaReport(*value) : std::nullopt;
    if (r)
      reports_[id] = std::move(*r);
    else
      reports_.erase(id);
    dirty_.insert(id);
  }
}

void ClusterLauncher::RefreshNodes() {
  if (!nodes_stale_) return;
  nodes_stale_ = false;
  std::vector<PlacementNode> nodes;
  nodes.reserve(members_.size());
  for (const auto& [id, n] : members_)
    nodes.push_back({id, ResourcesOf(n.resources), n.labels, alive_.contains(id) && !draining_.contains(id)});
  placement_->SetNodes(std::move(nodes));
}

absl::Status ClusterLauncher::StartReplica(const spec::ReplicaSpec& spec) {
  if (!member_->leading())
    return absl::AbortedError("this node no longer leads the cluster: the next leader starts the replica");
  RefreshNodes();
  const ReplicaRequest request = RequestOf(spec);
  Placement where = placement_->Place(request);  // counts it placed when it fits
  if (where.node_id.empty())
    return absl::ResourceExhaustedError(
        placement_->UnschedulableMessage(spec.application, spec.deployment, 1, request, where.why_not));
  Tracked& t = tracked_[spec.replica_id];
  t.assignment.node = where.node_id;
  t.assignment.spec = spec;
  t.assignment.bundle_nodes = where.bundle_nodes;
  writer_->Put(AssignKey(t.assignment.node, spec.replica_id), AssignmentJson(t.assignment));
  FERRY_LOG(kInfo, "cluster", "replica ", spec.replica_id, " goes to node ", t.assignment.node);
  return absl::OkStatus();
}

void ClusterLauncher::StopReplica(const std::string& replica_id, std::chrono::milliseconds timeout) {
  auto it = tracked_.find(replica_id);
  if (it == tracked_.end()) {
    // Not tracked (a previous leader's, not taken over): ask its node to stop it if it is assigned.
    if (auto a = assigned_.find(replica_id); a != assigned_.end()) {
      Assignment stop = a->second;
      stop.stop_timeout_ms = timeout.count();
      writer_->Put(AssignKey(stop.node, replica_id), AssignmentJson(stop));
    }
    return;
  }
  Tracked& t = it->second;
  if (!member_->leading()) {
    // Another node leads (or will): what runs where is its business now. The controller forgets it.
    Lost(replica_id, "handed over: this node no longer leads the cluster");
    return;
  }
  t.assignment.stop_timeout_ms = timeout.count();
  placement_->Set(PlacedOf(t.assignment));  // leaving: its replacement spreads as if it were gone
  writer_->Put(AssignKey(t.assignment.node, replica_id), AssignmentJson(t.assignment));
  dirty_.insert(replica_id);
  asio::post(io_, [weak = std::weak_ptr<bool>(alive_token_), this] {
    if (!weak.expired()) Reconcile();  // its node may be gone already
  });
}

void ClusterLauncher::Forget(const std::string& replica_id) {
  auto it = tracked_.find(replica_id);
  if (it == tracked_.end()) return;
  if (it->second.control) it->second.control->Close();
  tracked_.erase(it);
  if (!assigned_.contains(replica_id)) placement_->Remove(replica_id);
}

void ClusterLauncher::Lost(const std::string& replica_id, const std::string& message) {
  auto it = tracked_.find(replica_id);
  if (it == tracked_.end()) return;
  const bool was_ready = it->second.reported_ready;
  Forget(replica_id);
  asio::post(io_, [weak = std::weak_ptr<bool>(alive_token_), this, replica_id, was_ready, message] {
    if (!weak.expired()) listener_->OnReplicaExited(replica_id, was_ready, message);
  });
}

void ClusterLauncher::OpenControl(Tracked& t, const ReplicaReport& report) {
  if (control_override_) return;
  // This node's replicas by their Unix socket; other nodes' over TCP.
  const std::string& address = report.node == member_->options().node_id ? report.socket : report.tcp_address;
  t.control = std::make_shared<node::ControlChannel>(io_, address, nullptr, "controller");
  t.control->Start();
}

void ClusterLauncher::Clear(const std::string& key) {
  if (member_->leading() && clearing_.insert(key).second) writer_->Delete(key);
}

void ClusterLauncher::Reconcile() {
  if (!mirror_->synced()) return;
  RefreshNodes();
  struct Event {
    std::string id;
    enum { kReady, kExited, kLost } what;
    ReplicaReport report;
    std::string why;
  };
  std::vector<Event> events;
  // A node's lease lapsed: every replica placed on it is lost (and, leading, its keys go; the node, if it
  // comes back, stops what it still runs).
  if (liveness_changed_) {
    liveness_changed_ = false;
    for (const auto& [id, t] : tracked_)
      if (!alive_.contains(t.assignment.node))
        events.push_back({id, Event::kLost, {}, StrCat("node ", t.assignment.node, " is gone (its lease lapsed)")});
    if (took_over_)
      for (const auto& [id, a] : assigned_)
        if (!tracked_.contains(id) && !alive_.contains(a.node)) Clear(StrCat(prefix(), kAssign, a.node, "/", id));
  }
  std::set<std::string> dirty;
  dirty.swap(dirty_);
  for (const std::string& id : dirty) {
    auto report = reports_.find(id);
    auto t = tracked_.find(id);
    if (t != tracked_.end()) {
      if (report != reports_.end() && report->second.exited)
        events.push_back({id, Event::kExited, report->second, ""});
      else if (report != reports_.end() && report->second.ready && !t->second.reported_ready)
        events.push_back({id, Event::kReady, report->second, ""});
      else if (report == reports_.end() && t->second.reported_ready)
        events.push_back({id, Event::kLost, {}, StrCat("its report on node ", t->second.assignment.node, " vanished")});
      continue;
    }
    if (!took_over_) continue;
    // Nobody tracks it: an ended replica's keys, and an assignment to a dead node, are cleared.
    auto a = assigned_.find(id);
    const bool ended = report != reports_.end() && report->second.exited;
    if (ended) Clear(ReportKey(id));
    if (a != assigned_.end() && (ended || !alive_.contains(a->second.node))) Clear(AssignKey(a->second.node, id));
  }
  for (const Event& e : events) {
    auto it = tracked_.find(e.id);
    if (it == tracked_.end()) continue;
    const std::string node = it->second.assignment.node;
    if (e.what == Event::kReady) {
      it->second.reported_ready = true;
      OpenControl(it->second, e.report);
      // The replica's Unix socket on its node: each node's publisher routes other nodes' over TCP.
      listener_->OnReplicaReady(e.id, e.report.socket, e.report.tcp_address, e.report.pid);
      continue;
    }
    const bool was_ready = e.what == Event::kExited ? e.report.was_ready : it->second.reported_ready;
    Forget(e.id);
    Clear(AssignKey(node, e.id));  // if its node comes back, it stops the replica
    Clear(ReportKey(e.id));
    if (e.what == Event::kLost) FERRY_LOG(kWarning, "cluster", "replica ", e.id, " is lost: ", e.why);
    listener_->OnReplicaExited(e.id, was_ready, e.what == Event::kExited ? e.report.message : e.why);
  }
}

std::vector<node::ExistingReplica> ClusterLauncher::Existing() {
  // The mirror has reached the revision WhenCaughtUp awaited (the election): it holds what is to take over.
  const bool current = catch_up_revision_ > 0 && mirror_->revision() >= catch_up_revision_;
  catch_up_revision_ = 0;
  if (!current) {
    if (absl::Status read = mirror_->ReadNow(); !read.ok())
      FERRY_LOG(kWarning, "cluster", "cannot read the cluster's replicas now (", Message(read),
                "); taking over what the last read showed");
  }
  took_over_ = true;
  std::vector<node::ExistingReplica> out;
  for (const auto& [id, a] : assigned_) {
    if (a.stop_timeout_ms || !alive_.contains(a.node) || tracked_.contains(id)) continue;
    auto report = reports_.find(id);
    if (report != reports_.end() && report->second.exited) continue;  // cleared by Reconcile
    node::ExistingReplica e;
    e.spec = a.spec;
    Tracked& t = tracked_[id];
    t.assignment = a;
    if (report != reports_.end() && report->second.ready) {
      const ReplicaReport& r = report->second;
      e.ready = true;
      e.address = r.socket;
      e.tcp_address = r.tcp_address;
      e.pid = r.pid;
      t.reported_ready = true;
      OpenControl(t, r);
    }
    out.push_back(std::move(e));
  }
  // What nobody took over is cleared by the next reconcile: every replica counts as changed.
  for (const auto& [id, a] : assigned_) dirty_.insert(id);
  for (const auto& [id, r] : reports_) dirty_.insert(id);
  liveness_changed_ = true;
  asio::post(io_, [weak = std::weak_ptr<bool>(alive_token_), this] {
    if (!weak.expired()) Reconcile();
  });
  return out;
}

node::ReplicaLocation ClusterLauncher::LocationOf(const std::string& replica_id) const {
  auto it = tracked_.find(replica_id);
  if (it == tracked_.end()) return {};
  node::ReplicaLocation where;
  where.node_id = it->second.assignment.node;
  if (auto member = members_.find(where.node_id); member != members_.end()) where.node_ip = member->second.address;
  return where;
}

bool ClusterLauncher::Evicting(const std::string& replica_id) const {
  if (draining_.empty()) return false;  // the common case: asked per replica per tick
  auto it = tracked_.find(replica_id);
  return it != tracked_.end() && draining_.contains(it->second.assignment.node);
}

void ClusterLauncher::CheckHealth(const std::string& replica_id, Done done) {
  if (control_override_) return control_override_->CheckHealth(replica_id, std::move(done));
  auto it = tracked_.find(replica_id);
  if (it == tracked_.end() || !it->second.control)
    return done(absl::NotFoundError(StrCat("replica ", replica_id, " is not running")));
  it->second.control->Call(transport::FrameKind::kHealth, {}, std::move(done));
}

void ClusterLauncher::Reconfigure(const std::string& replica_id, const spec::ReplicaUpdate& update, Done done) {
  if (control_override_) return control_override_->Reconfigure(replica_id, update, std::move(done));
  auto it = tracked_.find(replica_id);
  if (it == tracked_.end() || !it->second.control)
    return done(absl::NotFoundError(StrCat("replica ", replica_id, " is not running")));
  it->second.control->Call(transport::FrameKind::kReconfigure, spec::ToJson(update).dump(), std::move(done));
}

void ClusterLauncher::GetStats(const std::string& replica_id, StatsDone done) {
  if (control_override_) return control_override_->GetStats(replica_id, std::move(done));
  auto it = tracked_.find(replica_id);
  if (it == tracked_.end() || !it->second.control)
    return done(absl::NotFoundError(StrCat("replica ", replica_id, " is not running")));
  node::GetStatsOver(it->second.control, std::move(done));
}

// ---- Every node's worker ----

absl::StatusOr<std::unique_ptr<NodeWorker>> NodeWorker::Create(asio::io_context& io, ClusterMember* member,
                                                               std::string ferry_binary, std::string run_dir,
                                                               endpoints::Publisher* publisher) {
  std::unique_ptr<NodeWorker> worker(new NodeWorker(io, member));
  absl::StatusOr<std::unique_ptr<node::NodeAgent>> agent =
      node::NodeAgent::Create(io, std::move(ferry_binary), std::move(run_dir), worker.get(), publisher);
  if (!agent.ok()) return agent.status();
  worker->agent_ = std::move(*agent);
  return worker;
}

std::unique_ptr<NodeWorker> NodeWorker::CreateWith(asio::io_context& io, ClusterMember* member,
                                                   const LauncherFactory& make_launcher) {
  std::unique_ptr<NodeWorker> worker(new NodeWorker(io, member));
  worker->agent_ = make_launcher(worker.get());
  return worker;
}

NodeWorker::NodeWorker(asio::io_context& io, ClusterMember* member) : io_(io), member_(member) {}

NodeWorker::~NodeWorker() {
  mirror_.reset();
  writer_.reset();
  agent_.reset();  // kills what is left
}

std::string NodeWorker::ReportKey(const std::string& replica_id) const {
  return StrCat(member_->options().prefix, kReplicas, replica_id);
}

void NodeWorker::Start() {
  writer_ = std::make_unique<EtcdWriter>(member_, EtcdWriter::Mode::kLeased);
  PrefixMirror::Callbacks callbacks;
  callbacks.on_change = [this] { Reconcile(); };
  callbacks.on_reset = [this] {
    for (const auto& [id, a] : assigned_) dirty_.insert(id);
    assigned_.clear();
  };
  callbacks.on_key = [this](const std::string& id, const std::string* value) {
    dirty_.insert(id);
    if (!value) {
      assigned_.erase(id);
      return;
    }
    std::optional<Assignment> a = ParseAssignment(member_->options().node_id, *value);
    if (!a || a->spec.replica_id != id) {
      FERRY_LOG(kWarning, "cluster", "ignoring an assignment this node cannot read: ", id);
      assigned_.erase(id);
      return;
    }
    assigned_[id] = std::move(*a);
  };
  mirror_ = std::make_unique<PrefixMirror>(io_, &member_->etcd(),
                                           StrCat(member_->options().prefix, kAssign, member_->options().node_id, "/"),
                                           std::move(callbacks));
  mirror_->Start();
}

size_t NodeWorker::live_replicas() const { return agent_->live_replicas(); }

void NodeWorker::Reconcile() {
  if (!mirror_->synced() || stopping_all_) return;
  std::set<std::string> dirty;
  dirty.swap(dirty_);
  for (const std::string& id : dirty) {
    auto found = assigned_.find(id);
    if (found == assigned_.end()) continue;  // unassigned: stopped below
    const Assignment& a = found->second;
    if (finished_.contains(id)) continue;  // it ran here and ended: the leader clears it
    auto it = running_.find(id);
    if (a.stop_timeout_ms) {
      if (it != running_.end() && !it->second.stopping) {
        it->second.stopping = true;
        agent_->StopReplica(id, std::chrono::milliseconds(*a.stop_timeout_ms));
      } else if (it == running_.end()) {
        // Asked to stop one that is not running here (it exited, or this node restarted): say so.
        ReplicaReport gone = ReplicaReport::Exited(member_->options().node_id, false, "not running");
        writer_->Put(ReportKey(id), ReplicaReportJson(gone));
        finished_.insert(id);
      }
      continue;
    }
    if (it != running_.end()) continue;
    spec::ReplicaSpec spec = a.spec;
    spec.tcp_host = member_->options().address;  // other nodes reach it here
    absl::Status started = agent_->StartReplica(spec);
    if (!started.ok()) {
      ReplicaReport failed = ReplicaReport::Exited(member_->options().node_id, false, std::string(Message(started)));
      writer_->Put(ReportKey(id), ReplicaReportJson(failed));
      finished_.insert(id);
      continue;
    }
    running_[id] = Local{spec, false};
  }
  // Ended and cleared by the leader: its report is no longer this node's to keep.
  for (auto it = finished_.begin(); it != finished_.end();) {
    if (assigned_.contains(*it)) {
      ++it;
    } else {
      writer_->Forget(ReportKey(*it));
      it = finished_.erase(it);
    }
  }
  // What runs here and is no longer assigned here (the leader moved it, or gave this node up while it was
  // cut off) stops.
  for (auto& [id, local] : running_) {
    if (assigned_.contains(id) || local.stopping) continue;
    FERRY_LOG(kInfo, "cluster", "replica ", id, " is no longer assigned to this node; stopping it");
    local.stopping = true;
    agent_->StopReplica(id,
                        std::chrono::milliseconds(static_cast<int64_t>(local.spec.graceful_shutdown_timeout_s * 1000)));
  }
}

void NodeWorker::OnReplicaReady(const std::string& replica_id, const std::string& socket_path,
                                const std::string& tcp_address, pid_t pid) {
  if (!running_.contains(replica_id)) return;
  ReplicaReport ready = ReplicaReport::Ready(member_->options().node_id, socket_path, tcp_address, pid);
  writer_->Put(ReportKey(replica_id), ReplicaReportJson(ready));
}

void NodeWorker::OnReplicaExited(const std::string& replica_id, bool was_ready, const std::string& message) {
  running_.erase(replica_id);
  finished_.insert(replica_id);
  // Still assigned: the leader hears how it ended (and clears the keys); otherwise nobody asks.
  if (assigned_.contains(replica_id)) {
    ReplicaReport exited = ReplicaReport::Exited(member_->options().node_id, was_ready, message);
    writer_->Put(ReportKey(replica_id), ReplicaReportJson(exited));
  } else if (writer_) {
    writer_->Delete(ReportKey(replica_id));
  }
  if (stopping_all_ && agent_->live_replicas() == 0 && stopped_) {
    auto done = std::move(stopped_);
    stopped_ = nullptr;
    done();
  }
}

void NodeWorker::StopAll(std::function<void()> done) {
  stopping_all_ = true;
  stopped_ = std::move(done);
  for (auto& [id, local] : running_) {
    if (local.stopping) continue;
    local.stopping = true;
    agent_->StopReplica(id,
                        std::chrono::milliseconds(static_cast<int64_t>(local.spec.graceful_shutdown_timeout_s * 1000)));
  }
  if (agent_->live_replicas() == 0 && stopped_) {
    auto f = std::move(stopped_);
    stopped_ = nullptr;
    f();
  }
}

}  // namespace ferry::cluster
