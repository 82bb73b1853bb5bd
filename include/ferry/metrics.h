// A deployment's own metrics, exported on the node's /metrics beside Ferry's (Ray Serve's ray.serve.metrics
// in C++). Each series carries the replica's application, deployment and replica labels and its tags.
//
//   ferry::metrics::Counter hits("cache_hits", "Lookups answered from the cache.", {"model"});
//   hits.inc(1, {{"model", "resnet"}});
//   ferry::metrics::Histogram size("input_bytes", "Request body sizes.", {1e3, 1e4, 1e5, 1e6});
//   size.observe(static_cast<double>(req.body().size()));
//
// Make them in the deployment's constructor (the host is known from then on) and record from any thread. A counter is
// exported with a _total suffix. The constructor throws std::invalid_argument for a bad name, bounds, or a name already
// defined with another type; record() drops a sample (returns false) for a counter's value that is not
// positive, a missing or unknown tag, or when the replica has 10,000 series. Outside a replica (a unit
// test of your class), recording does nothing and returns false.
#pragma once

#include <ferry/abi.h>
#include <ferry/internal/host.h>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ferry::metrics {

using Tags = std::vector<std::pair<std::string, std::string>>;

class Metric {
 public:
  // Tags every record() gets unless it names them itself (Ray's set_default_tags).
  Metric& set_default_tags(Tags tags) {
    for (const auto& [k, v] : tags) CheckKey(k);
    default_tags_ = std::move(tags);
    return *this;
  }
  const std::string& name() const { return name_; }

 protected:
  Metric(std::string name, std::string description, std::vector<std::string> tag_keys, int kind,
         std::vector<double> bounds = {})
      : name_(std::move(name)), tag_keys_(std::move(tag_keys)) {
    const FerryHostApi* host = internal::Host();
    if (!FERRY_HOST_HAS(host, metric_define)) return;  // outside a replica, or an older ferry
    FerryString error{nullptr, 0};
    id_ = host->metric_define(FerryString{name_.data(), name_.size()},
                              FerryString{description.data(), description.size()}, kind, bounds.data(), bounds.size(),
                              &error);
    if (id_ < 0) throw std::invalid_argument(std::string(error.data, error.size));
  }
  bool Record(double value, const Tags& tags) const {
    const FerryHostApi* host = internal::Host();
    if (id_ < 0 || !FERRY_HOST_HAS(host, metric_record)) return false;
    std::vector<FerryHeader> all;
    all.reserve(tag_keys_.size());
    for (const std::string& key : tag_keys_) {
      const std::string* value_of = Find(tags, key);
      if (!value_of) value_of = Find(default_tags_, key);
      if (!value_of) return false;  // a tag key without a value
      all.push_back(FerryHeader{FerryString{key.data(), key.size()}, FerryString{value_of->data(), value_of->size()}});
    }
    for (const auto& [k, v] : tags)
      if (!Find(tag_keys_, k)) return false;  // a tag the metric does not declare
    return host->metric_record(id_, all.data(), all.size(), value) == 0;
  }

 private:
  static const std::string* Find(const Tags& tags, std::string_view key) {
    for (const auto& [k, v] : tags)
      if (k == key) return &v;
    return nullptr;
  }
  static bool Find(const std::vector<std::string>& keys, std::string_view key) {
    for (const std::string& k : keys)
      if (k == key) return true;
    return false;
  }
  void CheckKey(std::string_view key) const {
    if (!Find(tag_keys_, key)) throw std::invalid_argument("metric " + name_ + ": unknown tag key " + std::string(key));
  }
  std::string name_;
  std::vector<std::string> tag_keys_;
  Tags default_tags_;
  int id_ = -1;
};

// Only goes up: inc() adds a positive value.
class Counter : public Metric {
 public:
  explicit Counter(std::string name, std::string description = {}, std::vector<std::string> tag_keys = {})
      : Metric(std::move(name), std::move(description), std::move(tag_keys), FERRY_METRIC_COUNTER) {}
  bool inc(double value = 1.0, const Tags& tags = {}) const { return Record(value, tags); }
};

// The last value set.
class Gauge : public Metric {
 public:
  explicit Gauge(std::string name, std::string description = {}, std::vector<std::string> tag_keys = {})
      : Metric(std::move(name), std::move(description), std::move(tag_keys), FERRY_METRIC_GAUGE) {}
  bool set(double value, const Tags& tags = {}) const { return Record(value, tags); }
};

// Observations counted in buckets with these upper bounds (positive, ascending; +Inf is implied).
class Histogram : public Metric {
 public:
  Histogram(std::string name, std::string description, std::vector<double> boundaries,
            std::vector<std::string> tag_keys = {})
      : Metric(std::move(name), std::move(description), std::move(tag_keys), FERRY_METRIC_HISTOGRAM,
               std::move(boundaries)) {}
  bool observe(double value, const Tags& tags = {}) const { return Record(value, tags); }
};

}  // namespace ferry::metrics
