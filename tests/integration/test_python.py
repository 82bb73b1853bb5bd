"""Python deployments (Ray Serve's API, `from ferry import serve`) as a client sees them: Ray's config shape
(application-level import_path, args, runtime_env, deployments as overrides), HTTP answers of every kind,
composition and streams through handles, batching, multiplexing, user_config, FastAPI ingress, Python and
C++ deployments in one application, and what bad code gets."""
import json
import os
import re
import subprocess
import tempfile
import unittest
from concurrent.futures import ThreadPoolExecutor

import requests

from harness import BUILD_DIR, FERRY_BIN, Ferry, Prometheus, metric_samples, run_ferry, wait_until

APPS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyapps")
HAVE_PYTHON = os.path.exists(os.path.join(BUILD_DIR, "libferry_runtime_python.so"))


def python_app(name, attr, extra=""):
    """One application of basics.py at /NAME, as Ray's config shape writes it."""
    return (f"  - name: {name}\n    route_prefix: /{name}\n    import_path: basics:{attr}\n"
            f"    runtime_env: {{working_dir: \"{APPS}\"}}\n{extra}")


CONFIG = f"""
http_options: {{request_timeout_s: 60}}
applications:
  - name: greet
    route_prefix: /greet
    import_path: basics:greeter
    runtime_env: {{working_dir: "{APPS}", env_vars: {{GREETING_SOURCE: config}}}}
  - name: built
    route_prefix: /built
    import_path: basics:build_app
    args: {{greeting: Howdy}}
    runtime_env: {{working_dir: "{APPS}"}}
  - name: cpp_calls_python
    route_prefix: /cpp
    deployments:
      - {{name: Front, import_path: "builtin:call", args: {{next: {{deployment: Greeter, application: greet}}}}}}
""" + "".join([
    python_app("echo", "echo"),
    python_app("calc", "calculator", "    deployments:\n      - {name: Adder, num_replicas: 2}\n"),
    python_app("batch", "batcher"),
    python_app("models", "models"),
    python_app("conf", "configurable", "    deployments:\n      - {name: Configurable, user_config: {threshold: 7}, "
                                       "ray_actor_options: {num_cpus: 0.5, memory: 1000000}}\n"),
    python_app("api", "fastapi_app"),
    python_app("mixed", "to_echo", "    deployments:\n      - {name: CEcho, import_path: \"builtin:echo\"}\n"),
    python_app("hangs", "hangs"),
    python_app("waits", "waits"),
    python_app("placed", "placed_models"),
    python_app("counted", "counted"),
])


@unittest.skipUnless(HAVE_PYTHON, "this build has no python runtime")
class PythonDeploymentsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ferry = Ferry(CONFIG, timeout=120)

    @classmethod
    def tearDownClass(cls):
        cls.ferry.stop()
        cls.ferry.close()

    def get(self, path, **kw):
        return requests.get(self.ferry.url(path), timeout=60, **kw)

    def test_a_handler_answers_with_text_json_a_response_or_a_stream(self):
        r = self.get("/greet?name=Ferry")
        self.assertEqual((r.status_code, r.text), (200, "Hello, Ferry!"))
        self.assertTrue(r.headers["content-type"].startswith("text/plain"))
        r = self.get("/greet/sub/path?kind=json&name=x")
        self.assertEqual(r.json(), {"greeting": "Hello", "name": "x", "path": "/greet/sub/path"})
        r = self.get("/greet?kind=response")
        self.assertEqual((r.status_code, r.text, r.headers["x-kind"]), (418, "teapot", "response"))
        r = self.get("/greet?kind=stream&n=4")
        self.assertEqual(r.text, "part 0\npart 1\npart 2\npart 3\n")
        self.assertEqual(r.headers.get("transfer-encoding"), "chunked")
        r = self.get("/greet?kind=generator")
        self.assertEqual(r.text, "gen 0\ngen 1\ngen 2\n")

    def test_an_exception_is_a_500_naming_it_and_its_traceback_is_logged(self):
        r = self.get("/greet?kind=raise")
        self.assertEqual(r.status_code, 500)
        body = r.json()
        self.assertEqual(body["type"], "KeyError")
        self.assertIn("no such thing", body["message"])
        self.assertEqual(body["request_id"], r.headers["x-request-id"])
        self.ferry.wait_for(lambda: "raise KeyError" in self.ferry.stderr() + self.ferry.stdout(),
                            what="the traceback in the log")

    def test_python_logging_reaches_ferrys_log_with_the_request_id(self):
        r = self.get("/greet?kind=log&name=loggy")
        rid = r.headers["x-request-id"]
        logs = lambda: self.ferry.stderr() + self.ferry.stdout()  # noqa: E731
        self.ferry.wait_for(lambda: any("greeting loggy" in line and rid in line for line in logs().splitlines()),
                            what="the log line")

    def test_metrics_of_its_own_are_on_the_nodes_metrics_with_the_replicas_labels(self):
        for path in ("/counted?size=5", "/counted?size=50&kind=big", "/counted?size=500", "/counted/x?size=0.5"):
            self.assertEqual(self.get(path).text, "counted")
        # Ray's errors for a tag the metric does not declare and a counter that would go down: a 500 naming them.
        r = self.get("/counted?bad=tag")
        self.assertEqual((r.status_code, r.json()["type"]), (500, "ValueError"))
        self.assertIn("nope", r.json()["message"])
        r = self.get("/counted?bad=value")
        self.assertEqual((r.status_code, r.json()["type"]), (500, "ValueError"))

        def total(name, **want):
            return sum(v for labels, v in metric_samples(self.ferry, name)
                       if all(labels.get(k) == w for k, w in want.items()))
        # 5 plain requests (3 above, and the two that failed after counting); 1 big one, counted by 2.
        wait_until(lambda: total("basics_requests_total", kind="plain") == 5 and
                   total("basics_requests_total", kind="big") == 2, timeout=30, what="the counters")
        samples = metric_samples(self.ferry, "basics_requests_total")
        for labels, _ in samples:
            self.assertEqual((labels["application"], labels["deployment"], labels["route"]),
                             ("counted", "Counted", "/counted"))
            self.assertTrue(labels["replica"].startswith("counted#Counted#"), labels)
        wait_until(lambda: total("basics_size_count") == 6, timeout=30, what="the histogram")
        self.assertEqual(total("basics_size_bucket", le="1"), 3)    # 0.5 and the two bad ones (size 0)
        self.assertEqual(total("basics_size_bucket", le="10"), 4)   # and 5
        self.assertEqual(total("basics_size_bucket", le="100"), 5)  # and 50
        self.assertEqual(total("basics_size_bucket", le="+Inf"), 6)
        self.assertEqual(total("basics_size_sum"), 555.5)
        self.assertEqual(len(metric_samples(self.ferry, "basics_last_size")),
                         len({l["replica"] for l, _ in metric_samples(self.ferry, "basics_size_count")}))
        # A module-level metric, set at import: one series per replica of every deployment of that module's
        # applications that imported it.
        loaded = [l for l, v in metric_samples(self.ferry, "basics_module_loaded") if l["application"] == "counted"]
        self.assertEqual(len(loaded), 2, loaded)
        text = requests.get(self.ferry.admin + "/metrics", timeout=10).text
        self.assertIn("# HELP basics_requests_total Requests, by kind.\n# TYPE basics_requests_total counter", text)
        self.assertIn("# TYPE basics_size histogram", text)
        # The text with them is valid to Prometheus' own checker, and a real Prometheus scrapes and sums them.
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        with Prometheus(self.ferry) as prom:
            self.assertEqual(wait_until(lambda: prom.query('sum(basics_requests_total{application="counted"})'),
                                        60, "Prometheus to scrape the counter"), 7.0)
            self.assertEqual(wait_until(lambda: prom.query('sum(basics_size_bucket{le="10"})'), 60, "the histogram"),
                             4.0)

    def test_the_request_is_starlettes_with_body_json_and_headers(self):
        r = requests.post(self.ferry.url("/echo"), json={"a": [1, 2]}, headers={"x-custom": "v"}, timeout=60)
        body = r.json()
        self.assertEqual(body["method"], "POST")
        self.assertEqual(body["json"], {"a": [1, 2]})
        self.assertEqual(body["headers"]["x-custom"], "v")

    def test_a_client_cannot_send_pickled_arguments(self):
        # x-ferry-* headers are for calls between deployments; the proxy drops them from clients.
        # A pickle that would run code if loaded: it reaches __call__ as an HTTP request body instead.
        evil = b"cos\nsystem\n(S'touch /tmp/ferry-pwned'\ntR."
        r = requests.post(self.ferry.url("/greet?name=p"), data=evil, timeout=60,
                          headers={"x-ferry-args": "pickle", "x-ferry-caller": "evil", "x-ferry-method": "x"})
        self.assertEqual((r.status_code, r.text), (200, "Hello, p!"))
        self.assertFalse(os.path.exists("/tmp/ferry-pwned"))

    def test_handles_chain_responses_stream_and_carry_exceptions(self):
        self.assertEqual(self.get("/calc?x=5&op=chain").json(), {"result": 30})
        self.assertEqual(self.get("/calc?x=4&op=stream").json(), {"items": [0, 1, 2, 3]})
        self.assertEqual(self.get("/calc?x=2&op=sync").json(), {"result": 12})
        failed = self.get("/calc?op=fail").json()
        self.assertEqual(failed["caught"], "ValueError")
        self.assertEqual(failed["message"], "the adder cannot do that")
        self.assertTrue(any("calc/Adder" in n and "raise ValueError" in n for n in failed["notes"]), failed["notes"])
        r = self.get("/calc?op=ids")
        rid = r.headers["x-request-id"]
        ids = r.json()["ids"]
        self.assertEqual(len(set(ids)), 2)
        self.assertTrue(all(i.startswith(rid + ".") for i in ids), (rid, ids))

    def test_config_overrides_options_set_in_code(self):
        status = requests.get(self.ferry.admin + "/api/serve/applications/", timeout=10).json()
        adder = status["applications"]["calc"]["deployments"]["Adder"]
        self.assertEqual(len(adder["replicas"]), 2)
        self.assertEqual(self.get("/conf").json(), {"threshold": 7})
        # Ray's options without an effect on one node are accepted with a warning naming where they are.
        self.assertRegex(self.ferry.stderr(), r"warning: .*config\.yaml:\d+:\d+: applications\[7\]\.deployments\[0\]\."
                                              r"ray_actor_options\.memory: accepted; it places replicas in cluster mode and has no effect on a single node")

    def test_concurrent_calls_form_batches(self):
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: self.get(f"/batch?x={i}").json(), range(8)))
        self.assertEqual(sorted(a["x"] for a in answers), list(range(8)))
        self.assertGreater(max(a["batch_size"] for a in answers), 1, answers)
        self.assertLessEqual(max(a["batch_size"] for a in answers), 4, answers)

    def test_multiplexed_models_load_once_and_the_least_recently_used_is_evicted(self):
        h = lambda m: {"serve_multiplexed_model_id": m}  # noqa: E731
        self.assertEqual(self.get("/models", headers=h("a")).json(), {"model": "a", "loads": ["a"]})
        self.assertEqual(self.get("/models", headers=h("a")).json()["loads"], ["a"])
        self.get("/models", headers=h("b"))
        self.get("/models", headers=h("c"))  # evicts a (2 models per replica)
        self.assertEqual(self.get("/models", headers=h("a")).json()["loads"], ["a", "b", "c", "a"])

    def test_a_models_requests_go_to_the_replica_that_has_it_loaded(self):
        h = lambda m: {"serve_multiplexed_model_id": m}  # noqa: E731
        first = self.get("/placed", headers=h("m1")).json()
        self.assertEqual(first["model"], "m1")

        def holders(model):
            status = requests.get(self.ferry.admin + "/api/serve/applications/", timeout=10).json()
            replicas = status["applications"]["placed"]["deployments"]["PlacedModels"]["replicas"]
            return [r["pid"] for r in replicas if model in r.get("multiplexed_model_ids", [])]
        # The replica reports what it holds; the status shows it once the node has it (and routers too).
        wait_until(lambda: holders("m1") == [first["pid"]], timeout=30, what="m1 reported by its replica")
        pids = {self.get("/placed", headers=h("m1")).json()["pid"] for _ in range(20)}
        self.assertEqual(pids, {first["pid"]})
        # A model no replica holds goes to one holding the fewest (none): not the one that holds m1.
        self.assertNotEqual(self.get("/placed", headers=h("m2")).json()["pid"], first["pid"])

    def test_a_fastapi_ingress_serves_its_routes_under_the_route_prefix(self):
        self.assertEqual(self.get("/api/hello?name=you").json(), {"hello": "you!"})
        r = requests.post(self.ferry.url("/api/items/7"), json={"k": 1}, timeout=60)
        self.assertEqual(r.json(), {"item_id": 7, "body": {"k": 1}})
        self.assertEqual(self.get("/api/items/x").status_code, 405)  # FastAPI's own answer
        self.assertEqual(self.get("/api/nothing").status_code, 404)

    def test_a_fastapi_websocket_route_takes_sessions(self):
        import websocket  # python3-websocket
        ws = websocket.create_connection(self.ferry.url("/api/ws").replace("http://", "ws://"), timeout=30)
        ws.send("hello")
        self.assertEqual(ws.recv(), "HELLO!")
        ws.send("again")
        self.assertEqual(ws.recv(), "AGAIN!")
        ws.send("bye")  # the app closes with its own code
        opcode, data = ws.recv_data(control_frame=True)
        self.assertEqual((opcode, int.from_bytes(data[:2], "big")), (websocket.ABNF.OPCODE_CLOSE, 4000))
        ws.close()
        # A path with no websocket route is refused.
        with self.assertRaises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(self.ferry.url("/api/nows").replace("http://", "ws://"), timeout=30)
        self.assertEqual(refused.exception.status_code, 403)

    def test_websocket_sessions_that_end_leave_the_replica_whole(self):
        # The ASGI side closes after the app's own close, when the host's session may be gone already: the
        # replica must neither crash nor lose a request (it once did, about one session in five).
        import websocket  # python3-websocket

        def api_pids():
            status = requests.get(self.ferry.admin + "/api/serve/applications/", timeout=10).json()
            return [r["pid"] for r in status["applications"]["api"]["deployments"]["Api"]["replicas"]]
        before = api_pids()
        for i in range(15):
            ws = websocket.create_connection(self.ferry.url("/api/ws").replace("http://", "ws://"), timeout=30)
            ws.send(f"n{i}")
            self.assertEqual(ws.recv(), f"N{i}!")
            ws.send("bye")
            ws.recv_data(control_frame=True)
            ws.close()
            with self.assertRaises(websocket.WebSocketBadStatusException):
                websocket.create_connection(self.ferry.url("/api/nows").replace("http://", "ws://"), timeout=30)
            self.assertEqual(self.get("/api/hello?name=x").status_code, 200)
        self.assertEqual(api_pids(), before)
        self.assertNotIn("api#Api", "".join(l for l in self.ferry.stderr().splitlines() if "killed by signal" in l))

    def test_an_application_builder_gets_the_configs_args(self):
        self.assertEqual(self.get("/built?name=B").text, "Howdy, B!")

    def test_python_and_cpp_deployments_call_each_other(self):
        said = self.get("/mixed").json()["echo_said"]
        self.assertEqual(json.loads(said["body"]), {"from": "python"})
        self.assertEqual(said["headers"]["x-ferry-caller"], "mixed/ToEcho")
        # builtin:call forwards the client's request to the Python Greeter and nests its (text) answer.
        r = self.get("/cpp?name=cpp")
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual(r.json()["via"], "Front")
        self.assertEqual(r.json()["next"], "Hello, cpp!")

    def test_status_and_config_of_one_application_as_ray_prints_them(self):
        import yaml
        done = run_ferry(["status", "-n", "greet", "-a", self.ferry.admin])
        self.assertEqual(done.returncode, 0, done.stderr)
        status = yaml.safe_load(done.stdout)
        self.assertEqual((status["status"], list(status["deployments"])), ("RUNNING", ["Greeter"]))
        done = run_ferry(["config", "-n", "built", "--address", self.ferry.admin])
        config = yaml.safe_load(done.stdout)
        self.assertEqual((config["import_path"], config["args"]), ("basics:build_app", {"greeting": "Howdy"}))
        self.assertEqual(config["deployments"][0]["name"], "Built")
        self.assertNotEqual(run_ferry(["status", "-n", "nope", "-a", self.ferry.admin]).returncode, 0)

    def test_sync_code_that_never_returns_is_stopped_when_its_request_is_cancelled(self):
        # The client gives up after 1 s: the proxy cancels the request, and the replica raises
        # RequestCancelledError in the thread that spins. Its one slot (max_ongoing_requests: 1) comes back.
        with self.assertRaises(requests.exceptions.ReadTimeout):
            requests.get(self.ferry.url("/hangs?hang=1"), timeout=1)
        r = requests.get(self.ferry.url("/hangs"), timeout=60)
        self.assertEqual(r.status_code, 200, r.text)
        self.ferry.wait_for(lambda: "RequestCancelledError" in self.ferry.stderr() + self.ferry.stdout(),
                            what="the cancel in the log")

    def test_an_async_handler_is_cancelled_with_its_request_and_so_are_its_calls(self):
        logs = lambda: self.ferry.stderr() + self.ferry.stdout()  # noqa: E731
        with self.assertRaises(requests.exceptions.ReadTimeout):
            requests.get(self.ferry.url("/waits?tag=alone"), timeout=1)
        # (Logged on the asyncio loop: the line still carries the request's id, as a field.)
        self.ferry.wait_for(lambda: re.search(r"Waits alone was cancelled request_id=[0-9a-f]{32}", logs()),
                            what="the task's cancel")
        # Awaiting a call to a sync method that spins: the call is cancelled too, and the spinning thread
        # gets RequestCancelledError (the Spinner's one slot comes back: a second call is served).
        for tag in ("first", "second"):
            with self.assertRaises(requests.exceptions.ReadTimeout):
                requests.get(self.ferry.url(f"/waits?via=1&tag={tag}"), timeout=1)
            self.ferry.wait_for(lambda: f"Waits {tag} was cancelled" in logs(), what="the task's cancel")
        self.ferry.wait_for(lambda: len(re.findall(r"\[waits#Spinner#\S+\] ray\.serve: request \S+ failed:\n(?:.*\n){0,8}?"
                                                   r".*RequestCancelledError", logs())) >= 2, what="the callee's cancels")

    def test_a_health_check_that_hangs_fails_by_its_timeout_and_the_replica_is_replaced(self):
        # basics.HANG_FLAG: while it exists, Hangs.check_health spins.
        HANG_FLAG = os.path.join(os.environ.get("TMPDIR", "/tmp"), "ferry-test-hang-health")
        before = requests.get(self.ferry.url("/hangs"), timeout=60).json()["pid"]
        open(HANG_FLAG, "w").close()
        try:
            self.ferry.wait_for(lambda: re.search(r"replica hangs#Hangs#\S+ failed 3 health checks in a row \(check_health "
                                                  r"did not answer within health_check_timeout_s",
                                                  self.ferry.stderr() + self.ferry.stdout()),
                                timeout=60, what="three failed health checks")
        finally:
            os.unlink(HANG_FLAG)

        def replaced():
            try:
                return requests.get(self.ferry.url("/hangs"), timeout=10).json()["pid"] != before
            except (requests.RequestException, ValueError, KeyError):
                return False
        self.ferry.wait_for(replaced, timeout=60, what="a new replica")

    def test_replica_context_names_the_replica(self):
        c = self.get("/greet?kind=context").json()
        self.assertEqual((c["app"], c["deployment"]), ("greet", "Greeter"))
        self.assertTrue(c["replica"].startswith("greet#Greeter#"), c)

    def test_replicas_of_a_deployment_are_separate_processes(self):
        pids = self.ferry.replica_pids()
        self.assertGreaterEqual(len(pids), 13)


@unittest.skipUnless(HAVE_PYTHON, "this build has no python runtime")
class PythonErrorsTest(unittest.TestCase):
    def run_config(self, text):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(text)
        try:
            return subprocess.run([FERRY_BIN, "run", f.name, "--http-port", "0", "--admin-port", "0"],
                                  capture_output=True, text=True, timeout=120)
        finally:
            os.unlink(f.name)

    def test_code_that_does_not_import_stops_ferry_run_with_the_traceback_and_the_import_path(self):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "bad.py"), "w") as f:
                f.write("import os\n\ndef oops(:\n    pass\n")
            done = self.run_config(f"applications:\n  - name: a\n    import_path: bad:app\n"
                                   f"    runtime_env: {{working_dir: {d}}}\n")
        self.assertNotEqual(done.returncode, 0)
        self.assertRegex(done.stderr, r":3:18: applications\[0\]\.import_path: cannot import the application "
                                      r"\(SyntaxError: .*\): it is DEPLOY_FAILED")
        self.assertIn("ferry: application a failed to start", done.stderr)
        self.assertIn("bad.py", done.stderr)
        done = self.run_config("applications:\n  - name: a\n    import_path: no_such_module:app\n")
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("ModuleNotFoundError: No module named 'no_such_module'", done.stderr)

    def test_a_version_that_does_not_import_is_deploy_failed_and_the_running_one_keeps_serving(self):
        with tempfile.TemporaryDirectory() as d:
            module = os.path.join(d, "versioned.py")
            with open(module, "w") as f:
                f.write("from ferry import serve\n\n@serve.deployment\ndef hello(request):\n    return 'v1'\n\n"
                        "app = hello.bind()\n")
            config = (f"applications:\n  - name: v\n    route_prefix: /v\n    import_path: versioned:app\n"
                      f"    runtime_env: {{working_dir: {d}}}\n")
            with Ferry(config, timeout=120) as ferry:
                self.assertEqual(requests.get(ferry.url("/v"), timeout=30).text, "v1")
                with open(module, "w") as f:
                    f.write("from ferry import serve\nraise RuntimeError('v2 is broken')\n")
                r = requests.put(ferry.admin + "/api/serve/applications/", data=config, timeout=60)
                self.assertEqual(r.status_code, 200, r.text)
                self.assertIn("cannot import the application (RuntimeError: v2 is broken)", r.json()["warnings"][0])
                # The status is the controller's last snapshot: the failure shows from its next tick on.
                def status_of(name, wanted):
                    s = requests.get(ferry.admin + "/api/serve/applications/", timeout=10).json()
                    return s if s["applications"].get(name, {}).get("status") == wanted else None
                status = wait_until(lambda: status_of("v", "DEPLOY_FAILED"), timeout=30, what="v DEPLOY_FAILED")
                app = status["applications"]["v"]
                self.assertIn("Deploying app 'v' failed with exception:", app["message"])
                self.assertIn("Traceback", app["message"])
                self.assertIn("versioned.py", app["message"])
                self.assertIn("RuntimeError: v2 is broken", app["message"])
                # The version that imported keeps serving, from the replica it had.
                self.assertEqual(requests.get(ferry.url("/v"), timeout=30).text, "v1")
                self.assertEqual(app["deployments"]["hello"]["replica_states"], {"RUNNING": 1})
                # A new application whose code fails is DEPLOY_FAILED too, with nothing to serve.
                bad_new = config + (f"  - name: w\n    route_prefix: /w\n    import_path: versioned:app\n"
                                    f"    runtime_env: {{working_dir: {d}}}\n")
                r = requests.put(ferry.admin + "/api/serve/applications/", data=bad_new, timeout=60)
                self.assertEqual(r.status_code, 200, r.text)
                wait_until(lambda: status_of("w", "DEPLOY_FAILED"), timeout=30, what="w DEPLOY_FAILED")
                self.assertEqual(requests.get(ferry.url("/w"), timeout=30).status_code, 404)
                # Fixed: the next deploy builds it and both run the new code.
                with open(module, "w") as f:
                    f.write("from ferry import serve\n\n@serve.deployment\ndef hello(request):\n"
                            "    return 'v3'\n\napp = hello.bind()\n")
                r = requests.put(ferry.admin + "/api/serve/applications/", data=bad_new, timeout=60)
                self.assertEqual(r.status_code, 200, r.text)
                self.assertEqual(r.json().get("warnings", []), [])

                def both_running():
                    apps = requests.get(ferry.admin + "/api/serve/applications/", timeout=10).json()["applications"]
                    return all(apps[n]["status"] == "RUNNING" for n in ("v", "w"))
                wait_until(both_running, timeout=60, what="both applications RUNNING")
                self.assertEqual(requests.get(ferry.url("/v"), timeout=30).text, "v3")
                self.assertEqual(requests.get(ferry.url("/w"), timeout=30).text, "v3")

    def test_an_unknown_override_is_named(self):
        done = self.run_config(f"applications:\n  - name: a\n    import_path: basics:greeter\n"
                               f"    runtime_env: {{working_dir: {APPS}}}\n    deployments:\n      - name: Nope\n")
        self.assertIn('no deployment named "Nope" in the application basics:greeter builds (it has: Greeter)',
                      done.stderr)

    def test_a_constructor_that_raises_fails_the_deployment_with_its_traceback(self):
        done = self.run_config(f"applications:\n  - name: a\n    import_path: basics:broken\n"
                               f"    runtime_env: {{working_dir: {APPS}}}\n"
                               f"    deployments: [{{name: Broken, max_constructor_retry_count: 1}}]\n")
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("the constructor failed on purpose", done.stderr + done.stdout)
        self.assertIn("basics.py", done.stderr + done.stdout)

    def test_a_config_as_ray_writes_it_loads_with_one_warning_per_option_without_effect(self):
        text = f"""# as `serve build` writes a config
proxy_location: EveryNode
http_options:
  host: 127.0.0.1
  port: 8000
  root_path: ''
  request_timeout_s: 30
grpc_options:
  port: 9000
  grpc_servicer_functions: []
logging_config:
  encoding: TEXT
  log_level: INFO
  logs_dir: null
  enable_access_log: true
target_capacity: 100
applications:
- name: app1
  route_prefix: /calc
  import_path: basics.calculator
  runtime_env: {{working_dir: "{APPS}"}}
  deployments:
  - name: Adder
    num_replicas: auto
    autoscaling_config: {{max_replicas: 3, aggregation_function: max}}
    max_ongoing_requests: 5
    max_queued_requests: -1
    graceful_shutdown_wait_loop_s: 2.0
    graceful_shutdown_timeout_s: 20.0
    health_check_period_s: 10.0
    health_check_timeout_s: 30.0
    ray_actor_options: {{num_cpus: 1.0}}
    placement_group_bundles: [{{CPU: 1}}]
    placement_group_strategy: PACK
    max_replicas_per_node: 4
  - name: Multiplier
  - name: Calculator
"""
        with Ferry(text, timeout=120) as ferry:
            self.assertEqual(requests.get(ferry.url("/calc?x=1&op=chain"), timeout=60).json(), {"result": 22})
            warnings = [line for line in ferry.stderr().splitlines() if line.startswith("warning: ")]
            self.assertEqual(len(warnings), 4, warnings)
            for field in ["autoscaling_config.aggregation_function", "placement_group_bundles",
                          "placement_group_strategy", "max_replicas_per_node"]:
                self.assertTrue(any(field in w for w in warnings), (field, warnings))
            status = requests.get(ferry.admin + "/api/serve/applications/", timeout=10).json()
            deployed = status["applications"]["app1"]["deployed_app_config"]["deployments"]
            auto = next(d for d in deployed if d["name"] == "Adder")["autoscaling_config"]
            # num_replicas: auto's defaults (min 1, target 2) with the given max on top, as in Ray.
            self.assertEqual((auto["min_replicas"], auto["max_replicas"], auto["target_ongoing_requests"]), (1, 3, 2))

    def test_ferry_build_writes_a_config_that_deploys(self):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "built.yaml")
            done = run_ferry(["build", "basics:calculator", "-d", APPS, "-o", out])
            self.assertEqual(done.returncode, 0, done.stderr)
            with open(out) as f:
                text = f.read()
            self.assertIn("import_path: \"basics:calculator\"", text)
            with Ferry(config_file=out, timeout=120) as ferry:
                self.assertEqual(requests.get(ferry.url("/?x=1&op=chain"), timeout=60).json(), {"result": 22})
                self.assertFalse([line for line in ferry.stderr().splitlines() if line.startswith("warning: ")])
        done = run_ferry(["build", "no_such_module:app"])
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("No module named 'no_such_module'", done.stderr)

    def test_ferry_run_takes_an_import_path_and_builder_arguments(self):
        ferry = None
        try:
            ferry = Ferry(target=["basics:build_app", "greeting=Yo", "--working-dir", APPS, "--route-prefix", "/x"],
                          timeout=120)
            r = requests.get(ferry.url("/x?name=cli"), timeout=60)
            self.assertEqual(r.text, "Yo, cli!")
        finally:
            if ferry:
                ferry.stop()
                ferry.close()


@unittest.skipUnless(HAVE_PYTHON, "this build has no python runtime")
class QuickstartTest(unittest.TestCase):
    def test_the_quickstart_serves_its_python_application(self):
        from harness import SOURCE_DIR
        with Ferry(config_file=os.path.join(SOURCE_DIR, "examples/quickstart.yaml"), timeout=120) as ferry:
            r = requests.get(ferry.url("/sentiment?text=what+a+great+day"), timeout=60)
            self.assertEqual(r.json(), {"text": "what a great day", "label": "positive", "score": 1})
            r = requests.get(ferry.url("/sentiment?text=an+awful+slow+day"), timeout=60)
            self.assertEqual(r.json()["label"], "negative")


@unittest.skipUnless(HAVE_PYTHON, "this build has no python runtime")
class DriverScriptTest(unittest.TestCase):
    def test_serve_run_from_a_script_starts_a_node_ships_its_classes_and_shuts_down(self):
        from harness import SOURCE_DIR, free_port
        with tempfile.TemporaryDirectory() as state, tempfile.TemporaryDirectory() as cwd:
            env = dict(os.environ, FERRY_BIN=FERRY_BIN, FERRY_STATE_DIR=state,
                       FERRY_ADDRESS=f"http://127.0.0.1:{free_port()}",
                       PYTHONPATH=os.path.join(SOURCE_DIR, "python"))
            # Run from elsewhere: the script's classes reach the replicas by value, not by import.
            done = subprocess.run(["/usr/bin/python3", os.path.join(APPS, "driver_script.py")], cwd=cwd, env=env,
                                  capture_output=True, text=True, timeout=300)
            self.assertEqual(done.returncode, 0, done.stderr)
            seen = json.loads(done.stdout.strip().splitlines()[-1])
            self.assertEqual(seen["result"], "HELLO (DEFINED IN __MAIN__)")
            self.assertEqual(seen["async"], "ASYNC (DEFINED IN __MAIN__)")
            self.assertEqual(seen["stream"], ["t0", "t1", "t2"])
            # A stream reaches the driver item by item, sync and async (the callee waits for the driver).
            self.assertEqual(seen["live"], ["first", "second"])
            self.assertEqual(seen["live_async"], ["first", "second"])
            self.assertEqual(seen["status"], "RUNNING")
            self.assertEqual(seen["app_handle"], "AGAIN (DEFINED IN __MAIN__)")
            self.assertEqual(seen["after_delete"], [])
            # serve.shutdown stopped the node serve.run started.
            wait = 0
            while os.path.exists(os.path.join(state, "ferry.pid")) and wait < 100:
                import time
                time.sleep(0.1)
                wait += 1
            self.assertFalse(os.path.exists(os.path.join(state, "ferry.pid")))


if __name__ == "__main__":
    unittest.main()
