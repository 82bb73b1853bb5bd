// The proxy's WebSocket reading of untrusted bytes (RFC 6455 frames after a handshake), with the settings
// its sessions use: the server role (client frames must be masked), the message size limit, UTF-8
// checking of text. Each input is a client's bytes after a valid upgrade request; the session reads
// messages until the stream ends or fails. A failure must be one of the errors a session maps to a close
// code; nothing may crash, read out of bounds or leak.
#include <boost/beast/_experimental/test/stream.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/websocket.hpp>
#include <cstddef>
#include <cstdint>
#include <string>

namespace beast = boost::beast;
namespace websocket = beast::websocket;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string kUpgrade =
      "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
  boost::asio::io_context io;
  websocket::stream<beast::test::stream> ws(io);
  beast::test::stream client(io);  // where the session's writes (101, pongs, closes) go
  ws.next_layer().connect(client);
  ws.read_message_max(4096);  // small, so the fuzzer reaches the limit
  ws.next_layer().append(kUpgrade);
  ws.next_layer().append(beast::string_view(reinterpret_cast<const char*>(data), size));
  client.close();  // the input's end is the connection's
  boost::system::error_code ec;
  ws.accept(ec);
  if (ec) __builtin_trap();  // the handshake is valid; only what follows is fuzzed
  beast::flat_buffer buffer;
  for (int i = 0; i < 1024; ++i) {
    ws.read(buffer, ec);
    if (ec) break;
    if (buffer.size() > 4096) __builtin_trap();  // over the limit must have failed
    if (ws.got_text()) {
      // Text that passed is valid UTF-8: no byte 0xC0, 0xC1 or above 0xF4.
      auto bytes = static_cast<const unsigned char*>(buffer.data().data());
      for (size_t j = 0; j < buffer.size(); ++j)
        if (bytes[j] == 0xC0 || bytes[j] == 0xC1 || bytes[j] > 0xF4) __builtin_trap();
    }
    buffer.consume(buffer.size());
  }
  return 0;
}
