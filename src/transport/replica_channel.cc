#include "transport/replica_channel.h"

#include "common/common.h"
#include "transport/address.h"

namespace ferry::transport {

ReplicaChannel::ReplicaChannel(const boost::asio::any_io_executor& executor, std::string socket_path,
                               std::string client, std::function<void(ReplicaChannel*)> on_closed)
    : client_(std::move(client)),
      on_closed_(std::move(on_closed)),
      connection_(std::make_shared<FrameConnection>(executor, std::move(socket_path), this)) {}

void ReplicaChannel::Start() {
  AppendHello(connection_->output(), 0, {kProtocolVersion, client_, FrameToken()});
  connection_->Start();
}

uint64_t ReplicaChannel::Send(std::shared_ptr<StreamListener> listener, const RequestMessage& request) {
  uint64_t id = streams_.Add(std::move(listener));
  AppendRequest(connection_->output(), id, request);
  connection_->Flush();
  return id;
}

void ReplicaChannel::Cancel(uint64_t stream_id) {
  if (connection_->closed()) return;
  AppendEmpty(connection_->output(), FrameKind::kCancel, stream_id);
  connection_->Flush();
}

void ReplicaChannel::Credit(uint64_t stream_id, uint32_t bytes) {
  if (connection_->closed() || bytes == 0) return;
  AppendCredit(connection_->output(), stream_id, bytes);
  connection_->Flush();
}

void ReplicaChannel::SendChunk(uint64_t stream_id, std::string_view data) {
  if (connection_->closed()) return;
  AppendChunk(connection_->output(), stream_id, data);
  connection_->Flush();
}

void ReplicaChannel::SendEnd(uint64_t stream_id, bool ok) {
  if (connection_->closed()) return;
  AppendEnd(connection_->output(), stream_id, {ok, ok ? "" : "the client's body broke"});
  connection_->Flush();
}

void ReplicaChannel::SendMessage(uint64_t stream_id, const WsMessage& message) {
  if (connection_->closed()) return;
  AppendMessage(connection_->output(), stream_id, message);
  connection_->Flush();
}

void ReplicaChannel::SendClose(uint64_t stream_id, const WsClose& close) {
  if (connection_->closed()) return;
  AppendClose(connection_->output(), stream_id, close);
  connection_->Flush();
}

void ReplicaChannel::Drop() {
  connection_->Detach();
  streams_.TakeAll();
}

void ReplicaChannel::OnFrame(const FrameHeader& header, std::string_view payload) {
  auto self = shared_from_this();  // a listener may drop the last other reference
  if (absl::Status s = streams_.Deliver(header, payload); !s.ok()) connection_->Close(s);
}

void ReplicaChannel::OnClosed(const absl::Status& why) {
  auto self = shared_from_this();
  const bool delivered = connection_->ever_connected();
  for (auto& listener : streams_.TakeAll()) listener->OnChannelFailed(delivered, Message(why));
  if (on_closed_) on_closed_(this);
}

uint64_t StreamTable::Add(std::shared_ptr<StreamListener> listener) {
  MutexLock lock(&mu_);
  uint64_t id = next_stream_id_++;
  listeners_.emplace(id, std::move(listener));
  return id;
}

bool StreamTable::Remove(uint64_t stream_id) {
  MutexLock lock(&mu_);
  streaming_.erase(stream_id);
  return listeners_.erase(stream_id) > 0;
}

std::vector<std::shared_ptr<StreamListener>> StreamTable::TakeAll() {
  std::vector<std::shared_ptr<StreamListener>> out;
  MutexLock lock(&mu_);
  out.reserve(listeners_.size());
  for (auto& [id, listener] : listeners_) out.push_back(std::move(listener));
  listeners_.clear();
  streaming_.clear();
  return out;
}

bool StreamTable::Has(uint64_t stream_id) const {
  MutexLock lock(&mu_);
  return listeners_.count(stream_id) > 0;
}

size_t StreamTable::size() const {
  MutexLock lock(&mu_);
  return listeners_.size();
}

std::shared_ptr<StreamListener> StreamTable::Find(uint64_t stream_id, bool* streaming) const {
  MutexLock lock(&mu_);
  auto it = listeners_.find(stream_id);
  if (it == listeners_.end()) return nullptr;
  *streaming = streaming_.count(stream_id) > 0;
  return it->second;
}

std::shared_ptr<StreamListener> StreamTable::Take(uint64_t stream_id) {
  MutexLock lock(&mu_);
  auto it = listeners_.find(stream_id);
  if (it == listeners_.end()) return nullptr;
  std::shared_ptr<StreamListener> listener = std::move(it->second);
  listeners_.erase(it);
  streaming_.erase(stream_id);
  return listener;
}

absl::Status StreamTable::Deliver(const FrameHeader& header, std::string_view payload) {
  const uint64_t id = header.stream_id;
  bool streaming = false;
  absl::Status s;
  switch (header.kind) {
    case FrameKind::kResponse: {
      ResponseMessage m;
      if (s = DecodeResponse(payload, &m); !s.ok()) return s;
      if (!Find(id, &streaming)) return absl::OkStatus();  // answered already (a late frame after a failure)
      if (streaming) return absl::InvalidArgumentError("response frame for a stream that began");
      if (auto listener = Take(id)) listener->OnResponse(m);
      return absl::OkStatus();
    }
    case FrameKind::kResponseStart: {
      ResponseStart m;
      if (s = DecodeResponseStart(payload, &m); !s.ok()) return s;
      std::shared_ptr<StreamListener> listener;
      {
        MutexLock lock(&mu_);
        auto it = listeners_.find(id);
        if (it == listeners_.end()) return absl::OkStatus();
        if (!streaming_.insert(id).second)
          return absl::InvalidArgumentError("a second response_start frame for one stream");
        listener = it->second;
      }
      listener->OnStreamStart(m);
      return absl::OkStatus();
    }
    case FrameKind::kChunk: {
      std::string_view data;
      if (s = DecodeChunk(payload, &data); !s.ok()) return s;
      auto listener = Find(id, &streaming);
      if (!listener) return absl::OkStatus();
      if (!streaming) return absl::InvalidArgumentError("chunk frame before its response_start");
      listener->OnStreamChunk(data);
      return absl::OkStatus();
    }
    case FrameKind::kEnd: {
      StreamEnd m;
      if (s = DecodeEnd(payload, &m); !s.ok()) return s;
      if (!Find(id, &streaming)) return absl::OkStatus();
      if (!streaming) return absl::InvalidArgumentError("end frame before its response_start");
      if (auto listener = Take(id)) listener->OnStreamEnd(m);
      return absl::OkStatus();
    }
    case FrameKind::kCredit: {
      uint32_t bytes = 0;
      if (s = DecodeCredit(payload, &bytes); !s.ok()) return s;
      if (auto listener = Find(id, &streaming)) listener->OnCredit(bytes);
      return absl::OkStatus();
    }
    case FrameKind::kMessage:
    case FrameKind::kClose: {
      WsMessage message;
      WsClose close;
      s = header.kind == FrameKind::kMessage ? DecodeMessage(payload, &message) : DecodeClose(payload, &close);
      if (!s.ok()) return s;
      auto listener = Find(id, &streaming);
      if (!listener) return absl::OkStatus();
      if (!streaming)
        return absl::InvalidArgumentError(
            ferry::StrCat(FrameKindName(header.kind), " frame before its response_start"));
      if (header.kind == FrameKind::kMessage)
        listener->OnMessage(message);
      else
        listener->OnClose(close);
      return absl::OkStatus();
    }
    case FrameKind::kHelloAck: {
      HelloAck ack;
      if (s = DecodeHelloAck(payload, &ack); !s.ok()) return s;
      if (ack.version != kProtocolVersion)
        return absl::FailedPreconditionError(ferry::StrCat("replica speaks protocol version ", ack.version));
      return absl::OkStatus();
    }
    default:
      return absl::InvalidArgumentError(
          ferry::StrCat("unexpected ", FrameKindName(header.kind), " frame from a replica"));
  }
}

}  // namespace ferry::transport
