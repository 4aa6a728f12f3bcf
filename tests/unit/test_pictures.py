"""Pictures a person can read: rendering per kind of map, figures, labelled collection pictures.

Everything is checked on pixels of rendered known inputs (chelsea and synthetic maps shaped like
the real ones), so a rendering that hides the map, moves zero off the centre colour, or drops a
label fails here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cnnviz.attribution import METHODS, Method, register
from cnnviz.inspection import ChannelPatches, NeighbourLists, Patch, patch_grid, plot_curves, thumbnail_map
from cnnviz.inspection.embedding_map import label_colors, map_panels, thumb_size_for
from cnnviz.inspection.neighbours import neighbour_strip
from cnnviz.render import (
    COLORMAPS,
    DEFAULT_COLORMAP,
    DEFAULT_KIND,
    DIVERGING,
    MAP_KINDS,
    OFFERED_KINDS,
    apply_colormap,
    blend,
    center_color,
    colormap_lut,
    compose_figure,
    default_kind,
    explain_figure,
    figure_title,
    labelled_grid,
    normalize_map,
    outline,
    region_mask,
    render_map,
    scale_map,
)
from cnnviz.render.kinds import MapScale, format_value
from cnnviz.render.text import font, text_width

SIZE = (150, 225)  # chelsea at half size: the same picture, a quarter of the pixels


@pytest.fixture(scope="module")
def photo(chelsea) -> torch.Tensor:
    x = torch.from_numpy(np.array(chelsea)).permute(2, 0, 1)[None].float()
    x = torch.nn.functional.interpolate(x, size=SIZE, mode="bilinear", antialias=True, align_corners=False)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).contiguous()


def _envelope(h: int, w: int) -> torch.Tensor:
    """A blob over the cat's face: where a real map's evidence is."""
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    return torch.exp(-(((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2) / 2)


def _speckled(kind: str, h: int = SIZE[0], w: int = SIZE[1], seed: int = 0) -> torch.Tensor:
    """A synthetic raw map like the real ones of ``kind``.

    Pixel maps are heavy-tailed (Student t, 1.5 degrees of freedom: a few pixels 100x the
    typical one) under the envelope, as saliency and integrated gradients are; a positive map is
    a coarse 7x7 CAM; gradient_rgb is a signed [3, H, W] gradient.
    """
    rng = np.random.default_rng(seed)
    env = _envelope(h, w)
    if kind == "positive":
        cam = torch.nn.functional.interpolate(_envelope(7, 7)[None, None], size=(h, w), mode="bilinear")[0, 0]
        return cam * 3.0 + 0.5
    if kind == "gradient_rgb":
        return torch.from_numpy(rng.standard_t(1.5, size=(3, h, w))).float() * env * 1e-3
    t = torch.from_numpy(rng.standard_t(1.5, size=(h, w))).float() * 1e-3
    return (t.abs() if kind == "unsigned" else t) * env


def _visible(rgb: torch.Tensor, threshold: float = 96.0) -> float:
    """Fraction of pixels whose colour is far (RGB distance > threshold) from the background colour.

    The background is the picture's most common colour, which is how the issue measured it (a
    dark-blue wash with specks: 1-2 % visible).
    """
    flat = rgb.reshape(-1, 3)
    colours, counts = torch.unique(flat, dim=0, return_counts=True)
    bg = colours[counts.argmax()].float()
    return float(((flat.float() - bg).norm(dim=1) > threshold).float().mean())


# --- the default kind table ------------------------------------------------------------------


def test_every_registered_method_has_a_default_kind_it_offers():
    assert set(DEFAULT_KIND) == set(METHODS)
    for name, kind in DEFAULT_KIND.items():
        assert kind in MAP_KINDS
        assert OFFERED_KINDS[name][0] == kind
    assert DEFAULT_KIND["gradcam"] == "positive" and DEFAULT_KIND["rise"] == "positive"
    assert DEFAULT_KIND["saliency"] == "unsigned" and DEFAULT_KIND["guided_gradcam"] == "unsigned"
    assert DEFAULT_KIND["integrated_gradients"] == "signed" and DEFAULT_KIND["occlusion"] == "signed"
    assert "gradient_rgb" in OFFERED_KINDS["guided_backprop"] and "gradient_rgb" in OFFERED_KINDS["deconvnet"]
    assert DEFAULT_COLORMAP["signed"] in DIVERGING and DEFAULT_COLORMAP["unsigned"] not in DIVERGING


def test_every_method_class_declares_its_map_kinds_and_the_tables_are_views_of_them():
    for name, method in METHODS.items():
        declared = type(method).map_kinds
        assert declared and len(set(declared)) == len(declared), name
        assert all(k in MAP_KINDS for k in declared), name
        assert DEFAULT_KIND[name] == declared[0] and OFFERED_KINDS[name] == declared


def test_a_method_is_one_declaration_its_kinds_included():
    """Registering a class is all it takes: the rendering tables see it; one without kinds is refused."""

    class Plain(Method):
        name = "test_plain_kinds"
        family = "test"

    with pytest.raises(TypeError, match="map_kinds"):
        register(Plain)

    class Bad(Method):
        name = "test_bad_kinds"
        family = "test"
        map_kinds = ("positive", "sepia")  # type: ignore[assignment]

    with pytest.raises(TypeError, match="map_kinds"):
        register(Bad)
    assert "test_plain_kinds" not in METHODS and "test_bad_kinds" not in METHODS

    class Declared(Method):
        name = "test_declared_kinds"
        family = "test"
        map_kinds = ("signed", "positive")

    register(Declared)
    try:
        assert DEFAULT_KIND["test_declared_kinds"] == "signed"
        assert OFFERED_KINDS["test_declared_kinds"] == ("signed", "positive")
        assert default_kind("test_declared_kinds", "abs-max") == "unsigned"
    finally:
        del METHODS["test_declared_kinds"]
    assert "test_declared_kinds" not in DEFAULT_KIND


def test_reduce_decides_between_signed_and_unsigned():
    assert default_kind("input_x_gradient") == "signed"
    assert default_kind("input_x_gradient", "abs-max") == "unsigned"
    assert default_kind("saliency", "sum") == "signed"
    assert default_kind("smoothgrad", "l2") == "unsigned"
    assert default_kind("gradcam", "sum") == "positive"  # reduce means nothing to a CAM
    with pytest.raises(ValueError, match="gradcam"):
        default_kind("no-such-method")


# --- visibility, per method, on chelsea ------------------------------------------------------


@pytest.mark.parametrize("method", sorted(DEFAULT_KIND))
def test_default_rendering_of_every_method_is_visible(photo, method):
    kind = DEFAULT_KIND[method]
    raw = _speckled(kind)
    before = raw.clone()
    r = render_map(raw, method=method, size=SIZE)
    assert torch.equal(raw, before)  # the raw values are never modified
    assert r.kind == kind and r.rgb.shape == (*SIZE, 3) and r.rgb.dtype == torch.uint8
    assert _visible(r.rgb) > 0.10, f"{method}: {_visible(r.rgb):.1%} of the heatmap is visible"
    # The brightest part of the picture is where the map's evidence is (the cat's face).
    top = r.magnitude >= torch.quantile(r.magnitude.flatten(), 0.95)
    face = _envelope(*SIZE) > 0.5
    assert (top & face).sum() > 0.5 * top.sum()
    over = blend(photo, r)
    assert over.shape == photo.shape and not torch.equal(over, photo)


@pytest.mark.parametrize("kind", ["unsigned", "signed"])
def test_old_min_max_rendering_of_a_speckled_map_was_invisible(kind):
    """The test above can fail: min-max on jet shows the same maps as a wash (the issue's symptom)."""
    raw = _speckled(kind)
    assert _visible(apply_colormap(normalize_map(raw, "minmax"), "jet")) < 0.02


# --- scaling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cmap", DIVERGING)
def test_signed_zero_is_exactly_the_centre_colour(cmap):
    raw = _speckled("signed")
    raw[10:20, 10:20] = 0.0
    raw[0, 0] = 50.0  # one huge positive outlier must not move zero off the centre
    r = render_map(raw, "signed", colormap=cmap)
    assert r.scale.lo == -r.scale.hi and r.scale.center == 0.0
    assert torch.equal(r.values[10:20, 10:20], torch.full((10, 10), 0.5))
    centre = torch.tensor(center_color(cmap), dtype=torch.uint8)
    assert (r.rgb[10:20, 10:20] == centre).all()
    # A map with only positive values still has zero at the centre (min-max would not).
    pos = render_map(torch.tensor([[0.0, 1.0], [2.0, 3.0]]), "signed", colormap=cmap, clip_percentile=None)
    assert pos.values[0, 0] == 0.5 and pos.values[1, 1] == 1.0
    assert pos.rgb[0, 0].tolist() == list(center_color(cmap))


def test_diverging_colormaps_are_neutral_in_the_middle_blue_below_red_above():
    for name in DIVERGING:
        assert name in COLORMAPS
        lut = colormap_lut(name)
        mid = lut[128].tolist()
        assert max(mid) - min(mid) <= 4 and min(mid) >= 200, name  # light neutral
        assert lut[0, 2] > lut[0, 0] and lut[255, 0] > lut[255, 2], name
    assert center_color("bwr") == (255, 255, 255) and center_color("seismic") == (255, 255, 255)
    for name in ("jet", "turbo", "viridis", "inferno", "magma", "hot", "gray", "coolwarm"):
        assert name in COLORMAPS  # the old names still work


def test_gradient_rgb_of_a_zero_gradient_is_uniform_grey():
    r = render_map(torch.zeros(3, 8, 9), "gradient_rgb")
    assert r.colormap is None
    assert (r.rgb == 128).all()
    g = _speckled("gradient_rgb", 20, 30)
    a, b = render_map(g, "gradient_rgb"), render_map(g * 1000.0, "gradient_rgb")
    assert torch.equal(a.rgb, b.rgb)  # standardized per image: the gradient's scale does not matter
    shifted = render_map(g + 0.5 * float(g.abs().max()), "gradient_rgb")
    assert (shifted.rgb.int() - a.rgb.int()).abs().max() <= 1  # nor a constant offset (the mean is removed)
    assert a.rgb.float().std() > 10  # and it is not grey
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        render_map(torch.zeros(8, 9), "gradient_rgb")


def test_percentile_clip_saturates_values_above_it():
    raw = torch.arange(1, 10001, dtype=torch.float32).reshape(100, 100)  # 1..10000
    values, scale = scale_map(raw, "unsigned", clip_percentile=99.0)
    p99 = float(torch.quantile(raw.flatten(), 0.99))
    assert scale.hi == pytest.approx(p99) and scale.percentile == 99.0
    above = raw >= p99
    assert (values[above] == 1.0).all()
    torch.testing.assert_close(values[~above], raw[~above] / p99)
    assert scale.saturated == pytest.approx(float(above.float().mean()))
    assert scale.ticks()[0][1].startswith(">= ")  # the bar says its top is clipped
    full, fscale = scale_map(raw, "unsigned", clip_percentile=None)
    assert fscale.hi == 10000 and (full == 1.0).sum() == 1 and not fscale.ticks()[0][1].startswith(">")
    signed, sscale = scale_map(raw - 5000.5, "signed", clip_percentile=99.0)
    assert (signed[(raw - 5000.5).abs() >= sscale.hi] % 1.0 == 0).all()  # saturated at 0 or 1
    with pytest.raises(ValueError):
        scale_map(raw, "unsigned", clip_percentile=0.0)


def test_positive_maps_scale_as_before():
    raw = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    values, scale = scale_map(raw, "positive")
    torch.testing.assert_close(values, normalize_map(raw, "minmax"))
    assert (scale.lo, scale.hi) == (1.0, 5.0)
    values, scale = scale_map(raw - 2.0, "positive", positive="max")
    torch.testing.assert_close(values, normalize_map(raw - 2.0, "max"))
    empty, _ = scale_map(torch.full((3, 3), 2.0), "positive")
    assert (empty == 0).all()


@pytest.mark.parametrize("mode", ["minmax", "max", "signed", "none"])
def test_legacy_normalize_states_the_scale_its_colours_use(mode):
    """``output.normalize``: the values drawn are normalize_map's, and the stated scale maps raw onto them."""
    from core.explain_pictures import legacy_scaling

    raw = torch.linspace(-3.0, 7.0, 63).reshape(7, 9) * torch.linspace(0.2, 1.0, 9)
    values, scale = legacy_scaling(raw, mode)
    torch.testing.assert_close(values, normalize_map(raw, mode))
    drawn = torch.tensor([scale.position(float(v)) for v in raw.flatten()]).reshape(raw.shape)
    torch.testing.assert_close(values, drawn)
    assert scale.center == (0.0 if mode == "signed" else None)
    assert (scale.lo, scale.hi) == {"minmax": (float(raw.min()), float(raw.max())), "max": (0.0, float(raw.max())),
                                    "signed": (-float(raw.abs().max()), float(raw.abs().max())),
                                    "none": (0.0, 1.0)}[mode]


def test_tick_labels_are_raw_values_in_ascii():
    s = MapScale("signed", -0.25, 0.25, 99.0, 0.01)
    assert [t for _, t in s.ticks()] == [">= 0.25", "0", "<= -0.25"]
    assert MapScale("positive", 0.1, 0.5).ticks() == [(1.0, "0.5"), (0.5, "0.3"), (0.0, "0.1")]
    assert format_value(1.23e-5) == "1.23e-5" and format_value(0.000123) == "1.23e-4"
    assert all(ord(ch) < 256 for _, t in MapScale("gradient_rgb", -3, 3, 99, 0.1).ticks() for ch in t)


# --- outline and blending --------------------------------------------------------------------


def test_outline_draws_only_near_the_region_boundary(photo):
    h, w = SIZE
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    dist = ((yy - 75) ** 2 + (xx - 110) ** 2).sqrt()
    disc = (40 - dist).clamp(min=0)  # a cone: its top 25 % is a disc around (75, 110)
    out = outline(photo, disc, top_fraction=0.25, width=3)
    changed = (out != photo).any(-1)
    assert changed.sum() > 100
    mask = region_mask(disc, top_fraction=0.25)
    radius = math.sqrt(float(mask.sum()) / math.pi)
    assert (dist[changed] - radius).abs().max() <= 4.0  # line 3 px + a 1 px halo each side
    assert not changed[dist < radius - 5].any() and not changed[dist > radius + 5].any()
    assert (out[changed] == torch.tensor([0, 255, 64], dtype=torch.uint8)).all(-1).any()
    assert torch.equal(outline(photo, torch.ones(h, w)), photo)  # nothing stands out: nothing drawn


def test_outline_of_a_rendered_signed_map_encloses_the_positive_evidence(photo):
    raw = torch.zeros(SIZE)
    raw[40:100, 60:160] = 1.0
    raw[:30, :50] = -5.0  # strong negative evidence is not "the region"
    r = render_map(raw, "signed")
    changed = (outline(photo, r, smooth=0.0) != photo).any(-1)
    assert changed[35:105, 55:165].sum() == changed.sum() > 0


def test_evidence_blend_leaves_the_photo_where_the_map_is_zero(photo):
    raw = torch.zeros(SIZE)
    raw[50:60, 50:60] = 1.0
    r = render_map(raw, "unsigned")
    out = blend(photo, r)
    assert torch.equal(out[:40], photo[:40])
    assert not torch.equal(out[50:60, 50:60], photo[50:60, 50:60])
    assert torch.equal(blend(photo, render_map(raw, "positive"), alpha=0.0), photo)


# --- figures ---------------------------------------------------------------------------------


def _dark(img: torch.Tensor, level: int = 100) -> torch.Tensor:
    return (img.int().amax(-1) < level)


def test_figure_has_a_title_and_a_monotone_colour_bar(photo):
    r = render_map(_speckled("signed"), "signed")
    fig = compose_figure([blend(photo, r)], scale=r.scale, colormap=r.colormap, title="Integrated gradients",
                         subtitle=r.scale.describe())
    img = fig.image
    assert img.dtype == torch.uint8 and img.dim() == 3
    x0, y0, x1, y1 = fig.title_box
    title = img[y0:y1, x0:x1]
    rows = _dark(title).any(1).nonzero()
    assert len(rows) and int(rows.max() - rows.min()) >= 9  # text at least ~12 px high (title + subtitle)
    px0, py0, px1, py1 = fig.panel_boxes[0]
    assert py0 >= y1 and torch.equal(img[py0:py1, px0:px1], blend(photo, r))
    bx0, by0, bx1, by1 = fig.bar_box
    assert bx0 >= px1 and by1 - by0 > 0.8 * (py1 - py0)
    lut = colormap_lut(r.colormap).int()
    column = img[by0:by1, (bx0 + bx1) // 2].int()
    idx = (column[:, None, :] - lut[None]).abs().sum(-1).argmin(1)  # nearest LUT entry per row
    assert ((column - lut[idx]).abs().max(1).values == 0).all()  # every row is a colormap colour
    assert (idx[1:] <= idx[:-1]).all() and idx[0] == 255 and idx[-1] == 0  # top = +v, bottom = -v
    assert column[len(column) // 2].tolist() in (lut[127].tolist(), lut[128].tolist())
    assert _dark(img[by0:by1, bx1 + 4:]).sum() > 30  # tick labels to the right of the bar


def test_explain_figure_titles_and_views(photo):
    raw = _speckled("positive")
    fig = explain_figure(photo, raw, method="gradcam", method_title="Grad-CAM", label="tabby", probability=0.5,
                         layer="act_head", views=("overlay", "heatmap", "outline"))
    h, w = SIZE
    assert fig.shape[0] > h + 24 and fig.shape[1] > 3 * w
    assert (fig == torch.tensor([0, 255, 64], dtype=torch.uint8)).all(-1).sum() > 50  # the outline's line
    one = explain_figure(photo, raw, method="gradcam", label="tabby")
    assert one.shape[1] < fig.shape[1]
    other = explain_figure(photo, raw, method="gradcam", label="tiger cat")
    assert not torch.equal(one, other)  # the label is drawn
    rgb = explain_figure(photo, _speckled("gradient_rgb"), method="guided_backprop", kind="gradient_rgb")
    assert rgb.shape[1] < one.shape[1] + w  # no colour bar for an RGB gradient
    assert figure_title("Grad-CAM", "tabby", 0.623, "act_head") == "Grad-CAM · tabby (p = 0.62) · layer act_head"
    with pytest.raises(ValueError):
        explain_figure(photo, raw, method="gradcam", views=("nope",))  # type: ignore[arg-type]


def test_figure_text_is_readable_on_a_small_picture():
    tiny = torch.full((40, 60, 3), 128, dtype=torch.uint8)
    r = render_map(_speckled("positive", 40, 60), "positive")
    fig = compose_figure([tiny], scale=r.scale, colormap="jet", title="Grad-CAM · tabby (p = 0.50)")
    title = fig.image[fig.title_box[1]:fig.title_box[3]]
    rows = _dark(title).any(1).nonzero()
    assert int(rows.max() - rows.min()) >= 9  # a 12 px font at least, though the picture is 40 px high
    assert font(24).size == 24  # the bundled scalable font (no download, no font file)


# --- labelled grids and collection pictures ----------------------------------------------------


def _solid(rgb: tuple[int, int, int], h: int = 32, w: int = 32) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.uint8).expand(h, w, 3).clone()


def test_labelled_grid_puts_each_caption_under_its_tile():
    tiles = [_solid((255, 0, 0)), _solid((0, 255, 0)), _solid((0, 0, 255))]
    grid = labelled_grid(tiles, ["a", "bb", "a very long caption 123456789"], ncols=3, pad=4)
    for t, colour in zip(range(3), ((255, 0, 0), (0, 255, 0), (0, 0, 255)), strict=True):
        hits = (grid == torch.tensor(colour, dtype=torch.uint8)).all(-1).nonzero()
        assert len(hits) == 32 * 32, t
    ys = (grid == torch.tensor((255, 0, 0), dtype=torch.uint8)).all(-1).nonzero()[:, 0]
    tile_bottom = int(ys.max())
    dark = _dark(grid)
    assert dark[tile_bottom + 1:].any() and not dark[: tile_bottom + 1].any()  # captions only below the tiles
    assert grid.shape[1] >= text_width("123456789", 12)  # a long word widens the cell instead of being cut
    bare = labelled_grid(tiles, ["", "", ""], ncols=3, pad=4)
    assert not _dark(bare).any()
    with pytest.raises(ValueError):
        labelled_grid(tiles, ["x"])


def _patches(channel: int, activation: float) -> ChannelPatches:
    crops = [_solid((200, 50, 50), 10, 10), _solid((50, 200, 50), 10, 10)]
    return ChannelPatches(channel, activation, [
        Patch(i, 0, 0, activation + i, (0, 0, 10, 10), c, projection=_solid((128, 128, 128), 10, 10))
        for i, c in enumerate(crops)])


def test_patch_grid_labels_channels_and_activations():
    plain = patch_grid([_patches(3, 1.5)], tile=32, labels=False)
    labelled = patch_grid([_patches(3, 1.5)], tile=32, layer="block3")
    assert not _dark(plain).any() and _dark(labelled).sum() > 100
    assert labelled.shape[0] > plain.shape[0]
    other_channel = patch_grid([_patches(4, 1.5)], tile=32, layer="block3")
    other_value = patch_grid([_patches(3, 2.5)], tile=32, layer="block3")
    assert other_channel.shape == labelled.shape and not torch.equal(other_channel, labelled)
    assert not torch.equal(other_value, labelled)
    # Changing only the activations changes only text below the title, not the title "channel 3".
    diff = (other_value != labelled).any(-1).nonzero()[:, 0]
    title_rows = (labelled != other_channel).any(-1).nonzero()[:, 0]
    assert int(diff.min()) > int(title_rows.min())


def test_neighbour_strip_has_two_labelled_rows_with_distances():
    colours = [(230, 30, 30), (30, 230, 30), (30, 30, 230), (230, 230, 30)]
    images = [torch.tensor(c, dtype=torch.float32).div(255).view(3, 1, 1).expand(3, 40, 60).clone() for c in colours]
    query = torch.full((3, 40, 60), 0.5)
    nl = NeighbourLists("act_head", "cosine", [0, 1], [0.1, 0.2], [2, 3], [5.0, 6.0])
    strip = neighbour_strip(query, images, nl, thumb=48)
    ys = {}
    for i, c in enumerate(colours):
        hits = (strip.int() - torch.tensor(c)).abs().amax(-1) <= 2
        assert hits.sum() > 0.8 * 48 * 32, i
        ys[i] = float(hits.nonzero()[:, 0].float().mean())
    assert ys[0] == ys[1] < ys[2] == ys[3]  # feature row above the pixel row
    moved = neighbour_strip(query, images, NeighbourLists("act_head", "cosine", [0, 1], [0.1, 0.9], [2, 3],
                                                          [5.0, 6.0]), thumb=48)
    assert moved.shape == strip.shape and not torch.equal(moved, strip)  # distances are drawn


def _cloud(n: int = 30, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 2, generator=torch.Generator().manual_seed(seed))


def _covered_width(canvas: torch.Tensor, size: int) -> float:
    xs = (canvas[:size] != 255).any(-1).any(0).nonzero()[:, 0]
    return float(xs.max() - xs.min() + 1) / size


def test_thumbnail_map_is_filled_by_the_bulk_not_by_an_outlier():
    coords = torch.cat([_cloud(), torch.tensor([[100.0, 0.5]])])
    thumbs = [_solid((0, 0, 0), 16, 16)] * 30 + [_solid((255, 0, 0), 16, 16)]
    canvas = thumbnail_map(coords, thumbs, size=256, thumb=16)
    assert canvas.shape == (256, 256, 3)  # no labels: the old picture size
    black = (canvas == 0).all(-1)
    xs = black.any(0).nonzero()[:, 0]
    assert float(xs.max() - xs.min()) / 256 > 0.5
    red = (canvas == torch.tensor([255, 0, 0], dtype=torch.uint8)).all(-1).nonzero()
    assert int(red[:, 1].max()) == 255  # the outlier is clamped to the right edge, still shown
    old = thumbnail_map(coords, thumbs, size=256, thumb=16, spread=None, keep_aspect=True)
    xs_old = (old == 0).all(-1).any(0).nonzero()[:, 0]
    assert float(xs_old.max() - xs_old.min()) / 256 < 0.1  # what min-max scaling did
    few = thumbnail_map(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]),
                        [_solid((0, 0, 0), 16, 16)] * 4, size=256, thumb=16)
    assert _covered_width(few, 256) == 1.0  # a few well-spread points are not clamped together


def test_thumbnail_map_labels_get_border_colours_and_a_legend():
    coords = _cloud(12)
    labels = ["cat", "dog", "car"] * 4
    thumbs = [_solid((128, 128, 128), 20, 20)] * 12
    pic = thumbnail_map(coords, thumbs, size=200, thumb=24, labels=labels)
    palette = label_colors(labels)
    assert list(palette) == ["cat", "dog", "car"] and len(set(palette.values())) == 3
    assert pic.shape[1] == 200 and pic.shape[0] > 200  # a legend band under the canvas
    for colour in palette.values():
        hit = (pic == torch.tensor(colour, dtype=torch.uint8)).all(-1)
        assert hit[:200].sum() >= 4 * 20  # borders on the canvas
        assert hit[200:].sum() > 20  # and a swatch in the legend
    assert _dark(pic[200:]).sum() > 50  # the label names
    bare = thumbnail_map(coords, thumbs, size=200, thumb=24)
    assert bare.shape == (200, 200, 3)
    assert not any((bare == torch.tensor(c, dtype=torch.uint8)).all(-1).any() for c in palette.values())


def test_map_panels_are_titled_with_one_shared_legend():
    coords = _cloud(8)
    labels = ["a", "b"] * 4
    thumbs = [_solid((128, 128, 128), 16, 16)] * 8
    pic = map_panels([coords, coords.flip(1)], thumbs, ["frozen features", "trained head"], labels=labels,
                     size=160, thumb=20)
    assert pic.shape[1] >= 2 * 160
    left = map_panels([coords, coords.flip(1)], thumbs, ["other title", "trained head"], labels=labels,
                      size=160, thumb=20)
    diff = (left != pic).any(-1).nonzero()
    assert len(diff) and int(diff[:, 1].max()) < 160  # only the left panel's title changed
    for colour in label_colors(labels).values():
        assert (pic == torch.tensor(colour, dtype=torch.uint8)).all(-1).sum() > 8 * 16
    assert 40 <= thumb_size_for(100, 768) <= 64 and thumb_size_for(4, 768) == 192


def test_invariance_plot_has_tick_labels_at_a_readable_size():
    curves = {"layer": "act_head", "class_label": "tabby",
              "shift": {"unit": "px (y)", "values": [-8, 0, 8], "distance": [0.3, 0.0, 0.3],
                        "probability": [0.5, 0.6, 0.5]},
              "scale": {"unit": "x", "values": [0.8, 1.0, 1.2], "distance": [0.2, 0.0, 0.2],
                        "probability": [0.5, 0.6, 0.5]},
              "rotation": {"unit": "deg", "values": [0.0, 90.0], "distance": [0.0, 0.5],
                           "probability": [0.6, 0.1]}}
    pic = plot_curves(curves, width=600, height=240)
    assert pic.shape == (240, 600, 3)
    big = plot_curves(curves, width=600, height=240, font_px=20)
    assert _dark(big).sum() > _dark(pic).sum()  # text is drawn at the asked size
    relabelled = plot_curves({**curves, "class_label": "tiger cat"}, width=600, height=240)
    assert not torch.equal(relabelled, pic)
    # Tick labels left of the first panel's y axis, on several rows.
    rows = _dark(pic[:, :30]).any(1).nonzero()[:, 0]
    assert len(rows) and int(rows.max() - rows.min()) > 100
