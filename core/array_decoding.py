"""What decoding a signal or a volume shares: the decoded type, the per-request budget, NumPy headers.

Uploads come from arbitrary clients. Like :mod:`core.imaging` for images, every failure is a
:class:`DomainError` with a stable slug, and the number of values is read from the file's header
and charged to the request's budget (:class:`ValueBudget`, a 413 naming it) before any value is
decoded. Formats are recognised from the bytes (:func:`sniff`), never from a file name alone.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from core.errors import BadInput, DomainError, TooLarge, Unsupported

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
GZIP_MAGIC = b"\x1f\x8b"
IMAGE_MAGICS = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"BM": "BMP", b"RIFF": "WEBP"}
MAX_HEADER_BYTES = 64 * 1024  # of a .npy header (NumPy itself refuses more than 10 000 characters)
MAX_ZIP_ENTRIES = 4096  # files in one ZIP (a DICOM series of 4096 slices at most)
NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float: no complex, object, strings or records


@dataclass
class DecodedArray:
    """A decoded signal ``[C,L]`` or volume ``[C,D,H,W]`` (float32) and what was read with it.

    Volumes are stored slices first: ``D`` is the slice axis (NIfTI's third axis, a DICOM series'
    order by position), ``H`` rows and ``W`` columns; ``affine`` maps NIfTI voxel indices
    ``(i, j, k) = (W, H, D)`` to millimetres (RAS), so a map written back lies on the scan.
    """

    kind: str  # "signal" | "volume"
    values: np.ndarray
    format: str
    channel_names: tuple[str, ...] = ()
    sampling_rate: float | None = None  # signals: Hz, where the file says
    affine: np.ndarray | None = None  # volumes: 4x4 voxel (i, j, k) -> mm
    warnings: list[str] = field(default_factory=list)

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.values.shape[1:])

    @property
    def channels(self) -> int:
        return int(self.values.shape[0])

    @property
    def spacing(self) -> tuple[float, ...]:
        """Millimetres per voxel along D, H, W (from the affine), or 1."""
        if self.affine is None:
            return (1.0,) * len(self.grid)
        cols = np.linalg.norm(self.affine[:3, :3], axis=0)  # i, j, k = W, H, D
        return float(cols[2]), float(cols[1]), float(cols[0])


class ValueBudget:
    """Values of one request (samples or voxels), charged file by file from the headers before decoding.

    The file that would take the request over ``limit`` is refused with a 413
    ``request-too-many-samples`` / ``request-too-many-voxels`` naming the budget, the setting that
    sets it, the request's total so far and each file's shape.
    """

    def __init__(self, limit: int, unit: str, setting: str) -> None:
        self.limit, self.unit, self.setting = limit, unit, setting
        self.total = 0
        self.shapes: list[list[int]] = []

    def charge(self, shape: tuple[int, ...]) -> None:
        self.shapes.append([int(v) for v in shape])
        self.total += math.prod(int(v) for v in shape)
        if self.total > self.limit:
            raise TooLarge(f"request-too-many-{self.unit}", f"Too many {self.unit} in one request",
                           f"The files of this request would decode to {self.total} {self.unit} (counted from their "
                           f"headers up to file {len(self.shapes)}, shapes {self.shapes}); the budget is {self.limit} "
                           f"{self.unit} per request ({self.setting}).", budget=self.limit, total=self.total,
                           setting=self.setting, shapes=self.shapes)


    def settle(self, shape: tuple[int, ...]) -> None:
        """Replace the last charge (an upper bound read before parsing) by the shape actually decoded."""
        last = self.shapes.pop()
        self.total -= math.prod(last)
        self.charge(shape)


def invalid(kind: str, fmt: str, detail: str) -> DomainError:
    return BadInput(f"invalid-{kind}", f"Invalid {kind} file", f"The upload looks like {fmt} but cannot be read: "
                    f"{detail}", format=fmt)


def unsupported(kind: str, accepted: tuple[str, ...], what: str, model: str | None = None) -> DomainError:
    """415 for bytes no decoder of ``kind`` understands; an image sent to a signal or volume model says so."""
    takes = f"model {model} takes {kind}s" if model else f"this endpoint takes {kind}s"
    slug = "input-kind-mismatch" if what.endswith("image") else f"unsupported-{kind}-format"
    return Unsupported(slug, f"Not a {kind} file this service reads",
                       f"The upload is {what}; {takes}: {', '.join(accepted)}.", accepted_formats=list(accepted),
                       input_kind=kind)


def image_format(data: bytes) -> str | None:
    """The image format of bytes that start like one (an image sent to a signal or volume model)."""
    for magic, name in IMAGE_MAGICS.items():
        if data.startswith(magic):
            return name
    return None


def npy_header(fh: io.BufferedIOBase | io.BytesIO, kind: str) -> tuple[tuple[int, ...], np.dtype, bool]:
    """Shape, dtype and Fortran order of a ``.npy`` stream, from its header alone (no pickles, no objects)."""
    try:
        major, _minor = np.lib.format.read_magic(fh)
        if major == 1:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh, max_header_size=MAX_HEADER_BYTES)
        elif major in (2, 3):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh, max_header_size=MAX_HEADER_BYTES)
        else:
            raise ValueError(f"unknown .npy version {major}")
    except (ValueError, SyntaxError, EOFError) as exc:
        raise invalid(kind, "NumPy .npy", str(exc)) from exc
    if dtype.kind not in NUMERIC_KINDS or dtype.hasobject:
        raise invalid(kind, "NumPy .npy", f"dtype {dtype} is not numeric (bool, int, uint or float)")
    return tuple(int(v) for v in shape), dtype, bool(fortran)


def read_npy(data: bytes, kind: str, check: ValueBudget,
             arrange: Callable[[tuple[int, ...]], tuple[int, ...]]) -> np.ndarray:
    """A ``.npy`` array: header read and its (arranged) shape charged to ``check`` before the values are read."""
    fh = io.BytesIO(data)
    shape, dtype, fortran = npy_header(fh, kind)
    check.charge(arrange(shape))
    count = math.prod(shape)
    body = data[fh.tell():]
    if len(body) < count * dtype.itemsize:
        raise invalid(kind, "NumPy .npy", f"{len(body)} bytes of data for shape {shape} of {dtype}")
    arr = np.frombuffer(body, dtype=dtype, count=count)
    return arr.reshape(shape[::-1]).transpose() if fortran else arr.reshape(shape)


def open_zip(data: bytes, kind: str, max_bytes: int) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    """A ZIP's files (folders and hidden files skipped), bounded by their declared sizes before inflating any."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise invalid(kind, "a ZIP archive", str(exc)) from exc
    infos = [i for i in zf.infolist()
             if not i.is_dir() and not any(p.startswith((".", "__")) for p in i.filename.split("/"))]
    if len(infos) > MAX_ZIP_ENTRIES:
        raise TooLarge("zip-too-many-files", f"At most {MAX_ZIP_ENTRIES} files in one archive", limit=MAX_ZIP_ENTRIES)
    declared = sum(i.file_size for i in infos)
    if declared > max_bytes:
        raise TooLarge("zip-too-large", f"The archive inflates to more than {max_bytes} bytes",
                       f"its files declare {declared} bytes; at most {max_bytes} for this request's budget",
                       limit=max_bytes)
    return zf, infos


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, kind: str) -> bytes:
    """One member, its read capped at its declared size (a lying header is refused, not followed)."""
    try:
        with zf.open(info) as fh:
            blob = fh.read(info.file_size + 1)
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError, EOFError) as exc:
        raise invalid(kind, "a ZIP archive", f"cannot read {info.filename!r}: {exc}") from exc
    if len(blob) > info.file_size:
        raise invalid(kind, "a ZIP archive", f"{info.filename!r} is larger than its header says")
    return blob


def finite(values: np.ndarray, kind: str, fmt: str) -> np.ndarray:
    """float32 values, refusing NaN and infinities (a map of them would mean nothing)."""
    out = np.ascontiguousarray(values, dtype=np.float32)
    if not out.flags.writeable:  # a view of the upload's bytes: torch wants memory of its own
        out = out.copy()
    if not np.isfinite(out).all():
        raise invalid(kind, fmt, "it holds NaN or infinite values")
    return out


def array_format(data: bytes) -> str | None:
    """What a non-image upload looks like, when it looks like a signal or a volume (None: it does not).

    Used by the image path to answer "this model takes images; you sent a signal/volume file" instead
    of a bare "not an image".
    """
    head = data[:512]
    if head.startswith(NPY_MAGIC):
        return "a NumPy .npy array (a signal or a volume)"
    if head.startswith(ZIP_MAGIC):
        return "a ZIP archive (a WFDB record, a DICOM series or a .npz?)"
    if head.startswith(GZIP_MAGIC):
        return "a gzip file (a NIfTI .nii.gz volume?)"
    if len(head) >= 348 and head[344:347] in (b"n+1", b"ni1"):
        return "a NIfTI volume"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "a DICOM file"
    text = head.lstrip()
    if text[:1] in (b"[", b"{"):
        return "a JSON document (a signal?)"
    try:
        lines = head.decode("utf-8").splitlines() if head else []
    except UnicodeDecodeError:
        return None
    if lines and ("," in lines[0] or ";" in lines[0]):
        return "a CSV text file (a signal?)"
    numeric = [ln for ln in lines[1:8] if ln.strip().replace(".", "", 1).lstrip("+-").replace("e", "", 1).isdigit()]
    if len(lines) > 2 and len(numeric) >= min(3, len(lines) - 1):
        return "a text file of numbers, one a line (a one-channel signal?)"
    return None
