// Feeds arbitrary bytes to the decoders of what crosses the node agent's control connection for handles:
// the endpoint snapshot (`endpoints` frames) and the load report (`load_reply`). Errors are fine, crashes
// are not; what decodes must encode and decode again to the same thing.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string_view>

#include "endpoints/wire.h"

using namespace ferry::endpoints;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  nlohmann::json json = nlohmann::json::parse(bytes, nullptr, false);
  if (json.is_discarded()) return 0;
  auto snapshot = SnapshotFromJson(json);
  if (snapshot.ok()) {
    auto again = SnapshotFromJson(SnapshotToJson(**snapshot));
    if (!again.ok() || (*again)->sets.size() != (*snapshot)->sets.size() || (*again)->version != (*snapshot)->version)
      __builtin_trap();
  }
  auto report = ReportFromJson(json);
  if (report.ok()) {
    auto again = ReportFromJson(ReportToJson(*report));
    if (!again.ok() || again->deployments.size() != report->deployments.size()) __builtin_trap();
  }
  return 0;
}
