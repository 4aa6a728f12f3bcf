"""Open Inference Protocol (V2) tensors: JSON ``data`` and the binary tensor extension, both ways.

A V2 request is JSON; with the binary extension (what ``tritonclient`` sends by default) the JSON
header is the first ``Inference-Header-Content-Length`` bytes of the body and each input that says
``parameters.binary_data_size`` takes its bytes, in order, from what follows. ``BYTES`` elements
are, in binary, a 4-byte little-endian length and the bytes; in JSON, strings. Answers go back the
same way: an output asked for in binary (its ``binary_data`` parameter, or the request's
``binary_data_output``) is appended after the JSON header.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import BadInput, Invalid

NUMERIC = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
           "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
           "FP32": np.float32, "FP64": np.float64}
DATATYPES = (*NUMERIC, "BYTES")
MAX_DIMS = 8
MAX_ELEMENTS = 1 << 28  # of one tensor's shape, before any data is read (the body limit caps it too)
HEADER = "Inference-Header-Content-Length"


@dataclass
class Tensor:
    """One tensor of a request or an answer: ``data`` a NumPy array, or a list of bytes for BYTES."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[bytes]
    parameters: dict[str, Any] = field(default_factory=dict)
    text: bool = True  # BYTES elements that are UTF-8 text; others (PNG pictures) go base64 in JSON

    def count(self) -> int:
        return math.prod(self.shape)


def _shape(name: str, raw: Any) -> list[int]:
    if not isinstance(raw, list) or len(raw) > MAX_DIMS or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_ELEMENTS for d in raw):
        raise Invalid("invalid-tensor", f"input {name!r}: shape must be a list of at most {MAX_DIMS} sizes "
                      f"0..{MAX_ELEMENTS}", input=name)
    if math.prod(raw) > MAX_ELEMENTS:
        raise Invalid("invalid-tensor", f"input {name!r}: {math.prod(raw)} elements, at most {MAX_ELEMENTS}",
                      input=name)
    return list(raw)


def _flatten(value: Any) -> list[Any]:
    out: list[Any] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(reversed(v))
        else:
            out.append(v)
    return out


def _split_bytes(name: str, blob: bytes, count: int) -> list[bytes]:
    """BYTES elements of the binary extension: each a 4-byte little-endian length, then its bytes."""
    out, at = [], 0
    while at < len(blob):
        if at + 4 > len(blob):
            raise BadInput("invalid-tensor", f"input {name!r}: a BYTES element's length is cut short", input=name)
        (n,) = struct.unpack_from("<I", blob, at)
        at += 4
        if at + n > len(blob):
            raise BadInput("invalid-tensor", f"input {name!r}: a BYTES element runs past its data", input=name)
        out.append(blob[at:at + n])
        at += n
    if len(out) != count:
        raise Invalid("invalid-tensor", f"input {name!r}: {len(out)} BYTES elements for shape of {count}",
                      input=name)
    return out


def read_inputs(header: dict[str, Any], tail: bytes) -> list[Tensor]:
    """The request's input tensors, their data from JSON or from the binary tail (in order)."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise Invalid("invalid-infer-request", "inputs must be a non-empty list of tensors")
    out, at = [], 0
    for i, spec in enumerate(inputs):
        if not isinstance(spec, dict):
            raise Invalid("invalid-infer-request", f"inputs[{i}] must be an object with name, shape, datatype")
        name = spec.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise Invalid("invalid-infer-request", f"inputs[{i}] needs a name (1..64 characters)")
        dtype = spec.get("datatype")
        if dtype not in DATATYPES:
            raise Invalid("invalid-tensor", f"input {name!r}: datatype {dtype!r} is not one of {list(DATATYPES)}",
                          input=name, choices=list(DATATYPES))
        shape = _shape(name, spec.get("shape"))
        params = spec.get("parameters") or {}
        if not isinstance(params, dict):
            raise Invalid("invalid-tensor", f"input {name!r}: parameters must be an object", input=name)
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(tail) - at:
                raise BadInput("invalid-tensor", f"input {name!r}: binary_data_size {size!r} does not fit the "
                               f"{len(tail) - at} bytes left after the JSON header", input=name)
            blob, at = tail[at:at + size], at + size
            if dtype == "BYTES":
                data: np.ndarray | list[bytes] = _split_bytes(name, blob, math.prod(shape))
            else:
                want = math.prod(shape) * np.dtype(NUMERIC[dtype]).itemsize
                if size != want:
                    raise Invalid("invalid-tensor", f"input {name!r}: {size} bytes for a {dtype} tensor of shape "
                                  f"{shape} ({want} bytes)", input=name)
                data = np.frombuffer(blob, dtype=np.dtype(NUMERIC[dtype]).newbyteorder("<")).reshape(shape)
        else:
            if "data" not in spec:
                raise Invalid("invalid-tensor", f"input {name!r} has neither data nor binary_data_size", input=name)
            flat = _flatten(spec["data"])
            if len(flat) != math.prod(shape):
                raise Invalid("invalid-tensor", f"input {name!r}: {len(flat)} values for shape {shape}", input=name)
            if dtype == "BYTES":
                if not all(isinstance(v, str) for v in flat):
                    raise Invalid("invalid-tensor", f"input {name!r}: BYTES data in JSON are strings", input=name)
                data = [v.encode("utf-8") for v in flat]
            else:
                if not all(isinstance(v, (int, float)) for v in flat):
                    raise Invalid("invalid-tensor", f"input {name!r}: {dtype} data must be numbers", input=name)
                try:
                    data = np.asarray(flat, dtype=NUMERIC[dtype]).reshape(shape)
                except (OverflowError, ValueError) as exc:
                    raise Invalid("invalid-tensor", f"input {name!r}: {exc}", input=name) from exc
        out.append(Tensor(name, dtype, shape, data, params))
    if at != len(tail):
        raise BadInput("invalid-infer-request", f"{len(tail) - at} bytes after the JSON header belong to no input")
    return out


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tail) of a request body, by ``Inference-Header-Content-Length``."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        n = -1
    if not 0 <= n <= len(body):
        raise BadInput("invalid-infer-request", f"{HEADER} {header_length!r} is not a length within the "
                       f"{len(body)}-byte body")
    return body[:n], body[n:]


def _raw(t: Tensor) -> bytes:
    if t.datatype == "BYTES":
        assert isinstance(t.data, list)
        return b"".join(struct.pack("<I", len(b)) + b for b in t.data)
    assert isinstance(t.data, np.ndarray)
    return np.ascontiguousarray(t.data, dtype=np.dtype(NUMERIC[t.datatype]).newbyteorder("<")).tobytes()


def _json_data(t: Tensor) -> list[Any]:
    if t.datatype == "BYTES":
        assert isinstance(t.data, list)
        # JSON carries strings: PNG bytes are not text, so they go as base64 (binary_data is the compact way).
        return [b.decode("utf-8") if t.text else base64.b64encode(b).decode("ascii") for b in t.data]
    assert isinstance(t.data, np.ndarray)
    return t.data.reshape(-1).tolist()


def write_response(model: str, outputs: list[Tensor], binary: set[str], request_id: str | None = None,
                   parameters: dict[str, Any] | None = None) -> tuple[bytes, int | None]:
    """The answer body and, when some output went binary, the JSON header's length (the header to send)."""
    header: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": []}
    if request_id:
        header["id"] = request_id
    if parameters:
        header["parameters"] = parameters
    tail: list[bytes] = []
    for t in outputs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if t.name in binary:
            raw = _raw(t)
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            entry["data"] = _json_data(t)
        header["outputs"].append(entry)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    if not tail:
        return text, None
    return text + b"".join(tail), len(text)
