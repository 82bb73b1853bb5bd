#include "config/config.h"

#include <stdlib.h>

#include <absl/strings/str_join.h>
#include <filesystem>
#include <fstream>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace ferry::config {
namespace {

using ::testing::HasSubstr;

ValidationHooks Builtins() {
  ValidationHooks hooks;
  hooks.builtin_exists = [](std::string_view name) { return name == "echo" || name == "busy"; };
  return hooks;
}

std::string ErrorOf(std::string_view yaml, const ValidationHooks& hooks = Builtins()) {
  auto c = ParseConfig(yaml, "cfg.yaml", "/tmp", hooks);
  EXPECT_FALSE(c.ok()) << "accepted:\n" << yaml;
  return c.ok() ? "" : std::string(c.status().message());
}

TEST(ConfigTest, DefaultsFollowRayServe) {
  auto c = ParseConfig(R"(
applications:
  - name: app
    deployments:
      - name: D
        import_path: builtin:echo
)",
                       "cfg.yaml", "/tmp", Builtins());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->http_options.host, "127.0.0.1");
  EXPECT_EQ(c->http_options.port, 8000);
  EXPECT_FALSE(c->http_options.request_timeout_s.has_value());
  EXPECT_EQ(c->http_options.keep_alive_timeout_s, 90);
  EXPECT_EQ(c->http_options.max_body_bytes, 64ll << 20);
  const auto& app = c->applications.at(0);
  EXPECT_EQ(app.route_prefix, "/");
  EXPECT_EQ(app.ingress, "D");
  const auto& d = app.deployments.at(0);
  EXPECT_EQ(d.num_replicas, 1);
  EXPECT_EQ(d.max_ongoing_requests, 5);
  EXPECT_EQ(d.max_queued_requests, -1);
  EXPECT_EQ(d.health_check_period_s, 10);
  EXPECT_EQ(d.health_check_timeout_s, 30);
  EXPECT_EQ(d.graceful_shutdown_timeout_s, 20);
  EXPECT_EQ(d.resources.num_cpus, 1);
  EXPECT_TRUE(d.user_config.is_null());
  EXPECT_EQ(d.kind, DeploymentConfig::Kind::kBuiltin);
  EXPECT_EQ(d.symbol, "echo");
}

TEST(ConfigTest, ReadsEveryField) {
  auto c = ParseConfig(R"(
http_options: {host: 0.0.0.0, port: 0, request_timeout_s: 2.5, keep_alive_timeout_s: 5, header_timeout_s: 1, max_body_bytes: 1024, num_threads: 3}
applications:
  - name: a
    route_prefix: /a/b
    ingress: Second
    deployments:
      - name: First
        import_path: builtin:busy
        args: {work_us: 100, nested: {list: [1, "two", 3.5, true, null]}}
      - name: Second
        import_path: builtin:echo
        num_replicas: 3
        max_ongoing_requests: 7
        max_queued_requests: 9
        user_config: {threshold: 0.5}
        resources: {num_cpus: 0.5, num_gpus: 0}
        health_check_period_s: 1
        health_check_timeout_s: 2
        graceful_shutdown_timeout_s: 3
)",
                       "cfg.yaml", "/tmp", Builtins());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->http_options.host, "0.0.0.0");
  EXPECT_EQ(c->http_options.port, 0);
  EXPECT_EQ(*c->http_options.request_timeout_s, 2.5);
  EXPECT_EQ(c->http_options.max_body_bytes, 1024);
  EXPECT_EQ(c->http_options.num_threads, 3);
  const auto& app = c->applications[0];
  EXPECT_EQ(app.IngressDeployment().name, "Second");
  EXPECT_EQ(app.deployments[0].args["work_us"], 100);
  EXPECT_EQ(app.deployments[0].args["nested"]["list"][1], "two");
  EXPECT_EQ(app.deployments[0].args["nested"]["list"][2], 3.5);
  EXPECT_EQ(app.deployments[0].args["nested"]["list"][3], true);
  EXPECT_TRUE(app.deployments[0].args["nested"]["list"][4].is_null());
  const auto& d = app.deployments[1];
  EXPECT_EQ(d.num_replicas, 3);
  EXPECT_EQ(d.max_ongoing_requests, 7);
  EXPECT_EQ(d.max_queued_requests, 9);
  EXPECT_EQ(d.user_config["threshold"], 0.5);
  EXPECT_EQ(d.resources.num_cpus, 0.5);
}

// What cluster mode places replicas by, from Ray's options: resources by Ray's names, a placement group's
// bundles and strategy, labels; and what is wrong with them, by file:line:column.
TEST(ConfigTest, PlacementOptionsAreReadForClusterMode) {
  const std::string head =
      "applications:\n  - name: a\n    deployments:\n      - name: D\n"
      "        import_path: builtin:echo\n";
  auto c = ParseConfig(head +
                           "        ray_actor_options: {num_gpus: 1, resources: {accelerator_A100: 2},"
                           " label_selector: {zone: a}}\n"
                           "        placement_group_bundles: [{CPU: 1, GPU: 1}, {CPU: 2}]\n"
                           "        placement_group_strategy: STRICT_SPREAD\n",
                       "cfg.yaml", "/tmp", Builtins());
  ASSERT_TRUE(c.ok()) << c.status();
  const spec::PlacementSpec& p = c->applications[0].deployments[0].placement;
  EXPECT_EQ(p.resources, (std::map<std::string, double>{{"CPU", 1}, {"GPU", 1}, {"accelerator_A100", 2}}));
  ASSERT_EQ(p.bundles.size(), 2u);
  EXPECT_EQ(p.bundles[0], (std::map<std::string, double>{{"CPU", 1}, {"GPU", 1}}));
  EXPECT_EQ(p.strategy, "STRICT_SPREAD");
  EXPECT_EQ(p.label_selector, (std::map<std::string, std::string>{{"zone", "a"}}));
  // The stored config (what a new leader restores) keeps them.
  auto again = ParseConfig(ToJson(*c).dump(), "state", "/tmp", Builtins());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->applications[0].deployments[0].placement, p);

  EXPECT_THAT(ErrorOf(head + "        placement_group_strategy: TIGHT\n        placement_group_bundles: [{CPU: 1}]\n"),
              HasSubstr("cfg.yaml:6:35: applications[0].deployments[0].placement_group_strategy: expected PACK, SPREAD,"
                        " STRICT_PACK or STRICT_SPREAD"));
  EXPECT_THAT(ErrorOf(head + "        placement_group_strategy: PACK\n"), HasSubstr("needs placement_group_bundles"));
  EXPECT_THAT(ErrorOf(head + "        placement_group_bundles: [{CPU: -1}]\n"),
              HasSubstr("placement_group_bundles[0].CPU: expected a number >= 0"));
  EXPECT_THAT(ErrorOf(head + "        ray_actor_options: {resources: {GPU: 1}}\n"),
              HasSubstr("ray_actor_options.resources.GPU: set it with num_cpus, num_gpus or memory"));
  EXPECT_THAT(ErrorOf(head + "        max_replicas_per_node: 0\n"),
              HasSubstr("max_replicas_per_node: expected an integer"));
}

// Ray Serve's options that have no effect on one node load, each with one warning naming where it is;
// num_replicas: auto with an autoscaling_config starts from auto's defaults; a Python application's
// import_path is kept, and without the build hook (the controller's restore) its deployments are read as
// they were written back.
TEST(ConfigTest, RaysOptionsWithoutEffectLoadWithAWarningEach) {
  auto c = ParseConfig(R"(proxy_location: HeadOnly
grpc_options: {port: 9000, grpc_servicer_functions: [a.b]}
target_capacity: 50
logging_config: {logs_dir: /var/log/ray}
applications:
  - name: a
    deployments:
      - name: D
        import_path: builtin:echo
        num_replicas: auto
        autoscaling_config: {max_replicas: 7}
        ray_actor_options: {num_cpus: 2, memory: 100}
        max_replicas_per_node: 2
        graceful_shutdown_wait_loop_s: 3
)",
                       "cfg.yaml", "/tmp", Builtins());
  ASSERT_TRUE(c.ok()) << c.status();
  const auto& w = c->warnings;
  ASSERT_EQ(w.size(), 5u) << absl::StrJoin(w, "\n");
  EXPECT_THAT(w[0], HasSubstr("cfg.yaml:4:28: logging_config.logs_dir: accepted"));
  EXPECT_THAT(w[1], HasSubstr("cfg.yaml:2:15: grpc_options: accepted; ferry has no gRPC proxy yet"));
  EXPECT_THAT(w[2], HasSubstr("cfg.yaml:3:18: target_capacity: accepted"));
  EXPECT_THAT(w[3], HasSubstr("cfg.yaml:12:50: applications[0].deployments[0].ray_actor_options.memory: accepted"));
  EXPECT_THAT(w[4], HasSubstr("cfg.yaml:13:32: applications[0].deployments[0].max_replicas_per_node: accepted"));
  const DeploymentConfig& d = c->applications[0].deployments[0];
  EXPECT_EQ(d.resources.num_cpus, 2);
  // What cluster mode places by: Ray's resource names, and the per-node cap.
  EXPECT_EQ(d.placement.resources, (std::map<std::string, double>{{"CPU", 2}, {"memory", 100}}));
  EXPECT_EQ(d.placement.max_replicas_per_node, 2);
  EXPECT_TRUE(d.placement.bundles.empty());
  EXPECT_EQ(d.graceful_shutdown_wait_loop_s, 3);
  ASSERT_TRUE(d.autoscaling_config);
  EXPECT_EQ(d.autoscaling_config->min_replicas, 1);
  EXPECT_EQ(d.autoscaling_config->max_replicas, 7);
  EXPECT_EQ(d.autoscaling_config->target_ongoing_requests, 2);
  EXPECT_THAT(ErrorOf("proxy_location: Everywhere\napplications: []\n"),
              HasSubstr("cfg.yaml:1:17: proxy_location: expected EveryNode, HeadOnly or Disabled"));
}

TEST(ConfigTest, APythonApplicationIsBuiltByTheHookAndWrittenBackAsBuilt) {
  // The config's directory, holding the working_dir it names.
  std::string base = (std::filesystem::temp_directory_path() / "ferry-config-test-XXXXXX").string();
  ASSERT_NE(mkdtemp(base.data()), nullptr);
  std::filesystem::create_directories(base + "/code");
  ValidationHooks hooks = Builtins();
  std::vector<std::string> imported;
  hooks.runtime_library = [](std::string_view name) {
    return std::string("/lib/libferry_runtime_") + std::string(name) + ".so";
  };
  hooks.build_python_app = [&](const std::string& import_path, const nlohmann::json& args,
                               const RuntimeEnv& env) -> absl::StatusOr<PythonApp> {
    imported.push_back(import_path);
    if (import_path == "broken:app") return absl::InvalidArgumentError("SyntaxError: invalid syntax");
    EXPECT_EQ(args["k"], "v");
    EXPECT_EQ(env.working_dir, base + "/code");
    PythonApp app;
    app.ingress = "Front";
    app.deployments = {{"Front", {{"num_replicas", 2}, {"max_ongoing_requests", 9}}},
                       {"Back", nlohmann::json::object()}};
    return app;
  };
  const char* yaml = R"(applications:
  - name: a
    import_path: mod:app
    args: {k: v}
    runtime_env: {working_dir: code, pip: [torch]}
    deployments:
      - {name: Front, num_replicas: 3}
      - {name: Cpp, import_path: "builtin:echo"}
)";
  auto c = ParseConfig(yaml, "cfg.yaml", base, hooks);
  ASSERT_TRUE(c.ok()) << c.status();
  const ApplicationConfig& app = c->applications[0];
  EXPECT_EQ(app.import_path, "mod:app");
  EXPECT_EQ(app.ingress, "Front");
  ASSERT_EQ(app.deployments.size(), 3u);
  EXPECT_EQ(app.deployments[0].kind, DeploymentConfig::Kind::kPython);
  EXPECT_EQ(app.deployments[0].num_replicas, 3) << "the config's value wins over the code's";
  EXPECT_EQ(app.deployments[0].max_ongoing_requests, 9) << "the code's value wins over the default";
  EXPECT_EQ(app.deployments[0].plugin_path, "/lib/libferry_runtime_python.so");
  EXPECT_EQ(app.deployments[0].args["python"]["deployment"], "Front");
  EXPECT_EQ(app.deployments[1].name, "Back");
  EXPECT_EQ(app.deployments[2].kind, DeploymentConfig::Kind::kBuiltin);
  EXPECT_THAT(absl::StrJoin(c->warnings, "\n"), HasSubstr("applications[0].runtime_env.pip: accepted and not applied"));

  // Written back and read without the hook (the controller's restore): the same deployments, no import.
  imported.clear();
  auto restored = ParseConfig(ToJson(*c).dump(), "state", "/", Builtins());
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_TRUE(imported.empty());
  EXPECT_EQ(ToJson(*restored), ToJson(*c));

  // Code that does not import: the config is taken, the application carries the traceback (it will be
  // DEPLOY_FAILED) and a warning points at its import_path; stored and restored, it stays failed.
  auto broken = ParseConfig("applications:\n  - name: a\n    import_path: broken:app\n", "cfg.yaml", base, hooks);
  ASSERT_TRUE(broken.ok()) << broken.status();
  EXPECT_EQ(broken->applications[0].build_error, "SyntaxError: invalid syntax");
  EXPECT_TRUE(broken->applications[0].deployments.empty());
  EXPECT_THAT(absl::StrJoin(broken->warnings, "\n"),
              HasSubstr("cfg.yaml:3:18: applications[0].import_path: cannot import the application (SyntaxError: "
                        "invalid syntax): it is DEPLOY_FAILED"));
  auto broken_restored = ParseConfig(ToJson(*broken).dump(), "state", "/", Builtins());
  ASSERT_TRUE(broken_restored.ok()) << broken_restored.status();
  EXPECT_EQ(broken_restored->applications[0].build_error, "SyntaxError: invalid syntax");
  auto nope = ParseConfig(
      "applications:\n  - name: a\n    import_path: mod:app\n    args: {k: v}\n"
      "    runtime_env: {working_dir: code}\n    deployments: [{name: Nope}]\n",
      "cfg.yaml", base, hooks);
  EXPECT_THAT(std::string(nope.status().message()),
              HasSubstr("no deployment named \"Nope\" in the application mod:app builds (it has: Front, Back)"));
  std::filesystem::remove_all(base);
}

TEST(ConfigTest, YamlSyntaxErrorHasLineAndColumn) {
  std::string e = ErrorOf("applications:\n  - name: [unclosed\n");
  EXPECT_THAT(e, HasSubstr("cfg.yaml:3:"));
  EXPECT_THAT(e, HasSubstr("yaml"));
}

TEST(ConfigTest, UnknownFieldIsNamedWithItsPosition) {
  std::string e = ErrorOf(R"(applications:
  - name: a
    deployments:
      - name: D
        import_path: builtin:echo
        num_replica: 2
)");
  EXPECT_THAT(e, HasSubstr("cfg.yaml:6:9: applications[0].deployments[0].num_replica: unknown field"));
  EXPECT_THAT(e, HasSubstr("num_replicas"));  // the list of what was expected
}

TEST(ConfigTest, TextThatIsNotUtf8IsRejectedWhereItIs) {
  // Raw bytes (found by fuzz_config: the JSON the node writes back of such a config threw), ...
  std::string e =
      ErrorOf("applications:\n  - name: \x9b\x9c\n    deployments: [{name: D, import_path: builtin:echo}]\n");
  EXPECT_THAT(e, HasSubstr("cfg.yaml:2:11: applications[0].name: not valid UTF-8 (byte 0 is 0x9b)"));
  // ... in user_config, cut short ...
  e = ErrorOf(
      "applications:\n  - name: a\n    deployments:\n      - name: D\n        import_path: builtin:echo\n"
      "        user_config: {text: [ok, \"caf\xc3\"]}\n");
  EXPECT_THAT(e, HasSubstr("cfg.yaml:6:34: applications[0].deployments[0].user_config.text[1]: not valid UTF-8 "
                           "(byte 3 is 0xc3)"));
  // ... in a key. (An escape cannot make a surrogate: YAML refuses "\ud800" itself.)
  EXPECT_THAT(ErrorOf("applications: [\"\\ud800\"]\n"), HasSubstr("cfg.yaml:1:"));
  e = ErrorOf("applications: []\n\xff: 1\n");
  EXPECT_THAT(e, HasSubstr("cfg.yaml:2:1: config: not valid UTF-8 (byte 0 is 0xff)"));
  // UTF-8 itself is fine.
  EXPECT_TRUE(
      ParseConfig("applications:\n  - name: caf\xc3\xa9\n    deployments: [{name: D, import_path: builtin:echo}]\n",
                  "cfg.yaml", "/tmp", Builtins())
          .ok());
}

TEST(ConfigTest, WrongTypeSaysWhatWasExpected) {
  std::string e = ErrorOf(R"(applications:
  - name: a
    deployments:
      - name: D
        import_path: builtin:echo
        num_replicas: two
        max_ongoing_requests: 0
        graceful_shutdown_timeout_s: "5"
)");
  EXPECT_THAT(
      e, HasSubstr("cfg.yaml:6:23: applications[0].deployments[0].num_replicas: expected an integer, got \"two\""));
  EXPECT_THAT(e, HasSubstr("max_ongoing_requests: expected an integer from 1 to"));
  EXPECT_THAT(e, HasSubstr("graceful_shutdown_timeout_s: expected a number"));
}

TEST(ConfigTest, DuplicatesAreRejected) {
  std::string e = ErrorOf(R"(applications:
  - name: a
    route_prefix: /x
    deployments:
      - {name: D, import_path: "builtin:echo"}
      - {name: D, import_path: "builtin:echo"}
  - name: a
    route_prefix: /x
    deployments:
      - {name: E, import_path: "builtin:echo"}
)");
  EXPECT_THAT(e, HasSubstr("duplicate deployment name \"D\""));
  EXPECT_THAT(e, HasSubstr("cfg.yaml:7:5: applications[1].name: duplicate application name \"a\""));
  EXPECT_THAT(e, HasSubstr("cfg.yaml:8:19: applications[1].route_prefix: duplicate route_prefix \"/x\""));
}

TEST(ConfigTest, DuplicateYamlKeyIsRejected) {
  std::string e = ErrorOf(R"(applications:
  - name: a
    name: b
    deployments: [{name: D, import_path: "builtin:echo"}]
)");
  EXPECT_THAT(e, HasSubstr("applications[0].name: duplicate field"));
}

TEST(ConfigTest, BadRoutePrefixesAreRejected) {
  for (const char* p : {"echo", "/echo/", "/-/x", "/a b"}) {
    std::string yaml = std::string("applications:\n  - name: a\n    route_prefix: \"") + p +
                       "\"\n    deployments: [{name: D, import_path: \"builtin:echo\"}]\n";
    EXPECT_THAT(ErrorOf(yaml), HasSubstr("route_prefix: expected a path")) << p;
  }
}

TEST(ConfigTest, ImportPathsAreChecked) {
  std::string e = ErrorOf(R"(applications:
  - name: a
    deployments:
      - {name: A, import_path: "builtin:nope"}
      - {name: B, import_path: "no-colon"}
      - {name: C, import_path: "./missing.so:Model"}
      - {name: E}
)");
  EXPECT_THAT(e, HasSubstr("no built-in deployment named \"nope\""));
  EXPECT_THAT(e, HasSubstr("expected \"builtin:NAME\", \"torchscript:PATH\", \"xgboost:PATH\" or "
                           "\"path/to/lib.so:ClassName\", got \"no-colon\""));
  EXPECT_THAT(e, HasSubstr("plugin file not found: /tmp/missing.so"));
  EXPECT_THAT(e, HasSubstr("deployments[3].import_path: required"));
}

TEST(ConfigTest, ModelRuntimesAndModelNames) {
  std::string model = std::filesystem::path(::testing::TempDir() + "/model.pt").lexically_normal().string();
  std::ofstream(model) << "weights";
  ValidationHooks hooks = Builtins();
  hooks.runtime_library = [](std::string_view name) -> std::string {
    return name == "torchscript" ? "/opt/ferry/lib/libferry_runtime_torchscript.so" : "";
  };
  auto config = ParseConfig(
      "applications:\n  - name: a\n    deployments:\n"
      "      - {name: M, import_path: \"torchscript:" +
          model +
          "\"}\n"
          "      - {name: P, import_path: \"builtin:echo\", args: {model_name: p, model_version: 3}}\n"
          "      - {name: Q, import_path: \"builtin:echo\"}\n",
      "cfg.yaml", "/tmp", hooks);
  ASSERT_TRUE(config.ok()) << config.status();
  const auto& ds = config->applications[0].deployments;
  EXPECT_EQ(ds[0].kind, DeploymentConfig::Kind::kRuntime);
  EXPECT_EQ(ds[0].runtime, "torchscript");
  EXPECT_EQ(ds[0].symbol, "TorchScript");
  EXPECT_EQ(ds[0].model_path, model);
  EXPECT_EQ(ds[0].plugin_path, "/opt/ferry/lib/libferry_runtime_torchscript.so");
  EXPECT_EQ(ds[0].model_name, "M");  // a model runtime is served under its deployment's name
  EXPECT_EQ(ds[0].ResolvedImportPath(), "torchscript:" + model);
  EXPECT_EQ(ds[1].model_name, "p");
  EXPECT_EQ(ds[1].model_version, "3");
  EXPECT_EQ(ds[2].model_name, "");  // not a model
  // It round-trips through ToJson like every config.
  auto again = ParseConfig(ToJson(*config).dump(), "json", "/", hooks);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->applications[0].deployments[0].model_path, model);

  std::string e = ErrorOf(
      "applications:\n  - name: a\n    route_prefix: /v2/x\n    deployments:\n"
      "      - {name: M, import_path: \"xgboost:" +
          model +
          "\"}\n"
          "      - {name: N, import_path: \"torchscript:missing.pt\"}\n"
          "  - name: b\n    route_prefix: /b\n    deployments:\n"
          "      - {name: O, import_path: \"torchscript:" +
          model +
          "\", args: {model_name: M}}\n"
          "      - {name: R, import_path: \"torchscript:\"}\n"
          "      - {name: S, import_path: \"builtin:echo\", args: {model_name: \"a/b\"}}\n",
      hooks);
  EXPECT_THAT(
      e, HasSubstr("route_prefix: expected a path starting with '/', without a trailing '/', not under /-/ or /v2"));
  EXPECT_THAT(e,
              HasSubstr("cfg.yaml:5:32: applications[0].deployments[0].import_path: this ferry was built without the "
                        "xgboost runtime (libxgboost was not found when it was built)"));
  EXPECT_THAT(e, HasSubstr("deployments[1].import_path: model file not found: /tmp/missing.pt"));
  EXPECT_THAT(e, HasSubstr("cfg.yaml:10:9: applications[1].deployments[0]: model name \"M\" is already served by a/M; "
                           "set args.model_name to tell them apart"));
  EXPECT_THAT(e, HasSubstr("deployments[1].import_path: expected torchscript:PATH to a model file"));
  EXPECT_THAT(e, HasSubstr("deployments[2].args.model_name: expected a non-empty name without '/'"));
}

TEST(ConfigTest, PluginCheckHookErrorsAreReported) {
  std::string lib = ::testing::TempDir() + "/fake_plugin.so";
  std::ofstream(lib) << "not really a library";
  ValidationHooks hooks = Builtins();
  hooks.check_plugin = [](const std::string& path, const std::string& symbol) {
    return absl::InvalidArgumentError("symbol ferry_deployment_" + symbol + " not found");
  };
  std::string yaml =
      "applications:\n  - name: a\n    deployments:\n      - {name: A, import_path: \"" + lib + ":Model\"}\n";
  std::string e = ErrorOf(yaml, hooks);
  EXPECT_THAT(
      e,
      HasSubstr("cfg.yaml:4:32: applications[0].deployments[0].import_path: symbol ferry_deployment_Model not found"));
  // The real check, in a child process, on a file that is not a shared library.
  absl::Status s = CheckPluginInChildProcess(lib, "Model");
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("cannot load plugin"));
}

TEST(ConfigTest, ReportsEveryErrorAtOnce) {
  std::string e = ErrorOf(R"(http_options: {port: 70000, bogus: 1}
applications:
  - name: a
    ingress: Nope
    deployments: [{name: D, import_path: "builtin:echo", max_queued_requests: -2}]
)");
  EXPECT_THAT(e, HasSubstr("http_options.port: expected an integer from 0 to 65535"));
  EXPECT_THAT(e, HasSubstr("http_options.bogus: unknown field"));
  EXPECT_THAT(e, HasSubstr("applications[0].ingress: no deployment named \"Nope\""));
  EXPECT_THAT(e, HasSubstr("max_queued_requests: expected an integer from -1"));
}

TEST(ConfigTest, EmptyOrMissingApplications) {
  EXPECT_THAT(ErrorOf(""), HasSubstr("expected a mapping"));
  EXPECT_THAT(ErrorOf("http_options: {}\n"), HasSubstr("applications: required"));
  EXPECT_THAT(ErrorOf("applications: 3\n"), HasSubstr("applications: required: a list"));
  // An empty list is Ray's way to start an empty node or remove every application.
  auto empty = config::ParseConfig("applications: []\n", "test.yaml", "/tmp");
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(empty->applications.empty());
  EXPECT_THAT(ErrorOf("- 1\n- 2\n"), HasSubstr("expected a mapping"));
}

TEST(ConfigTest, LoadConfigFileResolvesPluginsNextToTheFile) {
  std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) / "cfgdir";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "lib.so") << "x";
  std::ofstream(dir / "c.yaml")
      << "applications:\n  - name: a\n    deployments: [{name: A, import_path: \"lib.so:M\"}]\n";
  auto c = LoadConfigFile((dir / "c.yaml").string(), Builtins());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->applications[0].deployments[0].plugin_path, (dir / "lib.so").string());
  EXPECT_EQ(c->applications[0].deployments[0].symbol, "M");
  EXPECT_FALSE(LoadConfigFile((dir / "absent.yaml").string()).ok());
}

TEST(ConfigTest, LoggingConfigCascadesFromTopToApplicationToDeployment) {
  auto c = ParseConfig(R"(
logging_config: {encoding: JSON, log_level: WARNING}
applications:
  - name: a
    route_prefix: /a
    deployments:
      - {name: Inherits, import_path: builtin:echo}
      - name: Own
        import_path: builtin:echo
        logging_config: {log_level: DEBUG}
  - name: b
    route_prefix: /b
    logging_config: {enable_access_log: false, encoding: TEXT, log_level: CRITICAL}
    deployments:
      - {name: FromApp, import_path: builtin:echo}
  - name: c
    route_prefix: /c
    deployments:
      - {name: FromTop, import_path: builtin:echo}
)",
                       "cfg.yaml", "/tmp", Builtins());
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(c->logging_config.has_value());
  EXPECT_EQ(c->logging_config->encoding, LogEncoding::kJson);
  EXPECT_EQ(c->logging_config->log_level, LogLevel::kWarning);
  EXPECT_TRUE(c->logging_config->enable_access_log);
  const auto& a = c->applications[0];
  EXPECT_EQ(a.deployments[0].logging, *c->logging_config);
  // A deployment's logging_config replaces the one above it whole: its unset fields are the defaults.
  EXPECT_EQ(a.deployments[1].logging.log_level, LogLevel::kDebug);
  EXPECT_EQ(a.deployments[1].logging.encoding, LogEncoding::kText);
  const auto& b = c->applications[1].deployments[0].logging;
  EXPECT_FALSE(b.enable_access_log);
  EXPECT_EQ(b.log_level, LogLevel::kError);
  EXPECT_EQ(c->applications[2].deployments[0].logging, *c->logging_config);
  // What is written survives the round trip through JSON (how the controller stores it).
  auto again = ParseConfig(ToJson(*c).dump(), "stored", "/tmp", Builtins());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(ToJson(*again), ToJson(*c));
  EXPECT_EQ(again->applications[1].deployments[0].logging, b);
  EXPECT_FALSE(again->applications[0].logging_config.has_value());
}

TEST(ConfigTest, TracingIsReadAndChecked) {
  auto c = ParseConfig(R"(
tracing: {otlp_endpoint: "http://127.0.0.1:4318/v1/traces"}
applications:
  - name: a
    deployments: [{name: D, import_path: builtin:echo}]
)",
                       "cfg.yaml", "/tmp", Builtins());
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(c->tracing.has_value());
  EXPECT_EQ(c->tracing->otlp_endpoint, "http://127.0.0.1:4318/v1/traces");
  EXPECT_EQ(c->tracing->sampling_ratio, 0.01);  // Ray Serve's tracing samples 1% by default
  auto again = ParseConfig(ToJson(*c).dump(), "stored", "/tmp", Builtins());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->tracing, c->tracing);

  std::string e = ErrorOf(R"(
tracing:
  otlp_endpoint: https://collector:4318/v1/traces
  sampling_ratio: 2
  export: fast
logging_config:
  encoding: XML
  log_level: LOUD
  enable_access_log: sometimes
applications:
  - name: a
    deployments: [{name: D, import_path: builtin:echo, logging_config: {log_dir: /tmp}}]
)");
  EXPECT_THAT(e, HasSubstr("cfg.yaml:3:18: tracing.otlp_endpoint: https is not supported"));
  EXPECT_THAT(e, HasSubstr("cfg.yaml:4:19: tracing.sampling_ratio: expected a number from 0 to 1"));
  EXPECT_THAT(e, HasSubstr("cfg.yaml:5:3: tracing.export: unknown field"));
  EXPECT_THAT(e, HasSubstr("cfg.yaml:7:13: logging_config.encoding: expected TEXT or JSON, got \"XML\""));
  EXPECT_THAT(e,
              HasSubstr("cfg.yaml:8:14: logging_config.log_level: expected DEBUG, INFO, WARNING, ERROR or CRITICAL"));
  EXPECT_THAT(e, HasSubstr("cfg.yaml:9:22: logging_config.enable_access_log: expected true or false"));
  EXPECT_THAT(e, HasSubstr("applications[0].deployments[0].logging_config.log_dir: unknown field"));
  EXPECT_THAT(ErrorOf("tracing: {sampling_ratio: 1}\napplications: [{name: a, deployments: [{name: D, import_path: "
                      "builtin:echo}]}]\n"),
              HasSubstr("cfg.yaml:1:10: tracing.otlp_endpoint: required"));
}

}  // namespace
}  // namespace ferry::config
