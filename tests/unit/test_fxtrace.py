"""fx tracing beside eager forwards in other threads (cnnviz/attribution/fast/fxtrace.py).

fx patches ``nn.Module.__call__`` for the whole process while it traces; before the fix, a predict
racing the background compile's trace failed with a 500. Here one thread traces again and again
while another runs eager forwards: every forward must give the reference answer, every trace the
same graph.
"""

from __future__ import annotations

import threading

import torch
from torch import fx, nn

from cnnviz.attribution.fast.fxtrace import trace


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Sequential(nn.Conv2d(8, 8, 3), nn.ReLU()),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def _race(trace_once) -> tuple[list[BaseException], int]:
    net, other = _net(), _net()
    x = torch.randn(2, 3, 12, 12)
    want = other(x)
    errors: list[BaseException] = []
    stop = threading.Event()
    forwards = 0

    def eager() -> None:
        nonlocal forwards
        while not stop.is_set():
            try:
                with torch.no_grad():
                    got = other(x)
                if not isinstance(got, torch.Tensor) or not torch.equal(got, want):
                    raise AssertionError(f"an eager forward answered {type(got).__name__}")
            except BaseException as exc:  # noqa: BLE001 - collected and reported by the test
                errors.append(exc)
                return
            forwards += 1

    t = threading.Thread(target=eager)
    t.start()
    try:
        graphs = [trace_once(net) for _ in range(150)]
    finally:
        stop.set()
        t.join()
    assert len({str(g) for g in graphs}) == 1, "a trace saw the other thread's calls"
    return errors, forwards


def test_eager_forwards_in_other_threads_pass_through_a_trace() -> None:
    errors, forwards = _race(lambda m: trace(fx.Tracer(), m))
    assert forwards > 0
    assert not errors, errors[0]


def test_concurrent_traces_each_get_their_own_graph() -> None:
    nets = [_net() for _ in range(4)]
    graphs: list[str] = []
    errs: list[BaseException] = []

    def tracer(m: nn.Module) -> None:
        try:
            for _ in range(20):
                graphs.append(str(trace(fx.Tracer(), m)))
        except BaseException as exc:  # noqa: BLE001
            errs.append(exc)

    threads = [threading.Thread(target=tracer, args=(m,)) for m in nets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errs
    assert len(graphs) == 80 and len(set(graphs)) == 1
