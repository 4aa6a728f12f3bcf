"""Turning what a caller has (a path, bytes, a file, a PIL image, a numpy array) into upload parts.

PIL and numpy are optional: an object is only recognised as a PIL image or an array when its
module is already imported (it could not exist otherwise), so this module never imports them just
to check. Arrays are encoded to PNG with zlib, without PIL.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from collections.abc import Sequence
from typing import Any, Union

__all__ = ["ImageInput", "as_image_list", "encode_image", "sniff_media_type"]

# A path, raw bytes, a binary file object, a PIL.Image.Image or a numpy.ndarray.
ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Any]

_MAGIC = [(b"\x89PNG\r\n\x1a\n", "image/png", "png"), (b"\xff\xd8\xff", "image/jpeg", "jpg"),
          (b"GIF87a", "image/gif", "gif"), (b"GIF89a", "image/gif", "gif"), (b"BM", "image/bmp", "bmp")]


def sniff_media_type(data: bytes) -> tuple[str, str]:
    """(media type, file extension) from the first bytes; the service decodes by content anyway."""
    for magic, media, ext in _MAGIC:
        if data.startswith(magic):
            return media, ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", "webp"
    if data[:4] == b"PK\x03\x04":
        return "application/zip", "zip"
    return "application/octet-stream", "bin"


def _is_pil(obj: Any) -> bool:
    mod = sys.modules.get("PIL.Image")
    return mod is not None and isinstance(obj, mod.Image)


def _is_ndarray(obj: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(obj, np.ndarray)


def _is_single(obj: Any) -> bool:
    return isinstance(obj, (str, bytes, bytearray, memoryview, os.PathLike)) or hasattr(obj, "read") \
        or _is_pil(obj) or (_is_ndarray(obj) and obj.ndim in (2, 3))


def as_image_list(images: Any) -> list[Any]:
    """One image or a sequence of them (a 4-D array is a batch) as a list."""
    if images is None:
        return []
    if _is_single(images):
        return [images]
    if _is_ndarray(images) and images.ndim == 4:
        return list(images)
    if isinstance(images, Sequence) or hasattr(images, "__iter__"):
        return list(images)
    raise TypeError(f"not an image or a list of images: {type(images).__name__}")


def encode_image(obj: Any, index: int = 0) -> tuple[str, bytes, str]:
    """(filename, bytes, media type) for one multipart ``image`` part."""
    name: str | None = None
    if isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        with open(path, "rb") as fh:
            data = fh.read()
        name = os.path.basename(path)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
    elif hasattr(obj, "read"):
        data = obj.read()
        if isinstance(data, str):
            raise TypeError("open image files in binary mode ('rb')")
        fname = getattr(obj, "name", None)
        name = os.path.basename(fname) if isinstance(fname, str) else None
    elif _is_pil(obj):
        data = _pil_png(obj)
    elif _is_ndarray(obj):
        data = array_png(obj)
    else:
        raise TypeError(f"cannot send a {type(obj).__name__} as an image: give a path, bytes, a binary file, "
                        "a PIL image or a numpy array")
    if not data:
        raise ValueError(f"image {index} is empty")
    media, ext = sniff_media_type(data)
    return name or f"image{index}.{ext}", data, media


def _pil_png(img: Any) -> bytes:
    if img.mode not in ("RGB", "RGBA", "L", "LA"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def array_png(arr: Any) -> bytes:
    """A PNG of an ``HxW``, ``HxWx1``, ``HxWx3`` or ``HxWx4`` array (uint8, bool, or floats in [0, 1])."""
    import numpy as np

    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"an image array must be HxW, HxWx1, HxWx3 or HxWx4; got shape {a.shape}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        a = (np.clip(a, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    h, w = a.shape[:2]
    color = 0 if a.ndim == 2 else 2 if a.shape[2] == 3 else 6  # PNG colour types: grey, RGB, RGBA
    rows = np.ascontiguousarray(a).reshape(h, -1)
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
