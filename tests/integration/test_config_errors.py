"""A bad config exits non-zero before starting anything, naming file:line:column, the field, and what
was expected."""
import os
import tempfile
import unittest

from harness import run_ferry


class ConfigErrorTest(unittest.TestCase):
    def run_config(self, text):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "bad.yaml")
            with open(path, "w") as f:
                f.write(text)
            r = run_ferry(["run", path, "--http-port", "0"])
            self.assertNotEqual(r.returncode, 0)
            self.assertNotIn("listening on", r.stdout)
            self.assertNotIn("starting", r.stdout)  # no replica was started
            self.assertIn("nothing was started", r.stderr)
            return r.stderr.replace(path, "bad.yaml")

    def test_yaml_syntax(self):
        err = self.run_config("applications:\n  - name: a\n    deployments: [unclosed\n")
        self.assertRegex(err, r"bad\.yaml:\d+:\d+: yaml: ")

    def test_unknown_field(self):
        err = self.run_config("""applications:
  - name: a
    deployments:
      - name: D
        import_path: builtin:echo
        max_ongoing: 3
""")
        self.assertIn("bad.yaml:6:9: applications[0].deployments[0].max_ongoing: unknown field; expected one of:", err)
        self.assertIn("max_ongoing_requests", err)

    def test_wrong_type(self):
        err = self.run_config("""http_options:
  port: eighty
applications:
  - name: a
    deployments:
      - {name: D, import_path: "builtin:echo", num_replicas: [1]}
""")
        self.assertIn('bad.yaml:2:9: http_options.port: expected an integer, got "eighty"', err)
        self.assertIn("applications[0].deployments[0].num_replicas: expected an integer, got a list", err)

    def test_duplicate_route_prefix_and_names(self):
        err = self.run_config("""applications:
  - name: a
    route_prefix: /same
    deployments: [{name: D, import_path: "builtin:echo"}]
  - name: a
    route_prefix: /same
    deployments: [{name: D, import_path: "builtin:echo"}, {name: D, import_path: "builtin:busy"}]
""")
        self.assertIn('bad.yaml:6:19: applications[1].route_prefix: duplicate route_prefix "/same"', err)
        self.assertIn('bad.yaml:5:5: applications[1].name: duplicate application name "a"', err)
        self.assertIn('applications[1].deployments[1].name: duplicate deployment name "D"', err)

    def test_missing_plugin_file(self):
        err = self.run_config("""applications:
  - name: a
    deployments:
      - {name: D, import_path: "libs/libmissing.so:Model"}
""")
        self.assertIn("bad.yaml:4:32: applications[0].deployments[0].import_path: plugin file not found:", err)
        self.assertIn("libs/libmissing.so", err)

    def test_unknown_builtin(self):
        err = self.run_config("""applications:
  - name: a
    deployments: [{name: D, import_path: "builtin:echoo"}]
""")
        self.assertIn('no built-in deployment named "echoo"', err)

    def test_missing_config_file(self):
        r = run_ferry(["run", "/nonexistent/ferry.yaml"])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("/nonexistent/ferry.yaml: cannot read config file", r.stderr)

    def test_port_in_use_is_reported(self):
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        try:
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "ok.yaml")
                with open(path, "w") as f:
                    f.write('applications: [{name: a, deployments: [{name: D, import_path: "builtin:echo"}]}]\n')
                r = run_ferry(["run", path, "--http-port", str(port)])
                self.assertNotEqual(r.returncode, 0)
                self.assertIn(f"cannot listen on 127.0.0.1:{port}", r.stderr)
        finally:
            s.close()


if __name__ == "__main__":
    unittest.main()
