#include "endpoints/endpoints.h"

#include <algorithm>

namespace ferry::endpoints {

void LocalPublisher::Subscribe(Consumer* consumer) {
  std::shared_ptr<const Snapshot> latest;
  {
    MutexLock lock(&mu_);
    consumers_.push_back(consumer);
    latest = latest_;
  }
  if (latest) consumer->OnPublished(std::move(latest));
}

void LocalPublisher::Unsubscribe(Consumer* consumer) {
  MutexLock lock(&mu_);
  consumers_.erase(std::remove(consumers_.begin(), consumers_.end(), consumer), consumers_.end());
}

void LocalPublisher::Wake() {
  std::shared_ptr<const std::function<void()>> wake;
  {
    MutexLock lock(&mu_);
    wake = wake_;
  }
  if (wake) (*wake)();
}

void LocalPublisher::Publish(std::shared_ptr<const Snapshot> snapshot) {
  std::vector<Consumer*> consumers;
  {
    MutexLock lock(&mu_);
    latest_ = snapshot;
    consumers = consumers_;
  }
  for (Consumer* c : consumers) c->OnPublished(snapshot);
}

std::vector<ConsumerReport> LocalPublisher::CollectReports() {
  std::vector<Consumer*> consumers;
  {
    MutexLock lock(&mu_);
    consumers = consumers_;
  }
  std::vector<ConsumerReport> reports;
  reports.reserve(consumers.size());
  for (const Consumer* c : consumers) reports.push_back(c->Report());
  return reports;
}

void LocalPublisher::SetWakeHook(std::function<void()> wake) {
  MutexLock lock(&mu_);
  wake_ = wake ? std::make_shared<const std::function<void()>>(std::move(wake)) : nullptr;
}

}  // namespace ferry::endpoints
