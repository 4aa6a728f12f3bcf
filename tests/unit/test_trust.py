"""The evaluation engine (cnnviz.trust): every metric equals a plain per-image loop written here.

Spearman against scipy, SSIM against scikit-image, the shared deletion / insertion batches against
:func:`cnnviz.metrics.deletion_insertion` one map at a time, the energy game against a loop over
pixels, the randomization test against maps recomputed one image at a time on copies built here,
and the served network left bit for bit as it was, also while other threads explain with it.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from scipy.stats import t as student_t
from skimage.metrics import structural_similarity

from cnnviz.attribution import METHODS, ClassTargets
from cnnviz.metrics import deletion_insertion, pointing_game
from cnnviz.trust import (
    MethodSpec,
    centre_map,
    deletion_insertion_many,
    energy_in_boxes,
    evaluate,
    main_stages,
    mean_interval,
    randomized_copy,
    served_copy,
    spearman,
    ssim,
    with_module,
)
from tests.unit.tiny import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def test_spearman_equals_scipy_with_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (4, 6, 7), generator=gen).float()  # many ties
    b = torch.randn(4, 6, 7, generator=gen)
    got = spearman(a, b)
    for i in range(4):
        want = spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert got[i].item() == pytest.approx(want, abs=1e-6)
    assert spearman(torch.ones(5, 5), b[0, :5, :5]).item() == 0.0  # a constant map has no ranking


def test_ssim_equals_scikit_image() -> None:
    gen = torch.Generator().manual_seed(1)
    for h, w in ((12, 15), (7, 7), (32, 32)):
        a = torch.rand(h, w, generator=gen)
        b = (a + 0.3 * torch.rand(h, w, generator=gen)).clamp(0, 1)
        want = structural_similarity(a.double().numpy(), b.double().numpy(), data_range=1.0, win_size=7)
        assert ssim(a, b).item() == pytest.approx(want, abs=1e-5)
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-6)


def test_mean_interval_is_the_t_interval() -> None:
    vals = [0.2, 0.5, 0.4, 0.9]
    got = mean_interval(vals)
    mean, sd = float(np.mean(vals)), float(np.std(vals, ddof=1))
    half = student_t.ppf(0.975, 3) * sd / 2
    assert (got.mean, got.low, got.high, got.n) == pytest.approx((mean, mean - half, mean + half, 4))
    assert mean_interval([]) is None and mean_interval([0.3]).low == 0.3


def _score(model):
    def score(batch, cls):
        return model.probabilities(model.module(model.preprocessing.normalize(batch))).gather(1, cls[:, None])[:, 0]
    return score


def test_shared_batches_equal_one_map_at_a_time(model, pixels) -> None:
    gen = torch.Generator().manual_seed(2)
    maps = [[torch.rand(8, 8, generator=gen), torch.rand(32, 32, generator=gen)] for _ in range(3)]
    classes = [1, 4, 7]
    got = deletion_insertion_many(_score(model), pixels, classes, maps, steps=6, batch_size=5)
    for i in range(3):
        for j in range(2):
            def one(batch, c=classes[i]):
                with torch.no_grad():
                    return model.probabilities(model.module(model.preprocessing.normalize(batch)))[:, c]
            ref = deletion_insertion(one, pixels[i], maps[i][j], steps=6)
            assert got.deletion[i, j].tolist() == pytest.approx(ref.deletion_curve, abs=1e-6)
            assert got.insertion[i, j].tolist() == pytest.approx(ref.insertion_curve, abs=1e-6)
            assert got.deletion_auc[i, j].item() == pytest.approx(ref.deletion_auc, abs=1e-6)
            assert got.insertion_auc[i, j].item() == pytest.approx(ref.insertion_auc, abs=1e-6)


def test_energy_and_centre_baseline_equal_plain_loops() -> None:
    gen = torch.Generator().manual_seed(4)
    m = torch.randn(8, 8, generator=gen)
    boxes = [(10, 5, 60, 40), (0, 30, 20, 48)]
    image_hw, grid = (48, 64), (16, 16)
    up = torch.nn.functional.interpolate(m[None, None], size=grid, mode="bilinear", align_corners=False)[0, 0]
    inside = total = 0.0
    for y in range(16):
        for x in range(16):
            v = max(float(up[y, x]), 0.0)
            cy, cx = (y + 0.5) * 48 / 16, (x + 0.5) * 64 / 16
            total += v
            if any(x0 <= cx < x1 and y0 <= cy < y1 for x0, y0, x1, y1 in boxes):
                inside += v
    assert energy_in_boxes(m, boxes, image_hw, grid) == pytest.approx(inside / total, abs=1e-6)
    c = centre_map(16, 16)
    flat = int(c.argmax())
    assert divmod(flat, 16) in ((7, 7), (7, 8), (8, 7), (8, 8))
    assert pointing_game(c, (28, 20, 36, 28), image_hw, tolerance=0)


def test_stages_and_randomized_copies_leave_the_served_network_alone(model) -> None:
    stages = main_stages(model)
    assert [s.modules for s in stages] == [("conv1", "bn1"), ("conv2", "block"), ("conv3",), ("fc",)]
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    pristine = served_copy(model)
    top2 = randomized_copy(pristine, stages[-2:], seed=5)
    alone = randomized_copy(pristine, [stages[-1]], seed=5)
    after = model.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    rnd = top2.state_dict()
    for k, v in before.items():
        randomized_stage = k.split(".")[0] in ("conv3", "fc")
        changed = not torch.equal(v, rnd[k])
        if v.is_floating_point() and v.numel() > 1:
            assert changed == randomized_stage, k
    # A stage gets the same weights whether it is randomized alone or in a cascade.
    assert torch.equal(alone.state_dict()["fc.weight"], rnd["fc.weight"])


def test_evaluation_equals_plain_per_image_loops(model, pixels) -> None:
    specs = [MethodSpec("gradcam", "gradcam"), MethodSpec("saliency", "saliency")]
    classes = [2, 5, 1]
    boxes = [[(0, 0, 16, 16)], [], [(8, 8, 30, 30), (0, 0, 4, 4)]]
    ev = evaluate(model, pixels, classes, specs, image_hw=[(32, 32)] * 3, boxes=boxes, steps=4, batch_size=7,
                  seed=3, image_batch=2)
    stages = main_stages(model)
    assert ev.cascade == [s.name for s in reversed(stages)] == ev.independent
    x = model.preprocessing.normalize(pixels)

    def one_map(m, spec, i):
        res = METHODS[spec.method].attribute(m, x[i:i + 1], ClassTargets(indices=((classes[i],),)), None, None)
        return res.maps[0][0]

    pristine = served_copy(model)
    for spec, r in zip(specs, ev.methods, strict=True):
        for i in range(3):
            orig = one_map(model, spec, i)
            def score(batch, c=classes[i]):
                with torch.no_grad():
                    return model.probabilities(model.module(model.preprocessing.normalize(batch)))[:, c]
            ref = deletion_insertion(score, pixels[i], orig, steps=4)
            assert r.deletion_auc[i] == pytest.approx(ref.deletion_auc, abs=1e-5)
            assert r.insertion_auc[i] == pytest.approx(ref.insertion_auc, abs=1e-5)
            if boxes[i]:
                hit = any(pointing_game(orig, b, (32, 32), tolerance=15) for b in boxes[i])
                assert r.pointing[i] == hit
            else:
                assert r.pointing[i] is None and r.energy[i] is None
            top_down = list(reversed(stages))
            for k in range(len(stages)):
                rm = with_module(model, randomized_copy(pristine, top_down[:k + 1], seed=3))
                a, b = orig.numpy().ravel(), one_map(rm, spec, i).numpy().ravel()
                want = spearmanr(np.abs(a), np.abs(b)).statistic
                assert r.cascading["spearman_abs"][k][i] == pytest.approx(
                    0.0 if np.isnan(want) else want, abs=1e-4)
                sa = np.abs(a) / max(np.abs(a).max(), 1e-30)
                sb = np.abs(b) / max(np.abs(b).max(), 1e-30)
                h, w = orig.shape
                win = min(7, h, w) - (1 - min(7, h, w) % 2)
                want_ssim = structural_similarity(sa.reshape(h, w), sb.reshape(h, w), data_range=1.0, win_size=win)
                assert r.cascading["ssim"][k][i] == pytest.approx(want_ssim, abs=1e-4)
                rm_alone = with_module(model, randomized_copy(pristine, [top_down[k]], seed=3))
                b2 = one_map(rm_alone, spec, i).numpy().ravel()
                want2 = spearmanr(a, b2).statistic
                assert r.independent["spearman"][k][i] == pytest.approx(0.0 if np.isnan(want2) else want2, abs=1e-4)
        per_step = [sum(col) / len(col) for col in r.cascading["spearman_abs"]]
        assert r.flagged == (sum(per_step) / len(per_step) >= 0.5)
    # The random order floor: one random map per image, shared by every method.
    gen = torch.Generator().manual_seed(3)
    for i in range(3):
        rnd = torch.rand(32, 32, generator=gen)
        def score(batch, c=classes[i]):
            with torch.no_grad():
                return model.probabilities(model.module(model.preprocessing.normalize(batch)))[:, c]
        assert ev.random_deletion_auc[i] == pytest.approx(deletion_insertion(score, pixels[i], rnd, steps=4)
                                                          .deletion_auc, abs=1e-5)


def test_concurrent_explanations_get_their_usual_answers(model, pixels) -> None:
    """While an evaluation randomizes copies on one thread, explanations on another are bit for bit unchanged."""
    x = model.preprocessing.normalize(pixels)
    targets = ClassTargets(indices=((1,), (2,), (3,)))
    methods = ("saliency", "gradcam", "guided_backprop")
    expected = {m: METHODS[m].attribute(model, x, targets).maps for m in methods}
    logits = model.module(x).detach().clone()
    errors: list[BaseException] = []

    def run_eval() -> None:
        try:
            evaluate(model, pixels, [1, 2, 3], [MethodSpec(m, m) for m in methods], steps=3, seed=9)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    worker = threading.Thread(target=run_eval)
    worker.start()
    rounds = 0
    while worker.is_alive() or rounds < 3:
        for m in methods:
            got = METHODS[m].attribute(model, x, targets).maps
            assert all(torch.equal(a, b) for ra, rb in zip(got, expected[m], strict=True)
                       for a, b in zip(ra, rb, strict=True)), m
        assert torch.equal(model.module(x), logits)
        rounds += 1
    worker.join()
    assert not errors and rounds >= 3
