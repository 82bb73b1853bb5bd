// builtin:busy spends `work_us` microseconds of CPU per request (from args, or the query's work_us, which
// wins), then answers JSON with what it did. For load tests: it behaves like a model whose compute time
// is known. It stops early when the request is cancelled, as a well-behaved model should.
//
// `batch_cost_us` (args) is a fixed cost per call, like a model's: handle() pays it for its one request;
// with `batching` configured, handle_batch pays it once per batch plus work_us per request. Every answer carries
// `batch_size`, the size of the batch it ran in. `?fail=1` makes that one request answer 500, to show that a
// failing item fails only itself.
//
// `prepare_us` (args) is per-request work that needs no batch, like parsing a request body: with batching it
// is spent in prepare(), as the request arrives; otherwise in handle(). A batched answer says where it was
// spent: `"prepared": "on arrival"` (prepare() ran on another thread before the batch) or `"in batch"`.
// `body_bytes` says how large the request's body was (a streamed one is read whole first).
#include <unistd.h>

#include <any>
#include <charconv>
#include <chrono>
#include <ferry/deployment.h>
#include <thread>

namespace ferry::runtimes {

class Busy : public Deployment {
 public:
  explicit Busy(const Args& args)
      : work_us_(args.get<long long>("work_us", 0)),
        batch_cost_us_(args.get<long long>("batch_cost_us", 0)),
        prepare_us_(args.get<long long>("prepare_us", 0)) {
    if (work_us_ < 0) throw std::invalid_argument("args.work_us: expected a non-negative integer");
    if (batch_cost_us_ < 0) throw std::invalid_argument("args.batch_cost_us: expected a non-negative integer");
    if (prepare_us_ < 0) throw std::invalid_argument("args.prepare_us: expected a non-negative integer");
  }

  // Spends prepare_us as the request arrives; remembers the thread, so that its answer can say whether
  // the work really happened apart from the batch.
  std::any prepare(const Request& req) override {
    SpinUntil(Clock::now() + std::chrono::microseconds(prepare_us_), req);
    return std::this_thread::get_id();
  }

  Response handle(const Request& req) override {
    long long work_us = 0;
    if (!WorkOf(req, &work_us)) return BadWork();
    auto start = Clock::now();
    // An unbatched call pays the fixed cost and the preparation too: it is a batch of one.
    bool cancelled = SpinUntil(start + std::chrono::microseconds(prepare_us_ + batch_cost_us_ + work_us), req);
    Json answer = Answer(work_us, start, cancelled, 1);
    answer["body_bytes"] = req.body().size();
    return Response::FromJson(answer);
  }

  std::vector<Response> handle_batch(std::span<const Request> batch) override {
    std::vector<long long> work(batch.size());
    std::vector<bool> apart(batch.size());
    for (size_t i = 0; i < batch.size(); ++i) {
      std::any* p = batch[i].prepared();
      apart[i] = p && std::any_cast<std::thread::id>(*p) != std::this_thread::get_id();
      if (!p) SpinUntil(Clock::now() + std::chrono::microseconds(prepare_us_), batch[i]);  // not prepared yet
    }
    auto start = Clock::now();
    // Deadlines run from the batch's start, so the batch costs exactly batch_cost + the sum of its work.
    auto until = start + std::chrono::microseconds(batch_cost_us_);
    SpinUntil(until, batch.front());
    std::vector<Response> out;
    out.reserve(batch.size());
    for (size_t i = 0; i < batch.size(); ++i) {
      const Request& req = batch[i];
      if (!WorkOf(req, &work[i])) {
        out.push_back(BadWork());
        continue;
      }
      if (req.query_param("fail") == "1") {
        out.push_back(Response::FromJson({{"error", "this item failed (?fail=1)"}, {"batch_size", batch.size()}}, 500));
        continue;
      }
      until += std::chrono::microseconds(work[i]);
      bool cancelled = SpinUntil(until, req);
      if (cancelled) until = Clock::now();  // it stopped early: the next item's work starts now
      Json answer = Answer(work[i], start, cancelled, batch.size());
      answer["prepared"] = apart[i] ? "on arrival" : "in batch";
      answer["body_bytes"] = req.body().size();
      out.push_back(Response::FromJson(answer));
    }
    return out;
  }

 private:
  using Clock = std::chrono::steady_clock;

  bool WorkOf(const Request& req, long long* work_us) const {
    *work_us = work_us_;
    std::string_view q = req.query_param("work_us");
    if (q.empty()) return true;
    long long v = 0;
    auto [end, ec] = std::from_chars(q.data(), q.data() + q.size(), v);
    if (ec != std::errc() || end != q.data() + q.size() || v < 0) return false;
    *work_us = v;
    return true;
  }

  static Response BadWork() {
    return Response::FromJson({{"error", "query parameter work_us: expected a non-negative integer"}}, 400);
  }

  // Burns CPU until `until`; stops early and returns true when the request is cancelled. The clock is read
  // every ~0.1 us of work so that the spin ends within a fraction of a microsecond of its deadline.
  static bool SpinUntil(Clock::time_point until, const Request& req) {
    volatile uint64_t sink = 0;
    while (Clock::now() < until) {
      for (int i = 0; i < 64; ++i) sink = sink * 6364136223846793005ull + 1442695040888963407ull;
      if (req.is_cancelled()) return true;
    }
    return false;
  }

  static Json Answer(long long work_us, Clock::time_point start, bool cancelled, size_t batch_size) {
    auto spent = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count();
    return {{"work_us", work_us},
            {"spent_us", spent},
            {"cancelled", cancelled},
            {"batch_size", batch_size},
            {"pid", getpid()}};
  }

  long long work_us_;
  long long batch_cost_us_;
  long long prepare_us_;
};

}  // namespace ferry::runtimes

using FerryBuiltinBusy = ferry::runtimes::Busy;
FERRY_DEPLOYMENT(FerryBuiltinBusy)
