#include "metrics/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>

namespace ferry::metrics {

Histogram::Histogram(const std::vector<double>& bounds)
    : bounds_(bounds), counts_(std::make_unique<std::atomic<uint64_t>[]>(bounds.size() + 1)) {
  for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0, std::memory_order_relaxed);
}

void Histogram::Observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
}

const std::vector<double>& LatencyBucketsSeconds() {
  static const std::vector<double> kBuckets = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                               0.01,    0.025,  0.05,    0.1,    0.25,  0.5,    1,
                                               2.5,     5,      10,      30,     60,    300,    600};
  return kBuckets;
}

const std::vector<double>& BatchSizeBuckets() {
  static const std::vector<double> kBuckets = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
  return kBuckets;
}

std::string EscapeLabel(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  // Whole numbers as integers ("300000", not "3e+05"), others in their shortest exact form.
  auto r = std::abs(v) < 1e15 && v == std::floor(v) ? std::to_chars(buf, buf + sizeof(buf), static_cast<int64_t>(v))
                                                    : std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

namespace {

const char* TypeName(Type t) {
  switch (t) {
    case Type::kCounter:
      return "counter";
    case Type::kGauge:
      return "gauge";
    case Type::kHistogram:
      return "histogram";
  }
  return "untyped";
}

void AppendHeader(std::string* out, std::string_view name, std::string_view help, Type type) {
  *out += "# HELP ";
  *out += name;
  *out += ' ';
  for (char c : help) {  // the text format escapes a backslash and a line feed in HELP
    if (c == '\\')
      *out += "\\\\";
    else if (c == '\n')
      *out += "\\n";
    else
      *out += c;
  }
  *out += "\n# TYPE ";
  *out += name;
  *out += ' ';
  *out += TypeName(type);
  *out += '\n';
}

}  // namespace

std::string FamilyBase::SeriesPrefix(const std::string& metric, const std::vector<std::string>& values) const {
  std::string s = metric;
  s += '{';
  for (size_t i = 0; i < label_names_.size() && i < values.size(); ++i) {
    if (i) s += ',';
    s += label_names_[i];
    s += "=\"";
    s += EscapeLabel(values[i]);
    s += '"';
  }
  return s;
}

void FamilyBase::RenderHeader(std::string* out) const { AppendHeader(out, name_, help_, type_); }

template <>
void Family<Counter>::Render(std::string* out) const {
  RenderHeader(out);
  MutexLock lock(&mu_);
  for (const auto& [values, c] : series_) *out += SeriesPrefix(name_, values) + "} " + FormatValue(c->value()) + "\n";
}

template <>
void Family<Gauge>::Render(std::string* out) const {
  RenderHeader(out);
  MutexLock lock(&mu_);
  for (const auto& [values, g] : series_) *out += SeriesPrefix(name_, values) + "} " + FormatValue(g->value()) + "\n";
}

template <>
void Family<Histogram>::Render(std::string* out) const {
  RenderHeader(out);
  MutexLock lock(&mu_);
  for (const auto& [values, h] : series_) {
    std::string bucket = SeriesPrefix(name_ + "_bucket", values);
    if (!values.empty()) bucket += ',';
    // Read the buckets first: count is then at least their total, as a scrape racing Observe may see.
    uint64_t cumulative = 0;
    for (size_t i = 0; i < h->bounds().size(); ++i) {
      cumulative += h->bucket(i);
      *out += bucket + "le=\"" + FormatValue(h->bounds()[i]) + "\"} " + std::to_string(cumulative) + "\n";
    }
    cumulative += h->bucket(h->bounds().size());
    *out += bucket + "le=\"+Inf\"} " + std::to_string(cumulative) + "\n";
    *out += SeriesPrefix(name_ + "_sum", values) + "} " + FormatValue(h->sum()) + "\n";
    *out += SeriesPrefix(name_ + "_count", values) + "} " + std::to_string(cumulative) + "\n";
  }
}

void SampleWriter::Header(std::string_view name, std::string_view help, Type type) {
  AppendHeader(out_, name, help, type);
}

void SampleWriter::Sample(std::string_view name, const std::vector<std::pair<std::string, std::string>>& labels,
                          double value) {
  *out_ += name;
  if (!labels.empty()) {
    *out_ += '{';
    for (size_t i = 0; i < labels.size(); ++i) {
      if (i) *out_ += ',';
      *out_ += labels[i].first + "=\"" + EscapeLabel(labels[i].second) + "\"";
    }
    *out_ += '}';
  }
  *out_ += " " + FormatValue(value) + "\n";
}

void SampleWriter::HistogramSamples(std::string_view name,
                                    const std::vector<std::pair<std::string, std::string>>& labels,
                                    const std::vector<double>& bounds, const std::vector<uint64_t>& counts,
                                    double sum) {
  if (counts.size() != bounds.size() + 1) return;
  std::string bucket = std::string(name) + "_bucket";
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds.size(); ++i) {
    cumulative += counts[i];
    auto l = labels;
    l.emplace_back("le", i < bounds.size() ? FormatValue(bounds[i]) : "+Inf");
    Sample(bucket, l, static_cast<double>(cumulative));
  }
  Sample(std::string(name) + "_sum", labels, sum);
  Sample(std::string(name) + "_count", labels, static_cast<double>(cumulative));
}

Family<Counter>& Registry::AddCounter(std::string name, std::string help, std::vector<std::string> labels) {
  auto f = std::make_unique<Family<Counter>>(std::move(name), std::move(help), Type::kCounter, std::move(labels));
  Family<Counter>& ref = *f;
  MutexLock lock(&mu_);
  families_.push_back(std::move(f));
  return ref;
}

Family<Gauge>& Registry::AddGauge(std::string name, std::string help, std::vector<std::string> labels) {
  auto f = std::make_unique<Family<Gauge>>(std::move(name), std::move(help), Type::kGauge, std::move(labels));
  Family<Gauge>& ref = *f;
  MutexLock lock(&mu_);
  families_.push_back(std::move(f));
  return ref;
}

Family<Histogram>& Registry::AddHistogram(std::string name, std::string help, std::vector<std::string> labels,
                                          const std::vector<double>& bounds) {
  auto f = std::make_unique<Family<Histogram>>(std::move(name), std::move(help), Type::kHistogram, std::move(labels),
                                               bounds);
  Family<Histogram>& ref = *f;
  MutexLock lock(&mu_);
  families_.push_back(std::move(f));
  return ref;
}

std::string Registry::Render() const {
  std::string out;
  MutexLock lock(&mu_);
  for (const auto& f : families_) f->Render(&out);
  return out;
}

std::vector<Sample> ParseText(std::string_view text) {
  std::vector<Sample> out;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    if (line.empty() || line[0] == '#') continue;
    Sample s;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    s.name = std::string(line.substr(0, i));
    bool ok = !s.name.empty();
    if (ok && i < line.size() && line[i] == '{') {
      ++i;
      while (ok && i < line.size() && line[i] != '}') {
        size_t eq = line.find('=', i);
        if (eq == std::string_view::npos || eq + 1 >= line.size() || line[eq + 1] != '"') {
          ok = false;
          break;
        }
        std::string key(line.substr(i, eq - i));
        std::string value;
        size_t j = eq + 2;
        for (; j < line.size() && line[j] != '"'; ++j) {
          if (line[j] == '\\' && j + 1 < line.size()) {
            ++j;
            value += line[j] == 'n' ? '\n' : line[j];
          } else {
            value += line[j];
          }
        }
        if (j >= line.size()) {
          ok = false;
          break;
        }
        s.labels[key] = value;
        i = j + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      ++i;  // the '}'
    }
    if (!ok || i >= line.size()) continue;
    std::string_view value = line.substr(i);
    while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    value = value.substr(0, value.find(' '));  // a timestamp may follow
    if (value == "+Inf") {
      s.value = INFINITY;
    } else if (value == "-Inf") {
      s.value = -INFINITY;
    } else if (value == "NaN") {
      s.value = NAN;
    } else {
      auto r = std::from_chars(value.data(), value.data() + value.size(), s.value);
      if (r.ec != std::errc() || r.ptr != value.data() + value.size()) continue;
    }
    out.push_back(std::move(s));
  }
  return out;
}

double Quantile(double q, const std::map<double, double>& cumulative) {
  if (cumulative.empty()) return NAN;
  double total = cumulative.rbegin()->second;
  if (!(total > 0)) return NAN;
  double rank = q * total;
  double lower_bound = 0, lower_count = 0;
  for (const auto& [bound, count] : cumulative) {
    if (count >= rank) {
      if (std::isinf(bound)) return lower_bound;  // in the +Inf bucket: the highest finite bound
      if (count == lower_count) return bound;
      return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count);
    }
    lower_bound = bound;
    lower_count = count;
  }
  return lower_bound;
}

bool IsMetricName(std::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return true;
}

bool IsLabelName(std::string_view name) {
  return IsMetricName(name) && name.find(':') == std::string_view::npos && !name.starts_with("__");
}

int UserRegistry::Define(std::string_view name, std::string_view help, Type type, std::vector<double> bounds,
                         std::string* error) {
  auto fail = [&](std::string why) {
    if (error) *error = std::move(why);
    return -1;
  };
  if (!IsMetricName(name))
    return fail("invalid metric name '" + std::string(name) +
                "': letters, digits, '_' and ':' only, not starting with a digit");
  if (name.starts_with("ferry_")) return fail("metric name '" + std::string(name) + "': ferry_ is reserved");
  if (type == Type::kHistogram) {
    if (bounds.empty() || bounds.size() > kMaxBounds)
      return fail("histogram '" + std::string(name) + "': between 1 and 64 boundaries");
    for (size_t i = 0; i < bounds.size(); ++i)
      if (!(bounds[i] > 0) || !std::isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1]))
        return fail("histogram '" + std::string(name) + "': boundaries must be positive and ascending");
  } else {
    bounds.clear();
  }
  MutexLock lock(&mu_);
  for (size_t i = 0; i < metrics_.size(); ++i) {
    const UserMetric& m = metrics_[i].meta;
    if (m.name != name) continue;
    if (m.type != type || m.bounds != bounds)
      return fail("metric '" + std::string(name) + "' is already defined with another type or boundaries");
    return static_cast<int>(i);
  }
  Entry e;
  e.meta.name = std::string(name);
  e.meta.help = std::string(help);
  e.meta.type = type;
  e.meta.bounds = std::move(bounds);
  metrics_.push_back(std::move(e));
  return static_cast<int>(metrics_.size() - 1);
}

bool UserRegistry::Record(int id, Tags tags, double value) {
  for (const auto& [k, v] : tags)
    if (!IsLabelName(k)) return false;
  std::sort(tags.begin(), tags.end());
  MutexLock lock(&mu_);
  if (id < 0 || static_cast<size_t>(id) >= metrics_.size()) return false;
  Entry& e = metrics_[id];
  if (e.meta.type == Type::kCounter && !(value > 0)) return false;
  auto it = e.series.find(tags);
  if (it == e.series.end()) {
    if (num_series_ >= kMaxSeries) return false;
    ++num_series_;
    it = e.series.emplace(tags, UserSeries{}).first;
    it->second.tags = std::move(tags);
    if (e.meta.type == Type::kHistogram) it->second.counts.assign(e.meta.bounds.size() + 1, 0);
  }
  UserSeries& s = it->second;
  switch (e.meta.type) {
    case Type::kCounter:
      s.value += value;
      break;
    case Type::kGauge:
      s.value = value;
      break;
    case Type::kHistogram: {
      size_t i = 0;
      while (i < e.meta.bounds.size() && value > e.meta.bounds[i]) ++i;
      ++s.counts[i];
      s.sum += value;
      break;
    }
  }
  return true;
}

std::vector<UserMetric> UserRegistry::Snapshot() const {
  MutexLock lock(&mu_);
  std::vector<UserMetric> out;
  out.reserve(metrics_.size());
  for (const Entry& e : metrics_) {
    if (e.series.empty()) continue;
    UserMetric m = e.meta;
    m.series.reserve(e.series.size());
    for (const auto& [tags, s] : e.series) m.series.push_back(s);
    out.push_back(std::move(m));
  }
  return out;
}

}  // namespace ferry::metrics
