#include "tracing/tracing.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/loopback_http.h"

namespace ferry::tracing {
namespace {

using nlohmann::json;

constexpr char kSample[] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

TEST(Traceparent, ParsesTheSpecExample) {
  SpanContext c;
  ASSERT_TRUE(ParseTraceparent(kSample, &c));
  EXPECT_EQ(c.trace_id.high, 0x0af7651916cd43ddull);
  EXPECT_EQ(c.trace_id.low, 0x8448eb211c80319cull);
  EXPECT_EQ(c.span_id, 0xb7ad6b7169203331ull);
  EXPECT_TRUE(c.sampled);
  EXPECT_EQ(FormatTraceparent(c), kSample);
  ASSERT_TRUE(ParseTraceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", &c));
  EXPECT_FALSE(c.sampled);
  EXPECT_EQ(FormatTraceparent(c), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00");
}

TEST(Traceparent, RejectsWhatTheSpecSaysToIgnore) {
  SpanContext c;
  for (const char* bad : {
           "",
           "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",      // no flags
           "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",    // short flags
           "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",   // upper case
           "00-00000000000000000000000000000000-b7ad6b7169203331-01",   // zero trace id
           "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",   // zero span id
           "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",   // version ff
           "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",  // 00 with more after it
           "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",   // wrong separator
           "00-0af7651916cd43dd8448eb211c8031zz-b7ad6b7169203331-01",   // not hex
           "0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",    // short version
       })
    EXPECT_FALSE(ParseTraceparent(bad, &c)) << bad;
  // A later version is read by its first four fields.
  ASSERT_TRUE(ParseTraceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-follows", &c));
  EXPECT_EQ(c.span_id, 0xb7ad6b7169203331ull);
  EXPECT_FALSE(ParseTraceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x", &c));
}

TEST(Traceparent, NewIdsAreValidAndDistinct) {
  TraceId a = NewTraceId(), b = NewTraceId();
  EXPECT_TRUE(a.valid());
  EXPECT_FALSE(a == b);
  EXPECT_NE(NewSpanId(), 0u);
  EXPECT_EQ(TraceIdHex({1, 2}), "00000000000000010000000000000002");
  EXPECT_EQ(SpanIdHex(0xab), "00000000000000ab");
}

TEST(OtlpJson, EncodesTheProtocolsJsonMapping) {
  Span s;
  s.trace_id = {0x0af7651916cd43ddull, 0x8448eb211c80319cull};
  s.span_id = 0x1111111111111111ull;
  s.parent_span_id = 0xb7ad6b7169203331ull;
  s.name = "POST /echo";
  s.kind = SpanKind::kServer;
  s.start_unix_ns = 1700000000123456789;
  s.end_unix_ns = 1700000000223456789;
  s.attributes = {
      {"http.route", std::string("/echo")}, {"http.response.status_code", int64_t{503}}, {"ratio", 0.5}, {"ok", false}};
  s.error = true;
  Span root;
  root.trace_id = s.trace_id;
  root.span_id = 2;
  root.name = "root";
  json doc = json::parse(EncodeOtlpJson({s, root}, {{"service.name", std::string("ferry")}}));
  const json& rs = doc["resourceSpans"][0];
  EXPECT_EQ(rs["resource"]["attributes"][0], json({{"key", "service.name"}, {"value", {{"stringValue", "ferry"}}}}));
  EXPECT_EQ(rs["scopeSpans"][0]["scope"]["name"], "ferry");
  const json& span = rs["scopeSpans"][0]["spans"][0];
  EXPECT_EQ(span["traceId"], "0af7651916cd43dd8448eb211c80319c");
  EXPECT_EQ(span["spanId"], "1111111111111111");
  EXPECT_EQ(span["parentSpanId"], "b7ad6b7169203331");
  EXPECT_EQ(span["name"], "POST /echo");
  EXPECT_EQ(span["kind"], 2);
  EXPECT_EQ(span["startTimeUnixNano"], "1700000000123456789");
  EXPECT_EQ(span["endTimeUnixNano"], "1700000000223456789");
  EXPECT_EQ(span["attributes"][1]["value"], json({{"intValue", "503"}}));
  EXPECT_EQ(span["attributes"][2]["value"], json({{"doubleValue", 0.5}}));
  EXPECT_EQ(span["attributes"][3]["value"], json({{"boolValue", false}}));
  EXPECT_EQ(span["status"]["code"], 2);
  const json& second = rs["scopeSpans"][0]["spans"][1];
  EXPECT_FALSE(second.contains("parentSpanId"));  // a root span has none
  EXPECT_FALSE(second.contains("status"));
  EXPECT_EQ(second["kind"], 1);
}

TEST(HttpEndpoint, SplitsAndRejects) {
  absl::StatusOr<HttpEndpoint> e = ParseHttpEndpoint("http://127.0.0.1:4318/v1/traces");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->host, "127.0.0.1");
  EXPECT_EQ(e->port, "4318");
  EXPECT_EQ(e->path, "/v1/traces");
  e = ParseHttpEndpoint("http://collector");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->port, "80");
  EXPECT_EQ(e->path, "/");
  e = ParseHttpEndpoint("http://[::1]:4318/v1/traces");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->host, "::1");
  EXPECT_EQ(e->port, "4318");
  EXPECT_NE(ParseHttpEndpoint("https://collector:4318/v1/traces").status().message().find("https"),
            absl::string_view::npos);
  for (const char* bad : {"collector:4318", "http://", "http://:4318/x", "http://host:0/", "http://host:99999/",
                          "http://host:12ab/", "http://[::1/"})
    EXPECT_FALSE(ParseHttpEndpoint(bad).ok()) << bad;
}

// A collector on loopback that answers every POST with `status` (0: never answers, keeping the
// connection open) and keeps the bodies.
// A loopback port that refuses connections for as long as this lives: bound, never listening, so no other
// process can take it and a connect gets ECONNREFUSED on any machine (unlike a well-known port that might
// have a server).
class RefusingPort {
 public:
  RefusingPort() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
        getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
      ADD_FAILURE() << "cannot bind a loopback port";
    port_ = ntohs(addr.sin_port);
  }
  ~RefusingPort() { close(fd_); }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/v1/traces"; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

class FakeCollector {
 public:
  explicit FakeCollector(int status = 200) : status_(status), server_([this](int c, size_t) { Serve(c); }) {}
  ~FakeCollector() {
    server_.reset();  // joins the serving thread first
    for (int c : silent_) ::close(c);
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(server_->port()) + "/v1/traces"; }
  std::vector<json> bodies() {
    std::lock_guard<std::mutex> lock(mu_);
    return bodies_;
  }
  std::vector<std::string> heads() {  // each request's line and headers
    std::lock_guard<std::mutex> lock(mu_);
    return heads_;
  }

 private:
  void Serve(int c) {
    std::string in = ::ferry::testing::ReadHttpRequest(c);
    {
      std::lock_guard<std::mutex> lock(mu_);
      bodies_.push_back(json::parse(in.substr(in.find("\r\n\r\n") + 4), nullptr, false));
      heads_.push_back(in.substr(0, in.find("\r\n\r\n") + 2));
    }
    if (status_ == 0) {
      silent_.push_back(c);
      return;
    }
    std::string answer = "HTTP/1.1 " + std::to_string(status_) + " X\r\nContent-Length: 0\r\n\r\n";
    ::send(c, answer.data(), answer.size(), MSG_NOSIGNAL);
    ::close(c);
  }
  int status_;
  std::mutex mu_;
  std::vector<json> bodies_;
  std::vector<std::string> heads_;
  std::vector<int> silent_;                                     // connections left unanswered (serving thread only)
  std::optional<::ferry::testing::LoopbackHttpServer> server_;  // last: its thread uses the members above
};

Span MakeSpan(const std::string& name) {
  Span s;
  s.trace_id = NewTraceId();
  s.span_id = NewSpanId();
  s.name = name;
  s.start_unix_ns = UnixNanos();
  s.end_unix_ns = s.start_unix_ns + 1000;
  return s;
}

TEST(Tracer, OffUntilConfiguredAndFollowsTheParent) {
  RefusingPort nobody;
  Tracer tracer({});
  EXPECT_FALSE(tracer.enabled());
  SpanContext parent{NewTraceId(), NewSpanId(), true};
  EXPECT_FALSE(tracer.StartSpan(parent).sampled);  // off: nothing is traced
  ASSERT_TRUE(tracer.Configure({nobody.url(), 0.0}).ok());
  EXPECT_TRUE(tracer.enabled());
  SpanContext child = tracer.StartSpan(parent);
  EXPECT_TRUE(child.sampled);
  EXPECT_EQ(child.trace_id, parent.trace_id);
  EXPECT_NE(child.span_id, parent.span_id);
  parent.sampled = false;
  EXPECT_FALSE(tracer.StartSpan(parent).sampled);
  EXPECT_FALSE(tracer.StartSpan({}).sampled);  // ratio 0, no parent
  ASSERT_TRUE(tracer.Configure({nobody.url(), 1.0}).ok());
  EXPECT_TRUE(tracer.StartSpan({}).sampled);
  EXPECT_FALSE(tracer.Configure({"https://x/v1/traces", 1.0}).ok());
  EXPECT_FALSE(tracer.Configure({"http://x/v1/traces", 1.5}).ok());
  ASSERT_TRUE(tracer.Configure({}).ok());
  EXPECT_FALSE(tracer.enabled());
}

TEST(Tracer, SamplesNewTracesAtTheRatio) {
  RefusingPort nobody;
  Tracer tracer({});
  ASSERT_TRUE(tracer.Configure({nobody.url(), 0.1}).ok());
  int sampled = 0;
  constexpr int kTrials = 100000;
  for (int i = 0; i < kTrials; ++i) sampled += tracer.StartSpan({}).sampled;
  // Binomial(100000, 0.1): mean 10,000, standard deviation 95; the bounds are over 10 deviations away.
  EXPECT_GT(sampled, 9000);
  EXPECT_LT(sampled, 11000);
}

TEST(Tracer, ExportsQueuedSpansInBatches) {
  FakeCollector collector;
  std::vector<Attribute> resource = {{"service.name", std::string("ferry")}};
  {
    Tracer tracer(resource);
    ASSERT_TRUE(tracer.Configure({collector.url(), 1.0}).ok());
    for (size_t i = 0; i < Tracer::kMaxBatch + 10; ++i) tracer.Record(MakeSpan("span" + std::to_string(i)));
    tracer.Flush();
    EXPECT_EQ(tracer.exported(), Tracer::kMaxBatch + 10);
    EXPECT_EQ(tracer.dropped(), 0u);
    tracer.Record(MakeSpan("at exit"));
  }  // the destructor sends what is left
  std::vector<json> bodies = collector.bodies();
  // At least a full batch, the rest, and the span recorded before destruction (the exporter may wake
  // while spans are still being recorded and send them in more, smaller batches).
  ASSERT_GE(bodies.size(), 3u);
  size_t total = 0;
  for (const json& b : bodies) {
    ASSERT_TRUE(b.is_object());
    EXPECT_EQ(b["resourceSpans"][0]["resource"]["attributes"][0]["key"], "service.name");
    size_t n = b["resourceSpans"][0]["scopeSpans"][0]["spans"].size();
    EXPECT_LE(n, Tracer::kMaxBatch);
    total += n;
  }
  EXPECT_EQ(total, Tracer::kMaxBatch + 11);
  EXPECT_EQ(bodies.back()["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["name"], "at exit");
}

TEST(OtlpHeaders, ParsesOpenTelemetrysEnvironmentFormat) {
  absl::StatusOr<HeaderList> h = ParseOtlpHeaders(" api-key = abc ,, Authorization=Basic%20dXNlcg==,x=50%zz%,e=");
  ASSERT_TRUE(h.ok()) << h.status();
  HeaderList want = {{"api-key", "abc"}, {"Authorization", "Basic dXNlcg=="}, {"x", "50%zz%"}, {"e", ""}};
  EXPECT_EQ(*h, want);
  EXPECT_TRUE(ParseOtlpHeaders("").ok() && ParseOtlpHeaders("")->empty());
  EXPECT_TRUE(ParseOtlpHeaders(" , ").ok() && ParseOtlpHeaders(" , ")->empty());
  absl::StatusOr<HeaderList> bad = ParseOtlpHeaders("a=1,novalue");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("entry 2 (\"novalue\") is not key=value"), std::string::npos) << bad.status();
  EXPECT_FALSE(ParseOtlpHeaders("=x").ok());
  EXPECT_FALSE(ParseOtlpHeaders("bad key=1").ok());
  EXPECT_FALSE(ParseOtlpHeaders("k(1)=1").ok());
  // A value cannot carry a header of its own into the request.
  bad = ParseOtlpHeaders("k=a%0D%0AInjected: yes");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("control character"), std::string::npos) << bad.status();
  EXPECT_FALSE(ParseOtlpHeaders("k=a\nb").ok());
}

TEST(OtlpHeaders, TracesVariableReplacesEntriesOfTheGeneralOne) {
  setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=general,x-team=ferry", 1);
  setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "X-API-Key=traces%20key", 1);
  absl::StatusOr<HeaderList> h = OtlpHeadersFromEnvironment();
  ASSERT_TRUE(h.ok()) << h.status();
  HeaderList want = {{"x-api-key", "traces key"}, {"x-team", "ferry"}};
  EXPECT_EQ(*h, want);
  setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "oops", 1);
  h = OtlpHeadersFromEnvironment();
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().message().rfind("OTEL_EXPORTER_OTLP_TRACES_HEADERS: entry 1", 0), 0u) << h.status();
  unsetenv("OTEL_EXPORTER_OTLP_HEADERS");
  unsetenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS");
  ASSERT_TRUE(OtlpHeadersFromEnvironment().ok());
  EXPECT_TRUE(OtlpHeadersFromEnvironment()->empty());
}

TEST(Tracer, SendsTheHeadersTheEnvironmentNames) {
  FakeCollector collector;
  setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s3cret%20value", 1);
  {
    Tracer tracer({});
    unsetenv("OTEL_EXPORTER_OTLP_HEADERS");  // read when the tracer was made
    ASSERT_TRUE(tracer.Configure({collector.url(), 1.0}).ok());
    tracer.Record(MakeSpan("with headers"));
    tracer.Flush();
    EXPECT_EQ(tracer.exported(), 1u);
  }
  std::vector<std::string> heads = collector.heads();
  ASSERT_EQ(heads.size(), 1u);
  EXPECT_NE(heads[0].find("\r\nx-api-key: s3cret value\r\n"), std::string::npos) << heads[0];
  EXPECT_NE(heads[0].find("\r\nContent-Type: application/json\r\n"), std::string::npos) << heads[0];
}

TEST(Tracer, CountsWhatACollectorRefusesAndWhatOverflows) {
  FakeCollector refusing(500);
  Tracer tracer({});
  ASSERT_TRUE(tracer.Configure({refusing.url(), 1.0}).ok());
  tracer.Record(MakeSpan("a"));
  tracer.Flush();
  EXPECT_EQ(tracer.exported(), 0u);
  EXPECT_EQ(tracer.dropped(), 1u);
  EXPECT_EQ(refusing.bodies().size(), 1u);
  // Nobody listens on the port: every span is dropped, none blocks.
  RefusingPort nobody;
  ASSERT_TRUE(tracer.Configure({nobody.url(), 1.0}).ok());
  for (size_t i = 0; i < Tracer::kMaxQueued * 2; ++i) tracer.Record(MakeSpan("x"));
  tracer.Flush();
  EXPECT_EQ(tracer.exported(), 0u);
  EXPECT_EQ(tracer.dropped(), 1u + Tracer::kMaxQueued * 2);
}

TEST(Tracer, AtExitGivesUpAfterOneFailedExport) {
  FakeCollector silent(0);
  {
    Tracer tracer({});
    ASSERT_TRUE(tracer.Configure({silent.url(), 1.0}).ok());
    for (size_t i = 0; i < Tracer::kMaxBatch * 3; ++i) tracer.Record(MakeSpan("x"));
  }  // three batches queued; the collector never answers the first
  // One export was attempted; the other batches were dropped instead of each waiting out its timeout.
  EXPECT_EQ(silent.bodies().size(), 1u);
}

}  // namespace
}  // namespace ferry::tracing
