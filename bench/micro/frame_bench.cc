// The frame codec: encoding and decoding a typical request frame (the echo bench's request: a handful of
// headers, small body) and a response, per operation.
#include <benchmark/benchmark.h>

#include "transport/frame.h"

namespace ferry::transport {
namespace {

RequestMessage TypicalRequest(const std::string& body) {
  RequestMessage m;
  m.request_id = "5f0c2a1e9d3b4c7a8e6f1029384756ab";
  m.method = "GET";
  m.path = "/echo/items/42";
  m.query = "verbose=1";
  m.route_prefix = "/echo";
  m.headers = {
      {"host", "127.0.0.1:8000"}, {"user-agent", "wrk"}, {"accept", "*/*"}, {"content-type", "application/json"}};
  m.body = body;
  m.timeout_ms = 30000;
  return m;
}

void BM_EncodeRequest(benchmark::State& state) {
  std::string body(static_cast<size_t>(state.range(0)), 'x');
  RequestMessage m = TypicalRequest(body);
  std::string out;
  for (auto _ : state) {
    out.clear();
    AppendRequest(out, 1, m);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(out.size()));
}
BENCHMARK(BM_EncodeRequest)->Arg(0)->Arg(1024)->Arg(64 * 1024);

void BM_DecodeRequest(benchmark::State& state) {
  std::string body(static_cast<size_t>(state.range(0)), 'x');
  std::string frame;
  AppendRequest(frame, 1, TypicalRequest(body));
  std::string_view payload = std::string_view(frame).substr(kFrameHeaderSize);
  RequestMessage m;
  for (auto _ : state) {
    benchmark::DoNotOptimize(DecodeRequest(payload, &m));
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(frame.size()));
}
BENCHMARK(BM_DecodeRequest)->Arg(0)->Arg(1024)->Arg(64 * 1024);

void BM_ResponseRoundTrip(benchmark::State& state) {
  std::string body(200, 'y');
  HeaderList headers = {{"content-type", "application/json"}};
  std::string frame;
  ResponseMessage m;
  FrameReader reader;
  for (auto _ : state) {
    frame.clear();
    AppendResponse(frame, 7, {200, headers, body});
    reader.Append(frame);
    FrameHeader h;
    std::string_view payload;
    benchmark::DoNotOptimize(reader.Next(&h, &payload));
    benchmark::DoNotOptimize(DecodeResponse(payload, &m));
  }
}
BENCHMARK(BM_ResponseRoundTrip);

}  // namespace
}  // namespace ferry::transport
