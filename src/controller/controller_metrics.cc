// The controller's state as Prometheus metrics, rendered on a scrape (on the controller's thread).
#include <unistd.h>

#include <fstream>
#include <string>
#include <tuple>

#include "common/common.h"
#include "controller/controller.h"
#include "controller/internal/state.h"
#include "metrics/metrics.h"
#include "tracing/tracing.h"

namespace ferry::controller {

std::string Controller::MetricsText() const {
  using metrics::Type;
  std::string out;
  metrics::SampleWriter w(&out);
  using Labels = std::vector<std::pair<std::string, std::string>>;
  auto labels = [](const Deployment& d) {
    return Labels{{"application", d.application}, {"deployment", d.target.name}};
  };
  auto per_deployment = [&](const char* name, const char* help, Type type, auto value) {
    w.Header(name, help, type);
    for (const auto& [key, d] : deployments_) w.Sample(name, labels(*d), static_cast<double>(value(*d)));
  };

  w.Header("ferry_deployment_replicas", "Replicas of a deployment by state (STARTING, RUNNING, ...).", Type::kGauge);
  for (const auto& [key, d] : deployments_) {
    int count[5] = {0, 0, 0, 0, 0};
    for (const auto& [id, r] : d->replicas) ++count[static_cast<int>(r.state)];
    for (int s = 0; s < 5; ++s) {
      Labels l = labels(*d);
      l.emplace_back("state", ReplicaStateName(static_cast<ReplicaState>(s)));
      w.Sample("ferry_deployment_replicas", l, count[s]);
    }
  }
  per_deployment("ferry_deployment_target_replicas",
                 "Replicas the deployment should have: num_replicas, or the autoscaler's decision.", Type::kGauge,
                 [](const Deployment& d) { return d.TargetReplicas(); });
  per_deployment("ferry_autoscaling_enabled", "1 when the deployment has an autoscaling_config.", Type::kGauge,
                 [](const Deployment& d) { return d.autoscaler ? 1 : 0; });
  per_deployment("ferry_deployment_replica_starts_total", "Replica processes started.", Type::kCounter,
                 [](const Deployment& d) { return d.starts; });
  per_deployment("ferry_deployment_replica_restarts_total",
                 "Running replicas lost (crashed or failing health checks) and replaced.", Type::kCounter,
                 [](const Deployment& d) { return d.restarts; });
  per_deployment("ferry_deployment_health_check_failures_total", "Failed or timed-out health checks.", Type::kCounter,
                 [](const Deployment& d) { return d.health_check_failures; });
  per_deployment("ferry_deployment_cold_starts_total", "Starts from zero replicas with requests waiting.",
                 Type::kCounter, [](const Deployment& d) { return d.cold_starts; });
  w.Header("ferry_deployment_last_cold_start_seconds",
           "Time from the first request that found no replica to the first replica RUNNING, last cold start.",
           Type::kGauge);
  for (const auto& [key, d] : deployments_)
    if (d->last_cold_start_s >= 0)
      w.Sample("ferry_deployment_last_cold_start_seconds", labels(*d), d->last_cold_start_s);
  per_deployment("ferry_deployment_queued_requests", "Requests waiting in the router for a replica slot.", Type::kGauge,
                 [](const Deployment& d) { return d.queued; });
  w.Header("ferry_replica_ongoing_requests", "Requests the router has on a replica (sent, not yet answered).",
           Type::kGauge);
  for (const auto& [key, d] : deployments_) {
    for (const auto& [id, r] : d->replicas) {
      if (!r.endpoint) continue;
      Labels l = labels(*d);
      l.emplace_back("replica", id);
      w.Sample("ferry_replica_ongoing_requests", l, d->InFlight(r.endpoint->key));
    }
  }
  w.Header("ferry_replica_processing_seconds",
           "Time a replica spent on each request: handle(), or the whole batch it ran in (polled every second).",
           Type::kHistogram);
  for (const auto& [key, d] : deployments_) {
    for (const auto& [id, r] : d->replicas) {
      if (!r.stats) continue;
      Labels l = labels(*d);
      l.emplace_back("replica", id);
      w.HistogramSamples("ferry_replica_processing_seconds", l, metrics::LatencyBucketsSeconds(),
                         r.stats->processing_seconds.counts, r.stats->processing_seconds.sum);
    }
  }
  w.Header("ferry_replica_batch_size", "Requests per batch a replica ran (deployments with batching).",
           Type::kHistogram);
  for (const auto& [key, d] : deployments_) {
    if (!d->target.batching) continue;
    for (const auto& [id, r] : d->replicas) {
      if (!r.stats) continue;
      Labels l = labels(*d);
      l.emplace_back("replica", id);
      w.HistogramSamples("ferry_replica_batch_size", l, metrics::BatchSizeBuckets(), r.stats->batch_size.counts,
                         r.stats->batch_size.sum);
    }
  }
  // Spans: the node's own (proxy and queue spans) and each replica's, sent to the collector or dropped.
  if (options_.tracer) {
    w.Header("ferry_tracing_spans_exported_total", "The node's spans sent to the OTLP collector.", Type::kCounter);
    w.Sample("ferry_tracing_spans_exported_total", {}, static_cast<double>(options_.tracer->exported()));
    w.Header("ferry_tracing_spans_dropped_total",
             "The node's spans dropped: the queue was full, or the collector refused or was unreachable.",
             Type::kCounter);
    w.Sample("ferry_tracing_spans_dropped_total", {}, static_cast<double>(options_.tracer->dropped()));
  }
  for (const auto& [name, help, field] :
       {std::tuple{"ferry_replica_spans_exported_total",
                   "A replica's spans sent to the OTLP collector (polled every second).",
                   &node::ReplicaStats::spans_exported},
        std::tuple{"ferry_replica_spans_dropped_total",
                   "A replica's spans dropped: the queue was full, or the collector refused or was unreachable.",
                   &node::ReplicaStats::spans_dropped}}) {
    w.Header(name, help, Type::kCounter);
    for (const auto& [key, d] : deployments_) {
      for (const auto& [id, r] : d->replicas) {
        if (!r.stats) continue;
        Labels l = labels(*d);
        l.emplace_back("replica", id);
        w.Sample(name, l, static_cast<double>((*r.stats).*field));
      }
    }
  }
  w.Header("ferry_replica_memory_bytes", "Resident memory of a replica process (from /proc).", Type::kGauge);
  static const long kPageSize = sysconf(_SC_PAGESIZE);
  for (const auto& [key, d] : deployments_) {
    for (const auto& [id, r] : d->replicas) {
      if (r.pid <= 0) continue;
      std::ifstream statm(StrCat("/proc/", r.pid, "/statm"));
      long size = 0, resident = 0;
      if (!(statm >> size >> resident)) continue;  // gone between the tick and the scrape
      Labels l = labels(*d);
      l.emplace_back("replica", id);
      w.Sample("ferry_replica_memory_bytes", l, static_cast<double>(resident) * static_cast<double>(kPageSize));
    }
  }
  return out;
}

}  // namespace ferry::controller
