"""Synthesis methods on tiny seeded CNNs: properties that a wrong implementation would fail."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model, wrap
from torch import nn

from cnnviz.blur import gaussian_blur
from cnnviz.errors import EngineError
from cnnviz.synthesis import Callbacks, Cancelled
from cnnviz.synthesis import adversarial as adv
from cnnviz.synthesis import class_viz as cv
from cnnviz.synthesis import inversion as inv
from cnnviz.synthesis import style as sty
from cnnviz.synthesis import texture as tex
from cnnviz.synthesis.parameterization import BoundedPixels, FourierImage, color_decorrelation_matrix
from cnnviz.synthesis.regularizers import PixelPostSteps, total_variation
from cnnviz.synthesis.transforms import Pad, RandomAffine


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def confident():
    """The tiny net with a 100x head: logits spread enough for a classification to be flipped."""
    m = tiny_model(seed=3)
    with torch.no_grad():
        m.module.fc.weight.mul_(100)
    return m


class TinyVGG(nn.Module):
    """VGG16's ``features`` layout (same module indices, 4-8 channels) with a GAP head."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.vgg import make_layers

        self.features = make_layers([4, 4, "M", 8, 8, "M", 8, 8, 8, "M", 8, 8, 8, "M", 8, 8, 8, "M"])
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


@pytest.fixture(scope="module")
def vgg():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = TinyVGG()
    return wrap(net, name="vgg16")


def image(seed: int = 1, size: int = 32) -> torch.Tensor:
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


def pattern(size: int = 32) -> torch.Tensor:
    """A structured texture (stripes, checks, a wave): its Gram matrices differ from noise's."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([((xx // 4) % 2).float(), ((yy // 3) % 2).float() * 0.8,
                        0.5 + 0.4 * torch.sin(xx * 0.7 + yy * 0.3)])


def logits(m, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return m.module(m.preprocessing.normalize(x.unsqueeze(0)))[0]


# --- the loop's parts -------------------------------------------------------------------------------------

def test_fourier_image_is_valid_and_seeded():
    a = FourierImage(20, 28, generator=torch.Generator().manual_seed(5))
    x = a.image().detach()
    assert x.shape == (1, 3, 20, 28)
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    b = FourierImage(20, 28, generator=torch.Generator().manual_seed(5))
    assert torch.equal(x, b.image())
    # The colour matrix is lucid's, scaled so that its largest column has unit norm.
    assert float(color_decorrelation_matrix().norm(dim=0).max()) == pytest.approx(1.0)


def test_fourier_class_visualization_size_and_range(model):
    r = cv.class_visualization(model, target=2, steps=5, size=24, parameterization="fourier", seed=1)
    assert r.image.shape == (3, 24, 24)
    assert float(r.image.min()) >= 0 and float(r.image.max()) <= 1
    assert len(r.objective) == 5


def test_bounded_pixels_project_to_ball_and_range():
    origin = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    p = BoundedPixels(origin, 0.1, random_start=True)
    with torch.no_grad():
        p.tensor.add_(torch.randn(p.tensor.shape) * 3)
    p.project_()
    x = p.tensor.detach()
    assert float((x - origin).abs().max()) <= 0.1 + 1e-6
    assert float(x.min()) >= 0 and float(x.max()) <= 1


def test_transforms_are_differentiable_and_seeded():
    x = torch.rand(1, 3, 16, 20, requires_grad=True)
    t = RandomAffine((0.8, 1.2), 15)
    y1 = t(Pad(2)(x, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(3))
    y2 = t(Pad(2)(x, torch.Generator().manual_seed(0)), torch.Generator().manual_seed(3))
    assert y1.shape == (1, 3, 20, 24) and torch.equal(y1, y2)
    (g,) = torch.autograd.grad(y1.sum(), x)
    assert float(g.abs().sum()) > 0


def test_blur_and_tv():
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert float(total_variation(gaussian_blur(x, 1.0))) < 0.5 * float(total_variation(x))
    assert float(total_variation(torch.full((1, 3, 8, 8), 0.3))) == 0.0


def test_clip_small_norm_sets_weak_pixels_to_the_mean():
    mean = (0.5, 0.5, 0.5)
    x = torch.full((1, 3, 4, 4), 0.5)
    x[0, :, 0, 0] = 1.0  # the one strong pixel
    x[0, :, 1, 1] = 0.52  # weak
    post = PixelPostSteps(lambda p, g: None, mean, clip_norm_pct=95)
    post([x], [torch.zeros_like(x)])
    assert float(x[0, 0, 0, 0]) == 1.0 and float(x[0, 0, 1, 1]) == 0.5


# --- methods ----------------------------------------------------------------------------------------------

def test_class_visualization_raises_the_logit_far_above_its_start(model):
    spread = float(logits(model, torch.full((3, 32, 32), 0.5)).std())
    r = cv.class_visualization(model, target=3, steps=40, lr=0.1, size=32, seed=0, parameterization="pixels",
                               jitter=0, scale=(1.0, 1.0), rotate=0.0, pad=0, l2_weight=1e-3)
    assert r.kind == "class" and r.label == "class 3"
    assert r.score_end - r.score_start > 1.5 * spread
    # The logit itself rose, not only its share: its margin over the other classes' mean grew too.
    start_logits = logits(model, torch.full((3, 32, 32), 0.5))
    end_logits = logits(model, r.image)
    margin = lambda z: float(z[3] - torch.cat([z[:3], z[4:]]).mean())  # noqa: E731
    assert margin(end_logits) > margin(start_logits) + spread
    assert r.objective[-1] > r.objective[0]


def test_channel_and_neuron_visualization(model):
    common = dict(steps=15, lr=0.1, size=32, jitter=2, scale=(0.9, 1.1), rotate=10, pad=2, parameterization="pixels")
    r = cv.class_visualization(model, layer="act2", channel=1, **common)
    assert r.kind == "channel" and r.score_end > r.score_start + 0.5
    n = cv.class_visualization(model, layer="act2", channel=1, y=3, x=5, steps=15, lr=0.1, size=32, pad=2,
                               parameterization="pixels", jitter=0, scale=(1.0, 1.0), rotate=0.0)
    assert n.kind == "neuron" and n.score_end > n.score_start + 0.5
    reg = cv.class_visualization(model, layer="act2", channel=1, blur_every=4, clip_norm_pct=5, clip_contrib_pct=5,
                                 l2_weight=1e-3, tv_weight=0.1, **common)
    assert reg.image.shape == (3, 32, 32) and float(reg.image.min()) >= 0 and float(reg.image.max()) <= 1
    smooth = cv.class_visualization(model, layer="act2", channel=1, blur_every=1, blur_sigma=1.0, tv_weight=1.0,
                                    **common)
    assert total_variation(smooth.image) < 0.5 * total_variation(r.image)  # blur and TV smooth the picture
    with pytest.raises(EngineError):
        cv.class_visualization(model, layer="nope", channel=0, steps=1, size=32)
    with pytest.raises(EngineError):
        cv.class_visualization(model, layer="conv2", channel=99, steps=1, size=32)


def test_seeds_make_runs_reproducible(model):
    kw = dict(target=1, steps=6, size=32, jitter=3, rotate=10, scale=(0.9, 1.1))
    a = cv.class_visualization(model, seed=7, **kw)
    b = cv.class_visualization(model, seed=7, **kw)
    c = cv.class_visualization(model, seed=8, **kw)
    assert torch.equal(a.image, b.image) and a.objective == b.objective
    assert not torch.equal(a.image, c.image)
    e1 = tex.efros_leung(model, image(2, 16), size=10, window=5, seed=3)
    e2 = tex.efros_leung(model, image(2, 16), size=10, window=5, seed=3)
    assert torch.equal(e1.source_coords, e2.source_coords)


def test_cancel_stops_within_a_step(model):
    done: list[int] = []
    cb = Callbacks(progress=lambda step, total, stage, value: done.append(step), cancel=lambda: len(done) >= 3)
    with pytest.raises(Cancelled):
        cv.class_visualization(model, target=0, steps=50, size=32, callbacks=cb)
    assert done == [1, 2, 3]
    done.clear()
    with pytest.raises(Cancelled):
        tex.efros_leung(model, image(2, 16), size=12, window=5, callbacks=cb)
    assert done == [1, 2, 3]


def test_progress_reports_the_loss_for_minimizing_methods(model):
    seen: list[float] = []
    r = inv.invert(model, image(), layer="act2", steps=4, size=32,
                   callbacks=Callbacks(progress=lambda s, t, st, v: seen.append(v)))
    assert seen == pytest.approx(r.objective) and all(v > 0 for v in seen)


@pytest.mark.parametrize("method", ["pgd", "fgsm"])
def test_adversarial_reaches_the_target_within_the_budget(confident, method):
    x = image(4)
    before = logits(confident, confident.preprocessing.fit(x, 32))
    target = 2
    assert int(before.argmax()) != target
    eps = 0.08 if method == "pgd" else 0.15
    r = adv.adversarial(confident, x, target=target, method=method, eps=eps, steps=10, size=32, seed=0)
    assert r.success and int(logits(confident, r.image).argmax()) == target
    assert r.top5_after[0].index == target and r.top5_before[0].index != target
    assert r.target_prob_after > r.target_prob_before
    assert r.linf <= eps + 1e-6 and r.linf_255 == pytest.approx(r.linf * 255)
    assert float((r.image - r.original).abs().max()) <= eps + 1e-6
    assert float(r.image.min()) >= 0 and float(r.image.max()) <= 1
    assert r.l2 == pytest.approx(float((r.image - r.original).norm()), rel=1e-4)
    assert float(r.difference.min()) >= 0 and float(r.difference.max()) <= 1
    assert len(r.objective) == (1 if method == "fgsm" else 10)


def test_inversion_cuts_the_feature_distance_and_beats_noise(model):
    r = inv.invert(model, image(), layer="act2", steps=60, size=32, seed=0, parameterization="pixels", jitter=0)
    assert r.feature_distance_end < 0.1 * r.feature_distance_start
    assert r.pixel_rmse < r.noise_pixel_rmse
    assert r.objective[-1] < r.objective[0]


@pytest.mark.parametrize(("optimizer", "parameterization"), [("lbfgs", "fourier"), ("lbfgs", "pixels"),
                                                             ("adam", "pixels")])
def test_gram_texture_loss_falls_by_90_percent(model, optimizer, parameterization):
    r = tex.gram_texture(model, pattern(), steps=40, size=32, optimizer=optimizer, parameterization=parameterization,
                         seed=0)
    assert r.loss_end < 0.1 * r.loss_start
    assert r.image.shape == (3, 32, 32) and len(r.objective) == 40


def test_efros_leung_copies_only_source_pixels(model):
    src = image(6, 14)
    r = tex.efros_leung(model, src, size=(12, 15), window=5, epsilon=0.2, seed=1)
    ys, xs = r.source_coords[..., 0], r.source_coords[..., 1]
    assert r.image.shape == (3, 12, 15)
    assert int(ys.min()) >= 0 and int(ys.max()) < 14 and int(xs.min()) >= 0 and int(xs.max()) < 14
    assert torch.equal(r.image, src[:, ys, xs])
    assert len(r.objective) == 12


def test_efros_leung_rejects_absurd_sizes(model):
    with pytest.raises(EngineError):
        tex.efros_leung(model, image(0, 16), size=1000)
    with pytest.raises(EngineError):
        tex.efros_leung(model, image(0, 16), size=8, window=4)


def test_style_preset_by_architecture(model, vgg):
    assert sty.style_layer_preset(vgg) == (["features.20"], ["features.1", "features.6", "features.11",
                                                              "features.18", "features.25"])
    content, style = sty.style_layer_preset(model)  # generic: first activation per resolution
    assert style == ["act1", "act2", "act3"] and content == ["act2"]


@pytest.mark.parametrize("preserve_color", [False, True])
def test_style_transfer_lowers_style_loss_with_bounded_content(vgg, preserve_color):
    content = image(8)
    r = sty.style_transfer(vgg, content, pattern(), steps=25, size=32, preserve_color=preserve_color, seed=0)
    assert r.style_loss_end < 0.5 * r.style_loss_start
    assert r.content_loss_end < 0.5
    assert r.image.shape == (3, 32, 32) and float(r.image.min()) >= 0 and float(r.image.max()) <= 1
    assert len(r.objective) == len(r.style_history) == 25
    if preserve_color:  # the content's chroma is kept: I and Q channels match the content's
        iq_out = sty.rgb_to_yiq(r.image)[1:]
        iq_in = sty.rgb_to_yiq(content)[1:]
        assert float((iq_out - iq_in).abs().mean()) < 0.02


def test_cost_estimates_scale_with_steps_and_size(model):
    assert cv.estimate_cost(model, steps=20, size=32) == pytest.approx(2 * cv.estimate_cost(model, steps=10, size=32),
                                                                       rel=0.1)
    assert adv.estimate_cost(model, method="pgd", steps=10) > adv.estimate_cost(model, method="fgsm")
    assert inv.estimate_cost(model, steps=10, size=64) > inv.estimate_cost(model, steps=10, size=32)
    assert sty.estimate_cost(model, steps=10, optimizer="lbfgs") > sty.estimate_cost(model, steps=10, optimizer="adam")
    assert tex.estimate_cost(model, method="efros-leung", size=32, source_size=(64, 64)) > 0
    assert tex.estimate_cost(model, method="gram", steps=10) > 0
