"""Compute lanes: their shape never oversubscribes the cores, and calls land on the lane threads."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from core import lanes as lanes_module
from core.lanes import ComputeLanes, cgroup_cpu_limit, lane_shape, shared_lanes


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


def test_elastic_lanes_run_a_lone_call_wide_and_calls_under_load_narrow_never_both():
    lanes = ComputeLanes(1, 2, elastic=True)
    assert lanes.elastic and lanes.widths == (2, 1) and lanes.lanes == 2  # two engine calls at once
    lock = threading.Lock()
    running: list[int] = []  # widths computing right now
    seen: list[tuple[int, ...]] = []

    def work(hold: float = 0.02) -> tuple[str, int]:
        width = torch.get_num_threads()
        with lock:
            running.append(width)
            seen.append(tuple(sorted(running)))
        time.sleep(hold)
        with lock:
            running.remove(width)
        return threading.current_thread().name, width

    name, width = lanes.run(work)  # alone: the wide lane
    assert name == "cnnviz-compute-wide" and width == 2
    with ThreadPoolExecutor(6) as pool:
        out = list(pool.map(lambda _: lanes.run(work), range(24)))
    assert {w for _, w in out} >= {1}, "calls under load ran narrow"
    assert all(n.startswith("cnnviz-compute-narrow") for n, w in out if w == 1)
    assert all(set(s) in ({2}, {1}) and (s.count(2) <= 1) and len(s) <= 2 for s in seen), seen
    assert lanes.run(torch.get_num_threads) == 2  # idle again: wide
    assert lanes.run(lambda: lanes.run(work))[1] == 2  # nested on a lane: called directly
    assert asyncio.run(lanes.arun(work))[0].startswith("cnnviz-compute")
    with pytest.raises(ZeroDivisionError):
        lanes.run(lambda: 1 / 0)
    lanes.close()
    assert ComputeLanes(2, 1, elastic=True).elastic is False  # only one lane of several threads is elastic


def test_shared_lanes_are_one_per_shape():
    assert shared_lanes(1, 1) is shared_lanes(1, 1)
    assert shared_lanes(1, 1) is not shared_lanes(2, 1)


def test_omp_num_threads_caps_the_lane(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert lane_shape(cores=8) == (8, 1)
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert lane_shape(cores=8) == (2, 4)


def _cgroup(tmp_path, membership: str, files: dict[str, str]) -> tuple[str, str]:
    for rel, text in files.items():
        f = tmp_path / "fs" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    (tmp_path / "self").write_text(membership)
    return str(tmp_path / "fs"), str(tmp_path / "self")


def test_cgroup_v2_quota_is_read_and_the_tightest_ancestor_wins(tmp_path):
    root, me = _cgroup(tmp_path, "0::/kubepods/pod1/c1\n", {
        "cpu.max": "max 100000\n",
        "kubepods/pod1/cpu.max": "150000 100000\n",  # the pod's limit: 1.5 CPUs
        "kubepods/pod1/c1/cpu.max": "400000 100000\n"})
    assert cgroup_cpu_limit(root, me) == pytest.approx(1.5)


def test_cgroup_v2_without_a_quota_is_unlimited(tmp_path):
    root, me = _cgroup(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root, me) is None
    assert cgroup_cpu_limit(root, str(tmp_path / "missing")) is None


def test_cgroup_v1_quota_is_read(tmp_path):
    root, me = _cgroup(tmp_path, "4:memory:/x\n2:cpu,cpuacct:/docker/abc\n", {
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_limit(root, me) == pytest.approx(2.0)


def test_a_cpu_limit_below_the_affinity_mask_sizes_the_lanes(monkeypatch):
    """16 cores in the mask, a 2.5-CPU quota: two threads (rounded down), one lane of two."""
    monkeypatch.setattr(lanes_module.os, "sched_getaffinity", lambda _pid: set(range(16)))
    monkeypatch.setattr(lanes_module, "cgroup_cpu_limit", lambda: 2.5)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert lanes_module.cpu_threads() == 2
    assert lane_shape() == (1, 2)
    monkeypatch.setattr(lanes_module, "cgroup_cpu_limit", lambda: 0.5)
    assert lanes_module.cpu_threads() == 1
    monkeypatch.setattr(lanes_module, "cgroup_cpu_limit", lambda: None)
    assert lanes_module.cpu_threads() == 16


def test_a_worker_runs_torch_on_no_more_threads_than_its_cpus(monkeypatch):
    from workers import worker

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(worker, "cpu_threads", lambda: 1)

    def fitted() -> int:
        before = torch.get_num_threads()
        try:
            torch.set_num_threads(2)  # torch's default on a 2-core node, under a 1-CPU quota
            worker._fit_torch_threads()
            return torch.get_num_threads()
        finally:
            torch.set_num_threads(before)  # also the process default, as it was

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(fitted).result() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the operator's count wins
        assert pool.submit(fitted).result() == 2
