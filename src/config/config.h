// The ferry config: its schema types, loading from YAML, and validation. Option names and defaults follow
// Ray Serve's config file where Ray Serve has the option. Every error names file:line:column and the field.
// Thread-compatible: a Config is a plain value, read-only once loaded.
#pragma once

#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/common.h"
#include "spec/spec.h"

namespace ferry::config {

// logging_config, tracing and batching: their types and defaults are the replica spec's (src/spec), so
// each default is written once.
using LoggingConfig = spec::LoggingConfig;
using TracingConfig = spec::TracingConfig;
using BatchingConfig = spec::BatchingConfig;
using spec::ToJson;

struct Resources {
  double num_cpus = 1;
  double num_gpus = 0;
};

// Ray Serve's autoscaling_config, with its defaults.
struct AutoscalingConfig {
  int min_replicas = 1;
  int max_replicas = 1;
  std::optional<int> initial_replicas;  // default: min_replicas
  double target_ongoing_requests = 2;
  double upscale_delay_s = 30;
  double downscale_delay_s = 600;
  std::optional<double> downscale_to_zero_delay_s;  // default: downscale_delay_s
  std::optional<double> upscaling_factor;           // default: 1 (no smoothing)
  std::optional<double> downscaling_factor;         // default: 1
  double metrics_interval_s = 10;
  double look_back_period_s = 30;
};

struct DeploymentConfig {
  // kRuntime: a model runtime (torchscript:PATH, xgboost:PATH), a plugin library shipped with ferry.
  // kPython: a Python deployment (python:module:attr), served by the python runtime library.
  enum class Kind { kBuiltin, kPlugin, kRuntime, kPython };
  std::string name;
  std::string import_path;  // as written in the config
  Kind kind = Kind::kBuiltin;
  std::string plugin_path;  // absolute path of the shared library (kPlugin, kRuntime)
  std::string symbol;       // class name (kPlugin, kRuntime) or built-in name (kBuiltin)
  std::string runtime;      // "torchscript" or "xgboost" (kRuntime)
  std::string model_path;   // absolute path of the model file (kRuntime)
  // The name it is served under at /v2/models/{model_name}: args.model_name, else the deployment's name
  // for a model runtime; empty when the deployment is not a model.
  std::string model_name;
  std::string model_version;  // args.model_version; empty: unversioned
  nlohmann::json args = nlohmann::json::object();
  int num_replicas = 1;  // ignored when autoscaling_config is set
  std::optional<AutoscalingConfig> autoscaling_config;
  std::optional<BatchingConfig> batching;
  int max_ongoing_requests = 5;
  int max_queued_requests = -1;  // -1: unbounded
  nlohmann::json user_config;    // null when absent
  Resources resources;
  double health_check_period_s = 10;
  double health_check_timeout_s = 30;
  double graceful_shutdown_timeout_s = 20;
  int max_constructor_retry_count = 20;      // start failures in a row before the version is DEPLOY_FAILED
  double startup_timeout_s = 300;            // ferry: a replica not ready by then counts as a failed start
  double graceful_shutdown_wait_loop_s = 2;  // Ray's; accepted (ferry drains by in-flight count)
  nlohmann::json ray_actor_options;          // Ray's, as written (num_cpus/num_gpus go to resources)
  // Cluster mode: where its replicas may run (resources by Ray's names, placement group, per-node cap,
  // labels); CPU and GPU are `resources`' num_cpus and num_gpus.
  spec::PlacementSpec placement;
  std::optional<LoggingConfig> logging_config;  // as written for this deployment
  LoggingConfig logging;  // in effect: this deployment's, else its application's, else the top level's

  // The import path with a plugin's library resolved to its absolute path.
  std::string ResolvedImportPath() const;
};

// Ray's runtime_env, with local paths made absolute.
struct RuntimeEnv {
  std::string working_dir;
  std::vector<std::string> py_modules;  // a module's directory or file each
  nlohmann::json env_vars = nlohmann::json::object();
  std::string config_dir;  // the config file's directory: on sys.path when there is no working_dir
  bool empty() const { return working_dir.empty() && py_modules.empty() && env_vars.empty(); }
  // What goes on sys.path, in order: the working_dir (else the config's directory), then the directory
  // holding each of py_modules.
  std::vector<std::string> SysPath() const;
};

struct ApplicationConfig {
  std::string name;
  // Ray's application-level import path (module:attr, a bound application or a builder taking `args`),
  // its args and runtime_env; the Python deployments it builds are in `deployments` (kPython).
  std::string import_path;
  nlohmann::json args;  // null when absent
  RuntimeEnv runtime_env;
  std::string route_prefix = "/";
  std::string ingress;                          // a deployment name; defaults to the first deployment
  std::optional<LoggingConfig> logging_config;  // as written; the default for its deployments
  std::vector<DeploymentConfig> deployments;
  // Set when import_path's code could not be imported or built (an ImportError, a SyntaxError, a builder
  // that raised): the traceback. Such an application has no deployments of this version: it is
  // DEPLOY_FAILED with the traceback as its message, and a version already running keeps serving.
  std::string build_error;

  const DeploymentConfig& IngressDeployment() const;
};

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8000;
  std::optional<double> request_timeout_s;  // null (Ray Serve's default): no deadline
  double keep_alive_timeout_s = 90;
  double header_timeout_s = 10;  // ferry: a client must finish its request headers within this
  int64_t max_body_bytes = 64ll << 20;
  int64_t body_stream_threshold_bytes = 1 << 20;  // ferry: larger bodies reach the replica as they arrive
  int num_threads = 0;                            // ferry: proxy I/O threads; 0 = one per core
  // ferry: WebSocket sessions
  int64_t websocket_max_message_bytes = 16 << 20;
  double websocket_idle_timeout_s = 600;
  double websocket_ping_interval_s = 20;
};

// The admin API (ferry deploy/status/config/shutdown talk to it). Deploying is running code, so binding
// it anywhere but loopback requires a bearer token.
struct AdminOptions {
  std::string host = "127.0.0.1";
  int port = 8265;
  std::string auth_token;       // literal token
  std::string auth_token_file;  // or a file holding it (first line)

  bool IsLoopback() const;
};

struct Config {
  std::string source_path;  // the file it came from, for messages
  HttpOptions http_options;
  AdminOptions admin;
  bool has_http_options = false;  // the file had the section (else the defaults above)
  bool has_admin = false;
  std::optional<LoggingConfig> logging_config;  // the node's own logs, and the default for applications
  std::optional<TracingConfig> tracing;         // none: tracing off
  // Ray's: which nodes' proxies serve HTTP. EveryNode, HeadOnly (in a cluster, the leader's node's) or
  // Disabled (none: handles only).
  std::string proxy_location = "EveryNode";
  std::vector<ApplicationConfig> applications;
  // Options accepted that have no effect here (Ray's options for clusters, say): one line each, with the
  // file, line and column, for the user to see (ferry deploy prints them, the node logs them).
  std::vector<std::string> warnings;
};

// What a Python application's import path builds (ValidationHooks::build_python_app).
struct PythonApp {
  std::string ingress;
  std::string code_version;  // a hash of the application's source: changed code is a new version
  struct Deployment {
    std::string name;
    nlohmann::json options;  // the options set in code (Ray's names)
  };
  std::vector<Deployment> deployments;
};

// What validation asks of the outside world. Empty functions skip the check.
struct ValidationHooks {
  // True when `name` is a built-in deployment (import_path "builtin:<name>").
  std::function<bool(std::string_view name)> builtin_exists;
  // The shared library of model runtime `name` ("torchscript", "xgboost"), or empty when this ferry was
  // built without it. Unset: runtimes are not checked (and plugin_path stays empty).
  std::function<std::string(std::string_view name)> runtime_library;
  // OK when the shared library at `path` loads and exports the deployment `symbol`.
  std::function<absl::Status(const std::string& path, const std::string& symbol)> check_plugin;
  // Imports a Python application (import path, args, runtime_env) and says which deployments it has.
  // Unset: an application-level import_path is kept as written, its deployments read as given (the
  // controller's restore, which has them built already).
  std::function<absl::StatusOr<PythonApp>(const std::string& import_path, const nlohmann::json& args,
                                          const RuntimeEnv& env)>
      build_python_app;
};

// Parses and validates a config. `source_name` names it in errors; relative plugin paths resolve against
// `base_dir`. On failure the status is InvalidArgument and lists every error found, one per line, as
// "source:line:column: field: message".
absl::StatusOr<Config> ParseConfig(std::string_view yaml_text, std::string_view source_name,
                                   const std::string& base_dir, const ValidationHooks& hooks = {});

// Reads and parses a config file; relative plugin paths resolve against the file's directory.
absl::StatusOr<Config> LoadConfigFile(const std::string& path, const ValidationHooks& hooks = {});

// Checks that `path` is a shared library exporting ferry_deployment_<symbol>, by loading it in a short-lived
// child process so that a broken library cannot take this process down. Call before starting threads.
absl::Status CheckPluginInChildProcess(const std::string& path, const std::string& symbol);

// The config as JSON (the shape of the YAML, plugin paths absolute). ParseConfig reads it back to an
// equal config, which is how the controller stores and restores what it applied.
nlohmann::json ToJson(const Config& config);
nlohmann::json ToJson(const ApplicationConfig& app);
nlohmann::json ToJson(const HttpOptions& http);
nlohmann::json ToJson(const AutoscalingConfig& autoscaling);

// Reads the token of `admin` (auth_token, or the first line of auth_token_file). Empty when neither is set.
absl::StatusOr<std::string> LoadAdminToken(const AdminOptions& admin);

}  // namespace ferry::config
