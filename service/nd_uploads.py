"""Reading a request's signals or volumes and ``params``, for models whose input kind is not an image.

Multipart form data with one ``file`` part per input (``image`` is accepted as the same field, so
a client that always sends ``image`` still works) and a ``params`` field; or a JSON body
``{"files": [base64, ...], "params": {...}}``. Counts and body size are checked as for images;
each input's values are charged to the request's budget from its header before decoding
(:mod:`core.inputkinds`), in a pool thread.
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from cnnviz.models import LoadedModel
from core.array_decoding import DecodedArray
from core.errors import BadInput, DomainError, Invalid, TooLarge, Unsupported
from core.inputkinds import decode_input, input_kind
from core.settings import Settings
from service.uploads import MAX_FILENAME_CHARS, _json_problem, _params_from_text, parse_json

FIELDS = ("file", "image")


@dataclass
class ArrayUpload:
    inputs: list[DecodedArray]
    params: dict[str, Any]
    decode_ms: float = 0.0


async def read_array_upload(request: Request, settings: Settings, model: LoadedModel) -> ArrayUpload:
    """Parse and decode the signals or volumes of one request for ``model`` (its input kind decides how)."""
    kind = input_kind(model.input_kind)
    ctype = request.headers.get("content-type", "")
    raw: list[bytes] = []
    names: list[str | None] = []
    if ctype.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=settings.max_images + 1, max_fields=16)
        except DomainError:
            raise
        except Exception as exc:  # noqa: BLE001 - starlette raises several types for bad forms
            raise BadInput("invalid-multipart", "The multipart body could not be parsed", str(exc)) from exc
        unknown = {k for k, _ in form.multi_items()} - {*FIELDS, "params"}
        if unknown:
            raise Invalid("unknown-form-field", f"Unknown form fields: {sorted(unknown)}", valid=[*FIELDS, "params"])
        for k, v in form.multi_items():
            if k in FIELDS:
                if not isinstance(v, UploadFile):
                    raise Invalid("invalid-file-field", f"The {k} field must be a file upload")
                raw.append(await v.read())
                names.append(v.filename or None)
        params_field = form.get("params")
        params = _params_from_text(params_field if isinstance(params_field, str) else None)
    elif ctype.startswith("application/json"):
        try:
            body = parse_json((await request.body()).decode("utf-8") or "{}")
        except ValueError as exc:
            raise _json_problem("invalid-json", "The request body", exc) from exc
        if not isinstance(body, dict) or set(body) - {"files", "images", "params"}:
            raise Invalid("invalid-json", "The JSON body must be an object with files (base64) and params")
        files = body.get("files", body.get("images", []))
        if not isinstance(files, list) or not all(isinstance(s, str) for s in files):
            raise Invalid("invalid-files", "files must be a list of base64 strings")
        for s in files:
            try:
                raw.append(base64.b64decode(s, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise BadInput(f"invalid-{kind.name}", "A file is not valid base64", str(exc)) from exc
            names.append(None)
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise Invalid("invalid-params-json", "params must be a JSON object")
    else:
        raise Unsupported("unsupported-media-type", "Send multipart/form-data (file, params) or application/json "
                          "(files, params)")
    if not raw:
        raise Invalid("missing-file", f"At least one {kind.name} file required in field 'file'",
                      accepted_formats=list(kind.formats))
    if len(raw) > settings.max_images:
        raise TooLarge("too-many-images", f"At most {settings.max_images} inputs per request",
                       limit=settings.max_images)
    budget = kind.budget(settings)

    def decode_all() -> list[DecodedArray]:
        out = []
        for i in range(len(raw)):
            item, raw[i] = raw[i], b""
            try:
                out.append(decode_input(kind, item, budget, settings, model=model.name, spacing=model.spec.spacing))
            except DomainError as exc:
                if exc.slug.startswith("request-too-many-"):  # the whole request's budget: it lists every file
                    raise
                raise _naming(exc, i, names[i]) from exc
        return out

    t0 = time.perf_counter()
    decoded = await run_in_threadpool(decode_all)
    return ArrayUpload(decoded, params, (time.perf_counter() - t0) * 1000)


def _naming(err: DomainError, index: int, filename: str | None) -> DomainError:
    """``err`` about one input, saying which one (its index from 0, and its file name where it had one)."""
    extra = {**err.extra, "index": index}
    where = f"Input {index}"
    if filename:
        extra["filename"] = filename[:MAX_FILENAME_CHARS]
        where += f" ({extra['filename']})"
    return type(err)(err.slug, err.title, f"{where}: {err.detail or err.title}", retry_after=err.retry_after, **extra)
