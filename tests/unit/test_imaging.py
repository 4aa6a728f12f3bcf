"""Unit tests for core.imaging: untrusted bytes in, RGB image or a problem with a stable slug out."""

from __future__ import annotations

import base64
import io
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import DomainError
from core.imaging import (
    DecodedImage,
    _to_rgb,
    decode_base64_image,
    decode_image,
    image_to_tensor,
)
from service.errors import status_of


def _save(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _problem(data: bytes, **kw: object) -> DomainError:
    with pytest.raises(DomainError) as ei:
        decode_image(data, **kw)  # type: ignore[arg-type]
    return ei.value


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose pixel data is missing."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _png_chunk(b"IEND", b""))


def _noise(w: int = 32, h: int = 24, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# --- formats that decode ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "WEBP"])
def test_lossless_formats_roundtrip(fmt: str) -> None:
    im = _noise()
    kw = {"lossless": True} if fmt == "WEBP" else {}
    d = decode_image(_save(im, fmt, **kw))
    assert isinstance(d, DecodedImage)
    assert d.format == fmt and d.image.mode == "RGB" and (d.width, d.height) == (32, 24)
    assert np.array_equal(np.asarray(d.image), np.asarray(im))


def test_jpeg_rgb() -> None:
    im = Image.new("RGB", (40, 30), (200, 50, 20))
    d = decode_image(_save(im, "JPEG", quality=95))
    assert d.format == "JPEG" and d.original_mode == "RGB" and d.image.size == (40, 30)
    assert np.abs(np.asarray(d.image).astype(int) - [200, 50, 20]).max() <= 4


def test_format_from_bytes_not_name() -> None:
    # the caller only hands bytes: a PNG is a PNG whatever it was called
    d = decode_image(_save(_noise(), "PNG"))
    assert d.format == "PNG"


# --- modes -----------------------------------------------------------------------------------


def test_mode_l() -> None:
    im = Image.fromarray(np.arange(16 * 16, dtype=np.uint8).reshape(16, 16))
    d = decode_image(_save(im, "PNG"))
    a = np.asarray(d.image)
    assert d.original_mode == "L" and a.shape == (16, 16, 3)
    assert np.array_equal(a[..., 0], np.asarray(im)) and np.array_equal(a[..., 2], np.asarray(im))


def test_mode_1() -> None:
    arr = np.zeros((16, 16), dtype=bool)
    arr[:, 8:] = True
    d = decode_image(_save(Image.fromarray(arr), "PNG"))
    a = np.asarray(d.image)
    assert d.original_mode == "1"
    assert (a[:, :8] == 0).all() and (a[:, 8:] == 255).all()


def test_mode_rgba_composited_over_white() -> None:
    arr = np.zeros((16, 16, 4), dtype=np.uint8)
    arr[..., 0] = 255  # red...
    arr[:8, :, 3] = 0  # ...fully transparent on top
    arr[8:, :, 3] = 255  # ...opaque below
    arr[8:, :4] = (0, 0, 0, 128)  # half-transparent black
    d = decode_image(_save(Image.fromarray(arr), "PNG"))
    a = np.asarray(d.image).astype(int)
    assert d.original_mode == "RGBA"
    assert (a[:8] == 255).all()
    assert (a[8:, 4:] == [255, 0, 0]).all()
    assert (np.abs(a[8:, :4] - 127) <= 1).all()


def test_mode_la_composited_over_white() -> None:
    arr = np.zeros((16, 16, 2), dtype=np.uint8)
    arr[..., 1] = 255
    arr[:, :8, 1] = 0
    im = Image.merge("LA", [Image.fromarray(arr[..., 0]), Image.fromarray(arr[..., 1])])
    d = decode_image(_save(im, "PNG"))
    a = np.asarray(d.image)
    assert d.original_mode == "LA"
    assert (a[:, :8] == 255).all() and (a[:, 8:] == 0).all()


def test_mode_p_opaque_and_transparent() -> None:
    im = Image.new("P", (16, 16), 0)
    im.putpalette([10, 20, 30, 200, 100, 50] + [0] * (254 * 3))
    im.paste(1, (0, 0, 8, 16))
    d = decode_image(_save(im, "PNG"))
    a = np.asarray(d.image)
    assert d.original_mode == "P"
    assert (a[:, :8] == [200, 100, 50]).all() and (a[:, 8:] == [10, 20, 30]).all()

    d2 = decode_image(_save(im, "PNG", transparency=0))  # index 0 transparent
    a2 = np.asarray(d2.image)
    assert (a2[:, :8] == [200, 100, 50]).all() and (a2[:, 8:] == 255).all()


def test_mode_cmyk_jpeg() -> None:
    im = Image.new("CMYK", (24, 24), (0, 255, 255, 0))  # pure red in CMYK
    d = decode_image(_save(im, "JPEG", quality=95))
    a = np.asarray(d.image).astype(int)
    assert d.original_mode == "CMYK" and d.image.mode == "RGB"
    assert a[..., 0].min() >= 240 and a[..., 1].max() <= 15 and a[..., 2].max() <= 15


def test_16bit_png_scaled_not_clipped() -> None:
    vals = np.array([0, 257, 1000, 32896, 65535] + [257 * 200] * 59, dtype=np.uint16).reshape(8, 8)
    im = Image.fromarray(vals)
    assert im.mode.startswith("I;16")
    d = decode_image(_save(im, "PNG"))
    a = np.asarray(d.image)
    assert d.original_mode.startswith("I")
    assert a[0, :5, 0].tolist() == [0, 1, 4, 128, 255]  # /257, rounded; clipping would give 255s
    assert (a[1:, :, 0] == 200).all()
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()


def test_to_rgb_wide_modes() -> None:
    big_endian = Image.fromarray(np.full((4, 4), 257 * 77, dtype=">u2"))
    assert big_endian.mode == "I;16B"
    assert (np.asarray(_to_rgb(big_endian)) == 77).all()

    ints = Image.fromarray(np.array([[-5, 0, 100, 70000]], dtype=np.int32))
    assert ints.mode == "I"
    assert np.asarray(_to_rgb(ints))[0, :, 0].tolist() == [0, 0, 100, 255]

    floats = Image.fromarray(np.array([[-1.0, 12.4, 254.6, 1e9, np.nan]], dtype=np.float32))
    assert floats.mode == "F"
    assert np.asarray(_to_rgb(floats))[0, :, 0].tolist() == [0, 12, 255, 255, 0]


# --- orientation and frames ------------------------------------------------------------------


def test_exif_orientation_applied() -> None:
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _save(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes())
    d = decode_image(data)
    assert (d.width, d.height) == (20, 40)
    a = np.asarray(d.image).astype(int)
    assert a[5, 10, 0] > 200 and a[5, 10, 2] < 50  # the left (red) half is now on top
    assert a[35, 10, 2] > 200 and a[35, 10, 0] < 50


def test_animated_gif_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    d = decode_image(data)
    assert d.format == "GIF" and d.image.mode == "RGB"
    assert (np.asarray(d.image) == [255, 0, 0]).all()


# --- failures --------------------------------------------------------------------------------


def test_empty_and_random_bytes() -> None:
    for data in (b"", np.random.default_rng(1).bytes(4096)):
        e = _problem(data)
        assert (status_of(e), e.slug) == (400, "invalid-image")


def test_truncated_jpeg() -> None:
    data = _save(_noise(64, 64), "JPEG", quality=90)
    e = _problem(data[: len(data) // 2])
    assert (status_of(e), e.slug) == (400, "invalid-image")


def test_truncated_png() -> None:
    data = _save(_noise(64, 64), "PNG")
    e = _problem(data[: len(data) - 200])
    assert (status_of(e), e.slug) == (400, "invalid-image")


@pytest.mark.parametrize("fmt", ["TIFF", "ICO", "PPM"])
def test_disallowed_formats_415(fmt: str) -> None:
    e = _problem(_save(_noise(), fmt))
    assert (status_of(e), e.slug) == (415, "unsupported-image-format")
    assert "JPEG" in (e.detail or "")


def test_svg_and_text_rejected() -> None:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>'
    for data in (svg, b"hello, this is not an image"):
        e = _problem(data)
        assert status_of(e) in (400, 415)
        assert e.slug in ("invalid-image", "unsupported-image-format")


def test_too_small() -> None:
    e = _problem(_save(Image.new("RGB", (4, 100)), "PNG"))
    assert (status_of(e), e.slug) == (400, "image-too-small")
    assert decode_image(_save(Image.new("RGB", (4, 4)), "PNG"), min_side=4).width == 4


def test_max_pixels_parameter() -> None:
    data = _save(_noise(32, 32), "PNG")
    e = _problem(data, max_pixels=32 * 32 - 1)
    assert (status_of(e), e.slug) == (413, "image-too-large")
    assert decode_image(data, max_pixels=32 * 32).width == 32


def test_bomb_rejected_from_header_before_decoding() -> None:
    # The pixel data is missing, so decoding would fail with 400: a 413 proves that the size
    # was checked from the header first.
    e = _problem(_png_header_only(7000, 7000))
    assert (status_of(e), e.slug) == (413, "image-too-large")
    small = _problem(_png_header_only(64, 64))  # same file, allowed size: decoding fails
    assert (status_of(small), small.slug) == (400, "invalid-image")


def test_bomb_beyond_pil_limit() -> None:
    # 30000 x 30000 is over twice PIL's MAX_IMAGE_PIXELS: PIL raises DecompressionBombError.
    e = _problem(_png_header_only(30000, 30000), max_pixels=10**12)
    assert (status_of(e), e.slug) == (413, "image-too-large")


def test_bomb_in_pil_warning_zone_is_an_error() -> None:
    # 10000 x 10000 lies where PIL only warns; it must still be refused, even with a high limit.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        e = _problem(_png_header_only(10000, 10000), max_pixels=10**12)
    assert (status_of(e), e.slug) == (413, "image-too-large")


def test_real_compressed_bomb() -> None:
    # A genuine, fully valid 8000 x 6000 bilevel PNG: tiny on disk, 48 Mpx decoded.
    data = _save(Image.new("1", (8000, 6000), 0), "PNG")
    assert len(data) < 100_000
    e = _problem(data)
    assert (status_of(e), e.slug) == (413, "image-too-large")


# --- base64 ----------------------------------------------------------------------------------


def test_base64_plain_and_data_url() -> None:
    im = _noise()
    raw = _save(im, "PNG")
    b64 = base64.b64encode(raw).decode()
    for s in (b64, f"data:image/png;base64,{b64}", "  " + b64[:50] + "\n" + b64[50:] + "\n",
              b64.rstrip("="), base64.urlsafe_b64encode(raw).decode()):
        d = decode_base64_image(s)
        assert np.array_equal(np.asarray(d.image), np.asarray(im))


def test_base64_kwargs_pass_through() -> None:
    b64 = base64.b64encode(_save(_noise(32, 32), "PNG")).decode()
    with pytest.raises(DomainError) as ei:
        decode_base64_image(b64, max_pixels=100)
    assert ei.value.slug == "image-too-large"


@pytest.mark.parametrize("s", ["", "!!!not base64!!!", "abcde", "data:image/png,rawbytes",
                               "data:image/png;base64,%%%%"])
def test_bad_base64(s: str) -> None:
    with pytest.raises(DomainError) as ei:
        decode_base64_image(s)
    assert (status_of(ei.value), ei.value.slug) == (400, "invalid-image")


# --- tensor ----------------------------------------------------------------------------------


def test_image_to_tensor() -> None:
    im = _noise(10, 6)
    t = image_to_tensor(im)
    assert t.shape == (3, 6, 10) and t.dtype == torch.float32 and t.is_contiguous()
    assert 0.0 <= t.min() and t.max() <= 1.0
    expected = torch.from_numpy(np.asarray(im).astype(np.float32) / 255.0).permute(2, 0, 1)
    assert torch.allclose(t, expected)
    with pytest.raises(ValueError):
        image_to_tensor(im.convert("L"))
