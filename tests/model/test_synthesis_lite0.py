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
    r = cv.class_visualization(lite0, target=130, steps=10, lr=0.05, size=64, jitter=2, seed=0)  # flamingo
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
