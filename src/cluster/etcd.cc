#include "cluster/etcd.h"

#include <absl/strings/escaping.h>
#include <nlohmann/json.hpp>

#include "common/common.h"

namespace ferry::cluster {
namespace {

using json = nlohmann::json;

// Fields of what the gateway answered, read without trusting their types (a wrong one reads as absent).
const json& Field(const json& j, const char* name) {
  static const json kNull;
  if (!j.is_object()) return kNull;
  auto it = j.find(name);
  return it == j.end() ? kNull : *it;
}
bool Bool(const json& j, const char* name) {
  const json& f = Field(j, name);
  return f.is_boolean() && f.get<bool>();
}
std::string Str(const json& j, const char* name) {
  const json& f = Field(j, name);
  return f.is_string() ? f.get<std::string>() : std::string();
}

std::string B64(std::string_view bytes) { return absl::Base64Escape(absl::string_view(bytes.data(), bytes.size())); }

std::string Unb64(const json& j) {
  std::string out;
  if (j.is_string()) absl::Base64Unescape(j.get<std::string>(), &out);
  return out;
}

// The gateway writes int64 fields as strings ("revision": "12") and leaves out zero values.
int64_t Int(const json& j, const char* field) {
  if (!j.is_object()) return 0;
  auto it = j.find(field);
  if (it == j.end()) return 0;
  if (it->is_string()) return std::strtoll(it->get<std::string>().c_str(), nullptr, 10);
  if (it->is_number()) return it->get<int64_t>();
  return 0;
}

KeyValue KvOf(const json& j) {
  KeyValue kv;
  if (!j.is_object()) return kv;
  kv.key = Unb64(Field(j, "key"));
  kv.value = Unb64(Field(j, "value"));
  kv.create_revision = Int(j, "create_revision");
  kv.mod_revision = Int(j, "mod_revision");
  kv.version = Int(j, "version");
  kv.lease = Int(j, "lease");
  return kv;
}

RangeResult RangeOf(const json& j) {
  RangeResult r;
  if (auto h = j.find("header"); h != j.end() && h->is_object()) r.revision = Int(*h, "revision");
  if (auto kvs = j.find("kvs"); kvs != j.end() && kvs->is_array())
    for (const json& kv : *kvs) r.kvs.push_back(KvOf(kv));
  return r;
}

json RangeRequest(std::string_view key, std::string_view range_end) {
  json r = {{"key", B64(key)}};
  if (!range_end.empty()) r["range_end"] = B64(range_end);
  return r;
}

json OpJson(const TxnOp& op) {
  switch (op.kind) {
    case TxnOp::Kind::kPut: {
      json put = {{"key", B64(op.key)}, {"value", B64(op.value)}};
      if (op.lease) put["lease"] = std::to_string(op.lease);
      return {{"request_put", put}};
    }
    case TxnOp::Kind::kDelete:
      return {{"request_delete_range", RangeRequest(op.key, op.range_end)}};
    case TxnOp::Kind::kRange:
      return {{"request_range", RangeRequest(op.key, op.range_end)}};
  }
  return json::object();
}

json CompareJson(const Compare& c) {
  static constexpr const char* kTargets[] = {"CREATE", "MOD", "VERSION", "VALUE"};
  static constexpr const char* kResults[] = {"EQUAL", "NOT_EQUAL", "GREATER", "LESS"};
  json j = {{"key", B64(c.key)},
            {"target", kTargets[static_cast<int>(c.target)]},
            {"result", kResults[static_cast<int>(c.result)]}};
  switch (c.target) {
    case Compare::Target::kCreate:
      j["create_revision"] = std::to_string(c.number);
      break;
    case Compare::Target::kMod:
      j["mod_revision"] = std::to_string(c.number);
      break;
    case Compare::Target::kVersion:
      j["version"] = std::to_string(c.number);
      break;
    case Compare::Target::kValue:
      j["value"] = B64(c.value);
      break;
  }
  return j;
}

// An error the gateway answered ({"error": ..., "code": N, "message": ...}), or OK.
absl::Status GatewayError(const json& j, std::string_view what) {
  if (!j.is_object() || j.contains("result")) return absl::OkStatus();
  const json& error = Field(j, "error");
  std::string message;
  int64_t code = 0;
  if (error.is_string()) {  // a unary call's error
    message = error.get<std::string>();
    code = Int(j, "code");
  } else if (error.is_object()) {  // a stream's ({"error": {"grpc_code": 5, "message": ...}})
    message = Str(error, "message");
    code = Int(error, "grpc_code");
  } else if (Field(j, "message").is_string()) {
    message = Str(j, "message");
    code = Int(j, "code");
  } else {
    return absl::OkStatus();
  }
  if (message.find("requested lease not found") != std::string::npos || code == 5)
    return absl::NotFoundError(StrCat(what, ": ", message));
  if (message.find("compacted") != std::string::npos || code == 11)
    return absl::OutOfRangeError(StrCat(what, ": ", message));
  return absl::UnavailableError(StrCat(what, ": ", message));
}

absl::StatusOr<json> ParseText(std::string_view text, std::string_view what) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return absl::UnavailableError(StrCat(what, ": etcd answered no JSON object"));
  if (absl::Status error = GatewayError(j, what); !error.ok()) return error;
  return j;
}

absl::StatusOr<json> Parse(const absl::StatusOr<std::string>& text, std::string_view what) {
  if (!text.ok()) return text.status();
  return ParseText(*text, what);
}

TxnResult TxnOf(const json& j) {
  TxnResult r;
  r.succeeded = Bool(j, "succeeded");
  r.revision = Int(Field(j, "header"), "revision");
  if (auto responses = j.find("responses"); responses != j.end() && responses->is_array())
    for (const json& one : *responses)
      if (auto range = one.find("response_range"); range != one.end() && range->is_object())
        r.ranges.push_back(RangeOf(*range));
  return r;
}

}  // namespace

absl::StatusOr<RangeResult> ParseRangeAnswer(std::string_view text) {
  absl::StatusOr<json> j = ParseText(text, "etcd range");
  if (!j.ok()) return j.status();
  return RangeOf(*j);
}

absl::StatusOr<TxnResult> ParseTxnAnswer(std::string_view text) {
  absl::StatusOr<json> j = ParseText(text, "etcd txn");
  if (!j.ok()) return j.status();
  return TxnOf(*j);
}

absl::StatusOr<WatchBatch> ParseWatchLine(std::string_view line) {
  absl::StatusOr<json> j = ParseText(line, "etcd watch");
  if (!j.ok()) return j.status();
  const json& result = Field(*j, "result");
  if (!result.is_object()) return absl::UnavailableError("etcd watch: a line without a result object");
  if (Int(result, "compact_revision") > 0)
    return absl::OutOfRangeError(StrCat("etcd watch: compacted up to revision ", Int(result, "compact_revision")));
  if (Bool(result, "canceled"))
    return absl::UnavailableError(StrCat("etcd cancelled the watch: ", Str(result, "cancel_reason")));
  WatchBatch batch;
  batch.created = Bool(result, "created");
  batch.revision = Int(Field(result, "header"), "revision");
  if (auto list = result.find("events"); list != result.end() && list->is_array()) {
    for (const json& e : *list) {
      if (!e.is_object()) continue;
      WatchEvent event;
      event.type = Str(e, "type") == "DELETE" ? WatchEvent::Type::kDelete : WatchEvent::Type::kPut;
      event.kv = KvOf(Field(e, "kv"));
      batch.events.push_back(std::move(event));
    }
  }
  return batch;
}

absl::StatusOr<std::vector<HttpEndpoint>> ParseEtcdUrl(std::string_view url, std::shared_ptr<const TlsContext> tls) {
  std::string_view rest = url;
  bool https = false, plain = false;
  auto scheme = [&](std::string_view& text) {
    for (std::string_view s : {"etcd://", "http://", "https://", "etcds://"}) {
      if (!text.starts_with(s)) continue;
      text.remove_prefix(s.size());
      (s == "https://" || s == "etcds://" ? https : plain) |= s != "etcd://";
      return;
    }
  };
  scheme(rest);
  std::vector<HttpEndpoint> endpoints;
  while (!rest.empty()) {
    std::string_view one = rest.substr(0, rest.find(','));
    rest.remove_prefix(std::min(rest.size(), one.size() + 1));
    scheme(one);
    absl::StatusOr<HttpEndpoint> e = ParseHttpEndpoint(one, /*scheme_optional=*/true);
    if (!e.ok()) return absl::InvalidArgumentError(StrCat("etcd endpoint '", one, "': ", Message(e.status())));
    if (one.find(':') == std::string_view::npos) e->port = "2379";
    e->path = "";
    e->tls = tls;
    endpoints.push_back(std::move(*e));
  }
  if (endpoints.empty())
    return absl::InvalidArgumentError(StrCat("no etcd endpoint in '", url, "' (etcd://HOST:PORT)"));
  if (https && !tls)
    return absl::InvalidArgumentError(
        "etcd over TLS (https://) needs the CA that signed etcd's certificate: --etcd-cacert FILE");
  if (plain && tls)
    return absl::InvalidArgumentError(
        "--etcd-cacert turns TLS on for etcd: write its endpoints as etcd:// or https://");
  return endpoints;
}

std::string PrefixEnd(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    if (static_cast<unsigned char>(end.back()) < 0xff) {
      end.back() = static_cast<char>(static_cast<unsigned char>(end.back()) + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // every key
}

Compare Compare::CreateRevision(std::string key, int64_t revision) {
  return {std::move(key), Target::kCreate, Result::kEqual, revision, {}};
}
Compare Compare::ModRevision(std::string key, int64_t revision) {
  return {std::move(key), Target::kMod, Result::kEqual, revision, {}};
}
Compare Compare::Value(std::string key, std::string value) {
  return {std::move(key), Target::kValue, Result::kEqual, 0, std::move(value)};
}

TxnOp TxnOp::Put(std::string key, std::string value, int64_t lease) {
  return {Kind::kPut, std::move(key), {}, std::move(value), lease};
}
TxnOp TxnOp::Delete(std::string key) { return {Kind::kDelete, std::move(key), {}, {}, 0}; }
TxnOp TxnOp::DeletePrefix(std::string prefix) {
  std::string end = PrefixEnd(prefix);
  return {Kind::kDelete, std::move(prefix), std::move(end), {}, 0};
}
TxnOp TxnOp::Get(std::string key) { return {Kind::kRange, std::move(key), {}, {}, 0}; }
TxnOp TxnOp::GetPrefix(std::string prefix) {
  std::string end = PrefixEnd(prefix);
  return {Kind::kRange, std::move(prefix), std::move(end), {}, 0};
}

Etcd::Etcd(EtcdOptions options) : options_(std::move(options)) {}

absl::StatusOr<std::string> Etcd::Call(std::string_view path, const std::string& body) {
  const size_t n = options_.endpoints.size();
  if (n == 0) return absl::FailedPreconditionError("no etcd endpoint configured");
  const size_t first = preferred_.load(std::memory_order_relaxed) % n;
  absl::Status last;
  for (size_t i = 0; i < n; ++i) {
    const size_t at = (first + i) % n;
    HttpCall call;
    call.method = "POST";
    call.path = std::string(path);
    call.body = body;
    call.content_type = "application/json";
    call.timeout = options_.timeout;
    absl::StatusOr<HttpResponse> r = SendHttp(options_.endpoints[at], call);
    if (!r.ok()) {
      last = absl::UnavailableError(
          StrCat("etcd at ", options_.endpoints[at].host, ":", options_.endpoints[at].port, ": ", Message(r.status())));
      continue;
    }
    preferred_.store(at, std::memory_order_relaxed);
    if (r->status >= 500 && r->status != 503 && r->body.find("\"error\"") == std::string::npos) {
      last = absl::UnavailableError(StrCat("etcd answered HTTP ", r->status, " to ", path));
      continue;
    }
    return std::move(r->body);
  }
  return last;
}

absl::StatusOr<RangeResult> Etcd::Get(std::string_view key) {
  absl::StatusOr<json> j = Parse(Call("/v3/kv/range", RangeRequest(key, "").dump()), "etcd range");
  if (!j.ok()) return j.status();
  return RangeOf(*j);
}

absl::StatusOr<RangeResult> Etcd::GetPrefix(std::string_view prefix) {
  absl::StatusOr<json> j = Parse(Call("/v3/kv/range", RangeRequest(prefix, PrefixEnd(prefix)).dump()), "etcd range");
  if (!j.ok()) return j.status();
  return RangeOf(*j);
}

absl::StatusOr<int64_t> Etcd::Put(std::string_view key, std::string_view value, int64_t lease) {
  json body = {{"key", B64(key)}, {"value", B64(value)}};
  if (lease) body["lease"] = std::to_string(lease);
  absl::StatusOr<json> j = Parse(Call("/v3/kv/put", body.dump()), "etcd put");
  if (!j.ok()) return j.status();
  return Int(Field(*j, "header"), "revision");
}

absl::StatusOr<int64_t> Etcd::Delete(std::string_view key) {
  absl::StatusOr<json> j = Parse(Call("/v3/kv/deleterange", RangeRequest(key, "").dump()), "etcd delete");
  if (!j.ok()) return j.status();
  return Int(*j, "deleted");
}

absl::StatusOr<int64_t> Etcd::DeletePrefix(std::string_view prefix) {
  absl::StatusOr<json> j =
      Parse(Call("/v3/kv/deleterange", RangeRequest(prefix, PrefixEnd(prefix)).dump()), "etcd delete");
  if (!j.ok()) return j.status();
  return Int(*j, "deleted");
}

absl::StatusOr<TxnResult> Etcd::Txn(const std::vector<Compare>& compare, const std::vector<TxnOp>& success,
                                    const std::vector<TxnOp>& failure) {
  json body = {{"compare", json::array()}, {"success", json::array()}, {"failure", json::array()}};
  for (const Compare& c : compare) body["compare"].push_back(CompareJson(c));
  for (const TxnOp& op : success) body["success"].push_back(OpJson(op));
  for (const TxnOp& op : failure) body["failure"].push_back(OpJson(op));
  absl::StatusOr<json> j = Parse(Call("/v3/kv/txn", body.dump()), "etcd txn");
  if (!j.ok()) return j.status();
  return TxnOf(*j);
}

absl::StatusOr<int64_t> Etcd::GrantLease(int64_t ttl_s) {
  absl::StatusOr<json> j = Parse(Call("/v3/lease/grant", json{{"TTL", std::to_string(ttl_s)}}.dump()), "etcd lease");
  if (!j.ok()) return j.status();
  const int64_t id = Int(*j, "ID");
  if (id == 0) return absl::UnavailableError(StrCat("etcd granted no lease: ", Str(*j, "error")));
  return id;
}

absl::StatusOr<int64_t> Etcd::KeepAlive(int64_t lease) {
  // The gateway's keepalive is a stream; one request in, one answer out, then the stream ends.
  absl::StatusOr<json> j =
      Parse(Call("/v3/lease/keepalive", json{{"ID", std::to_string(lease)}}.dump()), "etcd keepalive");
  if (!j.ok()) return j.status();
  const int64_t ttl = Int(Field(*j, "result"), "TTL");
  if (ttl <= 0) return absl::NotFoundError(StrCat("lease ", lease, " has expired"));
  return ttl;
}

absl::Status Etcd::Revoke(int64_t lease) {
  absl::StatusOr<json> j = Parse(Call("/v3/lease/revoke", json{{"ID", std::to_string(lease)}}.dump()), "etcd revoke");
  return j.ok() || absl::IsNotFound(j.status()) ? absl::OkStatus() : j.status();
}

absl::Status Etcd::Watch(std::string_view prefix, int64_t start_revision, const std::atomic<bool>& stop,
                         const std::function<void(int64_t, const std::vector<WatchEvent>&)>& on_events) {
  json create = RangeRequest(prefix, PrefixEnd(prefix));
  if (start_revision > 0) create["start_revision"] = std::to_string(start_revision);
  const std::string body = json{{"create_request", create}}.dump();
  const size_t n = options_.endpoints.size();
  if (n == 0) return absl::FailedPreconditionError("no etcd endpoint configured");
  const size_t at = preferred_.load(std::memory_order_relaxed) % n;
  absl::Status outcome;
  std::string line;  // the gateway writes one JSON object per line
  HttpCall call;
  call.method = "POST";
  call.path = "/v3/watch";
  call.body = body;
  call.content_type = "application/json";
  call.timeout = options_.timeout;
  call.stop = &stop;
  call.on_body = [&](std::string_view piece) {
    line.append(piece);
    for (size_t eol; (eol = line.find('\n')) != std::string::npos; line.erase(0, eol + 1)) {
      if (line.find_first_not_of(" \r", 0) >= eol) continue;  // an empty line
      absl::StatusOr<WatchBatch> batch = ParseWatchLine(std::string_view(line).substr(0, eol));
      if (!batch.ok()) {
        outcome = batch.status();
        return false;
      }
      if (!batch->events.empty() || batch->created) on_events(batch->revision, batch->events);
    }
    return !stop.load();
  };
  absl::StatusOr<HttpResponse> r = SendHttp(options_.endpoints[at], call);
  if (!r.ok()) {
    preferred_.store((at + 1) % n, std::memory_order_relaxed);  // the next call tries another member first
    return absl::UnavailableError(StrCat("etcd watch: ", Message(r.status())));
  }
  if (!outcome.ok()) return outcome;
  if (stop.load()) return absl::OkStatus();
  return absl::UnavailableError("etcd watch: the stream ended");
}

}  // namespace ferry::cluster
