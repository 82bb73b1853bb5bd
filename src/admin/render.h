// What the admin API serves of the controller's state, rendered from a ControllerSnapshot (off the
// controller's thread): Ray Serve's status document and the Prometheus text of GET /metrics.
// Thread-compatible: pure functions of the snapshot.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "controller/controller.h"

namespace ferry::admin {

// Ray Serve's GET /api/serve/applications/ shape (plus ferry's counters).
nlohmann::json StatusJson(const controller::ControllerSnapshot& snapshot);

// The controller's state as Prometheus metrics (text format): replicas by state, target replicas, starts,
// restarts, health-check failures, cold starts, queued requests per deployment, ongoing requests, the
// processing-time and batch-size histograms, spans and memory per replica.
std::string MetricsText(const controller::ControllerSnapshot& snapshot);

}  // namespace ferry::admin
