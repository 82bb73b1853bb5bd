"""Logs and traces as an operator's tools receive them: JSON log lines a shipper can parse, one access line
per request, per-application logging_config, and the spans an OTLP/HTTP receiver gets for a request
(names, parent links, attributes), including changes made by a deploy without restarting replicas."""
import json
import re
import time
import unittest

import requests

from harness import Ferry, free_port, wait_until
from otlp_receiver import OtlpReceiver

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


def traced_config(endpoint, ratio=0.0, extra=""):
    return f"""
tracing: {{otlp_endpoint: "{endpoint}", sampling_ratio: {ratio}}}
applications:
  - name: app
    route_prefix: /echo
    deployments:
      - name: Echo
        import_path: builtin:echo
  - name: batched
    route_prefix: /batched
    deployments:
      - name: Batched
        import_path: builtin:busy
        args: {{work_us: 10}}
        batching: {{max_batch_size: 4, batch_wait_timeout_s: 0.001}}
{extra}"""


def span_counts(ferry, name):
    """{labels: value} of a span counter on the node's /metrics ("" for the node's own, unlabelled)."""
    text = requests.get(ferry.admin + "/metrics", timeout=10).text
    return {labels: float(value) for labels, value in re.findall(rf"^{name}(\{{.*\}})? (\S+)$", text, re.M)}


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class TracingTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.receiver = OtlpReceiver()
        cls.ferry = Ferry(traced_config(cls.receiver.url, extra="""
  - name: failing
    route_prefix: /failing
    deployments:
      - {name: Failing, import_path: builtin:echo, user_config: {error_rate: 1.0}}
"""))

    @classmethod
    def tearDownClass(cls):
        cls.ferry.__exit__(None, None, None)
        cls.receiver.close()

    def wait_trace(self, trace_id, count):
        return wait_until(lambda: len(self.receiver.trace(trace_id)) >= count and self.receiver.trace(trace_id),
                          timeout=20, what=f"{count} spans of trace {trace_id}")

    def test_a_traced_request_gives_linked_spans_for_proxy_queue_replica_and_user_code(self):
        r = requests.post(self.ferry.url("/echo/x"), data="hi", headers={"traceparent": TRACEPARENT}, timeout=10)
        self.assertEqual(r.status_code, 200)
        spans = {s["name"]: s for s in self.wait_trace(TRACE_ID, 4)}
        self.assertEqual(set(spans), {"POST /echo", "ferry.queue", "ferry.replica", "Echo.handle"})
        proxy, queue, replica, user = (spans[n] for n in ("POST /echo", "ferry.queue", "ferry.replica", "Echo.handle"))
        # Parent links: the caller's span, then the proxy's, then the replica's.
        self.assertEqual(proxy["parentSpanId"], CALLER_SPAN)
        self.assertEqual(queue["parentSpanId"], proxy["spanId"])
        self.assertEqual(replica["parentSpanId"], proxy["spanId"])
        self.assertEqual(user["parentSpanId"], replica["spanId"])
        self.assertEqual((proxy["kind"], queue["kind"], replica["kind"], user["kind"]), (2, 1, 2, 1))
        # Attributes.
        request_id = r.headers["x-request-id"]
        self.assertEqual(proxy["attrs"]["http.request.method"], "POST")
        self.assertEqual(proxy["attrs"]["http.route"], "/echo")
        self.assertEqual(proxy["attrs"]["url.path"], "/echo/x")
        self.assertEqual(proxy["attrs"]["http.response.status_code"], 200)
        self.assertEqual(proxy["attrs"]["ferry.application"], "app")
        self.assertEqual(proxy["attrs"]["ferry.deployment"], "Echo")
        for s in (proxy, queue, replica, user):
            self.assertEqual(s["attrs"]["ferry.request_id"], request_id, s["name"])
        replica_id = replica["attrs"]["ferry.replica"]
        self.assertTrue(replica_id.startswith("app#Echo#"), replica_id)
        self.assertEqual(proxy["attrs"]["ferry.replica"], replica_id)
        self.assertEqual(queue["attrs"]["ferry.replica"], replica_id)
        self.assertEqual(replica["attrs"]["http.response.status_code"], 200)
        self.assertEqual(user["attrs"]["code.function"], "handle")
        self.assertNotIn("status", proxy)
        # Each process exports as itself.
        self.assertEqual(proxy["resource"]["service.name"], "ferry")
        self.assertEqual(replica["resource"]["service.instance.id"], replica_id)
        self.assertTrue(proxy["resource"]["service.instance.id"].startswith("node-"))
        # Times nest: the replica's work lies within the proxy's span, the user code's within the replica's.
        t = {n: (int(s["startTimeUnixNano"]), int(s["endTimeUnixNano"])) for n, s in spans.items()}
        self.assertLessEqual(t["POST /echo"][0], t["ferry.queue"][0])
        self.assertLessEqual(t["ferry.queue"][1], t["ferry.replica"][0])
        self.assertLessEqual(t["ferry.replica"][0], t["Echo.handle"][0])
        self.assertLessEqual(t["Echo.handle"][1], t["ferry.replica"][1])
        self.assertLessEqual(t["ferry.replica"][1], t["POST /echo"][1])
        # The user code sees a traceparent naming its own span, so what it calls joins the trace.
        self.assertEqual(r.json()["headers"]["traceparent"], f"00-{TRACE_ID}-{user['spanId']}-01")
        self.assertEqual(self.receiver.errors, [])

    def test_unsampled_and_unmarked_requests_make_no_spans_at_ratio_zero(self):
        unsampled = "00-11111111111111111111111111111111-2222222222222222-00"
        r = requests.get(self.ferry.url("/echo"), headers={"traceparent": unsampled}, timeout=10)
        self.assertEqual(r.status_code, 200)
        # Not traced here, but passed on untouched for whoever decides downstream.
        self.assertEqual(r.json()["headers"]["traceparent"], unsampled)
        plain = requests.get(self.ferry.url("/echo"), timeout=10)
        self.assertNotIn("traceparent", plain.json()["headers"])
        # A sampled request afterwards: once its spans are in, anything recorded before them would be too
        # (each process exports its spans in order).
        marker = "00-33333333333333333333333333333333-4444444444444444-01"
        requests.get(self.ferry.url("/echo"), headers={"traceparent": marker}, timeout=10)
        self.wait_trace("3" * 32, 4)
        self.assertEqual(self.receiver.trace("1" * 32), [])
        ids = {s["attrs"].get("ferry.request_id") for s in self.receiver.all_spans()}
        self.assertNotIn(plain.headers["x-request-id"], ids)

    def test_a_batch_gets_a_handle_batch_span_per_request(self):
        trace = "55555555555555555555555555555555"
        r = requests.post(self.ferry.url("/batched"), data="b",
                          headers={"traceparent": f"00-{trace}-6666666666666666-01"}, timeout=10)
        self.assertEqual(r.status_code, 200)
        spans = {s["name"]: s for s in self.wait_trace(trace, 5)}
        self.assertIn("Batched.handle_batch", spans)
        user = spans["Batched.handle_batch"]
        self.assertEqual(user["attrs"]["ferry.batch_size"], 1)
        self.assertEqual(user["attrs"]["code.function"], "handle_batch")
        self.assertEqual(user["parentSpanId"], spans["ferry.replica"]["spanId"])
        # The deployment's prepare() ran as the request arrived, before its batch: a span of its own.
        prepare = spans["Batched.prepare"]
        self.assertEqual(prepare["parentSpanId"], spans["ferry.replica"]["spanId"])
        self.assertEqual(prepare["attrs"]["code.function"], "prepare")
        self.assertEqual(prepare["attrs"]["ferry.request_id"], r.headers["x-request-id"])
        self.assertLessEqual(int(spans["ferry.replica"]["startTimeUnixNano"]), int(prepare["startTimeUnixNano"]))
        self.assertLessEqual(int(prepare["endTimeUnixNano"]), int(user["startTimeUnixNano"]))

    def test_server_errors_mark_spans_as_errors(self):
        trace = "77777777777777777777777777777777"
        r = requests.get(self.ferry.url("/failing"), headers={"traceparent": f"00-{trace}-8888888888888888-01"},
                         timeout=10)
        self.assertEqual(r.status_code, 500)
        spans = {s["name"]: s for s in self.wait_trace(trace, 4)}
        for name in ("GET /failing", "ferry.replica", "Failing.handle"):
            self.assertEqual(spans[name].get("status", {}).get("code"), 2, name)
        self.assertEqual(spans["GET /failing"]["attrs"]["http.response.status_code"], 500)


class SamplingTest(unittest.TestCase):
    def test_ratio_one_starts_a_trace_per_request_and_the_access_line_names_it(self):
        with OtlpReceiver() as receiver, Ferry(traced_config(receiver.url, ratio=1.0)) as ferry:
            r = requests.get(ferry.url("/echo/a"), timeout=10)
            self.assertEqual(r.status_code, 200)
            request_id = r.headers["x-request-id"]
            roots = wait_until(lambda: [s for s in receiver.all_spans() if s["name"] == "GET /echo"
                                        and s["attrs"]["ferry.request_id"] == request_id], timeout=20,
                               what="the proxy span")
            self.assertNotIn("parentSpanId", roots[0])  # a new trace starts here
            trace_id = roots[0]["traceId"]
            wait_until(lambda: len(receiver.trace(trace_id)) == 4, timeout=20, what="the whole trace")
            line = wait_until(lambda: [l for l in ferry.stderr_lines if request_id in l and " access " in l],
                              timeout=10, what="the access line")
            self.assertIn(f"trace_id={trace_id}", line[0])
            # What was sent is counted on /metrics: the node's proxy and queue spans, the replica's two.
            wait_until(lambda: span_counts(ferry, "ferry_tracing_spans_exported_total").get("", 0) >= 2,
                       timeout=10, what="the node's exported spans")
            replica = wait_until(lambda: [(l, v) for l, v in span_counts(ferry, "ferry_replica_spans_exported_total")
                                          .items() if 'deployment="Echo"' in l and v >= 2], timeout=10,
                                 what="the replica's exported spans")[0]
            self.assertRegex(replica[0], r'^\{application="app",deployment="Echo",replica="app#Echo#[0-9a-f]+"\}$')
            self.assertEqual(span_counts(ferry, "ferry_tracing_spans_dropped_total"), {"": 0.0})

    def test_a_collector_that_is_down_costs_no_request(self):
        down = f"http://127.0.0.1:{free_port()}/v1/traces"
        with Ferry(traced_config(down, ratio=1.0)) as ferry:
            for _ in range(20):
                self.assertEqual(requests.get(ferry.url("/echo"), timeout=10).status_code, 200)
            ferry.wait_for(lambda: "could not export" in ferry.stderr(), what="an export warning")
            self.assertEqual(requests.get(ferry.url("/echo"), timeout=10).status_code, 200)
            # The lost spans are counted, the node's and the replica's.
            wait_until(lambda: span_counts(ferry, "ferry_tracing_spans_dropped_total").get("", 0) > 0, timeout=10,
                       what="the node's dropped spans")
            wait_until(lambda: any(v > 0 for l, v in span_counts(ferry, "ferry_replica_spans_dropped_total").items()
                                   if 'deployment="Echo"' in l), timeout=10, what="the replica's dropped spans")

    def test_exports_carry_the_headers_the_environment_names(self):
        env = {"OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=general, x-team=ferry",
               "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "X-API-Key=s3cret%20key"}
        with OtlpReceiver() as receiver, Ferry(traced_config(receiver.url, ratio=1.0), env=env) as ferry:
            self.assertEqual(requests.get(ferry.url("/echo"), timeout=10).status_code, 200)
            # Spans from the node and from the replica (its own process, which inherits the environment).
            wait_until(lambda: {s["resource"]["service.instance.id"].startswith("node-")
                                for s in receiver.all_spans()} == {True, False}, timeout=20,
                       what="spans from the node and the replica")
            with receiver._lock:
                seen = list(receiver.request_headers)
            self.assertGreaterEqual(len(seen), 2)
            for headers in seen:
                self.assertEqual(headers.get("x-api-key"), "s3cret key", headers)
                self.assertEqual(headers.get("x-team"), "ferry", headers)
            # The secret is not in what the node shows of its config.
            self.assertNotIn("s3cret", requests.get(f"{ferry.admin}/api/serve/applications/", timeout=10).text)

    def test_a_bad_headers_variable_stops_the_node_with_its_name(self):
        # The node stops before it exports anything: the collector's address is never contacted.
        ferry = Ferry(traced_config(f"http://127.0.0.1:{free_port()}/v1/traces"), ready=False,
                      env={"OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=ok,Authorization"})
        try:
            self.assertEqual(ferry.wait_exit(30), 2)
            self.assertIn('OTEL_EXPORTER_OTLP_HEADERS: entry 2 ("Authorization") is not key=value', ferry.stderr())
        finally:
            ferry.close()

    def test_tracing_turned_on_by_a_deploy_reaches_running_replicas(self):
        with OtlpReceiver() as receiver, Ferry(traced_config(receiver.url).replace(
                f'tracing: {{otlp_endpoint: "{receiver.url}", sampling_ratio: 0.0}}', "")) as ferry:
            pids = sorted(ferry.replica_pids())
            trace = "99999999999999999999999999999999"
            headers = {"traceparent": f"00-{trace}-aaaaaaaaaaaaaaaa-01"}
            requests.get(ferry.url("/echo"), headers=headers, timeout=10)
            r = requests.put(f"{ferry.admin}/api/serve/applications/", data=traced_config(receiver.url), timeout=10)
            self.assertEqual(r.status_code, 200, r.text)
            # The replicas learn it in place (no restart); until then their spans may be missing.
            def all_four():
                requests.get(ferry.url("/echo"), headers=headers, timeout=10)
                return len({s["name"] for s in receiver.trace(trace)}) == 4
            wait_until(all_four, timeout=20, what="spans from the proxy and the running replica")
            self.assertEqual(sorted(ferry.replica_pids()), pids)


ACCESS_CONFIG = """
logging_config: {encoding: JSON}
applications:
  - name: app
    route_prefix: /echo
    deployments:
      - {name: Echo, import_path: builtin:echo}
  - name: quiet
    route_prefix: /quiet
    logging_config: {encoding: JSON, enable_access_log: false, log_level: ERROR}
    deployments:
      - {name: Quiet, import_path: builtin:echo}
  - name: texty
    route_prefix: /texty
    deployments:
      - name: Texty
        import_path: builtin:echo
        logging_config: {encoding: TEXT}
  - name: slow
    route_prefix: /slow
    deployments:
      - {name: Slow, import_path: builtin:busy, args: {work_us: 2000000}}
"""


def with_echo_options(options):
    """ACCESS_CONFIG with more options for its Echo deployment, e.g. "args: {allow_abort: true}"."""
    return ACCESS_CONFIG.replace("      - {name: Echo, import_path: builtin:echo}",
                                f"      - {{name: Echo, import_path: builtin:echo, {options}}}")


def redeploy_in_place(ferry, config):
    """Deploys `config` to the running node and waits for a replica to be reconfigured (no restart)."""
    r = requests.put(f"{ferry.admin}/api/serve/applications/", data=config, timeout=10)
    if r.status_code != 200:
        raise AssertionError(f"deploy answered {r.status_code}: {r.text}")
    ferry.wait_for(lambda: "reconfigured in place" in ferry.stderr(), what="the replica reconfigured")


class LoggingTest(unittest.TestCase):
    def test_json_lines_access_lines_and_per_application_settings(self):
        with Ferry(ACCESS_CONFIG) as ferry:
            ids = []
            for path in ("/echo/a", "/echo/b", "/quiet/c"):
                r = requests.post(ferry.url(path), data="x", timeout=10)
                self.assertEqual(r.status_code, 200)
                ids.append(r.headers["x-request-id"])
            self.assertEqual(requests.get(ferry.url("/nowhere"), timeout=10).status_code, 404)

            def access():
                return [j for j in json_lines_of(ferry) if j.get("component_name") == "access"]
            wait_until(lambda: len(access()) >= 3, timeout=10, what="access lines")
            lines = {j["request_id"]: j for j in access()}
            for request_id, path in zip(ids[:2], ("/echo/a", "/echo/b")):
                line = lines[request_id]
                self.assertEqual(line["levelname"], "INFO")
                self.assertEqual(line["path"], path)
                self.assertEqual(line["method"], "POST")
                self.assertEqual(line["route"], "/echo")
                self.assertEqual(line["application"], "app")
                self.assertEqual(line["deployment"], "Echo")
                self.assertTrue(line["replica"].startswith("app#Echo#"), line)
                self.assertEqual(line["status_code"], 200)
                self.assertGreater(line["latency_ms"], 0)
                self.assertEqual(line["message"], f"POST {path} 200 {line['message'].split()[-1]}")
            self.assertNotIn(ids[2], lines)  # quiet: enable_access_log false
            unrouted = [j for j in access() if j["path"] == "/nowhere"]
            self.assertEqual(unrouted[0]["status_code"], 404)
            self.assertEqual(unrouted[0]["application"], "")

            # Replica lines carry the replica's id: as fields in JSON, as a [tag] in TEXT.
            serving = [j for j in json_lines_of(ferry) if j.get("message", "").startswith("serving Echo")]
            self.assertTrue(serving and serving[0]["replica"].startswith("app#Echo#"), serving)
            self.assertEqual(serving[0]["application"], "app")
            self.assertTrue(any(l.startswith("20") and " INFO replica [texty#Texty#" in l and "serving Texty" in l
                                for l in ferry.stderr_lines), ferry.stderr())
            # quiet's replica logs at ERROR: its INFO line never appears.
            self.assertFalse(any("serving Quiet" in l for l in ferry.stderr_lines))
            # Every line is one JSON object, but those of the deployment that asked for TEXT.
            for line in list(ferry.stderr_lines):
                if "[texty#" not in line:
                    self.assertIsInstance(json.loads(line), dict, line)

    def test_user_code_lines_carry_the_replica_and_the_request(self):
        with Ferry(ACCESS_CONFIG) as ferry:
            r = requests.get(ferry.url("/echo"), headers={"x-echo-log": "model says \"hi\""}, timeout=10)
            texty = requests.get(ferry.url("/texty"), headers={"x-echo-log": "plain words"}, timeout=10)
            quiet = requests.get(ferry.url("/quiet"), headers={"x-echo-log": "quiet words"}, timeout=10)
            line = wait_until(lambda: [j for j in json_lines_of(ferry) if j.get("component_name") == "user"],
                              timeout=10, what="the user code's line")[0]
            self.assertEqual(line["message"], 'model says "hi"')
            self.assertEqual(line["request_id"], r.headers["x-request-id"])
            self.assertTrue(line["replica"].startswith("app#Echo#"), line)
            self.assertEqual(line["levelname"], "INFO")
            text = wait_until(lambda: [l for l in ferry.stderr_lines if "plain words" in l], timeout=10,
                              what="the TEXT line")[0]
            self.assertRegex(text, r" INFO user \[texty#Texty#[0-9a-f]+\] plain words request_id=" +
                             texty.headers["x-request-id"])
            self.assertEqual(quiet.status_code, 200)
            self.assertFalse(any("quiet words" in l for l in ferry.stderr_lines))  # quiet logs at ERROR

    def test_what_replicas_print_is_logged_as_their_lines(self):
        with Ferry(with_echo_options("args: {allow_abort: true}")) as ferry:
            printing = {"x-echo-print": "to stdout", "x-echo-eprint": 'to "stderr"'}
            self.assertEqual(requests.get(ferry.url("/echo"), headers=printing, timeout=10).status_code, 200)
            self.assertEqual(requests.get(ferry.url("/texty"), headers={"x-echo-print": "texty prints"},
                                          timeout=10).status_code, 200)

            def printed(stream):
                return [j for j in json_lines_of(ferry) if j.get("component_name") == stream]
            out = wait_until(lambda: printed("stdout"), timeout=10, what="the stdout line")[0]
            err = wait_until(lambda: printed("stderr"), timeout=10, what="the stderr line")[0]
            self.assertEqual((out["message"], out["levelname"]), ("to stdout", "INFO"))
            self.assertEqual((err["message"], err["levelname"]), ('to "stderr"', "WARNING"))
            for line in (out, err):
                self.assertEqual((line["application"], line["deployment"]), ("app", "Echo"))
                self.assertTrue(line["replica"].startswith("app#Echo#"), line)
            text = wait_until(lambda: [l for l in ferry.stderr_lines if "texty prints" in l], timeout=10,
                              what="the TEXT line")[0]
            self.assertRegex(text, r"^20\S+ INFO stdout \[texty#Texty#[0-9a-f]+\] texty prints$")
            # A crash's last words reach the log as the replica's, in its encoding, before it is replaced.
            r = requests.get(ferry.url("/echo"), headers={"x-echo-abort": "last words"}, timeout=10)
            self.assertEqual(r.status_code, 502)
            last = wait_until(lambda: [j for j in printed("stderr") if j["message"] == "last words"], timeout=10,
                              what="the crash's line")[0]
            self.assertEqual(last["replica"], out["replica"])
            wait_until(lambda: requests.get(ferry.url("/echo"), timeout=10).status_code == 200, timeout=30,
                       what="the replacement replica")
            # Every line is one JSON object but those of the deployment that asked for TEXT.
            for line in list(ferry.stderr_lines):
                if "[texty#" not in line:
                    self.assertIsInstance(json.loads(line), dict, line)

    def test_a_deploy_changes_the_encoding_of_what_a_replica_prints(self):
        with Ferry(ACCESS_CONFIG) as ferry:
            pids = sorted(ferry.replica_pids())
            redeploy_in_place(ferry, with_echo_options("logging_config: {encoding: TEXT}"))
            requests.get(ferry.url("/echo"), headers={"x-echo-print": "now in text"}, timeout=10)
            line = wait_until(lambda: [l for l in ferry.stderr_lines if "now in text" in l], timeout=10,
                              what="the printed line")[0]
            self.assertRegex(line, r"^20\S+ INFO stdout \[app#Echo#[0-9a-f]+\] now in text$")
            self.assertEqual(sorted(ferry.replica_pids()), pids)

    def test_a_request_the_client_gave_up_on_gets_a_499_line(self):
        with Ferry(ACCESS_CONFIG) as ferry:
            with self.assertRaises(requests.exceptions.Timeout):
                requests.get(ferry.url("/slow"), timeout=0.3)
            line = wait_until(lambda: [j for j in json_lines_of(ferry) if j.get("component_name") == "access"
                                       and j.get("path") == "/slow"], timeout=10, what="the access line")[0]
            self.assertEqual(line["status_code"], 499)
            self.assertTrue(line["replica"].startswith("slow#Slow#"), line)
            self.assertGreaterEqual(line["latency_ms"], 250)

    def test_a_deploy_changes_logging_in_place(self):
        with Ferry(ACCESS_CONFIG) as ferry:
            pids = sorted(ferry.replica_pids())
            requests.get(ferry.url("/echo"), timeout=10)
            wait_until(lambda: any(j.get("component_name") == "access" for j in json_lines_of(ferry)),
                       timeout=10, what="an access line")
            redeploy_in_place(ferry, with_echo_options("logging_config: {encoding: JSON, enable_access_log: false}"))
            time.sleep(0.3)  # the proxy's routing table is published with the deploy; lines flush every 100 ms
            before = len([j for j in json_lines_of(ferry) if j.get("component_name") == "access"])
            r = requests.get(ferry.url("/echo"), timeout=10)
            quiet_id = r.headers["x-request-id"]
            time.sleep(0.3)
            after = [j for j in json_lines_of(ferry) if j.get("component_name") == "access"]
            self.assertEqual(len(after), before)
            self.assertFalse(any(j.get("request_id") == quiet_id for j in after))
            self.assertEqual(sorted(ferry.replica_pids()), pids)

    def test_a_top_level_change_reaches_applications_that_inherit_it(self):
        with Ferry(ACCESS_CONFIG) as ferry:
            pids = sorted(ferry.replica_pids())
            quieter = ACCESS_CONFIG.replace("logging_config: {encoding: JSON}",
                                            "logging_config: {encoding: JSON, enable_access_log: false}")
            r = requests.put(f"{ferry.admin}/api/serve/applications/", data=quieter, timeout=10)
            self.assertEqual(r.status_code, 200, r.text)
            time.sleep(0.3)  # the routing table is published with the deploy; lines flush every 100 ms
            quiet_id = requests.get(ferry.url("/echo"), timeout=10).headers["x-request-id"]
            time.sleep(0.3)
            self.assertFalse(any(j.get("request_id") == quiet_id for j in json_lines_of(ferry)
                                 if j.get("component_name") == "access"))
            self.assertEqual(sorted(ferry.replica_pids()), pids)

    def test_top_level_level_applies_to_the_node(self):
        config = ACCESS_CONFIG.replace("logging_config: {encoding: JSON}", "logging_config: {log_level: WARNING}")
        with Ferry(config) as ferry:
            requests.get(ferry.url("/echo"), timeout=10)
            requests.get(ferry.url("/nowhere"), timeout=10)
            time.sleep(0.3)
        # No INFO from the node (deploy progress, access lines), nor from replicas that inherit the level;
        # a deployment with its own logging_config keeps its own (INFO by default).
        info = [l for l in ferry.stderr_lines if " INFO " in l and " replica [texty#" not in l]
        self.assertEqual(info, [])
        self.assertTrue(any("serving Texty" in l for l in ferry.stderr_lines), ferry.stderr())


def json_lines_of(ferry):
    out = []
    with ferry._lock:
        lines = list(ferry.stderr_lines)
    for line in lines:
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


if __name__ == "__main__":
    unittest.main()
