"""Occlusion and RISE on tiny seeded networks: brute force, captum, and a model with a known answer."""

from __future__ import annotations

import math

import pytest
import torch
from captum.attr import Occlusion
from tiny import tiny_batch, tiny_model, wrap
from torch import nn

from cnnviz.attribution import ClassTargets, EngineError, UnitTarget, get_method
from cnnviz.attribution.perturbation import INCREMENTAL_COST, rise_masks
from cnnviz.blur import gaussian_blur


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def x(model):
    return tiny_batch(2, model=model)


def fill_for(model, x, fill):
    if fill == "mean":
        return torch.zeros_like(x)
    if fill == "zero":
        return model.preprocessing.normalize(torch.zeros_like(x))
    return gaussian_blur(x, 10.0)


def brute_force_occlusion(model, x, cls, window, stride, fill):
    """One window at a time, written as plainly as possible."""
    n, _, h, w = x.shape
    ref = fill_for(model, x, fill)
    total = torch.zeros(n, h, w)
    count = torch.zeros(n, h, w)
    with torch.no_grad():
        base = model.module(x)[torch.arange(n), cls]
        y0 = 0
        while True:
            x0 = 0
            while True:
                occ = x.clone()
                occ[:, :, y0:y0 + window, x0:x0 + window] = ref[:, :, y0:y0 + window, x0:x0 + window]
                drop = base - model.module(occ)[torch.arange(n), cls]
                total[:, y0:y0 + window, x0:x0 + window] += drop[:, None, None]
                count[:, y0:y0 + window, x0:x0 + window] += 1
                if x0 + window >= w:
                    break
                x0 += stride
            if y0 + window >= h:
                break
            y0 += stride
    return total / count


@pytest.mark.parametrize("engine", ["auto", "full"])
@pytest.mark.parametrize("fill", ["mean", "zero", "blur"])
@pytest.mark.parametrize("window,stride", [(8, 4), (7, 5), (5, 5), (32, 1), (1, 1)])
def test_occlusion_equals_brute_force(model, x, window, stride, fill, engine):
    cls = model.module(x).argmax(1).tolist()
    e = get_method("occlusion").attribute(model, x, ClassTargets(indices=tuple((c,) for c in cls)),
                                          window=window, stride=stride, fill=fill, batch_size=13, engine=engine)
    # The tiny net is a plain conv stack: auto takes the patch engine wherever a patch is smaller than its map.
    assert e.extras["engine"] == ("full" if engine == "full" or window == 32 else "incremental")
    got = torch.stack([m[0] for m in e.maps])
    torch.testing.assert_close(got, brute_force_occlusion(model, x, cls, window, stride, fill),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("engine", ["auto", "full"])
@pytest.mark.parametrize("window,stride", [(8, 4), (7, 5), (6, 3)])
def test_occlusion_equals_captum(model, x, window, stride, engine):
    cls = model.module(x).argmax(1).tolist()
    theirs = Occlusion(model.module).attribute(x, sliding_window_shapes=(3, window, window),
                                               strides=(3, stride, stride), target=cls, baselines=0.0,
                                               perturbations_per_eval=16)
    # The window spans all three channels: captum's channels are identical copies of our map.
    torch.testing.assert_close(theirs[:, 0], theirs[:, 2])
    got = get_method("occlusion").attribute(model, x, ClassTargets(top_k=1), window=window, stride=stride,
                                            engine=engine)
    assert got.extras["engine"] == ("incremental" if engine == "auto" else "full")
    torch.testing.assert_close(torch.stack([m[0] for m in got.maps]), theirs[:, 0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("engine", ["auto", "full"])
def test_occlusion_serves_all_targets_from_one_sweep(engine, x):
    model = tiny_model()  # its own: the patch engine checks a new plan against the module once
    calls = []
    handle = model.module.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        e = get_method("occlusion").attribute(model, x, ClassTargets(top_k=4), window=8, stride=4, batch_size=40,
                                              engine=engine)
        first = list(calls)
        calls.clear()
        get_method("occlusion").attribute(model, x, ClassTargets(top_k=4), window=8, stride=4, batch_size=40,
                                          engine=engine)
    finally:
        handle.remove()
    windows = 7 * 7
    assert e.extras["windows"] == windows and e.extras["engine"] == ("incremental" if engine == "auto" else "full")
    if engine == "full":
        assert first == calls == [2] + [40] * (2 * windows // 40) + [2 * windows % 40]  # originals, then the sweep
    else:
        # Originals, then (first time only) the plan's check on its first and last window; no full forward.
        assert first == [2, 1, 1] and calls == [2]
    for t in range(4):
        cls = [e.targets[i][t] for i in range(2)]
        ref = brute_force_occlusion(model, x, cls, 8, 4, "mean")
        torch.testing.assert_close(torch.stack([e.maps[i][t] for i in range(2)]), ref, rtol=1e-4, atol=1e-6)


def test_occlusion_unit_target_and_errors(model, x):
    e = get_method("occlusion").attribute(model, x, UnitTarget("act2", 3), window=8, stride=8)
    assert e.layer == "act2" and e.maps[0][0].shape == (32, 32)
    # Occluding far away from a unit's receptive field changes nothing: a neuron's map is local.
    e = get_method("occlusion").attribute(model, x, UnitTarget("act1", 0, 2, 2), window=4, stride=4)
    m = e.maps[0][0]
    assert m[8:, :].abs().max() == 0 and m[:, 8:].abs().max() == 0
    with pytest.raises(EngineError):
        get_method("occlusion").attribute(model, x, ClassTargets(), window=4, stride=8)
    with pytest.raises(EngineError):
        get_method("occlusion").attribute(model, x, ClassTargets(), window=0)
    # A window larger than the input is clipped to it: one window, a constant map.
    e = get_method("occlusion").attribute(model, x, ClassTargets(), window=200, stride=16)
    assert e.extras["window"] == 32 and torch.allclose(e.maps[0][0], e.maps[0][0][0, 0].expand(32, 32))


def test_occlusion_cost():
    model = tiny_model()
    per_axis = math.ceil((32 - 8) / 4) + 1
    full = get_method("occlusion").estimate_cost(model, 2, 3, {"window": 8, "stride": 4, "engine": "full"})
    assert full == 2 * (1 + per_axis ** 2)
    auto = get_method("occlusion").estimate_cost(model, 2, 3, {"window": 8, "stride": 4})
    assert auto == pytest.approx(2 * (1 + per_axis ** 2 * INCREMENTAL_COST))


# ---------------------------------------------------------------------------- RISE

class RegionScore(nn.Module):
    """Class 0's logit is the mean of the pixels in a fixed box; the other logits are constant."""

    def __init__(self, box: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.features.bias.zero_()
        self.box = box

    def forward(self, x):
        y0, y1, x0, x1 = self.box
        f = self.features(x)
        score = f[:, :, y0:y1, x0:x1].mean((1, 2, 3))
        return torch.cat([score[:, None], torch.zeros(x.shape[0], 9)], 1)


def test_rise_finds_the_region_that_drives_the_score():
    box = (4, 14, 18, 28)
    model = wrap(RegionScore(box), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    x = torch.ones(1, 3, 32, 32)
    e = get_method("rise").attribute(model, x, ClassTargets(indices=((0,),)), masks=1000, cell=4, p=0.5,
                                     score="logit", seed=3)
    sal = e.maps[0][0]
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[box[0]:box[1], box[2]:box[3]] = True
    far = torch.ones(32, 32, dtype=torch.bool)  # more than one cell (8 px) away from the box
    far[:box[1] + 8, box[2] - 8:] = False
    y, xx = divmod(int(sal.argmax()), 32)
    assert inside[y, xx]
    assert sal[inside].min() > sal[far].max()
    assert sal[inside].mean() > sal[far].mean() + 0.08
    # Far away a mask is independent of the score: E[score * M] / p = E[score] = p.
    assert abs(float(sal[far].mean()) - 0.5) < 0.04


def test_rise_equals_its_formula_and_serves_all_targets(model, x):
    e = get_method("rise").attribute(model, x, ClassTargets(top_k=3), masks=40, cell=4, p=0.3, seed=7,
                                     batch_size=10)
    gen = torch.Generator().manual_seed(7)
    chunks = [rise_masks(5, 4, 0.3, 32, 32, gen, x.device, x.dtype) for _ in range(8)]  # 10 rows / 2 images
    masks = torch.cat(chunks)
    black = model.preprocessing.normalize(torch.zeros_like(x))
    with torch.no_grad():
        for i in range(2):
            masked = black[i] + masks[:, None] * (x[i] - black[i])
            probs = model.module(masked).softmax(1)
            for t, c in enumerate(e.targets[i]):
                ref = torch.einsum("m,mhw->hw", probs[:, c], masks) / (40 * 0.3)
                torch.testing.assert_close(e.maps[i][t], ref, rtol=1e-4, atol=1e-6)


def test_rise_masks_look_like_the_paper():
    gen = torch.Generator().manual_seed(0)
    m = rise_masks(500, 7, 0.25, 40, 30, gen, torch.device("cpu"), torch.float32)
    assert m.shape == (500, 40, 30)
    assert m.min() >= 0 and m.max() <= 1
    assert abs(float(m.mean()) - 0.25) < 0.03
    # Smooth, not binary: bilinear upsampling leaves intermediate values.
    assert ((m > 0.05) & (m < 0.95)).float().mean() > 0.2
    # Random shifts: one pixel sits at many positions within a cell, so it takes many values.
    assert m[:, 0, 0].unique().numel() > 10


def test_rise_cost(model):
    assert get_method("rise").estimate_cost(model, 2, 1, {"masks": 100}) == 202
