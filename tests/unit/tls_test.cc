// TLS sessions (cluster mode's etcd calls and frames between nodes) over a socket pair, with certificates made
// by the openssl command as docs/operations.md shows: a handshake both ways with mutual verification, bytes
// both ways (a large write in pieces), the peer's close, and what is refused (a certificate from another
// CA, one that names another address, no client certificate) with a message that says so.
#include "common/tls.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <string>

#include "common/common.h"
#include "common/unique_fd.h"

namespace ferry {
namespace {

using ::testing::HasSubstr;

// A CA and certificates it signs (for 127.0.0.1) in a temporary directory.
class Certs {
 public:
  Certs() {
    char pattern[] = "/tmp/ferry-tls-test-XXXXXX";
    dir_ = mkdtemp(pattern);
  }
  ~Certs() { std::filesystem::remove_all(dir_); }
  // Makes CA `ca` (once) and `name`, signed by it, for `ip`.
  void Make(const std::string& ca, const std::string& name, const std::string& ip = "127.0.0.1") {
    const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    if (!std::filesystem::exists(Path(ca + ".crt")))
      Run(StrCat("openssl req -x509 ", ec, " -keyout ", ca, ".key -out ", ca, ".crt -days 2 -subj /CN=", ca));
    std::ofstream(Path(name + ".ext")) << "subjectAltName = IP:" << ip
                                       << "\nextendedKeyUsage = serverAuth, clientAuth\n";
    Run(StrCat("openssl req ", ec, " -keyout ", name, ".key -out ", name, ".csr -subj /CN=", name));
    Run(StrCat("openssl x509 -req -in ", name, ".csr -CA ", ca, ".crt -CAkey ", ca,
               ".key -CAcreateserial -days 2 -extfile ", name, ".ext -out ", name, ".crt"));
  }
  TlsFiles Files(const std::string& ca, const std::string& name) const {
    return {Path(ca + ".crt"), Path(name + ".crt"), Path(name + ".key")};
  }
  std::string Path(const std::string& file) const { return dir_ + "/" + file; }

 private:
  void Run(const std::string& command) const {
    ASSERT_EQ(std::system(StrCat("cd ", dir_, " && ", command, " >/dev/null 2>&1").c_str()), 0) << command;
  }
  std::string dir_;
};

std::shared_ptr<const TlsContext> Context(const TlsFiles& files, TlsContext::Role role) {
  absl::StatusOr<std::shared_ptr<const TlsContext>> c = TlsContext::Create(files, role);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : nullptr;
}

// Drives both handshakes over a non-blocking socket pair until both end: the client's status.
struct Pair {
  UniqueFd a, b;
  std::unique_ptr<TlsSession> client, server;
  Pair(const TlsContext& client_context, const TlsContext& server_context, const std::string& expect_host) {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds), 0);
    a.reset(fds[0]);
    b.reset(fds[1]);
    client = *TlsSession::Client(client_context, a.get(), expect_host);
    server = *TlsSession::Server(server_context, b.get());
  }
  // Both handshakes to their end: the first error (client's or server's), or OK.
  absl::Status Handshake() {
    for (int i = 0; i < 1000; ++i) {
      TlsSession::Want want;
      absl::StatusOr<bool> c = client->Handshake(&want);
      if (!c.ok()) return c.status();
      absl::StatusOr<bool> s = server->Handshake(&want);
      if (!s.ok()) return s.status();
      if (*c && *s) return absl::OkStatus();
    }
    return absl::DeadlineExceededError("the handshakes did not end");
  }
};

TEST(TlsTest, MutualHandshakeThenBytesBothWaysAndTheClose) {
  Certs certs;
  certs.Make("ca", "server");
  certs.Make("ca", "client");
  auto server_context = Context(certs.Files("ca", "server"), TlsContext::Role::kServer);
  auto client_context = Context(certs.Files("ca", "client"), TlsContext::Role::kClient);
  ASSERT_TRUE(server_context && client_context);
  Pair pair(*client_context, *server_context, "127.0.0.1");
  ASSERT_TRUE(pair.Handshake().ok());

  // 1 MiB one way, written in pieces as the socket takes them, read on the other side as it arrives.
  std::string big(1 << 20, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 131 % 251);
  std::string got;
  size_t sent = 0;
  char buffer[65536];
  for (int rounds = 0; (sent < big.size() || got.size() < big.size()) && rounds < 100000; ++rounds) {
    TlsSession::Want want;
    if (sent < big.size()) {
      ssize_t n = pair.client->Write(big.data() + sent, big.size() - sent, &want);
      if (n > 0)
        sent += static_cast<size_t>(n);
      else
        ASSERT_NE(want, TlsSession::Want::kNothing) << pair.client->error();
    }
    ssize_t n = pair.server->Read(buffer, sizeof(buffer), &want);
    if (n > 0)
      got.append(buffer, static_cast<size_t>(n));
    else
      ASSERT_NE(want, TlsSession::Want::kNothing) << pair.server->error();
  }
  EXPECT_EQ(got, big);

  // And back.
  TlsSession::Want want;
  ASSERT_EQ(pair.server->Write("pong", 4, &want), 4);
  ASSERT_TRUE(WaitForTls(pair.a.get(), TlsSession::Want::kReadable,
                         std::chrono::steady_clock::now() + std::chrono::seconds(10)));
  ASSERT_EQ(pair.client->Read(buffer, sizeof(buffer), &want), 4);
  EXPECT_EQ(std::string(buffer, 4), "pong");

  // The server goes: the client reads the end (0), not an error.
  pair.server.reset();
  pair.b.reset();
  ASSERT_TRUE(WaitForTls(pair.a.get(), TlsSession::Want::kReadable,
                         std::chrono::steady_clock::now() + std::chrono::seconds(10)));
  EXPECT_EQ(pair.client->Read(buffer, sizeof(buffer), &want), 0);
}

TEST(TlsTest, WhatIsRefusedSaysWhy) {
  Certs certs;
  certs.Make("ca", "server");
  certs.Make("ca", "client");
  certs.Make("rogue", "stranger");
  auto server_context = Context(certs.Files("ca", "server"), TlsContext::Role::kServer);
  auto client_context = Context(certs.Files("ca", "client"), TlsContext::Role::kClient);
  ASSERT_TRUE(server_context && client_context);

  // The server's certificate names 127.0.0.1, not the address the client expected.
  {
    Pair pair(*client_context, *server_context, "10.1.2.3");
    absl::Status s = pair.Handshake();
    EXPECT_THAT(s.message(), HasSubstr("the peer's certificate was refused")) << s;
  }
  // A client whose certificate another CA signed, and one with none: the server refuses both.
  auto stranger = Context(TlsFiles{certs.Path("ca.crt"), certs.Path("stranger.crt"), certs.Path("stranger.key")},
                          TlsContext::Role::kClient);
  auto anonymous = Context(TlsFiles{certs.Path("ca.crt"), "", ""}, TlsContext::Role::kClient);
  ASSERT_TRUE(stranger && anonymous);
  for (const auto& context : {stranger, anonymous}) {
    Pair pair(*context, *server_context, "127.0.0.1");
    absl::Status s = pair.Handshake();
    EXPECT_FALSE(s.ok());
    EXPECT_THAT(s.message(), HasSubstr("TLS handshake")) << s;
  }
  // A server whose certificate another CA signed: the client refuses it.
  auto rogue_server = Context(TlsFiles{certs.Path("ca.crt"), certs.Path("stranger.crt"), certs.Path("stranger.key")},
                              TlsContext::Role::kServer);
  {
    Pair pair(*client_context, *rogue_server, "127.0.0.1");
    absl::Status s = pair.Handshake();
    EXPECT_THAT(s.message(), HasSubstr("the peer's certificate was refused")) << s;
  }
}

TEST(TlsTest, BadFilesAreNamed) {
  Certs certs;
  certs.Make("ca", "one");
  certs.Make("ca", "two");
  auto error = [](const TlsFiles& files, TlsContext::Role role) {
    absl::StatusOr<std::shared_ptr<const TlsContext>> c = TlsContext::Create(files, role);
    return c.ok() ? std::string("ok") : std::string(c.status().message());
  };
  EXPECT_THAT(error({certs.Path("missing.crt"), "", ""}, TlsContext::Role::kClient),
              HasSubstr("CA file " + certs.Path("missing.crt")));
  EXPECT_THAT(error({"", "", ""}, TlsContext::Role::kClient), HasSubstr("needs a CA file"));
  EXPECT_THAT(error({certs.Path("ca.crt"), certs.Path("one.crt"), ""}, TlsContext::Role::kClient),
              HasSubstr("both a certificate file and its key file"));
  EXPECT_THAT(error({certs.Path("ca.crt"), certs.Path("one.crt"), certs.Path("two.key")}, TlsContext::Role::kServer),
              HasSubstr("does not belong to the certificate"));
  EXPECT_THAT(error({certs.Path("ca.crt"), certs.Path("one.key"), certs.Path("one.key")}, TlsContext::Role::kServer),
              HasSubstr("TLS certificate file " + certs.Path("one.key")));
  EXPECT_THAT(error({certs.Path("ca.crt"), "", ""}, TlsContext::Role::kServer), HasSubstr("needs a certificate"));
  EXPECT_EQ(error({certs.Path("ca.crt"), certs.Path("one.crt"), certs.Path("one.key")}, TlsContext::Role::kServer),
            "ok");
}

}  // namespace
}  // namespace ferry
