#include "proxy/proxy.h"

#include <boost/asio/post.hpp>
#include <thread>

#include "common/common.h"
#include "proxy/internal/proxy_internal.h"

namespace ferry::proxy {

Worker::Worker(const ProxyOptions& options, router::RoutingTableCell* routing, std::atomic<int>* in_flight,
               std::atomic<bool>* draining)
    : options_(options), routing_(routing), in_flight_(in_flight), draining_(draining) {}

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
    if (ec) return;
    auto now = Clock::now();
    std::vector<HttpSession*> sessions(sessions_.begin(), sessions_.end());
    for (HttpSession* s : sessions) CheckDeadline(s, now);
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
  std::vector<HttpSession*> sessions(sessions_.begin(), sessions_.end());
  for (HttpSession* s : sessions) CloseWhenIdle(s);
}

void Worker::CloseAll() {
  BeginDrain();
  std::vector<HttpSession*> sessions(sessions_.begin(), sessions_.end());
  for (HttpSession* s : sessions) CloseNow(s);
}

std::shared_ptr<ReplicaChannel> Worker::ChannelTo(const std::shared_ptr<const router::ReplicaEndpoint>& replica) {
  auto it = channels_.find(replica->key);
  if (it != channels_.end() && !it->second->closed()) return it->second;
  auto channel = std::make_shared<ReplicaChannel>(*this, replica);
  channels_[replica->key] = channel;
  channel->Start();
  return channel;
}

void Worker::ForgetChannel(uint64_t key, const ReplicaChannel* channel) {
  auto it = channels_.find(key);
  if (it != channels_.end() && it->second.get() == channel) channels_.erase(it);
}

class Proxy::Impl {
 public:
  explicit Impl(const ProxyOptions& options, router::RoutingTableCell* routing)
      : options_(options), routing_(routing) {}

  absl::Status Listen() {
    boost::system::error_code ec;
    auto address = asio::ip::make_address(options_.host, ec);
    if (ec) return absl::InvalidArgumentError(ferry::StrCat("http_options.host: not an IP address: ", options_.host));
    int threads = std::max(1, options_.num_threads);
    uint16_t port = static_cast<uint16_t>(options_.port);
    for (int i = 0; i < threads; ++i) {
      auto worker = std::make_unique<Worker>(options_, routing_, &in_flight_, &draining_);
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
    auto deadline = Clock::now() + timeout;
    while (in_flight_.load() > 0 && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(10));
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
    auto deadline = Clock::now() + std::chrono::seconds(2);
    while (closed.load() < static_cast<int>(workers_.size()) && Clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    for (auto& w : workers_) w->io().stop();
    for (auto& t : threads_) t.join();
    threads_.clear();
  }

  int in_flight() const { return in_flight_.load(); }

 private:
  ProxyOptions options_;
  router::RoutingTableCell* routing_;
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
