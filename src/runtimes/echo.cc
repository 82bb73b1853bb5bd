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
//                                             K chunks (a crash mid-stream). A stream with an interval holds
//                                             no thread between its chunks: it is detached and a timer
//                                             thread of the replica writes each chunk when it is due
//                count_body=1                 reads the body piece by piece as it arrives (a large body
//                                             streams) and answers {"body_bytes", "body_pieces",
//                                             "body_streamed", "fnv1a64"} without holding it;
//                                             &read_delay_ms=M waits M ms before each piece (a slow reader)
//   WebSocket:   every message is sent back unchanged (text as text, binary as binary); ?close_after=N
//                closes the session (1000) after echoing N messages; ?refuse=STATUS refuses the session;
//                with args.allow_abort, ?abort_on=TEXT aborts the replica on a message TEXT (a crash
//                mid-session)
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <ferry/deployment.h>
#include <mutex>
#include <queue>
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
    out.add_header("content-type", sse ? "text/event-stream" : "text/plain; charset=utf-8");
    if (interval_ms > 0 && abort_after == 0 && count > 1) {
      // The first chunk now, the others from the timer thread when they are due.
      auto s = std::make_shared<Ticked>(
          Ticked{{}, count, 1, std::chrono::milliseconds(interval_ms), sse, stamp, chunk_bytes, {}});
      if (DetachedStream d = out.detach()) {
        s->out = std::move(d);
        if (!Emit(s->out, 0, *s)) return;
        ticker_.Add(std::move(s));
        return;
      }
    }
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

  std::unique_ptr<WebSocketSession> accept_websocket(const Request& req, WebSocket ws) override {
    if (std::string_view refuse = req.query_param("refuse"); !refuse.empty()) {
      int64_t status = Number(refuse, 400, 599);
      throw HttpError(status < 0 ? 403 : static_cast<int>(status), "refused by echo (?refuse)");
    }
    return std::make_unique<EchoSession>(ws, Number(req.query_param("close_after"), 0, int64_t{1} << 40),
                                         allow_abort_ ? std::string(req.query_param("abort_on")) : std::string());
  }

  Response handle(const Request& req) override {
    if (req.query_param("count_body") == "1") return CountBody(req);
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
  class EchoSession : public WebSocketSession {
   public:
    EchoSession(WebSocket ws, int64_t close_after, std::string abort_on)
        : ws_(ws), close_after_(close_after), abort_on_(std::move(abort_on)) {}
    void on_message(std::string_view data, bool binary) override {
      if (!abort_on_.empty() && data == abort_on_) {
        std::fprintf(stderr, "echo: aborting on message %s (abort_on)\n", abort_on_.c_str());
        std::abort();
      }
      if (binary ? !ws_.send_binary(data) : !ws_.send_text(data)) return;
      if (close_after_ > 0 && ++echoed_ == close_after_) ws_.close(1000, "close_after reached");
    }

   private:
    WebSocket ws_;
    int64_t close_after_;
    std::string abort_on_;
    int64_t echoed_ = 0;
  };

  // The body's size, pieces and FNV-1a hash, read as it arrives.
  static Response CountBody(const Request& req) {
    const int64_t delay_ms = std::max<int64_t>(0, Number(req.query_param("read_delay_ms"), 0, 60'000));
    uint64_t bytes = 0, pieces = 0, hash = 14695981039346656037ull;
    std::string_view piece;
    try {
      while ((delay_ms == 0 || Sleep(req, delay_ms)) && req.read_body(&piece)) {
        ++pieces;
        bytes += piece.size();
        for (unsigned char c : piece) hash = (hash ^ c) * 1099511628211ull;
      }
    } catch (const BodyError& e) {
      return Response::FromJson({{"error", e.what()}, {"body_bytes", bytes}}, 400);
    }
    char hex[17];
    std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(hash));
    return Response::FromJson(
        {{"body_bytes", bytes}, {"body_pieces", pieces}, {"body_streamed", req.body_streamed()}, {"fnv1a64", hex}});
  }

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

  // One stream with an interval between its chunks, detached from its handler.
  struct Ticked {
    DetachedStream out;
    int64_t count;
    int64_t next;  // the chunk due next
    std::chrono::milliseconds interval;
    bool sse, stamp;
    int64_t chunk_bytes;
    std::chrono::steady_clock::time_point due;
  };

  // Writes chunk `i` of `s`; false when the stream is over.
  static bool Emit(DetachedStream& out, int64_t i, const Ticked& s) {
    std::string chunk = "chunk " + std::to_string(i);
    if (s.stamp)
      chunk += " t=" + std::to_string(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                          std::chrono::system_clock::now().time_since_epoch())
                                          .count());
    if (s.sse) return out.write_event(chunk);
    chunk.push_back('\n');
    if (static_cast<int64_t>(chunk.size()) < s.chunk_bytes)
      chunk.insert(chunk.size() - 1, s.chunk_bytes - chunk.size(), '.');
    return out.write(chunk);
  }

  // The replica's timer thread for detached streams: writes each one's next chunk when it is due, ends it
  // after its last (or when its client left). Started on first use, stopped with the deployment.
  class Ticker {
   public:
    ~Ticker() {
      {
        std::lock_guard<std::mutex> lock(mu_);
        stopping_ = true;
      }
      cv_.notify_all();
      if (thread_.joinable()) thread_.join();
    }
    void Add(std::shared_ptr<Ticked> s) {
      s->due = std::chrono::steady_clock::now() + s->interval;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!thread_.joinable()) thread_ = std::thread([this] { Loop(); });
        queue_.push(std::move(s));
      }
      cv_.notify_all();
    }

   private:
    struct Later {
      bool operator()(const std::shared_ptr<Ticked>& a, const std::shared_ptr<Ticked>& b) const {
        return a->due > b->due;
      }
    };
    void Loop() {
      std::unique_lock<std::mutex> lock(mu_);
      while (!stopping_) {
        if (queue_.empty()) {
          cv_.wait(lock);
          continue;
        }
        if (std::chrono::steady_clock::now() < queue_.top()->due) {
          cv_.wait_until(lock, queue_.top()->due);
          continue;
        }
        std::shared_ptr<Ticked> s = queue_.top();
        queue_.pop();
        lock.unlock();
        const bool more = Emit(s->out, s->next, *s) && ++s->next < s->count;
        if (!more) s->out.end();
        lock.lock();
        if (more) {
          s->due += s->interval;
          queue_.push(std::move(s));
        }
      }
    }
    std::mutex mu_;
    std::condition_variable cv_;
    std::priority_queue<std::shared_ptr<Ticked>, std::vector<std::shared_ptr<Ticked>>, Later> queue_;
    bool stopping_ = false;
    std::thread thread_;
  };

  Ticker ticker_;  // its thread stops (and its streams end) when the deployment is destroyed
  std::atomic<bool> healthy_{true};
  std::atomic<double> error_rate_{0};
  std::atomic<int> delay_ms_{0};
  bool allow_abort_ = false;
};

}  // namespace ferry::runtimes

using FerryBuiltinEcho = ferry::runtimes::Echo;
FERRY_DEPLOYMENT(FerryBuiltinEcho)
