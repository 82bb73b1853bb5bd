#include "common/http_client.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>

#include "common/common.h"
#include "common/tls.h"
#include "common/unique_fd.h"

namespace ferry {

namespace {

using Clock = std::chrono::steady_clock;

// Waits until `fd` is ready for `events` or `deadline` passes.
bool WaitFor(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, events, 0};
    int n = ::poll(&p, 1, static_cast<int>(left));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return false;
  }
}

bool IsDigits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}

// A case-insensitive search for header `name` in a header block; the value, trimmed, or empty.
std::string_view HeaderValue(std::string_view head, std::string_view name) {
  for (size_t pos = head.find("\r\n"); pos != std::string_view::npos;) {
    size_t start = pos + 2, end = head.find("\r\n", start);
    std::string_view line = head.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start);
    size_t colon = line.find(':');
    if (colon == name.size() && strncasecmp(line.data(), name.data(), name.size()) == 0) {
      std::string_view v = line.substr(colon + 1);
      while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
      while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
      return v;
    }
    pos = end;
  }
  return {};
}

// Parses "HTTP/1.1 200 OK": the status, or 0 when it is not an HTTP status line.
int StatusOf(std::string_view answer) {
  std::string_view line = answer.substr(0, answer.find("\r\n"));
  size_t space = line.find(' ');
  if (line.rfind("HTTP/", 0) != 0 || space == std::string_view::npos || line.size() < space + 4 ||
      !IsDigits(line.substr(space + 1, 3)))
    return 0;
  return std::stoi(std::string(line.substr(space + 1, 3)));
}

// The connection's bytes, in the clear or through TLS. Send and Recv return what moved (> 0), 0 when the
// peer closed, kWait when the socket must be ready for `*events` first, kError otherwise (error()).
class Wire {
 public:
  static constexpr ssize_t kWait = -1;
  static constexpr ssize_t kError = -2;
  Wire(int fd, TlsSession* tls) : fd_(fd), tls_(tls) {}
  int fd() const { return fd_; }
  ssize_t Send(const char* data, size_t size, short* events) {
    if (tls_) return Tls(tls_->Write(data, size, &want_), events);
    ssize_t n = ::send(fd_, data, size, MSG_NOSIGNAL);
    return Plain(n, POLLOUT, events);
  }
  ssize_t Recv(char* buffer, size_t size, short* events) {
    if (tls_) return Tls(tls_->Read(buffer, size, &want_), events);
    ssize_t n = ::recv(fd_, buffer, size, 0);
    return Plain(n, POLLIN, events);
  }
  // Bytes that arrived and wait inside TLS (the socket will not say so).
  bool Buffered() const { return tls_ && tls_->HasBuffered(); }
  std::string error() const { return tls_ ? tls_->error() : std::strerror(errno_); }

 private:
  ssize_t Plain(ssize_t n, short wait, short* events) {
    if (n >= 0) return n;
    errno_ = errno;
    if (errno_ == EAGAIN || errno_ == EWOULDBLOCK || errno_ == EINTR) {
      *events = wait;
      return kWait;
    }
    return kError;
  }
  ssize_t Tls(ssize_t n, short* events) {
    if (n >= 0) return n;
    if (want_ == TlsSession::Want::kNothing) return kError;
    *events = want_ == TlsSession::Want::kReadable ? POLLIN : POLLOUT;
    return kWait;
  }
  const int fd_;
  TlsSession* const tls_;
  TlsSession::Want want_ = TlsSession::Want::kNothing;
  int errno_ = 0;
};

// The rest of a streamed answer whose head is in `answer` (up to `head_end`): its body pieces to
// call.on_body as they arrive, until it ends, on_body says stop, or *call.stop is set.
absl::StatusOr<HttpResponse> StreamBody(Wire& wire, const std::string& where, std::string& answer, size_t head_end,
                                        const HttpCall& call) {
  HttpResponse response;
  response.status = StatusOf(answer);
  if (response.status == 0) return absl::UnavailableError(StrCat(where, ": not an HTTP answer"));
  std::string_view head = std::string_view(answer).substr(0, head_end + 2);
  const bool chunked = HeaderValue(head, "transfer-encoding") == "chunked";
  std::string_view length_text = HeaderValue(head, "content-length");
  uint64_t length_left = !chunked && IsDigits(length_text) ? std::stoull(std::string(length_text)) : UINT64_MAX;
  ChunkedDecoder dechunker;
  bool stopped = false;
  auto deliver = [&](std::string_view bytes) {
    if (chunked) {
      ChunkedDecoder::State state = dechunker.Feed(bytes, call.on_body);
      if (state == ChunkedDecoder::State::kBad) return absl::UnavailableError(StrCat(where, ": a malformed chunk"));
      stopped = state != ChunkedDecoder::State::kMore;
      return absl::OkStatus();
    }
    bytes = bytes.substr(0, std::min<uint64_t>(bytes.size(), length_left));
    if (length_left != UINT64_MAX) length_left -= bytes.size();
    stopped = (!bytes.empty() && !call.on_body(bytes)) || length_left == 0;
    return absl::OkStatus();
  };
  if (absl::Status s = deliver(std::string_view(answer).substr(head_end + 4)); !s.ok()) return s;
  short events = POLLIN;
  while (!stopped && !(call.stop && call.stop->load())) {
    if (!wire.Buffered()) {
      pollfd p{wire.fd(), events, 0};
      int n = ::poll(&p, 1, 200);
      if (n < 0 && errno != EINTR) return absl::UnavailableError(StrCat(where, ": ", std::strerror(errno)));
      if (n <= 0) continue;
    }
    char buf[16384];
    ssize_t got = wire.Recv(buf, sizeof(buf), &events);
    if (got > 0) {
      events = POLLIN;
      if (absl::Status s = deliver(std::string_view(buf, static_cast<size_t>(got))); !s.ok()) return s;
    } else if (got == 0) {
      if (chunked || length_left != UINT64_MAX)
        return absl::UnavailableError(StrCat(where, ": the stream was cut off"));
      break;
    } else if (got == Wire::kError) {
      return absl::UnavailableError(StrCat(where, ": ", wire.error()));
    }
  }
  return response;
}

}  // namespace

ChunkedDecoder::State ChunkedDecoder::Feed(std::string_view bytes, const std::function<bool(std::string_view)>& out) {
  pending_.append(bytes);
  std::string_view in = pending_;
  State state = State::kMore;
  for (;;) {
    if (left_ > 0) {  // inside a chunk's data
      size_t n = std::min(left_, in.size());
      if (n == 0) break;
      if (!out(in.substr(0, n))) {
        state = State::kStopped;
        in.remove_prefix(n);
        left_ -= n;
        break;
      }
      in.remove_prefix(n);
      left_ -= n;
      if (left_ == 0) crlf_ = true;
      continue;
    }
    if (crlf_) {  // the CRLF after a chunk's data
      if (in.size() < 2) break;
      if (in.substr(0, 2) != "\r\n") return State::kBad;
      in.remove_prefix(2);
      crlf_ = false;
    }
    size_t eol = in.find("\r\n");
    if (eol == std::string_view::npos) {
      if (in.size() > 1024) return State::kBad;  // no chunk-size line is that long
      break;
    }
    std::string_view hex = in.substr(0, std::min(eol, in.find(';')));
    if (hex.empty() || hex.size() > 15) return State::kBad;
    size_t size = 0;
    for (char c : hex) {
      int d = c >= '0' && c <= '9'   ? c - '0'
              : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                     : -1;
      if (d < 0) return State::kBad;
      size = size * 16 + static_cast<size_t>(d);
    }
    in.remove_prefix(eol + 2);
    if (size == 0) return State::kDone;
    left_ = size;
  }
  pending_.erase(0, pending_.size() - in.size());
  return state;
}

absl::StatusOr<HttpEndpoint> ParseHttpEndpoint(std::string_view url, bool scheme_optional) {
  constexpr std::string_view kScheme = "http://";
  if (url.rfind("https://", 0) == 0)
    return absl::InvalidArgumentError("https is not supported; use http:// (e.g. a local agent or a tunnel)");
  if (url.rfind(kScheme, 0) == 0) {
    url.remove_prefix(kScheme.size());
  } else if (!scheme_optional || url.find("://") != std::string_view::npos) {
    return absl::InvalidArgumentError("expected an http:// URL");
  }
  size_t slash = url.find('/');
  std::string_view authority = url.substr(0, slash);
  HttpEndpoint e;
  if (slash != std::string_view::npos) e.path = std::string(url.substr(slash));
  if (authority.empty()) return absl::InvalidArgumentError("the URL has no host");
  bool has_port = false;
  if (authority.front() == '[') {  // [IPv6]:port
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return absl::InvalidArgumentError("unterminated [IPv6 address]");
    e.host = std::string(authority.substr(1, close - 1));
    authority.remove_prefix(close + 1);
    if (!authority.empty() && authority.front() != ':') return absl::InvalidArgumentError("bad host:port");
    if (!authority.empty()) {
      e.port = std::string(authority.substr(1));
      has_port = true;
    }
  } else {
    size_t colon = authority.rfind(':');
    e.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) {
      e.port = std::string(authority.substr(colon + 1));
      has_port = true;
    }
  }
  if (e.host.empty()) return absl::InvalidArgumentError("the URL has no host");
  if (has_port && (!IsDigits(e.port) || e.port.size() > 5 || std::stoi(e.port) == 0 || std::stoi(e.port) > 65535))
    return absl::InvalidArgumentError(StrCat("bad port '", e.port, "'"));
  return e;
}

absl::StatusOr<HttpResponse> SendHttp(const HttpEndpoint& endpoint, const HttpCall& call) {
  const auto deadline = Clock::now() + call.timeout;
  const std::string where = StrCat(endpoint.host, ":", endpoint.port, call.path);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (int rc = getaddrinfo(endpoint.host.c_str(), endpoint.port.c_str(), &hints, &found); rc != 0)
    return absl::UnavailableError(StrCat(where, ": ", gai_strerror(rc)));
  UniqueFd fd;
  std::string why = "no address";
  for (addrinfo* a = found; a && !fd; a = a->ai_next) {
    fd.reset(::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol));
    if (!fd) continue;
    if (::connect(fd.get(), a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
      why = std::strerror(errno);
      fd.reset();
      continue;
    }
    int err = 0;
    socklen_t len = sizeof(err);
    if (!WaitFor(fd.get(), POLLOUT, deadline) || getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0 ||
        err != 0) {
      why = err ? std::strerror(err) : "connect timed out";
      fd.reset();
    }
  }
  freeaddrinfo(found);
  if (!fd) return absl::UnavailableError(StrCat(where, ": ", why));
  std::unique_ptr<TlsSession> tls;
  if (endpoint.tls) {
    absl::StatusOr<std::unique_ptr<TlsSession>> session = TlsSession::Client(*endpoint.tls, fd.get(), endpoint.host);
    if (!session.ok()) return absl::UnavailableError(StrCat(where, ": ", Message(session.status())));
    tls = std::move(*session);
    if (absl::Status shook = tls->HandshakeUntil(deadline); !shook.ok())
      return absl::UnavailableError(StrCat(where, ": ", Message(shook)));
  }
  Wire wire(fd.get(), tls.get());

  std::string request = StrCat(call.method, " ", call.path, " HTTP/1.1\r\nHost: ", endpoint.host, ":", endpoint.port,
                               "\r\nConnection: close\r\nUser-Agent: ferry/", kVersion, "\r\n");
  if (!call.body.empty() || call.method == "POST" || call.method == "PUT") {
    if (!call.content_type.empty()) StrAppend(&request, "Content-Type: ", call.content_type, "\r\n");
    StrAppend(&request, "Content-Length: ", call.body.size(), "\r\n");
  }
  for (const auto& [name, value] : call.headers) StrAppend(&request, name, ": ", value, "\r\n");
  request.append("\r\n");
  request.append(call.body);
  for (std::string_view left = request; !left.empty();) {
    short events = 0;
    ssize_t n = wire.Send(left.data(), left.size(), &events);
    if (n > 0) {
      left.remove_prefix(static_cast<size_t>(n));
    } else if (n == Wire::kWait) {
      if (!WaitFor(fd.get(), events, deadline)) return absl::DeadlineExceededError(StrCat(where, ": send timed out"));
    } else {
      return absl::UnavailableError(StrCat(where, ": ", n == 0 ? "the peer closed the connection" : wire.error()));
    }
  }

  // Read until the answer is complete: the status line (status_only), the whole body, or the close. A
  // chunked body is decoded as it arrives, each byte once (etcd's reads of 20,000 keys are megabytes).
  std::string answer;
  HttpResponse response;
  size_t head_end = std::string::npos;
  std::optional<ChunkedDecoder> chunks;  // the head said chunked: the body goes through it, not into answer
  ChunkedDecoder::State chunk_state = ChunkedDecoder::State::kMore;
  auto feed = [&](std::string_view bytes) {
    chunk_state = chunks->Feed(bytes, [&](std::string_view piece) {
      response.body.append(piece);
      return true;
    });
  };
  for (;;) {
    if (head_end == std::string::npos) {
      head_end = answer.find("\r\n\r\n");
      if (head_end != std::string::npos && !call.status_only && !call.on_body &&
          HeaderValue(std::string_view(answer).substr(0, head_end + 2), "transfer-encoding") == "chunked") {
        chunks.emplace();
        feed(std::string_view(answer).substr(head_end + 4));
        answer.resize(head_end + 4);
      }
    }
    if (call.status_only && answer.find("\r\n") != std::string::npos) break;
    if (call.on_body && head_end != std::string::npos) return StreamBody(wire, where, answer, head_end, call);
    if (chunks && chunk_state != ChunkedDecoder::State::kMore) break;
    if (head_end != std::string::npos && !chunks) {
      std::string_view length = HeaderValue(std::string_view(answer).substr(0, head_end + 2), "content-length");
      if (!length.empty() && IsDigits(length) && answer.size() - head_end - 4 >= std::stoull(std::string(length)))
        break;
    }
    char buf[16384];
    short events = 0;
    ssize_t n = wire.Recv(buf, sizeof(buf), &events);
    if (n > 0 && chunks) {
      feed(std::string_view(buf, static_cast<size_t>(n)));
    } else if (n > 0) {
      answer.append(buf, static_cast<size_t>(n));
    } else if (n == 0) {
      break;  // closed: the answer ends here
    } else if (n == Wire::kWait) {
      if (!WaitFor(fd.get(), events, deadline))
        return absl::DeadlineExceededError(StrCat(where, ": no answer in time"));
    } else {
      return absl::UnavailableError(StrCat(where, ": ", wire.error()));
    }
  }
  response.status = StatusOf(answer);
  if (response.status == 0)
    return absl::UnavailableError(answer.empty() ? StrCat(where, ": closed without an answer")
                                                 : StrCat(where, ": not an HTTP answer"));
  if (call.status_only) return response;
  if (head_end == std::string::npos) return absl::UnavailableError(StrCat(where, ": the answer was cut off"));
  std::string_view head = std::string_view(answer).substr(0, head_end + 2);
  std::string_view rest = std::string_view(answer).substr(head_end + 4);
  if (chunks) {
    if (chunk_state == ChunkedDecoder::State::kBad) return absl::UnavailableError(StrCat(where, ": a malformed chunk"));
    if (chunk_state != ChunkedDecoder::State::kDone)
      return absl::UnavailableError(StrCat(where, ": the answer was cut off"));
  } else if (std::string_view length = HeaderValue(head, "content-length"); !length.empty()) {
    if (!IsDigits(length) || rest.size() < std::stoull(std::string(length)))
      return absl::UnavailableError(StrCat(where, ": the answer was cut off"));
    response.body = std::string(rest.substr(0, std::stoull(std::string(length))));
  } else {
    response.body = std::string(rest);
  }
  return response;
}

}  // namespace ferry
