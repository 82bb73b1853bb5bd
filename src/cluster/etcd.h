// A client of etcd's v3 API through its JSON gateway (POST /v3/kv/range, /v3/kv/txn, /v3/lease/*, the
// streaming /v3/watch), the one shared state of a Ferry cluster: key-value reads and writes, transactions
// (a leader's fenced writes), leases (membership, leadership) and watches. Keys and values are bytes;
// the gateway's base64 is this file's business. Calls go to the first endpoint that answers, in the order
// given, so a client of a three-member etcd keeps working while one member is down.
// Thread-safe: no shared mutable state besides the index of the endpoint that answered last.
#pragma once

#include <absl/status/statusor.h>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/http_client.h"

namespace ferry::cluster {

// "etcd://HOST:PORT[,HOST:PORT...]" (also http://, or https:// for TLS): the endpoints of one etcd cluster.
// With `tls` (from --etcd-cacert, and --etcd-cert/--etcd-key for etcd's client-certificate auth) every
// call is HTTPS and etcd's certificate must name the host it is reached at; etcd:// then means https.
absl::StatusOr<std::vector<HttpEndpoint>> ParseEtcdUrl(std::string_view url,
                                                       std::shared_ptr<const TlsContext> tls = nullptr);

struct KeyValue {
  std::string key;
  std::string value;
  int64_t create_revision = 0;
  int64_t mod_revision = 0;
  int64_t version = 0;
  int64_t lease = 0;
};

struct RangeResult {
  int64_t revision = 0;  // the store's revision when read
  std::vector<KeyValue> kvs;
};

// One comparison of a transaction's guard.
struct Compare {
  enum class Target { kCreate, kMod, kVersion, kValue };
  enum class Result { kEqual, kNotEqual, kGreater, kLess };
  std::string key;
  Target target = Target::kCreate;
  Result result = Result::kEqual;
  int64_t number = 0;  // a revision or version
  std::string value;   // kValue

  // The key's create revision is `revision` (0: the key does not exist).
  static Compare CreateRevision(std::string key, int64_t revision);
  static Compare ModRevision(std::string key, int64_t revision);
  static Compare Value(std::string key, std::string value);
};

// One operation of a transaction's branch.
struct TxnOp {
  enum class Kind { kPut, kDelete, kRange };
  Kind kind = Kind::kRange;
  std::string key;
  std::string range_end;  // empty: just `key`
  std::string value;
  int64_t lease = 0;

  static TxnOp Put(std::string key, std::string value, int64_t lease = 0);
  static TxnOp Delete(std::string key);
  static TxnOp DeletePrefix(std::string prefix);
  static TxnOp Get(std::string key);
  static TxnOp GetPrefix(std::string prefix);
};

struct TxnResult {
  bool succeeded = false;
  int64_t revision = 0;
  std::vector<RangeResult> ranges;  // one per range operation of the branch that ran, in order
};

struct WatchEvent {
  enum class Type { kPut, kDelete };
  Type type = Type::kPut;
  KeyValue kv;  // a delete's has the key and its mod_revision only
};

// The smallest key after every key that starts with `prefix` (etcd's range_end for a prefix).
std::string PrefixEnd(std::string_view prefix);

// The gateway's answers, decoded (what etcd sends is bytes from the network: an error, never a crash).
absl::StatusOr<RangeResult> ParseRangeAnswer(std::string_view json);
absl::StatusOr<TxnResult> ParseTxnAnswer(std::string_view json);
// One line of a watch stream: its events and the revision they reached; `created` for the stream's first
// line. OutOfRange when the start revision was compacted, Unavailable when etcd cancelled the watch.
struct WatchBatch {
  int64_t revision = 0;
  bool created = false;
  std::vector<WatchEvent> events;
};
absl::StatusOr<WatchBatch> ParseWatchLine(std::string_view line);

struct EtcdOptions {
  std::vector<HttpEndpoint> endpoints;
  std::chrono::milliseconds timeout{3000};  // per call
};

class Etcd {
 public:
  explicit Etcd(EtcdOptions options);

  absl::StatusOr<RangeResult> Get(std::string_view key);
  absl::StatusOr<RangeResult> GetPrefix(std::string_view prefix);
  // The revision the write made.
  absl::StatusOr<int64_t> Put(std::string_view key, std::string_view value, int64_t lease = 0);
  // How many keys went.
  absl::StatusOr<int64_t> Delete(std::string_view key);
  absl::StatusOr<int64_t> DeletePrefix(std::string_view prefix);
  absl::StatusOr<TxnResult> Txn(const std::vector<Compare>& compare, const std::vector<TxnOp>& success,
                                const std::vector<TxnOp>& failure = {});

  // A lease of `ttl_s` seconds: its id.
  absl::StatusOr<int64_t> GrantLease(int64_t ttl_s);
  // Renews the lease; its TTL in seconds. NotFound once it has expired (its keys are gone).
  absl::StatusOr<int64_t> KeepAlive(int64_t lease);
  absl::Status Revoke(int64_t lease);

  // Streams the changes of the keys under `prefix` from `start_revision` (0: from now) to `on_events`
  // (with the revision they reached), until `stop` is set (checked at least every 200 ms) or the stream
  // breaks: then returns (OK when stopped; Unavailable when etcd went away; OutOfRange when
  // `start_revision` was compacted away, so the caller must read the state again).
  absl::Status Watch(std::string_view prefix, int64_t start_revision, const std::atomic<bool>& stop,
                     const std::function<void(int64_t revision, const std::vector<WatchEvent>&)>& on_events);

  const EtcdOptions& options() const { return options_; }

 private:
  // POSTs `body` (JSON) to `path` on the endpoints in turn; the answer's JSON text.
  absl::StatusOr<std::string> Call(std::string_view path, const std::string& body);

  const EtcdOptions options_;
  std::atomic<size_t> preferred_{0};  // the endpoint that answered last
};

}  // namespace ferry::cluster
