"""PNG encoding of uint8 image tensors, and float-to-uint8 conversion.

PIL does the encoding with ``compress_level=1``: the answers are produced inline, and the lowest
zlib level is several times faster for a size cost that is small next to base64's.
"""

from __future__ import annotations

import base64
import io
import logging

import torch
from PIL import Image

log = logging.getLogger(__name__)


def encode_png(img: torch.Tensor) -> bytes:
    """Encode a uint8 tensor [H, W, 3] (RGB) or [H, W] (grey) as PNG bytes."""
    if img.dtype != torch.uint8:
        raise ValueError(f"expected uint8, got {img.dtype}")
    if not (img.dim() == 2 or (img.dim() == 3 and img.shape[2] == 3)):
        raise ValueError(f"expected [H, W, 3] or [H, W], got {tuple(img.shape)}")
    arr = img.detach().cpu().contiguous().numpy()
    pil = Image.fromarray(arr)  # uint8 [H, W, 3] -> RGB, [H, W] -> L
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def png_base64(img: torch.Tensor) -> str:
    """PNG bytes of ``img`` as an ASCII base64 string, for JSON answers."""
    return base64.b64encode(encode_png(img)).decode("ascii")


def to_uint8_image(x: torch.Tensor) -> torch.Tensor:
    """Convert a float image [3, H, W] in [0, 1] to uint8 [H, W, 3] (rounded, clamped, NaN -> 0)."""
    if x.dim() != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a float image [3, H, W], got {tuple(x.shape)}")
    v = torch.nan_to_num(x.detach().float(), nan=0.0).clamp(0.0, 1.0)
    return (v * 255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous()


def encode_jpeg(image: torch.Tensor, quality: int = 90) -> bytes:
    """A ``[3,H,W]`` float image in [0,1] as JPEG bytes: smaller and faster than PNG for photo-like pictures."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8_image(image).numpy()).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


IMAGE_FORMATS: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
"""Encodings of :func:`encode_image` and their media types."""


def encode_image(img: torch.Tensor, fmt: str = "png", quality: int = 85) -> bytes:
    """A uint8 ``[H, W, 3]`` picture as ``png`` (lossless, ``compress_level=1``), ``jpeg`` or ``webp`` bytes.

    Overlays are photos: JPEG / WebP at quality 85 are 5-15x smaller than PNG and look the same.
    """
    if fmt == "png":
        return encode_png(img)
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"unknown image format {fmt!r}; valid: {', '.join(IMAGE_FORMATS)}")
    if img.dtype != torch.uint8 or img.dim() != 3 or img.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {img.dtype} {tuple(img.shape)}")
    buf = io.BytesIO()
    Image.fromarray(img.detach().cpu().contiguous().numpy()).save(buf, format=fmt.upper(), quality=int(quality))
    return buf.getvalue()
