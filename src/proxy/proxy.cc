#include "proxy/proxy.h"

#include <boost/asio/post.hpp>
#include <thread>

#include "common/common.h"
#include "proxy/internal/proxy_internal.h"

namespace ferry::proxy {

Worker::Worker(const ProxyOptions& options, router::RoutingTableCell* routing, std::atomic<int>* in_flight,
               std::atomic<bool>* draining, ProxyMetrics* metrics)
    : options_(options), routing_(routing), in_flight_(in_flight), draining_(draining), metrics_(metrics) {}

ProxyMetrics::ProxyMetrics(metrics::Registry& r)
    : requests(r.AddCounter("ferry_num_http_requests_total", "HTTP requests answered by the proxy, by status code.",
                            {"application", "route", "code"})),
      latency(r.AddHistogram("ferry_http_request_duration_seconds",
                             "End-to-end latency at the proxy, from a parsed request to its answer.",
                             {"application", "route"}, metrics::LatencyBucketsSeconds())),
      queue_wait(r.AddHistogram("ferry_deployment_queue_wait_seconds",
                                "Time a request waited in the router for a replica slot.",
                                {"application", "deployment"}, metrics::LatencyBucketsSeconds())),
      rejected(r.AddCounter("ferry_num_rejected_requests_total",
                            "Requests answered 503: every replica at max_ongoing_requests and the queue full.",
                            {"application", "deployment"})),
      timed_out(r.AddCounter("ferry_num_timed_out_requests_total", "Requests answered 504: request_timeout_s passed.",
                             {"application", "deployment"})),
      websocket_closed(
          r.AddCounter("ferry_websocket_sessions_closed_total",
                       "WebSocket sessions ended, by close code (1006: the connection broke; 1002, 1007, "
                       "1009: the client broke the protocol, sent bad UTF-8, or a message over the limit).",
                       {"application", "route", "code"})),
      websocket_messages(r.AddCounter("ferry_websocket_messages_total",
                                      "WebSocket messages passed by the proxy, by direction (in: from clients).",
                                      {"application", "route", "direction"})) {}

RouteSeries* Worker::Series(const std::shared_ptr<const router::RoutingTable>& table, const router::Route* route) {
  if (!metrics_) return nullptr;
  if (table != series_table_) {  // routes are pointers into a table: a new table, new keys
    series_by_route_.clear();
    series_table_ = table;
  }
  auto cached = series_by_route_.find(route);
  if (cached != series_by_route_.end()) return cached->second;
  std::string application = route ? route->application : "";
  std::string prefix = route ? route->route_prefix : "";
  std::string deployment = route ? route->ingress_deployment : "";
  std::unique_ptr<RouteSeries>& s = series_[ferry::StrCat(application, "\n", prefix, "\n", deployment)];
  if (!s) {
    s = std::make_unique<RouteSeries>();
    s->application = application;
    s->route = prefix;
    s->deployment = deployment;
    s->latency = &metrics_->latency.With({application, prefix});
    if (route) {
      s->queue_wait = &metrics_->queue_wait.With({application, deployment});
      s->rejected = &metrics_->rejected.With({application, deployment});
      s->timed_out = &metrics_->timed_out.With({application, deployment});
    }
  }
  series_by_route_[route] = s.get();
  return s.get();
}

void Worker::RecordResponse(RouteSeries* series, unsigned status, std::optional<double> seconds) {
  if (!series) return;
  if (status >= series->codes.size()) status = 0;
  metrics::Counter*& counter = series->codes[status];
  if (!counter) counter = &metrics_->requests.With({series->application, series->route, std::to_string(status)});
  counter->Inc();
  if (seconds) series->latency->Observe(*seconds);
}

void Worker::RecordWebSocketSession(RouteSeries* series, unsigned close_code, uint64_t messages_in,
                                    uint64_t messages_out) {
  if (!series) return;
  metrics_->websocket_closed.With({series->application, series->route, std::to_string(close_code)}).Inc();
  metrics_->websocket_messages.With({series->application, series->route, "in"}).Inc(messages_in);
  metrics_->websocket_messages.With({series->application, series->route, "out"}).Inc(messages_out);
}

absl::Status Worker::Listen(const tcp::endpoint& endpoint, bool reuse_port) {
  boost::system::error_code ec;
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec && reuse_port) {
    int one = 1;
    if (setsockopt(acceptor_.native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0)
      ec = boost::system::error_code(errno, boost::system::system_category());
  }
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    return absl::UnavailableError(
        ferry::StrCat("cannot listen on ", endpoint.address().to_string(), ":", endpoint.port(), ": ", ec.message()));
  return absl::OkStatus();
}

uint16_t Worker::port() const {
  boost::system::error_code ec;
  return acceptor_.local_endpoint(ec).port();
}

void Worker::Start() {
  DoAccept();
  Sweep();
}

void Worker::Sweep() {
  sweep_.expires_after(std::chrono::milliseconds(100));
  sweep_.async_wait([this](const boost::system::error_code& ec) {
    access_log_.Flush();
    if (ec) return;
    auto now = SteadyClock::now();
    std::vector<Session*> sessions(sessions_.begin(), sessions_.end());
    for (Session* s : sessions) s->CheckDeadline(now);
    Sweep();
  });
}

void Worker::DoAccept() {
  acceptor_.async_accept([this](const boost::system::error_code& ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor_.is_open()) return;
    if (!ec) StartHttpSession(*this, std::move(socket));
    DoAccept();
  });
}

void Worker::BeginDrain() {
  boost::system::error_code ignored;
  acceptor_.close(ignored);
  std::vector<Session*> sessions(sessions_.begin(), sessions_.end());
  for (Session* s : sessions) s->CloseWhenIdle();
}

void Worker::CloseAll() {
  BeginDrain();
  std::vector<Session*> sessions(sessions_.begin(), sessions_.end());
  for (Session* s : sessions) s->CloseNow();
}

std::shared_ptr<transport::ReplicaChannel> Worker::ChannelTo(
    const std::shared_ptr<const router::ReplicaEndpoint>& replica) {
  auto it = channels_.find(replica->key);
  if (it != channels_.end() && !it->second->closed()) return it->second;
  auto channel = std::make_shared<transport::ReplicaChannel>(io_.get_executor(), replica->socket_path, "proxy",
                                                             [this, key = replica->key](transport::ReplicaChannel* c) {
                                                               auto it = channels_.find(key);
                                                               if (it != channels_.end() && it->second.get() == c)
                                                                 channels_.erase(it);
                                                             });
  channels_[replica->key] = channel;
  channel->Start();
  return channel;
}

class Proxy::Impl {
 public:
  explicit Impl(const ProxyOptions& options, router::RoutingTableCell* routing)
      : options_(options),
        routing_(routing),
        metrics_(options.metrics ? std::make_unique<ProxyMetrics>(*options.metrics) : nullptr) {}

  absl::Status Listen() {
    boost::system::error_code ec;
    auto address = asio::ip::make_address(options_.host, ec);
    if (ec) return absl::InvalidArgumentError(ferry::StrCat("http_options.host: not an IP address: ", options_.host));
    int threads = std::max(1, options_.num_threads);
    uint16_t port = static_cast<uint16_t>(options_.port);
    for (int i = 0; i < threads; ++i) {
      auto worker = std::make_unique<Worker>(options_, routing_, &in_flight_, &draining_, metrics_.get());
      // The first worker picks the port (it may be 0); the others share it through SO_REUSEPORT.
      absl::Status s = worker->Listen(tcp::endpoint(address, port), threads > 1);
      if (!s.ok()) return s;
      port = worker->port();
      workers_.push_back(std::move(worker));
    }
    return absl::OkStatus();
  }

  uint16_t port() const { return workers_.front()->port(); }

  void Start() {
    for (auto& w : workers_) {
      w->Start();
      threads_.emplace_back([worker = w.get()] {
        auto guard = asio::make_work_guard(worker->io());
        worker->io().run();
      });
    }
  }

  int Drain(std::chrono::milliseconds timeout) {
    draining_.store(true);
    for (auto& w : workers_) asio::post(w->io(), [worker = w.get()] { worker->BeginDrain(); });
    auto deadline = SteadyClock::now() + timeout;
    while (in_flight_.load() > 0 && SteadyClock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return in_flight_.load();
  }

  void Stop() {
    if (threads_.empty()) return;
    // Close sessions on their own threads first, so no call is left in a router's queue.
    std::atomic<int> closed{0};
    for (auto& w : workers_)
      asio::post(w->io(), [worker = w.get(), &closed] {
        worker->CloseAll();
        closed.fetch_add(1);
      });
    auto deadline = SteadyClock::now() + std::chrono::seconds(2);
    while (closed.load() < static_cast<int>(workers_.size()) && SteadyClock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    for (auto& w : workers_) w->io().stop();
    for (auto& t : threads_) t.join();
    threads_.clear();
    for (auto& w : workers_) w->access_log().Flush();
  }

  int in_flight() const { return in_flight_.load(); }

 private:
  ProxyOptions options_;
  router::RoutingTableCell* routing_;
  std::unique_ptr<ProxyMetrics> metrics_;  // before workers_: they point at it
  std::atomic<int> in_flight_{0};
  std::atomic<bool> draining_{false};
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::thread> threads_;
};

absl::StatusOr<std::unique_ptr<Proxy>> Proxy::Create(const ProxyOptions& options, router::RoutingTableCell* routing) {
  auto impl = std::make_unique<Impl>(options, routing);
  absl::Status s = impl->Listen();
  if (!s.ok()) return s;
  return std::unique_ptr<Proxy>(new Proxy(std::move(impl)));
}

Proxy::Proxy(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Proxy::~Proxy() { impl_->Stop(); }
uint16_t Proxy::port() const { return impl_->port(); }
void Proxy::Start() { impl_->Start(); }
int Proxy::Drain(std::chrono::milliseconds timeout) { return impl_->Drain(timeout); }
void Proxy::Stop() { impl_->Stop(); }
int Proxy::in_flight() const { return impl_->in_flight(); }

}  // namespace ferry::proxy
