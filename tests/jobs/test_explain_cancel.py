"""Progress and cancel of explain jobs, one long job per method family (issue 30, part 7).

Each job would run far past 20 s on the worker's one thread; the test waits until its progress has
risen past the first forward passes (where a forward hook on the served module used to leave the
gradient family and incremental occlusion), DELETEs it, and expects ``canceled`` within a few
seconds: the engine checks the cancel flag at every chunk of its sweep (cnnviz/progress.py),
whichever network it runs.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.jobs.jobkit import TERMINAL, submit, wait_status

pytestmark = pytest.mark.jobs

CANCEL_WITHIN_S = 3.0
PAST_FIRST_STEPS = 12  # more than the forwards on the original images (IG: 2; occlusion: 1), several chunks

# family: (method, params, least total). Totals are the cost estimate at 224 px (forward-pass equivalents).
LONG_EXPLAINS = {
    "cam": ("scorecam", {}, 1000),  # 1,280 masked forwards of Lite0's last layer's channels
    "gradient": ("integrated_gradients", {"adaptive": False, "steps": 512}, 1500),  # on the folded copy
    "occlusion": ("occlusion", {"window": 8, "stride": 2}, 3000),  # the incremental engine: 11,881 windows
    "rise": ("rise", {"masks": 4000, "resolution": 64}, 300),
}


@pytest.mark.parametrize("family", list(LONG_EXPLAINS))
def test_explain_job_of_each_family_reports_progress_and_cancels(api: httpx.Client, cat_png: bytes,
                                                                 family: str) -> None:
    method, explain, least_total = LONG_EXPLAINS[family]
    r = submit(api, {"type": "explain", "params": {"method": method, "explain": {"top_k": 1, **explain}}},
               image=cat_png)
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    steps: list[int] = []

    def risen(body: dict) -> bool:
        if body["status"] == "running":
            steps.append(body["progress"]["step"])
            return steps[-1] >= PAST_FIRST_STEPS
        return body["status"] in TERMINAL

    body = wait_status(api, job, risen, timeout_s=90)
    assert body["status"] == "running", body
    assert body["progress"]["total"] >= least_total
    assert steps == sorted(steps)  # progress only rises
    t0 = time.monotonic()
    assert api.delete(f"/v1/jobs/{job}").status_code == 202
    body = wait_status(api, job, lambda b: b["status"] != "running", timeout_s=30)
    took = time.monotonic() - t0
    assert body["status"] == "canceled", body
    assert took < CANCEL_WITHIN_S, f"{method} took {took:.1f} s to stop after the DELETE"
    assert PAST_FIRST_STEPS <= body["progress"]["step"] < body["progress"]["total"]
