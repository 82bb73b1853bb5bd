// Feeds arbitrary bytes to the frame reader and every payload decoder: errors are fine, crashes and
// out-of-bounds reads are not. A decoded request is re-encoded and must decode to the same fields.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "transport/frame.h"

using namespace ferry::transport;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  FrameReader reader;
  // Split the input in two reads at a position taken from the first byte.
  size_t cut = size ? data[0] % (size + 1) : 0;
  reader.Append(bytes.substr(0, cut));
  reader.Append(bytes.substr(cut));
  FrameHeader header;
  std::string_view payload;
  for (int i = 0; i < 64; ++i) {
    auto got = reader.Next(&header, &payload);
    if (!got.ok() || !*got) break;
    RequestMessage request;
    if (DecodeRequest(payload, &request).ok()) {
      std::string again;
      AppendRequest(again, header.stream_id, request);
      RequestMessage back;
      if (!DecodeRequest(std::string_view(again).substr(kFrameHeaderSize), &back).ok() || back.path != request.path ||
          back.body != request.body || back.headers != request.headers || back.body_mode != request.body_mode)
        __builtin_trap();
    }
    ResponseMessage response;
    (void)DecodeResponse(payload, &response);
    Hello hello;
    (void)DecodeHello(payload, &hello);
    HelloAck ack;
    (void)DecodeHelloAck(payload, &ack);
    StatusReply status;
    (void)DecodeStatusReply(payload, &status);
    StatsReply stats;
    (void)DecodeStatsReply(payload, &stats);
    std::string_view config;
    (void)DecodeReconfigure(payload, &config);
    ResponseStart start;
    (void)DecodeResponseStart(payload, &start);
    std::string_view data;
    (void)DecodeChunk(payload, &data);
    StreamEnd end;
    (void)DecodeEnd(payload, &end);
    uint32_t credit;
    (void)DecodeCredit(payload, &credit);
    (void)DecodeText(payload, &data);
    WsMessage message;
    if (DecodeMessage(payload, &message).ok() && message.data.size() > payload.size()) __builtin_trap();
    WsClose close;
    if (DecodeClose(payload, &close).ok() && (close.code < 1000 || close.code > 4999)) __builtin_trap();
  }
  return 0;
}
