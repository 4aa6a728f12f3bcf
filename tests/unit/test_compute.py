"""Compute lanes: their shape never oversubscribes the cores, and calls land on the lane threads."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from core.compute import ComputeLanes, lane_shape, shared_lanes


@pytest.mark.parametrize("cores", [1, 2, 3, 4, 8, 16, 64])
def test_default_shape_fills_the_cores_without_oversubscribing(cores):
    lanes, threads = lane_shape(cores=cores)
    assert lanes * threads <= cores and lanes >= 1 and 1 <= threads <= 4
    assert lanes * threads > cores - threads  # no lane's worth of cores left idle


def test_a_given_lane_count_divides_the_cores():
    assert lane_shape(lanes=2, cores=8) == (2, 4)
    assert lane_shape(lanes=3, cores=2) == (3, 1)  # more lanes than cores: one thread each (and a warning)
    assert lane_shape(threads=1, cores=4) == (4, 1)


def test_calls_run_on_lane_threads_with_their_torch_threads():
    lanes = ComputeLanes(2, 1)
    seen = set()

    def where() -> tuple[str, int]:
        seen.add(threading.current_thread().name)
        return threading.current_thread().name, torch.get_num_threads()

    name, threads = lanes.run(where)
    assert name.startswith("cnnviz-compute") and threads == 1
    assert asyncio.run(lanes.arun(where))[0].startswith("cnnviz-compute")
    # On a lane, run() calls directly: nested use cannot wait on itself.
    assert lanes.run(lambda: lanes.run(where))[0].startswith("cnnviz-compute")
    with pytest.raises(ZeroDivisionError):  # an error reaches the caller
        lanes.run(lambda: 1 / 0)
    assert len(seen) <= 2
    lanes.close()


def test_shared_lanes_are_one_per_shape():
    assert shared_lanes(1, 1) is shared_lanes(1, 1)
    assert shared_lanes(1, 1) is not shared_lanes(2, 1)


def test_omp_num_threads_caps_the_lane(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert lane_shape(cores=8) == (8, 1)
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert lane_shape(cores=8) == (2, 4)
