#include "controller/state_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/common.h"
#include "common/unique_fd.h"

namespace ferry::controller {

absl::StatusOr<std::unique_ptr<EmbeddedStateStore>> EmbeddedStateStore::Open(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::UnavailableError(StrCat("cannot create state directory ", dir, ": ", ec.message()));
  return std::unique_ptr<EmbeddedStateStore>(new EmbeddedStateStore(dir));
}

EmbeddedStateStore::EmbeddedStateStore(std::string dir)
    : dir_(std::move(dir)), path_(StrCat(dir_, "/controller-state.json")) {}

absl::StatusOr<std::optional<std::string>> EmbeddedStateStore::Load() {
  std::ifstream in(path_, std::ios::binary);
  if (!in) {
    if (errno == ENOENT) return std::optional<std::string>();
    return absl::UnavailableError(StrCat("cannot read ", path_, ": ", std::strerror(errno)));
  }
  std::stringstream text;
  text << in.rdbuf();
  return std::optional<std::string>(text.str());
}

absl::Status EmbeddedStateStore::Save(const std::string& document) {
  std::string tmp = StrCat(path_, ".tmp");
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) return absl::UnavailableError(StrCat("cannot write ", tmp, ": ", std::strerror(errno)));
  size_t done = 0;
  while (done < document.size()) {
    ssize_t n = ::write(fd.get(), document.data() + done, document.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return absl::UnavailableError(StrCat("cannot write ", tmp, ": ", std::strerror(errno)));
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return absl::UnavailableError(StrCat("fsync ", tmp, ": ", std::strerror(errno)));
  fd.reset();
  if (::rename(tmp.c_str(), path_.c_str()) != 0)
    return absl::UnavailableError(StrCat("rename ", tmp, ": ", std::strerror(errno)));
  if (UniqueFd dir(::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)); dir) ::fsync(dir.get());
  return absl::OkStatus();
}

}  // namespace ferry::controller
