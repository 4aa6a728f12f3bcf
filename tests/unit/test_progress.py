"""The engine's progress/cancel checkpoint (cnnviz/progress.py) in every family's long loops.

A job's progress and cancel hang on it (workers/runners/explain.py): each sweep must report its
chunks as it goes, whichever network it runs (the folded copy of the gradient family, the
incremental occlusion graph), the work must add up to the cost estimate the job's ``total`` comes
from, and an exception raised by the callback must stop the sweep at that chunk.
"""

from __future__ import annotations

import threading

import pytest
import torch
from tiny import tiny_batch, tiny_model

from cnnviz.attribution import ClassTargets, get_method
from cnnviz.attribution.fast.folded import folded_module
from cnnviz.progress import checkpoint, reporting

# One method per family, each sized to give many chunks on the tiny 32 px net (2 images).
SWEEPS = {
    "scorecam": {"batch_size": 1},  # CAM family: one masked input per chunk, 16 channels per image
    "ablationcam": {"batch_size": 1},  # CAM family: the tail after the layer, one channel per chunk
    "integrated_gradients": {"adaptive": False, "steps": 12, "batch_size": 2},  # gradient family, folded copy
    "smoothgrad": {"samples": 12, "batch_size": 2},
    "occlusion": {"window": 8, "stride": 4, "batch_size": 4},  # incremental engine (checked below)
    "rise": {"masks": 24, "batch_size": 4},
}


class Stop(Exception):
    """What the test's callback raises (a worker's raises ``Cancelled``)."""


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def x(model):
    return tiny_batch(2, model=model)


def _run(model, x, method: str):
    return get_method(method).attribute(model, x, ClassTargets(top_k=1), **SWEEPS[method])


@pytest.mark.parametrize("method", list(SWEEPS))
def test_work_reported_adds_up_to_the_estimate(model, x, method):
    """A whole run reports chunk after chunk, summing to the cost estimate a job's total comes from."""
    ticks: list[float] = []
    with reporting(ticks.append):
        result = _run(model, x, method)
    assert len(ticks) >= 10 and all(t > 0 for t in ticks)
    estimate = get_method(method).estimate_cost(model, x.shape[0], 1, SWEEPS[method])
    assert sum(ticks) == pytest.approx(estimate, rel=0.02)
    if method == "occlusion":
        assert result.extras["engine"] == "incremental"  # the patch graph, never the served module's forward
    if method == "integrated_gradients":
        assert folded_module(model) is not model.module  # its path points run on the batch-norm-folded copy


@pytest.mark.parametrize("method", list(SWEEPS))
def test_a_raising_callback_stops_the_sweep(model, x, method):
    """The callback raising at the 4th chunk ends the call there: no chunk runs after it."""
    seen: list[float] = []

    def stop_at_four(work: float) -> None:
        seen.append(work)
        if len(seen) == 4:
            raise Stop

    with pytest.raises(Stop), reporting(stop_at_four):
        _run(model, x, method)
    assert len(seen) == 4
    # The same call after the stop runs whole (no hook, plan or flag left behind).
    with reporting(seen.append):
        _run(model, x, method)
    assert len(seen) > 10


def test_resolution_scales_the_work(model):
    """At twice the input size a chunk counts four times the forwards, as the cost estimate scales."""
    ticks: list[float] = []
    big = torch.nn.functional.interpolate(tiny_batch(1, model=model), scale_factor=2)
    with reporting(ticks.append):
        get_method("rise").attribute(model, big, ClassTargets(top_k=1), masks=8, batch_size=4)
    assert sum(ticks) == pytest.approx(4 * (1 + 8))


def test_reporting_is_per_thread_and_nests():
    outer: list[float] = []
    inner: list[float] = []
    other: list[float] = []
    checkpoint(1.0)  # nobody listening: nothing happens
    with reporting(outer.append):
        checkpoint(1.0)
        with reporting(inner.append):
            checkpoint(2.0)
            t = threading.Thread(target=checkpoint, args=(5.0,))  # another thread's work is not ours
            t.start()
            t.join()
        checkpoint(3.0)
        with reporting(other.append):
            t = threading.Thread(target=checkpoint, args=(7.0,))
            t.start()
            t.join()
    assert outer == [1.0, 3.0] and inner == [2.0] and other == []
