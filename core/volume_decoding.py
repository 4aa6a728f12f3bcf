"""Decoding uploaded 3-D volumes: NIfTI ``.nii`` / ``.nii.gz``, a DICOM series in a ZIP, ``.npy`` / ``.npz``.

Every reader charges the volume's voxels to the request's
:class:`~core.array_decoding.ValueBudget` from its header before any voxel is decoded: the NIfTI
header (for ``.nii.gz`` only its first bytes are inflated, and then at most the size the header
implies, so a gzip bomb is cut off, not followed), each DICOM file's header (read with
``stop_before_pixels``), the ``.npy`` header of each ``.npz`` member. ZIPs are bounded by their
central directory's declared sizes first.

The result is channels first and slices first, ``[C, D, H, W]``, with the affine of NIfTI voxel
indices ``(i, j, k) = (W, H, D)`` to millimetres (RAS): the input's own, so a map written back
(:func:`core.nd_pictures.nifti_bytes`) lays over the scan in 3D Slicer or ITK-SNAP.
"""

from __future__ import annotations

import gzip
import io
import math
import zlib

import numpy as np

from cnnviz.models.input_spec import MAX_CHANNELS
from core.array_decoding import (
    GZIP_MAGIC,
    NPY_MAGIC,
    ZIP_MAGIC,
    DecodedArray,
    ValueBudget,
    finite,
    image_format,
    invalid,
    npy_header,
    open_zip,
    read_member,
    unsupported,
)

VOLUME_FORMATS = ("NIfTI .nii / .nii.gz", "DICOM series (a ZIP of slices)", "NumPy .npy / .npz")
MIN_SIDE = 2
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _layout(shape: tuple[int, ...], fmt: str) -> tuple[int, ...]:
    """``[C,D,H,W]`` of a ``[D,H,W]`` or ``[C,D,H,W]`` array shape."""
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4:
        raise invalid("volume", fmt, f"shape {list(shape)}: a volume is [D, H, W] or [C, D, H, W]")
    if shape[0] > MAX_CHANNELS:
        raise invalid("volume", fmt, f"{shape[0]} channels; at most {MAX_CHANNELS}")
    if min(shape[1:]) < MIN_SIDE:
        raise invalid("volume", fmt, f"shape {list(shape[1:])}: each side needs at least {MIN_SIDE} voxels")
    return shape


def _npy_volume(data: bytes, check: ValueBudget, fmt: str = "NumPy .npy") -> np.ndarray:
    fh = io.BytesIO(data)
    shape, dtype, fortran = npy_header(fh, "volume")
    arranged = _layout(shape, fmt)
    check.charge(arranged)
    count = math.prod(shape)
    body = data[fh.tell():]
    if len(body) < count * dtype.itemsize:
        raise invalid("volume", fmt, f"{len(body)} bytes of data for shape {list(shape)} of {dtype}")
    arr = np.frombuffer(body, dtype=dtype, count=count)
    arr = arr.reshape(shape[::-1]).transpose() if fortran else arr.reshape(shape)
    return finite(arr.reshape(arranged), "volume", fmt)


def _diag_affine(spacing: tuple[float, ...]) -> np.ndarray:
    """Voxel (i, j, k) = (W, H, D) to mm for a volume given as ``[D,H,W]`` with ``spacing`` along D, H, W."""
    return np.diag([spacing[2], spacing[1], spacing[0], 1.0])


def _npz(data: bytes, check: ValueBudget, max_bytes: int) -> DecodedArray:
    zf, infos = open_zip(data, "volume", max_bytes)
    members = {i.filename[:-4] if i.filename.endswith(".npy") else i.filename: i for i in infos}
    key = "volume" if "volume" in members else next((k for k in members if k not in ("affine", "spacing")), None)
    if key is None:
        raise invalid("volume", "NumPy .npz", "it holds no array (name it 'volume')")
    values = _npy_volume(read_member(zf, members[key], "volume"), check, "NumPy .npz")
    affine = None
    if "affine" in members:
        a = np.load(io.BytesIO(read_member(zf, members["affine"], "volume")), allow_pickle=False)
        if a.shape != (4, 4) or not np.isfinite(a).all():
            raise invalid("volume", "NumPy .npz", "'affine' must be a finite 4x4 matrix")
        affine = a.astype(np.float64)
    elif "spacing" in members:
        sp = np.load(io.BytesIO(read_member(zf, members["spacing"], "volume")), allow_pickle=False)
        if sp.shape != (3,) or not (np.isfinite(sp).all() and (sp > 0).all()):
            raise invalid("volume", "NumPy .npz", "'spacing' must be three positive numbers (D, H, W, mm)")
        affine = _diag_affine(tuple(float(v) for v in sp))
    return DecodedArray("volume", values, "npz", affine=affine)


def _nifti(data: bytes, check: ValueBudget) -> DecodedArray:
    import nibabel as nib  # noqa: PLC0415 - only for NIfTI uploads

    gz = data.startswith(GZIP_MAGIC)
    try:
        head = gzip.GzipFile(fileobj=io.BytesIO(data)).read(544) if gz else data[:544]
    except (OSError, EOFError, zlib.error) as exc:
        raise invalid("volume", "NIfTI (.nii.gz)", f"the gzip stream is broken: {exc}") from exc
    header_cls = nib.Nifti2Header if head[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c") else nib.Nifti1Header
    try:
        header = header_cls.from_fileobj(io.BytesIO(head), check=True)
        shape = tuple(int(v) for v in header.get_data_shape())
        dtype = header.get_data_dtype()
        offset = int(header.get_data_offset())
    except Exception as exc:  # noqa: BLE001 - nibabel raises several types for a bad header
        raise invalid("volume", "NIfTI", f"the header cannot be read: {exc}") from exc
    if len(shape) == 5 and shape[3] == 1:  # [X,Y,Z,1,C]: NIfTI's vector intent
        shape = (*shape[:3], shape[4])
    if len(shape) not in (3, 4):
        raise invalid("volume", "NIfTI", f"shape {list(shape)}: a volume is [X, Y, Z] or [X, Y, Z, C]")
    channels = shape[3] if len(shape) == 4 else 1
    arranged = _layout((channels, shape[2], shape[1], shape[0]), "NIfTI")
    check.charge(arranged)  # from the header, before the voxels are inflated or read
    need = offset + math.prod(shape) * dtype.itemsize
    if gz:
        try:
            raw = gzip.GzipFile(fileobj=io.BytesIO(data)).read(need)  # at most what the header implies
        except (OSError, EOFError, zlib.error) as exc:
            raise invalid("volume", "NIfTI (.nii.gz)", f"the gzip stream is broken: {exc}") from exc
    else:
        raw = data[:need]
    if len(raw) < need:
        raise invalid("volume", "NIfTI", f"{len(raw)} bytes; the header implies {need}")
    try:
        img = (nib.Nifti2Image if header_cls is nib.Nifti2Header else nib.Nifti1Image).from_bytes(raw)
        vol = np.asarray(img.dataobj, dtype=np.float32).reshape(shape[0], shape[1], shape[2], channels)
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # noqa: BLE001
        raise invalid("volume", "NIfTI", f"{type(exc).__name__}: {exc}") from exc
    values = vol.transpose(3, 2, 1, 0)  # [X,Y,Z,C] -> [C, Z, Y, X] = [C, D, H, W]
    return DecodedArray("volume", finite(values, "volume", "NIfTI"), "nifti", affine=affine)


def _dicom(data: bytes, check: ValueBudget, max_bytes: int) -> DecodedArray:
    import pydicom  # noqa: PLC0415 - only for DICOM uploads
    from pydicom.errors import InvalidDicomError  # noqa: PLC0415

    zf, infos = open_zip(data, "volume", max_bytes)
    headers = []
    for info in infos:
        try:
            with zf.open(info) as fh:
                ds = pydicom.dcmread(fh, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as exc:
            raise invalid("volume", "a DICOM series", f"{info.filename!r} is not a DICOM file: {exc}") from exc
        if "Rows" not in ds or "Columns" not in ds:
            raise invalid("volume", "a DICOM series", f"{info.filename!r} has no image (Rows, Columns)")
        headers.append((info, ds))
    if len(headers) < MIN_SIDE:
        raise invalid("volume", "a DICOM series", f"{len(headers)} slice(s); a volume needs at least {MIN_SIDE}")
    rows, cols = int(headers[0][1].Rows), int(headers[0][1].Columns)
    if any((int(ds.Rows), int(ds.Columns)) != (rows, cols) for _, ds in headers):
        raise invalid("volume", "a DICOM series", "its slices differ in size")
    check.charge((1, len(headers), rows, cols))  # from the headers, before any pixel is read
    try:
        iop = np.array([float(v) for v in headers[0][1].ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        pos = {id(ds): np.array([float(v) for v in ds.ImagePositionPatient]) for _, ds in headers}
        spacing_rc = [float(v) for v in headers[0][1].PixelSpacing]
    except (AttributeError, ValueError, TypeError) as exc:
        raise invalid("volume", "a DICOM series", "slices need ImagePositionPatient, ImageOrientationPatient and"
                      " PixelSpacing to be ordered and placed") from exc
    headers.sort(key=lambda h: float(pos[id(h[1])] @ normal))  # slices ordered by position along the normal
    slices = []
    for info, _ in headers:
        ds = pydicom.dcmread(io.BytesIO(read_member(zf, info, "volume")))
        try:
            px = ds.pixel_array.astype(np.float32)
        except Exception as exc:  # noqa: BLE001 - a compressed transfer syntax without its decoder, etc.
            raise invalid("volume", "a DICOM series", f"{info.filename!r}: pixels cannot be decoded: {exc}") from exc
        slope, intercept = float(getattr(ds, "RescaleSlope", 1) or 1), float(getattr(ds, "RescaleIntercept", 0) or 0)
        slices.append(px * slope + intercept)
    first, last = pos[id(headers[0][1])], pos[id(headers[-1][1])]
    step = (last - first) / (len(headers) - 1)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * spacing_rc[1]  # i: along a row (columns), spaced by the column spacing
    lps[:3, 1] = iop[3:] * spacing_rc[0]  # j: down a column (rows)
    lps[:3, 2] = step
    lps[:3, 3] = first
    values = np.stack(slices)[None]  # [1, D, H, W]
    return DecodedArray("volume", finite(values, "volume", "a DICOM series"), "dicom", affine=LPS_TO_RAS @ lps)


def _is_nifti(head: bytes) -> bool:
    return (len(head) >= 348 and head[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c") and head[344:347] in
            (b"n+1", b"ni1")) or head[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c")


def decode_volume(data: bytes, check: ValueBudget, *, max_bytes: int, model: str | None = None,
                  spacing: tuple[float, ...] = ()) -> DecodedArray:
    """Decode one uploaded volume (format from the bytes), or raise a :class:`DomainError` (400, 413, 415).

    ``spacing`` (the model's, D H W mm) places a bare ``.npy`` array, which carries none.
    """
    if data.startswith(NPY_MAGIC):
        return DecodedArray("volume", _npy_volume(data, check), "npy",
                            affine=_diag_affine(spacing) if spacing else None)
    if data.startswith(ZIP_MAGIC):
        zf, infos = open_zip(data, "volume", max_bytes)
        if infos and all(i.filename.endswith(".npy") for i in infos):
            out = _npz(data, check, max_bytes)
            if out.affine is None and spacing:
                out.affine = _diag_affine(spacing)
            return out
        return _dicom(data, check, max_bytes)
    if data.startswith(GZIP_MAGIC) or _is_nifti(data[:348]):
        return _nifti(data, check)
    fmt = image_format(data[:16])
    what = f"a {fmt} image" if fmt else "a file of no format this service reads as a volume"
    raise unsupported("volume", VOLUME_FORMATS, what, model)
