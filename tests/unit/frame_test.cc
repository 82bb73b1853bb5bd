#include "transport/frame.h"

#include <gtest/gtest.h>
#include <random>

namespace ferry::transport {
namespace {

std::string_view PayloadOf(const std::string& frame) { return std::string_view(frame).substr(kFrameHeaderSize); }

FrameHeader HeaderOf(const std::string& frame) {
  auto h = DecodeFrameHeader(std::string_view(frame).substr(0, kFrameHeaderSize));
  EXPECT_TRUE(h.ok()) << h.status();
  return *h;
}

RequestMessage SampleRequest() {
  RequestMessage m;
  m.request_id = "abc123";
  m.method = "POST";
  m.path = "/echo/x";
  m.query = "a=1&b=2";
  m.route_prefix = "/echo";
  m.headers = {{"content-type", "text/plain"}, {"x-k", ""}};
  m.body = std::string_view("body\0with nul", 13);
  m.timeout_ms = 1500;
  m.body_mode = BodyMode::kStreamed;
  return m;
}

TEST(FrameTest, RequestRoundTrips) {
  std::string frame;
  AppendRequest(frame, 42, SampleRequest());
  FrameHeader h = HeaderOf(frame);
  EXPECT_EQ(h.kind, FrameKind::kRequest);
  EXPECT_EQ(h.stream_id, 42u);
  EXPECT_EQ(h.payload_size, frame.size() - kFrameHeaderSize);
  RequestMessage got;
  ASSERT_TRUE(DecodeRequest(PayloadOf(frame), &got).ok());
  RequestMessage want = SampleRequest();
  EXPECT_EQ(got.request_id, want.request_id);
  EXPECT_EQ(got.method, want.method);
  EXPECT_EQ(got.path, want.path);
  EXPECT_EQ(got.query, want.query);
  EXPECT_EQ(got.route_prefix, want.route_prefix);
  EXPECT_EQ(got.headers, want.headers);
  EXPECT_EQ(got.body, want.body);
  EXPECT_EQ(got.timeout_ms, 1500u);
  EXPECT_EQ(got.body_mode, BodyMode::kStreamed);
}

TEST(FrameTest, ResponseAndControlFramesRoundTrip) {
  std::string out;
  AppendResponse(out, 7, {503, {{"retry-after", "1"}}, "busy"});
  ResponseMessage r;
  ASSERT_TRUE(DecodeResponse(PayloadOf(out), &r).ok());
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.headers.size(), 1u);
  EXPECT_EQ(r.body, "busy");

  std::string s;
  AppendStatusReply(s, FrameKind::kHealthReply, 9, {false, "bad disk"});
  StatusReply sr;
  ASSERT_TRUE(DecodeStatusReply(PayloadOf(s), &sr).ok());
  EXPECT_FALSE(sr.ok);
  EXPECT_EQ(sr.message, "bad disk");

  std::string st;
  AppendStatsReply(st, 1, {3, 4, 5});
  StatsReply stats;
  ASSERT_TRUE(DecodeStatsReply(PayloadOf(st), &stats).ok());
  EXPECT_EQ(stats.ongoing, 3u);
  EXPECT_EQ(stats.queued, 4u);
  EXPECT_EQ(stats.total, 5u);
  EXPECT_TRUE(stats.processing_seconds.counts.empty());

  // With histograms and span counts; and the replies of older replicas, without the span counts or without
  // the histograms too, still decode.
  StatsReply full{1, 0, 9, {{2, 7, 0}, 0.125}, {{0, 3}, 12}, 40, 2};
  std::string sh;
  AppendStatsReply(sh, 2, full);
  StatsReply back;
  ASSERT_TRUE(DecodeStatsReply(PayloadOf(sh), &back).ok());
  EXPECT_EQ(back.processing_seconds.counts, (std::vector<uint64_t>{2, 7, 0}));
  EXPECT_EQ(back.processing_seconds.sum, 0.125);
  EXPECT_EQ(back.batch_size.counts, (std::vector<uint64_t>{0, 3}));
  EXPECT_EQ(back.batch_size.sum, 12);
  EXPECT_EQ(back.spans_exported, 40u);
  EXPECT_EQ(back.spans_dropped, 2u);
  EXPECT_TRUE(back.user_metrics.empty());
  // Without user metrics and model ids (two empty lists: 8 bytes), as a replica before them sends it.
  const std::string_view payload = PayloadOf(sh).substr(0, PayloadOf(sh).size() - 8);
  StatsReply before_user_metrics;
  ASSERT_TRUE(DecodeStatsReply(payload, &before_user_metrics).ok());
  EXPECT_EQ(before_user_metrics.spans_dropped, 2u);
  StatsReply older;
  ASSERT_TRUE(DecodeStatsReply(payload.substr(0, payload.size() - 16), &older).ok());
  EXPECT_EQ(older.processing_seconds.counts, (std::vector<uint64_t>{2, 7, 0}));
  EXPECT_EQ(older.spans_exported, 0u);
  StatsReply oldest;
  ASSERT_TRUE(DecodeStatsReply(payload.substr(0, 16), &oldest).ok());
  EXPECT_EQ(oldest.total, 9u);
  EXPECT_TRUE(oldest.processing_seconds.counts.empty());
  EXPECT_FALSE(DecodeStatsReply(payload.substr(0, payload.size() - 3), &back).ok());
  EXPECT_FALSE(DecodeStatsReply(payload.substr(0, payload.size() - 19), &back).ok());

  std::string hello;
  AppendHello(hello, 0, {kProtocolVersion, "proxy", "secret-token"});
  Hello hm;
  ASSERT_TRUE(DecodeHello(PayloadOf(hello), &hm).ok());
  EXPECT_EQ(hm.client, "proxy");
  EXPECT_EQ(hm.token, "secret-token");

  std::string ack;
  AppendHelloAck(ack, 0, {kProtocolVersion, "app#D#1", "D"});
  HelloAck am;
  ASSERT_TRUE(DecodeHelloAck(PayloadOf(ack), &am).ok());
  EXPECT_EQ(am.replica_id, "app#D#1");

  std::string rc;
  AppendReconfigure(rc, 3, R"({"a":1})");
  std::string_view config;
  ASSERT_TRUE(DecodeReconfigure(PayloadOf(rc), &config).ok());
  EXPECT_EQ(config, R"({"a":1})");

  std::string cancel;
  AppendEmpty(cancel, FrameKind::kCancel, 11);
  EXPECT_EQ(cancel.size(), kFrameHeaderSize);
  EXPECT_EQ(HeaderOf(cancel).kind, FrameKind::kCancel);
  EXPECT_TRUE(DecodeEmpty(PayloadOf(cancel)).ok());
  EXPECT_FALSE(DecodeEmpty("x").ok());
}

TEST(FrameTest, EveryTruncationOfARequestIsRejected) {
  std::string frame;
  AppendRequest(frame, 1, SampleRequest());
  std::string_view payload = PayloadOf(frame);
  for (size_t n = 0; n < payload.size(); ++n) {
    RequestMessage m;
    absl::Status s = DecodeRequest(payload.substr(0, n), &m);
    EXPECT_FALSE(s.ok()) << "accepted a request cut at " << n << " bytes";
  }
}

TEST(FrameTest, TrailingBytesAreRejected) {
  std::string frame;
  AppendResponse(frame, 1, {200, {}, "ok"});
  std::string payload(PayloadOf(frame));
  payload.push_back('x');
  ResponseMessage m;
  absl::Status s = DecodeResponse(payload, &m);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find("trailing"), std::string::npos);
}

TEST(FrameTest, LyingLengthsAreRejected) {
  // A header count of 2^32-1 in a tiny payload must fail, not allocate.
  std::string payload;
  payload.append("\xc8\x00", 2);          // status 200
  payload.append("\xff\xff\xff\xff", 4);  // header count
  ResponseMessage m;
  EXPECT_FALSE(DecodeResponse(payload, &m).ok());
  // A string length beyond the payload.
  std::string hello = std::string("\x01\x00\x00\x00\xff\x00\x00\x00", 8) + "ab";
  Hello h;
  EXPECT_FALSE(DecodeHello(hello, &h).ok());
}

TEST(FrameTest, BadStatusIsRejected) {
  std::string frame;
  AppendResponse(frame, 1, {42, {}, ""});
  ResponseMessage m;
  EXPECT_FALSE(DecodeResponse(PayloadOf(frame), &m).ok());
}

TEST(FrameTest, BadHeadersAreRejected) {
  std::string frame;
  AppendEmpty(frame, FrameKind::kCancel, 1);
  std::string bad_magic = frame;
  bad_magic[0] ^= 0x55;
  EXPECT_FALSE(DecodeFrameHeader(bad_magic).ok());
  std::string bad_kind = frame;
  bad_kind[2] = 99;
  EXPECT_FALSE(DecodeFrameHeader(bad_kind).ok());
  std::string bad_flags = frame;
  bad_flags[3] = 1;
  EXPECT_FALSE(DecodeFrameHeader(bad_flags).ok());
  std::string too_big = frame;
  too_big[7] = static_cast<char>(0x7f);  // payload size > kMaxFramePayload
  EXPECT_FALSE(DecodeFrameHeader(too_big).ok());
  EXPECT_FALSE(DecodeFrameHeader(std::string_view(frame).substr(0, 15)).ok());
}

TEST(FrameTest, StreamFramesRoundTrip) {
  std::string frame;
  AppendResponseStart(frame, 7, {201, {{"content-type", "text/event-stream"}}});
  EXPECT_EQ(HeaderOf(frame).kind, FrameKind::kResponseStart);
  EXPECT_EQ(HeaderOf(frame).stream_id, 7u);
  ResponseStart start;
  ASSERT_TRUE(DecodeResponseStart(PayloadOf(frame), &start).ok());
  EXPECT_EQ(start.status, 201);
  ASSERT_EQ(start.headers.size(), 1u);
  EXPECT_EQ(start.headers[0].second, "text/event-stream");

  frame.clear();
  AppendChunk(frame, 7, std::string_view("a\0b", 3));
  std::string_view data;
  ASSERT_TRUE(DecodeChunk(PayloadOf(frame), &data).ok());
  EXPECT_EQ(data, std::string_view("a\0b", 3));

  frame.clear();
  AppendEnd(frame, 7, {false, "callee crashed"});
  StreamEnd end;
  ASSERT_TRUE(DecodeEnd(PayloadOf(frame), &end).ok());
  EXPECT_FALSE(end.ok);
  EXPECT_EQ(end.message, "callee crashed");

  frame.clear();
  AppendCredit(frame, 7, 65536);
  uint32_t credit = 0;
  ASSERT_TRUE(DecodeCredit(PayloadOf(frame), &credit).ok());
  EXPECT_EQ(credit, 65536u);

  frame.clear();
  AppendText(frame, FrameKind::kEndpoints, 0, R"({"version": 3})");
  EXPECT_EQ(HeaderOf(frame).kind, FrameKind::kEndpoints);
  std::string_view text;
  ASSERT_TRUE(DecodeText(PayloadOf(frame), &text).ok());
  EXPECT_EQ(text, R"({"version": 3})");
}

TEST(FrameTest, BadStreamFramesAreRejected) {
  std::string frame;
  AppendCredit(frame, 1, 0);
  uint32_t credit;
  EXPECT_FALSE(DecodeCredit(PayloadOf(frame), &credit).ok()) << "zero credit";
  frame.clear();
  AppendEnd(frame, 1, {true, ""});
  frame[kFrameHeaderSize] = 2;
  StreamEnd end;
  EXPECT_FALSE(DecodeEnd(PayloadOf(frame), &end).ok()) << "ok flag 2";
  frame.clear();
  AppendResponseStart(frame, 1, {700, {}});
  ResponseStart start;
  EXPECT_FALSE(DecodeResponseStart(PayloadOf(frame), &start).ok()) << "status 700";
  frame.clear();
  AppendChunk(frame, 1, "abcdef");
  std::string_view data;
  EXPECT_FALSE(DecodeChunk(PayloadOf(frame).substr(0, 7), &data).ok()) << "truncated";
  EXPECT_FALSE(DecodeChunk(std::string(PayloadOf(frame)) + "x", &data).ok()) << "trailing";
}

TEST(FrameTest, WebSocketFramesRoundTrip) {
  std::string frame;
  AppendMessage(frame, 9, {true, std::string_view("\x00\xff", 2)});
  EXPECT_EQ(HeaderOf(frame).kind, FrameKind::kMessage);
  WsMessage message;
  ASSERT_TRUE(DecodeMessage(PayloadOf(frame), &message).ok());
  EXPECT_TRUE(message.binary);
  EXPECT_EQ(message.data, std::string_view("\x00\xff", 2));
  frame.clear();
  AppendMessage(frame, 9, {false, "hello"});
  ASSERT_TRUE(DecodeMessage(PayloadOf(frame), &message).ok());
  EXPECT_FALSE(message.binary);

  frame.clear();
  AppendClose(frame, 9, {1009, "message too big"});
  EXPECT_EQ(HeaderOf(frame).kind, FrameKind::kClose);
  WsClose close;
  ASSERT_TRUE(DecodeClose(PayloadOf(frame), &close).ok());
  EXPECT_EQ(close.code, 1009);
  EXPECT_EQ(close.reason, "message too big");
}

TEST(FrameTest, BadWebSocketFramesAreRejected) {
  std::string frame;
  AppendMessage(frame, 1, {false, "x"});
  frame[kFrameHeaderSize] = 3;
  WsMessage message;
  EXPECT_FALSE(DecodeMessage(PayloadOf(frame), &message).ok()) << "type 3";
  frame.clear();
  AppendClose(frame, 1, {999, ""});
  WsClose close;
  EXPECT_FALSE(DecodeClose(PayloadOf(frame), &close).ok()) << "code 999";
  frame.clear();
  AppendClose(frame, 1, {5000, ""});
  EXPECT_FALSE(DecodeClose(PayloadOf(frame), &close).ok()) << "code 5000";
  frame.clear();
  AppendRequest(frame, 1, SampleRequest());
  frame[kFrameHeaderSize + 4] = 3;  // the body mode, after the timeout
  RequestMessage request;
  EXPECT_FALSE(DecodeRequest(PayloadOf(frame), &request).ok()) << "body mode 3";
}

TEST(FrameReaderTest, ReassemblesFramesFromAnySplit) {
  std::string stream;
  for (int i = 0; i < 20; ++i) {
    RequestMessage m = SampleRequest();
    std::string body(static_cast<size_t>(i * 97), 'x');
    m.body = body;
    AppendRequest(stream, static_cast<uint64_t>(i), m);
  }
  std::mt19937 rng(1);
  for (int round = 0; round < 50; ++round) {
    FrameReader reader;
    size_t at = 0;
    int seen = 0;
    while (at < stream.size()) {
      size_t n = std::min<size_t>(stream.size() - at, 1 + rng() % 300);
      reader.Append(std::string_view(stream).substr(at, n));
      at += n;
      FrameHeader h;
      std::string_view payload;
      for (;;) {
        auto got = reader.Next(&h, &payload);
        ASSERT_TRUE(got.ok());
        if (!*got) break;
        RequestMessage m;
        ASSERT_TRUE(DecodeRequest(payload, &m).ok());
        EXPECT_EQ(h.stream_id, static_cast<uint64_t>(seen));
        EXPECT_EQ(m.body.size(), static_cast<size_t>(seen * 97));
        ++seen;
      }
    }
    EXPECT_EQ(seen, 20);
    EXPECT_EQ(reader.buffered(), 0u);
  }
}

TEST(FrameReaderTest, MalformedHeaderStopsTheStream) {
  FrameReader reader;
  reader.Append(std::string(16, '\0'));
  FrameHeader h;
  std::string_view payload;
  EXPECT_FALSE(reader.Next(&h, &payload).ok());
}

// A replica's own metrics ride at the end of its stats reply; what the node cannot render safely (a bad
// name or tag key, counts beyond the bytes sent) fails the decode instead of reaching /metrics.
TEST(FrameTest, StatsReplyCarriesUserMetrics) {
  using metrics::Type;
  using metrics::UserMetric;
  StatsReply stats{1, 0, 2};
  stats.user_metrics.push_back(UserMetric{"hits", "Cache hits.", Type::kCounter, {}, {{{{"model", "a"}}, 3.5, {}, 0}}});
  stats.user_metrics.push_back(
      UserMetric{"size", "", Type::kHistogram, {1, 10}, {{{}, 0, {1, 2, 0}, 12.5}, {{{"k", "v"}}, 0, {0, 0, 1}, 99}}});
  stats.model_ids = {"m1", "m2"};
  std::string frame;
  AppendStatsReply(frame, 1, stats);
  StatsReply back;
  ASSERT_TRUE(DecodeStatsReply(PayloadOf(frame), &back).ok());
  EXPECT_EQ(back.model_ids, (std::vector<std::string>{"m1", "m2"}));
  ASSERT_EQ(back.user_metrics.size(), 2u);
  EXPECT_EQ(back.user_metrics[0].name, "hits");
  EXPECT_EQ(back.user_metrics[0].help, "Cache hits.");
  EXPECT_EQ(back.user_metrics[0].type, Type::kCounter);
  ASSERT_EQ(back.user_metrics[0].series.size(), 1u);
  EXPECT_EQ(back.user_metrics[0].series[0].tags, (std::vector<std::pair<std::string, std::string>>{{"model", "a"}}));
  EXPECT_EQ(back.user_metrics[0].series[0].value, 3.5);
  const UserMetric& h = back.user_metrics[1];
  EXPECT_EQ(h.type, Type::kHistogram);
  EXPECT_EQ(h.bounds, (std::vector<double>{1, 10}));
  ASSERT_EQ(h.series.size(), 2u);
  EXPECT_EQ(h.series[0].counts, (std::vector<uint64_t>{1, 2, 0}));
  EXPECT_EQ(h.series[0].sum, 12.5);
  EXPECT_EQ(h.series[1].tags[0].second, "v");
  EXPECT_EQ(h.series[1].sum, 99);

  // Truncated anywhere inside the metrics or the model ids: an error, never a partial read. (Without the
  // model ids' 16 bytes in all it is a reply from before them.)
  const std::string_view payload = PayloadOf(frame);
  for (size_t cut = 1; cut < 60; ++cut)
    EXPECT_EQ(DecodeStatsReply(payload.substr(0, payload.size() - cut), &back).ok(), cut == 16) << cut;

  for (const UserMetric& bad : {UserMetric{"9lives", "", Type::kGauge, {}, {{{}, 1, {}, 0}}},
                                UserMetric{"g", "", Type::kGauge, {}, {{{{"__reserved", "x"}}, 1, {}, 0}}},
                                UserMetric{"g", "", Type::kGauge, {}, {{{{"a-b", "x"}}, 1, {}, 0}}}}) {
    StatsReply s;
    s.user_metrics.push_back(bad);
    std::string f;
    AppendStatsReply(f, 1, s);
    EXPECT_FALSE(DecodeStatsReply(PayloadOf(f), &back).ok()) << bad.name;
  }
  // A series count no payload could hold is refused before anything is allocated.
  std::string huge;
  AppendStatsReply(huge, 1, StatsReply{});
  std::string body(PayloadOf(huge).substr(0, PayloadOf(huge).size() - 8));
  for (int i = 0; i < 4; ++i) body.push_back('\xff');
  EXPECT_FALSE(DecodeStatsReply(body, &back).ok());
}

}  // namespace
}  // namespace ferry::transport
