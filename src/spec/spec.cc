#include "spec/spec.h"

namespace ferry::spec {

using nlohmann::json;

json ToJson(const LoggingConfig& l) {
  return {{"encoding", LogEncodingName(l.encoding)},
          {"log_level", LogLevelName(l.log_level)},
          {"enable_access_log", l.enable_access_log}};
}

json ToJson(const TracingConfig& t) {
  return {{"otlp_endpoint", t.otlp_endpoint}, {"sampling_ratio", t.sampling_ratio}};
}

json ToJson(const BatchingConfig& b) {
  return {{"max_batch_size", b.max_batch_size},
          {"batch_wait_timeout_s", b.batch_wait_timeout_s},
          {"max_concurrent_batches", b.max_concurrent_batches},
          {"adaptive", b.adaptive}};
}

json ToJson(const ReplicaSpec& s) {
  return {{"replica_id", s.replica_id},
          {"application", s.application},
          {"deployment", s.deployment},
          {"import_path", s.import_path},
          {"builtin", s.builtin},
          {"plugin_path", s.plugin_path},
          {"symbol", s.symbol},
          {"args", s.args},
          {"user_config", s.user_config},
          {"max_ongoing_requests", s.max_ongoing_requests},
          {"num_cpus", s.num_cpus},
          {"tcp_host", s.tcp_host},
          {"graceful_shutdown_timeout_s", s.graceful_shutdown_timeout_s},
          {"batching", s.batching ? ToJson(*s.batching) : json(nullptr)},
          {"logging", ToJson(s.logging)},
          {"tracing", s.tracing ? ToJson(*s.tracing) : json(nullptr)},
          {"version", s.version},
          {"placement", ToJson(s.placement)}};
}

json ToJson(const PlacementSpec& p) {
  json out = {{"resources", p.resources}, {"bundles", p.bundles}, {"strategy", p.strategy}};
  if (p.max_replicas_per_node) out["max_replicas_per_node"] = *p.max_replicas_per_node;
  if (!p.label_selector.empty()) out["label_selector"] = p.label_selector;
  return out;
}

json ToJson(const ReplicaUpdate& u) {
  json out = json::object();
  if (u.user_config) out["user_config"] = *u.user_config;
  if (u.max_ongoing_requests) out["max_ongoing_requests"] = *u.max_ongoing_requests;
  if (u.logging) out["logging_config"] = ToJson(*u.logging);
  if (u.tracing) out["tracing"] = *u.tracing ? ToJson(**u.tracing) : json(nullptr);
  return out;
}

namespace {

// Reads `object[key]` into `*out` when present; an error names `what.key` when it has another type.
class Fields {
 public:
  Fields(const json& object, std::string_view what) : object_(object), what_(what) {}

  template <typename T>
  void Read(const char* key, T* out) {
    auto it = object_.find(key);
    if (it == object_.end() || !status_.ok()) return;
    bool fits;
    if constexpr (std::is_same_v<T, bool>) {
      fits = it->is_boolean();
    } else if constexpr (std::is_integral_v<T>) {
      fits = it->is_number_integer();
    } else if constexpr (std::is_floating_point_v<T>) {
      fits = it->is_number();
    } else {
      fits = it->is_string();
    }
    if (!fits) {
      status_ = absl::InvalidArgumentError(StrCat(what_, ".", key, ": unexpected type ", it->type_name()));
      return;
    }
    *out = it->get<T>();
  }
  void Required(std::initializer_list<const char*> keys) {
    for (const char* key : keys)
      if (status_.ok() && !object_.contains(key))
        status_ = absl::InvalidArgumentError(StrCat(what_, ".", key, ": required"));
  }
  absl::Status status() const { return status_; }

 private:
  const json& object_;
  std::string_view what_;
  absl::Status status_;
};

absl::Status ExpectObject(const json& j, std::string_view what) {
  return j.is_object() ? absl::OkStatus() : absl::InvalidArgumentError(StrCat(what, ": expected an object"));
}

}  // namespace

absl::StatusOr<LoggingConfig> LoggingFromJson(const json& j) {
  if (absl::Status s = ExpectObject(j, "logging_config"); !s.ok()) return s;
  LoggingConfig l;
  Fields f(j, "logging_config");
  std::string encoding = LogEncodingName(l.encoding), level = LogLevelName(l.log_level);
  f.Read("encoding", &encoding);
  f.Read("log_level", &level);
  f.Read("enable_access_log", &l.enable_access_log);
  if (!f.status().ok()) return f.status();
  if (!ParseLogEncoding(encoding, &l.encoding))
    return absl::InvalidArgumentError(StrCat("logging_config.encoding: expected TEXT or JSON, got ", encoding));
  if (!ParseLogLevel(level, &l.log_level))
    return absl::InvalidArgumentError(StrCat("logging_config.log_level: unknown level ", level));
  return l;
}

absl::StatusOr<TracingConfig> TracingFromJson(const json& j) {
  if (absl::Status s = ExpectObject(j, "tracing"); !s.ok()) return s;
  TracingConfig t;
  Fields f(j, "tracing");
  f.Read("otlp_endpoint", &t.otlp_endpoint);
  f.Read("sampling_ratio", &t.sampling_ratio);
  if (!f.status().ok()) return f.status();
  return t;
}

absl::StatusOr<BatchingConfig> BatchingFromJson(const json& j) {
  if (absl::Status s = ExpectObject(j, "batching"); !s.ok()) return s;
  BatchingConfig b;
  Fields f(j, "batching");
  f.Read("max_batch_size", &b.max_batch_size);
  f.Read("batch_wait_timeout_s", &b.batch_wait_timeout_s);
  f.Read("max_concurrent_batches", &b.max_concurrent_batches);
  f.Read("adaptive", &b.adaptive);
  if (!f.status().ok()) return f.status();
  return b;
}

absl::StatusOr<ReplicaSpec> ReplicaSpecFromJson(const json& j) {
  if (absl::Status s = ExpectObject(j, "replica spec"); !s.ok()) return s;
  ReplicaSpec s;
  Fields f(j, "replica spec");
  f.Required({"replica_id", "application", "deployment", "import_path", "symbol"});
  f.Read("replica_id", &s.replica_id);
  f.Read("application", &s.application);
  f.Read("deployment", &s.deployment);
  f.Read("import_path", &s.import_path);
  f.Read("builtin", &s.builtin);
  f.Read("plugin_path", &s.plugin_path);
  f.Read("symbol", &s.symbol);
  f.Read("max_ongoing_requests", &s.max_ongoing_requests);
  f.Read("num_cpus", &s.num_cpus);
  f.Read("tcp_host", &s.tcp_host);
  f.Read("graceful_shutdown_timeout_s", &s.graceful_shutdown_timeout_s);
  f.Read("version", &s.version);
  if (!f.status().ok()) return f.status();
  if (auto it = j.find("placement"); it != j.end() && !it->is_null()) {
    try {  // written by a ferry node: a wrong shape is an error, reported as such
      PlacementSpec& p = s.placement;
      p.resources = it->at("resources").get<std::map<std::string, double>>();
      p.bundles = it->at("bundles").get<std::vector<std::map<std::string, double>>>();
      p.strategy = it->at("strategy").get<std::string>();
      if (it->contains("max_replicas_per_node")) p.max_replicas_per_node = it->at("max_replicas_per_node").get<int>();
      if (it->contains("label_selector"))
        p.label_selector = it->at("label_selector").get<std::map<std::string, std::string>>();
    } catch (const std::exception& e) {
      return absl::InvalidArgumentError(StrCat("replica spec: placement: ", e.what()));
    }
  }
  if (auto it = j.find("args"); it != j.end()) s.args = *it;
  if (auto it = j.find("user_config"); it != j.end()) s.user_config = *it;
  if (auto it = j.find("batching"); it != j.end() && !it->is_null()) {
    absl::StatusOr<BatchingConfig> b = BatchingFromJson(*it);
    if (!b.ok()) return b.status();
    s.batching = *b;
  }
  if (auto it = j.find("logging"); it != j.end() && !it->is_null()) {
    absl::StatusOr<LoggingConfig> l = LoggingFromJson(*it);
    if (!l.ok()) return l.status();
    s.logging = *l;
  }
  if (auto it = j.find("tracing"); it != j.end() && !it->is_null()) {
    absl::StatusOr<TracingConfig> t = TracingFromJson(*it);
    if (!t.ok()) return t.status();
    s.tracing = *t;
  }
  return s;
}

absl::StatusOr<ReplicaUpdate> ReplicaUpdateFromJson(const json& j) {
  if (absl::Status s = ExpectObject(j, "reconfigure"); !s.ok()) return s;
  ReplicaUpdate u;
  if (auto it = j.find("user_config"); it != j.end()) u.user_config = *it;
  if (auto it = j.find("max_ongoing_requests"); it != j.end()) {
    if (!it->is_number_integer() || it->get<int64_t>() < 1 || it->get<int64_t>() > INT32_MAX)
      return absl::InvalidArgumentError("reconfigure: max_ongoing_requests must be a positive integer");
    u.max_ongoing_requests = it->get<int>();
  }
  if (auto it = j.find("logging_config"); it != j.end()) {
    absl::StatusOr<LoggingConfig> l = LoggingFromJson(*it);
    if (!l.ok()) return l.status();
    u.logging = *l;
  }
  if (auto it = j.find("tracing"); it != j.end()) {
    if (it->is_null()) {
      u.tracing = std::optional<TracingConfig>();
    } else {
      absl::StatusOr<TracingConfig> t = TracingFromJson(*it);
      if (!t.ok()) return t.status();
      u.tracing = *t;
    }
  }
  return u;
}

}  // namespace ferry::spec
