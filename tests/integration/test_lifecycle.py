"""Operating a node like Ray Serve: deploy, update in place, rolling update and rollback under load with
zero failed requests, failed deploys that keep the old version serving, health-check replacement, a
daemon that survives kill -9 of itself, invalid configs that change nothing, and the admin token."""
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import unittest

import requests

from harness import FERRY_BIN, Ferry, free_port, wait_until


def ferry_cli(address, *args, token=None, timeout=60):
    env = dict(os.environ)
    env.pop("FERRY_ADMIN_TOKEN", None)
    if token:
        env["FERRY_ADMIN_TOKEN"] = token
    return subprocess.run([FERRY_BIN, *args, "--address", address], capture_output=True, text=True,
                          timeout=timeout, env=env)


def write(dir, name, text):
    path = os.path.join(dir, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def read(path):
    with open(path) as f:
        return f.read()


def gone(pid):
    """True once the process has exited, every thread of it: its descriptors (listeners above all) are closed.
    A killed multi-threaded process's main thread turns zombie while its other threads may still be exiting
    and holding the descriptor table, so a zombie counts as gone only once it is the last task left."""
    try:
        if read(f"/proc/{pid}/stat").split()[2] != "Z":
            return False
        return len(os.listdir(f"/proc/{pid}/task")) <= 1
    except FileNotFoundError:
        return True


def status(address, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"{address}/api/serve/applications/", headers=headers, timeout=10).json()


def app_status(address, app):
    return status(address)["applications"].get(app, {}).get("status")


def open_sockets(pid):
    """The socket inodes among a process's open descriptors."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target)
    return inodes


def replica_ids(address, app, deployment):
    d = status(address)["applications"][app]["deployments"][deployment]
    return sorted(r["replica_id"] for r in d["replicas"] if r["state"] != "STOPPING")


class Load:
    """A bounded load: a few threads sending requests until stopped (or 2,000 requests / 120 s each),
    counting every response by status."""

    def __init__(self, url, threads=4):
        self.url = url
        self.codes = {}
        self.errors = []
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self):
        deadline = time.time() + 120
        with requests.Session() as s:
            for _ in range(2000):
                if self.stop_flag.is_set() or time.time() > deadline:
                    return
                try:
                    code = s.get(self.url, timeout=30).status_code
                except requests.RequestException as e:
                    code = "exception"
                    self.errors.append(repr(e))
                with self.lock:
                    self.codes[code] = self.codes.get(code, 0) + 1

    def __enter__(self):
        for t in self.threads:
            t.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=60)

    def total(self):
        return sum(self.codes.values())


V1 = """
applications:
  - name: app
    route_prefix: /app
    deployments:
      - name: Model
        import_path: builtin:echo
        num_replicas: 2
        max_ongoing_requests: 10
        health_check_period_s: 0.2
        graceful_shutdown_timeout_s: 5
        args: {version: 1}
"""


class LifecycleTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.ferry = Ferry(V1)
        self.address = self.ferry.admin
        self.url = self.ferry.url("/app")

    def tearDown(self):
        code = self.ferry.stop()
        self.ferry.close()
        self.dir.cleanup()
        self.assertEqual(code, 0)

    def deploy(self, text):
        r = ferry_cli(self.address, "deploy", write(self.dir.name, "c.yaml", text))
        self.assertEqual(r.returncode, 0, r.stderr)
        return r

    def wait_running(self, app="app"):
        wait_until(lambda: app_status(self.address, app) == "RUNNING", what=f"{app} RUNNING")

    def test_status_and_config_commands(self):
        r = ferry_cli(self.address, "status")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("app:", r.stdout)
        self.assertIn('status: "RUNNING"', r.stdout)
        self.assertIn("Model:", r.stdout)
        self.assertIn('status: "HEALTHY"', r.stdout)
        self.assertIn('RUNNING: 2', r.stdout)
        r = ferry_cli(self.address, "config")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('import_path: "builtin:echo"', r.stdout)
        full = status(self.address)
        self.assertEqual(full["applications"]["app"]["deployed_app_config"]["route_prefix"], "/app")
        self.assertEqual(len(full["applications"]["app"]["deployments"]["Model"]["replicas"]), 2)

    def test_same_config_twice_changes_nothing(self):
        before = replica_ids(self.address, "app", "Model")
        self.deploy(V1)
        time.sleep(1)
        self.assertEqual(replica_ids(self.address, "app", "Model"), before)
        history = requests.get(f"{self.address}/api/ferry/history", timeout=10).json()
        self.assertEqual(history.get("app", []), [])

    def test_update_in_place_then_rolling_update_then_rollback_under_load(self):
        before = replica_ids(self.address, "app", "Model")
        with Load(self.url) as load:
            # In place: user_config through reconfigure(), more replicas; the existing ones stay.
            self.deploy(V1.replace("args: {version: 1}", "args: {version: 1}\n        user_config: {delay_ms: 1}")
                          .replace("num_replicas: 2", "num_replicas: 3"))
            wait_until(lambda: len(replica_ids(self.address, "app", "Model")) == 3 and
                       app_status(self.address, "app") == "RUNNING", what="3 replicas")
            after_in_place = replica_ids(self.address, "app", "Model")
            self.assertTrue(set(before) <= set(after_in_place), (before, after_in_place))
            self.assertIn("reconfigured in place", self.ferry.stderr())
            # New version: args changed, so every replica is replaced, new before old.
            self.deploy(V1.replace("args: {version: 1}", "args: {version: 2}"))
            wait_until(lambda: app_status(self.address, "app") == "RUNNING" and
                       not set(replica_ids(self.address, "app", "Model")) & set(after_in_place), what="rolled out")
            v2 = replica_ids(self.address, "app", "Model")
            self.assertEqual(len(v2), 2)
            # Rollback returns to the previous config (3 replicas, user_config): a new version again.
            r = ferry_cli(self.address, "rollback", "app")
            self.assertEqual(r.returncode, 0, r.stderr)
            wait_until(lambda: len(replica_ids(self.address, "app", "Model")) == 3 and
                       app_status(self.address, "app") == "RUNNING", what="rolled back")
            time.sleep(0.5)
        self.assertGreater(load.total(), 100)
        self.assertEqual(list(load.codes.keys()), [200], (load.codes, load.errors[:3]))
        config = json.loads(json.dumps(status(self.address)["applications"]["app"]["deployed_app_config"]))
        self.assertEqual(config["deployments"][0]["args"], {"version": 1})
        self.assertEqual(config["deployments"][0]["num_replicas"], 3)

    def test_constructor_failure_keeps_the_old_version_serving(self):
        before = replica_ids(self.address, "app", "Model")
        with Load(self.url, threads=2) as load:
            self.deploy(V1.replace("args: {version: 1}",
                                   "args: {fail_constructor: \"weights are corrupt\"}\n        max_constructor_retry_count: 2"))
            wait_until(lambda: app_status(self.address, "app") == "DEPLOY_FAILED", what="DEPLOY_FAILED")
            time.sleep(0.5)
        s = status(self.address)["applications"]["app"]
        self.assertIn("weights are corrupt", s["message"])
        self.assertEqual(s["deployments"]["Model"]["status"], "DEPLOY_FAILED")
        self.assertEqual(replica_ids(self.address, "app", "Model"), before)
        self.assertEqual(list(load.codes.keys()), [200], load.codes)
        # A good config recovers it.
        self.deploy(V1.replace("args: {version: 1}", "args: {version: 3}"))
        self.wait_running()

    def test_a_constructor_that_always_throws_fails_after_three_tries_per_replica(self):
        # Ray's rule: min(max_constructor_retry_count (20), 3 x target replicas) failed starts.
        self.deploy(V1.replace("args: {version: 1}", "args: {fail_constructor: \"no weights\"}")
                    .replace("num_replicas: 2", "num_replicas: 1"))
        wait_until(lambda: app_status(self.address, "app") == "DEPLOY_FAILED", timeout=60, what="DEPLOY_FAILED")
        self.assertIn("failed to start after 3 attempts", status(self.address)["applications"]["app"]["message"])

    def test_replica_that_never_gets_ready_in_time_fails_the_deploy(self):
        before = replica_ids(self.address, "app", "Model")
        self.deploy(V1.replace("args: {version: 1}", "args: {constructor_delay_s: 30}\n"
                               "        startup_timeout_s: 0.5\n        max_constructor_retry_count: 1"))
        wait_until(lambda: app_status(self.address, "app") == "DEPLOY_FAILED", what="DEPLOY_FAILED")
        self.assertIn("did not become ready within startup_timeout_s (0.5 s)", status(self.address)["applications"]["app"]["message"])
        self.assertEqual(replica_ids(self.address, "app", "Model"), before)
        self.assertEqual(requests.get(self.url, timeout=10).status_code, 200)

    def test_replica_that_starts_failing_health_checks_is_replaced(self):
        self.deploy(V1.replace("num_replicas: 2", "num_replicas: 1"))
        wait_until(lambda: len(replica_ids(self.address, "app", "Model")) == 1, what="1 replica")
        first = replica_ids(self.address, "app", "Model")
        # user_config reaches the running replica, which then fails its checks: out of routing, replaced.
        self.deploy(V1.replace("num_replicas: 2", "num_replicas: 1").replace(
            "args: {version: 1}", "args: {version: 1}\n        user_config: {healthy: false}"))
        wait_until(lambda: "failed 3 health checks in a row" in self.ferry.stderr(), what="health replacement")
        wait_until(lambda: status(self.address)["applications"]["app"]["deployments"]["Model"]["restarts"] >= 1,
                   what="a restart counted")
        d = status(self.address)["applications"]["app"]["deployments"]["Model"]
        self.assertGreaterEqual(d["health_check_failures"], 3)
        self.assertIn("unhealthy: user_config.healthy is false", self.ferry.stderr())
        wait_until(lambda: first[0] not in self.ferry.stderr().split("failed 3 health checks")[-1] or
                   replica_ids(self.address, "app", "Model") != first, what="a different replica")

    def test_invalid_configs_through_the_api_change_nothing(self):
        before = replica_ids(self.address, "app", "Model")
        bad = "applications:\n  - name: app\n    deployments:\n      - {name: Model, import_path: \"builtin:nope\", num_replicas: x}\n"
        r = ferry_cli(self.address, "deploy", write(self.dir.name, "bad.yaml", bad))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("400", r.stderr)
        self.assertIn("bad.yaml:4:", r.stderr)
        self.assertIn('no built-in deployment named "nope"', r.stderr)
        self.assertIn("num_replicas: expected an integer", r.stderr)
        r = requests.put(f"{self.address}/api/serve/applications/", data="applications: [", timeout=10)
        self.assertEqual(r.status_code, 400)
        self.assertTrue(r.json()["errors"])
        # Node-level settings that differ from the node's are not applied, with a warning; the
        # applications are (here: unchanged, so nothing restarts).
        r = requests.put(f"{self.address}/api/serve/applications/",
                         data=V1 + "http_options: {port: 1}\n", timeout=10)
        self.assertEqual(r.status_code, 200, r.text)
        self.assertIn("http_options", r.json()["warnings"][0])
        self.assertEqual(replica_ids(self.address, "app", "Model"), before)
        self.assertEqual(app_status(self.address, "app"), "RUNNING")
        r = requests.post(f"{self.address}/api/ferry/applications/nope/rollback", timeout=10)
        self.assertEqual(r.status_code, 404)
        r = requests.post(f"{self.address}/api/ferry/applications/app/rollback", timeout=10)
        self.assertEqual(r.status_code, 409)  # no previous config yet

    def test_deleting_applications(self):
        self.deploy(V1 + """  - name: other
    route_prefix: /other
    deployments: [{name: O, import_path: "builtin:echo"}]
""")
        self.wait_running("other")
        self.assertEqual(requests.get(self.ferry.url("/other"), timeout=10).status_code, 200)
        self.deploy(V1)  # "other" left out: deleted
        wait_until(lambda: "other" not in status(self.address)["applications"], what="other deleted")
        self.assertEqual(requests.get(self.ferry.url("/other"), timeout=10).status_code, 404)
        r = requests.delete(f"{self.address}/api/serve/applications/", timeout=10)
        self.assertEqual(r.status_code, 200)
        wait_until(lambda: not status(self.address)["applications"], what="everything deleted")
        self.assertEqual(requests.get(self.url, timeout=10).status_code, 404)


class DaemonTest(unittest.TestCase):
    def test_start_deploy_kill_restart_restores(self):
        with tempfile.TemporaryDirectory() as d:
            state = os.path.join(d, "state")
            http_port, admin_port = free_port(), free_port()
            address = f"http://127.0.0.1:{admin_port}"
            start = [FERRY_BIN, "start", "--state-dir", state, "--http-port", str(http_port),
                     "--admin-port", str(admin_port)]
            r = subprocess.run(start, capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("node started", r.stdout)
            pid = int(read(os.path.join(state, "ferry.pid")))
            try:
                r = ferry_cli(address, "deploy", write(d, "c.yaml", V1))
                self.assertEqual(r.returncode, 0, r.stderr)
                wait_until(lambda: app_status(address, "app") == "RUNNING", what="deployed")
                self.assertEqual(requests.get(f"http://127.0.0.1:{http_port}/app", timeout=10).status_code, 200)
                # Replicas hold none of the node's sockets (its listeners above all): a node restarted while
                # they are still dying can bind its ports again, and nothing it accepted lives on in them.
                pids = [r["pid"] for r in status(address)["applications"]["app"]["deployments"]["Model"]["replicas"]]
                self.assertTrue(pids)
                node_sockets = open_sockets(pid)
                for replica_pid in pids:
                    self.assertEqual(open_sockets(replica_pid) & node_sockets, set(), f"replica pid {replica_pid}")
                # A crash: the node and (through PR_SET_PDEATHSIG) its replicas die.
                os.kill(pid, signal.SIGKILL)
                wait_until(lambda: gone(pid), what="node gone")
                r = subprocess.run(start, capture_output=True, text=True, timeout=60)
                self.assertEqual(r.returncode, 0, r.stderr)
                pid = int(read(os.path.join(state, "ferry.pid")))
                wait_until(lambda: app_status(address, "app") == "RUNNING", what="restored")
                self.assertEqual(requests.get(f"http://127.0.0.1:{http_port}/app", timeout=10).status_code, 200)
                self.assertIn("restoring 1 applications", read(os.path.join(state, "ferry.log")))
                # A second node on the same state directory is refused.
                r = subprocess.run(start, capture_output=True, text=True, timeout=60)
                self.assertNotEqual(r.returncode, 0)
                self.assertIn("already runs", r.stderr)
            finally:
                r = ferry_cli(address, "shutdown")
                wait_until(lambda: gone(pid), timeout=60, what="node stopped")
            self.assertEqual(r.returncode, 0, r.stderr)


    def test_a_json_daemon_writes_only_json_lines_through_a_restart(self):
        with tempfile.TemporaryDirectory() as d:
            state = os.path.join(d, "state")
            http_port, admin_port = free_port(), free_port()
            address = f"http://127.0.0.1:{admin_port}"
            config = write(d, "c.yaml", "logging_config: {encoding: JSON}\n" + V1)
            start = [FERRY_BIN, "start", config, "--state-dir", state, "--http-port", str(http_port),
                     "--admin-port", str(admin_port)]
            r = subprocess.run(start, capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("ferry: ready", r.stdout)  # the operator still sees the ready lines
            pid = int(read(os.path.join(state, "ferry.pid")))
            try:
                wait_until(lambda: app_status(address, "app") == "RUNNING", what="deployed")
                requests.get(f"http://127.0.0.1:{http_port}/app", headers={"x-echo-print": "printed"}, timeout=10)
                # The node logs what a replica prints as it reads the pipe: wait for the line before the kill
                # (on a loaded machine the kill could come first, and that line would never be read).
                wait_until(lambda: '"printed"' in read(os.path.join(state, "ferry.log")), timeout=30,
                           what="the replica's printed line in the log")
                os.kill(pid, signal.SIGKILL)
                wait_until(lambda: gone(pid), what="node gone")
                restart = [a for a in start if a != config]  # restores what it ran, in its encoding
                r = subprocess.run(restart, capture_output=True, text=True, timeout=60)
                self.assertEqual(r.returncode, 0, r.stderr)
                pid = int(read(os.path.join(state, "ferry.pid")))
                wait_until(lambda: app_status(address, "app") == "RUNNING", what="restored")
            finally:
                r = ferry_cli(address, "shutdown")
                wait_until(lambda: gone(pid), timeout=60, what="node stopped")
            lines = [json.loads(line) for line in read(os.path.join(state, "ferry.log")).splitlines()]
            messages = [(j["component_name"], j["message"]) for j in lines]
            self.assertIn(("node", "ready"), messages)
            self.assertIn(("node", "stopped"), messages)
            self.assertIn(("stdout", "printed"), messages)
            self.assertIn(("controller", "restoring 1 applications from the state store"), messages)


class AdminAuthTest(unittest.TestCase):
    def test_off_loopback_without_a_token_is_refused(self):
        ferry = Ferry(V1, extra_args=["--admin-host", "0.0.0.0"], ready=False)
        try:
            self.assertNotEqual(ferry.wait_exit(30), 0)
            self.assertIn("without a token", ferry.stderr())
            self.assertNotIn("starting", ferry.stdout())
        finally:
            ferry.close()

    def test_token_is_required_when_configured(self):
        with tempfile.TemporaryDirectory() as d:
            token_file = write(d, "token", "s3cret-token\n")
            with Ferry(V1, extra_args=["--admin-token-file", token_file]) as ferry:
                r = requests.get(f"{ferry.admin}/api/serve/applications/", timeout=10)
                self.assertEqual(r.status_code, 401)
                self.assertEqual(r.headers["WWW-Authenticate"], "Bearer")
                r = requests.get(f"{ferry.admin}/api/serve/applications/",
                                 headers={"Authorization": "Bearer wrong"}, timeout=10)
                self.assertEqual(r.status_code, 401)
                self.assertEqual(status(ferry.admin, token="s3cret-token")["applications"]["app"]["status"], "RUNNING")
                r = ferry_cli(ferry.admin, "status")
                self.assertNotEqual(r.returncode, 0)
                self.assertIn("401", r.stderr)
                r = ferry_cli(ferry.admin, "status", token="s3cret-token")
                self.assertEqual(r.returncode, 0, r.stderr)



class NodeConfigTest(unittest.TestCase):
    """The node's own config file deploys again; empty configs; status without metrics; --address forms."""

    NODE = "http_options: {host: 127.0.0.1, port: 0, request_timeout_s: 30}\nadmin: {host: 127.0.0.1, port: 0}\n"

    def test_the_file_a_node_started_with_deploys_again_and_other_node_settings_warn(self):
        with tempfile.TemporaryDirectory() as d, Ferry(self.NODE + V1) as ferry:
            r = ferry_cli(ferry.admin, "deploy", ferry.config_path)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertNotIn("warning", r.stderr)
            # HOST:PORT without a scheme is an address too (Ray's --address takes both).
            r = ferry_cli(ferry.admin.removeprefix("http://"), "deploy", ferry.config_path)
            self.assertEqual(r.returncode, 0, r.stderr)
            r = ferry_cli("ftp://127.0.0.1:1", "status")
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("--address must look like HOST:PORT or http://HOST:PORT", r.stderr)
            other = write(d, "other.yaml", self.NODE.replace("request_timeout_s: 30", "request_timeout_s: 5")
                          .replace("admin: {host: 127.0.0.1, port: 0}", "admin: {host: 127.0.0.1, port: 9999}")
                          + V1.replace("version: 1", "version: 2"))
            r = ferry_cli(ferry.admin, "deploy", other)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("warning: http_options: the node serves with", r.stderr)
            self.assertIn("warning: admin: the admin API listens on", r.stderr)
            wait_until(lambda: "deploy: http_options" in ferry.stderr(), timeout=10, what="the warning logged")
            wait_until(lambda: status(ferry.admin)["applications"]["app"]["deployed_app_config"]["deployments"][0]
                       ["args"] == {"version": 2}, timeout=30, what="the applications deployed")
            # The node keeps serving with its own settings.
            self.assertEqual(requests.get(ferry.url("/app"), timeout=10).status_code, 200)

    def test_an_empty_application_list_starts_an_empty_node_and_removes_every_application(self):
        with tempfile.TemporaryDirectory() as d, Ferry("applications: []\n") as ferry:
            self.assertEqual(status(ferry.admin)["applications"], {})
            self.assertEqual(requests.get(ferry.url("/app"), timeout=10).status_code, 404)
            r = ferry_cli(ferry.admin, "deploy", write(d, "v1.yaml", V1))
            self.assertEqual(r.returncode, 0, r.stderr)
            wait_until(lambda: app_status(ferry.admin, "app") == "RUNNING", what="app RUNNING")
            r = ferry_cli(ferry.admin, "deploy", write(d, "none.yaml", "applications: []\n"))
            self.assertEqual(r.returncode, 0, r.stderr)
            wait_until(lambda: status(ferry.admin)["applications"] == {}, what="every application removed")

    def test_status_of_a_node_without_metrics_shows_what_it_can(self):
        with Ferry(V1, extra_args=["--no-metrics"]) as ferry:
            r = ferry_cli(ferry.admin, "status")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn('status: "RUNNING"', r.stdout)
            self.assertIn("off: the node runs with --no-metrics", r.stdout)
            self.assertIn("ongoing_requests: 0", r.stdout)

    def test_with_json_logs_every_line_ferry_run_prints_is_json(self):
        with Ferry("logging_config: {encoding: JSON}\n" + V1) as ferry:
            self.assertEqual(requests.get(ferry.url("/app"), timeout=10).status_code, 200)
            code = ferry.stop()
            self.assertEqual(code, 0)
            lines = [line for line in ferry.stdout().splitlines() + ferry.stderr().splitlines() if line.strip()]
            self.assertTrue(lines)
            for line in lines:
                self.assertTrue(line.startswith("{"), f"not JSON: {line!r}")
                json.loads(line)
            messages = [json.loads(line)["message"] for line in ferry.stdout().splitlines()]
            self.assertIn("ready", messages)
            self.assertTrue(any(m.startswith("starting app/Model: ") for m in messages), messages)
            self.assertIn("stopped", messages)


if __name__ == "__main__":
    unittest.main()
