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
  std::atomic<bool> healthy_{true};
  std::atomic<double> error_rate_{0};
  std::atomic<int> delay_ms_{0};
  bool allow_abort_ = false;
};

}  // namespace ferry::runtimes

using FerryBuiltinEcho = ferry::runtimes::Echo;
FERRY_DEPLOYMENT(FerryBuiltinEcho)
