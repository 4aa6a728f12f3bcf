"""Decoding of untrusted uploaded image bytes into RGB PIL images and tensors.

Uploads come from arbitrary clients, so every failure becomes a :class:`DomainError` with a
stable slug, and the pixel count is checked from the header before any pixel data is decoded
(decompression bombs). Only the formats the service documents are decoded: the format is the one
PIL actually identified from the bytes, never the filename or the declared content type.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import BadInput, DomainError, TooLarge, Unsupported

log = logging.getLogger(__name__)

# PIL format names that may be decoded. PIL's JPEG opener returns an MPO image for multi-picture
# JPEGs (many cameras write them); that is a JPEG and reported as one.
_OPEN_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
_CANONICAL: dict[str, str] = {"MPO": "JPEG"}
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF")

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WHITE = (255, 255, 255, 255)


@dataclass
class DecodedImage:
    """An uploaded image ready for the models: RGB, EXIF-oriented, first frame only.

    ``width`` and ``height`` are the original's (EXIF-oriented) size, which answers report and
    pictures are drawn at; ``image`` may be smaller when decoding was asked to downscale it.
    """

    image: Image.Image
    format: str
    original_mode: str
    width: int
    height: int


# Modes Pillow resizes directly (so a large image is downscaled before any RGB conversion copies it).
_RESIZABLE = frozenset({"L", "RGB", "RGBA", "I", "F"})
_SWAPS_SIDES = frozenset({5, 6, 7, 8})  # EXIF orientations that transpose the image

# Called with (original width, original height, decoded width, decoded height) once the header is
# read and before any pixel is decoded; it may raise to refuse the image (a per-request budget).
HeaderCheck = Callable[[int, int, int, int], None]


def scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """The size an image of ``width`` x ``height`` is decoded at with ``max_side`` (None: as is)."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    s = max_side / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def _invalid(detail: str) -> DomainError:
    return BadInput("invalid-image", "Invalid image", detail)


def _unsupported(fmt: str | None) -> DomainError:
    what = f"a {fmt} image" if fmt else "an image in an unsupported format"
    return Unsupported("unsupported-image-format", "Unsupported image format",
        f"The upload is {what}; accepted formats are {', '.join(ALLOWED_FORMATS)}.",
        allowed_formats=list(ALLOWED_FORMATS),
    )


def _too_large(width: int | None, height: int | None, max_pixels: int) -> DomainError:
    dims = f"{width}x{height} " if width and height else ""
    return TooLarge("image-too-large", "Image too large",
        f"The image {dims}has more pixels than the limit of {max_pixels}.",
        max_pixels=max_pixels,
    )


def _identify_foreign(data: bytes) -> str | None:
    """Name the format of bytes the allowed decoders rejected, to tell 415 from 400.

    Only the header is parsed (``Image.open`` is lazy) and the file is closed at once.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.format
    except Image.DecompressionBombError:
        return "oversized"
    except Exception:  # noqa: BLE001 - anything here only means "not an image we know"
        return None


def _composite_over_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    bg = Image.new("RGBA", rgba.size, _WHITE)
    return Image.alpha_composite(bg, rgba).convert("RGB")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, keeping the meaning of the values.

    Transparent pixels are laid over white (what a browser would show); 16-bit grey is scaled by
    1/257 (65535 -> 255) rather than clipped; 32-bit int and float grey are clipped to 0..255.
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in im.info):
        return _composite_over_white(im)
    if mode.startswith("I;16"):
        a = np.asarray(im).astype(np.uint32)
        g = ((a + 128) // 257).astype(np.uint8)
        return Image.fromarray(g).convert("RGB")
    if mode == "I":
        g = np.clip(np.asarray(im, dtype=np.int64), 0, 255).astype(np.uint8)
        return Image.fromarray(g).convert("RGB")
    if mode == "F":
        f = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        g = np.clip(np.rint(f), 0, 255).astype(np.uint8)
        return Image.fromarray(g).convert("RGB")
    # L, 1, P (opaque), CMYK, YCbCr, ...: PIL's own conversions are right for these.
    return im.convert("RGB")


def decode_image(data: bytes, *, max_pixels: int = 40_000_000, min_side: int = 8, max_side: int | None = None,
                 check: HeaderCheck | None = None) -> DecodedImage:
    """Decode untrusted bytes into an RGB image, or raise a :class:`DomainError`.

    Steps: identify the format from the bytes (415 if not allowed), check the header size
    against ``max_pixels`` and PIL's own bomb limit (413) and ``min_side`` (400) before decoding,
    call ``check`` (still before decoding), decode the first frame (400 if truncated or corrupt),
    downscale to ``max_side`` on the long side, apply the EXIF orientation, convert to RGB.

    Downscaling happens as early as the format allows: a JPEG is decoded at a reduced size by the
    decoder itself (DCT scaling, ``Image.draft``), anything else is reduced (``Image.reduce`` by an
    integer factor, then an antialiased resize) right after decoding, before the EXIF transpose and
    the RGB conversion copy it. ``width``/``height`` of the answer stay the original's.
    """
    if not data:
        raise _invalid("The image is empty.")
    try:
        im = Image.open(io.BytesIO(data), formats=list(_OPEN_FORMATS))
    except Image.DecompressionBombError as e:
        log.info("rejected decompression bomb at open: %s", e)
        raise _too_large(None, None, max_pixels) from e
    except UnidentifiedImageError as e:
        fmt = _identify_foreign(data)
        if fmt == "oversized":
            raise _unsupported(None) from e
        if fmt is not None:
            log.info("rejected upload in format %s", fmt)
            raise _unsupported(fmt) from e
        raise _invalid("The data is not a readable image.") from e
    except Exception as e:  # noqa: BLE001 - a parser failure on untrusted bytes is a client error
        log.info("image header could not be parsed: %r", e)
        raise _invalid("The image header could not be parsed.") from e

    with im:
        fmt = _CANONICAL.get(im.format or "", im.format or "")
        if fmt not in ALLOWED_FORMATS:
            raise _unsupported(fmt or None)
        width, height = im.size
        if width <= 0 or height <= 0:
            raise _invalid("The image has no pixels.")
        # PIL only *warns* between MAX_IMAGE_PIXELS and twice that; treat that zone as an error
        # here, without touching the process-wide warning filters or PIL's globals.
        limit = max_pixels
        if Image.MAX_IMAGE_PIXELS:
            limit = min(limit, int(Image.MAX_IMAGE_PIXELS))
        if width * height > limit:
            log.info("rejected %s image of %dx%d (limit %d pixels)", fmt, width, height, limit)
            raise _too_large(width, height, max_pixels)
        if width < min_side or height < min_side:
            raise BadInput("image-too-small", "Image too small",
                f"The image is {width}x{height}; each side must be at least {min_side} pixels.",
                min_side=min_side,
            )
        original_mode = im.mode
        target = scaled_size(width, height, max_side)
        if check is not None:
            check(width, height, *target)
        try:
            # Image.open leaves the first frame current; n_frames is not asked for because
            # counting a GIF's frames walks the whole file.
            if im.tell() != 0:
                im.seek(0)
            if target != (width, height) and fmt == "JPEG":
                im.draft(None, target)  # the decoder scales by 1/2, 1/4 or 1/8, never below target
            im.load()
        except Image.DecompressionBombError as e:
            raise _too_large(width, height, max_pixels) from e
        except Exception as e:  # noqa: BLE001 - truncated/corrupt data raises many types
            log.info("image data could not be decoded: %r", e)
            raise _invalid("The image data is truncated or corrupt.") from e

        try:
            orientation = int(im.getexif().get(0x0112, 1) or 1)
        except Exception:  # noqa: BLE001 - a broken EXIF block is ignored below as well
            orientation = 1
        if target != im.size:
            try:
                im = _downscale(im, target)
            except Exception as e:  # noqa: BLE001
                log.info("could not downscale mode %s: %r", im.mode, e)
                raise _invalid(f"Images of mode {im.mode} cannot be converted to RGB.") from e
        swapped = False
        try:
            oriented = ImageOps.exif_transpose(im)
            swapped = orientation in _SWAPS_SIDES
        except Exception as e:  # noqa: BLE001 - a broken EXIF block should not reject the pixels
            log.warning("ignoring unreadable EXIF orientation: %r", e)
            oriented = im
        if oriented is None:  # only with in_place=True, kept for type checkers
            oriented = im
        try:
            rgb = _to_rgb(oriented)
        except Exception as e:  # noqa: BLE001
            log.info("could not convert mode %s to RGB: %r", oriented.mode, e)
            raise _invalid(f"Images of mode {oriented.mode} cannot be converted to RGB.") from e
        if rgb is im:
            rgb = im.copy()  # detach from the file object closed by the with-block

    ow, oh = (height, width) if swapped else (width, height)
    return DecodedImage(image=rgb, format=fmt, original_mode=original_mode, width=ow, height=oh)


def _downscale(im: Image.Image, target: tuple[int, int]) -> Image.Image:
    """``im`` (decoded) at ``target`` size: an integer ``reduce`` first (cheap, box filter), then Lanczos."""
    if im.mode not in _RESIZABLE:
        im = _to_rgb(im)
    factor = min(im.width // target[0], im.height // target[1])
    if factor >= 2:
        im = im.reduce(factor)
    if im.size != target:
        im = im.resize(target, Image.Resampling.LANCZOS)
    return im


def decode_base64_image(s: str, **kw: Any) -> DecodedImage:
    """Decode a base64 string or a ``data:...;base64,`` URL, then :func:`decode_image` it.

    Whitespace, URL-safe characters and missing padding are tolerated (clients vary); anything
    else that is not base64 is a 400 ``invalid-image``.
    """
    if not isinstance(s, str):
        raise _invalid("The image must be a base64 string.")
    payload = s.strip()
    if payload[:5].lower() == "data:":
        header, sep, payload = payload.partition(",")
        if not sep or ";base64" not in header.lower():
            raise _invalid("Only base64 data: URLs are accepted.")
    payload = "".join(payload.split()).translate(str.maketrans("-_", "+/"))
    if not payload:
        raise _invalid("The image is empty.")
    if len(payload) % 4 == 1:
        raise _invalid("The image is not valid base64.")
    payload += "=" * (-len(payload) % 4)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _invalid("The image is not valid base64.") from e
    return decode_image(data, **kw)


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a contiguous float tensor [3, H, W] in [0, 1] (one NumPy copy)."""
    if img.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {img.mode}")
    arr = np.array(img, dtype=np.uint8)  # writable copy, so from_numpy does not warn
    t = torch.from_numpy(arr).permute(2, 0, 1)
    return t.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)


def decode_rgb(data: bytes) -> torch.Tensor:
    """Stored input bytes (the service re-encodes uploads as PNG) -> ``[3, H, W]`` in [0, 1]."""
    with Image.open(io.BytesIO(data)) as im:
        arr = np.array(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)
