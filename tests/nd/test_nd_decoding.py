"""Decoding signals and volumes: every format gives back the array it was made from; budgets and bombs are
refused from the headers (issue 26, item 1)."""

from __future__ import annotations

import gzip
import io
import struct
import time
import zipfile

import numpy as np
import pytest

from core.array_decoding import ValueBudget
from core.errors import BadInput, TooLarge, Unsupported
from core.signal_decoding import decode_signal
from core.volume_decoding import decode_volume
from tests.nd import nd_files

MAX_BYTES = 64 * 1024 * 1024
RNG = np.random.default_rng(0)
SIGNAL = RNG.normal(size=(2, 300)).astype(np.float32)
VOLUME = RNG.normal(size=(5, 6, 7)).astype(np.float32) * 100


def budget(limit: int = 10**8, unit: str = "samples") -> ValueBudget:
    return ValueBudget(limit, unit, "CNNVIZ_MAX_TEST")


def sig(data: bytes, limit: int = 10**8):
    return decode_signal(data, budget(limit), max_bytes=MAX_BYTES)


def vol(data: bytes, limit: int = 10**8, **kw):
    return decode_volume(data, budget(limit, "voxels"), max_bytes=MAX_BYTES, **kw)


@pytest.mark.parametrize("layout", ["CL", "LC", "L"])
def test_npy_signal_layouts(layout):
    arr = {"CL": SIGNAL, "LC": SIGNAL.T, "L": SIGNAL[0]}[layout]
    d = sig(nd_files.npy(arr))
    np.testing.assert_array_equal(d.values, SIGNAL if layout != "L" else SIGNAL[:1])
    assert d.format == "npy"


def test_csv_with_header_and_json():
    d = sig(nd_files.csv(SIGNAL, ["lead I", "lead II"]))
    assert d.channel_names == ("lead I", "lead II")
    np.testing.assert_allclose(d.values, SIGNAL, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sig(nd_files.csv(SIGNAL)).values, SIGNAL, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sig(str(SIGNAL.tolist()).encode()).values, SIGNAL)
    np.testing.assert_allclose(sig(str(SIGNAL[0].tolist()).encode()).values, SIGNAL[:1])


def test_wfdb_record_in_zip():
    d = sig(nd_files.wfdb_zip(SIGNAL, 250.0, ["I", "II"]))
    assert d.format == "wfdb" and d.sampling_rate == 250.0 and d.channel_names == ("I", "II")
    np.testing.assert_allclose(d.values, SIGNAL, atol=1e-3)  # 16-bit at a gain of 1000 per mV


def test_signal_budget_from_headers_before_decoding():
    # A .npy header claiming 10^10 samples over a few bytes of body: refused from the header (413), no MemoryError.
    fake = nd_files.npy(np.zeros((1, 10), np.float32))
    fake = fake.replace(b"(1, 10)", b"(1, 10000000000)")
    with pytest.raises(TooLarge) as e:
        sig(fake, limit=1000)
    assert e.value.slug == "request-too-many-samples" and e.value.extra["budget"] == 1000
    # The budget is per request: two files of 600 samples each pass 1000 one at a time, not together.
    b = budget(1000)
    decode_signal(nd_files.npy(np.zeros(600, np.float32)), b, max_bytes=MAX_BYTES)
    with pytest.raises(TooLarge):
        decode_signal(nd_files.npy(np.zeros(600, np.float32)), b, max_bytes=MAX_BYTES)
    # A WFDB header claiming a huge record is refused before its .dat is inflated.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("r.hea", "r 2 250 900000000\nr.dat 16 1000 16 0 0 0 0 I\nr.dat 16 1000 16 0 0 0 0 II\n")
        zf.writestr("r.dat", b"\0" * 16)
    with pytest.raises(TooLarge):
        sig(buf.getvalue(), limit=10**6)


def test_signal_refusals_name_the_problem():
    with pytest.raises(Unsupported) as e:
        sig(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    assert e.value.slug == "input-kind-mismatch" and "PNG" in e.value.detail
    with pytest.raises(Unsupported):
        sig(b"\0\1\2\3" * 100)
    with pytest.raises(BadInput):
        sig(b"1,2\n3,x\n" * 10)
    with pytest.raises(BadInput):
        sig(nd_files.npy(np.array(["a"] * 20)))
    with pytest.raises(BadInput):
        sig(nd_files.npy(np.full(20, np.nan, np.float32)))


def test_nifti_and_gz_keep_values_and_affine():
    affine = np.array([[-0.8, 0, 0, 10], [0, 0.9, 0, -5], [0, 0, 2.5, 3], [0, 0, 0, 1]])
    for gz in (False, True):
        d = vol(nd_files.nifti(VOLUME, affine, gz=gz))
        np.testing.assert_allclose(d.values[0], VOLUME, rtol=1e-6)
        np.testing.assert_allclose(d.affine, affine)
        assert d.spacing == pytest.approx((2.5, 0.9, 0.8))


def test_dicom_series_sorted_by_position():
    order = [3, 0, 4, 1, 2]  # stored out of order: the decoder sorts by ImagePositionPatient
    d = vol(nd_files.dicom_zip(np.round(VOLUME), (2.0, 0.5, 0.7), (-10.0, 20.0, 30.0), order))
    np.testing.assert_allclose(d.values[0], np.round(VOLUME))
    assert d.spacing == pytest.approx((2.0, 0.5, 0.7))
    # LPS (-10, 20, 30) is RAS (10, -20, 30): the first voxel's world position
    np.testing.assert_allclose(d.affine @ [0, 0, 0, 1], [10, -20, 30, 1])
    np.testing.assert_allclose(d.affine @ [0, 0, 4, 1], [10, -20, 38, 1])


def test_npy_and_npz_volumes():
    d = vol(nd_files.npy(VOLUME), spacing=(2.0, 1.0, 1.0))
    np.testing.assert_array_equal(d.values[0], VOLUME)
    assert d.spacing == (2.0, 1.0, 1.0)
    d = vol(nd_files.npz(volume=VOLUME[None], spacing=np.array([3.0, 2.0, 1.0])))
    assert d.values.shape == (1, 5, 6, 7) and d.spacing == (3.0, 2.0, 1.0)


def test_volume_budget_and_bombs_refused_from_headers():
    # A NIfTI header claiming 2048^3 voxels with no data: 413 from the header.
    head = bytearray(nd_files.nifti(VOLUME, np.eye(4))[:352])
    struct.pack_into("<8h", head, 40, 3, 2048, 2048, 2048, 1, 1, 1, 1)
    with pytest.raises(TooLarge) as e:
        vol(bytes(head), limit=10**6)
    assert e.value.slug == "request-too-many-voxels" and e.value.extra["setting"] == "CNNVIZ_MAX_TEST"
    # A .nii.gz with a small header followed by 40 MB of zeros: only what the header implies is inflated.
    raw = nd_files.nifti(VOLUME, np.eye(4))
    comp = gzip.compress(raw + b"\0" * 40_000_000, compresslevel=1)
    t = time.perf_counter()
    d = vol(comp)
    assert d.values.shape == (1, 5, 6, 7) and time.perf_counter() - t < 2.0
    # A ZIP whose central directory declares more than the request may inflate: refused before inflating.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", b"\0" * 5_000_000)
    with pytest.raises(TooLarge) as e:
        decode_volume(buf.getvalue(), budget(), max_bytes=1_000_000)
    assert e.value.slug == "zip-too-large"
    with pytest.raises(Unsupported) as e:
        vol(b"\xff\xd8\xff\xe0" + b"\0" * 400)
    assert e.value.slug == "input-kind-mismatch"
