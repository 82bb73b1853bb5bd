// Common pieces every component may use: logging with request ids, id generation, clocks.
// Depends on no other component.
#pragma once

#include <absl/status/status.h>
#include <absl/strings/string_view.h>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace ferry {

// Ferry's release, printed by `ferry version` and reported at GET /v2.
inline constexpr char kVersion[] = "0.3.0";

// Debian's Abseil has its own string_view type, distinct from std::string_view: these helpers accept
// both, so the rest of the code can use std::string_view throughout.
inline std::string_view View(absl::string_view s) { return std::string_view(s.data(), s.size()); }
inline std::string_view Message(const absl::Status& status) { return View(status.message()); }

namespace internal {
void AppendDouble(std::string& out, double v);
template <typename T>
void AppendPiece(std::string& out, const T& v) {
  if constexpr (std::is_same_v<T, bool>) {
    out.append(v ? "true" : "false");
  } else if constexpr (std::is_same_v<T, char>) {
    out.push_back(v);
  } else if constexpr (std::is_integral_v<T> || std::is_enum_v<T>) {
    out.append(std::to_string(static_cast<std::conditional_t<std::is_signed_v<T>, long long, unsigned long long>>(v)));
  } else if constexpr (std::is_floating_point_v<T>) {
    AppendDouble(out, static_cast<double>(v));
  } else if constexpr (std::is_convertible_v<const T&, std::string_view>) {
    out.append(std::string_view(v));
  } else {
    out.append(v.data(), v.size());  // absl::string_view, boost::string_view
  }
}
}  // namespace internal

// Concatenates strings, string views of any kind, integers and floating-point numbers.
template <typename... Args>
std::string StrCat(const Args&... args) {
  std::string out;
  (internal::AppendPiece(out, args), ...);
  return out;
}
template <typename... Args>
void StrAppend(std::string* out, const Args&... args) {
  (internal::AppendPiece(*out, args), ...);
}

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };
// TEXT: "time LEVEL component [tag] message key=value..."; JSON: one object per line with Ray Serve's keys
// (asctime, levelname, component_name, message, ...), for log shippers.
enum class LogEncoding { kText, kJson };

// A structured field of a log line: a string or a number.
struct LogField {
  LogField(std::string_view k, std::string_view v) : key(k), text(v) {}
  LogField(std::string_view k, const std::string& v) : key(k), text(v) {}
  LogField(std::string_view k, const char* v) : key(k), text(v) {}
  LogField(std::string_view k, double v) : key(k), number(v), is_number(true) {}
  LogField(std::string_view k, int v) : key(k), number(v), is_number(true) {}
  LogField(std::string_view k, unsigned v) : key(k), number(v), is_number(true) {}
  std::string_view key;
  std::string_view text;
  double number = 0;
  bool is_number = false;
  bool json_only = false;  // TEXT lines leave it out (their message already says it)
};
inline LogField JsonOnly(LogField f) {
  f.json_only = true;
  return f;
}

// Process-wide logger writing one line per call to stderr: time, level, component, message, and fields.
// Thread-safe: a line is written with one write(2), so lines from threads and processes do not interleave.
// Set the level, encoding and process fields before starting threads, or accept that a line written
// meanwhile may use the old ones.
class Log {
 public:
  static void SetLevel(LogLevel level);
  static LogLevel level();
  static void SetEncoding(LogEncoding encoding);
  static LogEncoding encoding();
  // A tag in every TEXT line of this process, such as the replica id.
  static void SetProcessTag(std::string tag);
  // Fields in every JSON line of this process (replica, deployment, application).
  static void SetProcessFields(std::vector<std::pair<std::string, std::string>> fields);
  static void Write(LogLevel level, std::string_view component, std::string_view message,
                    std::initializer_list<LogField> fields = {});
  // Appends one formatted line (with its newline) to `out`, for callers that write lines in blocks.
  static void Format(LogLevel level, std::string_view component, std::string_view message,
                     std::initializer_list<LogField> fields, std::string* out) {
    Format(level, component, message, std::span<const LogField>(fields.begin(), fields.size()), out);
  }
  static void Format(LogLevel level, std::string_view component, std::string_view message,
                     std::span<const LogField> fields, std::string* out);
  // The same, for a line on behalf of another process (the node writes what a replica printed): its
  // encoding, TEXT tag and JSON fields instead of this process's.
  static void FormatAs(LogEncoding encoding, std::string_view tag,
                       const std::vector<std::pair<std::string, std::string>>& process_fields, LogLevel level,
                       std::string_view component, std::string_view message, std::span<const LogField> fields,
                       std::string* out);
  // Writes formatted lines as they are, in one write(2).
  static void WriteLines(std::string_view lines);
  // Where lines go: standard error unless set (a replica writes to the node's, while its own standard
  // output and error are pipes the node reads).
  static void SetOutput(int fd);
  static bool Enabled(LogLevel level) { return static_cast<int>(level) >= level_.load(std::memory_order_relaxed); }

 private:
  static std::atomic<int> level_;
};

#define FERRY_LOG(level, component, ...)                                                      \
  do {                                                                                        \
    if (::ferry::Log::Enabled(::ferry::LogLevel::level))                                      \
      ::ferry::Log::Write(::ferry::LogLevel::level, component, ::ferry::StrCat(__VA_ARGS__)); \
  } while (0)

// Parses "TEXT" or "JSON" (any case).
bool ParseLogEncoding(std::string_view text, LogEncoding* out);
const char* LogEncodingName(LogEncoding encoding);
const char* LogLevelName(LogLevel level);  // "DEBUG", "INFO", "WARNING", "ERROR"

// Appends `text` to `out` as a JSON string (quoted, escaped; invalid UTF-8 becomes U+FFFD).
void AppendJsonString(std::string& out, std::string_view text);

// The offset of the first byte of `text` that does not start a valid UTF-8 sequence (overlong forms and
// surrogates are invalid, as JSON encoders insist), or std::string_view::npos when it is all valid.
size_t FirstInvalidUtf8(std::string_view text);

// Parses "debug", "info", "warning", "error" (any case).
bool ParseLogLevel(std::string_view text, LogLevel* out);

// A new request id: 32 lower-case hex characters (128 random bits), as Ray Serve's are. Thread-safe.
std::string NewRequestId();

// `value`'s lowest `chars` hex digits (up to 16), lower case, most significant first.
std::string HexString(uint64_t value, int chars = 16);

// 64 random bits (a per-thread generator seeded from the OS). Thread-safe.
uint64_t RandomWord();

// A short random hex id for replicas and runs. Thread-safe.
std::string NewShortId(int hex_chars = 8);

// Seconds since the Unix epoch, as a double (for status and logs).
double WallSeconds();

// For a child between fork() and exec(): closes every descriptor from `first` up, so the program it
// becomes holds none of the parent's sockets, pipes or files (Asio opens its sockets without
// close-on-exec). Move the descriptors the child keeps below `first` before. Async-signal-safe.
void CloseDescriptorsFrom(int first);

using SteadyClock = std::chrono::steady_clock;

}  // namespace ferry
