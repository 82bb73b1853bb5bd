#include "config/config.h"

#include <dlfcn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <absl/strings/str_join.h>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <yaml-cpp/yaml.h>

#include "common/common.h"
#include "common/http_client.h"
#include "common/unique_fd.h"

namespace ferry::config {
namespace {

using nlohmann::json;

// Collects every error with its location, so one run reports all of them.
class Errors {
 public:
  explicit Errors(std::string source) : source_(std::move(source)) {}
  void Add(const YAML::Mark& mark, std::string_view field, std::string_view message) {
    list_.push_back(Line(mark, field, message));
  }
  void Add(const YAML::Node& node, std::string_view field, std::string_view message) {
    Add(node.Mark(), field, message);
  }
  // An option accepted with no effect: reported, never an error.
  void Warn(const YAML::Node& node, std::string_view field, std::string_view message) {
    warnings_.push_back(Line(node.Mark(), field, message));
  }
  // Nodes made from what Python code set (deployment options in a decorator) have no place in the file:
  // their messages point at `mark` (the application's import_path) and say where the value came from.
  void SetFallback(std::optional<YAML::Mark> mark) { fallback_ = mark; }
  bool empty() const { return list_.empty(); }
  absl::Status ToStatus() const { return absl::InvalidArgumentError(absl::StrJoin(list_, "\n")); }
  const std::vector<std::string>& warnings() const { return warnings_; }

 private:
  std::string Line(const YAML::Mark& mark, std::string_view field, std::string_view message) const {
    if (mark.line < 0 && fallback_)
      return ferry::StrCat(source_, ":", fallback_->line + 1, ":", fallback_->column + 1, ": ", field, ": ", message,
                           " (set in the application's code)");
    return ferry::StrCat(source_, ":", mark.line + 1, ":", mark.column + 1, ": ", field, ": ", message);
  }
  std::string source_;
  std::vector<std::string> list_;
  std::vector<std::string> warnings_;
  std::optional<YAML::Mark> fallback_;
};

std::string Describe(const YAML::Node& node) {
  if (node.IsNull()) return "null";
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a mapping";
  return ferry::StrCat("\"", node.Scalar(), "\"");
}

bool IsQuoted(const YAML::Node& node) { return node.Tag() == "!"; }

// A mapping being read: remembers which keys were used, reports unknown and duplicate ones.
class MapReader {
 public:
  MapReader(const YAML::Node& node, std::string path, Errors& errors)
      : node_(node), path_(std::move(path)), errors_(errors) {
    if (node.IsNull() || !node.IsDefined()) return;
    if (!node.IsMap()) {
      errors_.Add(node, path_, ferry::StrCat("expected a mapping, got ", Describe(node)));
      ok_ = false;
      return;
    }
    std::set<std::string> seen;
    for (const auto& item : node) {
      std::string key = item.first.Scalar();
      if (!seen.insert(key).second) errors_.Add(item.first, Field(key), "duplicate field");
    }
  }
  bool ok() const { return ok_; }
  std::string Field(std::string_view key) const {
    return path_.empty() ? std::string(key) : ferry::StrCat(path_, ".", key);
  }
  YAML::Node Get(const std::string& key) {
    used_.insert(key);
    if (!ok_ || !node_.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
    for (const auto& item : node_)
      if (item.first.Scalar() == key) return item.second;
    return YAML::Node(YAML::NodeType::Undefined);
  }
  void RejectUnknown() {
    if (!ok_ || !node_.IsMap()) return;
    for (const auto& item : node_) {
      std::string key = item.first.Scalar();
      if (used_.count(key)) continue;
      errors_.Add(item.first, Field(key),
                  ferry::StrCat("unknown field; expected one of: ", absl::StrJoin(used_, ", ")));
    }
  }
  const YAML::Mark Mark() const { return node_.Mark(); }

 private:
  YAML::Node node_;
  std::string path_;
  Errors& errors_;
  bool ok_ = true;
  std::set<std::string> used_;
};

bool ParseInteger(const std::string& text, long long* out) {
  if (text.empty()) return false;
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(text.c_str(), &end, 10);
  if (errno != 0 || *end != '\0') return false;
  *out = v;
  return true;
}

bool ParseNumber(const std::string& text, double* out) {
  if (text.empty()) return false;
  errno = 0;
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  if (errno != 0 || *end != '\0' || !std::isfinite(v)) return false;
  *out = v;
  return true;
}

void ReadInt(MapReader& map, const std::string& key, long long min, long long max, Errors& errors, auto* out) {
  YAML::Node node = map.Get(key);
  if (!node.IsDefined()) return;
  long long v;
  if (!node.IsScalar() || IsQuoted(node) || !ParseInteger(node.Scalar(), &v)) {
    errors.Add(node, map.Field(key), ferry::StrCat("expected an integer, got ", Describe(node)));
  } else if (v < min || v > max) {
    errors.Add(node, map.Field(key), ferry::StrCat("expected an integer from ", min, " to ", max, ", got ", v));
  } else {
    *out = static_cast<std::remove_reference_t<decltype(*out)>>(v);
  }
}

void ReadNumber(MapReader& map, const std::string& key, double min, Errors& errors, double* out) {
  YAML::Node node = map.Get(key);
  if (!node.IsDefined()) return;
  double v;
  if (!node.IsScalar() || IsQuoted(node) || !ParseNumber(node.Scalar(), &v)) {
    errors.Add(node, map.Field(key), ferry::StrCat("expected a number, got ", Describe(node)));
  } else if (v < min) {
    errors.Add(node, map.Field(key), ferry::StrCat("expected a number >= ", min, ", got ", node.Scalar()));
  } else {
    *out = v;
  }
}

void ReadString(MapReader& map, const std::string& key, Errors& errors, std::string* out) {
  YAML::Node node = map.Get(key);
  if (!node.IsDefined()) return;
  if (!node.IsScalar() || node.IsNull()) {
    errors.Add(node, map.Field(key), ferry::StrCat("expected a string, got ", Describe(node)));
  } else {
    *out = node.Scalar();
  }
}

// YAML to JSON with the usual implicit typing of plain scalars (null, booleans, integers, floats).
json ToJsonValue(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      return nullptr;
    case YAML::NodeType::Sequence: {
      json out = json::array();
      for (const auto& item : node) out.push_back(ToJsonValue(item));
      return out;
    }
    case YAML::NodeType::Map: {
      json out = json::object();
      for (const auto& item : node) out[item.first.Scalar()] = ToJsonValue(item.second);
      return out;
    }
    case YAML::NodeType::Scalar:
      break;
  }
  const std::string& s = node.Scalar();
  if (IsQuoted(node)) return s;
  if (s == "~" || s == "null" || s == "Null" || s == "NULL") return nullptr;
  if (s == "true" || s == "True" || s == "TRUE") return true;
  if (s == "false" || s == "False" || s == "FALSE") return false;
  long long i;
  if (ParseInteger(s, &i)) return i;
  double d;
  if (s.find_first_of("0123456789") != std::string::npos && ParseNumber(s, &d)) return d;
  return s;
}

void ReadImportPath(const YAML::Node& node, const std::string& field, const std::string& base_dir,
                    const ValidationHooks& hooks, Errors& errors, DeploymentConfig& d) {
  static constexpr std::string_view kBuiltin = "builtin:";
  const std::string& path = d.import_path;
  struct RuntimeKind {
    std::string_view prefix, runtime, symbol, library_needed;
  };
  static constexpr RuntimeKind kRuntimes[] = {{"torchscript:", "torchscript", "TorchScript", "LibTorch"},
                                              {"xgboost:", "xgboost", "XGBoost", "libxgboost"}};
  for (const RuntimeKind& r : kRuntimes) {
    if (path.rfind(r.prefix, 0) != 0) continue;
    d.kind = DeploymentConfig::Kind::kRuntime;
    d.runtime = r.runtime;
    d.symbol = r.symbol;
    std::filesystem::path model(path.substr(r.prefix.size()));
    if (model.empty()) {
      errors.Add(node, field, ferry::StrCat("expected ", r.prefix, "PATH to a model file"));
      return;
    }
    if (model.is_relative()) model = std::filesystem::path(base_dir) / model;
    d.model_path = model.lexically_normal().string();
    std::error_code ec;
    if (!std::filesystem::is_regular_file(d.model_path, ec))
      errors.Add(node, field, ferry::StrCat("model file not found: ", d.model_path));
    if (hooks.runtime_library) {
      d.plugin_path = hooks.runtime_library(r.runtime);
      if (d.plugin_path.empty())
        errors.Add(node, field,
                   ferry::StrCat("this ferry was built without the ", r.runtime, " runtime (", r.library_needed,
                                 " was not found when it was built)"));
    }
    return;
  }
  static constexpr std::string_view kPython = "python:";
  if (path.rfind(kPython, 0) == 0) {
    d.kind = DeploymentConfig::Kind::kPython;
    d.runtime = "python";
    d.symbol = "Python";
    const std::string_view target = std::string_view(path).substr(kPython.size());
    if (target.empty() || target.find_first_of(":.") == std::string_view::npos || target.back() == ':' ||
        target.back() == '.' || target.front() == ':' || target.front() == '.')
      errors.Add(node, field, "expected python:MODULE:ATTRIBUTE (or python:MODULE.ATTRIBUTE)");
    if (hooks.runtime_library) {
      d.plugin_path = hooks.runtime_library("python");
      if (d.plugin_path.empty())
        errors.Add(node, field,
                   "this ferry was built without the python runtime (libpython3.11-dev and pybind11-dev were not "
                   "found when it was built)");
    }
    return;
  }
  if (path.rfind(kBuiltin, 0) == 0) {
    d.kind = DeploymentConfig::Kind::kBuiltin;
    d.symbol = path.substr(kBuiltin.size());
    if (hooks.builtin_exists && !hooks.builtin_exists(d.symbol))
      errors.Add(node, field,
                 ferry::StrCat("no built-in deployment named \"", d.symbol,
                               "\" (expected builtin:echo, builtin:busy or builtin:call)"));
    return;
  }
  size_t colon = path.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == path.size()) {
    errors.Add(node, field,
               ferry::StrCat("expected \"builtin:NAME\", \"torchscript:PATH\", \"xgboost:PATH\" or "
                             "\"path/to/lib.so:ClassName\", got \"",
                             path, "\""));
    return;
  }
  d.kind = DeploymentConfig::Kind::kPlugin;
  d.symbol = path.substr(colon + 1);
  std::filesystem::path lib(path.substr(0, colon));
  if (lib.is_relative()) lib = std::filesystem::path(base_dir) / lib;
  d.plugin_path = lib.lexically_normal().string();
  std::error_code ec;
  if (!std::filesystem::is_regular_file(d.plugin_path, ec)) {
    errors.Add(node, field, ferry::StrCat("plugin file not found: ", d.plugin_path));
    return;
  }
  if (hooks.check_plugin) {
    absl::Status s = hooks.check_plugin(d.plugin_path, d.symbol);
    if (!s.ok()) errors.Add(node, field, Message(s));
  }
}

// args.model_name and args.model_version: what the deployment is served as under /v2/models/.
void ReadModelName(MapReader& map, DeploymentConfig& d, Errors& errors) {
  YAML::Node args = map.Get("args");
  auto read = [&](const char* key, std::string* out) {
    if (!d.args.is_object() || !d.args.contains(key)) return;
    const json& v = d.args[key];
    YAML::Node at = args[key];
    if (v.is_string() && !v.get<std::string>().empty() && v.get<std::string>().find('/') == std::string::npos)
      *out = v.get<std::string>();
    else if (v.is_number_integer() && std::string(key) == "model_version")
      *out = std::to_string(v.get<long long>());
    else
      errors.Add(at, ferry::StrCat(map.Field("args"), ".", key), "expected a non-empty name without '/'");
  };
  read("model_name", &d.model_name);
  read("model_version", &d.model_version);
  if (d.model_name.empty() && d.kind == DeploymentConfig::Kind::kRuntime) d.model_name = d.name;
}

std::optional<double> ReadOptionalNumber(MapReader& map, const std::string& key, double min, Errors& errors) {
  YAML::Node node = map.Get(key);
  if (!node.IsDefined() || node.IsNull()) return std::nullopt;
  double v = 0;
  ReadNumber(map, key, min, errors, &v);
  return v;
}

// `base`: the defaults the given fields go on top of (num_replicas: "auto" has its own, as in Ray).
AutoscalingConfig ReadAutoscaling(const YAML::Node& node, const std::string& path, Errors& errors,
                                  AutoscalingConfig base = {}) {
  AutoscalingConfig a = base;
  MapReader map(node, path, errors);
  if (!map.ok()) return a;
  ReadInt(map, "min_replicas", 0, 10000, errors, &a.min_replicas);
  ReadInt(map, "max_replicas", 1, 10000, errors, &a.max_replicas);
  YAML::Node initial = map.Get("initial_replicas");
  if (initial.IsDefined() && !initial.IsNull()) {
    int v = 0;
    ReadInt(map, "initial_replicas", 0, 10000, errors, &v);
    a.initial_replicas = v;
  }
  ReadNumber(map, "target_ongoing_requests", 0.001, errors, &a.target_ongoing_requests);
  ReadNumber(map, "upscale_delay_s", 0, errors, &a.upscale_delay_s);
  ReadNumber(map, "downscale_delay_s", 0, errors, &a.downscale_delay_s);
  a.downscale_to_zero_delay_s = ReadOptionalNumber(map, "downscale_to_zero_delay_s", 0, errors);
  a.upscaling_factor = ReadOptionalNumber(map, "upscaling_factor", 0.001, errors);
  a.downscaling_factor = ReadOptionalNumber(map, "downscaling_factor", 0.001, errors);
  ReadNumber(map, "metrics_interval_s", 0.01, errors, &a.metrics_interval_s);
  ReadNumber(map, "look_back_period_s", 0.01, errors, &a.look_back_period_s);
  YAML::Node aggregation = map.Get("aggregation_function");
  if (aggregation.IsDefined() && !aggregation.IsNull()) {
    const std::string v = aggregation.IsScalar() ? aggregation.Scalar() : "";
    if (v != "mean" && v != "max" && v != "min")
      errors.Add(aggregation, path + ".aggregation_function",
                 StrCat("expected mean, max or min, got ", Describe(aggregation)));
    else if (v != "mean")
      errors.Warn(aggregation, path + ".aggregation_function",
                  "accepted; ferry averages the load over look_back_period_s (mean) whatever is set here");
  }
  YAML::Node policy = map.Get("policy");
  if (policy.IsDefined() && !policy.IsNull())
    errors.Warn(policy, path + ".policy",
                "accepted; custom autoscaling policies are not run by ferry yet (the default policy applies)");
  map.RejectUnknown();
  if (a.min_replicas > a.max_replicas)
    errors.Add(node, path, StrCat("min_replicas (", a.min_replicas, ") is above max_replicas (", a.max_replicas, ")"));
  if (a.initial_replicas && (*a.initial_replicas < a.min_replicas || *a.initial_replicas > a.max_replicas))
    errors.Add(node, path + ".initial_replicas", "expected a value from min_replicas to max_replicas");
  return a;
}

// Ray Serve's num_replicas: "auto": autoscaling from 1 to 100 replicas, 2 requests each; an
// autoscaling_config given with it applies its fields on top of these.
AutoscalingConfig AutoDefaults() {
  AutoscalingConfig a;
  a.min_replicas = 1;
  a.max_replicas = 100;
  a.target_ongoing_requests = 2;
  return a;
}

void ReadBool(MapReader& map, const std::string& key, Errors& errors, bool* out) {
  YAML::Node node = map.Get(key);
  if (!node.IsDefined()) return;
  const std::string& v = node.IsScalar() && !IsQuoted(node) ? node.Scalar() : std::string();
  if (v == "true" || v == "True" || v == "TRUE")
    *out = true;
  else if (v == "false" || v == "False" || v == "FALSE")
    *out = false;
  else
    errors.Add(node, map.Field(key), StrCat("expected true or false, got ", Describe(node)));
}

// A logging_config section (top level, application or deployment); nullopt when absent.
std::optional<LoggingConfig> ReadLogging(MapReader& parent, Errors& errors) {
  YAML::Node node = parent.Get("logging_config");
  if (!node.IsDefined() || node.IsNull()) return std::nullopt;
  MapReader map(node, parent.Field("logging_config"), errors);
  if (!map.ok()) return std::nullopt;
  LoggingConfig l;
  YAML::Node encoding = map.Get("encoding");
  if (encoding.IsDefined() && (!encoding.IsScalar() || !ParseLogEncoding(encoding.Scalar(), &l.encoding)))
    errors.Add(encoding, map.Field("encoding"), StrCat("expected TEXT or JSON, got ", Describe(encoding)));
  YAML::Node level = map.Get("log_level");
  if (level.IsDefined() && (!level.IsScalar() || !ParseLogLevel(level.Scalar(), &l.log_level)))
    errors.Add(level, map.Field("log_level"),
               StrCat("expected DEBUG, INFO, WARNING, ERROR or CRITICAL, got ", Describe(level)));
  ReadBool(map, "enable_access_log", errors, &l.enable_access_log);
  for (const char* key : {"logs_dir", "additional_log_standard_attrs"}) {
    YAML::Node v = map.Get(key);
    if (v.IsDefined() && !v.IsNull())
      errors.Warn(v, map.Field(key),
                  std::string_view(key) == "logs_dir"
                      ? "accepted; ferry writes its logs (replicas' too) to standard error, where ferry start's log "
                        "file or the service manager keeps them"
                      : "accepted; ferry's log lines carry a fixed set of fields");
  }
  map.RejectUnknown();
  return l;
}

std::optional<TracingConfig> ReadTracing(MapReader& top, Errors& errors) {
  YAML::Node node = top.Get("tracing");
  if (!node.IsDefined() || node.IsNull()) return std::nullopt;
  MapReader map(node, "tracing", errors);
  if (!map.ok()) return std::nullopt;
  TracingConfig t;
  YAML::Node endpoint = map.Get("otlp_endpoint");
  ReadString(map, "otlp_endpoint", errors, &t.otlp_endpoint);
  if (!endpoint.IsDefined()) {
    errors.Add(map.Mark(), map.Field("otlp_endpoint"),
               "required: the collector's OTLP/HTTP traces URL, e.g. http://127.0.0.1:4318/v1/traces");
  } else if (!t.otlp_endpoint.empty()) {
    absl::StatusOr<HttpEndpoint> parsed = ParseHttpEndpoint(t.otlp_endpoint);
    if (!parsed.ok()) errors.Add(endpoint, map.Field("otlp_endpoint"), Message(parsed.status()));
  }
  YAML::Node ratio = map.Get("sampling_ratio");
  ReadNumber(map, "sampling_ratio", 0, errors, &t.sampling_ratio);
  if (t.sampling_ratio > 1) errors.Add(ratio, map.Field("sampling_ratio"), "expected a number from 0 to 1");
  map.RejectUnknown();
  return t;
}

// A mapping of resource names to non-negative amounts (ray_actor_options.resources, one placement group
// bundle), added to `out`.
void ReadResourceMap(const YAML::Node& node, const std::string& path, Errors& errors,
                     std::map<std::string, double>* out) {
  MapReader map(node, path, errors);
  if (!map.ok() || !node.IsMap()) return;
  for (const auto& item : node) {
    const std::string name = item.first.Scalar();
    double amount = 0;
    ReadNumber(map, name, 0, errors, &amount);
    (*out)[name] = amount;
  }
}

// Ray Serve's deployment options that are about a cluster or about Ray's own machinery. ray_actor_options'
// num_cpus and num_gpus are the replica's resources everywhere; its memory, resources and label_selector,
// placement_group_bundles/strategy and max_replicas_per_node place replicas in cluster mode (`placement`)
// and are accepted with a warning on a single node, where there is nowhere else to go.
void ReadRayOptions(MapReader& map, Errors& errors, DeploymentConfig& d) {
  constexpr const char* kClusterOnly =
      "accepted; it places replicas in cluster mode and has no effect on a single node";
  ReadNumber(map, "graceful_shutdown_wait_loop_s", 0, errors, &d.graceful_shutdown_wait_loop_s);
  spec::PlacementSpec& placement = d.placement;
  YAML::Node actor = map.Get("ray_actor_options");
  if (actor.IsDefined() && !actor.IsNull()) {
    MapReader amap(actor, map.Field("ray_actor_options"), errors);
    if (amap.ok()) {
      d.ray_actor_options = ToJsonValue(actor);
      ReadNumber(amap, "num_cpus", 0, errors, &d.resources.num_cpus);
      ReadNumber(amap, "num_gpus", 0, errors, &d.resources.num_gpus);
      double memory = 0;
      ReadNumber(amap, "memory", 0, errors, &memory);
      if (memory > 0) placement.resources["memory"] = memory;
      YAML::Node custom = amap.Get("resources");
      if (custom.IsDefined() && !custom.IsNull()) {
        ReadResourceMap(custom, amap.Field("resources"), errors, &placement.resources);
        for (const char* reserved : {"CPU", "GPU", "memory"})
          if (custom.IsMap() && custom[reserved].IsDefined())
            errors.Add(custom[reserved], StrCat(amap.Field("resources"), ".", reserved),
                       "set it with num_cpus, num_gpus or memory, as Ray requires");
      }
      YAML::Node labels = amap.Get("label_selector");
      if (labels.IsDefined() && !labels.IsNull()) {
        MapReader lmap(labels, amap.Field("label_selector"), errors);
        if (lmap.ok() && labels.IsMap())
          for (const auto& item : labels) {
            std::string value;
            ReadString(lmap, item.first.Scalar(), errors, &value);
            placement.label_selector[item.first.Scalar()] = value;
          }
      }
      for (const char* key : {"memory", "resources", "label_selector"}) {
        YAML::Node v = amap.Get(key);
        if (v.IsDefined() && !v.IsNull()) errors.Warn(v, amap.Field(key), kClusterOnly);
      }
      for (const char* key : {"accelerator_type", "runtime_env", "object_store_memory"}) {
        YAML::Node v = amap.Get(key);
        if (v.IsDefined() && !v.IsNull()) errors.Warn(v, amap.Field(key), "accepted; it has no effect in ferry yet");
      }
      amap.RejectUnknown();
    }
  }
  placement.resources["CPU"] = d.resources.num_cpus;
  if (d.resources.num_gpus > 0) placement.resources["GPU"] = d.resources.num_gpus;
  YAML::Node bundles = map.Get("placement_group_bundles");
  if (bundles.IsDefined() && !bundles.IsNull()) {
    if (!bundles.IsSequence() || bundles.size() == 0) {
      errors.Add(bundles, map.Field("placement_group_bundles"),
                 StrCat("expected a non-empty list of resource mappings, got ", Describe(bundles)));
    } else {
      for (size_t i = 0; i < bundles.size(); ++i) {
        std::map<std::string, double> bundle;
        ReadResourceMap(bundles[i], StrCat(map.Field("placement_group_bundles"), "[", i, "]"), errors, &bundle);
        placement.bundles.push_back(std::move(bundle));
      }
      errors.Warn(bundles, map.Field("placement_group_bundles"), kClusterOnly);
    }
  }
  YAML::Node strategy = map.Get("placement_group_strategy");
  if (strategy.IsDefined() && !strategy.IsNull()) {
    const std::string v = strategy.IsScalar() ? strategy.Scalar() : "";
    if (v != "PACK" && v != "SPREAD" && v != "STRICT_PACK" && v != "STRICT_SPREAD")
      errors.Add(strategy, map.Field("placement_group_strategy"),
                 StrCat("expected PACK, SPREAD, STRICT_PACK or STRICT_SPREAD, got ", Describe(strategy)));
    else if (placement.bundles.empty())
      errors.Add(strategy, map.Field("placement_group_strategy"), "needs placement_group_bundles, as in Ray");
    else
      placement.strategy = v;
    errors.Warn(strategy, map.Field("placement_group_strategy"), kClusterOnly);
  }
  YAML::Node per_node = map.Get("max_replicas_per_node");
  if (per_node.IsDefined() && !per_node.IsNull()) {
    int n = 0;
    ReadInt(map, "max_replicas_per_node", 1, 100, errors, &n);  // Ray's bounds
    if (n > 0) placement.max_replicas_per_node = n;
    errors.Warn(per_node, map.Field("max_replicas_per_node"), kClusterOnly);
  }
  for (const char* key : {"request_router_config", "version", "route_prefix"}) {
    YAML::Node v = map.Get(key);
    if (v.IsDefined() && !v.IsNull())
      errors.Warn(v, map.Field(key),
                  std::string_view(key) == "version" || std::string_view(key) == "route_prefix"
                      ? "accepted and ignored, as Ray Serve ignores it today"
                      : "accepted; it has no effect on a single node yet");
  }
}

DeploymentConfig ReadDeployment(const YAML::Node& node, const std::string& path, const std::string& base_dir,
                                const ValidationHooks& hooks, Errors& errors) {
  DeploymentConfig d;
  MapReader map(node, path, errors);
  if (!map.ok()) return d;
  ReadString(map, "name", errors, &d.name);
  if (d.name.empty()) errors.Add(map.Mark(), map.Field("name"), "required: a non-empty deployment name");
  YAML::Node import = map.Get("import_path");
  ReadString(map, "import_path", errors, &d.import_path);
  if (!import.IsDefined())
    errors.Add(map.Mark(), map.Field("import_path"),
               "required: builtin:NAME, torchscript:PATH, xgboost:PATH or path/to/lib.so:ClassName");
  else if (!d.import_path.empty())
    ReadImportPath(import, map.Field("import_path"), base_dir, hooks, errors, d);

  YAML::Node args = map.Get("args");
  if (args.IsDefined() && !args.IsNull()) {
    if (!args.IsMap())
      errors.Add(args, map.Field("args"), ferry::StrCat("expected a mapping, got ", Describe(args)));
    else
      d.args = ToJsonValue(args);
  }
  ReadModelName(map, d, errors);
  YAML::Node num_replicas = map.Get("num_replicas");
  bool auto_replicas = num_replicas.IsDefined() && num_replicas.IsScalar() && num_replicas.Scalar() == "auto";
  if (!auto_replicas) ReadInt(map, "num_replicas", 0, 10000, errors, &d.num_replicas);
  YAML::Node batching = map.Get("batching");
  if (batching.IsDefined() && !batching.IsNull()) {
    MapReader bmap(batching, map.Field("batching"), errors);
    if (bmap.ok()) {
      BatchingConfig b;
      ReadInt(bmap, "max_batch_size", 1, 100000, errors, &b.max_batch_size);
      ReadNumber(bmap, "batch_wait_timeout_s", 0, errors, &b.batch_wait_timeout_s);
      ReadInt(bmap, "max_concurrent_batches", 1, 256, errors, &b.max_concurrent_batches);
      YAML::Node adaptive = bmap.Get("adaptive");
      if (adaptive.IsDefined()) {
        if (!adaptive.IsScalar() || (adaptive.Scalar() != "true" && adaptive.Scalar() != "false"))
          errors.Add(adaptive, bmap.Field("adaptive"), StrCat("expected true or false, got ", Describe(adaptive)));
        else
          b.adaptive = adaptive.Scalar() == "true";
      }
      bmap.RejectUnknown();
      d.batching = b;
    }
  }
  YAML::Node autoscaling = map.Get("autoscaling_config");
  if (autoscaling.IsDefined() && !autoscaling.IsNull()) {
    if (num_replicas.IsDefined() && !auto_replicas)
      errors.Add(num_replicas, map.Field("num_replicas"), "set num_replicas or autoscaling_config, not both");
    d.autoscaling_config = ReadAutoscaling(autoscaling, map.Field("autoscaling_config"), errors,
                                           auto_replicas ? AutoDefaults() : AutoscalingConfig{});
  } else if (auto_replicas) {
    d.autoscaling_config = AutoDefaults();
  }
  ReadInt(map, "max_ongoing_requests", 1, 100000, errors, &d.max_ongoing_requests);
  ReadInt(map, "max_queued_requests", -1, 100000000, errors, &d.max_queued_requests);
  YAML::Node user_config = map.Get("user_config");
  if (user_config.IsDefined()) d.user_config = ToJsonValue(user_config);

  YAML::Node resources = map.Get("resources");
  MapReader res(resources, map.Field("resources"), errors);
  if (resources.IsDefined() && res.ok()) {
    ReadNumber(res, "num_cpus", 0, errors, &d.resources.num_cpus);
    ReadNumber(res, "num_gpus", 0, errors, &d.resources.num_gpus);
    res.RejectUnknown();
  }
  ReadRayOptions(map, errors, d);
  ReadNumber(map, "health_check_period_s", 0, errors, &d.health_check_period_s);
  ReadNumber(map, "health_check_timeout_s", 0, errors, &d.health_check_timeout_s);
  ReadNumber(map, "graceful_shutdown_timeout_s", 0, errors, &d.graceful_shutdown_timeout_s);
  ReadInt(map, "max_constructor_retry_count", 1, 1000000, errors, &d.max_constructor_retry_count);
  ReadNumber(map, "startup_timeout_s", 0, errors, &d.startup_timeout_s);
  d.logging_config = ReadLogging(map, errors);
  map.RejectUnknown();
  return d;
}

bool ValidRoutePrefix(const std::string& p) {
  if (p.empty() || p[0] != '/') return false;
  if (p.size() > 1 && p.back() == '/') return false;
  if (p.rfind("/-/", 0) == 0 || p == "/-") return false;
  if (p.rfind("/v2/", 0) == 0 || p == "/v2") return false;  // the Open Inference Protocol's endpoints
  return p.find_first_of("?# \t") == std::string::npos;
}

// YAML from JSON (what Python code set): strings stay strings however they look.
YAML::Node FromJson(const json& v) {
  switch (v.type()) {
    case json::value_t::object: {
      YAML::Node n(YAML::NodeType::Map);
      for (const auto& [k, x] : v.items()) n[k] = FromJson(x);
      return n;
    }
    case json::value_t::array: {
      YAML::Node n(YAML::NodeType::Sequence);
      for (const auto& x : v) n.push_back(FromJson(x));
      return n;
    }
    case json::value_t::null:
      return YAML::Node(YAML::NodeType::Null);
    case json::value_t::string: {
      YAML::Node n(v.get<std::string>());
      n.SetTag("!");
      return n;
    }
    default:
      return YAML::Node(v.dump());
  }
}

RuntimeEnv ReadRuntimeEnv(const YAML::Node& node, MapReader& parent, const std::string& base_dir, Errors& errors) {
  RuntimeEnv env;
  MapReader map(node, parent.Field("runtime_env"), errors);
  if (!map.ok() || !node.IsDefined() || node.IsNull()) return env;
  auto absolute = [&](const std::string& p) {
    std::filesystem::path path(p);
    if (path.is_relative()) path = std::filesystem::path(base_dir) / path;
    return path.lexically_normal().string();
  };
  ReadString(map, "working_dir", errors, &env.working_dir);
  if (!env.working_dir.empty()) {
    YAML::Node at = map.Get("working_dir");
    if (env.working_dir.find("://") != std::string::npos) {
      errors.Add(at, map.Field("working_dir"), "expected a local directory (remote URIs need a cluster)");
    } else {
      env.working_dir = absolute(env.working_dir);
      std::error_code ec;
      if (!std::filesystem::is_directory(env.working_dir, ec))
        errors.Add(at, map.Field("working_dir"), StrCat("no such directory: ", env.working_dir));
    }
  }
  YAML::Node modules = map.Get("py_modules");
  if (modules.IsDefined() && !modules.IsNull()) {
    if (!modules.IsSequence()) {
      errors.Add(modules, map.Field("py_modules"), "expected a list of local paths");
    } else {
      for (size_t i = 0; i < modules.size(); ++i) {
        if (!modules[i].IsScalar() || modules[i].Scalar().find("://") != std::string::npos) {
          errors.Add(modules[i], StrCat(map.Field("py_modules"), "[", i, "]"), "expected a local path");
          continue;
        }
        env.py_modules.push_back(absolute(modules[i].Scalar()));
      }
    }
  }
  YAML::Node vars = map.Get("env_vars");
  if (vars.IsDefined() && !vars.IsNull()) {
    if (!vars.IsMap())
      errors.Add(vars, map.Field("env_vars"), "expected a mapping of names to strings");
    else
      for (const auto& kv : vars) env.env_vars[kv.first.Scalar()] = kv.second.IsScalar() ? kv.second.Scalar() : "";
  }
  for (const char* key : {"pip", "conda", "uv", "container", "image_uri", "excludes", "config", "java_jars"}) {
    YAML::Node v = map.Get(key);
    if (v.IsDefined() && !v.IsNull())
      errors.Warn(v, map.Field(key),
                  "accepted and not applied: ferry runs Python code with the node's own packages (install them "
                  "with apt on every node)");
  }
  map.RejectUnknown();
  return env;
}

}  // namespace

std::vector<std::string> RuntimeEnv::SysPath() const {
  std::vector<std::string> out;
  if (!working_dir.empty())
    out.push_back(working_dir);
  else if (!config_dir.empty() && config_dir != "/")
    out.push_back(config_dir);
  // A module's directory or file: what goes on sys.path is the directory that holds it.
  for (const std::string& m : py_modules) out.push_back(std::filesystem::path(m).parent_path().string());
  return out;
}

namespace {

json ToJson(const RuntimeEnv& env) {
  json out = json::object();
  if (!env.working_dir.empty()) out["working_dir"] = env.working_dir;
  if (!env.py_modules.empty()) out["py_modules"] = env.py_modules;
  if (!env.env_vars.empty()) out["env_vars"] = env.env_vars;
  return out;
}

// Ray's application shape: `import_path` names Python code, `args` go to its builder, `deployments`
// override by name the options its deployments set in code (config file over code over defaults, each
// option replaced whole). With the build hook, the code is imported (in a child process) and the
// application's `deployments` become its Python deployments with the overrides applied, followed by
// any entry with an import_path of its own (a C++ deployment composed with them).
void ReadPythonApplication(const YAML::Node& node, MapReader& map, const std::string& base_dir,
                           const ValidationHooks& hooks, Errors& errors, ApplicationConfig& app) {
  YAML::Node import = map.Get("import_path");
  YAML::Node args = map.Get("args");
  if (args.IsDefined() && !args.IsNull()) {
    if (!args.IsMap())
      errors.Add(args, map.Field("args"), StrCat("expected a mapping, got ", Describe(args)));
    else
      app.args = ToJsonValue(args);
  }
  app.runtime_env = ReadRuntimeEnv(map.Get("runtime_env"), map, base_dir, errors);
  app.runtime_env.config_dir = base_dir;
  if (app.import_path.empty()) {
    errors.Add(import, map.Field("import_path"), "expected module:attribute (a bound application or a builder)");
    return;
  }
  if (!hooks.build_python_app) return;
  absl::StatusOr<PythonApp> built = hooks.build_python_app(app.import_path, app.args, app.runtime_env);
  if (!built.ok()) {
    // As Ray: the config is taken and the application is DEPLOY_FAILED with the traceback; what runs of it
    // keeps running. The warning tells the one who deployed it at once.
    app.build_error = Message(built.status());
    std::string_view last = app.build_error;
    while (!last.empty() && last.back() == '\n') last.remove_suffix(1);
    last = last.substr(last.find_last_of('\n') == std::string_view::npos ? 0 : last.find_last_of('\n') + 1);
    errors.Warn(import, map.Field("import_path"),
                StrCat("cannot import the application (", last,
                       "): it is DEPLOY_FAILED with the traceback in its status, and a version already running "
                       "keeps serving"));
    YAML::Node shared = node;  // the same node: later readers see the (empty) list
    shared["deployments"] = YAML::Node(YAML::NodeType::Sequence);
    return;
  }
  YAML::Node overrides = map.Get("deployments");
  if (overrides.IsDefined() && !overrides.IsNull() && !overrides.IsSequence()) {
    errors.Add(overrides, map.Field("deployments"), "expected a list of deployments");
    overrides = YAML::Node(YAML::NodeType::Sequence);
  }
  json names = json::array();
  for (const PythonApp::Deployment& d : built->deployments) names.push_back(d.name);
  YAML::Node out(YAML::NodeType::Sequence);
  std::set<std::string> used;
  for (const PythonApp::Deployment& d : built->deployments) {
    YAML::Node n = FromJson(d.options.is_object() ? d.options : json::object());
    n["name"] = FromJson(d.name);
    n["import_path"] = FromJson(StrCat("python:", app.import_path));
    json python = ToJson(app.runtime_env);
    python["sys_path"] = app.runtime_env.SysPath();
    python["import_path"] = app.import_path;
    python["app_args"] = app.args.is_null() ? json::object() : app.args;
    python["deployment"] = d.name;
    python["python_deployments"] = names;
    if (!built->code_version.empty()) python["code_version"] = built->code_version;
    n["args"] = FromJson(json{{"python", python}});
    for (size_t i = 0; overrides.IsDefined() && i < overrides.size(); ++i) {
      const YAML::Node& o = overrides[i];
      if (!o.IsMap() || !o["name"].IsDefined() || !o["name"].IsScalar() || o["name"].Scalar() != d.name) continue;
      used.insert(d.name);
      for (const auto& kv : o) {
        const std::string& key = kv.first.Scalar();
        if (key == "name") continue;
        if (key == "import_path" || key == "args") {
          // The stored form of an application built before (its own import path and args): rebuilt above.
          if (key == "import_path" && kv.second.IsScalar() && kv.second.Scalar().rfind("python:", 0) == 0) continue;
          if (key == "args" && kv.second.IsMap() && kv.second["python"].IsDefined()) continue;
          errors.Add(kv.first, StrCat(map.Field("deployments"), "[", i, "].", key),
                     "a deployment of a Python application takes its code and args from the application's "
                     "import_path and args");
          continue;
        }
        n[key] = kv.second;
      }
    }
    out.push_back(n);
  }
  for (size_t i = 0; overrides.IsDefined() && i < overrides.size(); ++i) {
    const YAML::Node& o = overrides[i];
    std::string name = o.IsMap() && o["name"].IsDefined() && o["name"].IsScalar() ? o["name"].Scalar() : "";
    if (used.count(name)) continue;
    YAML::Node own = o.IsMap() ? o["import_path"] : YAML::Node();
    if (own.IsDefined() && own.IsScalar() && own.Scalar().rfind("python:", 0) != 0) {
      out.push_back(o);  // a C++ deployment of the same application
      continue;
    }
    errors.Add(o, StrCat(map.Field("deployments"), "[", i, "]"),
               StrCat("no deployment named \"", name, "\" in the application ", app.import_path,
                      " builds (it has: ", absl::StrJoin(names.get<std::vector<std::string>>(), ", "), ")"));
  }
  YAML::Node shared = node;  // the same node: CheckHandleArgs and the readers below see the deployments
  shared["deployments"] = out;
  if (app.ingress.empty()) app.ingress = built->ingress;
}

ApplicationConfig ReadApplication(const YAML::Node& node, const std::string& path, const std::string& base_dir,
                                  const ValidationHooks& hooks, Errors& errors) {
  ApplicationConfig app;
  MapReader map(node, path, errors);
  if (!map.ok()) return app;
  ReadString(map, "name", errors, &app.name);
  if (app.name.empty()) errors.Add(map.Mark(), map.Field("name"), "required: a non-empty application name");
  YAML::Node prefix = map.Get("route_prefix");
  ReadString(map, "route_prefix", errors, &app.route_prefix);
  if (!ValidRoutePrefix(app.route_prefix))
    errors.Add(prefix.IsDefined() ? prefix.Mark() : map.Mark(), map.Field("route_prefix"),
               ferry::StrCat("expected a path starting with '/', without a trailing '/', not under /-/ or /v2, got \"",
                             app.route_prefix, "\""));
  YAML::Node ingress = map.Get("ingress");
  ReadString(map, "ingress", errors, &app.ingress);
  app.logging_config = ReadLogging(map, errors);
  YAML::Node external = map.Get("external_scaler_enabled");
  if (external.IsDefined() && !external.IsNull() && external.IsScalar() && external.Scalar() == "true")
    errors.Warn(external, map.Field("external_scaler_enabled"),
                "accepted; ferry's own autoscaler decides replica counts");
  YAML::Node deployments = map.Get("deployments");
  YAML::Node import = map.Get("import_path");
  ReadString(map, "build_error", errors, &app.build_error);  // the stored form of an application that failed
  if (import.IsDefined()) {
    ReadString(map, "import_path", errors, &app.import_path);
    ReadPythonApplication(node, map, base_dir, hooks, errors, app);
    deployments = map.Get("deployments");
  } else {
    for (const char* key : {"args", "runtime_env"})
      if (map.Get(key).IsDefined())
        errors.Add(map.Get(key), map.Field(key), "needs an application-level import_path (a Python application)");
  }
  if (!app.import_path.empty() && (!deployments.IsDefined() || deployments.size() == 0)) {
    // A Python application that could not be built (build_error says why), or read without its code.
    if (app.build_error.empty() && !hooks.build_python_app)
      errors.Add(import, map.Field("import_path"), "this config was read without importing its Python code");
  } else if (!deployments.IsDefined() || !deployments.IsSequence() || deployments.size() == 0) {
    errors.Add(deployments.IsDefined() ? deployments.Mark() : map.Mark(), map.Field("deployments"),
               "required: a non-empty list of deployments");
  } else {
    std::set<std::string> names;
    if (!app.import_path.empty()) errors.SetFallback(import.Mark());
    for (size_t i = 0; i < deployments.size(); ++i) {
      std::string field = ferry::StrCat(map.Field("deployments"), "[", i, "]");
      app.deployments.push_back(ReadDeployment(deployments[i], field, base_dir, hooks, errors));
      const std::string& name = app.deployments.back().name;
      if (!name.empty() && !names.insert(name).second)
        errors.Add(deployments[i].Mark(), field + ".name",
                   ferry::StrCat("duplicate deployment name \"", name, "\" in application \"", app.name, "\""));
    }
    errors.SetFallback(std::nullopt);
    if (app.ingress.empty()) {
      app.ingress = app.deployments.front().name;
    } else if (!names.count(app.ingress)) {
      errors.Add(ingress, map.Field("ingress"),
                 ferry::StrCat("no deployment named \"", app.ingress, "\" in this application"));
    }
  }
  map.RejectUnknown();
  return app;
}

// The deployments a deployment's args name (its handles): each top-level args value, and each entry of a
// top-level list, that is a mapping {deployment: NAME[, application: APP]} (must exist), or a string equal
// to the name of another deployment of the same application; for builtin:call, args.next and each entry of
// args.fanout must name one. Rejects references to deployments that do not exist, and cycles among an
// application's deployments (a request through a cycle would never end; Ray's bind graphs cannot have one).
void CheckHandleArgs(const std::vector<ApplicationConfig>& apps, const YAML::Node& apps_yaml, Errors& errors) {
  std::map<std::string, std::set<std::string>> deployments_of;  // application -> deployment names
  for (const ApplicationConfig& app : apps)
    for (const DeploymentConfig& d : app.deployments) deployments_of[app.name].insert(d.name);
  for (size_t i = 0; i < apps.size(); ++i) {
    const ApplicationConfig& app = apps[i];
    const std::set<std::string>& own = deployments_of[app.name];
    std::map<std::string, std::vector<std::string>> edges;  // same-application calls, for the cycle check
    for (size_t j = 0; j < app.deployments.size(); ++j) {
      const DeploymentConfig& d = app.deployments[j];
      if (!d.args.is_object()) continue;
      YAML::Node args_yaml = apps_yaml[i]["deployments"][j]["args"];
      const std::string field = ferry::StrCat("applications[", i, "].deployments[", j, "].args");
      const bool is_call = d.kind == DeploymentConfig::Kind::kBuiltin && d.symbol == "call";
      // One value that may name a deployment; `required`: it must (builtin:call's next and fanout).
      auto check = [&](const nlohmann::json& v, const YAML::Node& at, const std::string& where, bool required) {
        std::string app_name = app.name, name;
        if (v.is_object() && v.contains("deployment") && v["deployment"].is_string() &&
            v.size() == (v.contains("application") ? 2u : 1u)) {
          name = v["deployment"].get<std::string>();
          if (v.contains("application")) {
            if (!v["application"].is_string()) {
              errors.Add(at.Mark(), where + ".application", "expected an application name");
              return;
            }
            app_name = v["application"].get<std::string>();
          }
          auto a = deployments_of.find(app_name);
          if (a == deployments_of.end()) {
            errors.Add(at.Mark(), where,
                       ferry::StrCat("names application \"", app_name, "\", which this config does not have"));
            return;
          }
          if (!a->second.count(name)) {
            errors.Add(
                at.Mark(), where,
                ferry::StrCat("names deployment \"", name, "\", which application \"", app_name, "\" does not have"));
            return;
          }
        } else if (v.is_string() && own.count(v.get<std::string>()) && v.get<std::string>() != d.name) {
          name = v.get<std::string>();
        } else if (v.is_string() && v.get<std::string>() == d.name && required) {
          errors.Add(at.Mark(), where, ferry::StrCat("deployment \"", d.name, "\" would call itself"));
          return;
        } else {
          if (required)
            errors.Add(at.Mark(), where,
                       ferry::StrCat("expected the name of a deployment of application \"", app.name, "\" (one of: ",
                                     absl::StrJoin(own, ", "), ") or {deployment: NAME, application: APP}"));
          return;
        }
        if (app_name == app.name) edges[d.name].push_back(name);
      };
      for (const auto& [key, value] : d.args.items()) {
        YAML::Node at = args_yaml[key];
        const std::string where = ferry::StrCat(field, ".", key);
        const bool required = is_call && (key == "next" || key == "fanout");
        if (value.is_array() && required && key == "next") {
          check(value, at, where, true);  // one deployment, not a list: the error says so
        } else if (value.is_array()) {
          for (size_t k = 0; k < value.size(); ++k) check(value[k], at[k], ferry::StrCat(where, "[", k, "]"), required);
        } else {
          if (required && key == "fanout")
            errors.Add(at.Mark(), where, "expected a list of deployment names");
          else
            check(value, at, where, required);
        }
      }
    }
    // A cycle: depth-first search from each deployment, reporting the first cycle found once.
    std::map<std::string, int> state;  // 0 new, 1 on the path, 2 done
    std::vector<std::string> path;
    std::function<bool(const std::string&)> visit = [&](const std::string& n) -> bool {
      state[n] = 1;
      path.push_back(n);
      for (const std::string& m : edges[n]) {
        if (state[m] == 1) {
          auto from = std::find(path.begin(), path.end(), m);
          std::string cycle = absl::StrJoin(std::vector<std::string>(from, path.end()), " -> ") + " -> " + m;
          size_t j = 0;
          while (j < app.deployments.size() && app.deployments[j].name != m) ++j;
          errors.Add(apps_yaml[i]["deployments"][j].Mark(),
                     ferry::StrCat("applications[", i, "].deployments[", j, "].args"),
                     ferry::StrCat("the deployments' args form a cycle: ", cycle,
                                   " (a request through it would never end; calls must form a graph without cycles)"));
          return true;
        }
        if (state[m] == 0 && visit(m)) return true;
      }
      path.pop_back();
      state[n] = 2;
      return false;
    };
    for (const DeploymentConfig& d : app.deployments)
      if (state[d.name] == 0 && visit(d.name)) break;
  }
}

}  // namespace

const DeploymentConfig& ApplicationConfig::IngressDeployment() const {
  for (const auto& d : deployments)
    if (d.name == ingress) return d;
  return deployments.front();
}

// Every key and scalar of the document must be UTF-8 (YAML's own encoding): ferry writes them back as JSON
// (status, the state store, logs), and bytes that are not UTF-8 — raw, or made by an escape such as
// "\ud800" — have no JSON form.
namespace {

void CheckUtf8(const YAML::Node& node, const std::string& path, Errors& errors) {
  auto check = [&](const YAML::Node& scalar, const std::string& where) {
    const std::string& text = scalar.Scalar();
    const size_t bad = FirstInvalidUtf8(text);
    if (bad == std::string_view::npos) return true;
    errors.Add(
        scalar, where.empty() ? "config" : where,
        StrCat("not valid UTF-8 (byte ", bad, " is 0x", HexString(static_cast<unsigned char>(text[bad]), 2), ")"));
    return false;
  };
  if (node.IsScalar()) {
    check(node, path);
  } else if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) CheckUtf8(node[i], StrCat(path, "[", i, "]"), errors);
  } else if (node.IsMap()) {
    for (const auto& kv : node) {
      if (!kv.first.IsScalar()) {
        CheckUtf8(kv.first, path, errors);
        CheckUtf8(kv.second, path, errors);
      } else if (check(kv.first, path)) {
        CheckUtf8(kv.second, path.empty() ? kv.first.Scalar() : StrCat(path, ".", kv.first.Scalar()), errors);
      }
    }
  }
}

}  // namespace

absl::StatusOr<Config> ParseConfig(std::string_view yaml_text, std::string_view source_name,
                                   const std::string& base_dir, const ValidationHooks& hooks) {
  Errors errors{std::string(source_name)};
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml_text));
  } catch (const YAML::Exception& e) {
    errors.Add(e.mark, "yaml", e.msg);
    return errors.ToStatus();
  }
  CheckUtf8(root, "", errors);
  if (!errors.empty()) return errors.ToStatus();
  Config config;
  config.source_path = std::string(source_name);
  MapReader top(root, "", errors);
  if (!root.IsMap()) {
    if (top.ok()) errors.Add(root.Mark(), "config", "expected a mapping with an 'applications' list");
    return errors.ToStatus();
  }
  YAML::Node http = top.Get("http_options");
  MapReader hmap(http, "http_options", errors);
  if (http.IsDefined() && hmap.ok()) {
    config.has_http_options = true;
    HttpOptions& h = config.http_options;
    ReadString(hmap, "host", errors, &h.host);
    ReadInt(hmap, "port", 0, 65535, errors, &h.port);
    std::optional<double> timeout = ReadOptionalNumber(hmap, "request_timeout_s", 0, errors);
    if (timeout && *timeout > 0) h.request_timeout_s = timeout;
    ReadNumber(hmap, "keep_alive_timeout_s", 0, errors, &h.keep_alive_timeout_s);
    ReadNumber(hmap, "header_timeout_s", 0, errors, &h.header_timeout_s);
    ReadInt(hmap, "max_body_bytes", 0, 1ll << 40, errors, &h.max_body_bytes);
    ReadInt(hmap, "body_stream_threshold_bytes", 0, 1ll << 40, errors, &h.body_stream_threshold_bytes);
    ReadInt(hmap, "num_threads", 0, 256, errors, &h.num_threads);
    ReadInt(hmap, "websocket_max_message_bytes", 1, 1ll << 30, errors, &h.websocket_max_message_bytes);
    ReadNumber(hmap, "websocket_idle_timeout_s", 0, errors, &h.websocket_idle_timeout_s);
    ReadNumber(hmap, "websocket_ping_interval_s", 0, errors, &h.websocket_ping_interval_s);
    for (const char* key : {"root_path", "ssl_keyfile", "ssl_certfile", "ssl_keyfile_password", "ssl_ca_certs",
                            "location", "middlewares"}) {
      YAML::Node v = hmap.Get(key);
      if (v.IsDefined() && !v.IsNull() && !(v.IsScalar() && v.Scalar().empty()))
        errors.Warn(v, hmap.Field(key), "accepted; it has no effect in ferry yet");
    }
    hmap.RejectUnknown();
  }
  YAML::Node admin = top.Get("admin");
  MapReader amap(admin, "admin", errors);
  if (admin.IsDefined() && amap.ok()) {
    config.has_admin = true;
    AdminOptions& a = config.admin;
    ReadString(amap, "host", errors, &a.host);
    ReadInt(amap, "port", 0, 65535, errors, &a.port);
    ReadString(amap, "auth_token", errors, &a.auth_token);
    ReadString(amap, "auth_token_file", errors, &a.auth_token_file);
    amap.RejectUnknown();
    if (!a.auth_token_file.empty() && std::filesystem::path(a.auth_token_file).is_relative())
      a.auth_token_file = (std::filesystem::path(base_dir) / a.auth_token_file).lexically_normal().string();
    if (!a.auth_token.empty() && !a.auth_token_file.empty())
      errors.Add(admin.Mark(), "admin", "set auth_token or auth_token_file, not both");
  }
  config.logging_config = ReadLogging(top, errors);
  config.tracing = ReadTracing(top, errors);
  // Ray Serve's node-level sections.
  YAML::Node proxy_location = top.Get("proxy_location");
  if (proxy_location.IsDefined() && !proxy_location.IsNull()) {
    const std::string v = proxy_location.IsScalar() ? proxy_location.Scalar() : "";
    if (v != "EveryNode" && v != "HeadOnly" && v != "Disabled")
      errors.Add(proxy_location, "proxy_location",
                 StrCat("expected EveryNode, HeadOnly or Disabled, got ", Describe(proxy_location)));
    else
      config.proxy_location = v;
  }
  YAML::Node grpc = top.Get("grpc_options");
  if (grpc.IsDefined() && !grpc.IsNull()) {
    if (!grpc.IsMap())
      errors.Add(grpc, "grpc_options", StrCat("expected a mapping, got ", Describe(grpc)));
    else if (grpc["grpc_servicer_functions"].IsDefined() && grpc["grpc_servicer_functions"].size() > 0)
      errors.Warn(grpc, "grpc_options",
                  "accepted; ferry has no gRPC proxy yet (its HTTP proxy serves every application)");
  }
  YAML::Node target_capacity = top.Get("target_capacity");
  if (target_capacity.IsDefined() && !target_capacity.IsNull()) {
    double v = 0;
    ReadNumber(top, "target_capacity", 0, errors, &v);
    if (v > 100)
      errors.Add(target_capacity, "target_capacity", "expected a percentage from 0 to 100");
    else if (v != 100)
      errors.Warn(target_capacity, "target_capacity",
                  "accepted; ferry runs every deployment at its full target for now");
  }
  YAML::Node apps = top.Get("applications");
  if (!apps.IsDefined() || !apps.IsSequence()) {
    // An empty list is a config: a node with nothing deployed yet, or every application removed.
    errors.Add(apps.IsDefined() ? apps.Mark() : root.Mark(), "applications",
               "required: a list of applications (it may be empty: [])");
  } else {
    std::set<std::string> names, prefixes;
    for (size_t i = 0; i < apps.size(); ++i) {
      std::string field = ferry::StrCat("applications[", i, "]");
      config.applications.push_back(ReadApplication(apps[i], field, base_dir, hooks, errors));
      const ApplicationConfig& app = config.applications.back();
      if (!app.name.empty() && !names.insert(app.name).second)
        errors.Add(apps[i].Mark(), field + ".name", ferry::StrCat("duplicate application name \"", app.name, "\""));
      if (!prefixes.insert(app.route_prefix).second) {
        YAML::Node p = apps[i].IsMap() ? apps[i]["route_prefix"] : YAML::Node();
        errors.Add(p.IsDefined() ? p.Mark() : apps[i].Mark(), field + ".route_prefix",
                   ferry::StrCat("duplicate route_prefix \"", app.route_prefix, "\""));
      }
    }
    if (errors.empty()) CheckHandleArgs(config.applications, apps, errors);
    // Model names are one namespace across applications: /v2/models/{name} must mean one deployment.
    std::map<std::string, std::string> models;  // model name -> "application/deployment"
    for (size_t i = 0; i < config.applications.size(); ++i) {
      const ApplicationConfig& app = config.applications[i];
      for (size_t j = 0; j < app.deployments.size(); ++j) {
        const DeploymentConfig& d = app.deployments[j];
        if (d.model_name.empty()) continue;
        std::string who = ferry::StrCat(app.name, "/", d.name);
        auto [it, fresh] = models.emplace(d.model_name, who);
        if (fresh) continue;
        YAML::Node dn = apps[i]["deployments"][j];
        errors.Add(dn.Mark(), ferry::StrCat("applications[", i, "].deployments[", j, "]"),
                   ferry::StrCat("model name \"", d.model_name, "\" is already served by ", it->second,
                                 "; set args.model_name to tell them apart"));
      }
    }
  }
  top.RejectUnknown();
  if (!errors.empty()) return errors.ToStatus();
  config.warnings = errors.warnings();
  for (ApplicationConfig& app : config.applications)
    for (DeploymentConfig& d : app.deployments)
      d.logging = d.logging_config     ? *d.logging_config
                  : app.logging_config ? *app.logging_config
                                       : config.logging_config.value_or(LoggingConfig{});
  return config;
}

absl::StatusOr<Config> LoadConfigFile(const std::string& path, const ValidationHooks& hooks) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(ferry::StrCat(path, ": cannot read config file: ", std::strerror(errno)));
  std::stringstream text;
  text << in.rdbuf();
  std::filesystem::path base = std::filesystem::absolute(path).parent_path();
  return ParseConfig(text.str(), path, base.string(), hooks);
}

absl::Status CheckPluginInChildProcess(const std::string& path, const std::string& symbol) {
  Pipe pipe = Pipe::Make(0);
  if (!pipe.ok) return absl::InternalError("pipe failed");
  std::string entry = "ferry_deployment_" + symbol;
  pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    pipe.read.reset();
    std::string message;
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      message = ferry::StrCat("cannot load plugin: ", dlerror());
    } else if (!dlsym(lib, entry.c_str())) {
      message = ferry::StrCat("plugin ", path, " has no deployment \"", symbol, "\" (symbol ", entry,
                              " not found; export it with FERRY_DEPLOYMENT(", symbol, "))");
    }
    if (!message.empty()) {
      ssize_t n = write(pipe.write.get(), message.data(), message.size());
      (void)n;
    }
    _exit(0);
  }
  pipe.write.reset();
  std::string message;
  char buf[512];
  ssize_t n;
  while ((n = read(pipe.read.get(), buf, sizeof(buf))) > 0) message.append(buf, n);
  pipe.read.reset();
  int status = 0;
  waitpid(pid, &status, 0);
  if (!message.empty()) return absl::InvalidArgumentError(message);
  if (!WIFEXITED(status))
    return absl::InvalidArgumentError(ferry::StrCat("loading plugin ", path, " crashed the loader"));
  return absl::OkStatus();
}

std::string DeploymentConfig::ResolvedImportPath() const {
  if (kind == Kind::kPlugin) return StrCat(plugin_path, ":", symbol);
  if (kind == Kind::kRuntime) return StrCat(runtime, ":", model_path);
  return import_path;
}

bool AdminOptions::IsLoopback() const { return host.rfind("127.", 0) == 0 || host == "::1" || host == "localhost"; }

absl::StatusOr<std::string> LoadAdminToken(const AdminOptions& admin) {
  if (!admin.auth_token.empty()) return admin.auth_token;
  if (admin.auth_token_file.empty()) return std::string();
  std::ifstream in(admin.auth_token_file);
  std::string token;
  if (!in || !std::getline(in, token))
    return absl::NotFoundError(StrCat("admin.auth_token_file: cannot read ", admin.auth_token_file));
  while (!token.empty() && (token.back() == '\r' || token.back() == ' ')) token.pop_back();
  if (token.empty())
    return absl::InvalidArgumentError(StrCat("admin.auth_token_file: ", admin.auth_token_file, " is empty"));
  return token;
}

json ToJson(const AutoscalingConfig& a) {
  auto opt = [](const auto& v) { return v ? json(*v) : json(nullptr); };
  return {{"min_replicas", a.min_replicas},
          {"max_replicas", a.max_replicas},
          {"initial_replicas", opt(a.initial_replicas)},
          {"target_ongoing_requests", a.target_ongoing_requests},
          {"upscale_delay_s", a.upscale_delay_s},
          {"downscale_delay_s", a.downscale_delay_s},
          {"downscale_to_zero_delay_s", opt(a.downscale_to_zero_delay_s)},
          {"upscaling_factor", opt(a.upscaling_factor)},
          {"downscaling_factor", opt(a.downscaling_factor)},
          {"metrics_interval_s", a.metrics_interval_s},
          {"look_back_period_s", a.look_back_period_s}};
}

json ToJson(const HttpOptions& h) {
  json out = {{"host", h.host},
              {"port", h.port},
              {"keep_alive_timeout_s", h.keep_alive_timeout_s},
              {"header_timeout_s", h.header_timeout_s},
              {"max_body_bytes", h.max_body_bytes},
              {"body_stream_threshold_bytes", h.body_stream_threshold_bytes},
              {"num_threads", h.num_threads},
              {"websocket_max_message_bytes", h.websocket_max_message_bytes},
              {"websocket_idle_timeout_s", h.websocket_idle_timeout_s},
              {"websocket_ping_interval_s", h.websocket_ping_interval_s}};
  out["request_timeout_s"] = h.request_timeout_s ? json(*h.request_timeout_s) : json(nullptr);
  return out;
}

json ToJson(const ApplicationConfig& app) {
  json a = {
      {"name", app.name}, {"route_prefix", app.route_prefix}, {"ingress", app.ingress}, {"deployments", json::array()}};
  for (const auto& d : app.deployments) {
    a["deployments"].push_back({{"name", d.name},
                                {"import_path", d.ResolvedImportPath()},
                                {"args", d.args},
                                {"num_replicas", d.num_replicas},
                                {"max_ongoing_requests", d.max_ongoing_requests},
                                {"max_queued_requests", d.max_queued_requests},
                                {"user_config", d.user_config},
                                {"resources", {{"num_cpus", d.resources.num_cpus}, {"num_gpus", d.resources.num_gpus}}},
                                {"health_check_period_s", d.health_check_period_s},
                                {"health_check_timeout_s", d.health_check_timeout_s},
                                {"graceful_shutdown_timeout_s", d.graceful_shutdown_timeout_s},
                                {"max_constructor_retry_count", d.max_constructor_retry_count},
                                {"startup_timeout_s", d.startup_timeout_s},
                                {"graceful_shutdown_wait_loop_s", d.graceful_shutdown_wait_loop_s}});
    if (!d.ray_actor_options.is_null()) a["deployments"].back()["ray_actor_options"] = d.ray_actor_options;
    // Where its replicas may run (cluster mode), so that the state a new leader restores places them alike.
    if (!d.placement.bundles.empty()) {
      a["deployments"].back()["placement_group_bundles"] = d.placement.bundles;
      a["deployments"].back()["placement_group_strategy"] = d.placement.strategy;
    }
    if (d.placement.max_replicas_per_node)
      a["deployments"].back()["max_replicas_per_node"] = *d.placement.max_replicas_per_node;
    if (d.batching) a["deployments"].back()["batching"] = ToJson(*d.batching);
    if (d.logging_config) a["deployments"].back()["logging_config"] = ToJson(*d.logging_config);
    if (d.autoscaling_config) {  // one or the other, as in the config file
      a["deployments"].back().erase("num_replicas");
      a["deployments"].back()["autoscaling_config"] = ToJson(*d.autoscaling_config);
    }
  }
  if (app.logging_config) a["logging_config"] = ToJson(*app.logging_config);
  if (!app.import_path.empty()) {
    a["import_path"] = app.import_path;
    if (!app.args.is_null()) a["args"] = app.args;
    if (!app.runtime_env.empty()) a["runtime_env"] = ToJson(app.runtime_env);
  }
  if (!app.build_error.empty()) a["build_error"] = app.build_error;
  return a;
}

json ToJson(const Config& config) {
  json out;
  out["http_options"] = ToJson(config.http_options);
  if (config.proxy_location != "EveryNode") out["proxy_location"] = config.proxy_location;
  if (config.logging_config) out["logging_config"] = ToJson(*config.logging_config);
  if (config.tracing) out["tracing"] = ToJson(*config.tracing);
  out["applications"] = json::array();
  for (const auto& app : config.applications) out["applications"].push_back(ToJson(app));
  return out;
}

}  // namespace ferry::config
