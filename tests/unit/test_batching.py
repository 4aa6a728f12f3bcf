"""Batching across requests (core/batching.py): a batched answer is the lone answer, per family.

Real EfficientNet-Lite0, small inputs. Requests differ in image size, ``top_k`` and explicit
targets; each is compared with the same request computed alone.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from core.batching import ExplainBatcher
from core.errors import Unavailable
from core.explaining import compute, run_explanation
from core.imaging import decode_image, image_to_tensor
from core.schemas.explain import params_model
from core.validation import validate_params
from tests.conftest import encode

# method, shared params (the computation key), a network input small enough to be quick
FAMILIES = [
    ("gradcam", {}, 96),
    ("input_x_gradient", {}, 64),
    ("occlusion", {"window": 24, "stride": 24}, 48),
]


def _params(method: str, **kw):
    return validate_params(params_model(method), kw)


def _x(lite0, arr, size: int) -> torch.Tensor:
    prep = lite0.preprocessing
    return prep.normalize(prep.fit(image_to_tensor(decode_image(encode(arr)).image), size)[None])


@pytest.fixture(scope="module")
def photos(chelsea, coffee):
    return [chelsea, coffee, chelsea[40:250, 100:400], coffee[::2, ::3]]  # four sizes


def _same(batched, alone) -> None:
    assert batched.targets == alone.targets
    assert batched.layer == alone.layer
    for sb, sa in zip(batched.scores, alone.scores, strict=True):
        assert sb == pytest.approx(sa, rel=1e-4, abs=1e-4)
    for pb, pa in zip(batched.probabilities, alone.probabilities, strict=True):
        assert pb == pytest.approx(pa, rel=1e-4, abs=1e-5)
    for rb, ra in zip(batched.maps, alone.maps, strict=True):
        assert len(rb) == len(ra)
        for mb, ma in zip(rb, ra, strict=True):
            scale = float(ma.abs().max()) + 1e-12
            assert torch.allclose(mb, ma, rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.parametrize(("method", "shared", "size"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_batched_answer_equals_lone_answer(lite0, photos, method, shared, size):
    b = ExplainBatcher(max_batch=16)
    top_k = [_params(method, top_k=1, resolution=size, **shared), _params(method, top_k=3, resolution=size, **shared)]
    classes = [_params(method, target=285, resolution=size, **shared),
               _params(method, targets=[[281, 7], [1]], resolution=size, **shared)]
    xs = [_x(lite0, p, size) for p in photos]
    for group in (
        [(xs[0], top_k[0]), (xs[1], top_k[1]), (xs[2], top_k[0])],                 # different top_k
        [(xs[3], classes[0]), (torch.cat([xs[1], xs[2]]), classes[1])],           # explicit classes
    ):
        keys = {b.key(lite0, method, x, p) for x, p in group}
        assert len(keys) == 1 and None not in keys  # one computation: these batch together
        for (x, p), batched in zip(group, b.run_batch(lite0, method, group), strict=True):
            _same(batched, compute(lite0, method, x, p))
    assert b.key(lite0, method, xs[0], top_k[0]) != b.key(lite0, method, xs[0], classes[0])


def test_keys_separate_what_changes_the_computation(lite0, photos):
    b = ExplainBatcher()
    x = _x(lite0, photos[0], 64)
    base = b.key(lite0, "gradcam", x, _params("gradcam", resolution=64))
    assert base == b.key(lite0, "gradcam", x, _params("gradcam", resolution=64, top_k=4, resize="center-crop"))
    assert base != b.key(lite0, "layercam", x, _params("layercam", resolution=64))
    assert base != b.key(lite0, "gradcam", x, _params("gradcam", resolution=64, layer="_blocks.10"))
    assert base != b.key(lite0, "gradcam", _x(lite0, photos[0], 96), _params("gradcam", resolution=96))
    assert b.key(lite0, "occlusion", x, _params("occlusion", window=16, stride=16)) != \
        b.key(lite0, "occlusion", x, _params("occlusion", window=16, stride=8))
    # answers that depend on the rest of the batch are never batched
    assert b.key(lite0, "smoothgrad", x, _params("smoothgrad", samples=2)) is None
    assert b.key(lite0, "rise", x, _params("rise", masks=8)) is None
    assert b.key(lite0, "integrated_gradients", x, _params("integrated_gradients")) is None
    assert b.key(lite0, "integrated_gradients", x, _params("integrated_gradients", adaptive=False)) is not None


def _decoded(photos):
    return [decode_image(encode(p)) for p in photos]


def test_concurrent_requests_share_one_engine_call(lite0, photos):
    """Three admitted requests in three threads: one engine call, each answer as if alone."""
    b = ExplainBatcher(max_wait_s=2.0, max_batch=3)
    imgs = _decoded(photos[:3])
    params = [_params("gradcam", resolution=96, top_k=k) for k in (1, 2, 1)]
    answers: list = [None] * 3
    barrier = threading.Barrier(3)

    def client(i: int) -> None:
        with b.admit() as ticket:
            barrier.wait()
            answers[i] = run_explanation(lite0, "gradcam", [imgs[i]], params[i], engine=ticket.engine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.perf_counter() - t0 < 1.5  # dispatched when full, not at the 2 s wait bound
    assert (b.stats.calls, b.stats.requests, b.stats.batched_requests, b.stats.largest) == (1, 3, 3, 3)
    for i in range(3):
        alone = run_explanation(lite0, "gradcam", [imgs[i]], params[i])
        got = answers[i].images[0].explanations
        want = alone.images[0].explanations
        assert [e.target.index for e in got] == [e.target.index for e in want]
        for e, w in zip(got, want, strict=True):
            assert e.target.score == pytest.approx(w.target.score, abs=1e-4)
            assert e.map.max == pytest.approx(w.map.max, rel=1e-3, abs=1e-5)


def test_wait_is_bounded_and_a_lone_request_does_not_wait(lite0, photos):
    params = _params("gradcam", resolution=64)
    x = _x(lite0, photos[0], 64)
    b = ExplainBatcher(max_wait_s=5.0, max_batch=8)
    with b.admit() as ticket:  # alone in the process: dispatched at once despite the 5 s bound
        ticket.engine(lite0, "gradcam", x, params)
    assert b.stats.last_wait_s < 0.05

    b = ExplainBatcher(max_wait_s=0.2, max_batch=8)
    with b.admit(), b.admit() as ticket:  # another admitted request that never comes: wait 0.2 s, no more
        ticket.engine(lite0, "gradcam", x, params)
    assert 0.2 <= b.stats.last_wait_s < 0.2 + 0.5  # slack for a loaded machine's thread wake-up
    assert b.stats.calls == 1 and b.stats.largest == 0  # it ran alone


def test_a_bad_member_fails_alone(lite0, photos):
    b = ExplainBatcher(max_wait_s=2.0, max_batch=2)
    x = _x(lite0, photos[0], 64)
    good, bad = _params("gradcam", resolution=64, target=285), _params("gradcam", resolution=64, target=1000)
    out: dict = {}
    barrier = threading.Barrier(2)

    def client(name: str, p) -> None:
        with b.admit() as ticket:
            barrier.wait()
            try:
                out[name] = ticket.engine(lite0, "gradcam", x, p)
            except Exception as exc:  # noqa: BLE001
                out[name] = exc

    threads = [threading.Thread(target=client, args=a) for a in (("good", good), ("bad", bad))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out["good"].targets == [[285]]
    assert getattr(out["bad"], "slug", None) == "unknown-class"


def test_admission_bound():
    b = ExplainBatcher(max_inflight=2, retry_after_s=3)
    with b.admit(), b.admit():
        t0 = time.perf_counter()
        with pytest.raises(Unavailable) as err, b.admit():
            pass
        assert time.perf_counter() - t0 < 0.05
        assert err.value.slug == "inline-busy" and err.value.retry_after == 3
    with b.admit():
        assert b.admitted == 1
    assert b.admitted == 0
