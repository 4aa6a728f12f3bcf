"""Writing received pictures in the format their file name asks for.

The service answers pictures as JPEG unless ``output.format`` says otherwise (smaller answers),
while people name their files ``overlay.png``: JPEG bytes behind a ``.png`` name are refused by
PNG-only viewers and tools. So a save reads the name's suffix: bytes already in that format are
written as received; others are converted with Pillow (the ``[pil]`` extra) when it is installed,
and refused with :class:`~cnnviz_client.errors.ImageFormatError`, saying how to get that format,
when it is not. A name with no image suffix (``result``, ``x.bin``) gets the bytes as received, as
does anything that is not a picture (a JSON artifact).
"""

from __future__ import annotations

import io
import os

from ._images import sniff_media_type
from .errors import ImageFormatError

__all__ = ["FORMAT_OF_SUFFIX", "format_of_name", "save_picture", "write_bytes"]

# File name suffix -> image format (the names of output.format, plus GIF and BMP that Pillow writes).
FORMAT_OF_SUFFIX = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".jpe": "jpeg", ".webp": "webp",
                    ".gif": "gif", ".bmp": "bmp"}
_FORMAT_OF_MEDIA = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp", "image/gif": "gif",
                    "image/bmp": "bmp"}
SERVICE_FORMATS = ("jpeg", "png", "webp")  # what output.format of an explanation may ask for
_NO_ALPHA = frozenset({"jpeg", "bmp"})  # formats Pillow writes without an alpha channel


def format_of_name(path: str | os.PathLike[str]) -> str | None:
    """The image format a file name asks for (``png``, ``jpeg``...), or None when it asks for none."""
    return FORMAT_OF_SUFFIX.get(os.path.splitext(os.fspath(path))[1].lower())


def _convert(data: bytes, fmt: str) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if fmt in _NO_ALPHA and im.mode not in ("RGB", "L"):
            im = im.convert("RGB")
        buf = io.BytesIO()
        im.save(buf, format=fmt.upper(), **({"quality": 95} if fmt in ("jpeg", "webp") else {}))
    return buf.getvalue()


def save_picture(path: str | os.PathLike[str], data: bytes, what: str = "picture") -> str:
    """Write ``data`` to ``path`` in the format the name asks for; returns the path as a string."""
    wanted = format_of_name(path)
    have = _FORMAT_OF_MEDIA.get(sniff_media_type(data)[0])
    if wanted is not None and have is not None and wanted != have:
        try:
            import PIL.Image  # noqa: F401 - optional: pip install 'cnnviz-client[pil]'
        except ImportError:
            ask = f", ask the service for it (output.format='{wanted}')" if wanted in SERVICE_FORMATS else ""
            raise ImageFormatError(
                f"{os.fspath(path)} asks for {wanted.upper()} but the {what} is {have.upper()}, and converting it "
                f"needs Pillow: pip install 'cnnviz-client[pil]'{ask}, or save it as "
                f".{'jpg' if have == 'jpeg' else have}") from None
        data = _convert(data, wanted)
    return write_bytes(path, data)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> str:
    """Write ``data`` as is; returns the path as a string."""
    with open(path, "wb") as fh:
        fh.write(data)
    return os.fspath(path)
