"""Unit tests for cnnviz.render: colormaps, normalization, overlays, boxes, PNG and grids."""

from __future__ import annotations

import base64
import io
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from cnnviz.render import (
    COLORMAPS,
    apply_colormap,
    colormap_lut,
    draw_boxes,
    encode_png,
    make_grid,
    normalize_map,
    overlay,
    png_base64,
    resize_map,
    to_uint8_image,
)


def _rgb(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g)


# --- colormaps -------------------------------------------------------------------------------


def test_jet_endpoints() -> None:
    m = torch.tensor([[0.0, 1.0]])
    out = apply_colormap(m, "jet")
    assert out.dtype == torch.uint8 and out.shape == (1, 2, 3)
    lo, hi = out[0, 0].tolist(), out[0, 1].tolist()
    assert lo[0] == 0 and lo[1] == 0 and 120 <= lo[2] <= 135  # dark blue
    assert 120 <= hi[0] <= 135 and hi[1] == 0 and hi[2] == 0  # dark red


def test_gray_is_identity() -> None:
    m = torch.linspace(0, 1, 256).reshape(16, 16)
    out = apply_colormap(m, "gray")
    expected = (m * 255).round().to(torch.uint8)
    for c in range(3):
        assert torch.equal(out[..., c], expected)


@pytest.mark.parametrize("name", COLORMAPS)
def test_every_colormap_shape_and_lut(name: str) -> None:
    lut = colormap_lut(name)
    assert lut.shape == (256, 3) and lut.dtype == torch.uint8
    out = apply_colormap(torch.rand(5, 7), name)
    assert out.shape == (5, 7, 3) and out.dtype == torch.uint8


def test_colormap_reference_colors() -> None:
    assert colormap_lut("viridis")[0].tolist() == [68, 1, 84]
    assert colormap_lut("viridis")[255].tolist() == [253, 231, 37]
    assert colormap_lut("inferno")[0].tolist() == [0, 0, 4]
    assert colormap_lut("hot")[255].tolist() == [255, 255, 255]
    mid = colormap_lut("coolwarm")[128].tolist()  # diverging: neutral grey in the middle
    assert max(mid) - min(mid) <= 4 and 210 <= mid[0] <= 230
    cw = colormap_lut("coolwarm")
    assert cw[0, 2] > cw[0, 0] and cw[255, 0] > cw[255, 2]  # blue for negative, red for positive


def test_colormap_viridis_luminance_monotone() -> None:
    lut = colormap_lut("viridis").float()
    lum = lut @ torch.tensor([0.2126, 0.7152, 0.0722])
    assert (lum[1:] - lum[:-1] >= -0.5).all()


def test_unknown_colormap_names_valid_ones() -> None:
    with pytest.raises(ValueError, match="viridis"):
        apply_colormap(torch.zeros(2, 2), "rainbow")
    with pytest.raises(ValueError, match="jet"):
        colormap_lut("nope")


def test_colormap_nan_and_out_of_range() -> None:
    m = torch.tensor([[float("nan"), 0.0, -3.0, 7.0, 1.0]])
    out = apply_colormap(m, "jet")
    assert torch.equal(out[0, 0], out[0, 1])
    assert torch.equal(out[0, 2], out[0, 1])
    assert torch.equal(out[0, 3], out[0, 4])


def test_colormap_lut_copy_is_safe_to_mutate() -> None:
    lut = colormap_lut("gray")
    lut.zero_()
    assert colormap_lut("gray")[255].tolist() == [255, 255, 255]


def test_colormap_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError):
        apply_colormap(torch.zeros(1, 2, 2))


# --- normalization and resizing --------------------------------------------------------------


def test_normalize_minmax() -> None:
    m = torch.tensor([[2.0, 4.0], [6.0, 10.0]])
    out = normalize_map(m, "minmax")
    assert torch.allclose(out, torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    assert torch.equal(normalize_map(torch.full((3, 3), 5.0), "minmax"), torch.zeros(3, 3))


def test_normalize_max() -> None:
    m = torch.tensor([[-2.0, 0.0], [1.0, 4.0]])
    assert torch.allclose(normalize_map(m, "max"), torch.tensor([[0.0, 0.0], [0.25, 1.0]]))
    assert torch.equal(normalize_map(-torch.ones(2, 2), "max"), torch.zeros(2, 2))


def test_normalize_signed() -> None:
    m = torch.tensor([[-4.0, 0.0], [2.0, 4.0]])
    assert torch.allclose(normalize_map(m, "signed"), torch.tensor([[0.0, 0.5], [0.75, 1.0]]))
    m2 = torch.tensor([[-1.0, 0.0, 0.5]])
    assert torch.allclose(normalize_map(m2, "signed"), torch.tensor([[0.0, 0.5, 0.75]]))
    assert torch.equal(normalize_map(torch.zeros(2, 2), "signed"), torch.full((2, 2), 0.5))


def test_normalize_none_clamps() -> None:
    m = torch.tensor([[-1.0, 0.3, 2.0]])
    assert torch.allclose(normalize_map(m, "none"), torch.tensor([[0.0, 0.3, 1.0]]))


def test_normalize_nan_and_bad_mode() -> None:
    m = torch.tensor([[float("nan"), 1.0, 3.0]])
    out = normalize_map(m, "minmax")
    assert torch.isfinite(out).all() and out[0, 0] == 0.0 and out[0, 2] == 1.0
    with pytest.raises(ValueError):
        normalize_map(m, "zscore")  # type: ignore[arg-type]


def test_resize_map_bilinear() -> None:
    m = torch.rand(7, 7)
    out = resize_map(m, (28, 21))
    assert out.shape == (28, 21)
    ref = torch.nn.functional.interpolate(m[None, None], size=(28, 21), mode="bilinear",
                                          align_corners=False)[0, 0]
    assert torch.allclose(out, ref)
    const = resize_map(torch.full((3, 3), 0.7), (10, 10))
    assert torch.allclose(const, torch.full((10, 10), 0.7))
    same = resize_map(m, (7, 7))
    assert torch.equal(same, m) and same.data_ptr() != m.data_ptr()


# --- overlay and boxes -----------------------------------------------------------------------


def test_overlay_alpha_extremes() -> None:
    img, heat = _rgb(12, 10, 1), _rgb(12, 10, 2)
    assert torch.equal(overlay(img, heat, 0.0), img)
    assert torch.equal(overlay(img, heat, 1.0), heat)
    mid = overlay(img, heat, 0.5)
    expect = ((img.float() + heat.float()) / 2).round().to(torch.uint8)
    assert (mid.int() - expect.int()).abs().max() <= 1


def test_overlay_resizes_heat() -> None:
    img = _rgb(40, 30)
    heat = torch.zeros(8, 6, 3, dtype=torch.uint8)
    heat[..., 0] = 200
    out = overlay(img, heat, 1.0)
    assert out.shape == img.shape
    assert (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()


def test_overlay_rejects_bad_input() -> None:
    img = _rgb(4, 4)
    with pytest.raises(ValueError):
        overlay(img, img, 1.5)
    with pytest.raises(ValueError):
        overlay(img.float(), img, 0.5)


def test_draw_boxes_edges_exact() -> None:
    img = torch.zeros(20, 30, 3, dtype=torch.uint8)
    out = draw_boxes(img, [(5, 4, 15, 12)], color=(255, 0, 0), width=1)
    assert torch.equal(img, torch.zeros_like(img))  # input untouched
    red = (out[..., 0] == 255) & (out[..., 1] == 0) & (out[..., 2] == 0)
    expected = torch.zeros(20, 30, dtype=torch.bool)
    expected[4, 5:15] = True
    expected[11, 5:15] = True
    expected[4:12, 5] = True
    expected[4:12, 14] = True
    assert torch.equal(red, expected)


def test_draw_boxes_width_and_clipping() -> None:
    img = torch.zeros(10, 10, 3, dtype=torch.uint8)
    out = draw_boxes(img, [(0, 0, 10, 10)], width=2)
    on = out[..., 1] == 255
    assert on[:2].all() and on[-2:].all() and on[:, :2].all() and on[:, -2:].all()
    assert not on[2:8, 2:8].any()
    # partly outside: only the parts inside are drawn; the edges beyond the image are dropped
    out2 = draw_boxes(img, [(-5, 5, 5, 20)], width=1)
    on2 = out2[..., 1] == 255
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[5, 0:5] = True
    expected[5:10, 4] = True
    assert torch.equal(on2, expected)
    # wholly outside or empty boxes do nothing
    assert torch.equal(draw_boxes(img, [(20, 20, 30, 30), (3, 3, 3, 8)]), img)


# --- PNG -------------------------------------------------------------------------------------


def test_png_roundtrip_rgb_and_gray() -> None:
    img = _rgb(17, 23)
    data = encode_png(img)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    back = np.asarray(Image.open(io.BytesIO(data)))
    assert np.array_equal(back, img.numpy())
    gray = img[..., 0].contiguous()
    back_g = Image.open(io.BytesIO(encode_png(gray)))
    assert back_g.mode == "L" and np.array_equal(np.asarray(back_g), gray.numpy())


def test_png_base64_and_non_contiguous() -> None:
    img = _rgb(8, 8).permute(1, 0, 2)  # a non-contiguous view
    s = png_base64(img)
    back = np.asarray(Image.open(io.BytesIO(base64.b64decode(s))))
    assert np.array_equal(back, img.numpy())
    with pytest.raises(ValueError):
        encode_png(img.float())


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 9, 3), (9, 1), (64, 77, 3), (31, 5)])
def test_png_is_lossless_for_any_bytes(shape) -> None:
    """Random bytes exercise the Up filter's wrap-around (a byte below the one above it) on every row."""
    img = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(len(shape)))
    back = Image.open(io.BytesIO(encode_png(img)))
    back.load()  # a bad CRC or a truncated stream fails here
    assert back.mode == ("RGB" if len(shape) == 3 else "L") and back.size == (shape[1], shape[0])
    assert np.array_equal(np.asarray(back), img.numpy())


def test_png_of_a_photo_is_no_larger_than_pils(chelsea) -> None:
    """The single filter loses nothing in size against libpng's adaptive choice on a photo overlay."""
    img = torch.from_numpy(np.asarray(Image.fromarray(chelsea).resize((224, 224)))).contiguous()
    buf = io.BytesIO()
    Image.fromarray(img.numpy()).save(buf, format="PNG", compress_level=1)
    ours = encode_png(img)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(ours))), img.numpy())
    assert len(ours) <= len(buf.getvalue()) * 1.05


def test_png_deflate_is_isal_where_installed() -> None:
    """ISA-L is a dependency for speed (cnnviz/render/png.py); losing it would silently cost 1.7 ms an answer."""
    isal_zlib = pytest.importorskip("isal.isal_zlib")
    from cnnviz.render import png

    assert png._deflate is isal_zlib.compress
    data = np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes() * 3
    assert zlib.decompress(png._deflate(data, 1)) == data  # a plain zlib stream, as IDAT must hold


def test_png_rejects_empty() -> None:
    with pytest.raises(ValueError):
        encode_png(torch.zeros(0, 4, 3, dtype=torch.uint8))


def test_to_uint8_image() -> None:
    x = torch.rand(3, 5, 6)
    out = to_uint8_image(x)
    assert out.shape == (5, 6, 3) and out.dtype == torch.uint8 and out.is_contiguous()
    assert torch.equal(out, (x * 255).round().to(torch.uint8).permute(1, 2, 0))
    extremes = to_uint8_image(torch.tensor([[[-1.0]], [[2.0]], [[float("nan")]]]))
    assert extremes[0, 0].tolist() == [0, 255, 0]


# --- grid ------------------------------------------------------------------------------------


def test_grid_shape_and_placement() -> None:
    tiles = [torch.full((4, 5, 3), i, dtype=torch.uint8) for i in range(5)]
    g = make_grid(tiles, pad=2)  # ceil(sqrt(5)) = 3 columns, 2 rows
    assert g.shape == (2 * 4 + 3 * 2, 3 * 5 + 4 * 2, 3)
    assert (g[2:6, 2:7] == 0).all()
    assert (g[2:6, 9:14] == 1).all()
    assert (g[8:12, 9:14] == 4).all()
    assert (g[8:12, 16:21] == 255).all()  # empty last cell stays pad_value
    g2 = make_grid(tiles, ncols=5, pad=0)
    assert g2.shape == (4, 25, 3)


def test_grid_centers_smaller_tiles() -> None:
    big = torch.zeros(6, 6, 3, dtype=torch.uint8)
    small = torch.full((2, 2, 3), 9, dtype=torch.uint8)
    g = make_grid([big, small], ncols=2, pad=1, pad_value=100)
    assert g.shape == (8, 15, 3)
    cell = g[1:7, 8:14]
    assert (cell[2:4, 2:4] == 9).all()
    assert (cell[:2] == 100).all() and (cell[4:] == 100).all()


def test_grid_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        make_grid([])
    with pytest.raises(ValueError):
        make_grid([torch.zeros(2, 2)])


@pytest.mark.parametrize("bad,match", [
    ([], "needs at least one tile"),
    ([torch.zeros(2, 2)], "uint8"),
    ([torch.zeros(2, 2, 3)], "uint8"),  # float, not uint8
    ([torch.zeros(2, 2, 4, dtype=torch.uint8)], "uint8"),
])
def test_both_grids_refuse_the_same_tiles_with_the_same_words(bad, match) -> None:
    from cnnviz.render import labelled_grid

    for grid in (lambda t, **kw: make_grid(t, **kw), lambda t, **kw: labelled_grid(t, [""] * len(t), **kw)):
        with pytest.raises(ValueError, match=match):
            grid(bad)
    ok = [torch.zeros(2, 2, 3, dtype=torch.uint8)] * 3
    for grid in (lambda t, **kw: make_grid(t, **kw), lambda t, **kw: labelled_grid(t, [""] * len(t), **kw)):
        with pytest.raises(ValueError, match="pad must be >= 0"):
            grid(ok, pad=-1)
        with pytest.raises(ValueError, match="ncols must be >= 1"):
            grid(ok, ncols=0)


def test_grid_shape_is_near_square_and_never_wider_than_the_tiles() -> None:
    from cnnviz.render.grid import grid_shape

    tile = torch.zeros(2, 2, 3, dtype=torch.uint8)
    assert grid_shape([tile] * 5, None, 0, caller="t") == (2, 3)
    assert grid_shape([tile] * 9, None, 0, caller="t") == (3, 3)
    assert grid_shape([tile] * 2, 8, 0, caller="t") == (1, 2)
    assert grid_shape([tile] * 7, 2, 0, caller="t") == (4, 2)


def test_wrap_keeps_no_break_spaces_together_and_draws_them_as_spaces() -> None:
    """A grid caption's "p = 0.07" never splits across lines (the font has no U+00A0 glyph: drawn as a space)."""
    from cnnviz.render.text import NBSP, text_width, wrap

    caption = f"image 0 · tabby (281) · p{NBSP}={NBSP}0.07"
    plain = caption.replace(NBSP, " ")
    width = text_width("image 0 · tabby (281) · p =", 14) + 1  # room for "p =" but not its value
    assert wrap(plain, 14, width)[-1] == "0.07"  # the break the no-break spaces prevent
    lines = wrap(caption, 14, width)
    assert lines[-1] == "p = 0.07" and all(NBSP not in line for line in lines)
    assert all(text_width(line, 14) <= width for line in lines)
