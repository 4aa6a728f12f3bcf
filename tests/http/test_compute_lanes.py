"""Every torch call of a request runs on a compute lane, never in the server's thread pool.

The reason (core/compute.py): each thread that runs torch keeps its own OpenMP team, and once the
teams outnumber the cores every kernel waits on a futex; a server that computed in its 40 pool
threads ran a forward at half speed. A forward hook records the thread each forward runs in.
"""

from __future__ import annotations

import json
import threading

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings


@pytest.fixture
def threads_seen(catalog):
    model = catalog.get("efficientnet-lite0")
    seen: list[str] = []
    handle = model.module.register_forward_hook(lambda m, i, o: seen.append(threading.current_thread().name))
    yield seen
    handle.remove()


@pytest.fixture(scope="module")
def client(catalog):
    return TestClient(create_app(Settings(preload_models=False), catalog=catalog))


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
