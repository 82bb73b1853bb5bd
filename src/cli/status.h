// `ferry status`: a node's applications, deployments and replicas, with live traffic read from two scrapes
// of its /metrics `interval` apart: requests/s, error rate and p50/p95/p99 per application, ongoing and
// queued requests per deployment. `watch` redraws it every interval, `count` times (0: until Ctrl-C).
#pragma once

#include <string>

namespace ferry::cli {

struct StatusOptions {
  std::string address;
  std::string token;
  double interval_s = 1;
  bool watch = false;
  int count = 0;
};

// Prints the status; returns the process exit code.
int RunStatus(const StatusOptions& options);

}  // namespace ferry::cli
