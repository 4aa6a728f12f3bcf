"""OpenAPI pieces several routes share: the image-upload request body and the problem answers.

The body is parsed by :func:`service.uploads.read_upload` (multipart or JSON), so FastAPI cannot
infer it; this documents both forms for clients and for the committed OpenAPI document.
"""

from __future__ import annotations

from typing import Any


def upload_body(params_schema_ref: str | None = None, description: str = "", min_images: int = 1,
                max_images: int | None = None) -> dict[str, Any]:
    """The request body of an image route: multipart (image, params) or JSON (images, params).

    Unknown fields are refused (``additionalProperties: false``) and the image count is bounded,
    as the route checks them (schemathesis' positive mode found both unstated).
    """
    count: dict[str, Any] = {"minItems": min_images, **({"maxItems": max_images} if max_images else {})}
    params: dict[str, Any] = {"type": "string", "description": "JSON object with the parameters"}
    json_params: dict[str, Any] = {"type": "object"}
    if params_schema_ref:
        json_params = {"$ref": params_schema_ref}
        params["description"] += f" ({params_schema_ref.rsplit('/', 1)[-1]})"
    return {
        "requestBody": {
            "required": True,
            "description": description or "Images (JPEG, PNG, WebP, BMP, GIF) and a params JSON object.",
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "image": {"type": "array", "items": {"type": "string", "format": "binary"}, **count},
                            "params": {**json_params, "description": params["description"]},
                        },
                        "required": ["image"] if min_images else [],
                        "additionalProperties": False,
                    },
                    # The params field is JSON text: the same object as in the JSON body.
                    "encoding": {"params": {"contentType": "application/json"}},
                },
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "images": {"type": "array", "items": {"type": "string", "format": "byte"}, **count},
                            "params": json_params,
                        },
                        "required": ["images"] if min_images else [],
                        "additionalProperties": False,
                    }
                },
            },
        }
    }


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {"application/problem+json": {"schema": {"type": "object"}}}}
    for code, text in [(400, "Broken input"), (404, "Unknown model, method or resource"),
                       (413, "Body, image or count over a limit"), (415, "Unsupported media or image format"),
                       (422, "Invalid parameters, or params / a JSON body that does not parse (at most 32 "
                               "levels deep, numbers at most 64 characters)")]
}


JOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    **PROBLEM_RESPONSES,
    **{code: {"description": text, "content": {"application/problem+json": {"schema": {"type": "object"}}}}
       for code, text in [(401, "Missing or wrong API key"),
                          (409, "Job not finished, or its Idempotency-Key still being processed"),
                          (410, "Result expired"),
                          (429, "Too many jobs for this key"), (503, "Queue full or Redis unreachable")]},
}
