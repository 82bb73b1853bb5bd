// The metrics registry and its Prometheus text rendering.
#include "metrics/metrics.h"

#include <cmath>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <thread>
#include <vector>

namespace ferry::metrics {
namespace {

using ::testing::HasSubstr;

TEST(MetricsTest, CountersAndGaugesRenderWithTheirLabels) {
  Registry r;
  Family<Counter>& requests = r.AddCounter("x_requests_total", "Requests.", {"route", "code"});
  requests.With({"/a", "200"}).Inc();
  requests.With({"/a", "200"}).Inc(2);
  requests.With({"/b \"q\"\n", "500"}).Inc();
  r.AddGauge("x_queue", "Queued.", {}).With({}).Set(2.5);
  std::string text = r.Render();
  EXPECT_THAT(text, HasSubstr("# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\n"));
  EXPECT_THAT(text, HasSubstr("x_requests_total{route=\"/a\",code=\"200\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("x_requests_total{route=\"/b \\\"q\\\"\\n\",code=\"500\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE x_queue gauge\nx_queue{} 2.5\n"));
  EXPECT_EQ(&requests.With({"/a", "200"}), &requests.With({"/a", "200"}));  // one series per label set
}

TEST(MetricsTest, HistogramBucketsAreCumulative) {
  Registry r;
  Histogram& h = r.AddHistogram("x_latency_seconds", "Latency.", {"route"}, {1, 10, 300000}).With({"/a"});
  for (double v : {0.5, 1.0, 2.0, 9.0, 11.0, 400000.0}) h.Observe(v);
  std::string text = r.Render();
  EXPECT_THAT(text, HasSubstr("# TYPE x_latency_seconds histogram\n"));
  EXPECT_THAT(text, HasSubstr("x_latency_seconds_bucket{route=\"/a\",le=\"1\"} 2\n"));  // le is inclusive
  EXPECT_THAT(text, HasSubstr("x_latency_seconds_bucket{route=\"/a\",le=\"10\"} 4\n"));
  EXPECT_THAT(text, HasSubstr("x_latency_seconds_bucket{route=\"/a\",le=\"300000\"} 5\n"));
  EXPECT_THAT(text, HasSubstr("x_latency_seconds_bucket{route=\"/a\",le=\"+Inf\"} 6\n"));
  EXPECT_THAT(text, HasSubstr("x_latency_seconds_sum{route=\"/a\"} 400023.5\n"));
  EXPECT_THAT(text, HasSubstr("x_latency_seconds_count{route=\"/a\"} 6\n"));
}

TEST(MetricsTest, ConcurrentRecordingLosesNothing) {
  Registry r;
  Family<Counter>& c = r.AddCounter("x_total", "X.", {"t"});
  Histogram& h = r.AddHistogram("x_seconds", "X.", {}, LatencyBucketsSeconds()).With({});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        c.With({"same"}).Inc();
        h.Observe(1.0);
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(c.With({"same"}).value(), 40000u);
  EXPECT_EQ(h.count(), 40000u);
  EXPECT_EQ(h.sum(), 40000.0);
}

TEST(MetricsTest, SampleWriterAndValues) {
  std::string out;
  SampleWriter w(&out);
  w.Header("x_replicas", "Replicas.", Type::kGauge);
  w.Sample("x_replicas", {{"state", "RUNNING"}}, 3);
  EXPECT_EQ(out, "# HELP x_replicas Replicas.\n# TYPE x_replicas gauge\nx_replicas{state=\"RUNNING\"} 3\n");
  out.clear();
  w.Sample("x_plain_total", {}, 2);  // no labels: no braces
  EXPECT_EQ(out, "x_plain_total 2\n");
  EXPECT_EQ(FormatValue(0.25), "0.25");
  EXPECT_EQ(FormatValue(1e300), "1e+300");
  EXPECT_EQ(FormatValue(-1.0 / 0.0), "-Inf");
}

TEST(MetricsTest, TextReadsBackAndQuantilesInterpolate) {
  Registry r;
  r.AddCounter("x_total", "X.", {"route"}).With({"/a \"b\""}).Inc(7);
  Histogram& h = r.AddHistogram("x_seconds", "X.", {}, {0.1, 0.2, 0.4}).With({});
  for (int i = 0; i < 50; ++i) h.Observe(0.05);
  for (int i = 0; i < 50; ++i) h.Observe(0.15);
  std::vector<Sample> samples = ParseText(r.Render() + "garbage line\nx_other 5 1700000000000\n");
  ASSERT_GE(samples.size(), 7u);
  EXPECT_EQ(samples[0].name, "x_total");
  EXPECT_EQ(samples[0].label("route"), "/a \"b\"");
  EXPECT_EQ(samples[0].value, 7);
  EXPECT_EQ(samples.back().name, "x_other");
  EXPECT_EQ(samples.back().value, 5);  // the timestamp is not the value
  std::map<double, double> buckets;
  for (const Sample& s : samples)
    if (s.name == "x_seconds_bucket") buckets[s.label("le") == "+Inf" ? INFINITY : std::stod(s.label("le"))] = s.value;
  EXPECT_DOUBLE_EQ(Quantile(0.5, buckets), 0.1);    // the 50th of 100 is the top of the first bucket
  EXPECT_DOUBLE_EQ(Quantile(0.75, buckets), 0.15);  // halfway through the second
  EXPECT_DOUBLE_EQ(Quantile(0.99, buckets), 0.198);
  EXPECT_TRUE(std::isnan(Quantile(0.5, {})));
  EXPECT_EQ(Quantile(0.99, {{0.1, 1}, {INFINITY, 10}}), 0.1);  // in +Inf: the highest finite bound
}

TEST(UserRegistryTest, DefinesOnceAndRecordsBySeries) {
  UserRegistry r;
  std::string error;
  const int hits = r.Define("hits", "Cache hits.", Type::kCounter, {}, &error);
  ASSERT_GE(hits, 0) << error;
  EXPECT_EQ(r.Define("hits", "again", Type::kCounter, {}, &error), hits);  // the same metric
  EXPECT_EQ(r.Define("hits", "", Type::kGauge, {}, &error), -1);
  EXPECT_NE(error.find("another type"), std::string::npos) << error;
  const int size = r.Define("size", "", Type::kHistogram, {1, 10}, &error);
  ASSERT_GE(size, 0) << error;
  EXPECT_EQ(r.Define("size", "", Type::kHistogram, {1, 100}, &error), -1);
  const int temp = r.Define("temp", "", Type::kGauge, {}, &error);

  // Tags in any order name one series.
  EXPECT_TRUE(r.Record(hits, {{"b", "2"}, {"a", "1"}}, 2));
  EXPECT_TRUE(r.Record(hits, {{"a", "1"}, {"b", "2"}}, 0.5));
  EXPECT_TRUE(r.Record(hits, {}, 1));
  EXPECT_FALSE(r.Record(hits, {}, 0));  // a counter only goes up
  EXPECT_FALSE(r.Record(hits, {}, -1));
  EXPECT_TRUE(r.Record(temp, {}, 5));
  EXPECT_TRUE(r.Record(temp, {}, -3));  // a gauge keeps the last value
  EXPECT_TRUE(r.Record(size, {}, 0.5));
  EXPECT_TRUE(r.Record(size, {}, 10));
  EXPECT_TRUE(r.Record(size, {}, 11));
  EXPECT_FALSE(r.Record(size, {{"bad-key", "x"}}, 1));
  EXPECT_FALSE(r.Record(99, {}, 1));

  std::vector<UserMetric> snapshot = r.Snapshot();
  ASSERT_EQ(snapshot.size(), 3u);
  EXPECT_EQ(snapshot[0].name, "hits");
  ASSERT_EQ(snapshot[0].series.size(), 2u);
  EXPECT_TRUE(snapshot[0].series[0].tags.empty());
  EXPECT_EQ(snapshot[0].series[0].value, 1);
  EXPECT_EQ(snapshot[0].series[1].tags, (std::vector<std::pair<std::string, std::string>>{{"a", "1"}, {"b", "2"}}));
  EXPECT_EQ(snapshot[0].series[1].value, 2.5);
  EXPECT_EQ(snapshot[1].series[0].counts, (std::vector<uint64_t>{1, 1, 1}));  // <=1, <=10, +Inf
  EXPECT_EQ(snapshot[1].series[0].sum, 21.5);
  EXPECT_EQ(snapshot[2].series[0].value, -3);
}

TEST(UserRegistryTest, RefusesBadNamesAndBoundsAndBoundsItsSeries) {
  UserRegistry r;
  std::string error;
  for (const char* name : {"", "9x", "a-b", "ferry_requests"}) {
    EXPECT_EQ(r.Define(name, "", Type::kCounter, {}, &error), -1) << name;
    EXPECT_FALSE(error.empty());
  }
  EXPECT_EQ(r.Define("h", "", Type::kHistogram, {}, &error), -1);
  EXPECT_EQ(r.Define("h", "", Type::kHistogram, {2, 1}, &error), -1);
  EXPECT_EQ(r.Define("h", "", Type::kHistogram, {0, 1}, &error), -1);
  EXPECT_GE(r.Define("ns:ok_name", "", Type::kGauge, {}, &error), 0);

  const int g = r.Define("per_user", "", Type::kGauge, {}, &error);
  size_t recorded = 0;
  for (size_t i = 0; i < UserRegistry::kMaxSeries + 10; ++i)
    recorded += r.Record(g, {{"user", std::to_string(i)}}, 1) ? 1 : 0;
  EXPECT_EQ(recorded, UserRegistry::kMaxSeries);
  EXPECT_TRUE(r.Record(g, {{"user", "0"}}, 2));  // an existing series still records
}

}  // namespace
}  // namespace ferry::metrics
