"""Collection views on the real EfficientNet-Lite0 and real photos: what a trained network must get right."""

from __future__ import annotations

import pytest
import torch
from conftest import to_tensor

from cnnviz.hooks import LayerCapture, capture
from cnnviz.inspection import (
    Gallery,
    calibrate_threshold,
    distance_matrix,
    embed,
    extract_features,
    invariance_curves,
    neighbour_lists,
    project_units,
    receptive_field,
    receptive_fields,
    top_activating_patches,
)
from cnnviz.inspection.invariance import rotate
from core.schemas.collections import CollectionViewParams

pytestmark = pytest.mark.model

SIZE = 160  # small inputs keep the CPU time of these tests low; the views work at any size


def _rgb(a) -> torch.Tensor:
    a = a[0] if isinstance(a, tuple) else a
    t = to_tensor(a[..., None].repeat(3, -1) if a.ndim == 2 else a[..., :3])
    return t


@pytest.fixture(scope="module")
def photos() -> dict[str, torch.Tensor]:
    import skimage.data as d

    names = ["chelsea", "coffee", "astronaut", "rocket", "camera", "hubble_deep_field", "immunohistochemistry",
             "retina", "stereo_motorcycle", "colorwheel", "coins", "moon", "brick", "gravel", "clock", "page"]
    return {n: _rgb(getattr(d, n)()) for n in names}


def flip(img: torch.Tensor) -> torch.Tensor:
    return img.flip(-1)


def crop(img: torch.Tensor, keep: float = 0.9) -> torch.Tensor:
    h, w = img.shape[-2:]
    dh, dw = round(h * (1 - keep) / 2), round(w * (1 - keep) / 2)
    return img[:, dh:h - dh, dw:w - dw]


@pytest.mark.parametrize("layer", ["act_head", "_blocks.15"])
def test_feature_neighbours_of_a_photo_are_its_own_copies(lite0, photos, layer):
    others = [v for k, v in photos.items() if k != "chelsea"]
    cat = photos["chelsea"]
    collection = [cat, *others, flip(cat), crop(cat, 0.9)]
    copies = {len(collection) - 2, len(collection) - 1}
    result = neighbour_lists(lite0, cat, collection, layer, k=4, exclude=[0], size=SIZE)
    assert set(result.feature_indices[:2]) == copies, result
    assert result.feature_distances == sorted(result.feature_distances)
    assert len(result.pixel_indices) == 4 and 0 not in result.pixel_indices


@pytest.fixture(scope="module")
def identities(photos):
    """Four transformed copies of six photos: flipped, cropped, rotated, darker."""
    names = ["chelsea", "coffee", "astronaut", "rocket", "stereo_motorcycle", "immunohistochemistry"]
    images, labels = [], []
    for n in names:
        img = photos[n]
        images += [img, flip(img), crop(img, 0.85), rotate(img, 8), img * 0.75]
        labels += [n] * 5
    return images, labels


def test_verification_separates_copies_of_a_photo_from_other_photos(lite0, identities):
    images, labels = identities
    emb = embed(lite0, images, size=SIZE)
    cal = calibrate_threshold(emb, labels)
    assert cal.n_same_pairs == 6 * 10 and cal.n_diff_pairs == 435 - 60
    assert cal.accuracy >= 0.97, cal
    balanced = calibrate_threshold(emb, labels, balanced=True)
    assert balanced.accuracy >= 0.95, balanced
    # Every copy is closer to the other copies of its photo than to most other photos.
    d = distance_matrix(emb, emb, "euclidean")
    lab = torch.tensor([labels.index(x) for x in labels])
    same = lab[:, None] == lab[None]
    d.fill_diagonal_(float("nan"))
    mean_same = d.masked_fill(~same, float("nan")).nanmean(1)
    mean_diff = d.masked_fill(same, float("nan")).nanmean(1)
    assert (mean_same < mean_diff).all()


def test_identification_knows_enrolled_photos_and_not_strangers(lite0, photos, identities):
    images, labels = identities
    emb = embed(lite0, images, size=SIZE)
    threshold = calibrate_threshold(emb, labels).threshold
    gallery = Gallery()
    gallery.enroll(labels[::5], emb[::5])  # the originals
    probes = embed(lite0, [flip(photos["coffee"]), crop(photos["rocket"], 0.8), photos["gravel"]], size=SIZE)
    assert gallery.identify(probes[0], threshold).label == "coffee"
    assert gallery.identify(probes[1], threshold).label == "rocket"
    stranger = gallery.identify(probes[2], threshold)
    assert stranger.label == "unknown" and stranger.distance >= threshold
    assert len(stranger.candidates) == 5


def test_top_patches_on_the_real_model(lite0, photos):
    images = [photos[n] for n in ("chelsea", "coffee", "astronaut", "rocket", "stereo_motorcycle", "coins")]
    layer = "_blocks.3"  # stride 8, field 35 px: stem 3/2, dw 3/1, dw 3/2, dw 3/1, dw 5/2
    result = top_activating_patches(lite0, images, layer, None, top_channels=2, k=3, size=SIZE, batch_size=6)
    x = lite0.preprocessing.batch(images, SIZE)
    cap = LayerCapture()
    with capture(lite0.module, {layer: cap}), torch.no_grad():
        lite0.module(x)
    act = cap.output
    for ch in result:
        maxima = act[:, ch.channel].flatten(1).amax(1)
        top = maxima.sort(descending=True).values[:3]
        torch.testing.assert_close(torch.tensor([p.activation for p in ch.patches]), top, rtol=1e-4, atol=1e-4)
        for p in ch.patches:
            assert float(act[p.image, ch.channel, p.y, p.x]) == pytest.approx(p.activation, rel=1e-4, abs=1e-4)
            assert p.box == receptive_field(lite0, layer, p.y, p.x, SIZE, with_size=False).box
    # The measured field is the analytic one; neighbouring positions are one stride apart.
    a, b = receptive_fields(lite0, layer, [(8, 8), (8, 9)], SIZE)
    assert a.size == (35, 35) and (a.box[2] - a.box[0], a.box[3] - a.box[1]) == (35, 35)
    assert b.box[0] - a.box[0] == 8 and b.box[1] == a.box[1]
    # The deconvnet projection of the strongest patch stays inside its field and is not the gradient.
    p = result[0].patches[0]
    xi = x[p.image:p.image + 1]
    deconv = project_units(lite0, xi, layer, [result[0].channel], [(p.y, p.x)], "deconvnet")[0]
    grad = project_units(lite0, xi, layer, [result[0].channel], [(p.y, p.x)], "gradient")[0]
    x0, y0, x1, y1 = p.box
    outside = torch.ones(SIZE, SIZE, dtype=torch.bool)
    outside[y0:y1, x0:x1] = False
    assert deconv.abs().sum() > 0 and not deconv[:, outside].any()
    cos = torch.nn.functional.cosine_similarity(deconv.flatten(), grad.flatten(), dim=0)
    assert cos < 0.99
    # Without max pooling, the deconvnet rule never looks at the image: every patch of a channel gets the same
    # picture. Guided backpropagation (the default projection) shows what each patch's unit saw.
    full = [q for q in result[0].patches if (q.box[2] - q.box[0], q.box[3] - q.box[1]) == (35, 35)][:2]
    assert len(full) == 2 and full[0].image != full[1].image

    def crops(mode: str) -> list[torch.Tensor]:
        return [project_units(lite0, x[q.image:q.image + 1], layer, [result[0].channel], [(q.y, q.x)], mode)[0][
            :, q.box[1]:q.box[3], q.box[0]:q.box[2]].flatten() for q in full]

    same = torch.nn.functional.cosine_similarity(*crops("deconvnet"), dim=0)
    seen = torch.nn.functional.cosine_similarity(*crops("guided"), dim=0)
    assert same > 0.999 and seen < 0.9
    assert CollectionViewParams.model_fields["projection"].default == "guided"


def test_invariance_curves_on_a_photo(lite0, photos):
    curves = invariance_curves(lite0, photos["chelsea"], "act_head", shifts=[0, 8, 32],
                               scales=[1.0, 1.3], rotations=[0, 5, 10, 45, 90, 135, 180], size=SIZE)
    assert 281 <= curves["class_index"] <= 285  # a cat
    for kind in ("shift", "scale", "rotation"):
        assert curves[kind]["distance"][0] == 0.0
    rot = dict(zip(curves["rotation"]["values"], curves["rotation"]["distance"], strict=True))
    small = (rot[5] + rot[10]) / 2
    large = (rot[90] + rot[135] + rot[180]) / 3
    assert large > small > 0
    shifts = curves["shift"]["distance"]
    assert shifts[2] > shifts[1] > 0
    feats = extract_features(lite0, [photos["chelsea"]], "act_head", size=SIZE)
    assert feats.shape == (1, 1280)
