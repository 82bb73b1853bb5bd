"""Dynamic batching as the replica sees it: batch sizes under load and when requests trickle, a failing
item, deadlines inside batches, and the adaptive wait."""
import concurrent.futures as cf
import time
import unittest

import requests

from harness import Ferry

BATCHED = """
http_options: {request_timeout_s: 30}
applications:
  - name: b
    route_prefix: /b
    deployments:
      - name: Batched
        import_path: builtin:busy
        args: {work_us: 200, batch_cost_us: 20000}
        max_ongoing_requests: 64
        batching: {max_batch_size: 8, batch_wait_timeout_s: 0.05, max_concurrent_batches: 1}
"""


def burst(ferry, n, path="/b"):
    with cf.ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda i: requests.get(ferry.url(path), timeout=30), range(n)))


class BatchingTest(unittest.TestCase):
    def test_batches_fill_under_load_and_stay_single_when_requests_trickle(self):
        with Ferry(BATCHED) as ferry:
            sizes = []
            for _ in range(3):
                results = burst(ferry, 24)
                self.assertEqual({r.status_code for r in results}, {200})
                sizes += [r.json()["batch_size"] for r in results]
            self.assertEqual(max(sizes), 8)  # full batches under load, never more than max_batch_size
            trickle = []
            for _ in range(5):
                trickle.append(requests.get(ferry.url("/b"), timeout=30).json()["batch_size"])
                time.sleep(0.1)
            self.assertEqual(trickle, [1] * 5)

    def test_a_failing_item_fails_only_its_request(self):
        with Ferry(BATCHED) as ferry:
            with cf.ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(requests.get, ferry.url("/b?fail=1" if i == 3 else "/b"), timeout=30) for i in range(8)]
                results = [f.result() for f in futures]
            self.assertEqual(results[3].status_code, 500)
            self.assertIn("this item failed", results[3].json()["error"])
            others = [r for i, r in enumerate(results) if i != 3]
            self.assertEqual({r.status_code for r in others}, {200})
            self.assertGreater(max(r.json()["batch_size"] for r in others), 1)

    def test_each_request_keeps_its_deadline(self):
        # A batch with one very slow request: it times out alone (504) and the batch's other requests, and
        # later ones, are answered. A batch's answers leave together when it ends, which is when the slow
        # request is cancelled at its deadline; so the others arrive a second later than it (their deadlines
        # a second later too). Whether they join its batch (it waits up to 2 s to fill) or the next one, they
        # are answered with a second to spare: no timing margin a slow or loaded machine could eat.
        with Ferry(BATCHED.replace("request_timeout_s: 30", "request_timeout_s: 3")
                   .replace("batch_cost_us: 20000", "batch_cost_us: 0")
                   .replace("max_batch_size: 8, batch_wait_timeout_s: 0.05", "max_batch_size: 4, batch_wait_timeout_s: 2")) as ferry:
            with cf.ThreadPoolExecutor(4) as pool:
                slow = pool.submit(requests.get, ferry.url("/b?work_us=60000000"), timeout=30)
                time.sleep(1)
                quick = [pool.submit(requests.get, ferry.url("/b"), timeout=30) for _ in range(3)]
                self.assertEqual(slow.result().status_code, 504)
                self.assertEqual({q.result().status_code for q in quick}, {200})
            self.assertEqual(requests.get(ferry.url("/b"), timeout=30).status_code, 200)

    def test_adaptive_wait_does_not_hold_a_lone_request(self):
        # batch_wait_timeout_s is 60 s: a lone request that waited it out would outlast the client's 20 s.
        config = BATCHED.replace("batch_wait_timeout_s: 0.05", "batch_wait_timeout_s: 60") \
                        .replace("max_concurrent_batches: 1", "max_concurrent_batches: 1, adaptive: true")
        with Ferry(config) as ferry:
            for _ in range(4):
                r = requests.get(ferry.url("/b"), timeout=20)
                self.assertEqual(r.status_code, 200)
                self.assertEqual(r.json()["batch_size"], 1)
                time.sleep(0.2)
            # Under load the adaptive wait still forms batches.
            sizes = [r.json()["batch_size"] for r in burst(ferry, 24)]
            self.assertGreater(max(sizes), 1)

    def test_per_request_work_is_done_as_requests_arrive_not_in_the_batch(self):
        # prepare_us is spent in the deployment's prepare(), which the replica runs on the thread that
        # received the request, before the batch: every batched answer says so.
        with Ferry(BATCHED.replace("batch_cost_us: 20000", "batch_cost_us: 20000, prepare_us: 300")) as ferry:
            results = burst(ferry, 24)
            self.assertEqual({r.status_code for r in results}, {200})
            self.assertGreater(max(r.json()["batch_size"] for r in results), 1)
            self.assertEqual({r.json()["prepared"] for r in results}, {"on arrival"})

    def test_deployments_without_handle_batch_are_not_batched(self):
        with Ferry("""
applications:
  - name: e
    route_prefix: /e
    deployments:
      - {name: E, import_path: "builtin:echo", batching: {max_batch_size: 4}}
""") as ferry:
            self.assertEqual(requests.get(ferry.url("/e"), timeout=10).status_code, 200)
            self.assertIn("has no handle_batch", ferry.stderr())


if __name__ == "__main__":
    unittest.main()
