"""Write the committed example signals and volumes of examples/nd/samples (the README's examples use them).

    python -m bench.make_nd_samples

Synthetic, seeded (seed 21, apart from the training and evaluation seeds): a trace with a bump as
CSV with a header and as a WFDB record (.hea + .dat in a ZIP, 100 Hz); a volume with a bright blob
as NIfTI (.nii.gz, 1.5 x 1.5 x 2 mm) and as a DICOM series in a ZIP. Each file's pattern position
is logged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cnnviz.models import nd_demo
from tests.nd import nd_files

log = logging.getLogger("make_nd_samples")
OUT = Path(__file__).resolve().parent.parent / "examples" / "nd" / "samples"
SEED = 21


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    OUT.mkdir(parents=True, exist_ok=True)
    s = nd_demo.signals(20, SEED)
    i = next(k for k in range(20) if int(s.y[k]) == 0)
    trace = s.x[i, 0].numpy()
    (OUT / "trace_bump.csv").write_bytes(nd_files.csv(trace[None], ["lead II (mV)"]))
    (OUT / "trace_bump_wfdb.zip").write_bytes(nd_files.wfdb_zip(trace[None], 100.0, ["II"]))
    log.info("trace_bump: a bump centred at sample %d (%.2f s at 100 Hz)", int(s.centres[i, 0]),
             float(s.centres[i, 0]) / 100)
    v = nd_demo.volumes(20, SEED)
    j = next(k for k in range(20) if int(v.y[k]) == 0)
    vol = v.x[j, 0].numpy()
    affine = np.array([[-1.5, 0, 0, 24.0], [0, 1.5, 0, -24.0], [0, 0, 2.0, -32.0], [0, 0, 0, 1]])
    (OUT / "blob.nii.gz").write_bytes(nd_files.nifti(vol, affine, gz=True))
    (OUT / "blob_dicom.zip").write_bytes(nd_files.dicom_zip(np.round(vol * 100), (2.0, 1.5, 1.5), (-24.0, 24.0, -32.0)))
    log.info("blob: a bright blob centred at voxel (D, H, W) = %s", [int(c) for c in v.centres[j]])


if __name__ == "__main__":
    main()
