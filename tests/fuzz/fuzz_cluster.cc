// Feeds arbitrary bytes to what cluster mode reads from the network: etcd's JSON gateway answers (range,
// txn, one watch-stream line), a chunked body decoded piece by piece (the watch stream's transport), and the
// addresses a node is given (etcd URLs, frame addresses), and the documents nodes leave each other in etcd
// (assignments, replica reports). Errors are fine, crashes are not; a chunked
// body decodes to no more bytes than it had.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "cluster/cluster.h"
#include "cluster/cluster_launcher.h"
#include "cluster/etcd.h"
#include "common/http_client.h"
#include "transport/address.h"

using namespace ferry;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  (void)cluster::ParseRangeAnswer(bytes);
  (void)cluster::ParseTxnAnswer(bytes);
  (void)cluster::ParseWatchLine(bytes);
  (void)cluster::ParseEtcdUrl(bytes);
  (void)transport::ParseFrameAddress(bytes);
  const std::string text(bytes);
  (void)cluster::ParseAssignment("n1", text);
  (void)cluster::ParseReplicaReport(text);
  (void)cluster::NodeFromRecord(text);
  // The same bytes as a chunked body, in pieces of every size from the first byte's value.
  ChunkedDecoder decoder;
  size_t decoded = 0;
  const size_t step = size ? 1 + static_cast<size_t>(data[0]) % 17 : 1;
  for (size_t at = 0; at < size; at += step) {
    auto state = decoder.Feed(bytes.substr(at, step), [&](std::string_view piece) {
      decoded += piece.size();
      return true;
    });
    if (state != ChunkedDecoder::State::kMore) break;
  }
  if (decoded > size) __builtin_trap();
  return 0;
}
