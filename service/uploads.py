"""Reading a request's images and ``params``: multipart or JSON with base64 images.

Both forms end as the same :class:`Upload` (decoded RGB images plus a params dict), so routes
never care which one the client used. Counts and sizes are checked here; pixel limits are
checked by :mod:`core.imaging` before any pixel is decoded.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from core.errors import BadInput, DomainError, Invalid, TooLarge, Unsupported
from core.imaging import DecodedImage, decode_base64_image, decode_image
from service.settings import Settings


@dataclass
class Upload:
    images: list[DecodedImage]
    params: dict[str, Any]
    decode_ms: float = 0.0


def _params_from_text(text: str | None) -> dict[str, Any]:
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Invalid("invalid-params-json", "The params field is not valid JSON", str(exc)) from exc
    if not isinstance(value, dict):
        raise Invalid("invalid-params-json", "The params field must be a JSON object")
    return value


async def read_upload(request: Request, settings: Settings, *, min_images: int = 1,
                      max_images: int | None = None, allow_zip: bool = False) -> Upload:
    """Parse images and params from multipart form data or a JSON body; decode the images.

    With ``allow_zip`` a multipart ``zip`` field may carry the images as a ZIP archive.
    """
    max_images = max_images or settings.max_images
    ctype = request.headers.get("content-type", "")
    raw: list[bytes | str] = []
    if ctype.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=max_images + 1, max_fields=16)
        except DomainError:
            raise
        except Exception as exc:  # noqa: BLE001 - starlette raises several types for bad forms
            raise BadInput("invalid-multipart", "The multipart body could not be parsed", str(exc)) from exc
        files = [v for k, v in form.multi_items() if k == "image"]
        for f in files:
            if not isinstance(f, UploadFile):
                raise Invalid("invalid-image-field", "The image field must be a file upload")
            raw.append(await f.read())
        fields = {"image", "params", "zip"} if allow_zip else {"image", "params"}
        unknown = {k for k, _ in form.multi_items()} - fields
        if unknown:
            raise Invalid("unknown-form-field", f"Unknown form fields: {sorted(unknown)}",
                               valid=sorted(fields))
        for f in (v for k, v in form.multi_items() if k == "zip"):
            if not isinstance(f, UploadFile):
                raise Invalid("invalid-zip-field", "The zip field must be a file upload")
            raw.extend(zip_entries(await f.read(), max_images, settings.max_body_bytes * 4))
        params_field = form.get("params")
        params = _params_from_text(params_field if isinstance(params_field, str) else None)
    elif ctype.startswith("application/json") or (not ctype and min_images == 0):
        try:
            body = await request.json() if await request.body() else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadInput("invalid-json", "The request body is not valid JSON", str(exc)) from exc
        if not isinstance(body, dict):
            raise Invalid("invalid-json", "The JSON body must be an object with images and params")
        unknown = set(body) - {"images", "params"}
        if unknown:
            raise Invalid("unknown-body-field", f"Unknown body fields: {sorted(unknown)}",
                               valid=["images", "params"])
        images = body.get("images", [])
        if not isinstance(images, list) or not all(isinstance(s, str) for s in images):
            raise Invalid("invalid-images", "images must be a list of base64 strings")
        raw.extend(images)
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise Invalid("invalid-params-json", "params must be a JSON object")
    else:
        raise Unsupported("unsupported-media-type",
                           "Send multipart/form-data (image, params) or application/json (images, params)")
    if len(raw) < min_images:
        raise Invalid("missing-image", f"At least {min_images} image(s) required in field 'image'")
    if len(raw) > max_images:
        raise TooLarge("too-many-images", f"At most {max_images} images per request", limit=max_images)

    def decode_all() -> list[DecodedImage]:
        out = []
        for item in raw:
            if isinstance(item, bytes):
                out.append(decode_image(item, max_pixels=settings.max_image_pixels))
            else:
                out.append(decode_base64_image(item, max_pixels=settings.max_image_pixels))
        return out

    t0 = time.perf_counter()
    decoded = await run_in_threadpool(decode_all)
    return Upload(decoded, params, (time.perf_counter() - t0) * 1000)


def zip_entries(data: bytes, max_entries: int, max_bytes: int) -> list[bytes]:
    """The files of a ZIP archive (folders and hidden files skipped), bounded before extraction.

    Counts and declared sizes are checked from the central directory first, and every read is
    capped, so a zip bomb is refused without being inflated.
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise BadInput("invalid-zip", "The zip field is not a valid ZIP archive", str(exc)) from exc
    infos = [i for i in zf.infolist()
             if not i.is_dir() and not any(part.startswith((".", "__")) for part in i.filename.split("/"))]
    if len(infos) > max_entries:
        raise TooLarge("too-many-images", f"At most {max_entries} images per request", limit=max_entries)
    if sum(i.file_size for i in infos) > max_bytes:
        raise TooLarge("zip-too-large", f"The archive inflates to more than {max_bytes} bytes",
                           limit=max_bytes)
    out = []
    for info in infos:
        try:
            with zf.open(info) as fh:
                blob = fh.read(info.file_size + 1)
        except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError) as exc:
            raise BadInput("invalid-zip", f"Cannot read {info.filename!r} from the archive", str(exc)) from exc
        if len(blob) > info.file_size:
            raise BadInput("invalid-zip", f"{info.filename!r} is larger than its header says")
        out.append(blob)
    return out
