// The cluster's shared state against a real etcd (tests/common/etcd_server.h starts one): the etcd client
// (KV, transactions, leases, watch), a node's membership and the controller's election, the fence on a
// leader's writes, and the desired state in etcd.
#include "cluster/cluster.h"

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <gtest/gtest.h>
#include <mutex>
#include <thread>

#include "cluster/cluster_launcher.h"
#include "cluster/cluster_publisher.h"
#include "cluster/etcd.h"
#include "common/etcd_server.h"

namespace ferry::cluster {
namespace {

using namespace std::chrono_literals;

template <typename F>
bool Eventually(F f, std::chrono::milliseconds limit = 15s) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    if (f()) return true;
    std::this_thread::sleep_for(50ms);
  }
  return f();
}

// A replica of app/D running builtin:echo.
spec::ReplicaSpec EchoSpec(const std::string& replica_id) {
  spec::ReplicaSpec s;
  s.replica_id = replica_id;
  s.application = "app";
  s.deployment = "D";
  s.import_path = "builtin:echo";
  s.symbol = "echo";
  return s;
}

class ClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { server_ = new testing::EtcdServer(); }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    prefix_ = "/t" + std::to_string(++counter_) + "/";
    etcd_ = std::make_unique<Etcd>(EtcdOptions{{server_->endpoint()}});
  }
  ClusterOptions Options(const std::string& node) {
    ClusterOptions o;
    o.etcd = {server_->endpoint()};
    o.prefix = prefix_;
    o.node_id = node;
    o.address = "127.0.0.1";
    o.lease_ttl_s = 1;
    return o;
  }
  static testing::EtcdServer* server_;
  static int counter_;
  std::string prefix_;
  std::unique_ptr<Etcd> etcd_;
};
testing::EtcdServer* ClusterTest::server_ = nullptr;
int ClusterTest::counter_ = 0;

TEST(EtcdUrlTest, ParsesEndpointsAndRejectsWhatItCannotUse) {
  auto one = ParseEtcdUrl("etcd://10.0.0.5:2379");
  ASSERT_TRUE(one.ok());
  ASSERT_EQ(one->size(), 1u);
  EXPECT_EQ((*one)[0].host, "10.0.0.5");
  EXPECT_EQ((*one)[0].port, "2379");
  auto three = ParseEtcdUrl("etcd://a:1,b,http://c:3");
  ASSERT_TRUE(three.ok());
  ASSERT_EQ(three->size(), 3u);
  EXPECT_EQ((*three)[1].port, "2379");  // etcd's default
  EXPECT_EQ((*three)[2].host, "c");
  EXPECT_FALSE(ParseEtcdUrl("etcd://").ok());
  EXPECT_FALSE(ParseEtcdUrl("etcd://a:99999").ok());
  EXPECT_EQ(PrefixEnd("/ferry/"), "/ferry0");
  EXPECT_EQ(PrefixEnd(std::string("a\xff", 2)), "b");
}

TEST(EtcdAnswersTest, DecodesTheGatewaysJsonAndRefusesTheRest) {
  auto range = ParseRangeAnswer(
      R"({"header":{"revision":"7"},"kvs":[{"key":"L2E=","value":"eA==","create_revision":"5","lease":"9"}]})");
  ASSERT_TRUE(range.ok());
  EXPECT_EQ(range->revision, 7);
  ASSERT_EQ(range->kvs.size(), 1u);
  EXPECT_EQ(range->kvs[0].key, "/a");
  EXPECT_EQ(range->kvs[0].value, "x");
  EXPECT_EQ(range->kvs[0].lease, 9);
  auto txn = ParseTxnAnswer(R"({"header":{"revision":"8"},"succeeded":true,"responses":[{"response_put":{}}]})");
  ASSERT_TRUE(txn.ok());
  EXPECT_TRUE(txn->succeeded);
  EXPECT_TRUE(txn->ranges.empty());
  // Fields of the wrong type read as absent; errors are statuses.
  auto odd = ParseTxnAnswer(R"({"succeeded":"yes","header":[],"responses":{"x":1}})");
  ASSERT_TRUE(odd.ok());
  EXPECT_FALSE(odd->succeeded);
  EXPECT_FALSE(ParseRangeAnswer("[1,2]").ok());
  EXPECT_FALSE(ParseRangeAnswer("not json").ok());
  EXPECT_TRUE(
      absl::IsNotFound(ParseRangeAnswer(R"({"error":"etcdserver: requested lease not found","code":5})").status()));
  auto watch = ParseWatchLine(
      R"({"result":{"header":{"revision":"4"},"events":[{"type":"DELETE","kv":{"key":"eA=="}},{"kv":{"key":"eQ==","value":"MQ=="}}]}})");
  ASSERT_TRUE(watch.ok());
  EXPECT_EQ(watch->revision, 4);
  ASSERT_EQ(watch->events.size(), 2u);
  EXPECT_EQ(watch->events[0].type, WatchEvent::Type::kDelete);
  EXPECT_EQ(watch->events[1].kv.value, "1");
  EXPECT_TRUE(ParseWatchLine(R"({"result":{"created":true}})")->created);
  EXPECT_TRUE(absl::IsOutOfRange(ParseWatchLine(R"({"result":{"compact_revision":"3"}})").status()));
  EXPECT_TRUE(absl::IsUnavailable(ParseWatchLine(R"({"result":{"canceled":true}})").status()));
  EXPECT_TRUE(absl::IsUnavailable(
      ParseWatchLine(R"({"error":{"grpc_code":14,"http_code":503,"message":"transport is closing"}})").status()));
}

TEST_F(ClusterTest, KeysValuesAndTransactions) {
  const std::string k = prefix_ + "k";
  auto put = etcd_->Put(k, std::string("v\0\xff", 3));  // bytes, not text
  ASSERT_TRUE(put.ok()) << put.status();
  auto got = etcd_->Get(k);
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->kvs.size(), 1u);
  EXPECT_EQ(got->kvs[0].value, std::string("v\0\xff", 3));
  EXPECT_EQ(got->kvs[0].create_revision, *put);
  EXPECT_TRUE(etcd_->Get(prefix_ + "absent")->kvs.empty());
  ASSERT_TRUE(etcd_->Put(prefix_ + "k2", "2").ok());
  EXPECT_EQ(etcd_->GetPrefix(prefix_)->kvs.size(), 2u);

  // Create-if-absent: the first wins, the second reads what is there.
  auto first = etcd_->Txn({Compare::CreateRevision(prefix_ + "lock", 0)}, {TxnOp::Put(prefix_ + "lock", "a")},
                          {TxnOp::Get(prefix_ + "lock")});
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->succeeded);
  auto second = etcd_->Txn({Compare::CreateRevision(prefix_ + "lock", 0)}, {TxnOp::Put(prefix_ + "lock", "b")},
                           {TxnOp::Get(prefix_ + "lock")});
  ASSERT_TRUE(second.ok());
  EXPECT_FALSE(second->succeeded);
  ASSERT_EQ(second->ranges.size(), 1u);
  EXPECT_EQ(second->ranges[0].kvs.at(0).value, "a");
  EXPECT_EQ(second->ranges[0].kvs.at(0).create_revision, first->revision);

  EXPECT_EQ(*etcd_->DeletePrefix(prefix_), 3);
  EXPECT_TRUE(etcd_->GetPrefix(prefix_)->kvs.empty());
}

TEST_F(ClusterTest, LeasesKeepKeysWhileRenewedAndDropThemWhenNot) {
  auto lease = etcd_->GrantLease(1);
  ASSERT_TRUE(lease.ok()) << lease.status();
  ASSERT_TRUE(etcd_->Put(prefix_ + "alive", "x", *lease).ok());
  EXPECT_EQ(etcd_->Get(prefix_ + "alive")->kvs.at(0).lease, *lease);
  auto ttl = etcd_->KeepAlive(*lease);
  ASSERT_TRUE(ttl.ok()) << ttl.status();
  EXPECT_GE(*ttl, 1);
  // Not renewed: the key goes with the lease, and renewing then says the lease is gone.
  EXPECT_TRUE(Eventually([&] { return etcd_->Get(prefix_ + "alive")->kvs.empty(); }));
  EXPECT_TRUE(absl::IsNotFound(etcd_->KeepAlive(*lease).status()));
  // Revoking drops the keys at once.
  auto other = etcd_->GrantLease(60);
  ASSERT_TRUE(etcd_->Put(prefix_ + "b", "x", *other).ok());
  ASSERT_TRUE(etcd_->Revoke(*other).ok());
  EXPECT_TRUE(etcd_->Get(prefix_ + "b")->kvs.empty());
}

TEST_F(ClusterTest, WatchStreamsChangesUnderAPrefixUntilStopped) {
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::vector<WatchEvent> seen;
  std::atomic<bool> created{false};
  absl::Status outcome;
  std::thread watcher([&] {
    outcome = etcd_->Watch(prefix_ + "w/", 0, stop, [&](int64_t, const std::vector<WatchEvent>& events) {
      created = true;
      std::lock_guard<std::mutex> lock(mu);
      seen.insert(seen.end(), events.begin(), events.end());
    });
  });
  ASSERT_TRUE(Eventually([&] { return created.load(); }));
  ASSERT_TRUE(etcd_->Put(prefix_ + "w/a", "1").ok());
  ASSERT_TRUE(etcd_->Put(prefix_ + "elsewhere", "1").ok());
  ASSERT_TRUE(etcd_->Delete(prefix_ + "w/a").ok());
  EXPECT_TRUE(Eventually([&] {
    std::lock_guard<std::mutex> lock(mu);
    return seen.size() >= 2;
  }));
  stop = true;
  watcher.join();
  EXPECT_TRUE(outcome.ok()) << outcome;
  ASSERT_EQ(seen.size(), 2u);  // nothing from outside the prefix
  EXPECT_EQ(seen[0].type, WatchEvent::Type::kPut);
  EXPECT_EQ(seen[0].kv.key, prefix_ + "w/a");
  EXPECT_EQ(seen[0].kv.value, "1");
  EXPECT_EQ(seen[1].type, WatchEvent::Type::kDelete);
}

TEST_F(ClusterTest, OneNodeLeadsAndAStandbyTakesOverWhenTheLeaderResigns) {
  std::atomic<int> elected_a{0}, elected_b{0}, deposed_a{0};
  std::atomic<int64_t> fence_b{0};
  ClusterMember::Callbacks ca, cb;
  ca.on_elected = [&](int64_t) { ++elected_a; };
  ca.on_deposed = [&] { ++deposed_a; };
  cb.on_elected = [&](int64_t fence) {
    fence_b = fence;
    ++elected_b;
  };
  auto a = std::make_unique<ClusterMember>(Options("a"), ca);
  ClusterMember b(Options("b"), cb);
  ASSERT_TRUE(a->Start("http://127.0.0.1:1", "http://127.0.0.1:2").ok());
  ASSERT_TRUE(Eventually([&] { return a->leading(); }));
  ASSERT_TRUE(b.Start("http://127.0.0.1:3", "http://127.0.0.1:4").ok());
  ASSERT_TRUE(Eventually([&] { return b.leader().has_value(); }));
  EXPECT_EQ(b.leader()->node_id, "a");
  EXPECT_EQ(b.leader()->admin_url, "http://127.0.0.1:1");
  EXPECT_FALSE(b.leading());
  EXPECT_EQ(elected_a.load(), 1);

  // A second node under a live node's name cannot join.
  ClusterOptions twin = Options("a");
  ClusterMember impostor(twin, {});
  absl::Status refused = impostor.Start("x", "y");
  EXPECT_TRUE(absl::IsAlreadyExists(refused)) << refused;

  // The nodes, as `ferry nodes` lists them.
  auto nodes = b.Nodes();
  ASSERT_TRUE(nodes.ok()) << nodes.status();
  ASSERT_EQ(nodes->size(), 2u);
  EXPECT_TRUE((*nodes)[0].alive && (*nodes)[0].leader);
  EXPECT_TRUE((*nodes)[1].alive && !(*nodes)[1].leader);

  // The leader resigns (its lease is revoked): the standby leads at its next step.
  a->Stop();
  ASSERT_TRUE(Eventually([&] { return b.leading(); }));
  EXPECT_EQ(elected_b.load(), 1);
  EXPECT_EQ(b.fence(), fence_b.load());
  nodes = b.Nodes();
  ASSERT_TRUE(nodes.ok());
  EXPECT_FALSE((*nodes)[0].alive);  // a: still listed, as dead
  EXPECT_FALSE((*nodes)[0].leader);
  EXPECT_TRUE((*nodes)[1].leader);
}

TEST_F(ClusterTest, AStandbyCampaignsAsSoonAsTheLeaderKeyGoesNotAtItsNextStep) {
  // A lease of 60 s: each member steps every 15 s, so only the watch of the leader key can make the
  // standby lead within the 10 s waited for below.
  ClusterOptions oa = Options("a"), ob = Options("b");
  oa.lease_ttl_s = ob.lease_ttl_s = 60;
  auto a = std::make_unique<ClusterMember>(oa, ClusterMember::Callbacks{});
  ClusterMember b(ob, {});
  ASSERT_TRUE(a->Start("http://127.0.0.1:1", "http://127.0.0.1:2").ok());
  ASSERT_TRUE(Eventually([&] { return a->leading(); }));
  ASSERT_TRUE(b.Start("http://127.0.0.1:3", "http://127.0.0.1:4").ok());
  ASSERT_TRUE(Eventually([&] { return b.leader().has_value(); }));  // b has stepped once
  a->Stop();                                                        // resigns: the leader key goes with its lease
  EXPECT_TRUE(Eventually([&] { return b.leading(); }, 10s));
  // A node that does not campaign never leads, even with nobody leading.
  ClusterOptions oc = Options("c");
  oc.campaign = false;
  ClusterMember c(oc, {});
  ASSERT_TRUE(c.Start("http://127.0.0.1:5", "http://127.0.0.1:6").ok());
  b.Stop();
  EXPECT_FALSE(Eventually([&] { return c.leading(); }, 2s));
  auto leader = etcd_->Get(prefix_ + "leader");
  ASSERT_TRUE(leader.ok());
  EXPECT_TRUE(leader->kvs.empty());
}

TEST_F(ClusterTest, TheDesiredStateIsWrittenOnlyUnderTheLeadersFence) {
  ClusterMember leader(Options("l"), {});
  ASSERT_TRUE(leader.Start("a", "b").ok());
  ASSERT_TRUE(Eventually([&] { return leader.leading(); }));
  EtcdStateStore store(&leader);
  EXPECT_FALSE(store.Load()->has_value());
  ASSERT_TRUE(store.Save(R"({"config": 1})").ok());
  EXPECT_EQ(store.Load()->value(), R"({"config": 1})");

  // Someone else takes the leadership behind this node's back (its key replaced by another's): its writes
  // now fail and change nothing, whether or not it has noticed yet (it watches the key, and campaigns
  // when it goes: the usurper creates its key only where none is, as a campaign does, and tries again when
  // this node won the gap).
  const std::string key = prefix_ + "leader";
  int64_t usurped = 0;
  for (int i = 0; i < 20 && usurped == 0; ++i) {
    ASSERT_TRUE(etcd_->Delete(key).ok());
    auto txn = etcd_->Txn({Compare::CreateRevision(key, 0)}, {TxnOp::Put(key, R"({"node_id": "usurper"})")});
    ASSERT_TRUE(txn.ok());
    if (txn->succeeded) usurped = txn->revision;
  }
  ASSERT_NE(usurped, 0);
  EXPECT_NE(leader.fence(), usurped);
  absl::Status fenced = store.Save(R"({"config": 2})");
  EXPECT_TRUE(absl::IsFailedPrecondition(fenced)) << fenced;
  EXPECT_EQ(store.Load()->value(), R"({"config": 1})");
  // It knows soon (at once through its watch, at the latest at its next step), and stays a standby.
  EXPECT_TRUE(Eventually([&] { return !leader.leading(); }));
  EXPECT_TRUE(absl::IsFailedPrecondition(store.Save("{}")));
}

TEST_F(ClusterTest, ANodeCutOffFromEtcdStepsDownAndRejoinsWhenItComesBack) {
  std::atomic<int> deposed{0}, elected{0};
  ClusterMember::Callbacks c;
  c.on_elected = [&](int64_t) { ++elected; };
  c.on_deposed = [&] { ++deposed; };
  ClusterMember node(Options("n"), c);
  ASSERT_TRUE(node.Start("a", "b").ok());
  ASSERT_TRUE(Eventually([&] { return node.leading(); }));
  server_->Stop();
  EXPECT_TRUE(Eventually([&] { return deposed.load() == 1; }));
  EXPECT_FALSE(node.leading());
  ASSERT_TRUE(server_->Start());
  // Back: it registers again and, alone, leads again (told so just after leading() says so).
  EXPECT_TRUE(Eventually([&] { return node.leading() && elected.load() == 2; }, 30s));
  EXPECT_EQ(elected.load(), 2);
}

// A consumer that keeps what it was given.
class Recorder : public endpoints::Consumer {
 public:
  void OnPublished(std::shared_ptr<const endpoints::Snapshot> snapshot) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (last_) {
      EXPECT_GT(snapshot->version, last_->version);  // one increasing sequence, whatever the source
    }
    last_ = std::move(snapshot);
  }
  endpoints::ConsumerReport Report() const override {
    std::lock_guard<std::mutex> lock(mu_);
    endpoints::ConsumerReport r;
    r.applied_version = last_ ? last_->version : 0;
    return r;
  }
  std::shared_ptr<const endpoints::Snapshot> last() const {
    std::lock_guard<std::mutex> lock(mu_);
    return last_;
  }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const endpoints::Snapshot> last_;
};

std::shared_ptr<const endpoints::Snapshot> OneSet(uint64_t version, const std::string& node) {
  auto snapshot = std::make_shared<endpoints::Snapshot>();
  snapshot->version = version;
  auto set = std::make_shared<endpoints::EndpointSet>();
  set->deployment = "app/D";
  set->version = version;
  endpoints::Endpoint tcp;
  tcp.replica_id = "app#D#1";
  tcp.address = "/run/n/r1.sock";
  tcp.tcp_address = "tcp://10.0.0.1:4000";
  tcp.node_id = node;
  tcp.key = 1;
  endpoints::Endpoint unix_only = tcp;
  unix_only.replica_id = "app#D#2";
  unix_only.tcp_address.clear();
  unix_only.key = 2;
  set->endpoints = {tcp, unix_only};
  snapshot->sets[set->deployment] = set;
  return snapshot;
}

TEST_F(ClusterTest, StandbysRouteByTheLeadersEndpointSetsOverTcp) {
  ClusterMember a(Options("a"), {}), b(Options("b"), {});
  ASSERT_TRUE(a.Start("x", "y").ok());
  ASSERT_TRUE(Eventually([&] { return a.leading(); }));
  ASSERT_TRUE(b.Start("x", "y").ok());
  endpoints::LocalPublisher local_a, local_b;
  Recorder seen_a, seen_b;
  local_a.Subscribe(&seen_a);
  local_b.Subscribe(&seen_b);
  // No controller thread here: what the publishers hand over runs at once, on whichever thread.
  auto inline_runner = [](std::function<void()> f) { f(); };
  ClusterPublisher pub_a(&a, &local_a, inline_runner), pub_b(&b, &local_b, inline_runner);
  pub_a.Start();
  pub_b.Start();

  // The leader's controller publishes: its own routers get it as it is; the standby's get it from etcd,
  // the leader's replicas by their TCP addresses (one without a TCP address is not reachable from there).
  pub_a.Publish(OneSet(7, "a"));
  ASSERT_TRUE(seen_a.last());
  EXPECT_EQ(seen_a.last()->sets.at("app/D")->endpoints.size(), 2u);
  EXPECT_EQ(seen_a.last()->sets.at("app/D")->endpoints[0].address, "/run/n/r1.sock");
  ASSERT_TRUE(Eventually([&] { return seen_b.last() != nullptr; }));
  const std::shared_ptr<const endpoints::Snapshot> at_b = seen_b.last();  // the views below point into it
  const auto& remote = at_b->sets.at("app/D")->endpoints;
  ASSERT_EQ(remote.size(), 1u);
  EXPECT_EQ(remote[0].address, "tcp://10.0.0.1:4000");
  EXPECT_EQ(remote[0].node_id, "a");
  // A replica on the standby's node: the leader's routers reach it over TCP, the standby's own by its Unix
  // socket (no TCP hop on its own node).
  auto both = std::make_shared<endpoints::Snapshot>(*OneSet(8, "a"));
  auto with_b = std::make_shared<endpoints::EndpointSet>(*both->sets.at("app/D"));
  endpoints::Endpoint on_b = with_b->endpoints[0];
  on_b.replica_id = "app#D#3";
  on_b.address = "/run/b/r3.sock";
  on_b.tcp_address = "tcp://10.0.0.2:4000";
  on_b.node_id = "b";
  on_b.key = 3;
  with_b->endpoints.push_back(on_b);
  both->sets["app/D"] = with_b;
  pub_a.Publish(both);
  ASSERT_EQ(seen_a.last()->sets.at("app/D")->endpoints.size(), 3u);
  EXPECT_EQ(seen_a.last()->sets.at("app/D")->endpoints[2].address, "tcp://10.0.0.2:4000");
  ASSERT_TRUE(Eventually([&] { return seen_b.last()->sets.at("app/D")->endpoints.size() == 2; }));
  {
    const std::shared_ptr<const endpoints::Snapshot> now_b = seen_b.last();
    EXPECT_EQ(now_b->sets.at("app/D")->endpoints[1].address, "/run/b/r3.sock");
  }
  pub_a.Publish(OneSet(9, "a"));
  ASSERT_TRUE(Eventually([&] { return seen_b.last()->sets.at("app/D")->endpoints.size() == 1; }));
  // The leader's controller reads its consumers' reports in its own numbering.
  auto reports = pub_a.CollectReports();
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].applied_version, 9u);
  // A standby's own controller publishes nothing that its routers use.
  const uint64_t before = seen_b.last()->version;
  pub_b.Publish(OneSet(1, "b"));
  EXPECT_EQ(seen_b.last()->version, before);

  // The leader goes: b leads, and its routers now follow its own controller's snapshots (numbered after
  // what they had, so none is taken for a late one).
  pub_a.Stop();
  a.Stop();
  ASSERT_TRUE(Eventually([&] { return b.leading(); }));
  pub_b.SourceChanged();
  pub_b.Publish(OneSet(2, "b"));
  EXPECT_GT(seen_b.last()->version, before);
  EXPECT_EQ(seen_b.last()->sets.at("app/D")->endpoints.size(), 2u);
  EXPECT_EQ(seen_b.last()->sets.at("app/D")->endpoints[1].address, "/run/n/r1.sock");
  pub_b.Stop();
  local_a.Unsubscribe(&seen_a);
  local_b.Unsubscribe(&seen_b);
}

TEST(ClusterDocumentsTest, AssignmentsAndReportsRoundTripAndBadOnesAreRefused) {
  Assignment a;
  a.node = "n1";
  a.spec = EchoSpec("app#D#1");
  a.spec.version = "abc";
  a.spec.placement.bundles = {{{"CPU", 1}}, {{"GPU", 1}}};
  a.spec.placement.strategy = "STRICT_SPREAD";
  a.spec.placement.label_selector = {{"zone", "a"}};
  a.bundle_nodes = {"n1", "n2"};
  a.stop_timeout_ms = 1500;
  std::optional<Assignment> back = ParseAssignment("n1", AssignmentJson(a));
  ASSERT_TRUE(back);
  EXPECT_EQ(back->spec.replica_id, "app#D#1");
  EXPECT_EQ(back->spec.version, "abc");
  EXPECT_EQ(back->spec.placement, a.spec.placement);
  EXPECT_EQ(back->bundle_nodes, a.bundle_nodes);
  EXPECT_EQ(back->stop_timeout_ms, 1500);
  EXPECT_FALSE(ParseAssignment("n1", R"({"spec":{"replica_id":1}})"));
  EXPECT_FALSE(ParseAssignment("n1", R"({"spec":{"replica_id":"x","application":"a","deployment":"d",)"
                                     R"("import_path":"i","symbol":"s"},"bundle_nodes":"n1"})"));

  ReplicaReport ready = ReplicaReport::Ready("n2", "/r.sock", "tcp://10.0.0.2:4000", 7);
  std::optional<ReplicaReport> r = ParseReplicaReport(ReplicaReportJson(ready));
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->ready && !r->exited);
  EXPECT_EQ(r->tcp_address, "tcp://10.0.0.2:4000");
  EXPECT_EQ(r->pid, 7);
  ReplicaReport exited = ReplicaReport::Exited("n2", true, "killed by signal 9");
  r = ParseReplicaReport(ReplicaReportJson(exited));
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->exited && r->was_ready);
  EXPECT_EQ(r->message, "killed by signal 9");
  EXPECT_FALSE(ParseReplicaReport(R"({"node":"n2","state":"READY"})"));
  EXPECT_FALSE(ParseReplicaReport("[]"));
}

// What a controller hears from a ClusterLauncher.
struct RecordingListener : node::ReplicaListener {
  void OnReplicaReady(const std::string& id, const std::string& address, const std::string& tcp, pid_t pid) override {
    ready.push_back(id + " " + address + " " + tcp + " " + std::to_string(pid));
  }
  void OnReplicaExited(const std::string& id, bool was_ready, const std::string& message) override {
    exited.push_back(id + (was_ready ? " ready: " : " not ready: ") + message);
  }
  std::vector<std::string> ready, exited;
};

// The leader's launcher against a real etcd and two nodes registered by hand: it places replicas by their
// resources (spreading), writes fenced assignments, says what fits nowhere, turns the nodes' reports into
// the controller's events, and loses every replica of a node whose lease lapses (clearing its keys).
TEST_F(ClusterTest, TheLeadersLauncherPlacesAssignsAndHearsTheNodes) {
  ClusterMember leader(Options("lead"), {});
  ASSERT_TRUE(leader.Start("http://127.0.0.1:1", "http://127.0.0.1:2").ok());
  ASSERT_TRUE(Eventually([&] { return leader.leading(); }));
  auto lease = etcd_->GrantLease(60);
  ASSERT_TRUE(lease.ok());
  for (const char* name : {"a", "b"}) {
    NodeInfo n;
    n.node_id = name;
    n.address = std::string("10.0.0.") + (name[0] == 'a' ? "1" : "2");
    n.resources = {{"CPU", 1}};
    ASSERT_TRUE(etcd_->Put(prefix_ + "members/" + name, NodeJson(n).dump()).ok());
    ASSERT_TRUE(etcd_->Put(prefix_ + "alive/" + name, "{}", *lease).ok());
  }
  boost::asio::io_context io;
  RecordingListener heard;
  ClusterLauncher launcher(io, &leader, &heard);
  EXPECT_TRUE(launcher.Existing().empty());  // nothing placed yet; reads etcd now
  auto spec = [](const std::string& id) {
    spec::ReplicaSpec s = EchoSpec(id);
    s.placement.resources = {{"CPU", 1}};
    return s;
  };
  ASSERT_TRUE(launcher.StartReplica(spec("app#D#1")).ok());
  ASSERT_TRUE(launcher.StartReplica(spec("app#D#2")).ok());
  const std::string first = launcher.LocationOf("app#D#1").node_id, second = launcher.LocationOf("app#D#2").node_id;
  EXPECT_NE(first, second);  // spread, and each node has one CPU
  EXPECT_TRUE(first == "a" || first == "b");
  EXPECT_EQ(launcher.LocationOf("app#D#1").node_ip, first == "a" ? "10.0.0.1" : "10.0.0.2");
  absl::Status third = launcher.StartReplica(spec("app#D#3"));
  EXPECT_TRUE(absl::IsResourceExhausted(third)) << third;
  EXPECT_NE(third.message().find("cannot be scheduled"), std::string::npos) << third;
  EXPECT_NE(third.message().find("lacks CPU"), std::string::npos) << third;
  EXPECT_EQ(launcher.live_replicas(), 2u);
  ASSERT_TRUE(Eventually([&] {
    auto assigned = etcd_->GetPrefix(prefix_ + "assign/");
    return assigned.ok() && assigned->kvs.size() == 2;
  }));
  auto assigned = etcd_->Get(prefix_ + "assign/" + first + "/app#D#1");
  ASSERT_TRUE(assigned.ok() && assigned->kvs.size() == 1);
  EXPECT_EQ(ParseAssignment(first, assigned->kvs[0].value)->spec.replica_id, "app#D#1");

  // The node reports the replica ready: the controller hears it with the address other nodes use.
  ReplicaReport ready = ReplicaReport::Ready(first, "/x.sock", "tcp://127.0.0.1:9", 42);
  ASSERT_TRUE(etcd_->Put(prefix_ + "replicas/app#D#1", ReplicaReportJson(ready), *lease).ok());
  auto run_until = [&](auto done) {
    const auto until = std::chrono::steady_clock::now() + 15s;
    while (!done() && std::chrono::steady_clock::now() < until) {
      io.restart();
      io.run_for(50ms);
    }
    return done();
  };
  ASSERT_TRUE(run_until([&] { return !heard.ready.empty(); }));
  // The replica's own node's socket (each node's publisher routes other nodes' replicas over TCP).
  EXPECT_EQ(heard.ready[0], "app#D#1 /x.sock tcp://127.0.0.1:9 42");
  // A replica that exits: heard with the node's message, and its keys cleared.
  ReplicaReport exited = ReplicaReport::Exited(second, false, "exited with code 1");
  ASSERT_TRUE(etcd_->Put(prefix_ + "replicas/app#D#2", ReplicaReportJson(exited), *lease).ok());
  ASSERT_TRUE(run_until([&] { return !heard.exited.empty(); }));
  EXPECT_EQ(heard.exited[0], "app#D#2 not ready: exited with code 1");
  // Both nodes' lease lapses: the ready replica is lost with its node.
  ASSERT_TRUE(etcd_->Revoke(*lease).ok());
  ASSERT_TRUE(run_until([&] { return heard.exited.size() == 2; }));
  EXPECT_NE(heard.exited[1].find("app#D#1 ready: node " + first + " is gone"), std::string::npos) << heard.exited[1];
  EXPECT_EQ(launcher.live_replicas(), 0u);
  ASSERT_TRUE(run_until([&] {
    auto left = etcd_->GetPrefix(prefix_ + "assign/");
    return left.ok() && left->kvs.empty();
  }));
  // Nowhere to go now: every node is dead.
  EXPECT_TRUE(absl::IsResourceExhausted(launcher.StartReplica(spec("app#D#4"))));
}

TEST_F(ClusterTest, ANewLeaderTakesTheReplicasOverFromItsMirrorOnceItShowsTheElection) {
  // The old leader placed a replica on node "a", which reports it ready.
  auto old = std::make_unique<ClusterMember>(Options("old"), ClusterMember::Callbacks{});
  ASSERT_TRUE(old->Start("http://127.0.0.1:1", "http://127.0.0.1:2").ok());
  ASSERT_TRUE(Eventually([&] { return old->leading(); }));
  ClusterMember standby(Options("standby"), {});
  ASSERT_TRUE(standby.Start("http://127.0.0.1:3", "http://127.0.0.1:4").ok());
  boost::asio::io_context io;
  RecordingListener heard;
  ClusterLauncher launcher(io, &standby, &heard);  // follows etcd from the node's start, leading or not
  auto lease = etcd_->GrantLease(60);
  ASSERT_TRUE(lease.ok());
  NodeInfo a;
  a.node_id = "a";
  a.address = "10.0.0.1";
  a.resources = {{"CPU", 1}};
  Assignment assignment;
  assignment.node = "a";
  assignment.spec = EchoSpec("app#D#1");
  // Written while the io thread does not run: the mirror has not applied any of it yet.
  ASSERT_TRUE(etcd_->Put(prefix_ + "members/a", NodeJson(a).dump()).ok());
  ASSERT_TRUE(etcd_->Put(prefix_ + "alive/a", "{}", *lease).ok());
  ASSERT_TRUE(etcd_->Put(prefix_ + "assign/a/app#D#1", AssignmentJson(assignment)).ok());
  ReplicaReport ready = ReplicaReport::Ready("a", "/x.sock", "tcp://10.0.0.1:9", 42);
  ASSERT_TRUE(etcd_->Put(prefix_ + "replicas/app#D#1", ReplicaReportJson(ready), *lease).ok());
  old->Stop();
  ASSERT_TRUE(Eventually([&] { return standby.leading(); }));
  bool caught_up = false;
  launcher.WhenCaughtUp(standby.fence(), [&](bool current) { caught_up = current; });
  EXPECT_FALSE(caught_up);  // on the io thread, once the mirror shows the election
  const auto until = std::chrono::steady_clock::now() + 15s;
  while (!caught_up && std::chrono::steady_clock::now() < until) {
    io.restart();
    io.run_for(20ms);
  }
  ASSERT_TRUE(caught_up);
  std::vector<node::ExistingReplica> existing = launcher.Existing();
  ASSERT_EQ(existing.size(), 1u);
  EXPECT_EQ(existing[0].spec.replica_id, "app#D#1");
  EXPECT_TRUE(existing[0].ready);
  EXPECT_EQ(existing[0].address, "/x.sock");
  EXPECT_EQ(existing[0].tcp_address, "tcp://10.0.0.1:9");
  EXPECT_EQ(launcher.LocationOf("app#D#1").node_ip, "10.0.0.1");
  ASSERT_TRUE(etcd_->Revoke(*lease).ok());
}

}  // namespace
}  // namespace ferry::cluster
