// Owns a file descriptor: closes it when destroyed or reset, so no path forgets to and none closes twice.
// Move-only. Thread-compatible (as an int is): one owner at a time.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <utility>

namespace ferry {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  // Gives up ownership: the caller closes it.
  [[nodiscard]] int release() { return std::exchange(fd_, -1); }
  // Closes what it holds (if anything) and takes `fd`.
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

// Both ends of a pipe, each owned. `ok` is false (and errno says why) when pipe2 failed.
struct Pipe {
  UniqueFd read;
  UniqueFd write;
  bool ok = false;
  static Pipe Make(int flags = O_CLOEXEC) {
    int fds[2];
    Pipe p;
    if (::pipe2(fds, flags) != 0) return p;
    p.read.reset(fds[0]);
    p.write.reset(fds[1]);
    p.ok = true;
    return p;
  }
};

}  // namespace ferry
