"""Incremental occlusion on the real pretrained EfficientNet-Lite0: equal to occluding and running it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import to_tensor

from cnnviz.attribution import ClassTargets, UnitTarget, get_method
from cnnviz.attribution.fast.incremental import occlusion_drops, occlusion_plan
from cnnviz.attribution.perturbation import window_starts

pytestmark = pytest.mark.model


def brute_force(module, x, fill, window, stride, cols, windows):
    """Drops ``[N,len(windows),T]`` of the listed windows: occlude, run the whole network, subtract."""
    h, w = x.shape[-2:]
    ys, xs = window_starts(h, window, stride), window_starts(w, window, stride)
    with torch.no_grad():
        base = module(x).gather(1, cols)
        out = []
        for k in windows:
            y0, x0 = int(ys[k // len(xs)]), int(xs[k % len(xs)])
            occ = x.clone()
            occ[:, :, y0:y0 + window, x0:x0 + window] = fill[:, :, y0:y0 + window, x0:x0 + window]
            out.append(base - module(occ.contiguous(memory_format=torch.channels_last)).gather(1, cols))
    return torch.stack(out, 1)


def incremental(module, x, fill, window, stride, cols):
    with torch.no_grad():
        base = module(x).gather(1, cols)
    drops = occlusion_drops(module, x, fill, window, stride, lambda out, img: out.gather(1, cols[img]), base)
    assert drops is not None, "the default model must take the incremental path"
    return drops


def close(got, want):
    scale = max(float(want.abs().max()), 1.0)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * scale)


@pytest.fixture(scope="module")
def cat(lite0, chelsea):
    x = lite0.preprocessing.batch([to_tensor(chelsea)], device=lite0.device)
    with torch.no_grad():
        cols = lite0.module(x).topk(3, dim=1).indices
    return x, cols


def test_every_window_32_stride_32(lite0, cat):
    x, cols = cat
    fill = torch.zeros_like(x)  # fill="mean": the dataset mean is zero after normalization
    got = incremental(lite0.module, x, fill, 32, 32, cols)
    assert got.shape == (1, 49, 3)
    close(got, brute_force(lite0.module, x, fill, 32, 32, cols, range(49)))
    plan = occlusion_plan(lite0.module, (224, 224), 32, 32)
    assert plan is not None and len(plan.patch_ops) > 40  # the 112, 56 and 28 px stages run as patches


def test_window_16_stride_8_on_a_subset(lite0, cat):
    x, cols = cat
    fill = torch.zeros_like(x)
    got = incremental(lite0.module, x, fill, 16, 8, cols)
    n = 27  # windows per axis
    assert got.shape == (1, n * n, 3)
    some = [0, 1, n - 1, n, 5 * n + 7, 13 * n + 13, 20 * n + 3, n * n - n, n * n - 2, n * n - 1]
    close(got[:, some], brute_force(lite0.module, x, fill, 16, 8, cols, some))


def test_non_square_image_and_clipped_edge_windows(lite0, cat):
    x, cols = cat
    x = F.interpolate(x, size=(192, 256), mode="bilinear", align_corners=False).contiguous(
        memory_format=torch.channels_last)
    fill = lite0.preprocessing.normalize(torch.zeros_like(x))  # fill="zero": black pixels
    # 30 px windows every 28 px: 7 x 10 windows, the last row and column run past the edge.
    got = incremental(lite0.module, x, fill, 30, 28, cols)
    assert got.shape == (1, 70, 3)
    some = [0, 9, 33, 59, 60, 61, 68, 69]
    close(got[:, some], brute_force(lite0.module, x, fill, 30, 28, cols, some))


def test_the_occlusion_method_takes_the_patch_engine_and_agrees_with_full_forwards(lite0, cat):
    x, _ = cat
    occlusion = get_method("occlusion")
    auto = occlusion.attribute(lite0, x, ClassTargets(top_k=2), window=48, stride=48, fill="blur")
    full = occlusion.attribute(lite0, x, ClassTargets(top_k=2), window=48, stride=48, fill="blur", engine="full")
    assert auto.extras["engine"] == "incremental" and full.extras["engine"] == "full"
    assert auto.targets == full.targets
    for a, b in zip(auto.maps[0], full.maps[0], strict=True):
        close(a, b)
    # A unit target stops the forward at a layer, which the patch engine does not follow.
    unit = occlusion.attribute(lite0, x, UnitTarget("_blocks.10", 5), window=112, stride=112)
    assert unit.extras["engine"] == "full"
