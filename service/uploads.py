"""Reading a request's images and ``params``: multipart or JSON with base64 images.

Both forms end as the same :class:`Upload` (decoded RGB images plus a params dict), so routes
never care which one the client used. Counts and sizes are checked here; pixel limits are
checked by :mod:`core.imaging` before any pixel is decoded.
"""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from core.array_decoding import array_format
from core.errors import BadInput, DomainError, Invalid, TooLarge, Unsupported
from core.imaging import ALLOWED_FORMATS, DecodedImage, decode_base64_image, decode_image
from core.settings import Settings


@dataclass
class Upload:
    images: list[DecodedImage]
    params: dict[str, Any]
    decode_ms: float = 0.0
    names: list[str | None] = field(default_factory=list)  # each image's file name, where it had one


# Limits of any JSON the service parses (a params field or a JSON body), checked before or while
# parsing, so hostile nesting or numbers are a 422, never a RecursionError or ValueError (500).
MAX_JSON_DEPTH = 32  # nested arrays/objects; the deepest request (an explain job's output.size) uses 6
MAX_NUMBER_CHARS = 64  # characters of one number literal (Python refuses ints over 4300 digits)
MAX_PARAMS_CHARS = 1024 * 1024  # the params text (a multipart field): 1000 labels of 200 characters fit
MAX_FILENAME_CHARS = 200  # of an upload's file name repeated in a problem (the name is the client's text)
_STRUCTURE = re.compile(r'\\.|["\[\]{}]', re.DOTALL)


NOT_AN_IMAGE = frozenset({"invalid-image", "unsupported-image-format"})


class JSONLimitError(ValueError):
    """A JSON document over one of the limits above."""


def _check_depth(text: str, max_depth: int) -> None:
    """Refuse nesting deeper than ``max_depth``: brackets outside strings, in one pass at C speed.

    Base64 images have no brackets, quotes or backslashes, so a JSON body with images costs little.
    """
    if text.count("[") + text.count("{") <= max_depth:
        return
    depth, in_string = 0, False
    for m in _STRUCTURE.finditer(text):
        tok = m.group()
        if tok[0] == "\\":
            continue
        if tok == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif tok in "[{":
            depth += 1
            if depth > max_depth:
                raise JSONLimitError(f"nested deeper than {max_depth} levels")
        else:
            depth -= 1


def _number(convert: type) -> Any:
    def parse(literal: str) -> Any:
        if len(literal) > MAX_NUMBER_CHARS:
            raise JSONLimitError(f"a number of {len(literal)} characters (at most {MAX_NUMBER_CHARS})")
        return convert(literal)
    return parse


def parse_json(text: str) -> Any:
    """``json.loads`` with depth and number-size limits; every failure is a ``ValueError``.

    Standard JSON's ``1e999`` parses as infinity: the parameter models refuse non-finite numbers,
    naming the field.
    """
    _check_depth(text, MAX_JSON_DEPTH)
    try:
        return json.loads(text, parse_int=_number(int), parse_float=_number(float))
    except RecursionError as exc:  # defence in depth: the depth check should make this unreachable
        raise JSONLimitError(f"nested too deeply ({exc})") from exc


def _json_problem(slug: str, what: str, exc: ValueError) -> Invalid:
    if isinstance(exc, JSONLimitError):
        return Invalid(slug, f"{what} is over a JSON limit", str(exc), max_depth=MAX_JSON_DEPTH,
                       max_number_chars=MAX_NUMBER_CHARS)
    return Invalid(slug, f"{what} is not valid JSON", str(exc))


def _params_from_text(text: str | None) -> dict[str, Any]:
    if text is None or not text.strip():
        return {}
    if len(text) > MAX_PARAMS_CHARS:
        raise Invalid("invalid-params-json", "The params field is too long",
                      f"{len(text)} characters, at most {MAX_PARAMS_CHARS}", limit=MAX_PARAMS_CHARS)
    try:
        value = parse_json(text)
    except ValueError as exc:
        raise _json_problem("invalid-params-json", "The params field", exc) from exc
    if not isinstance(value, dict):
        raise Invalid("invalid-params-json", "The params field must be a JSON object")
    return value


class PixelBudget:
    """Decoded pixels of one request, summed image by image from the headers, before decoding.

    Passed to :func:`core.imaging.decode_image` as its header check: the image that would take the
    request over ``limit`` is refused with a 413 ``request-too-many-pixels`` naming the budget, the
    request's total so far and every image's size.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self.sizes: list[dict[str, int]] = []

    def __call__(self, width: int, height: int, dec_w: int, dec_h: int) -> None:
        self.sizes.append({"width": width, "height": height, "decoded_width": dec_w, "decoded_height": dec_h})
        self.total += dec_w * dec_h
        if self.total > self.limit:
            shown = ", ".join(f"{s['width']}x{s['height']}" + (
                f" (decoded at {s['decoded_width']}x{s['decoded_height']})"
                if (s["width"], s["height"]) != (s["decoded_width"], s["decoded_height"]) else "")
                for s in self.sizes)
            raise TooLarge("request-too-many-pixels", "Too many pixels in one request",
                           f"The images of this request would decode to {self.total} pixels (counted up to "
                           f"image {len(self.sizes)}: {shown}); the budget is {self.limit} pixels per request.",
                           budget=self.limit, total=self.total, images=list(self.sizes))


async def read_upload(request: Request, settings: Settings, *, min_images: int = 1,
                      max_images: int | None = None, allow_zip: bool = False, max_side: int | None = None,
                      max_pixels: int | None = None) -> Upload:
    """Parse images and params from multipart form data or a JSON body; decode the images.

    With ``allow_zip`` a multipart ``zip`` field may carry the images as a ZIP archive. Images are
    decoded at most ``max_side`` on the long side (default ``settings.max_decode_side``), and all
    of them together at most ``max_pixels`` decoded pixels (default ``settings.max_request_pixels``).
    """
    max_images = max_images or settings.max_images
    ctype = request.headers.get("content-type", "")
    raw: list[bytes | str] = []
    names: list[str | None] = []  # each image's file name where the request gave one (problems name it)
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
            names.append(f.filename or None)
        fields = {"image", "params", "zip"} if allow_zip else {"image", "params"}
        unknown = {k for k, _ in form.multi_items()} - fields
        if unknown:
            raise Invalid("unknown-form-field", f"Unknown form fields: {sorted(unknown)}",
                               valid=sorted(fields))
        for f in (v for k, v in form.multi_items() if k == "zip"):
            if not isinstance(f, UploadFile):
                raise Invalid("invalid-zip-field", "The zip field must be a file upload")
            for name, blob in zip_entries(await f.read(), max_images, settings.max_body_bytes * 4):
                raw.append(blob)
                names.append(name)
        params_field = form.get("params")
        params = _params_from_text(params_field if isinstance(params_field, str) else None)
    elif ctype.startswith("application/json") or (not ctype and min_images == 0):
        raw_body = await request.body()
        try:
            text = raw_body.decode("utf-8")
            # A large body (base64 images) parses off the event loop.
            body = (await run_in_threadpool(parse_json, text) if len(text) > 256 * 1024 else parse_json(text)) \
                if text.strip() else {}
        except ValueError as exc:  # UnicodeDecodeError, JSONDecodeError and JSONLimitError are ValueErrors
            raise _json_problem("invalid-json", "The request body", exc) from exc
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
        names.extend([None] * len(images))
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise Invalid("invalid-params-json", "params must be a JSON object")
    else:
        raise Unsupported("unsupported-media-type",
                           "Send multipart/form-data (image, params) or application/json (images, params)")
    return await decode_upload(raw, names, params, settings, min_images=min_images, max_images=max_images,
                               max_side=max_side, max_pixels=max_pixels)


async def decode_upload(raw: list[bytes | str], names: list[str | None], params: dict[str, Any], settings: Settings,
                        *, min_images: int = 1, max_images: int | None = None, max_side: int | None = None,
                        max_pixels: int | None = None) -> Upload:
    """Images already taken out of a body (bytes, or base64 text) decoded under the request's limits.

    :func:`read_upload` ends here, and so do the serving protocols (KServe V1 ``instances``, the Open
    Inference Protocol's BYTES tensors): every way in counts images and pixels the same way.
    """
    max_images = max_images or settings.max_images
    side = max_side or settings.max_decode_side
    budget = PixelBudget(max_pixels or settings.max_request_pixels)
    if len(raw) < min_images:
        raise Invalid("missing-image", f"At least {min_images} image(s) required in field 'image'")
    if len(raw) > max_images:
        raise TooLarge("too-many-images", f"At most {max_images} images per request", limit=max_images)

    def decode_all() -> list[DecodedImage]:
        out = []
        kw: dict[str, Any] = {"max_pixels": settings.max_image_pixels, "max_side": side, "check": budget}
        for i in range(len(raw)):
            item, raw[i] = raw[i], b""  # each upload's bytes are let go once decoded
            try:
                out.append(decode_image(item, **kw) if isinstance(item, bytes) else decode_base64_image(item, **kw))
            except DomainError as exc:
                if exc.slug == "request-too-many-pixels":  # the whole request's budget: it lists every image
                    raise
                looks = array_format(item) if isinstance(item, bytes) and exc.slug in NOT_AN_IMAGE else None
                if looks is not None:  # a signal or volume sent to an image model: say so (core/inputkinds.py)
                    exc = Unsupported("input-kind-mismatch", "This model takes images",
                                      f"The upload is {looks}; this model takes images. Signals and volumes go to a"
                                      " model declared with input = \"signal\" or \"volume\" (GET /v1/models lists"
                                      " each model's input).", input_kind="image")
                raise naming_image(exc, i, names[i]) from exc
        return out

    t0 = time.perf_counter()
    decoded = await run_in_threadpool(decode_all)
    return Upload(decoded, params, (time.perf_counter() - t0) * 1000, list(names))


def naming_image(err: DomainError, index: int, filename: str | None) -> DomainError:
    """``err`` about one image, saying which one: among several, "not a readable image" alone does not
    tell the caller which part to fix.

    The problem keeps its type (clients switch on it) and gains ``index`` (the image's place among the
    request's images, from 0, as in answers) and ``filename`` when the part had one; the detail says both,
    and an unreadable image's problem lists the formats the decoder accepts (``allowed_formats``).
    """
    extra = {**err.extra, "index": index}
    where = f"Image {index}"
    if filename:
        extra["filename"] = filename[:MAX_FILENAME_CHARS]
        where += f" ({extra['filename']})"
    detail = f"{where}: {err.detail or err.title}"
    if err.slug == "invalid-image":
        extra.setdefault("allowed_formats", list(ALLOWED_FORMATS))
        detail += f" Accepted formats: {', '.join(ALLOWED_FORMATS)}."
    return type(err)(err.slug, err.title, detail, retry_after=err.retry_after, **extra)


def zip_entries(data: bytes, max_entries: int, max_bytes: int) -> list[tuple[str, bytes]]:
    """The files of a ZIP archive (folders and hidden files skipped), with their names, bounded before extraction.

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
        out.append((info.filename, blob))
    return out
