#include "cluster/cluster_publisher.h"

#include <nlohmann/json.hpp>

#include "common/common.h"
#include "endpoints/wire.h"

namespace ferry::cluster {

ClusterPublisher::ClusterPublisher(ClusterMember* member, endpoints::LocalPublisher* local,
                                   Runner run_on_publisher_thread, std::string admin_token)
    : member_(member), local_(local), run_(std::move(run_on_publisher_thread)), admin_token_(std::move(admin_token)) {}

ClusterPublisher::~ClusterPublisher() { Stop(); }

void ClusterPublisher::Start() {
  writer_ = std::thread([this] { WriterLoop(); });
  watcher_ = std::thread([this] { WatcherLoop(); });
  poller_ = std::thread([this] { PollerLoop(); });
}

void ClusterPublisher::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  stop_watch_ = true;
  wake_writer_.notify_all();
  if (writer_.joinable()) writer_.join();
  if (watcher_.joinable()) watcher_.join();
  if (poller_.joinable()) poller_.join();
}

void ClusterPublisher::SourceChanged() {
  wake_writer_.notify_all();
  run_([this] {
    std::lock_guard<std::mutex> lock(mu_);
    DeliverLocked();
  });
}

namespace {

// A set as a node's consumers route by it: its own replicas by their Unix socket (the published address),
// other nodes' over TCP (without a TCP address, not at all). Null when nothing changes.
std::shared_ptr<const endpoints::EndpointSet> RoutedFrom(const endpoints::EndpointSet& set, const std::string& self) {
  bool remote = false;
  for (const endpoints::Endpoint& e : set.endpoints) remote |= e.node_id != self;
  if (!remote) return nullptr;
  auto routed = std::make_shared<endpoints::EndpointSet>(set);
  routed->endpoints.clear();
  for (endpoints::Endpoint e : set.endpoints) {
    if (e.node_id != self) {
      if (e.tcp_address.empty()) continue;
      e.address = e.tcp_address;
    }
    routed->endpoints.push_back(std::move(e));
  }
  return routed;
}

}  // namespace

void ClusterPublisher::Publish(std::shared_ptr<const endpoints::Snapshot> snapshot) {
  std::lock_guard<std::mutex> lock(mu_);
  if (member_->leading()) {
    to_write_ = snapshot;
    wake_writer_.notify_all();
  }
  // This node's consumers reach other nodes' replicas over TCP. A set the controller did not change keeps
  // its routed copy (a snapshot of 10,000 replicas is not copied whole on every change).
  auto routed = std::make_shared<endpoints::Snapshot>(*snapshot);
  std::map<std::string, RoutedSet> still;
  for (auto& [key, set] : routed->sets) {
    auto cached = routed_sets_.find(key);
    std::shared_ptr<const endpoints::EndpointSet> out = cached != routed_sets_.end() && cached->second.source == set
                                                            ? cached->second.routed
                                                            : RoutedFrom(*set, member_->options().node_id);
    still[key] = RoutedSet{set, out};
    if (out) set = out;
  }
  routed_sets_.swap(still);
  local_latest_ = std::move(routed);
  DeliverLocked();
}

void ClusterPublisher::DeliverLocked() {
  const Source want = member_->leading() ? Source::kLocal : Source::kRemote;
  const std::shared_ptr<const endpoints::Snapshot>& latest = want == Source::kLocal ? local_latest_ : remote_latest_;
  if (!latest) return;
  const uint64_t version = want == Source::kLocal ? latest->version : remote_epoch_;
  if (want == delivered_source_ && version <= delivered_source_version_) return;
  uint64_t out = out_version_ + 1;
  if (want == Source::kLocal) {
    if (want == delivered_source_)
      out = static_cast<uint64_t>(static_cast<int64_t>(version) + local_offset_);
    else
      local_offset_ = static_cast<int64_t>(out) - static_cast<int64_t>(version);
  }
  auto copy = std::make_shared<endpoints::Snapshot>(*latest);  // the sets are shared, not copied
  copy->version = out;
  if (want == Source::kRemote) {
    if (delivered_fence_ != remote_fence_) remote_delivered_.clear();  // another leader's numbering
    delivered_fence_ = remote_fence_;
    remote_delivered_.emplace_back(out, remote_source_version_);
    while (remote_delivered_.size() > 256) remote_delivered_.pop_front();
  }
  delivered_source_ = want;
  delivered_source_version_ = version;
  out_version_ = out;
  local_->Publish(std::move(copy));
}

std::vector<endpoints::ConsumerReport> ClusterPublisher::CollectReports() {
  std::vector<endpoints::ConsumerReport> reports = local_->CollectReports();
  std::lock_guard<std::mutex> lock(mu_);
  // The controller numbers its own snapshots: a consumer routing by its snapshot of local version v has
  // applied v + offset here.
  for (endpoints::ConsumerReport& r : reports) {
    const int64_t local = static_cast<int64_t>(r.applied_version) - local_offset_;
    r.applied_version = delivered_source_ == Source::kLocal && local > 0 ? static_cast<uint64_t>(local) : 0;
  }
  if (!member_->leading()) return reports;
  // Every other live node's, as last polled (a node not heard from for 2 s counts no more: it is dead or
  // cut off, and its lease decides).
  const auto now = std::chrono::steady_clock::now();
  for (const auto& [node, polled] : node_reports_)
    if (now - polled.at < std::chrono::seconds(2))
      reports.insert(reports.end(), polled.reports.begin(), polled.reports.end());
  return reports;
}

nlohmann::json ClusterPublisher::RemoteReports() {
  std::vector<endpoints::ConsumerReport> reports = local_->CollectReports();
  std::lock_guard<std::mutex> lock(mu_);
  if (delivered_source_ != Source::kRemote || delivered_fence_ == 0) return nullptr;
  nlohmann::json out = nlohmann::json::array();
  for (endpoints::ConsumerReport& r : reports) {
    // The leader's version this consumer routes by; 0 when it routes by something older than we remember.
    uint64_t leaders = 0;
    for (auto it = remote_delivered_.rbegin(); it != remote_delivered_.rend(); ++it)
      if (it->first <= r.applied_version) {
        leaders = it->first == r.applied_version ? it->second : 0;
        break;
      }
    r.applied_version = leaders;
    out.push_back(endpoints::ReportToJson(r));
  }
  return {{"fence", delivered_fence_}, {"reports", std::move(out)}};
}

void ClusterPublisher::PollerLoop() {
  std::vector<NodeInfo> nodes;
  auto refreshed = std::chrono::steady_clock::time_point();
  while (!stop_watch_.load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const int64_t fence = member_->fence();
    if (fence == 0) {
      std::lock_guard<std::mutex> lock(mu_);
      node_reports_.clear();
      continue;
    }
    if (std::chrono::steady_clock::now() - refreshed > std::chrono::seconds(1)) {
      refreshed = std::chrono::steady_clock::now();
      if (absl::StatusOr<std::vector<NodeInfo>> listed = member_->Nodes(); listed.ok()) nodes = std::move(*listed);
    }
    for (const NodeInfo& n : nodes) {
      if (!n.alive || n.node_id == member_->options().node_id || stop_watch_.load()) continue;
      absl::StatusOr<HttpEndpoint> endpoint = ParseHttpEndpoint(n.admin_url);
      if (!endpoint.ok()) continue;
      HttpCall call;
      call.path = "/api/ferry/reports";
      call.timeout = std::chrono::milliseconds(500);
      if (!admin_token_.empty()) call.headers.emplace_back("Authorization", "Bearer " + admin_token_);
      absl::StatusOr<HttpResponse> answer = SendHttp(*endpoint, call);
      if (!answer.ok() || answer->status != 200) continue;
      nlohmann::json j = nlohmann::json::parse(answer->body, nullptr, false);
      if (!j.is_object() || !j.contains("fence") || !j["fence"].is_number_integer() || j["fence"] != fence ||
          !j.contains("reports") || !j["reports"].is_array())
        continue;  // routing by another leader's sets (or none yet): nothing this controller can use
      NodeReports polled{std::chrono::steady_clock::now(), {}};
      for (const nlohmann::json& r : j["reports"])
        if (absl::StatusOr<endpoints::ConsumerReport> report = endpoints::ReportFromJson(r); report.ok())
          polled.reports.push_back(std::move(*report));
      std::lock_guard<std::mutex> lock(mu_);
      node_reports_[n.node_id] = std::move(polled);
    }
  }
}

void ClusterPublisher::WriterLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    if (!to_write_ || !member_->leading()) {
      if (!member_->leading()) to_write_ = nullptr;  // a leader that lost its term has nothing to publish
      wake_writer_.wait(lock);
      continue;
    }
    std::shared_ptr<const endpoints::Snapshot> pending = std::move(to_write_);
    to_write_ = nullptr;
    const int64_t fence = member_->fence();
    lock.unlock();
    nlohmann::json doc = endpoints::SnapshotToJson(*pending);
    doc["fence"] = fence;  // other nodes report in this leadership's numbering
    const std::string document = doc.dump();
    absl::StatusOr<TxnResult> written =
        fence ? member_->etcd().Txn({Compare::CreateRevision(member_->leader_key(), fence)},
                                    {TxnOp::Put(key(), document)})
              : absl::StatusOr<TxnResult>(absl::FailedPreconditionError("not leading"));
    lock.lock();
    if (written.ok() && written->succeeded) continue;
    if (!written.ok())
      FERRY_LOG(kWarning, "cluster", "cannot publish the endpoint sets to etcd: ", Message(written.status()));
    if (!to_write_ && member_->leading()) to_write_ = std::move(pending);  // nothing newer: retry this
    wake_writer_.wait_for(lock, std::chrono::milliseconds(500), [this] { return stopping_; });
  }
}

std::shared_ptr<const endpoints::Snapshot> ClusterPublisher::FromDocument(const std::string& text) const {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) return nullptr;
  absl::StatusOr<std::shared_ptr<const endpoints::Snapshot>> decoded = endpoints::SnapshotFromJson(j);
  if (!decoded.ok()) {
    FERRY_LOG(kWarning, "cluster", "the leader's endpoint sets in etcd do not decode: ", Message(decoded.status()));
    return nullptr;
  }
  auto snapshot = std::make_shared<endpoints::Snapshot>(**decoded);
  for (auto& [key, set] : snapshot->sets)
    if (auto routed = RoutedFrom(*set, member_->options().node_id)) set = std::move(routed);
  return snapshot;
}

void ClusterPublisher::WatcherLoop() {
  const std::string k = key();
  auto take = [&](const std::string& value) {
    std::shared_ptr<const endpoints::Snapshot> snapshot = FromDocument(value);
    if (!snapshot) return;
    nlohmann::json doc = nlohmann::json::parse(value, nullptr, false);
    const int64_t fence =
        doc.is_object() && doc.contains("fence") && doc["fence"].is_number_integer() ? doc["fence"].get<int64_t>() : 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      remote_source_version_ = snapshot->version;
      remote_fence_ = fence;
      remote_latest_ = std::move(snapshot);
      ++remote_epoch_;
    }
    run_([this] {
      std::lock_guard<std::mutex> lock(mu_);
      DeliverLocked();
    });
  };
  while (!stop_watch_.load()) {
    absl::StatusOr<RangeResult> now = member_->etcd().Get(k);
    if (now.ok()) {
      if (!now->kvs.empty()) take(now->kvs[0].value);
      absl::Status watched =
          member_->etcd().Watch(k, now->revision + 1, stop_watch_, [&](int64_t, const std::vector<WatchEvent>& events) {
            for (const WatchEvent& e : events)
              if (e.type == WatchEvent::Type::kPut && e.kv.key == k) take(e.kv.value);
          });
      if (stop_watch_.load()) return;
      FERRY_LOG(kDebug, "cluster", "the endpoint watch ended (", Message(watched), "); watching again");
    }
    for (int i = 0; i < 5 && !stop_watch_.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

}  // namespace ferry::cluster
