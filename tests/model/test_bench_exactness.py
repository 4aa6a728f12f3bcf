"""The fast paths the bench credits give the answers of the plain paths, on the real Lite0 at 224 px.

bench/bench_speed.py and bench/bench_components.py time the batch-norm-folded copy, the compiled
road (a batch of four on the compiled graph) and the incremental occlusion engine against plain
peers. A speed-up only counts if the answer is the same, so each is checked here where the bench
runs it: every gradient method's map on the folded copy against the served module, the compiled
batch-of-four Grad-CAM and logits against each image alone on the eager module, and incremental
occlusion at the bench's window and stride (32, 16) against the batched full forwards.
"""

from __future__ import annotations

import pytest
import torch
from conftest import to_tensor

import cnnviz.attribution.base as attribution_base
from cnnviz.attribution import METHODS, ClassTargets, get_method
from cnnviz.attribution.gradient import GradientMethod

pytestmark = pytest.mark.model

GRADIENT_METHODS = sorted(name for name, m in METHODS.items() if isinstance(m, GradientMethod)
                          or (isinstance(m, type) and issubclass(m, GradientMethod)))
# Cheap settings where a method's default is a long sweep (the same settings on both sides).
PARAMS = {"integrated_gradients": {"steps": 8, "adaptive": False}, "smoothgrad": {"samples": 4}}


@pytest.fixture(scope="module")
def cat(lite0, chelsea):
    x = lite0.preprocessing.batch([to_tensor(chelsea)], device=lite0.device)
    with torch.no_grad():
        target = int(lite0.module(x).argmax())
    return x, target


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


def test_the_gradient_methods_are_listed():
    assert {"saliency", "guided_backprop", "deconvnet", "integrated_gradients"} <= set(GRADIENT_METHODS)


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_folded_copy_gives_the_served_modules_map(lite0, cat, method, monkeypatch):
    """Folding is exact in real arithmetic; in float32 a ReLU6 input within rounding of 0 or 6 may let a
    gradient through in one network and not the other, so the maps agree to rounding, not bit for bit."""
    x, target = cat
    m = get_method(method)
    params = {k: v for k, v in PARAMS.get(method, {}).items() if k in m.Params.__dataclass_fields__} \
        if hasattr(m, "Params") else {}
    targets = ClassTargets(indices=((target,),))
    folded = m.attribute(lite0, x, targets, None, **params).maps[0][0]
    monkeypatch.setattr(attribution_base, "folded_module", lambda model: model.module)
    served = m.attribute(lite0, x, targets, None, **params).maps[0][0]
    assert folded.shape == served.shape
    assert _corr(folded, served) > 0.999, method
    rel = float((folded - served).abs().mean() / served.abs().mean().clamp_min(1e-12))
    assert rel < 2e-2, (method, rel)


@pytest.fixture(scope="module")
def compiled(lite0):  # two Inductor compiles of Lite0: the suite's slowest fixture but one, on a busy machine
    import core.compiled
    from core.compiled import CompiledForwards, compiler_missing

    if compiler_missing():
        pytest.skip(compiler_missing())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(core.compiled, "BATCHES", (1, 4))  # the lone graph and the bench's batch of four
        forwards = CompiledForwards(True, torch.get_num_threads())
        forwards.ensure(lite0)
        assert forwards.wait(lite0) == "ready", forwards.state(lite0)  # pytest-timeout bounds it
    yield forwards


@pytest.mark.timeout(2400)  # two compiles and 169 full forwards: minutes on a busy 2-core machine
def test_compiled_batch_of_four_equals_each_image_alone_on_the_eager_module(lite0, chelsea, coffee, compiled):
    from cnnviz.attribution.fast.layer_forward import using_layer_forward
    from core.predicting import eager_forward

    flipped = chelsea[:, ::-1].copy()
    images = [to_tensor(a) for a in (chelsea, coffee, flipped, coffee[::-1].copy())]
    x4 = lite0.preprocessing.batch(images, device=lite0.device)
    logits, ran = compiled.forward(lite0, x4)
    assert ran == "compiled"
    gradcam = get_method("gradcam")
    with using_layer_forward(compiled.layer_forward):
        batch = gradcam.attribute(lite0, x4, ClassTargets(top_k=1), None)
    assert batch.extras["forward"] == "compiled"
    for i in range(4):
        lone_logits, kind = eager_forward(lite0, x4[i:i + 1])
        assert kind == "eager"
        scale = float(lone_logits.abs().max())
        torch.testing.assert_close(logits[i:i + 1], lone_logits, rtol=0, atol=1e-3 * scale)
        lone = gradcam.attribute(lite0, x4[i:i + 1], ClassTargets(top_k=1), None)
        assert lone.extras.get("forward", "eager") == "eager"
        assert batch.targets[i] == lone.targets[0], i
        want = lone.maps[0][0]
        torch.testing.assert_close(batch.maps[i][0], want, rtol=0, atol=1e-4 * float(want.abs().max()) + 1e-7)


@pytest.mark.timeout(2400)  # two compiles and 169 full forwards: minutes on a busy 2-core machine
def test_incremental_occlusion_at_the_bench_geometry_equals_full_forwards(lite0, cat):
    x, target = cat
    occlusion = get_method("occlusion")
    targets = ClassTargets(indices=((target,),))
    fast = occlusion.attribute(lite0, x, targets, None, window=32, stride=16, fill="mean")
    full = occlusion.attribute(lite0, x, targets, None, window=32, stride=16, fill="mean", engine="full")
    assert (fast.extras["engine"], full.extras["engine"]) == ("incremental", "full")
    want = full.maps[0][0]
    torch.testing.assert_close(fast.maps[0][0], want, rtol=0, atol=1e-4 * float(want.abs().max()))
