// Built-in deployments, written against the public SDK exactly as a user's plugin is, and found by name
// (import_path "builtin:<name>"). Thread-safe: the registry is immutable.
#pragma once

#include <ferry/abi.h>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::runtimes {

// The deployment table of built-in `name`, or nullptr.
const FerryDeploymentApi* FindBuiltin(std::string_view name);
std::vector<std::string> BuiltinNames();

}  // namespace ferry::runtimes
