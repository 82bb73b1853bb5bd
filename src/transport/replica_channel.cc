#include "transport/replica_channel.h"

#include "common/common.h"

namespace ferry::transport {

ReplicaChannel::ReplicaChannel(const boost::asio::any_io_executor& executor, std::string socket_path,
                               std::string client, std::function<void(ReplicaChannel*)> on_closed)
    : client_(std::move(client)),
      on_closed_(std::move(on_closed)),
      connection_(std::make_shared<FrameConnection>(executor, std::move(socket_path), this)) {}

void ReplicaChannel::Start() {
  AppendHello(connection_->output(), 0, {kProtocolVersion, client_});
  connection_->Start();
}

uint64_t ReplicaChannel::Send(std::shared_ptr<StreamListener> listener, const RequestMessage& request) {
  uint64_t id = next_stream_id_++;
  listeners_.emplace(id, std::move(listener));
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
  listeners_.clear();
  streaming_.clear();
}

StreamListener* ReplicaChannel::Find(uint64_t stream_id) {
  auto it = listeners_.find(stream_id);
  return it == listeners_.end() ? nullptr : it->second.get();
}

std::shared_ptr<StreamListener> ReplicaChannel::Take(uint64_t stream_id) {
  auto it = listeners_.find(stream_id);
  if (it == listeners_.end()) return nullptr;
  std::shared_ptr<StreamListener> listener = std::move(it->second);
  listeners_.erase(it);
  streaming_.erase(stream_id);
  return listener;
}

void ReplicaChannel::OnFrame(const FrameHeader& header, std::string_view payload) {
  auto self = shared_from_this();  // a listener may drop the last other reference
  absl::Status s;
  switch (header.kind) {
    case FrameKind::kResponse: {
      ResponseMessage m;
      if (s = DecodeResponse(payload, &m); !s.ok()) break;
      if (streaming_.count(header.stream_id)) {
        s = absl::InvalidArgumentError("response frame for a stream that began");
        break;
      }
      if (auto listener = Take(header.stream_id)) listener->OnResponse(m);
      return;
    }
    case FrameKind::kResponseStart: {
      ResponseStart m;
      if (s = DecodeResponseStart(payload, &m); !s.ok()) break;
      StreamListener* listener = Find(header.stream_id);
      if (!listener) return;  // answered already (a late frame after a failure is ignored)
      if (!streaming_.insert(header.stream_id).second) {
        s = absl::InvalidArgumentError("a second response_start frame for one stream");
        break;
      }
      listener->OnStreamStart(m);
      return;
    }
    case FrameKind::kChunk: {
      std::string_view data;
      if (s = DecodeChunk(payload, &data); !s.ok()) break;
      StreamListener* listener = Find(header.stream_id);
      if (!listener) return;
      if (!streaming_.count(header.stream_id)) {
        s = absl::InvalidArgumentError("chunk frame before its response_start");
        break;
      }
      listener->OnStreamChunk(data);
      return;
    }
    case FrameKind::kEnd: {
      StreamEnd m;
      if (s = DecodeEnd(payload, &m); !s.ok()) break;
      if (Find(header.stream_id) && !streaming_.count(header.stream_id)) {
        s = absl::InvalidArgumentError("end frame before its response_start");
        break;
      }
      if (auto listener = Take(header.stream_id)) listener->OnStreamEnd(m);
      return;
    }
    case FrameKind::kCredit: {
      uint32_t bytes = 0;
      if (s = DecodeCredit(payload, &bytes); !s.ok()) break;
      if (StreamListener* listener = Find(header.stream_id)) listener->OnCredit(bytes);
      return;
    }
    case FrameKind::kMessage:
    case FrameKind::kClose: {
      WsMessage message;
      WsClose close;
      s = header.kind == FrameKind::kMessage ? DecodeMessage(payload, &message) : DecodeClose(payload, &close);
      if (!s.ok()) break;
      StreamListener* listener = Find(header.stream_id);
      if (!listener) return;
      if (!streaming_.count(header.stream_id)) {
        s = absl::InvalidArgumentError(ferry::StrCat(FrameKindName(header.kind), " frame before its response_start"));
        break;
      }
      if (header.kind == FrameKind::kMessage)
        listener->OnMessage(message);
      else
        listener->OnClose(close);
      return;
    }
    case FrameKind::kHelloAck: {
      HelloAck ack;
      s = DecodeHelloAck(payload, &ack);
      if (s.ok() && ack.version != kProtocolVersion)
        s = absl::FailedPreconditionError(ferry::StrCat("replica speaks protocol version ", ack.version));
      if (s.ok()) return;
      break;
    }
    default:
      s = absl::InvalidArgumentError(ferry::StrCat("unexpected ", FrameKindName(header.kind), " frame from a replica"));
  }
  connection_->Close(s);
}

void ReplicaChannel::OnClosed(const absl::Status& why) {
  auto self = shared_from_this();
  auto listeners = std::move(listeners_);
  listeners_.clear();
  streaming_.clear();
  const bool delivered = connection_->ever_connected();
  for (auto& [id, listener] : listeners) listener->OnChannelFailed(delivered, Message(why));
  if (on_closed_) on_closed_(this);
}

}  // namespace ferry::transport
