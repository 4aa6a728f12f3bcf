"""Signal and volume files built in memory for the tests: every format the decoders read."""

from __future__ import annotations

import gzip
import io
import tempfile
import zipfile
from pathlib import Path

import numpy as np


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def csv(values: np.ndarray, names: list[str] | None = None) -> bytes:
    """``values`` ``[C,L]`` as one column per channel."""
    lines = [",".join(names)] if names else []
    lines += [",".join(f"{v:.6g}" for v in row) for row in values.T]
    return ("\n".join(lines) + "\n").encode()


def wfdb_zip(values: np.ndarray, fs: float, names: list[str]) -> bytes:
    """A WFDB record (format 16) of ``values`` ``[C,L]`` in physical units, zipped as .hea + .dat."""
    import wfdb

    with tempfile.TemporaryDirectory() as tmp:
        wfdb.wrsamp("rec", fs=fs, units=["mV"] * len(names), sig_name=names, p_signal=values.T.astype(np.float64),
                    fmt=["16"] * len(names), adc_gain=[1000.0] * len(names), baseline=[0] * len(names),
                    write_dir=tmp)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name in ("rec.hea", "rec.dat"):
                zf.write(Path(tmp) / name, name)
        return buf.getvalue()


def nifti(volume_dhw: np.ndarray, affine: np.ndarray, gz: bool = False) -> bytes:
    """A NIfTI-1 file of ``volume`` given slices first ``[D,H,W]`` (stored as NIfTI's [i, j, k] = [W, H, D])."""
    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(volume_dhw.transpose(2, 1, 0)).astype(np.float32), affine)
    data = img.to_bytes()
    return gzip.compress(data) if gz else data


def dicom_zip(volume_dhw: np.ndarray, spacing: tuple[float, float, float], origin: tuple[float, float, float],
              order: list[int] | None = None) -> bytes:
    """A DICOM series (one uint16 CT slice per file, axial, LPS positions), zipped in ``order`` of slices."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    d = volume_dhw.shape[0]
    buf = io.BytesIO()
    series = generate_uid()
    with zipfile.ZipFile(buf, "w") as zf:
        for k in (order if order is not None else range(d)):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = FileDataset(f"s{k}.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPClassUID, ds.SeriesInstanceUID = CTImageStorage, series
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.Modality = "CT"
            ds.Rows, ds.Columns = volume_dhw.shape[1:]
            ds.PixelSpacing = [spacing[1], spacing[2]]
            ds.SliceThickness = spacing[0]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * spacing[0]]
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
            ds.PixelData = (volume_dhw[k] + 1024).astype(np.uint16).tobytes()
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            zf.writestr(f"slice_{k:03d}.dcm", out.getvalue())
    return buf.getvalue()
