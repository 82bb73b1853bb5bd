#include "cluster/cluster.h"

#include <openssl/sha.h>

#include "cluster/cluster_launcher.h"
#include "common/common.h"

namespace ferry::cluster {
namespace {

using json = nlohmann::json;

NodeInfo NodeOfJson(const json& j) {
  NodeInfo n;
  n.node_id = j.value("node_id", "");
  n.address = j.value("address", "");
  n.admin_url = j.value("admin_url", "");
  n.http_url = j.value("http_url", "");
  n.resources = j.value("resources", json::object());
  if (auto labels = j.find("labels"); labels != j.end() && labels->is_object())
    for (auto& [k, v] : labels->items())
      if (v.is_string()) n.labels[k] = v.get<std::string>();
  n.started_at_s = j.value("started_at_s", 0.0);
  return n;
}

}  // namespace

std::optional<NodeInfo> NodeFromRecord(const std::string& text) {
  json j = json::parse(text, nullptr, false);
  if (!j.is_object()) return std::nullopt;
  try {
    NodeInfo n = NodeOfJson(j);
    if (n.node_id.empty()) return std::nullopt;
    return n;
  } catch (const json::exception&) {
    return std::nullopt;
  }
}

json NodeJson(const NodeInfo& node) {
  return {{"node_id", node.node_id},
          {"address", node.address},
          {"admin_url", node.admin_url},
          {"http_url", node.http_url},
          {"resources", node.resources},
          {"labels", node.labels},
          {"started_at_s", node.started_at_s},
          {"state", !node.alive     ? "DEAD"
                    : node.draining ? "DRAINING"
                                    : "ALIVE"},
          {"leader", node.leader},
          {"replicas", node.replicas},
          {"resources_used", node.resources_used}};
}

ClusterMember::ClusterMember(ClusterOptions options, Callbacks callbacks)
    : options_(std::move(options)), callbacks_(std::move(callbacks)), etcd_(EtcdOptions{options_.etcd}) {}

ClusterMember::~ClusterMember() { Stop(); }

namespace {

std::string Sha256Hex(std::string_view bytes) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), digest);
  std::string out;
  for (unsigned char c : digest) out += HexString(c, 2);
  return out;
}

}  // namespace

absl::Status ClusterMember::CheckToken() {
  const std::string key = options_.prefix + "token";
  absl::StatusOr<RangeResult> read = etcd_.Get(key);
  if (!read.ok()) return read.status();
  if (read->kvs.empty()) {
    if (options_.token.empty()) return absl::OkStatus();  // a cluster without a token
    // The first node with a token sets the cluster's (created only if absent: two first nodes agree).
    const std::string salt = NewShortId(16);
    json record = {{"salt", salt}, {"sha256", Sha256Hex(salt + options_.token)}};
    absl::StatusOr<TxnResult> txn =
        etcd_.Txn({Compare::CreateRevision(key, 0)}, {TxnOp::Put(key, record.dump())}, {TxnOp::Get(key)});
    if (!txn.ok()) return txn.status();
    if (txn->succeeded) return absl::OkStatus();
    read = RangeResult{txn->revision, txn->ranges.empty() ? std::vector<KeyValue>{} : txn->ranges[0].kvs};
    if (read->kvs.empty()) return absl::UnavailableError("the cluster's token record vanished; try again");
  }
  json record = json::parse(read->kvs[0].value, nullptr, false);
  if (!record.is_object() || !record.contains("salt") || !record["salt"].is_string() || !record.contains("sha256") ||
      !record["sha256"].is_string())
    return absl::DataLossError(StrCat("the cluster's token record at ", key, " is not one ferry wrote"));
  if (options_.token.empty())
    return absl::PermissionDeniedError(
        "this cluster requires a token: start the node with --cluster-token-file (the file the other nodes use)");
  if (Sha256Hex(record["salt"].get<std::string>() + options_.token) != record["sha256"].get<std::string>())
    return absl::PermissionDeniedError("this node's cluster token (--cluster-token-file) is not the cluster's");
  return absl::OkStatus();
}

absl::Status ClusterMember::CheckFrameTls() {
  const std::string key = options_.prefix + "frame_tls";
  const bool tls = !options_.frame_tls.ca.empty();
  const std::string mine = tls ? "on" : "off";
  absl::StatusOr<TxnResult> txn =
      etcd_.Txn({Compare::CreateRevision(key, 0)}, {TxnOp::Put(key, mine)}, {TxnOp::Get(key)});
  if (!txn.ok()) return txn.status();
  if (txn->succeeded || txn->ranges.empty() || txn->ranges[0].kvs.empty()) return absl::OkStatus();
  if (txn->ranges[0].kvs[0].value == mine) return absl::OkStatus();
  return absl::FailedPreconditionError(
      tls ? "this cluster's nodes talk in the clear: start this node without --tls-ca/--tls-cert/--tls-key"
          : "this cluster's nodes talk TLS: start this node with --tls-ca, --tls-cert and --tls-key");
}

absl::Status ClusterMember::Register() {
  absl::StatusOr<int64_t> lease = etcd_.GrantLease(options_.lease_ttl_s);
  if (!lease.ok()) return lease.status();
  const std::string alive = options_.prefix + "alive/" + options_.node_id;
  // The id is this node's while its alive key is: a second node with the same id cannot join.
  absl::StatusOr<TxnResult> txn = etcd_.Txn(
      {Compare::CreateRevision(alive, 0)},
      {TxnOp::Put(alive, record_, *lease), TxnOp::Put(options_.prefix + "members/" + options_.node_id, record_),
       TxnOp::Delete(options_.prefix + "draining/" + options_.node_id)});  // (re)joined: not draining
  if (!txn.ok() || !txn->succeeded) {
    (void)etcd_.Revoke(*lease);
    if (!txn.ok()) return txn.status();
    return absl::AlreadyExistsError(StrCat("a live node named \"", options_.node_id,
                                           "\" is already in the cluster (pick another --node-name, or wait ",
                                           options_.lease_ttl_s, " s for the old one's lease to lapse)"));
  }
  lease_ = *lease;
  last_renewed_ = std::chrono::steady_clock::now();
  return absl::OkStatus();
}

absl::Status ClusterMember::Start(const std::string& admin_url, const std::string& http_url) {
  if (options_.node_id.empty()) return absl::InvalidArgumentError("a cluster node needs a name (--node-name)");
  NodeInfo self;
  self.node_id = options_.node_id;
  self.address = options_.address;
  self.admin_url = admin_url;
  self.http_url = http_url;
  self.resources = options_.resources;
  self.labels = options_.labels;
  self.started_at_s = WallSeconds();
  json record = NodeJson(self);
  record.erase("state");
  record.erase("leader");
  record.erase("replicas");
  record.erase("resources_used");
  record_ = record.dump();
  if (options_.lease_ttl_s < 1) return absl::InvalidArgumentError("the lease TTL must be at least 1 s");
  if (absl::Status token = CheckToken(); !token.ok()) return token;
  if (absl::Status tls = CheckFrameTls(); !tls.ok()) return tls;
  // A node restarted under its old name waits out its previous incarnation's lease.
  absl::Status registered;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(options_.lease_ttl_s + 1);
  for (;;) {
    registered = Register();
    if (registered.ok() || !absl::IsAlreadyExists(registered) || std::chrono::steady_clock::now() >= until) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  if (!registered.ok()) return registered;
  FERRY_LOG(kInfo, "cluster", "node ", options_.node_id, " joined the cluster (lease ", lease_.load(), ", TTL ",
            options_.lease_ttl_s, " s)");
  thread_ = std::thread([this] { Loop(); });
  if (options_.campaign) watcher_ = std::thread([this] { WatchLeader(); });
  return absl::OkStatus();
}

bool ClusterMember::JoinThread() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return false;
    stopping_ = true;
  }
  watch_stop_.store(true);
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (watcher_.joinable()) watcher_.join();
  return true;
}

void ClusterMember::Stop() {
  if (!JoinThread()) return;
  if (lease_) {
    // Resigning: the leader key and the alive key go with the lease, and a standby leads at its next step.
    (void)etcd_.Revoke(lease_);
    lease_ = 0;
  }
  fence_.store(0);
}

void ClusterMember::Halt() {
  if (!JoinThread()) return;
  lease_ = 0;  // forgotten, not revoked: it lapses
  fence_.store(0);
}

std::optional<NodeInfo> ClusterMember::leader() const {
  std::lock_guard<std::mutex> lock(mu_);
  return leader_;
}

void ClusterMember::Loop() {
  const auto period = std::chrono::milliseconds(std::max<int64_t>(100, options_.lease_ttl_s * 1000 / 4));
  for (;;) {
    Step();
    std::unique_lock<std::mutex> lock(mu_);
    wake_.wait_for(lock, period, [this] { return stopping_ || leader_gone_; });
    if (stopping_) return;
    leader_gone_ = false;
  }
}

void ClusterMember::WatchLeader() {
  const std::string key = leader_key();
  while (!watch_stop_.load()) {
    absl::Status watched = etcd_.Watch(key, 0, watch_stop_, [&](int64_t, const std::vector<WatchEvent>& events) {
      for (const WatchEvent& e : events) {
        if (e.type != WatchEvent::Type::kDelete || e.kv.key != key) continue;
        {
          std::lock_guard<std::mutex> lock(mu_);
          leader_gone_ = true;
        }
        wake_.notify_all();
      }
    });
    if (watch_stop_.load()) return;
    FERRY_LOG(kDebug, "cluster", "the watch of the leader key ended (", Message(watched), "); watching again");
    std::unique_lock<std::mutex> lock(mu_);  // etcd is away: the loop's steps campaign meanwhile
    wake_.wait_for(lock, std::chrono::milliseconds(500), [this] { return stopping_; });
  }
}

void ClusterMember::Depose(const std::string& why) {
  if (fence_.exchange(0) == 0) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    leader_.reset();  // not this node any more, and which node leads is not known yet
  }
  FERRY_LOG(kWarning, "cluster", "node ", options_.node_id, " no longer leads: ", why);
  if (callbacks_.on_deposed) callbacks_.on_deposed();
}

void ClusterMember::Step() {
  const auto now = std::chrono::steady_clock::now();
  if (lease_ != 0) {
    absl::StatusOr<int64_t> ttl = etcd_.KeepAlive(lease_);
    if (ttl.ok()) {
      last_renewed_ = now;
    } else if (absl::IsNotFound(ttl.status())) {
      lease_ = 0;
      Depose("its lease expired");
    } else if (now - last_renewed_ >= std::chrono::seconds(options_.lease_ttl_s)) {
      // etcd has been out of reach for a whole TTL: the lease has lapsed there, so another node may lead.
      Depose(StrCat("etcd was out of reach for ", options_.lease_ttl_s, " s (", Message(ttl.status()), ")"));
    }
  }
  if (lease_ == 0) {
    absl::Status registered = Register();
    if (!registered.ok()) {
      FERRY_LOG(kWarning, "cluster", "node ", options_.node_id,
                " cannot rejoin the cluster yet: ", Message(registered));
      return;
    }
    FERRY_LOG(kInfo, "cluster", "node ", options_.node_id, " rejoined the cluster");
  }
  const std::string key = leader_key();
  absl::StatusOr<RangeResult> current = etcd_.Get(key);
  if (!current.ok()) return;
  std::optional<NodeInfo> leader;
  if (!current->kvs.empty()) {
    leader = NodeFromRecord(current->kvs[0].value);
    const int64_t revision = current->kvs[0].create_revision;
    if (fence_.load() != 0 && revision != fence_.load()) Depose("another node leads");
    if (fence_.load() == 0 && current->kvs[0].lease == lease_) {
      // Still this node's leadership (etcd kept the lease through an outage that deposed it here).
      fence_.store(revision);
      FERRY_LOG(kInfo, "cluster", "node ", options_.node_id, " leads the cluster again (fence ", revision, ")");
      {
        std::lock_guard<std::mutex> lock(mu_);
        leader_ = leader;
        if (leader_) leader_->leader = leader_->alive = true;
      }
      if (callbacks_.on_elected) callbacks_.on_elected(revision);
      return;
    }
  } else if (!options_.campaign) {
    leader.reset();
  } else {
    if (fence_.load() != 0) Depose("its leader key is gone");
    // Nobody leads: campaign. The key is created only if it is still absent, bound to this node's lease.
    absl::StatusOr<TxnResult> txn =
        etcd_.Txn({Compare::CreateRevision(key, 0)}, {TxnOp::Put(key, record_, lease_)}, {TxnOp::Get(key)});
    if (!txn.ok()) return;
    if (txn->succeeded) {
      leader = NodeFromRecord(record_);
      fence_.store(txn->revision);
      FERRY_LOG(kInfo, "cluster", "node ", options_.node_id, " leads the cluster (fence ", txn->revision, ")");
      {
        std::lock_guard<std::mutex> lock(mu_);
        leader_ = leader;
        if (leader_) leader_->leader = leader_->alive = true;
      }
      if (callbacks_.on_elected) callbacks_.on_elected(txn->revision);
      return;
    }
    if (!txn->ranges.empty() && !txn->ranges[0].kvs.empty()) leader = NodeFromRecord(txn->ranges[0].kvs[0].value);
  }
  if (leader) leader->leader = leader->alive = true;
  bool other_changed = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    other_changed = leader && leader->node_id != options_.node_id && (!leader_ || leader_->node_id != leader->node_id);
    leader_ = leader;
  }
  if (other_changed && callbacks_.on_other_leader) callbacks_.on_other_leader(*leader);
}

std::optional<NodeInfo> ClusterMember::LeaderNow() {
  absl::StatusOr<RangeResult> current = etcd_.Get(leader_key());
  if (!current.ok()) return leader();
  if (current->kvs.empty()) return std::nullopt;
  std::optional<NodeInfo> l = NodeFromRecord(current->kvs[0].value);
  if (l) l->leader = l->alive = true;
  return l;
}

absl::StatusOr<std::vector<NodeInfo>> ClusterMember::Nodes() {
  absl::StatusOr<TxnResult> read =
      etcd_.Txn({}, {TxnOp::GetPrefix(options_.prefix + "members/"), TxnOp::GetPrefix(options_.prefix + "alive/"),
                     TxnOp::Get(leader_key()), TxnOp::GetPrefix(options_.prefix + "draining/"),
                     TxnOp::GetPrefix(options_.prefix + "assign/")});
  if (!read.ok()) return read.status();
  if (read->ranges.size() != 5) return absl::UnavailableError("etcd answered the node listing partly");
  std::vector<NodeInfo> nodes;
  std::set<std::string> alive, draining;
  const std::string alive_prefix = options_.prefix + "alive/", draining_prefix = options_.prefix + "draining/",
                    assign_prefix = options_.prefix + "assign/";
  for (const KeyValue& kv : read->ranges[1].kvs) alive.insert(kv.key.substr(alive_prefix.size()));
  for (const KeyValue& kv : read->ranges[3].kvs) draining.insert(kv.key.substr(draining_prefix.size()));
  std::map<std::string, std::pair<int, std::map<std::string, double>>> used;  // node -> replicas, resources
  for (const KeyValue& kv : read->ranges[4].kvs) {
    std::string rest = kv.key.substr(assign_prefix.size());
    const std::string node = rest.substr(0, rest.find('/'));
    std::optional<Assignment> a = ParseAssignment(node, kv.value);
    if (!a) continue;
    ++used[node].first;
    for (const auto& [k, v] : a->spec.placement.resources) used[node].second[k] += v;
  }
  std::string leader_id;
  if (!read->ranges[2].kvs.empty())
    if (std::optional<NodeInfo> l = NodeFromRecord(read->ranges[2].kvs[0].value)) leader_id = l->node_id;
  for (const KeyValue& kv : read->ranges[0].kvs) {
    std::optional<NodeInfo> n = NodeFromRecord(kv.value);
    if (!n) continue;
    n->alive = alive.contains(n->node_id);
    n->leader = n->node_id == leader_id;
    n->draining = draining.contains(n->node_id);
    if (auto u = used.find(n->node_id); u != used.end()) {
      n->replicas = u->second.first;
      n->resources_used = u->second.second;
    }
    nodes.push_back(std::move(*n));
  }
  return nodes;
}

absl::Status ClusterMember::Drain(const std::string& node) {
  const int64_t fence = fence_.load();
  if (fence == 0) return absl::FailedPreconditionError("this node does not lead the cluster");
  const std::string member = options_.prefix + "members/" + node;
  absl::StatusOr<TxnResult> txn = etcd_.Txn(
      {Compare::CreateRevision(leader_key(), fence), Compare::CreateRevision(member, 0)}, {}, {TxnOp::Get(member)});
  if (!txn.ok()) return txn.status();
  if (txn->succeeded)  // the leadership holds and there is no such member
    return absl::NotFoundError(StrCat("no node named \"", node, "\" has ever joined the cluster"));
  txn = etcd_.Txn({Compare::CreateRevision(leader_key(), fence)},
                  {TxnOp::Put(options_.prefix + "draining/" + node, json{{"since_s", WallSeconds()}}.dump())});
  if (!txn.ok()) return txn.status();
  if (!txn->succeeded) return absl::FailedPreconditionError("this node no longer leads the cluster");
  FERRY_LOG(kInfo, "cluster", "node ", node, " is draining");
  return absl::OkStatus();
}

absl::Status ClusterMember::DrainSelf() {
  absl::StatusOr<int64_t> put =
      etcd_.Put(options_.prefix + "draining/" + options_.node_id, json{{"since_s", WallSeconds()}}.dump());
  return put.ok() ? absl::OkStatus() : put.status();
}

absl::StatusOr<std::optional<std::string>> EtcdStateStore::Load() {
  absl::StatusOr<RangeResult> r = member_->etcd().Get(member_->options().prefix + "state");
  if (!r.ok()) return r.status();
  if (r->kvs.empty()) return std::optional<std::string>();
  return std::optional<std::string>(r->kvs[0].value);
}

absl::Status EtcdStateStore::Save(const std::string& document) {
  const int64_t fence = member_->fence();
  if (fence == 0)
    return absl::FailedPreconditionError("this node does not lead the cluster: it cannot change its state");
  absl::StatusOr<TxnResult> txn = member_->etcd().Txn({Compare::CreateRevision(member_->leader_key(), fence)},
                                                      {TxnOp::Put(member_->options().prefix + "state", document)});
  if (!txn.ok()) return txn.status();
  if (!txn->succeeded)
    return absl::FailedPreconditionError(
        "this node no longer leads the cluster (its leadership lapsed): the state was not changed");
  return absl::OkStatus();
}

}  // namespace ferry::cluster
