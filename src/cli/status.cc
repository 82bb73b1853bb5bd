#include "cli/status.h"

#include <chrono>
#include <cmath>
#include <ctime>
#include <iostream>
#include <map>
#include <thread>
#include <vector>

#include "cli/admin_client.h"
#include "common/common.h"
#include "metrics/metrics.h"

namespace ferry::cli {
namespace {

using nlohmann::json;

struct Scrape {
  std::vector<metrics::Sample> samples;
  std::chrono::steady_clock::time_point at;
};

// NotFound: the node runs with --no-metrics.
absl::StatusOr<Scrape> ScrapeMetrics(const StatusOptions& o) {
  absl::StatusOr<AdminResponse> r = AdminRequest(o.address, "GET", "/metrics", "", o.token);
  if (!r.ok()) return r.status();
  if (r->status == 404) return absl::NotFoundError("metrics are off");
  if (r->status != 200) return absl::UnavailableError(StrCat("GET /metrics answered ", r->status, ": ", r->body));
  return Scrape{metrics::ParseText(r->body), std::chrono::steady_clock::now()};
}

// Per application: requests, 5xx answers, and latency buckets (cumulative, by upper bound) in one scrape.
struct AppCounts {
  double requests = 0, errors = 0;
  std::map<double, double> buckets;
};

std::map<std::string, AppCounts> CountByApplication(const Scrape& s) {
  std::map<std::string, AppCounts> out;
  for (const metrics::Sample& m : s.samples) {
    std::string app = m.label("application");
    if (app.empty()) continue;  // the proxy's own endpoints and unmatched paths
    if (m.name == "ferry_num_http_requests_total") {
      out[app].requests += m.value;
      if (m.label("code").rfind('5', 0) == 0) out[app].errors += m.value;
    } else if (m.name == "ferry_http_request_duration_seconds_bucket") {
      std::string le = m.label("le");
      out[app].buckets[le == "+Inf" ? INFINITY : std::stod(le)] += m.value;
    }
  }
  return out;
}

json Rounded(double v, double scale) {
  if (!std::isfinite(v)) return nullptr;
  return std::round(v * scale * 100) / 100;
}

// Live traffic between two scrapes, by application.
json Traffic(const Scrape& before, const Scrape& after) {
  double dt = std::chrono::duration<double>(after.at - before.at).count();
  std::map<std::string, AppCounts> a = CountByApplication(before), b = CountByApplication(after);
  json out = json::object();
  for (const auto& [app, now] : b) {
    const AppCounts& then = a[app];
    double requests = now.requests - then.requests, errors = now.errors - then.errors;
    std::map<double, double> delta;
    for (const auto& [le, count] : now.buckets) {
      auto it = then.buckets.find(le);
      delta[le] = count - (it == then.buckets.end() ? 0 : it->second);
    }
    out[app] = {{"requests_per_s", Rounded(dt > 0 ? requests / dt : NAN, 1)},
                {"error_rate", Rounded(requests > 0 ? errors / requests : 0, 1)},
                {"p50_ms", Rounded(metrics::Quantile(0.50, delta), 1000)},
                {"p95_ms", Rounded(metrics::Quantile(0.95, delta), 1000)},
                {"p99_ms", Rounded(metrics::Quantile(0.99, delta), 1000)}};
  }
  return out;
}

// Ongoing and queued requests by "application/deployment", from one scrape.
std::map<std::string, std::pair<double, double>> Load(const Scrape& s) {
  std::map<std::string, std::pair<double, double>> out;
  for (const metrics::Sample& m : s.samples) {
    std::string key = StrCat(m.label("application"), "/", m.label("deployment"));
    if (m.name == "ferry_replica_ongoing_requests") out[key].first += m.value;
    if (m.name == "ferry_deployment_queued_requests") out[key].second += m.value;
  }
  return out;
}

// The status document: the admin API's, briefer, with traffic and load. Without metrics (`traffic` null),
// the load is the status document's own and traffic says it is off.
json Brief(const json& body, const json& traffic, const std::map<std::string, std::pair<double, double>>& load) {
  json brief = {{"proxies", body["proxies"]}, {"applications", json::object()}};
  for (auto& [name, app] : body["applications"].items()) {
    json deployments = json::object();
    for (auto& [dname, d] : app["deployments"].items()) {
      deployments[dname] = {
          {"status", d["status"]}, {"replica_states", d["replica_states"]}, {"message", d["message"]}};
      auto l = load.find(StrCat(name, "/", dname));
      if (traffic.is_null()) {
        deployments[dname]["ongoing_requests"] = d.value("ongoing_requests", 0);
        deployments[dname]["queued_requests"] = d.value("queued_requests", 0);
      } else if (l != load.end()) {
        deployments[dname]["ongoing_requests"] = static_cast<int64_t>(l->second.first);
        deployments[dname]["queued_requests"] = static_cast<int64_t>(l->second.second);
      }
      if (d.contains("calls")) deployments[dname]["calls"] = d["calls"];
      if (d.contains("autoscaling")) {
        const auto& a = d["autoscaling"];
        json summary = {{"target_replicas", a["target_replicas"]},
                        {"min_replicas", a["min_replicas"]},
                        {"max_replicas", a["max_replicas"]},
                        {"average_load", a["average_load"]},
                        {"last_cold_start_s", a["last_cold_start_s"]}};
        if (!a["decisions"].empty()) summary["last_decision"] = a["decisions"].back();
        deployments[dname]["autoscaling"] = summary;
      }
    }
    json entry = {
        {"status", app["status"]}, {"message", app["message"]}, {"last_deployed_time_s", app["last_deployed_time_s"]}};
    entry["traffic"] = traffic.is_null()        ? json("off: the node runs with --no-metrics")
                       : traffic.contains(name) ? traffic[name]
                                                : json{{"requests_per_s", 0},
                                                       {"error_rate", 0},
                                                       {"p50_ms", nullptr},
                                                       {"p95_ms", nullptr},
                                                       {"p99_ms", nullptr}};
    entry["deployments"] = deployments;
    brief["applications"][name] = entry;
  }
  return brief;
}

}  // namespace

int RunStatus(const StatusOptions& o) {
  auto fail = [](const absl::Status& s) {
    std::cerr << "ferry: " << Message(s) << "\n";
    return 1;
  };
  const auto interval = std::chrono::duration<double>(std::max(0.05, o.interval_s));
  absl::StatusOr<Scrape> before = ScrapeMetrics(o);
  // A node started with --no-metrics has no live traffic figures: show the rest at once.
  const bool metrics_off = absl::IsNotFound(before.status());
  if (!before.ok() && !metrics_off) return fail(before.status());
  for (int frame = 1;; ++frame) {
    if (!metrics_off || frame > 1) std::this_thread::sleep_for(interval);
    absl::StatusOr<AdminResponse> r = AdminRequest(o.address, "GET", "/api/serve/applications/", "", o.token);
    if (!r.ok()) return fail(r.status());
    if (r->status != 200) return fail(absl::UnavailableError(StrCat("the node answered ", r->status, ": ", r->body)));
    absl::StatusOr<Scrape> after = metrics_off ? before : ScrapeMetrics(o);
    if (!after.ok() && !metrics_off) return fail(after.status());
    json body = json::parse(r->body, nullptr, false);
    std::string text = metrics_off ? JsonToYaml(Brief(body, nullptr, {}))
                                   : JsonToYaml(Brief(body, Traffic(*before, *after), Load(*after)));
    if (o.watch) {
      std::time_t now = std::time(nullptr);
      char clock[32];
      std::strftime(clock, sizeof(clock), "%H:%M:%S", std::localtime(&now));
      std::cout << "\x1b[H\x1b[2J# ferry status at " << o.address << ", " << clock << ", traffic over the last "
                << o.interval_s << " s (Ctrl-C to stop)\n";
    }
    std::cout << text << std::flush;
    if (!o.watch || (o.count > 0 && frame >= o.count)) return 0;
    before = std::move(after);
  }
}

}  // namespace ferry::cli
