// Deployment handles against a real replica server (echo, busy) on a Unix socket: routing by a published
// snapshot, the call's request id, method and caller headers, streams and their credit, cancellation,
// back-pressure (max_queued_requests), deadlines, unknown deployments, calls made before the first snapshot,
// and the load report. Every wait is bounded.
#include "handle/handle_client.h"

#include <chrono>
#include <condition_variable>
#include <gtest/gtest.h>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/served_replica.h"
#include "endpoints/wire.h"

namespace ferry::handle {
namespace {

using namespace std::chrono_literals;

class Recorder : public CallObserver {
 public:
  void OnHead(int status, const transport::HeaderList& headers, bool stream) override {
    std::lock_guard<std::mutex> lock(mu_);
    head_thread = std::this_thread::get_id();
    head_status = status;
    this->stream = stream;
    for (const auto& [k, v] : headers) this->headers.emplace_back(k, v);
    cv_.notify_all();
  }
  void OnChunk(std::string_view data) override {
    std::lock_guard<std::mutex> lock(mu_);
    chunks.emplace_back(data);
    cv_.notify_all();
  }
  void OnEnd(bool ok, int status, std::string_view error) override {
    std::lock_guard<std::mutex> lock(mu_);
    end_thread = std::this_thread::get_id();
    ended = true;
    this->ok = ok;
    end_status = status;
    this->error = std::string(error);
    cv_.notify_all();
  }
  // Waits (at most 30 s) until `done` holds; false when it never did.
  template <typename F>
  bool WaitFor(F done) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, 30s, [&] { return done(); });
  }
  bool WaitEnd() {
    return WaitFor([&] { return ended; });
  }
  size_t chunk_count() {
    std::lock_guard<std::mutex> lock(mu_);
    return chunks.size();
  }

  bool has_ended() {
    std::lock_guard<std::mutex> lock(mu_);
    return ended;
  }

  int head_status = 0;
  std::thread::id head_thread, end_thread;  // who delivered
  bool stream = false;
  std::vector<std::pair<std::string, std::string>> headers;
  std::vector<std::string> chunks;
  bool ended = false, ok = false;
  int end_status = 0;
  std::string error;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
};

std::shared_ptr<const endpoints::Snapshot> SnapshotFor(const std::string& address, int max_ongoing = 100,
                                                       int max_queued = -1) {
  auto set = std::make_shared<endpoints::EndpointSet>();
  set->deployment = "app/D";
  set->version = 1;
  set->max_ongoing_requests = max_ongoing;
  set->max_queued_requests = max_queued;
  set->endpoints.push_back({"app#D#7", address, 1, "v1", endpoints::EndpointState::kServing, ""});
  auto snapshot = std::make_shared<endpoints::Snapshot>();
  snapshot->version = 1;
  snapshot->sets["app/D"] = set;
  // Through the wire form, as a replica receives it.
  auto decoded = endpoints::SnapshotFromJson(endpoints::SnapshotToJson(*snapshot));
  EXPECT_TRUE(decoded.ok()) << decoded.status();
  return *decoded;
}

CallRequest To(std::string key, std::string query = "", std::string body = "") {
  CallRequest r;
  r.deployment_key = std::move(key);
  r.query = std::move(query);
  r.body = std::move(body);
  r.path = "/x";
  return r;
}

TEST(HandleClientTest, ACallReachesTheReplicaWithItsIdMethodAndCaller) {
  testing::ServedReplica replica("echo", 4, "-a");
  HandleClient client("app/Caller", nullptr);
  client.OnPublished(SnapshotFor(replica.path()));
  auto rec = std::make_shared<Recorder>();
  CallRequest r = To("app/D", "q=1", "hi");
  r.parent_request_id = "rid";
  r.method_name = "score";
  CallRef call = client.Start(std::move(r), rec);
  ASSERT_TRUE(rec->WaitEnd());
  EXPECT_TRUE(rec->ok) << rec->error;
  EXPECT_EQ(rec->head_status, 200);
  EXPECT_FALSE(rec->stream);
  ASSERT_EQ(rec->chunks.size(), 1u);
  nlohmann::json body = nlohmann::json::parse(rec->chunks[0]);
  EXPECT_EQ(body["body"], "hi");
  EXPECT_EQ(body["query"], "q=1");
  EXPECT_EQ(body["path"], "/x");
  EXPECT_EQ(body["request_id"], call.request_id());
  EXPECT_EQ(call.request_id().rfind("rid.", 0), 0u) << call.request_id();
  EXPECT_EQ(body["headers"]["x-ferry-method"], "score");
  EXPECT_EQ(body["headers"]["x-ferry-caller"], "app/Caller");
  // The load report: routed by version 1, nothing in flight; the call counted per callee.
  endpoints::ConsumerReport report = client.Report();
  EXPECT_EQ(report.applied_version, 1u);
  nlohmann::json load = nlohmann::json::parse(LoadReplyJson(client));
  EXPECT_EQ(load["calls"][0]["callee"], "app/D");
  EXPECT_EQ(load["calls"][0]["ok"], 1);
}

// A call to a deployment scaled to zero waits in its router and wakes the controller (through the node)
// at once; the first replica's arrival (the next snapshot) takes it.
TEST(HandleClientTest, ACallToADeploymentScaledToZeroWakesTheControllerAndWaits) {
  testing::ServedReplica replica("echo", 4, "-z");
  HandleClient client("app/Caller", nullptr);
  std::atomic<int> wakes{0};
  client.SetWake([&] { wakes.fetch_add(1); });
  auto empty = std::make_shared<endpoints::Snapshot>(*SnapshotFor(replica.path()));
  auto set = std::make_shared<endpoints::EndpointSet>(*empty->sets["app/D"]);
  set->endpoints.clear();
  set->scales_from_zero = true;
  empty->sets["app/D"] = set;
  client.OnPublished(empty);
  auto rec = std::make_shared<Recorder>();
  client.Start(To("app/D", "", "cold"), rec);
  for (int i = 0; i < 3000 && wakes.load() == 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_GE(wakes.load(), 1) << "the waiting call did not wake the controller";
  EXPECT_EQ(client.Report().deployments.at(0).queued, 1) << "the report the wake sends must show the waiting call";
  EXPECT_FALSE(rec->ended);
  auto up = std::make_shared<endpoints::Snapshot>(*SnapshotFor(replica.path()));
  up->version = 2;
  client.OnPublished(up);
  ASSERT_TRUE(rec->WaitEnd());
  EXPECT_TRUE(rec->ok) << rec->error;
}

TEST(HandleClientTest, AnUnknownDeploymentIs404AndACallBeforeTheFirstSnapshotWaitsForIt) {
  testing::ServedReplica replica("echo", 4, "-b");
  HandleClient client("app/Caller", nullptr);
  auto early = std::make_shared<Recorder>();
  client.Start(To("app/D"), early);  // no snapshot yet: it waits
  client.OnPublished(SnapshotFor(replica.path()));
  ASSERT_TRUE(early->WaitEnd());
  EXPECT_TRUE(early->ok) << early->error;
  auto missing = std::make_shared<Recorder>();
  client.Start(To("app/Nope"), missing);
  ASSERT_TRUE(missing->WaitEnd());
  EXPECT_FALSE(missing->ok);
  EXPECT_EQ(missing->end_status, 404);
  EXPECT_NE(missing->error.find("app/Nope"), std::string::npos) << missing->error;
}

TEST(HandleClientTest, AStreamArrivesChunkByChunkAndWaitsForTheCallersCredit) {
  testing::ServedReplica replica("echo", 4, "-c");
  HandleClient client("app/Caller", nullptr);
  client.OnPublished(SnapshotFor(replica.path()));
  auto small = std::make_shared<Recorder>();
  client.Start(To("app/D", "stream=3"), small);
  ASSERT_TRUE(small->WaitEnd());
  EXPECT_TRUE(small->ok);
  EXPECT_TRUE(small->stream);
  EXPECT_EQ(small->chunks, (std::vector<std::string>{"chunk 0\n", "chunk 1\n", "chunk 2\n"}));

  // A caller that consumes nothing gets one window, then one more chunk per chunk of credit.
  constexpr size_t kChunk = 65536;
  auto big = std::make_shared<Recorder>();
  CallRef call = client.Start(To("app/D", "stream=100000&chunk_bytes=65536"), big);
  const size_t window = transport::kStreamWindow / kChunk;
  ASSERT_TRUE(big->WaitFor([&] { return big->chunks.size() >= window; }));
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(big->chunk_count(), window) << "the callee ran ahead of the caller's credit";
  call.Consumed(kChunk);
  ASSERT_TRUE(big->WaitFor([&] { return big->chunks.size() >= window + 1; }));
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(big->chunk_count(), window + 1);
  call.Cancel();
  ASSERT_TRUE(big->WaitEnd());
  EXPECT_FALSE(big->ok);
  EXPECT_EQ(big->end_status, 499);
}

TEST(HandleClientTest, BackPressureIs503AndADeadlineIs504) {
  testing::ServedReplica replica("busy", 4, "-d");
  HandleClient client("app/Caller", nullptr);
  client.OnPublished(SnapshotFor(replica.path(), /*max_ongoing=*/1, /*max_queued=*/0));
  auto slow = std::make_shared<Recorder>();
  CallRef slow_call = client.Start(To("app/D", "work_us=60000000"), slow);
  // Once the slow call holds the one slot, the next is shed at once.
  for (int i = 0; i < 3000; ++i) {
    endpoints::ConsumerReport report = client.Report();
    if (!report.deployments.empty() && report.deployments[0].ongoing == 1) break;
    std::this_thread::sleep_for(10ms);
  }
  auto shed = std::make_shared<Recorder>();
  client.Start(To("app/D", "work_us=1"), shed);
  ASSERT_TRUE(shed->WaitEnd());
  EXPECT_FALSE(shed->ok);
  EXPECT_EQ(shed->end_status, 503);
  EXPECT_NE(shed->error.find("app/D is overloaded"), std::string::npos) << shed->error;
  slow_call.Cancel();
  ASSERT_TRUE(slow->WaitEnd());
  EXPECT_EQ(slow->end_status, 499);

  // The deadline: a call that cannot finish in time ends with 504 (and the callee is cancelled).
  client.OnPublished(SnapshotFor(replica.path(), 4, -1));
  auto late = std::make_shared<Recorder>();
  CallRequest r = To("app/D", "work_us=60000000");
  r.deadline = SteadyClock::now() + 100ms;
  client.Start(std::move(r), late);
  ASSERT_TRUE(late->WaitEnd());
  EXPECT_FALSE(late->ok);
  EXPECT_EQ(late->end_status, 504);
  EXPECT_NE(late->error.find("timed out"), std::string::npos) << late->error;
}

CallRequest OnDemand(std::string query, std::string body = "") {
  CallRequest r = To("app/D", std::move(query), std::move(body));
  r.on_demand = true;
  return r;
}

// Waits (bounded) until the client reports nothing in flight on the callee: every slot came back.
bool SlotsReturn(HandleClient& client) {
  for (int i = 0; i < 3000; ++i) {
    endpoints::ConsumerReport report = client.Report();
    if (!report.deployments.empty() && report.deployments[0].ongoing == 0) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

// The direct way: an on-demand call's caller writes the request and reads the answer itself, so the
// observer hears on the caller's thread, inside Wait; nothing arrives before the caller asks.
TEST(HandleClientTest, AnOnDemandCallIsReadByTheThreadThatWaits) {
  testing::ServedReplica replica("echo", 4, "-e");
  HandleClient client("app/Caller", nullptr);
  client.OnPublished(SnapshotFor(replica.path()));
  for (int i = 0; i < 3; ++i) {  // the first makes the connection, the others reuse it
    auto rec = std::make_shared<Recorder>();
    CallRef call = client.Start(OnDemand("n=" + std::to_string(i), "direct"), rec);
    int waits = 0;
    while (!rec->has_ended() && waits < 1000) {
      ASSERT_TRUE(call.Wait(true)) << "an on-demand call to a replica with room must go the direct way";
      ++waits;
    }
    ASSERT_TRUE(rec->ended);
    EXPECT_TRUE(rec->ok) << rec->error;
    EXPECT_EQ(rec->end_thread, std::this_thread::get_id());
    EXPECT_EQ(nlohmann::json::parse(rec->chunks.at(0))["query"], "n=" + std::to_string(i));
    EXPECT_EQ(nlohmann::json::parse(rec->chunks.at(0))["body"], "direct");
  }
  EXPECT_TRUE(SlotsReturn(client));
  nlohmann::json load = nlohmann::json::parse(LoadReplyJson(client));
  EXPECT_EQ(load["calls"][0]["ok"], 3);

  // A stream through the direct way, with the caller's credit written by the caller.
  auto stream = std::make_shared<Recorder>();
  CallRef call = client.Start(OnDemand("stream=40&chunk_bytes=65536"), stream);
  for (int i = 0; i < 10000 && !stream->has_ended(); ++i) {
    size_t before = stream->chunk_count();
    ASSERT_TRUE(call.Wait(true));
    if (stream->chunk_count() > before) call.Consumed((stream->chunk_count() - before) * 65536);
  }
  ASSERT_TRUE(stream->ended);
  EXPECT_TRUE(stream->ok) << stream->error;
  EXPECT_EQ(stream->chunk_count(), 40u);
}

// Watch hands the reading to the I/O thread (a caller with a callback, not a wait); and two callers that
// wait at once share the connection: one reads for both.
TEST(HandleClientTest, AWatchedCallIsReadByTheIoThreadAndWaitersShareTheConnection) {
  testing::ServedReplica replica("busy", 8, "-f");
  HandleClient client("app/Caller", nullptr);
  client.SetMaxDirectCalls(8);
  client.OnPublished(SnapshotFor(replica.path()));
  auto watched = std::make_shared<Recorder>();
  CallRef call = client.Start(OnDemand("work_us=1000"), watched);
  call.Watch();
  EXPECT_FALSE(call.Wait(true)) << "a watched call's events come from the I/O thread";
  ASSERT_TRUE(watched->WaitEnd());
  EXPECT_TRUE(watched->ok) << watched->error;
  EXPECT_NE(watched->end_thread, std::this_thread::get_id());

  // Four threads, each waiting for its own call on the one connection; every answer reaches its caller.
  std::vector<std::shared_ptr<Recorder>> recs;
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) recs.push_back(std::make_shared<Recorder>());
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&, i] {
      CallRef c = client.Start(OnDemand("work_us=" + std::to_string(20000 - i * 5000)), recs[i]);
      for (int n = 0; n < 1000 && !recs[i]->has_ended(); ++n)
        if (!c.Wait(true)) recs[i]->WaitEnd();
    });
  for (auto& t : threads) t.join();
  for (auto& rec : recs) {
    ASSERT_TRUE(rec->has_ended());
    EXPECT_TRUE(rec->ok) << rec->error;
    EXPECT_EQ(rec->head_status, 200);
  }
  EXPECT_TRUE(SlotsReturn(client));
}

// A direct call cancelled while its caller waits (from another thread, as a cancelled parent does) ends at
// once with 499; one whose deadline passes in Wait ends with 504. Either way the callee is cancelled and
// its slot comes back when it confirms (read by the I/O thread: nobody waits any more).
TEST(HandleClientTest, ADirectCallIsCancelledWhileWaitedForAndKeepsItsDeadline) {
  testing::ServedReplica replica("busy", 4, "-g");
  HandleClient client("app/Caller", nullptr);
  client.OnPublished(SnapshotFor(replica.path()));
  auto rec = std::make_shared<Recorder>();
  CallRef call = client.Start(OnDemand("work_us=60000000"), rec);
  std::thread canceller([&] {
    for (int i = 0; i < 3000; ++i) {  // once the callee holds the slot
      endpoints::ConsumerReport report = client.Report();
      if (!report.deployments.empty() && report.deployments[0].ongoing == 1) break;
      std::this_thread::sleep_for(10ms);
    }
    call.Cancel();
  });
  // Wait says false once the cancel has handed the call to the I/O thread (the canceller may get there
  // between this thread's look at the recorder and its Wait); the end then comes from the canceller.
  for (int i = 0; i < 1000 && !rec->has_ended(); ++i)
    if (!call.Wait(true)) ASSERT_TRUE(rec->WaitEnd());
  canceller.join();
  ASSERT_TRUE(rec->ended);
  EXPECT_FALSE(rec->ok);
  EXPECT_EQ(rec->end_status, 499);
  EXPECT_TRUE(SlotsReturn(client)) << "the cancelled callee's slot never came back";

  auto late = std::make_shared<Recorder>();
  CallRequest r = OnDemand("work_us=60000000");
  r.deadline = SteadyClock::now() + 100ms;
  CallRef timed = client.Start(std::move(r), late);
  for (int i = 0; i < 1000 && !late->has_ended(); ++i) ASSERT_TRUE(timed.Wait(true));
  ASSERT_TRUE(late->ended);
  EXPECT_EQ(late->end_status, 504);
  EXPECT_NE(late->error.find("timed out"), std::string::npos) << late->error;
  EXPECT_TRUE(SlotsReturn(client)) << "the timed-out callee's slot never came back";

  // Past the limit of direct calls, a call goes the I/O thread's way (Wait says so).
  client.SetMaxDirectCalls(0);
  auto queued = std::make_shared<Recorder>();
  CallRef io = client.Start(OnDemand("work_us=1"), queued);
  EXPECT_FALSE(io.Wait(true));
  ASSERT_TRUE(queued->WaitEnd());
  EXPECT_TRUE(queued->ok) << queued->error;
}

TEST(WireTest, SnapshotsAndReportsRoundTripAndMalformedOnesAreRejected) {
  auto snapshot = SnapshotFor("/run/x.sock", 7, 3);
  EXPECT_EQ(snapshot->version, 1u);
  const auto& set = *snapshot->sets.at("app/D");
  EXPECT_EQ(set.max_ongoing_requests, 7);
  EXPECT_EQ(set.max_queued_requests, 3);
  ASSERT_EQ(set.endpoints.size(), 1u);
  EXPECT_EQ(set.endpoints[0].address, "/run/x.sock");
  endpoints::ConsumerReport report;
  report.applied_version = 9;
  report.deployments.push_back({"app/D", 2, 3, {{1, 3}}});
  auto back = endpoints::ReportFromJson(endpoints::ReportToJson(report));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->applied_version, 9u);
  EXPECT_EQ(back->deployments[0].in_flight, (std::vector<std::pair<uint64_t, int>>{{1, 3}}));
  // A replica's multiplexed models travel with its endpoint (handles in other processes route by them).
  endpoints::Snapshot with_models = *snapshot;
  auto models_set = std::make_shared<endpoints::EndpointSet>(set);
  models_set->endpoints[0].model_ids = {"m1", "m2"};
  with_models.sets["app/D"] = models_set;
  auto models_back = endpoints::SnapshotFromJson(endpoints::SnapshotToJson(with_models));
  ASSERT_TRUE(models_back.ok()) << models_back.status();
  EXPECT_EQ((*models_back)->sets.at("app/D")->endpoints[0].model_ids, (std::vector<std::string>{"m1", "m2"}));
  EXPECT_FALSE(endpoints::SnapshotFromJson(nlohmann::json::parse(R"({"sets": [{"version": 1}]})")).ok());
  EXPECT_FALSE(endpoints::SnapshotFromJson(nlohmann::json::parse(R"({"sets": {}})")).ok());
  auto bad = endpoints::ReportFromJson(nlohmann::json::parse(R"({"deployments": [{"queued": "x"}]})"));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("queued"), std::string::npos) << bad.status();
}

}  // namespace
}  // namespace ferry::handle
