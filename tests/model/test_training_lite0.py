"""The training engine on the real pretrained EfficientNet-Lite0: small sizes, few steps."""

from __future__ import annotations

import time

import numpy as np
import pytest
import skimage.data
import torch
from conftest import to_tensor

from cnnviz.training import FastStyleTrainer, TripletTrainer, stylize, triplet_data

pytestmark = pytest.mark.model

STYLE_LAYERS = ["act_stem", "_blocks.1.act_expand", "_blocks.3.act_expand", "_blocks.5.act_expand"]


def photo(name: str) -> torch.Tensor:
    """A scikit-image photo as a ``[3,H,W]`` float tensor in [0,1] (grey ones repeated to RGB)."""
    a = getattr(skimage.data, name)()
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return to_tensor(a[..., :3])


def stripes() -> torch.Tensor:
    """Red, green and blue diagonal stripes, 8 px wide: a style no photo resembles."""
    yy, xx = np.mgrid[0:128, 0:128]
    ph = ((xx + yy) // 8) % 3
    st = np.zeros((128, 128, 3), np.float32)
    st[..., 0] = ph == 0
    st[..., 1] = (ph == 1) * 0.8
    st[..., 2] = ph == 2
    return torch.from_numpy(st).permute(2, 0, 1).contiguous()


def test_fast_style_learns_the_style_and_applies_it_in_one_pass(lite0) -> None:
    """100 steps on four photos: an unseen photo's stylized style loss is far below its own, the loss halves,
    and applying the trained net to a new image is deterministic and quick."""
    contents = [photo(n) for n in ("chelsea", "coffee", "rocket", "hubble_deep_field")]
    astronaut = photo("astronaut")
    tr = FastStyleTrainer(lite0, stripes(), contents, size=64, batch_size=2, width=8, blocks=2, style_weight=20,
                          lr=0.01, style_layers=STYLE_LAYERS, preview=astronaut, eval_every=100, seed=0)
    tr.train(100)
    first, last = tr.evals[0], tr.evals[-1]
    assert first["step"] == 0 and last["step"] == 100
    assert first["preview_style"] == pytest.approx(first["content_image_style"], rel=1e-3)  # starts as the identity
    assert last["preview_style"] < last["content_image_style"] / 4  # measured: 0.068 vs 0.616
    assert np.mean(tr.losses[-10:]) < 0.5 * np.mean(tr.losses[:10])

    unseen = photo("camera")  # grey, never trained on, not the preview
    t0 = time.perf_counter()
    a = stylize(tr.net, unseen, size=128)
    seconds = time.perf_counter() - t0
    b = stylize(tr.net, unseen, size=128)
    assert a.shape == (3, 128, 128) and torch.equal(a, b)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert float((a - stylize(tr.net, unseen, size=128, strength=0.0)).abs().mean()) > 0.02  # it does restyle
    assert seconds < 1.0


def test_triplet_head_beats_the_frozen_features_on_held_out_images(lite0) -> None:
    """Six photos x three crops: on held-out crops the trained head verifies pairs better than frozen features."""
    imgs: list[torch.Tensor] = []
    labels: list[str] = []
    for name in ("chelsea", "coffee", "rocket", "astronaut", "hubble_deep_field", "immunohistochemistry"):
        a = photo(name)
        _, h, w = a.shape
        for y0, x0 in [(0, 0), (h // 4, w // 4), (0, w // 3)]:
            imgs.append(a[:, y0:y0 + h * 2 // 3, x0:x0 + w * 2 // 3])
            labels.append(name)
    data = triplet_data(lite0, imgs, labels, layer="_blocks.5", size=64, views=8, seed=0)
    assert data.split == "images"
    assert data.heldout.shape[0] == 6 * 9 and data.train.shape[0] == 12 * 9  # one of three crops held out per photo
    tr = TripletTrainer(data, backbone=lite0.name, dim=64, eval_every=50)
    t0 = time.perf_counter()
    tr.train(200)
    assert time.perf_counter() - t0 < 10.0  # the backbone is not run again: only the head trains
    head = tr.evals[-1]["heldout_accuracy"]
    assert head > tr.frozen_accuracy + 0.03 and head > 0.97  # measured: 0.991 vs frozen 0.926
