// The CLI's side of the admin API: one HTTP request to a node, and the YAML the CLI prints.
// Thread-compatible.
#pragma once

#include <absl/status/statusor.h>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace ferry::cli {

struct AdminResponse {
  int status = 0;
  std::string body;
};

// `address` is http://HOST:PORT. `token` (may be empty) goes out as a bearer token.
absl::StatusOr<AdminResponse> AdminRequest(const std::string& address, const std::string& method,
                                           const std::string& path, const std::string& body, const std::string& token,
                                           const std::vector<std::pair<std::string, std::string>>& headers = {});

// Block-style YAML of a JSON value, keys in the JSON's order.
std::string JsonToYaml(const nlohmann::json& value);

}  // namespace ferry::cli
