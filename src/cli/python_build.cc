#include "cli/python_build.h"

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <vector>

#include "common/common.h"
#include "common/unique_fd.h"

extern char** environ;

namespace ferry::cli {

std::string FerryPythonDir() {
  std::error_code ec;
  if (std::filesystem::is_regular_file(std::filesystem::path(FERRY_PYTHON_DIR) / "ferry" / "__init__.py", ec))
    return FERRY_PYTHON_DIR;
  return "";
}

absl::StatusOr<config::PythonApp> BuildPythonApp(const std::string& import_path, const nlohmann::json& args,
                                                 const config::RuntimeEnv& env) {
  nlohmann::json request = {{"import_path", import_path}, {"args", args.is_null() ? nlohmann::json::object() : args}};
  request["sys_path"] = env.SysPath();
  const char* python_env = getenv("FERRY_PYTHON");
  const std::string python = python_env && *python_env ? python_env : "/usr/bin/python3";
  const std::string request_text = request.dump();
  std::vector<std::string> argv_s = {python, "-m", "ferry.serve._private.build", request_text};
  // The child's environment: ours, the runtime_env's variables, and the ferry package on PYTHONPATH.
  std::vector<std::string> env_s;
  std::string pythonpath = FerryPythonDir();
  for (char** e = environ; *e; ++e) {
    std::string_view kv(*e);
    if (kv.rfind("PYTHONPATH=", 0) == 0) {
      if (kv.size() > 11)
        pythonpath = pythonpath.empty() ? std::string(kv.substr(11)) : StrCat(pythonpath, ":", kv.substr(11));
      continue;
    }
    std::string name(kv.substr(0, kv.find('=')));
    if (env.env_vars.contains(name)) continue;
    env_s.emplace_back(kv);
  }
  for (const auto& [k, v] : env.env_vars.items())
    env_s.push_back(StrCat(k, "=", v.is_string() ? v.get<std::string>() : v.dump()));
  if (!pythonpath.empty()) env_s.push_back("PYTHONPATH=" + pythonpath);
  std::vector<char*> argv, envp;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);
  const std::string cwd = env.working_dir;

  Pipe out = Pipe::Make(), err = Pipe::Make();
  if (!out.ok || !err.ok) return absl::InternalError("pipe failed");
  pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    dup2(out.write.get(), STDOUT_FILENO);
    dup2(err.write.get(), STDERR_FILENO);
    if (!cwd.empty() && chdir(cwd.c_str()) != 0) _exit(126);
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  out.write.reset();
  err.write.reset();
  std::string stdout_text, stderr_text;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  bool timed_out = false;
  pollfd fds[2] = {{out.read.get(), POLLIN, 0}, {err.read.get(), POLLIN, 0}};
  int open_fds = 2;
  while (open_fds > 0) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      kill(pid, SIGKILL);
      break;
    }
    if (poll(fds, 2, static_cast<int>(left.count())) < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buf[8192];
      ssize_t n = read(fds[i].fd, buf, sizeof(buf));
      if (n <= 0) {
        fds[i].fd = -1;
        --open_fds;
      } else {
        (i == 0 ? stdout_text : stderr_text).append(buf, static_cast<size_t>(n));
      }
    }
  }
  int status = 0;
  pid_t waited;
  while ((waited = waitpid(pid, &status, 0)) < 0 && errno == EINTR) {
  }
  if (waited != pid) return absl::InternalError(StrCat("lost the exit status of the import of ", import_path));
  if (timed_out) return absl::DeadlineExceededError(StrCat("importing ", import_path, " took over 120 s"));
  if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
    return absl::FailedPreconditionError(StrCat("cannot run ", python, " (set FERRY_PYTHON to a Python 3.11)"));
  if (WIFEXITED(status) && WEXITSTATUS(status) == 126)
    return absl::FailedPreconditionError(StrCat("cannot enter working_dir ", cwd));
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    while (!stderr_text.empty() && stderr_text.back() == '\n') stderr_text.pop_back();
    return absl::InvalidArgumentError(stderr_text.empty() ? "the import failed" : stderr_text);
  }
  nlohmann::json built = nlohmann::json::parse(stdout_text, nullptr, false);
  if (!built.is_object() || !built.contains("deployments") || !built["deployments"].is_array() ||
      !built.contains("ingress") || !built["ingress"].is_string())
    return absl::InternalError(StrCat("the import printed no application: ", stdout_text.substr(0, 500)));
  config::PythonApp app;
  app.ingress = built["ingress"].get<std::string>();
  if (built.contains("code_version") && built["code_version"].is_string())
    app.code_version = built["code_version"].get<std::string>();
  for (const auto& d : built["deployments"]) {
    if (!d.contains("name") || !d["name"].is_string()) return absl::InternalError("a deployment without a name");
    app.deployments.push_back({d["name"].get<std::string>(), d.value("options", nlohmann::json::object())});
  }
  return app;
}

}  // namespace ferry::cli
