"""Collection-level model internals on tiny networks: each view against an analytic answer or a brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from tiny import tiny_model, wrap
from torch import nn

from cnnviz.hooks import LayerCapture, capture
from cnnviz.inspection import (
    Cancelled,
    Gallery,
    calibrate_threshold,
    display_projection,
    distance_matrix,
    embed,
    extract_features,
    invariance_curves,
    layer_output,
    nearest,
    patch_grid,
    pca_2d,
    pixel_features,
    plot_curves,
    project_units,
    receptive_field,
    receptive_fields,
    reduce_2d,
    thumbnail_map,
    top_activating_patches,
    verify,
)
from cnnviz.inspection.invariance import rotate, scale, shift


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


@pytest.fixture(scope="module")
def photos() -> list[torch.Tensor]:
    """Random images of mixed sizes, so fitting to the network input is exercised."""
    gen = torch.Generator().manual_seed(3)
    sizes = [(32, 32), (40, 36), (28, 30), (32, 48)]
    return [torch.rand(3, *sizes[i % 4], generator=gen) for i in range(12)]


def _box(center_y: int, center_x: int, half: int, size: int = 32) -> tuple[int, int, int, int]:
    """The analytic field [c-half, c+half] clipped, as (x0, y0, x1, y1) with exclusive ends."""
    return (max(0, center_x - half), max(0, center_y - half), min(size, center_x + half + 1),
            min(size, center_y + half + 1))


# TinyNet: conv 3x3 s1 -> conv 3x3 s2 -> block (conv 3x3 s1 + skip) -> conv 3x3 s2 (all padding 1).
# Field sizes 3, 5, 9, 13; position i sits over input pixel i (act1), 2i (act2, block), 4i (act3).
@pytest.mark.parametrize(("layer", "stride", "half"), [("act1", 1, 1), ("act2", 2, 2), ("block", 2, 4),
                                                     ("act3", 4, 6)])
def test_receptive_field_matches_the_analytic_field(tiny, layer, stride, half):
    grid = tiny.layer(layer).output_shape[1]
    positions = [(0, 0), (1, 2), (grid // 2, grid - 1), (grid - 1, grid - 1)]
    for (y, x), rf in zip(positions, receptive_fields(tiny, layer, positions), strict=True):
        assert rf.box == _box(stride * y, stride * x, half)
        assert rf.size == (2 * half + 1, 2 * half + 1)


def _pool_net(dead: bool) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1),
                        nn.ReLU())
    if dead:
        with torch.no_grad():
            net[0].bias.fill_(-1e3)  # every first-layer ReLU is dead: the plain gradient is zero everywhere
    return net


def test_receptive_field_is_structural_not_the_gradient():
    model = wrap(_pool_net(dead=True), default_layer="4")
    # Pool output i covers conv outputs 2i, 2i+1 -> input [2i-1, 2i+2]; the second conv widens to [2i-3, 2i+4].
    rf = receptive_field(model, "4", 5, 5)
    assert rf.box == (7, 7, 15, 15)
    assert rf.size == (8, 8)
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    grad = torch.autograd.grad(model.module(x)[0, :, 5, 5].sum(), x, allow_unused=True)[0]
    assert grad is None or not grad.any()  # the gradient alone would have found no field at all


def test_layer_output_stops_at_the_layer(tiny):
    calls = []
    handle = tiny.module.fc.register_forward_hook(lambda *a: calls.append(1))
    try:
        x = torch.rand(2, 3, 32, 32)
        out = layer_output(tiny, x, "block")
        cap = LayerCapture()
        with capture(tiny.module, {"block": cap}), torch.no_grad():
            tiny.module(x)
    finally:
        handle.remove()
    assert len(calls) == 1  # only the reference forward reached the head
    torch.testing.assert_close(out, cap.output)


def test_extract_features_pools_batches_and_reports(tiny, photos):
    seen = []
    avg = extract_features(tiny, photos, "block", batch_size=5, progress=lambda d, t, s: seen.append((d, t, s)))
    assert seen == [(1, 3, "features"), (2, 3, "features"), (3, 3, "features")]
    one = extract_features(tiny, photos[:3], "block", batch_size=1)
    torch.testing.assert_close(avg[:3], one, atol=1e-5, rtol=1e-4)
    x = tiny.preprocessing.batch(photos)
    cap = LayerCapture()
    with capture(tiny.module, {"block": cap}), torch.no_grad():
        tiny.module(x)
    torch.testing.assert_close(avg, cap.output.mean((2, 3)), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(extract_features(tiny, photos, "block", pool="max"), cap.output.amax((2, 3)),
                               atol=1e-5, rtol=1e-4)
    assert extract_features(tiny, photos, "block", pool="none").shape == (12, 16 * 16 * 16)
    assert extract_features(tiny, photos, "fc").shape == (12, 10)
    with pytest.raises(Cancelled):
        extract_features(tiny, photos, "block", batch_size=4, cancel=lambda: True)
    assert pixel_features(photos, size=8).shape == (12, 3 * 8 * 8)


def _brute_top(model, images, layer, channel, k):
    """Per image, the channel's maximum and its first position, from one forward per image."""
    rows = []
    for i, img in enumerate(images):
        x = model.preprocessing.batch([img])
        cap = LayerCapture()
        with capture(model.module, {layer: cap}), torch.no_grad():
            model.module(x)
        a = cap.output[0, channel]
        best = float(a.max())
        ys, xs = (a == a.max()).nonzero()[0].tolist()
        rows.append((best, i, ys, xs))
    rows.sort(key=lambda r: (-r[0], r[1]))
    return rows[:k]


def test_top_patches_are_the_brute_force_maxima_and_their_receptive_fields(tiny, photos):
    chans = [0, 3, 5]
    result = top_activating_patches(tiny, photos, "block", chans, k=4, projection="none", batch_size=5)
    assert [c.channel for c in result] == chans
    for ch in result:
        expected = _brute_top(tiny, photos, "block", ch.channel, 4)
        got = [(p.activation, p.image, p.y, p.x) for p in ch.patches]
        for (ev, ei, ey, ex), (gv, gi, gy, gx) in zip(expected, got, strict=True):
            assert gv == pytest.approx(ev, rel=1e-4, abs=1e-5)
            assert (gi, gy, gx) == (ei, ey, ex)
        for p in ch.patches:
            assert p.box == _box(2 * p.y, 2 * p.x, 4)  # the field of the argmax position
            fitted = tiny.preprocessing.fit(photos[p.image])
            x0, y0, x1, y1 = p.box
            want = (fitted[:, y0:y1, x0:x1] * 255).round().to(torch.uint8).permute(1, 2, 0)
            assert torch.equal(p.crop, want)
        assert ch.score == pytest.approx(float(np.mean([e[0] for e in expected])), rel=1e-4)


def test_automatic_channels_are_the_strongest(tiny, photos):
    all_ch = top_activating_patches(tiny, photos, "block", list(range(16)), k=3, projection="none")
    best = sorted(all_ch, key=lambda c: -c.score)[:2]
    auto = top_activating_patches(tiny, photos, "block", None, top_channels=2, k=3, projection="none")
    assert [c.channel for c in auto] == [c.channel for c in best]


def _strong_unit(model, x, layer):
    cap = LayerCapture()
    with capture(model.module, {layer: cap}), torch.no_grad():
        model.module(x)
    a = cap.output[0]
    c = int(a.flatten(1).amax(1).argmax())
    y, xx = divmod(int(a[c].argmax()), a.shape[-1])
    return c, y, xx


@pytest.mark.parametrize("net", ["tiny", "pool"])
def test_deconvnet_projection_stays_in_the_field_and_is_not_the_gradient(tiny, net):
    model = tiny if net == "tiny" else wrap(_pool_net(dead=False), default_layer="4")
    layer = "act3" if net == "tiny" else "4"
    x = model.preprocessing.normalize(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5)))
    c, y, xx = _strong_unit(model, x, layer)
    deconv = project_units(model, x, layer, [c], [(y, xx)], "deconvnet")[0]
    grad = project_units(model, x, layer, [c], [(y, xx)], "gradient")[0]
    # The plain rule is the autograd gradient of that one activation.
    xg = x.clone().requires_grad_(True)
    cap = LayerCapture()
    with capture(model.module, {layer: cap}):
        model.module(xg)
    (want,) = torch.autograd.grad(cap.output[0, c, y, xx], xg)
    torch.testing.assert_close(grad, want[0])
    x0, y0, x1, y1 = receptive_field(model, layer, y, xx).box
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[y0:y1, x0:x1] = False
    assert deconv.abs().sum() > 0
    assert not deconv[:, outside].any()
    assert not torch.allclose(deconv, grad, atol=1e-6)
    guided = project_units(model, x, layer, [c], [(y, xx)], "guided")[0]
    assert not guided[:, outside].any()


def test_patch_projections_and_grid(tiny, photos):
    result = top_activating_patches(tiny, photos, "act3", [1, 2], k=4, projection="deconvnet", batch_size=3)
    for ch in result:
        for p in ch.patches:
            x0, y0, x1, y1 = p.box
            assert p.crop.shape == (y1 - y0, x1 - x0, 3) and p.crop.dtype == torch.uint8
            assert p.projection is not None and p.projection.shape == p.crop.shape
            x = tiny.preprocessing.batch([photos[p.image]])
            full = project_units(tiny, x, "act3", [ch.channel], [(p.y, p.x)], "deconvnet")[0]
            torch.testing.assert_close(p.raw_projection, full[:, y0:y1, x0:x1])
    grid = patch_grid(result, tile=16)
    assert grid.dtype == torch.uint8 and grid.dim() == 3 and grid.shape[2] == 3
    # Two channel blocks side by side, each two 2x2 grids of 16 px tiles.
    assert grid.shape[1] > 2 * (2 * 2 * 16)


def test_top_patches_progress_and_cancel(tiny, photos):
    seen = []
    top_activating_patches(tiny, photos, "act3", [0], k=3, batch_size=4,
                           progress=lambda d, t, s: seen.append((d, t, s)))
    assert [s for _, _, s in seen] == ["scanning"] * 3 + ["projecting"]
    assert [d for d, _, _ in seen] == [1, 2, 3, 4] and {t for _, t, _ in seen} == {4}
    with pytest.raises(Cancelled):
        top_activating_patches(tiny, photos, "act3", [0], cancel=lambda: True)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_nearest_is_the_brute_force_ranking(metric):
    gen = torch.Generator().manual_seed(0)
    gallery, queries = torch.randn(50, 8, generator=gen), torch.randn(4, 8, generator=gen)
    idx, dist = nearest(queries, gallery, k=5, metric=metric)
    for q in range(4):
        if metric == "cosine":
            d = [1 - float(torch.nn.functional.cosine_similarity(queries[q], g, dim=0)) for g in gallery]
        else:
            d = [float((queries[q] - g).norm()) for g in gallery]
        order = np.argsort(d)[:5]
        assert idx[q].tolist() == order.tolist()
        np.testing.assert_allclose(dist[q].numpy(), np.array(d)[order], rtol=1e-4, atol=1e-5)
    i1, _ = nearest(gallery[7], gallery, k=3, metric=metric)
    assert int(i1[0]) == 7
    i2, _ = nearest(gallery[7], gallery, k=3, metric=metric, exclude=[7])
    assert 7 not in i2.tolist() and len(i2) == 3


def test_pca_matches_a_direct_svd():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40, 6, generator=gen) @ torch.randn(6, 6, generator=gen) + 3
    coords = pca_2d(x)
    xc = x.double().numpy() - x.double().numpy().mean(0)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    want = u[:, :2] * s[:2]
    for axis in range(2):
        sign = np.sign(want[:, axis] @ coords[:, axis].numpy())
        np.testing.assert_allclose(coords[:, axis].numpy(), sign * want[:, axis], rtol=1e-4, atol=1e-4)
    from sklearn.decomposition import PCA

    np.testing.assert_allclose(np.abs(coords.numpy()), np.abs(PCA(2).fit_transform(x.numpy())), rtol=1e-3, atol=1e-3)
    assert torch.equal(reduce_2d(x, "pca"), coords)


@pytest.mark.parametrize("method", ["tsne", "umap"])
def test_neighbourhood_maps_are_finite_and_seeded(method):
    gen = torch.Generator().manual_seed(2)
    centres = torch.randn(3, 10, generator=gen) * 10
    x = torch.cat([c + torch.randn(8, 10, generator=gen) for c in centres])
    a = reduce_2d(x, method, seed=0, perplexity=50, n_neighbors=50)  # both clamped to what 24 points allow
    b = reduce_2d(x, method, seed=0, perplexity=50, n_neighbors=50)
    assert a.shape == (24, 2) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b)
    # The three clusters stay apart: each point's nearest other point is in its own cluster.
    d = distance_matrix(a, a, "euclidean")
    d.fill_diagonal_(float("inf"))
    assert (d.argmin(1) // 8 == torch.arange(24) // 8).all()


def test_thumbnail_map_places_thumbnails_at_their_points():
    red = torch.zeros(10, 10, 3, dtype=torch.uint8)
    red[..., 0] = 255
    blue = torch.zeros(10, 10, 3, dtype=torch.uint8)
    blue[..., 2] = 255
    canvas = thumbnail_map(torch.tensor([[0.0, 0.0], [2.0, 2.0]]), [red, blue], size=100, thumb=10)
    assert canvas.shape == (100, 100, 3) and canvas.dtype == torch.uint8
    assert canvas[95, 5].tolist() == [255, 0, 0]  # (0,0): bottom left
    assert canvas[5, 95].tolist() == [0, 0, 255]  # (2,2): top right
    assert canvas[50, 50].tolist() == [255, 255, 255]


def _brute_calibration(emb, labels):
    pairs = list(itertools.combinations(range(len(labels)), 2))
    d = [float((emb[i] - emb[j]).norm()) for i, j in pairs]
    same = [labels[i] == labels[j] for i, j in pairs]
    best = 0.0
    for t in sorted(set(d)) + [max(d) + 1]:
        best = max(best, np.mean([(di < t) == s for di, s in zip(d, same, strict=True)]))
    return best


def test_calibrated_threshold_is_the_best_cut():
    gen = torch.Generator().manual_seed(4)
    labels = [i % 5 for i in range(25)]
    emb = torch.nn.functional.normalize(torch.randn(5, 16, generator=gen)[labels] * 0.6
                                        + torch.randn(25, 16, generator=gen) * 0.5, dim=1)
    cal = calibrate_threshold(emb, labels)
    assert cal.n_same_pairs == 5 * 10 and cal.n_diff_pairs == 300 - 50
    assert cal.accuracy == pytest.approx(_brute_calibration(emb, labels))
    d = distance_matrix(emb, emb, "euclidean")
    iu = torch.triu_indices(25, 25, 1)
    lab = torch.tensor(labels)
    correct = ((d[iu[0], iu[1]] < cal.threshold) == (lab[iu[0]] == lab[iu[1]])).double().mean()
    assert float(correct) == pytest.approx(cal.accuracy)
    bal = calibrate_threshold(emb, labels, balanced=True)
    assert 0.5 <= bal.accuracy <= 1


def test_gallery_identifies_and_says_unknown():
    gen = torch.Generator().manual_seed(6)
    people = torch.nn.functional.normalize(torch.randn(3, 32, generator=gen), dim=1)
    g = Gallery()
    g.enroll(["ann", "bob"], people[:2])
    g.enroll(["ann"], people[0] + 0.05 * torch.randn(32, generator=gen))
    probe = torch.nn.functional.normalize(people[1] + 0.05 * torch.randn(32, generator=gen), dim=0)
    who = g.identify(probe, threshold=0.5)
    assert who.label == "bob" and who.distance < 0.5
    assert [c[0] for c in who.candidates] == ["bob", "ann"]  # one entry per label
    assert g.identify(people[2], threshold=0.5).label == "unknown"
    assert g.identify(probe, threshold=who.distance * 0.9).label == "unknown"
    d, same = verify(people[0], people[0], 0.1)
    assert d == pytest.approx(0.0, abs=1e-6) and same
    assert not verify(people[0], people[2], 0.1)[1]


def test_embeddings_are_unit_length(tiny, photos):
    e = embed(tiny, photos[:4], "block")
    torch.testing.assert_close(e.norm(dim=1), torch.ones(4))


def test_transforms_and_invariance_curves(tiny, photos):
    img = tiny.preprocessing.fit(photos[0])
    assert torch.equal(shift(img, 0), img)
    moved = shift(img, 5, "x")
    assert torch.equal(moved[:, :, 5:], img[:, :, :-5])
    torch.testing.assert_close(scale(img, 1.0), img)
    torch.testing.assert_close(rotate(img, 0), img)
    curves = invariance_curves(tiny, photos[0], "block", shifts=[-4, 0, 4], scales=[0.8, 1.0, 1.2],
                               rotations=[0, 30, 90], batch_size=4)
    for kind in ("shift", "scale", "rotation"):
        c = curves[kind]
        assert len(c["values"]) == len(c["distance"]) == len(c["probability"]) == 3
        zero = c["values"].index(1.0 if kind == "scale" else 0)
        assert c["distance"][zero] == 0.0 and c["probability_change"][zero] == 0.0
        assert all(0 <= d <= 2 for d in c["distance"])
    assert max(curves["rotation"]["distance"]) > 0
    picture = plot_curves(curves, width=600, height=200)
    assert picture.shape == (200, 600, 3) and picture.dtype == torch.uint8
    assert (picture != 255).any()


def test_projection_display_is_contrast_normalized_per_projection():
    # A faint signed pattern in the middle of a zero field, as a deep unit's projection looks.
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    blob = torch.exp(-((yy - 20) ** 2 + (xx - 20) ** 2) / 60) * torch.sin(xx * 0.6)
    p = 1e-4 * torch.stack([blob, -blob, 0.5 * blob])
    out = display_projection(p)
    assert out.shape == (40, 40, 3) and out.dtype == torch.uint8
    assert int(out[0, 0, 0]) in (127, 128) and (out[:3, :3].int() - 128).abs().max() <= 1  # zero is mid grey
    v = out.float()
    assert float(v.max() - v.min()) >= 230  # a 1e-4 pattern still uses (almost) the whole range
    same = (display_projection(p * 1e4).int() - out.int()).abs()
    assert int(same.max()) <= 1  # per projection: its scale does not matter
    # The sign survives: where the red channel's input is positive the tile is lighter than grey.
    assert float(v[..., 0][blob > 0.3].mean()) > 160 and float(v[..., 0][blob < -0.3].mean()) < 96
    assert torch.equal(display_projection(torch.zeros(3, 8, 8)), torch.full((8, 8, 3), 128, dtype=torch.uint8))
    # A stride-2 checkerboard as strong as the pattern (what strided convolutions leave in a
    # projection) hardly changes the picture: the pattern is what shows.
    checker = 1e-4 * 0.5 * ((yy + xx) % 2 * 2 - 1)
    noisy = display_projection(p + checker)
    assert float((noisy.float() - v).abs().mean()) < 12
