// Metrics in the Prometheus text format: counters, gauges and histograms in labelled families, kept in
// a Registry that renders them for a scrape. Recording is lock-free (relaxed atomics on a series the
// caller holds); creating a series takes the family's lock once, so hot paths look a series up once and
// keep the reference. Series live as long as the registry: label values must be bounded (application,
// deployment, route, replica, code), never per request or per user.
// Thread-safe: everything here may be called from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "common/mutex.h"

namespace ferry::metrics {

class Counter {
 public:
  void Inc(uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Add(double v) { value_.fetch_add(v, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// Buckets are upper bounds, ascending; +Inf is implied.
class Histogram {
 public:
  explicit Histogram(const std::vector<double>& bounds);
  void Observe(double v);
  const std::vector<double>& bounds() const { return bounds_; }
  // Non-cumulative count of bucket i (i == bounds().size() is +Inf).
  uint64_t bucket(size_t i) const { return counts_[i].load(std::memory_order_relaxed); }
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  double sum() const { return sum_.load(std::memory_order_relaxed); }

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;
  std::atomic<uint64_t> count_{0};
  std::atomic<double> sum_{0};
};

// Latency buckets in seconds (Prometheus' base unit): Ray Serve's range (1 ms ... 600 s), with finer steps
// below 1 ms for a server whose requests take microseconds.
const std::vector<double>& LatencyBucketsSeconds();
// Batch sizes 1 ... 1024.
const std::vector<double>& BatchSizeBuckets();

enum class Type { kCounter, kGauge, kHistogram };

class FamilyBase {
 public:
  FamilyBase(std::string name, std::string help, Type type, std::vector<std::string> label_names)
      : name_(std::move(name)), help_(std::move(help)), type_(type), label_names_(std::move(label_names)) {}
  virtual ~FamilyBase() = default;
  const std::string& name() const { return name_; }
  virtual void Render(std::string* out) const = 0;

 protected:
  // `name{a="x",b="y"` (no closing brace) for a series' label values, escaped.
  std::string SeriesPrefix(const std::string& metric, const std::vector<std::string>& values) const;
  void RenderHeader(std::string* out) const;

  const std::string name_, help_;
  const Type type_;
  const std::vector<std::string> label_names_;
};

template <typename T>
class Family : public FamilyBase {
 public:
  Family(std::string name, std::string help, Type type, std::vector<std::string> label_names,
         std::vector<double> bounds = {})
      : FamilyBase(std::move(name), std::move(help), type, std::move(label_names)), bounds_(std::move(bounds)) {}

  // The series with these label values (in label_names order), created on first use. The reference stays
  // valid as long as the registry.
  T& With(const std::vector<std::string>& values) {
    MutexLock lock(&mu_);
    auto it = series_.find(values);
    if (it == series_.end()) it = series_.emplace(values, Make()).first;
    return *it->second;
  }
  void Render(std::string* out) const override;

 private:
  std::unique_ptr<T> Make() const {
    if constexpr (std::is_same_v<T, Histogram>)
      return std::make_unique<Histogram>(bounds_);
    else
      return std::make_unique<T>();
  }
  const std::vector<double> bounds_;
  mutable Mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<T>> series_ ABSL_GUARDED_BY(mu_);
};

// Writes gauge samples computed at scrape time (from state someone else owns).
class SampleWriter {
 public:
  explicit SampleWriter(std::string* out) : out_(out) {}
  // `# HELP` and `# TYPE` once per metric, before its samples.
  void Header(std::string_view name, std::string_view help, Type type);
  void Sample(std::string_view name, const std::vector<std::pair<std::string, std::string>>& labels, double value);
  // A histogram's samples (_bucket per bound and +Inf, _sum, _count) from non-cumulative `counts`, one per
  // bound and a last one for +Inf; counts of another length are skipped.
  void HistogramSamples(std::string_view name, const std::vector<std::pair<std::string, std::string>>& labels,
                        const std::vector<double>& bounds, const std::vector<uint64_t>& counts, double sum);

 private:
  std::string* out_;
};

class Registry {
 public:
  Family<Counter>& AddCounter(std::string name, std::string help, std::vector<std::string> labels);
  Family<Gauge>& AddGauge(std::string name, std::string help, std::vector<std::string> labels);
  Family<Histogram>& AddHistogram(std::string name, std::string help, std::vector<std::string> labels,
                                  const std::vector<double>& bounds);
  // The families, in the order they were added, as the Prometheus text exposition format (0.0.4).
  std::string Render() const;

 private:
  mutable Mutex mu_;
  std::vector<std::unique_ptr<FamilyBase>> families_ ABSL_GUARDED_BY(mu_);
};

// One sample of a scrape, read back from the text format.
struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
  std::string label(const std::string& key) const {
    auto it = labels.find(key);
    return it == labels.end() ? std::string() : it->second;
  }
};
// Reads the text format's samples (comments and malformed lines are skipped).
std::vector<Sample> ParseText(std::string_view text);
// The q-quantile (0..1) of a histogram from its cumulative buckets (upper bound -> count, +Inf included),
// interpolating linearly inside the bucket as Prometheus' histogram_quantile does. NaN without samples.
double Quantile(double q, const std::map<double, double>& cumulative);

// A deployment's own metrics (Ray Serve's ray.serve.metrics, the C ABI's metric_define and metric_record),
// as a replica reports them to its node: each metric with its series, one per set of tags.
struct UserSeries {
  std::vector<std::pair<std::string, std::string>> tags;  // sorted by key
  double value = 0;                                       // counter, gauge
  std::vector<uint64_t> counts;                           // histogram: non-cumulative, one per bound and +Inf
  double sum = 0;                                         // histogram
};
struct UserMetric {
  std::string name;
  std::string help;
  Type type = Type::kCounter;
  std::vector<double> bounds;  // histogram
  std::vector<UserSeries> series;
};

// The user metrics of one replica process. Thread-safe. Series are kept until the replica exits; past
// kMaxSeries (all metrics together) new tag sets are dropped, so a tag with unbounded values cannot take
// the replica's memory or the node's scrape with it.
class UserRegistry {
 public:
  static constexpr size_t kMaxSeries = 10000;
  static constexpr size_t kMaxBounds = 64;
  // The metric's id (>= 0): a new one, or the existing one for the same name, type and bounds. -1 with
  // `error` set for a name that is not a Prometheus metric name or is reserved (ferry_*), bounds not
  // positive and ascending, or a name already defined with another type or bounds.
  int Define(std::string_view name, std::string_view help, Type type, std::vector<double> bounds, std::string* error);
  // A counter adds `value` (> 0), a gauge sets it, a histogram observes it. False when the id is unknown,
  // a counter's value is not positive, a tag key is not a label name, or the series limit is reached.
  bool Record(int id, std::vector<std::pair<std::string, std::string>> tags, double value);
  std::vector<UserMetric> Snapshot() const;

 private:
  using Tags = std::vector<std::pair<std::string, std::string>>;
  struct Entry {
    UserMetric meta;  // series unused: they live in `series`
    std::map<Tags, UserSeries> series;
  };
  mutable Mutex mu_;
  std::vector<Entry> metrics_ ABSL_GUARDED_BY(mu_);
  size_t num_series_ ABSL_GUARDED_BY(mu_) = 0;
};
// True for a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*) and label name ([a-zA-Z_][a-zA-Z0-9_]*, not
// starting with "__").
bool IsMetricName(std::string_view name);
bool IsLabelName(std::string_view name);

// Escapes a label value for the text format (backslash, quote, newline).
std::string EscapeLabel(std::string_view value);
// A number as the text format writes it (+Inf, -Inf, NaN; integers without a fraction).
std::string FormatValue(double v);

}  // namespace ferry::metrics
