// The compute ceiling of bench/models: a TorchScript model run by LibTorch in a plain C++ loop, no server,
// at a given batch size, with the same thread settings as ferry's torchscript runtime (intra-op threads,
// one inter-op thread, InferenceMode). Prints one JSON line: samples/s and ms per batch.
// Usage: torch_loop MODEL.pt BATCH SECONDS THREADS
#include <ATen/Parallel.h>
#include <torch/script.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s MODEL.pt BATCH SECONDS THREADS\n", argv[0]);
    return 2;
  }
  const int64_t batch = std::atoll(argv[2]);
  const double seconds = std::atof(argv[3]);
  at::set_num_threads(std::atoi(argv[4]));
  at::set_num_interop_threads(1);
  torch::jit::ExtraFilesMap extra{{"ferry.json", ""}};
  torch::jit::Module module = torch::jit::load(argv[1], torch::kCPU, extra);
  module.eval();
  // The input's shape: [batch, rest...] from the model's embedded metadata.
  std::vector<int64_t> shape = {batch};
  const std::string& meta = extra["ferry.json"];
  size_t at = meta.find("\"shape\": [-1");
  if (at == std::string::npos) return std::fprintf(stderr, "no ferry.json input shape in %s\n", argv[1]), 2;
  for (const char* p = meta.c_str() + at + 12; *p == ',';) {
    char* end;
    shape.push_back(std::strtoll(p + 1, &end, 10));
    p = end;
  }
  c10::InferenceMode guard;
  std::vector<torch::jit::IValue> args = {torch::randn(shape)};
  for (int i = 0; i < 3; ++i) module.forward(args);  // warm-up
  auto start = std::chrono::steady_clock::now();
  int64_t batches = 0;
  double elapsed = 0;
  while (elapsed < seconds) {
    module.forward(args);
    ++batches;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  std::printf("{\"batch\": %lld, \"samples_per_s\": %.1f, \"ms_per_batch\": %.3f}\n", static_cast<long long>(batch),
              static_cast<double>(batches * batch) / elapsed, 1000 * elapsed / static_cast<double>(batches));
  return 0;
}
