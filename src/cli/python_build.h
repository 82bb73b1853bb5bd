// Importing a Python application (Ray's application-level import_path) to learn its deployments: run in a
// child process (Debian's /usr/bin/python3, or $FERRY_PYTHON), so that user code never runs in the node.
#pragma once

#include <absl/status/statusor.h>
#include <nlohmann/json.hpp>
#include <string>

#include "config/config.h"

namespace ferry::cli {

// The directory that holds the `ferry` Python package of this build (the source tree's python/), or empty
// when the package is installed where the interpreter finds it by itself.
std::string FerryPythonDir();

// Imports `import_path` with `args` under `env` (working_dir on sys.path and as the current directory,
// py_modules on sys.path, env_vars set) and returns its deployments and ingress; an error carries the
// Python traceback.
absl::StatusOr<config::PythonApp> BuildPythonApp(const std::string& import_path, const nlohmann::json& args,
                                                 const config::RuntimeEnv& env);

}  // namespace ferry::cli
