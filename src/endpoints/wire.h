// Snapshots and consumer reports as JSON, for consumers in other processes: the node agent sends each
// replica that holds handles the snapshots (protocol frame `endpoints`) and reads back its report
// (`load_reply`). Decoders reject what is malformed with a message naming the field.
// Thread-compatible: pure functions.
#pragma once

#include <absl/status/statusor.h>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "endpoints/endpoints.h"

namespace ferry::endpoints {

nlohmann::json SnapshotToJson(const Snapshot& snapshot);
absl::StatusOr<std::shared_ptr<const Snapshot>> SnapshotFromJson(const nlohmann::json& json);

nlohmann::json ReportToJson(const ConsumerReport& report);
absl::StatusOr<ConsumerReport> ReportFromJson(const nlohmann::json& json);

}  // namespace ferry::endpoints
