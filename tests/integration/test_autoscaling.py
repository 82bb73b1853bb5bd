"""Autoscaling under a bounded load ramp, and scale to zero and back."""
import concurrent.futures as cf
import threading
import time
import unittest

import requests

from harness import Ferry
from test_lifecycle import status, wait_until

RAMP = """
applications:
  - name: work
    route_prefix: /work
    deployments:
      - name: Busy
        import_path: builtin:busy
        args: {work_us: 20000}
        max_ongoing_requests: 2
        autoscaling_config:
          min_replicas: 1
          max_replicas: 4
          target_ongoing_requests: 1
          upscale_delay_s: 0.5
          downscale_delay_s: 2
          metrics_interval_s: 0.2
          look_back_period_s: 1
"""

ZERO = """
http_options: {request_timeout_s: 30}
applications:
  - name: lazy
    route_prefix: /lazy
    deployments:
      - name: Echo
        import_path: builtin:echo
        autoscaling_config:
          min_replicas: 0
          max_replicas: 2
          initial_replicas: 0
          downscale_delay_s: 1
          downscale_to_zero_delay_s: 1
          metrics_interval_s: 0.2
          look_back_period_s: 0.5
"""


def autoscaling(address, app, deployment):
    return status(address)["applications"][app]["deployments"][deployment]


def running(address, app, deployment):
    return autoscaling(address, app, deployment)["replica_states"].get("RUNNING", 0)


class AutoscalingTest(unittest.TestCase):
    def test_load_ramp_scales_up_then_back_down(self):
        with Ferry(RAMP) as ferry:
            self.assertEqual(running(ferry.admin, "work", "Busy"), 1)
            stop = threading.Event()
            codes = []

            def client():
                deadline = time.time() + 60
                with requests.Session() as s:
                    for _ in range(3000):
                        if stop.is_set() or time.time() > deadline:
                            return
                        codes.append(s.get(ferry.url("/work"), timeout=30).status_code)

            with cf.ThreadPoolExecutor(8) as pool:
                for _ in range(8):
                    pool.submit(client)
                try:
                    wait_until(lambda: running(ferry.admin, "work", "Busy") == 4, timeout=30, what="4 replicas")
                finally:
                    stop.set()
            self.assertEqual(set(codes), {200})
            d = autoscaling(ferry.admin, "work", "Busy")
            ups = [x for x in d["autoscaling"]["decisions"] if x["to"] > x["from"]]
            self.assertTrue(ups, d["autoscaling"])
            self.assertIn("target_ongoing_requests 1", ups[0]["reason"])
            self.assertGreater(ups[0]["average_load"], 1)
            self.assertIn("autoscaling work/Busy: 1 -> ", ferry.stderr())
            # Idle again: after downscale_delay_s it returns to min_replicas.
            wait_until(lambda: running(ferry.admin, "work", "Busy") == 1 and
                       autoscaling(ferry.admin, "work", "Busy")["status"] == "HEALTHY", timeout=30, what="back to 1")
            downs = [x for x in autoscaling(ferry.admin, "work", "Busy")["autoscaling"]["decisions"] if x["to"] < x["from"]]
            self.assertTrue(downs)
            self.assertIn("downscale_delay_s", downs[-1]["reason"])

    def test_scale_from_zero_serves_the_first_request(self):
        with Ferry(ZERO) as ferry:
            self.assertEqual(status(ferry.admin)["applications"]["lazy"]["deployments"]["Echo"]["replicas"], [])
            r = requests.get(ferry.url("/lazy/first"), timeout=30)
            self.assertEqual(r.status_code, 200)
            self.assertEqual(r.json()["path"], "/lazy/first")
            a = autoscaling(ferry.admin, "lazy", "Echo")["autoscaling"]
            self.assertIsNotNone(a["last_cold_start_s"])
            self.assertGreater(a["last_cold_start_s"], 0)
            self.assertIn("cold start", a["decisions"][0]["reason"])
            # Idle: back to zero after downscale_to_zero_delay_s; and a cold start again works.
            wait_until(lambda: not autoscaling(ferry.admin, "lazy", "Echo")["replicas"], timeout=30, what="zero replicas")
            self.assertEqual(requests.get(ferry.url("/lazy/again"), timeout=30).status_code, 200)


if __name__ == "__main__":
    unittest.main()
