#include "common/common.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <random>

#include "common/clock.h"

namespace ferry {

std::atomic<int> Log::level_{static_cast<int>(LogLevel::kInfo)};

namespace {

std::atomic<int> g_encoding{static_cast<int>(LogEncoding::kText)};
std::atomic<int> g_output{STDERR_FILENO};

std::string& ProcessTag() {
  static std::string tag;
  return tag;
}

std::vector<std::pair<std::string, std::string>>& ProcessFields() {
  static std::vector<std::pair<std::string, std::string>> fields;
  return fields;
}

void AppendHex(std::string& out, uint64_t value, int chars) {
  static constexpr char kDigits[] = "0123456789abcdef";
  for (int i = chars - 1; i >= 0; --i) out.push_back(kDigits[(value >> (i * 4)) & 0xf]);
}

// The length of the valid UTF-8 sequence at the start of `s`, or 0 when it is not one.
size_t Utf8SequenceLength(std::string_view s) {
  auto byte = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  auto continuation = [&](size_t i) { return i < s.size() && (byte(i) & 0xc0) == 0x80; };
  unsigned char c = byte(0);
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) return continuation(1) ? 2 : 0;
  if (c >= 0xe0 && c <= 0xef) {
    if (!continuation(1) || !continuation(2)) return 0;
    if (c == 0xe0 && byte(1) < 0xa0) return 0;  // overlong
    if (c == 0xed && byte(1) > 0x9f) return 0;  // surrogate
    return 3;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    if (!continuation(1) || !continuation(2) || !continuation(3)) return 0;
    if (c == 0xf0 && byte(1) < 0x90) return 0;
    if (c == 0xf4 && byte(1) > 0x8f) return 0;
    return 4;
  }
  return 0;
}

// "2026-11-26T08:01:02.345Z". The date and time are formatted once a second per thread: a busy proxy
// writes an access line per request.
void AppendStamp(std::string& out) {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  thread_local time_t cached_second = -1;
  thread_local char cached[24];
  if (ts.tv_sec != cached_second) {
    tm parts;
    gmtime_r(&ts.tv_sec, &parts);
    snprintf(cached, sizeof(cached), "%04d-%02d-%02dT%02d:%02d:%02d.", parts.tm_year + 1900, parts.tm_mon + 1,
             parts.tm_mday, parts.tm_hour, parts.tm_min, parts.tm_sec);
    cached_second = ts.tv_sec;
  }
  out.append(cached, 20);
  const long ms = ts.tv_nsec / 1000000;
  const char tail[] = {static_cast<char>('0' + ms / 100), static_cast<char>('0' + ms / 10 % 10),
                       static_cast<char>('0' + ms % 10), 'Z'};
  out.append(tail, 4);
}

void AppendNumber(std::string& out, double v) {
  if (v == static_cast<double>(static_cast<long long>(v)) && v > -1e15 && v < 1e15) {
    out.append(std::to_string(static_cast<long long>(v)));
    return;
  }
  char buf[32];
  int n = snprintf(buf, sizeof(buf), "%.6g", v);
  out.append(buf, n > 0 ? static_cast<size_t>(n) : 0);
}

}  // namespace

uint64_t RandomWord() {
  thread_local std::mt19937_64 engine([] {
    std::random_device rd;
    return (static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(getpid());
  }());
  return engine();
}

namespace internal {
void AppendDouble(std::string& out, double v) {
  char buf[32];
  int n = snprintf(buf, sizeof(buf), "%g", v);
  out.append(buf, n > 0 ? static_cast<size_t>(n) : 0);
}
}  // namespace internal

const char* LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "DEBUG";
    case LogLevel::kInfo:
      return "INFO";
    case LogLevel::kWarning:
      return "WARNING";
    case LogLevel::kError:
      return "ERROR";
  }
  return "?";
}

const char* LogEncodingName(LogEncoding encoding) { return encoding == LogEncoding::kJson ? "JSON" : "TEXT"; }

bool ParseLogEncoding(std::string_view text, LogEncoding* out) {
  std::string upper(text);
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (upper == "TEXT")
    *out = LogEncoding::kText;
  else if (upper == "JSON")
    *out = LogEncoding::kJson;
  else
    return false;
  return true;
}

void AppendJsonString(std::string& out, std::string_view text) {
  static constexpr char kDigits[] = "0123456789abcdef";
  out.push_back('"');
  while (!text.empty()) {
    unsigned char c = static_cast<unsigned char>(text[0]);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c == '\n') {
      out.append("\\n");
    } else if (c == '\t') {
      out.append("\\t");
    } else if (c == '\r') {
      out.append("\\r");
    } else if (c < 0x20 || c == 0x7f) {
      out.append("\\u00");
      out.push_back(kDigits[c >> 4]);
      out.push_back(kDigits[c & 0xf]);
    } else if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else {
      size_t n = Utf8SequenceLength(text);
      if (n == 0) {
        out.append("\\ufffd");
        n = 1;
      } else {
        out.append(text.substr(0, n));
      }
      text.remove_prefix(n);
      continue;
    }
    text.remove_prefix(1);
  }
  out.push_back('"');
}

size_t FirstInvalidUtf8(std::string_view text) {
  for (size_t at = 0; at < text.size();) {
    size_t n = Utf8SequenceLength(text.substr(at));
    if (n == 0) return at;
    at += n;
  }
  return std::string_view::npos;
}

void Log::SetLevel(LogLevel level) { level_.store(static_cast<int>(level)); }
LogLevel Log::level() { return static_cast<LogLevel>(level_.load()); }
void Log::SetEncoding(LogEncoding encoding) { g_encoding.store(static_cast<int>(encoding)); }
LogEncoding Log::encoding() { return static_cast<LogEncoding>(g_encoding.load(std::memory_order_relaxed)); }
void Log::SetProcessTag(std::string tag) { ProcessTag() = std::move(tag); }
void Log::SetProcessFields(std::vector<std::pair<std::string, std::string>> fields) {
  ProcessFields() = std::move(fields);
}

void Log::SetOutput(int fd) { g_output.store(fd); }

void Log::Format(LogLevel level, std::string_view component, std::string_view message, std::span<const LogField> fields,
                 std::string* out) {
  FormatAs(encoding(), ProcessTag(), ProcessFields(), level, component, message, fields, out);
}

void Log::FormatAs(LogEncoding encoding, std::string_view tag,
                   const std::vector<std::pair<std::string, std::string>>& process_fields, LogLevel level,
                   std::string_view component, std::string_view message, std::span<const LogField> fields,
                   std::string* out) {
  std::string& line = *out;
  if (encoding == LogEncoding::kJson) {
    line.append("{\"asctime\": \"");
    AppendStamp(line);
    StrAppend(&line, "\", \"levelname\": \"", LogLevelName(level), "\", \"component_name\": ");
    AppendJsonString(line, component);
    line.append(", \"message\": ");
    AppendJsonString(line, message);
    for (const auto& [key, value] : process_fields) {
      line.append(", ");
      AppendJsonString(line, key);
      line.append(": ");
      AppendJsonString(line, value);
    }
    for (const LogField& f : fields) {
      line.append(", ");
      AppendJsonString(line, f.key);
      line.append(": ");
      if (f.is_number)
        AppendNumber(line, f.number);
      else
        AppendJsonString(line, f.text);
    }
    line.append("}\n");
    return;
  }
  AppendStamp(line);
  StrAppend(&line, " ", LogLevelName(level), " ", component);
  if (!tag.empty()) StrAppend(&line, " [", tag, "]");
  StrAppend(&line, " ", message);
  for (const LogField& f : fields) {
    if (f.json_only) continue;
    StrAppend(&line, " ", f.key, "=");
    if (f.is_number)
      AppendNumber(line, f.number);
    else
      line.append(f.text.empty() ? std::string_view("-") : f.text);
  }
  line.push_back('\n');
}

void Log::WriteLines(std::string_view lines) {
  while (!lines.empty()) {
    ssize_t n = ::write(g_output.load(std::memory_order_relaxed), lines.data(), lines.size());
    if (n <= 0) return;
    lines.remove_prefix(static_cast<size_t>(n));
  }
}

void Log::Write(LogLevel level, std::string_view component, std::string_view message,
                std::initializer_list<LogField> fields) {
  if (!Enabled(level)) return;
  std::string line;
  Format(level, component, message, fields, &line);
  WriteLines(line);
}

bool ParseLogLevel(std::string_view text, LogLevel* out) {
  std::string lower(text);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower == "debug")
    *out = LogLevel::kDebug;
  else if (lower == "info")
    *out = LogLevel::kInfo;
  else if (lower == "warning" || lower == "warn")
    *out = LogLevel::kWarning;
  else if (lower == "error" || lower == "critical")  // Ray Serve's CRITICAL: ferry's highest level
    *out = LogLevel::kError;
  else
    return false;
  return true;
}

std::string HexString(uint64_t value, int chars) {
  std::string out;
  AppendHex(out, value, chars > 16 ? 16 : chars);
  return out;
}

std::string NewRequestId() {
  std::string id;
  id.reserve(32);
  AppendHex(id, RandomWord(), 16);
  AppendHex(id, RandomWord(), 16);
  return id;
}

std::string NewShortId(int hex_chars) {
  std::string id;
  AppendHex(id, RandomWord(), hex_chars > 16 ? 16 : hex_chars);
  return id;
}

double WallSeconds() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<double>(ts.tv_sec) + ts.tv_nsec / 1e9;
}

void CloseDescriptorsFrom(int first) {
  if (close_range(static_cast<unsigned>(first), ~0u, 0) == 0) return;
  // Kernels before 5.9 lack close_range: close one by one up to the descriptor limit.
  rlimit limit{};
  int end = getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < (1u << 20) ? static_cast<int>(limit.rlim_cur)
                                                                                 : (1 << 20);
  for (int fd = first; fd < end; ++fd) close(fd);
}

}  // namespace ferry

namespace ferry {
namespace {

class RealClock : public Clock {
 public:
  TimePoint Now() const override { return std::chrono::steady_clock::now(); }
  void WaitUntil(CondVar* cv, Mutex* mu, TimePoint deadline) const override ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    cv->WaitUntil(mu, deadline);
  }
};

}  // namespace

const Clock* Clock::Real() {
  static const RealClock clock;
  return &clock;
}

}  // namespace ferry
