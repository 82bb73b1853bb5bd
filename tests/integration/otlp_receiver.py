"""An OTLP/HTTP trace receiver on loopback: what a collector's `otlphttp` receiver does with JSON, checked as
strictly as the protocol is written (path, content type, field names, hex ids, integer kinds, 64-bit
integers as strings). Used by the integration tests and by bench/http_echo.

OpenTelemetry's collector is not packaged for Debian 12, so the receiver is written here from the spec:
https://opentelemetry.io/docs/specs/otlp/#otlphttp and opentelemetry-proto's trace.proto.
"""
import http.server
import json
import re
import threading

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")


def attributes(items):
    """OTLP KeyValue list -> dict of plain values."""
    out = {}
    for kv in items:
        (kind, value), = kv["value"].items()
        if kind == "intValue":
            value = int(value)
        elif kind not in ("stringValue", "doubleValue", "boolValue"):
            raise ValueError(f"unexpected attribute value kind {kind}")
        out[kv["key"]] = value
    return out


def check_span(span):
    """Raises ValueError when `span` is not a well-formed OTLP/JSON span."""
    if not HEX32.match(span["traceId"]) or span["traceId"] == "0" * 32:
        raise ValueError(f"bad traceId {span['traceId']!r}")
    if not HEX16.match(span["spanId"]):
        raise ValueError(f"bad spanId {span['spanId']!r}")
    if "parentSpanId" in span and not HEX16.match(span["parentSpanId"]):
        raise ValueError(f"bad parentSpanId {span['parentSpanId']!r}")
    if span["kind"] not in (1, 2, 3, 4, 5):
        raise ValueError(f"bad kind {span['kind']!r}")
    for key in ("startTimeUnixNano", "endTimeUnixNano"):
        if not isinstance(span[key], str) or not span[key].isdigit():
            raise ValueError(f"{key} must be a decimal string, got {span[key]!r}")
    if int(span["endTimeUnixNano"]) < int(span["startTimeUnixNano"]):
        raise ValueError("span ends before it starts")
    if not isinstance(span["name"], str) or not span["name"]:
        raise ValueError("span without a name")


class OtlpReceiver:
    """Collects spans posted to http://127.0.0.1:<port>/v1/traces. Each span is a dict with the OTLP fields
    plus "attrs" (its attributes as a dict) and "resource" (its resource's attributes as a dict).
    With validate=False (for benchmarks, where parsing in Python would take CPU from the server measured)
    it only counts requests and spans."""

    def __init__(self, validate=True):
        self.spans = []
        self.span_count = 0
        self.requests = 0
        self.errors = []
        self.request_headers = []  # each POST's headers (to /v1/traces, as JSON), names in lower case
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if not validate:
                    with receiver._lock:
                        receiver.requests += 1
                        receiver.span_count += body.count(b'"spanId"')
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    return
                try:
                    if self.path != "/v1/traces":
                        raise ValueError(f"posted to {self.path}")
                    if self.headers.get("Content-Type") != "application/json":
                        raise ValueError(f"content type {self.headers.get('Content-Type')}")
                    with receiver._lock:  # before the spans, so a test that sees spans sees their headers
                        receiver.request_headers.append({k.lower(): v for k, v in self.headers.items()})
                    receiver._accept(json.loads(body))
                except (ValueError, KeyError, TypeError) as e:
                    with receiver._lock:
                        receiver.errors.append(repr(e))
                    self.send_response(400)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _accept(self, doc):
        spans = []
        for rs in doc["resourceSpans"]:
            resource = attributes(rs["resource"]["attributes"])
            for ss in rs["scopeSpans"]:
                if ss["scope"]["name"] != "ferry":
                    raise ValueError(f"scope {ss['scope']}")
                for span in ss["spans"]:
                    check_span(span)
                    span = dict(span)
                    span["attrs"] = attributes(span.get("attributes", []))
                    span["resource"] = resource
                    spans.append(span)
        with self._lock:
            self.requests += 1
            self.span_count += len(spans)
            self.spans.extend(spans)

    def trace(self, trace_id):
        with self._lock:
            return [s for s in self.spans if s["traceId"] == trace_id]

    def all_spans(self):
        with self._lock:
            return list(self.spans)

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
