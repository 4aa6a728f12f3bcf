"""The compiled forward: it agrees with the eager module, serves only the input it was compiled for
(so a request never recompiles), gives the CAM family the same maps as the hooked eager forward,
and a model that cannot compile stays eager and says why."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from cnnviz.attribution import METHODS, ClassTargets, get_method
from cnnviz.attribution.fast.layer_forward import using_layer_forward
from cnnviz.precision import offered
from core.compiled import CompiledForwards, compiler_missing
from tests.unit.tiny import SIZE, tiny_model

needs_compiler = pytest.mark.skipif(compiler_missing() is not None, reason=str(compiler_missing()))


@needs_compiler
def test_compiled_forward_matches_eager_and_serves_only_its_shape():
    model = tiny_model()
    forwards = CompiledForwards(True, torch.get_num_threads())
    assert forwards.state(model)[0] == "off"
    forwards.ensure(model)
    assert forwards.wait(model, timeout=600) == "ready", forwards.state(model)
    x = model.preprocessing.normalize(torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)))
    got, ran = forwards.forward(model, x)
    assert ran == "compiled"
    with torch.no_grad():
        want = model.module(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    batch = model.preprocessing.normalize(torch.rand(7, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4)))
    for n in (2, 3, 4, 7):  # a two, a two and a one, a four, a four and a two and a one
        out, ran = forwards.forward(model, batch[:n])
        with torch.no_grad():
            want = model.module(batch[:n])
        assert ran == "compiled" and out.shape == want.shape
        assert torch.allclose(out, want, rtol=1e-4, atol=1e-5), n
    bigger = torch.nn.functional.interpolate(x, size=(SIZE * 2, SIZE * 2))
    out, ran = forwards.forward(model, bigger)  # another size: the eager module, no recompile
    assert ran == "eager" and torch.allclose(out, model.module(bigger), atol=1e-6)

    # A thread of another torch width: Dynamo would compile a second graph inside the call, so eager.
    def other_width() -> str:
        torch.set_num_threads(forwards.threads + 1)
        return forwards.forward(model, x)[1]

    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(other_width).result() == "eager"
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs, "a call recompiled"
    assert forwards.forward(model, x)[1] == "compiled"


@needs_compiler
def test_each_lane_width_gets_its_own_graphs_and_a_request_never_compiles(monkeypatch):
    """Elastic lanes (core/lanes.py) compute at two widths: each has its own compiled graphs, and a
    served graph is run-only, so an input it has no graph for runs eagerly instead of compiling."""
    monkeypatch.setattr("core.compiled.BATCHES", (1, 2))
    model = tiny_model()
    forwards = CompiledForwards(True, (2, 1))
    forwards.ensure(model)
    assert forwards.wait(model, timeout=600) == "ready", forwards.state(model)
    assert "batches of 1 and 2 at 2 threads and batches of 1 and 2 at 1 thread" in forwards.state(model)[1]
    x = model.preprocessing.normalize(torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5)))
    with torch.no_grad():
        want = model.module(x)

    def at(width: int) -> tuple[torch.Tensor, str]:
        torch.set_num_threads(width)
        return forwards.forward(model, x)

    stats = torch._dynamo.utils.counters["stats"]
    graphs = stats["unique_graphs"]
    with ThreadPoolExecutor(1) as pool:
        for width in (2, 1):
            out, ran = pool.submit(at, width).result()
            assert ran == "compiled" and torch.allclose(out, want, rtol=1e-4, atol=1e-5), width
        assert pool.submit(at, 3).result()[1] == "eager"  # no graphs at this width
    entry = forwards._entry(model)
    assert entry is not None and entry.fns[1][1] is not entry.fns[2][1]
    with torch.no_grad():  # a batch of three was never compiled: the run-only graph runs it eagerly
        assert torch.allclose(entry.fns[1][2](x)[0], want, rtol=1e-4, atol=1e-5)
    assert stats["unique_graphs"] == graphs, "a served graph compiled"


def test_disabled_and_failed_compiles_stay_eager(monkeypatch):
    model = tiny_model()
    off = CompiledForwards(False, 2)
    off.ensure(model)
    state, reason = off.state(model)
    assert state == "off" and "disabled" in reason
    assert off.forward(model, torch.zeros(1, 3, SIZE, SIZE))[1] == "eager"

    broken = CompiledForwards(True, 2)
    broken.off_reason = None  # as if a compiler were there

    def fail(*_args):
        raise RuntimeError("compiled logits differ from eager by 1 (scale 1)")

    monkeypatch.setattr(CompiledForwards, "_build", staticmethod(fail))
    broken.ensure(model)
    assert broken.wait(model, timeout=60) == "failed"
    assert "differ" in broken.state(model)[1]
    assert broken.forward(model, torch.zeros(1, 3, SIZE, SIZE))[1] == "eager"


@pytest.fixture(scope="module")
def compiled_tiny():
    model = tiny_model()
    forwards = CompiledForwards(True, torch.get_num_threads())
    forwards.ensure(model)
    assert forwards.wait(model, timeout=600) == "ready", forwards.state(model)
    reason = forwards.state(model)[1]
    assert "CAM family at layer act3" in reason and "batches of 1, 2 and 4" in reason
    return model, forwards


@needs_compiler
@pytest.mark.parametrize("method", sorted(n for n, m in METHODS.items() if m.family == "cam"))
def test_cam_family_on_the_compiled_road_gives_the_eager_maps(compiled_tiny, method):
    """The compiled graph up to the default layer plus the eager tail: the maps, scores and targets of
    the hooked eager forward (the gradient at the layer comes from the same tail), alone and batched."""
    model, forwards = compiled_tiny
    m = get_method(method)
    for n in (1, 3):  # one image, and a two and a one
        x = model.preprocessing.normalize(torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2)))
        targets = ClassTargets(top_k=2)
        want = m.attribute(model, x, targets, None, None)
        with using_layer_forward(forwards.layer_forward):
            got = m.attribute(model, x, targets, None, None)
        assert (want.extras["forward"], got.extras["forward"]) == ("eager", "compiled")
        assert got.targets == want.targets
        for i in range(n):
            assert got.scores[i] == pytest.approx(want.scores[i], rel=1e-4, abs=1e-5)
            for g, w in zip(got.maps[i], want.maps[i], strict=True):
                assert torch.allclose(g, w, rtol=1e-4, atol=1e-5 * (float(w.abs().max()) or 1.0)), (g - w).abs().max()


@needs_compiler
def test_compiled_road_serves_only_its_layer_and_precision(compiled_tiny):
    model, forwards = compiled_tiny
    m = get_method("gradcam")
    x = model.preprocessing.normalize(torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)))
    with using_layer_forward(forwards.layer_forward):
        assert m.attribute(model, x, ClassTargets(top_k=1), "act2", None).extras["forward"] == "eager"
        if "bf16" in offered(model.device):
            assert m.attribute(model, x, ClassTargets(top_k=1), None, None,
                               precision="bf16").extras["forward"] == "eager"
        assert m.attribute(model, x, ClassTargets(top_k=1), None, None).extras["forward"] == "compiled"
