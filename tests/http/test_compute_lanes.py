"""Requests start no OpenMP team outside the compute lanes: forwards on a lane, light work on one thread.

The reason (core/lanes.py): each thread that runs torch keeps its own OpenMP team, and once the
teams outnumber the cores every kernel waits on a futex; a server that computed in its 40 pool
threads ran a forward at half speed. Forwards run on a lane (a forward hook records the thread
each runs in). The light torch work around an explanation (preprocessing, rendering, the PNG of a
224 px request) runs in the request's own thread on purpose (core/explaining.py ``light_work``),
which is safe only because every thread started after the lanes computes on one torch thread: a
count of the process's native threads catches any request that starts a team anyway (a new team
is new threads), and a second test checks the single-thread default itself.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import anyio
import pytest
import torch
from fastapi.testclient import TestClient

from cnnviz.attribution.fast.folded import folded_module
from core.settings import Settings
from service.app import create_app


@pytest.fixture
def threads_seen(catalog):
    model = catalog.get("efficientnet-lite0")
    seen: list[str] = []
    # The served module, and the copy the gradient methods run (cnnviz/attribution/fast/folded.py).
    handles = [net.register_forward_hook(lambda m, i, o: seen.append(threading.current_thread().name))
               for net in (model.module, folded_module(model))]
    yield seen
    for h in handles:
        h.remove()


@pytest.fixture(scope="module")
def client(catalog):
    # Entered: one event loop and thread pool for the module, so no thread is starting or ending between counts.
    with TestClient(create_app(Settings(preload_models=False), catalog=catalog)) as c:
        yield c


def _post(client, url, jpeg, params=None, accept=None):
    r = client.post(url, files={"image": ("c.jpg", jpeg, "image/jpeg")},
                    data={"params": json.dumps(params or {})}, headers={"accept": accept} if accept else {})
    assert r.status_code == 200, r.text
    return r


@pytest.mark.parametrize("route,params,accept", [
    ("models/efficientnet-lite0/predict", {"top_k": 3}, None),
    ("models/efficientnet-lite0/explain/gradcam", {"resolution": 96}, None),
    ("models/efficientnet-lite0/explain/saliency", {"resolution": 96, "top_k": 2}, "image/png"),
    ("models/efficientnet-lite0/inspect/activations", {"layer": "_blocks.2"}, None),
])
def test_forwards_run_on_a_compute_lane(client, chelsea_jpeg, threads_seen, route, params, accept):
    _post(client, f"/v1/{route}", chelsea_jpeg, params, accept)
    assert threads_seen, "the route ran no forward pass"
    assert all(name.startswith("cnnviz-compute") for name in threads_seen), threads_seen


def _native_threads() -> set[str]:
    """The process's threads that Python did not start (OpenMP's, BLAS's, torch's own)."""
    python = {str(t.native_id) for t in threading.enumerate()}
    return set(os.listdir("/proc/self/task")) - python


@pytest.fixture
def fresh_app(catalog):
    """A fresh app whose lane has made its team before counting."""
    with TestClient(create_app(Settings(preload_models=False), catalog=catalog)) as c:
        c.app.state.lanes.run(lambda: torch.ones(1 << 20).add_(1))
        yield c


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
@pytest.mark.parametrize("route,params,accept", [
    ("models/efficientnet-lite0/predict", {"top_k": 3}, None),
    ("models/efficientnet-lite0/explain/gradcam", {"resolution": 96}, None),
    ("models/efficientnet-lite0/explain/gradcam", {"resolution": 96}, "image/png"),
    ("models/efficientnet-lite0/explain/saliency", {"resolution": 96, "top_k": 2}, "image/png"),
    ("models/efficientnet-lite0/explain/occlusion", {"resolution": 64, "window": 32, "stride": 32}, "image/png"),
    ("models/efficientnet-lite0/inspect/activations", {"layer": "_blocks.2"}, "image/png"),
])
def test_no_request_starts_a_team_outside_the_lanes(fresh_app, chelsea_jpeg, route, params, accept):
    before = _native_threads()
    for _ in range(2):
        _post(fresh_app, f"/v1/{route}", chelsea_jpeg, params, accept)
    assert _native_threads() <= before, "a request started an OpenMP team outside the compute lanes"


def test_threads_outside_the_lanes_compute_alone(client):
    """The safety net: a torch call that slips out of the lanes runs on one thread and builds no team."""
    lanes = client.app.state.lanes
    assert lanes.run(torch.get_num_threads) == lanes.threads
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(torch.get_num_threads).result() == 1
    assert client.portal.call(anyio.to_thread.run_sync, torch.get_num_threads) == 1  # the server's own pool


def test_a_models_first_trace_runs_on_a_lane_not_the_event_loop(monkeypatch, chelsea_jpeg):
    """Occlusion prices every request on the event loop before admitting it; the fx trace behind
    that price is done when the model loads, on a lane, so no request's estimate ever traces."""
    from cnnviz.attribution.fast import incremental
    from cnnviz.models import Catalog

    traced: list[str] = []
    real = incremental._trace

    def recording(module):
        with incremental._LOCK:
            fresh = module not in incremental._TRACES
        if fresh:
            traced.append(threading.current_thread().name)
        return real(module)

    monkeypatch.setattr(incremental, "_trace", recording)
    catalog = Catalog.open(models_file=None, device=None, default=None)
    with TestClient(create_app(Settings(preload_models=False), catalog=catalog)) as c:
        _post(c, "/v1/models/efficientnet-lite0/explain/occlusion", chelsea_jpeg,
              {"resolution": 64, "window": 32, "stride": 32})
    assert traced and all(name.startswith("cnnviz-compute") for name in traced), traced
