// builtin:busy spends `work_us` microseconds of CPU per request (from args, or the query's work_us, which
// wins), then answers JSON with what it did. For load tests: it behaves like a model whose compute time
// is known. It stops early when the request is cancelled, as a well-behaved model should.
#include <unistd.h>

#include <charconv>
#include <chrono>
#include <ferry/deployment.h>

namespace ferry::runtimes {

class Busy : public Deployment {
 public:
  explicit Busy(const Args& args) : work_us_(args.get<long long>("work_us", 0)) {
    if (work_us_ < 0) throw std::invalid_argument("args.work_us: expected a non-negative integer");
  }

  Response handle(const Request& req) override {
    long long work_us = work_us_;
    std::string_view q = req.query_param("work_us");
    if (!q.empty()) {
      long long v = 0;
      auto [end, ec] = std::from_chars(q.data(), q.data() + q.size(), v);
      if (ec != std::errc() || end != q.data() + q.size() || v < 0)
        return Response::FromJson({{"error", "query parameter work_us: expected a non-negative integer"}}, 400);
      work_us = v;
    }
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    const auto until = start + std::chrono::microseconds(work_us);
    volatile uint64_t sink = 0;
    bool cancelled = false;
    while (Clock::now() < until) {
      for (int i = 0; i < 1000; ++i) sink = sink * 6364136223846793005ull + 1442695040888963407ull;
      if (req.is_cancelled()) {
        cancelled = true;
        break;
      }
    }
    auto spent = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count();
    return Response::FromJson({{"work_us", work_us}, {"spent_us", spent}, {"cancelled", cancelled}, {"pid", getpid()}});
  }

 private:
  long long work_us_;
};

}  // namespace ferry::runtimes

using FerryBuiltinBusy = ferry::runtimes::Busy;
FERRY_DEPLOYMENT(FerryBuiltinBusy)
