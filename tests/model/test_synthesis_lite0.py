"""Synthesis on the real pretrained EfficientNet-Lite0: small sizes, few steps."""

from __future__ import annotations

import pytest
import torch
from conftest import to_tensor

from cnnviz.synthesis import adversarial as adv
from cnnviz.synthesis import class_viz as cv

pytestmark = pytest.mark.model

CAT_CLASSES = set(range(281, 286))


def test_class_visualization_raises_the_logit(lite0):
    # The plain pixel path of Simonyan et al. (the defaults' recognizability has its own test below).
    r = cv.class_visualization(lite0, target=130, steps=10, lr=0.05, size=64, jitter=2, seed=0,  # flamingo
                               parameterization="pixels", scale=(1.0, 1.0), rotate=0.0, pad=0)
    assert r.score_end > r.score_start + 5.0
    assert r.objective[-1] > r.objective[0]


def test_pgd_turns_chelsea_into_the_target_within_8_over_255(lite0, chelsea):
    target = 954  # banana
    r = adv.adversarial(lite0, to_tensor(chelsea), target=target, method="pgd", eps=8 / 255, steps=10, size=112,
                        seed=0)
    assert r.top5_before[0].index in CAT_CLASSES
    assert r.success and r.top5_after[0].index == target and r.target_prob_after > 0.5
    assert r.linf <= 8 / 255 + 1e-6
    assert float(r.image.min()) >= 0 and float(r.image.max()) <= 1
    x = lite0.preprocessing.normalize(r.image.unsqueeze(0))
    with torch.no_grad():
        assert int(lite0.module(x).argmax()) == target


def test_lbfgs_runs_on_the_channels_last_model(lite0, coffee):
    # The catalog keeps models channels_last, so input gradients come back in that layout;
    # torch's L-BFGS flattens gradients with view() and used to fail on them.
    from cnnviz.synthesis.texture import gram_texture

    src = torch.from_numpy(coffee[::8, ::8].copy()).permute(2, 0, 1).float() / 255
    res = gram_texture(lite0, src, steps=3, size=32, optimizer="lbfgs")
    assert res.loss_end < res.loss_start


def _probability(model, x: torch.Tensor, index: int) -> float:
    with torch.no_grad():
        return float(torch.softmax(model.module(model.preprocessing.normalize(x)), -1)[0, index])


def test_default_class_visualization_is_recognized_and_not_adversarial(lite0):
    """With the job's defaults (Fourier, transforms) the picture is the class for the network, and
    it stays the class when jittered, zoomed and turned: adversarial colour noise (the old
    pixel default) scores as high on the picture itself but collapses under the transforms."""
    from cnnviz.synthesis.transforms import Jitter, RandomAffine, UpsampleTo

    target = 130  # flamingo: pink and long-legged, nothing like the grey start
    r = cv.class_visualization(lite0, target=target, steps=96, size=64, seed=0)  # 40 left it at 0.44-0.48 on some CPUs
    x = UpsampleTo(lite0.spec.input_size)(r.image.unsqueeze(0), torch.Generator())
    assert _probability(lite0, x, target) > 0.8
    gen = torch.Generator().manual_seed(123)  # other draws than the optimization's
    moved = [Jitter(16)(RandomAffine((0.8, 1.2), 15)(x, gen), gen) for _ in range(6)]
    probs = sorted(_probability(lite0, m, target) for m in moved)
    assert probs[len(probs) // 2] > 0.5, probs


def _corr(a: torch.Tensor, b: torch.Tensor, grid: int | None = None) -> float:
    """Correlation of two pictures' luminance, on a ``grid`` x ``grid`` average (the layout) if given."""
    if grid is not None:
        a, b = (torch.nn.functional.adaptive_avg_pool2d(t.unsqueeze(0), grid)[0] for t in (a, b))
    a, b = a.mean(0).flatten(), b.mean(0).flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12))


def test_default_inversion_keeps_the_photos_features_and_structure(lite0, chelsea):
    """The default inversion matches the photo's features far better than a random picture does,
    keeps its layout, and is a picture: the old pixel default matched the features as well but left
    rainbow static the layer cannot see (30x the photo's total variation at this size)."""
    from cnnviz.synthesis.inversion import invert
    from cnnviz.synthesis.objectives import relative_distance
    from cnnviz.synthesis.regularizers import total_variation

    r = invert(lite0, to_tensor(chelsea), size=96, seed=0)  # the defaults: 200 Adam steps, Fourier, jitter 2
    rand = torch.rand((1, 3, 96, 96), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        target = cv.forward_layers(lite0, r.original.unsqueeze(0), [r.layer])[r.layer]
        random_distance = float(relative_distance(cv.forward_layers(lite0, rand, [r.layer])[r.layer], target))
    assert r.feature_distance_end < 0.3 * random_distance
    assert _corr(r.image, r.original, grid=8) > 0.3  # the photo's layout comes back, not only its statistics
    assert float(total_variation(r.image)) < 3 * float(total_variation(r.original))  # no static


def test_default_deepdream_amplifies_the_layer_and_keeps_the_photo(lite0, chelsea):
    """The dream raises its layer's energy well above the photo's, and the photo is still there."""
    from cnnviz.synthesis import DeepDreamConfig, deep_dream, layer_objective

    photo = to_tensor(chelsea)
    d = deep_dream(lite0, photo, DeepDreamConfig(size=96))
    small = torch.nn.functional.interpolate(photo.unsqueeze(0), size=d.image.shape[-2:], mode="bilinear",
                                            antialias=True)[0]
    energy = layer_objective(d.layer)
    with torch.no_grad():
        before, after = (float(energy(cv.forward_layers(lite0, x.unsqueeze(0), [d.layer]))) for x in (small, d.image))
    assert after > 1.5 * before, (before, after)
    assert _corr(d.image, small, grid=8) > 0.5, _corr(d.image, small, grid=8)
