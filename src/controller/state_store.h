// Where the controller keeps its desired state (the applied config and each application's history) so that
// a node restarted after a crash or a reboot brings back the same applications. The embedded store is a
// file in the node's state directory; cluster mode will put etcd behind the same interface.
// Thread-compatible: the controller calls it from its own thread.
#pragma once

#include <absl/status/statusor.h>
#include <memory>
#include <optional>
#include <string>

namespace ferry::controller {

class StateStore {
 public:
  virtual ~StateStore() = default;
  // The last document saved, or nullopt when nothing was ever saved.
  virtual absl::StatusOr<std::optional<std::string>> Load() = 0;
  // Replaces the document. Either the whole new document is stored or the old one stays.
  virtual absl::Status Save(const std::string& document) = 0;
};

// Keeps the document in DIR/controller-state.json: written to a temporary file, fsync'd, renamed over the
// old one, and the directory fsync'd, so a crash at any point leaves the old or the new state, whole.
class EmbeddedStateStore : public StateStore {
 public:
  static absl::StatusOr<std::unique_ptr<EmbeddedStateStore>> Open(const std::string& dir);
  absl::StatusOr<std::optional<std::string>> Load() override;
  absl::Status Save(const std::string& document) override;
  const std::string& path() const { return path_; }

 private:
  explicit EmbeddedStateStore(std::string dir);
  std::string dir_;
  std::string path_;
};

}  // namespace ferry::controller
