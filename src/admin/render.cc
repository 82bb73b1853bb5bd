// Ray Serve's status document and the Prometheus text, rendered from the controller's snapshot.
#include "admin/render.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <string>
#include <tuple>

#include "common/common.h"
#include "metrics/metrics.h"

namespace ferry::admin {

using controller::ApplicationStatusName;
using controller::ApplicationView;
using controller::AutoscalingView;
using controller::ControllerSnapshot;
using controller::DeploymentStatusName;
using controller::DeploymentView;
using controller::ReplicaState;
using controller::ReplicaStateName;
using controller::ReplicaView;
using nlohmann::json;

json StatusJson(const ControllerSnapshot& snapshot) {
  // Where things run, in Ray's fields: one node alone is "local".
  const std::string node_id = snapshot.node_id.empty() ? "local" : snapshot.node_id;
  const std::string node_ip = snapshot.node_ip.empty() ? "127.0.0.1" : snapshot.node_ip;
  json apps = json::object();
  for (const ApplicationView& app : snapshot.applications) {
    json deployments = json::object();
    for (const DeploymentView& d : app.deployments) {
      if (!d.in_config) continue;
      json replicas = json::array();
      json counts = json::object();
      for (const ReplicaView& r : d.replicas) {
        replicas.push_back({{"replica_id", r.replica_id},
                            {"state", ReplicaStateName(r.state)},
                            {"pid", r.pid > 0 ? json(r.pid) : json(nullptr)},
                            {"node_id", r.node_id.empty() ? node_id : r.node_id},
                            {"node_ip", r.node_id.empty() ? node_ip : r.node_ip},
                            {"start_time_s", r.start_time_s},
                            {"version", r.version}});
        if (r.stats && !r.stats->model_ids.empty())  // @serve.multiplexed models it holds, as last polled
          replicas.back()["multiplexed_model_ids"] = r.stats->model_ids;
        counts[ReplicaStateName(r.state)] = counts.value(ReplicaStateName(r.state), 0) + 1;
      }
      deployments[d.name] = {{"name", d.name},
                             {"status", DeploymentStatusName(d.status)},
                             {"message", d.message},
                             {"version", d.version},
                             {"target_num_replicas", d.target_replicas},
                             {"replica_states", counts},
                             {"replicas", replicas},
                             {"restarts", d.restarts},
                             {"health_check_failures", d.health_check_failures},
                             {"ongoing_requests", d.ongoing_requests},
                             {"queued_requests", d.queued_requests}};
      // Calls through handles, summed over the deployment's replicas: callee -> requests, errors, mean latency.
      json calls = json::object();
      for (const ReplicaView& r : d.replicas) {
        if (!r.stats) continue;
        for (const node::CallStats& c : r.stats->calls) {
          json& e = calls[c.callee];
          if (!e.is_object()) e = json::object();
          e["requests"] = e.value("requests", uint64_t{0}) + c.ok + c.errors;
          e["errors"] = e.value("errors", uint64_t{0}) + c.errors;
          e["latency_sum_s"] = e.value("latency_sum_s", 0.0) + c.latency_seconds.sum;
        }
      }
      for (auto& [callee, e] : calls.items()) {
        const double n = e["requests"].get<double>();
        e["mean_latency_ms"] = n > 0 ? std::round(e["latency_sum_s"].get<double>() / n * 1e6) / 1e3 : 0.0;
        e.erase("latency_sum_s");
      }
      if (!calls.empty()) deployments[d.name]["calls"] = calls;
      if (d.autoscaling) {
        const AutoscalingView& a = *d.autoscaling;
        deployments[d.name]["autoscaling"] = {
            {"target_replicas", a.target_replicas},
            {"min_replicas", a.min_replicas},
            {"max_replicas", a.max_replicas},
            {"average_load", a.average_load},
            {"last_cold_start_s", a.last_cold_start_s ? json(*a.last_cold_start_s) : json(nullptr)},
            {"decisions", a.decisions}};
      }
    }
    apps[app.name] = {{"name", app.name},
                      {"route_prefix", app.route_prefix},
                      {"status", ApplicationStatusName(app.status)},
                      {"message", app.message},
                      {"last_deployed_time_s", app.last_deployed_time_s},
                      {"deployed_app_config", app.deployed_app_config},
                      {"deployments", deployments}};
  }
  json out = {{"controller_info", {{"node_id", node_id}, {"node_ip", node_ip}, {"pid", snapshot.pid}}},
              {"proxies", {{node_id, "HEALTHY"}}},
              {"applications", apps}};
  if (snapshot.http_options) out["http_options"] = config::ToJson(*snapshot.http_options);
  return out;
}

namespace {

// The deployments' own metrics (ray.serve.metrics), as Ray exports them: one family per name over every
// replica that records it, each series labelled with its application, deployment and replica besides its
// tags (a tag of the same name wins), counters named with a _total suffix. A replica that defined the
// name with another type or other bounds than the first one seen is left out of that family.
void RenderUserMetrics(const std::vector<const DeploymentView*>& deployments, metrics::SampleWriter& w) {
  using Labels = std::vector<std::pair<std::string, std::string>>;
  struct Family {
    const metrics::UserMetric* first = nullptr;
    std::vector<std::pair<Labels, const metrics::UserSeries*>> series;
  };
  std::map<std::string, Family> families;
  for (const DeploymentView* d : deployments) {
    for (const ReplicaView& r : d->replicas) {
      if (!r.stats) continue;
      for (const metrics::UserMetric& m : r.stats->user_metrics) {
        Family& f = families[m.name];
        if (!f.first) f.first = &m;
        if (f.first->type != m.type || f.first->bounds != m.bounds) continue;
        for (const metrics::UserSeries& s : m.series) {
          Labels l = {{"application", d->application}, {"deployment", d->name}, {"replica", r.replica_id}};
          for (const auto& tag : s.tags) {
            auto same = std::find_if(l.begin(), l.end(), [&](const auto& e) { return e.first == tag.first; });
            if (same != l.end())
              same->second = tag.second;
            else
              l.push_back(tag);
          }
          f.series.emplace_back(std::move(l), &s);
        }
      }
    }
  }
  for (const auto& [name, f] : families) {
    const metrics::UserMetric& m = *f.first;
    const std::string exported =
        m.type == metrics::Type::kCounter && !name.ends_with("_total") ? name + "_total" : name;
    w.Header(exported, m.help.empty() ? "A deployment's own metric (ray.serve.metrics)." : m.help, m.type);
    for (const auto& [labels, s] : f.series) {
      if (m.type == metrics::Type::kHistogram)
        w.HistogramSamples(exported, labels, m.bounds, s->counts, s->sum);
      else
        w.Sample(exported, labels, s->value);
    }
  }
}

}  // namespace

std::string MetricsText(const ControllerSnapshot& snapshot) {
  using metrics::Type;
  std::string out;
  metrics::SampleWriter w(&out);
  using Labels = std::vector<std::pair<std::string, std::string>>;
  auto labels = [](const DeploymentView& d) { return Labels{{"application", d.application}, {"deployment", d.name}}; };
  std::vector<const DeploymentView*> deployments;
  for (const ApplicationView& a : snapshot.applications)
    for (const DeploymentView& d : a.deployments) deployments.push_back(&d);
  auto per_deployment = [&](const char* name, const char* help, Type type, auto value) {
    w.Header(name, help, type);
    for (const DeploymentView* d : deployments) w.Sample(name, labels(*d), static_cast<double>(value(*d)));
  };

  w.Header("ferry_deployment_replicas", "Replicas of a deployment by state (STARTING, RUNNING, ...).", Type::kGauge);
  for (const DeploymentView* d : deployments) {
    int count[5] = {0, 0, 0, 0, 0};
    for (const ReplicaView& r : d->replicas) ++count[static_cast<int>(r.state)];
    for (int s = 0; s < 5; ++s) {
      Labels l = labels(*d);
      l.emplace_back("state", ReplicaStateName(static_cast<ReplicaState>(s)));
      w.Sample("ferry_deployment_replicas", l, count[s]);
    }
  }
  per_deployment("ferry_deployment_target_replicas",
                 "Replicas the deployment should have: num_replicas, or the autoscaler's decision.", Type::kGauge,
                 [](const DeploymentView& d) { return d.target_replicas; });
  per_deployment("ferry_autoscaling_enabled", "1 when the deployment has an autoscaling_config.", Type::kGauge,
                 [](const DeploymentView& d) { return d.autoscaling ? 1 : 0; });
  per_deployment("ferry_deployment_replica_starts_total", "Replica processes started.", Type::kCounter,
                 [](const DeploymentView& d) { return d.starts; });
  per_deployment("ferry_deployment_replica_restarts_total",
                 "Running replicas lost (crashed or failing health checks) and replaced.", Type::kCounter,
                 [](const DeploymentView& d) { return d.restarts; });
  per_deployment("ferry_deployment_health_check_failures_total", "Failed or timed-out health checks.", Type::kCounter,
                 [](const DeploymentView& d) { return d.health_check_failures; });
  per_deployment("ferry_deployment_cold_starts_total", "Starts from zero replicas with requests waiting.",
                 Type::kCounter, [](const DeploymentView& d) { return d.cold_starts; });
  w.Header("ferry_deployment_last_cold_start_seconds",
           "Time from the first request that found no replica to the first replica RUNNING, last cold start.",
           Type::kGauge);
  for (const DeploymentView* d : deployments)
    if (d->autoscaling && d->autoscaling->last_cold_start_s)
      w.Sample("ferry_deployment_last_cold_start_seconds", labels(*d), *d->autoscaling->last_cold_start_s);
  per_deployment("ferry_deployment_queued_requests", "Requests waiting in the router for a replica slot.", Type::kGauge,
                 [](const DeploymentView& d) { return d.queued_requests; });
  w.Header("ferry_replica_ongoing_requests", "Requests the router has on a replica (sent, not yet answered).",
           Type::kGauge);
  for (const DeploymentView* d : deployments) {
    for (const ReplicaView& r : d->replicas) {
      if (!r.in_flight) continue;
      Labels l = labels(*d);
      l.emplace_back("replica", r.replica_id);
      w.Sample("ferry_replica_ongoing_requests", l, *r.in_flight);
    }
  }
  w.Header("ferry_replica_processing_seconds",
           "Time a replica spent on each request: handle(), or the whole batch it ran in (polled every second).",
           Type::kHistogram);
  for (const DeploymentView* d : deployments) {
    for (const ReplicaView& r : d->replicas) {
      if (!r.stats) continue;
      Labels l = labels(*d);
      l.emplace_back("replica", r.replica_id);
      w.HistogramSamples("ferry_replica_processing_seconds", l, metrics::LatencyBucketsSeconds(),
                         r.stats->processing_seconds.counts, r.stats->processing_seconds.sum);
    }
  }
  w.Header("ferry_replica_batch_size", "Requests per batch a replica ran (deployments with batching).",
           Type::kHistogram);
  for (const DeploymentView* d : deployments) {
    if (!d->batching) continue;
    for (const ReplicaView& r : d->replicas) {
      if (!r.stats) continue;
      Labels l = labels(*d);
      l.emplace_back("replica", r.replica_id);
      w.HistogramSamples("ferry_replica_batch_size", l, metrics::BatchSizeBuckets(), r.stats->batch_size.counts,
                         r.stats->batch_size.sum);
    }
  }
  // Calls through handles: per calling replica and callee.
  auto each_call = [&](const auto& emit) {
    for (const DeploymentView* d : deployments)
      for (const ReplicaView& r : d->replicas)
        if (r.stats)
          for (const node::CallStats& c : r.stats->calls) {
            Labels l = labels(*d);
            l.emplace_back("replica", r.replica_id);
            l.emplace_back("callee", c.callee);
            emit(l, c);
          }
  };
  w.Header("ferry_handle_requests_total", "Calls a replica made through deployment handles, by callee and outcome.",
           Type::kCounter);
  each_call([&](Labels& l, const node::CallStats& c) {
    l.emplace_back("outcome", "ok");
    w.Sample("ferry_handle_requests_total", l, static_cast<double>(c.ok));
    l.back().second = "error";
    w.Sample("ferry_handle_requests_total", l, static_cast<double>(c.errors));
  });
  w.Header("ferry_handle_request_latency_seconds",
           "Time from a call through a handle to its end (a stream's last chunk), by caller and callee.",
           Type::kHistogram);
  each_call([&](Labels& l, const node::CallStats& c) {
    w.HistogramSamples("ferry_handle_request_latency_seconds", l, metrics::LatencyBucketsSeconds(),
                       c.latency_seconds.counts, c.latency_seconds.sum);
  });
  // Spans: the node's own (proxy and queue spans) and each replica's, sent to the collector or dropped.
  if (snapshot.spans_exported && snapshot.spans_dropped) {
    w.Header("ferry_tracing_spans_exported_total", "The node's spans sent to the OTLP collector.", Type::kCounter);
    w.Sample("ferry_tracing_spans_exported_total", {}, static_cast<double>(*snapshot.spans_exported));
    w.Header("ferry_tracing_spans_dropped_total",
             "The node's spans dropped: the queue was full, or the collector refused or was unreachable.",
             Type::kCounter);
    w.Sample("ferry_tracing_spans_dropped_total", {}, static_cast<double>(*snapshot.spans_dropped));
  }
  for (const auto& [name, help, field] :
       {std::tuple{"ferry_replica_spans_exported_total",
                   "A replica's spans sent to the OTLP collector (polled every second).",
                   &node::ReplicaStats::spans_exported},
        std::tuple{"ferry_replica_spans_dropped_total",
                   "A replica's spans dropped: the queue was full, or the collector refused or was unreachable.",
                   &node::ReplicaStats::spans_dropped}}) {
    w.Header(name, help, Type::kCounter);
    for (const DeploymentView* d : deployments) {
      for (const ReplicaView& r : d->replicas) {
        if (!r.stats) continue;
        Labels l = labels(*d);
        l.emplace_back("replica", r.replica_id);
        w.Sample(name, l, static_cast<double>((*r.stats).*field));
      }
    }
  }
  w.Header("ferry_replica_memory_bytes", "Resident memory of a replica process (from /proc).", Type::kGauge);
  static const long kPageSize = sysconf(_SC_PAGESIZE);
  for (const DeploymentView* d : deployments) {
    for (const ReplicaView& r : d->replicas) {
      if (r.pid <= 0) continue;
      std::ifstream statm(StrCat("/proc/", r.pid, "/statm"));
      long size = 0, resident = 0;
      if (!(statm >> size >> resident)) continue;  // gone between the tick and the scrape
      Labels l = labels(*d);
      l.emplace_back("replica", r.replica_id);
      w.Sample("ferry_replica_memory_bytes", l, static_cast<double>(resident) * static_cast<double>(kPageSize));
    }
  }
  RenderUserMetrics(deployments, w);
  return out;
}

}  // namespace ferry::admin
