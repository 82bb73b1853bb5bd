// builtin:echo answers every request with what it received, as JSON: method, path, query, route_prefix,
// headers, body and request id. For smoke tests, routing checks and measuring ferry's own overhead.
//
// It doubles as the game-day deployment: knobs inject the failures operators rehearse.
//   args:        {fail_constructor: "text"}   the constructor throws "text"
//                {constructor_delay_s: 5}     the constructor takes that long (a slow model load)
//                {allow_abort: true}          x-echo-abort (below) is honoured
//   user_config: {healthy: false}             check_health fails
//                {error_rate: 0.1}            that share of requests answers 500
//                {delay_ms: 50}               every request waits that long first (cancellable)
//   header:      x-echo-log: TEXT             writes TEXT to the replica's log through ferry::log (to
//                                             check what a log shipper receives from user code)
//                x-echo-print: TEXT           prints TEXT to standard output, x-echo-eprint to standard
//                                             error, as user code and its libraries do
//                x-echo-abort: TEXT           with args.allow_abort: prints TEXT to standard error and
//                                             aborts the replica (a crash and its last words)
//   query:       stream=N&interval_ms=M       streams N chunks "chunk <i>\n", one every M ms (as Server-Sent
//                                             Events "data: chunk <i>" when the request accepts
//                                             text/event-stream); &chunk_bytes=K pads each chunk to K bytes
//                                             (for measuring large streams); &stamp=1 appends " t=<ns>", the
//                                             wall-clock time the chunk was produced (for measuring delivery);
//                                             with args.allow_abort, &abort_after=K aborts the replica after
//                                             K chunks (a crash mid-stream)
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ferry/deployment.h>
#include <random>
#include <thread>

namespace ferry::runtimes {

class Echo : public Deployment {
 public:
  explicit Echo(const Args& args) {
    double delay_s = args.get<double>("constructor_delay_s", 0);
    if (delay_s > 0) std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int64_t>(delay_s * 1000)));
    std::string fail = args.get<std::string>("fail_constructor", "");
    if (!fail.empty()) throw std::runtime_error(fail);
    allow_abort_ = args.get<bool>("allow_abort", false);
  }

  void handle_stream(const Request& req, ResponseWriter& out) override {
    std::string_view stream = req.query_param("stream");
    if (stream.empty()) {
      Deployment::handle_stream(req, out);
      return;
    }
    const int64_t count = Number(stream, 0, int64_t{1} << 40);
    const int64_t interval_ms = Number(req.query_param("interval_ms"), 0, 3'600'000);
    const int64_t chunk_bytes = Number(req.query_param("chunk_bytes"), 0, 16 << 20);
    if (count < 0 || interval_ms < 0 || chunk_bytes < 0) {
      out.send(Response::FromJson({{"error",
                                    "stream, interval_ms and chunk_bytes must be non-negative integers (stream at "
                                    "most 2^40, interval_ms at most 3600000, chunk_bytes at most 16777216)"},
                                   {"request_id", req.request_id()}},
                                  400));
      return;
    }
    const bool sse = req.header("accept").find("text/event-stream") != std::string_view::npos;
    const bool stamp = req.query_param("stamp") == "1";
    const int64_t abort_after = allow_abort_ ? Number(req.query_param("abort_after"), 1, int64_t{1} << 40) : 0;
    if (!sse) out.add_header("content-type", "text/plain; charset=utf-8");
    std::string chunk;
    for (int64_t i = 0; i < count; ++i) {
      if (abort_after > 0 && i == abort_after) {
        std::fprintf(stderr, "echo: aborting after %lld chunks (abort_after)\n", static_cast<long long>(i));
        std::abort();
      }
      if (i > 0 && interval_ms > 0 && !Sleep(req, interval_ms)) return;
      chunk = "chunk " + std::to_string(i);
      if (stamp)  // when it was produced, for measuring how long a chunk takes to reach the client
        chunk += " t=" + std::to_string(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                            std::chrono::system_clock::now().time_since_epoch())
                                            .count());
      if (sse) {
        if (!out.write_event(chunk)) return;
        continue;
      }
      chunk.push_back('\n');
      if (static_cast<int64_t>(chunk.size()) < chunk_bytes)
        chunk.insert(chunk.size() - 1, chunk_bytes - chunk.size(), '.');
      if (!out.write(chunk)) return;
    }
  }

  Response handle(const Request& req) override {
    if (std::string_view line = req.header("x-echo-log"); !line.empty()) log::Info(line);
    if (std::string_view text = req.header("x-echo-print"); !text.empty())
      std::printf("%.*s\n", static_cast<int>(text.size()), text.data());
    if (std::string_view text = req.header("x-echo-eprint"); !text.empty())
      std::fprintf(stderr, "%.*s\n", static_cast<int>(text.size()), text.data());
    if (std::string_view text = req.header("x-echo-abort"); !text.empty() && allow_abort_) {
      std::fprintf(stderr, "%.*s\n", static_cast<int>(text.size()), text.data());
      std::abort();
    }
    if (int delay = delay_ms_.load(std::memory_order_relaxed); delay > 0) {
      auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(delay);
      while (std::chrono::steady_clock::now() < until && !req.is_cancelled())
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (double rate = error_rate_.load(std::memory_order_relaxed); rate > 0) {
      thread_local std::mt19937_64 rng{std::random_device{}()};
      if (std::uniform_real_distribution<double>(0, 1)(rng) < rate)
        return Response::FromJson({{"error", "injected failure (user_config.error_rate " + std::to_string(rate) + ")"}},
                                  500);
    }
    Json headers = Json::object();
    for (size_t i = 0; i < req.num_headers(); ++i) headers[std::string(req.header_name(i))] = req.header_value(i);
    Json body = {{"method", req.method()},        {"path", req.path()},
                 {"query", req.query()},          {"route_prefix", req.route_prefix()},
                 {"headers", std::move(headers)}, {"body", req.body()},
                 {"request_id", req.request_id()}};
    Response r;
    r.headers.emplace_back("content-type", "application/json");
    r.body = body.dump(-1, ' ', false, Json::error_handler_t::replace);
    return r;
  }

  void reconfigure(const Json& user_config) override {
    const Json config = user_config.is_null() ? Json::object() : user_config;  // removed: back to defaults
    if (!config.is_object()) throw std::invalid_argument("user_config: expected a mapping");
    bool healthy = config.value("healthy", true);
    double error_rate = config.value("error_rate", 0.0);
    int delay_ms = config.value("delay_ms", 0);
    if (error_rate < 0 || error_rate > 1)
      throw std::invalid_argument("user_config.error_rate: expected a number from 0 to 1");
    if (delay_ms < 0) throw std::invalid_argument("user_config.delay_ms: expected a non-negative integer");
    healthy_.store(healthy);
    error_rate_.store(error_rate);
    delay_ms_.store(delay_ms);
  }

  bool check_health() override {
    if (!healthy_.load()) throw std::runtime_error("unhealthy: user_config.healthy is false");
    return true;
  }

 private:
  // A query parameter as an integer in [min, max]; absent: 0; anything else: -1.
  static int64_t Number(std::string_view text, int64_t min, int64_t max) {
    if (text.empty()) return 0;
    int64_t v = 0;
    for (char c : text) {
      if (c < '0' || c > '9' || v > max) return -1;
      v = v * 10 + (c - '0');
    }
    return v < min || v > max ? -1 : v;
  }
  // Waits `ms`, waking early when the request is cancelled; false then.
  static bool Sleep(const Request& req, int64_t ms) {
    auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    while (!req.is_cancelled()) {
      auto now = std::chrono::steady_clock::now();
      if (now >= until) return true;
      std::this_thread::sleep_for(
          std::min<std::chrono::steady_clock::duration>(until - now, std::chrono::milliseconds(5)));
    }
    return false;
  }

  std::atomic<bool> healthy_{true};
  std::atomic<double> error_rate_{0};
  std::atomic<int> delay_ms_{0};
  bool allow_abort_ = false;
};

}  // namespace ferry::runtimes

using FerryBuiltinEcho = ferry::runtimes::Echo;
FERRY_DEPLOYMENT(FerryBuiltinEcho)
