"""Unit tests of ferry.serve's pure-Python parts (no node, no replica): deployment options and binding, the
application graph, @serve.batch, @serve.multiplexed, what handlers' return values become, how a handle
decodes answers and errors, and tracebacks."""
import asyncio
import os
import pickle
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))

from ferry import serve  # noqa: E402
from ferry.serve import exceptions  # noqa: E402
from ferry.serve._private import build, errors, http  # noqa: E402
from ferry.serve.handle import DeploymentHandle, _decode  # noqa: E402


@serve.deployment
class A:
    def __init__(self, b, c=None):
        self.b, self.c = b, c


@serve.deployment(num_replicas=3, max_ongoing_requests=7, user_config={"k": 1})
class B:
    pass


@serve.deployment
def f(request):
    return "f"


class DeploymentTest(unittest.TestCase):
    def test_bare_and_with_options_and_options_copies(self):
        self.assertEqual(A.name, "A")
        self.assertEqual(A.num_replicas, 1)
        self.assertEqual(A.max_ongoing_requests, 5)
        self.assertEqual(B.user_configured_options, {"num_replicas": 3, "max_ongoing_requests": 7, "user_config": {"k": 1}})
        b2 = B.options(name="B2", num_replicas="auto")
        self.assertEqual((b2.name, b2.num_replicas, B.num_replicas), ("B2", "auto", 3))
        self.assertEqual(f.name, "f")

    def test_bad_options_are_refused_by_name(self):
        with self.assertRaisesRegex(TypeError, "unexpected option 'num_replica'"):
            serve.deployment(num_replica=2)
        with self.assertRaisesRegex(ValueError, "max_ongoing_requests"):
            A.options(max_ongoing_requests=0)
        with self.assertRaisesRegex(RuntimeError, "bind"):
            A()

    def test_the_graph_lists_each_deployment_once_ingress_first_and_handles_replace_bindings(self):
        b = B.bind()
        app = A.bind(b, c=[b, B.options(name="Other").bind()])
        names = [n.deployment.name for n in build.walk(app)]
        self.assertEqual(names, ["A", "B", "Other"])
        described = build.describe(app)
        self.assertEqual(described["ingress"], "A")
        self.assertEqual(described["deployments"][1]["options"]["num_replicas"], 3)
        args = build.with_handles(app.init_args, "app", {"A", "B", "Other"})
        self.assertIsInstance(args[0], DeploymentHandle)
        self.assertEqual((args[0].deployment_name, args[0].app_name), ("B", "app"))
        kwargs = build.with_handles(app.init_kwargs, "app", {"B"})
        self.assertEqual([h.deployment_name for h in kwargs["c"]], ["B", "Other"])
        self.assertFalse(kwargs["c"][1]._python)

    def test_two_different_deployments_with_one_name_are_an_error(self):
        @serve.deployment(name="B")
        class NotB:
            pass

        with self.assertRaisesRegex(ValueError, 'two different deployments are named "B"'):
            build.walk(A.bind(B.bind(), NotB.bind()))

    def test_an_import_path_names_an_application_a_deployment_or_a_builder(self):
        self.assertIs(build.application_of(A.bind(1), {}).deployment, A)
        self.assertIs(build.application_of(B, {}).deployment, B)
        built = build.application_of(lambda args: A.bind(args["x"]), {"x": 5})
        self.assertEqual(built.init_args, (5,))
        with self.assertRaisesRegex(TypeError, "not a bound application"):
            build.application_of(lambda args: 3, {})
        with self.assertRaisesRegex(ValueError, "builder"):
            build.application_of(A.bind(1), {"x": 1})

    def test_handles_pickle_and_keep_their_options(self):
        h = DeploymentHandle("D", "app").options(method_name="m", stream=True, multiplexed_model_id="x")
        h2 = pickle.loads(pickle.dumps(h))
        self.assertEqual((h2.deployment_name, h2.app_name, h2._opts.method_name, h2._opts.stream), ("D", "app", "m", True))
        self.assertEqual(h.other._opts.method_name, "other")


class AnswersTest(unittest.TestCase):
    def test_return_values_become_answers_as_in_ray(self):
        from starlette.responses import PlainTextResponse

        self.assertEqual(http.whole_answer("hi"), (200, [("content-type", "text/plain; charset=utf-8")], b"hi"))
        self.assertEqual(http.whole_answer({"a": 1})[2], b'{"a": 1}')
        self.assertEqual(http.whole_answer(b"\x00")[1], [("content-type", "application/octet-stream")])
        status, headers, body = http.whole_answer(PlainTextResponse("x", status_code=201, headers={"h": "v"}))
        self.assertEqual((status, body, ("h", "v") in headers), (201, b"x", True))

    def test_the_scope_puts_the_path_under_the_route_prefix(self):
        scope = http.scope_for("GET", "/app/x/y", "q=1", "/app", [("host", "h")])
        self.assertEqual((scope["path"], scope["root_path"], scope["query_string"]), ("/x/y", "/app", b"q=1"))
        self.assertEqual(http.scope_for("GET", "/", "", "/", [])["path"], "/")
        req = http.make_request(scope, b'{"k": 2}')
        self.assertEqual(str(req.url.path), "/app/x/y")
        self.assertEqual(asyncio.run(req.json()), {"k": 2})

    def test_a_handle_decodes_json_text_bytes_and_pickles(self):
        h = DeploymentHandle("D", "app")
        self.assertEqual(_decode(h, 200, [("content-type", "application/json")], b'{"a": 1}', True, ""), {"a": 1})
        self.assertEqual(_decode(h, 200, [("content-type", "text/plain")], b"t", True, ""), "t")
        self.assertEqual(_decode(h, 200, [], b"\x01", True, ""), b"\x01")
        self.assertEqual(_decode(h, 200, [("x-ferry-result", "pickle")], pickle.dumps((1, 2)), True, ""), (1, 2))

    def test_a_failed_call_raises_what_it_means(self):
        h = DeploymentHandle("D", "app")
        cases = [(503, exceptions.BackPressureError), (499, exceptions.RequestCancelledError),
                 (504, exceptions.DeploymentTimeoutError), (404, exceptions.DeploymentUnavailableError),
                 (500, exceptions.RayServeException)]
        for status, exc in cases:
            with self.assertRaises(exc):
                _decode(h, status, [], b"", False, "why")

    def test_a_callees_exception_is_raised_again_with_its_traceback(self):
        from ferry.serve._private.errors import pickle_error

        try:
            raise KeyError("k")
        except KeyError as e:
            body = pickle_error(e)
        with self.assertRaises(KeyError) as caught:
            _decode(DeploymentHandle("D", "app"), 500, [("x-ferry-error", "pickle")], body, True, "")
        self.assertIn("app/D", caught.exception.__notes__[0])

        class Unpicklable(Exception):
            def __reduce__(self):
                raise TypeError("no")

        try:
            raise Unpicklable("u")
        except Unpicklable as e:
            body = pickle_error(e)
        with self.assertRaises(exceptions.RayServeCallError) as caught:
            _decode(DeploymentHandle("D", "app"), 500, [("x-ferry-error", "pickle")], body, True, "")
        self.assertEqual(caught.exception.type_name, "Unpicklable")

    def test_tracebacks_keep_only_the_users_frames(self):
        def user_code():
            raise ValueError("v")

        try:
            user_code()
        except ValueError as e:
            text = errors.user_traceback(e)
        self.assertIn("user_code", text)
        self.assertNotIn(os.sep + "ferry" + os.sep + "serve", text)


class BatchTest(unittest.TestCase):
    def test_concurrent_calls_form_batches_bounded_by_max_batch_size(self):
        class M:
            def __init__(self):
                self.sizes = []

            @serve.batch(max_batch_size=3, batch_wait_timeout_s=0.5)
            async def run(self, items):
                self.sizes.append(len(items))
                return [i * 10 for i in items]

        async def go():
            m = M()
            results = await asyncio.gather(*(m.run(i) for i in range(7)))
            return m, results

        m, results = asyncio.run(go())
        self.assertEqual(results, [i * 10 for i in range(7)])
        self.assertEqual(m.sizes, [3, 3, 1])

    def test_setters_change_the_batch_and_a_wrong_length_fails_the_batch(self):
        class M:
            @serve.batch(max_batch_size=10, batch_wait_timeout_s=0.01)
            async def run(self, items):
                return items[:1]

        async def go():
            m = M()
            m.run.set_max_batch_size(2)
            m.run.set_batch_wait_timeout_s(0.5)
            return await asyncio.gather(m.run(1), m.run(2), return_exceptions=True)

        results = asyncio.run(go())
        self.assertTrue(all(isinstance(r, TypeError) for r in results), results)

    def test_a_generator_batch_streams_each_caller_its_items(self):
        class M:
            @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.2)
            async def stream(self, prefixes):
                for i in range(3):
                    yield [f"{p}{i}" for p in prefixes]

        async def collect(m, p):
            return [x async for x in m.stream(p)]

        async def go():
            m = M()
            return await asyncio.gather(collect(m, "a"), collect(m, "b"))

        self.assertEqual(asyncio.run(go()), [["a0", "a1", "a2"], ["b0", "b1", "b2"]])

    def test_batch_needs_an_async_function(self):
        with self.assertRaisesRegex(TypeError, "async def"):
            serve.batch(lambda items: items)


class MultiplexTest(unittest.TestCase):
    def test_models_load_once_and_the_least_recently_used_goes(self):
        loads, unloaded = [], []

        class Model:
            def __init__(self, name):
                self.name = name

            def __del__(self):
                unloaded.append(self.name)

        class S:
            @serve.multiplexed(max_num_models_per_replica=2)
            async def get(self, model_id):
                loads.append(model_id)
                return Model(model_id)

        async def go():
            s = S()
            for m in ["a", "b", "a", "c", "a", "b"]:
                await s.get(m)

        asyncio.run(go())
        self.assertEqual(loads, ["a", "b", "c", "b"])
        self.assertEqual(unloaded[:2], ["b", "c"])


class MetricsTest(unittest.TestCase):
    """ferry.serve.metrics outside a replica: Ray's checks and errors; recording keeps nothing (the node's
    /metrics shows what replicas record: tests/integration/test_python.py)."""

    def test_rays_checks_on_names_tags_and_values(self):
        from ferry.serve import metrics
        with self.assertRaisesRegex(ValueError, "Empty name"):
            metrics.Counter("")
        with self.assertRaisesRegex(TypeError, "tag_keys should be a tuple"):
            metrics.Counter("c", tag_keys=["a"])
        with self.assertRaisesRegex(ValueError, "boundaries argument should be provided"):
            metrics.Histogram("h")
        with self.assertRaisesRegex(ValueError, "Use positive values"):
            metrics.Histogram("h", boundaries=[0, 1])
        c = metrics.Counter("c", description="d", tag_keys=("a", "b"))
        self.assertIs(c.set_default_tags({"a": "x"}), c)
        with self.assertRaisesRegex(ValueError, "Unrecognized tag key z"):
            c.set_default_tags({"z": "1"})
        with self.assertRaisesRegex(ValueError, "Missing value for tag key"):
            c.inc()
        with self.assertRaisesRegex(ValueError, "value must be >0"):
            c.inc(0, tags={"b": "y"})
        with self.assertRaisesRegex(TypeError, "Tag values must be str"):
            c.inc(tags={"b": 1})
        c.inc(2, tags={"b": "y"})  # valid: outside a replica, kept nowhere
        g = metrics.Gauge("g")
        g.set(None)
        with self.assertRaisesRegex(TypeError, "value must be int or float"):
            g.set("1")
        self.assertEqual(c.info, {"name": "c", "description": "d", "tag_keys": ("a", "b"),
                                  "default_tags": {"a": "x"}})
        with self.assertWarns(UserWarning):
            metrics.Gauge("1bad")
        # Picklable (Ray's __reduce__): a metric made in a driver is made again where it is unpickled.
        h = pickle.loads(pickle.dumps(metrics.Histogram("h", boundaries=[1, 2], tag_keys=("k",))))
        self.assertEqual(h.info["boundaries"], [1, 2])
        self.assertEqual(h.info["tag_keys"], ("k",))

class CodeVersionTest(unittest.TestCase):
    """The build's hash of an application's source: what makes redeploying edited code a new version."""

    def test_it_changes_with_the_code_and_ignores_caches_and_a_walk_past_its_bound(self):
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            os.makedirs(os.path.join(d, "pkg", "__pycache__"))
            os.makedirs(os.path.join(d, ".git"))
            with open(os.path.join(d, "app.py"), "w") as f:
                f.write("x = 1\n")
            with open(os.path.join(d, "pkg", "m.py"), "w") as f:
                f.write("y = 1\n")
            first = build.code_version([d], "app:x")
            for junk in (os.path.join(d, "pkg", "__pycache__", "m.py"), os.path.join(d, ".git", "h.py"),
                         os.path.join(d, "notes.txt")):
                with open(junk, "w") as f:
                    f.write("anything")
            self.assertEqual(build.code_version([d], "app:x"), first)
            with open(os.path.join(d, "pkg", "m.py"), "w") as f:
                f.write("y = 2\n")
            self.assertNotEqual(build.code_version([d], "app:x"), first)
            old = build._MAX_HASHED_FILES
            build._MAX_HASHED_FILES = 1
            try:
                self.assertEqual(len(list(build._source_files([d, d]))), 1)
            finally:
                build._MAX_HASHED_FILES = old

if __name__ == "__main__":
    unittest.main()
