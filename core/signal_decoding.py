"""Decoding uploaded 1-D signals: ``.npy``, CSV, a JSON array, a WFDB record in a ZIP.

Each reader finds the signal's shape from what precedes its values (a .npy header, the CSV's
first line and its line count, the JSON's separators, the WFDB ``.hea`` header) and charges it to
the request's :class:`~core.array_decoding.ValueBudget` before decoding a value. The result is
channels first, ``[C, L]``.

Layout rules: a 1-D array is one channel; a 2-D ``.npy`` is channels first when its first axis is
the shorter one and at most 64 long (``[12, 5000]``: twelve leads), otherwise one column per
channel like a CSV. A JSON document is a list of numbers (one channel) or a list of lists (one
list per channel).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np

from cnnviz.models.input_spec import MAX_CHANNELS
from core.array_decoding import (
    NPY_MAGIC,
    ZIP_MAGIC,
    DecodedArray,
    ValueBudget,
    finite,
    image_format,
    invalid,
    open_zip,
    read_member,
    read_npy,
    unsupported,
)

SIGNAL_FORMATS = ("NumPy .npy", "CSV (one column per channel, optional header)", "JSON array",
                  "WFDB record (.hea + .dat in a ZIP)")
MIN_SAMPLES = 8
_NUMBER = re.compile(rb"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def _layout(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(channels, samples)`` of a 1-D or 2-D array shape (see the module's layout rules)."""
    if len(shape) == 1:
        return 1, shape[0]
    if len(shape) == 2:
        a, b = shape
        return (a, b) if a <= MAX_CHANNELS and a < b else (b, a)
    raise invalid("signal", "NumPy .npy", f"shape {list(shape)}: a signal is [L], [C, L] or [L, C]")


def _channels_first(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 1:
        return arr[None]
    c, _ = _layout(arr.shape)
    return arr if arr.shape[0] == c else arr.T


def _check(values: np.ndarray, fmt: str) -> np.ndarray:
    if values.shape[0] > MAX_CHANNELS:
        raise invalid("signal", fmt, f"{values.shape[0]} channels; at most {MAX_CHANNELS}")
    if values.shape[1] < MIN_SAMPLES:
        raise invalid("signal", fmt, f"{values.shape[1]} samples; at least {MIN_SAMPLES}")
    return finite(values, "signal", fmt)


def _npy(data: bytes, check: ValueBudget) -> DecodedArray:
    arr = read_npy(data, "signal", check, _layout)
    return DecodedArray("signal", _check(_channels_first(arr), "NumPy .npy"), "npy")


def _csv(data: bytes, check: ValueBudget) -> DecodedArray:
    lines = [ln for ln in data.splitlines() if ln.strip()]
    if not lines:
        raise invalid("signal", "CSV", "it is empty")
    sep = b";" if lines[0].count(b";") > lines[0].count(b",") else b","
    first = lines[0].split(sep)
    header = not all(_NUMBER.match(c) for c in first)
    names = tuple(c.strip().decode("utf-8", "replace")[:64] for c in first) if header else ()
    rows = lines[1:] if header else lines
    check.charge((len(first), len(rows)))  # before a number is parsed
    try:
        values = np.array([[float(c) for c in r.split(sep)] for r in rows], dtype=np.float64)
    except ValueError as exc:
        raise invalid("signal", "CSV", f"a value is not a number ({exc})") from exc
    if values.ndim != 2 or values.shape[1] != len(first):
        raise invalid("signal", "CSV", f"every row needs {len(first)} columns")
    return DecodedArray("signal", _check(values.T, "CSV"), "csv", names)


def _json(data: bytes, check: ValueBudget) -> DecodedArray:
    # Every number but one follows a comma: the count bounds the values before json parses any.
    check.charge((1, data.count(b",") + 1))
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise invalid("signal", "JSON", str(exc)) from exc
    if isinstance(doc, list) and doc and all(isinstance(v, int | float) and not isinstance(v, bool) for v in doc):
        rows = [doc]
    elif isinstance(doc, list) and doc and all(isinstance(r, list) for r in doc):
        rows = doc
    else:
        raise invalid("signal", "JSON", "a signal is a list of numbers, or a list of lists (one per channel)")
    if len({len(r) for r in rows}) != 1 or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                                   for r in rows for v in r):
        raise invalid("signal", "JSON", "every channel needs the same number of numbers")
    check.settle((len(rows), len(rows[0])))
    return DecodedArray("signal", _check(np.array(rows, dtype=np.float64), "JSON"), "json")


def _wfdb(data: bytes, check: ValueBudget, max_bytes: int) -> DecodedArray:
    zf, infos = open_zip(data, "signal", max_bytes)
    heads = [i for i in infos if i.filename.lower().endswith(".hea")]
    if len(heads) != 1:
        raise invalid("signal", "a WFDB record", f"the ZIP holds {len(heads)} .hea headers; send one record")
    head = read_member(zf, heads[0], "signal").decode("latin-1")
    fields = next((ln.split() for ln in head.splitlines() if ln.strip() and not ln.startswith("#")), [])
    try:
        n_sig, length = int(fields[1]), int(fields[3])
    except (IndexError, ValueError) as exc:
        raise invalid("signal", "a WFDB record", "the .hea record line needs a signal count and a length") from exc
    check.charge((n_sig, length))  # from the header, before the .dat is inflated
    import wfdb  # noqa: PLC0415 - a heavy import (pandas), only for WFDB uploads

    with tempfile.TemporaryDirectory() as tmp:
        for info in infos:
            name = Path(info.filename).name
            if name.lower().endswith((".hea", ".dat")):
                (Path(tmp) / name).write_bytes(read_member(zf, info, "signal"))
        record = Path(heads[0].filename).name[:-4]
        try:
            rec = wfdb.rdrecord(str(Path(tmp) / record))
        except Exception as exc:  # noqa: BLE001 - wfdb raises many types for a broken record
            raise invalid("signal", "a WFDB record", f"{type(exc).__name__}: {exc}") from exc
    values = np.asarray(rec.p_signal, dtype=np.float64).T
    return DecodedArray("signal", _check(values, "a WFDB record"), "wfdb", tuple(rec.sig_name or ()),
                        float(rec.fs) if rec.fs else None)


def decode_signal(data: bytes, check: ValueBudget, *, max_bytes: int, model: str | None = None) -> DecodedArray:
    """Decode one uploaded signal (format from the bytes), or raise a :class:`DomainError` (400, 413, 415)."""
    head = data[:16]
    if head.startswith(NPY_MAGIC):
        return _npy(data, check)
    if head.startswith(ZIP_MAGIC):
        return _wfdb(data, check, max_bytes)
    text = head.lstrip()
    if text[:1] in (b"[", b"{"):
        return _json(data, check)
    fmt = image_format(head)
    if fmt is None and (head.startswith(b"\x1f\x8b") or b"\x00" in data[:1024]):
        fmt = "binary"
    if fmt is None:
        try:
            data[:4096].decode("utf-8")
        except UnicodeDecodeError:
            fmt = "binary"
    if fmt is not None:
        what = f"a {fmt} image" if fmt != "binary" else "a binary file of no format this service reads as a signal"
        raise unsupported("signal", SIGNAL_FORMATS, what, model)
    return _csv(data, check)
