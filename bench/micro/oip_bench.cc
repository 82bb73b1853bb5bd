// The Open Inference Protocol codec on the request path: parsing an infer request body (JSON tensor data
// read in place) and the error path (a malformed body answered with a status).
#include <benchmark/benchmark.h>
#include <string>

#include "inference/oip.h"

namespace {

std::string Body(int elements) {
  std::string body =
      R"({"id":"1","inputs":[{"name":"x","datatype":"FP32","shape":[1,)" + std::to_string(elements) + R"(],"data":[)";
  for (int i = 0; i < elements; ++i) body += (i ? "," : "") + std::to_string(i * 0.25);
  body += "]}]}";
  return body;
}

void BM_ParseInferRequest(benchmark::State& state) {
  const std::string body = Body(static_cast<int>(state.range(0)));
  for (auto _ : state) {
    auto req = ferry::oip::ParseInferRequest(body);
    benchmark::DoNotOptimize(req);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * body.size()));
}
BENCHMARK(BM_ParseInferRequest)->Arg(64)->Arg(4096);

// A body whose last element is malformed: the whole tensor is read before the error.
void BM_ParseMalformedInferRequest(benchmark::State& state) {
  std::string body = Body(64);
  body.replace(body.rfind(']') - 5, 1, "x");
  for (auto _ : state) {
    auto req = ferry::oip::ParseInferRequest(body);
    if (req.ok()) state.SkipWithError("parsed a malformed body");
    benchmark::DoNotOptimize(req);
  }
}
BENCHMARK(BM_ParseMalformedInferRequest);

}  // namespace
