"""Where Grad-CAM's and occlusion's maxima fall on the demonstration 1-D and 3-D convnets (issue 26, item 5).

    python -m bench.eval_nd_localization [--signals 200] [--volumes 60] [--readme]

Held-out synthetic samples (seed 7, never seen in training: bench/train_nd_demo.py uses seeds 1
and 2) whose class is one local pattern at a random place; samples of class ``none`` carry no
pattern and are skipped. A hit is a map maximum (on the input's grid) inside the pattern, where its
envelope is above 10 % of its peak (:meth:`cnnviz.models.nd_demo.Samples.inside`). Each map explains
the sample's true class; the maximum of a piecewise-constant occlusion map is the centre of its
maximal block (:func:`peak_centre`). With ``--readme`` the table is written into the ``nd-localization`` block
of docs/benchmarks.md. This is an accuracy figure, not a timing: one run suffices.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from bench.readme import write_block
from cnnviz.attribution import ClassTargets, get_method
from cnnviz.models import nd_demo
from cnnviz.models.catalog import load_model
from cnnviz.models.preprocess_nd import resample
from cnnviz.models.specs import specs_from_file

log = logging.getLogger("eval_nd_localization")
MODELS = Path(__file__).resolve().parent.parent / "examples" / "nd" / "models.toml"
SEED = 7
SETTINGS = {  # method: parameters per model (occlusion windows about the pattern's size)
    "ecg-demo": {"gradcam": {}, "occlusion": {"window": 16, "stride": 4}},
    "ct-demo": {"gradcam": {}, "occlusion": {"window": 8, "stride": 4}},
}


def peak_centre(m: torch.Tensor) -> tuple[int, ...]:
    """Where a map's maximum lies: the centre of the voxels at the maximum (within 1e-6 of it).

    A smooth map has one such voxel. Occlusion's map is piecewise constant on blocks of the stride
    (the mean over the windows covering each voxel), so its maximum is a block, and ``argmax``
    would name the block's first corner, a stride's worth off its centre in raster order.
    """
    top = m.max()
    idx = (m >= top - 1e-6 * max(1.0, float(top.abs()))).nonzero().float()
    return tuple(int(round(float(v))) for v in idx.mean(0))


def hit_rate(model_name: str, samples: nd_demo.Samples, method: str, params: dict, batch: int = 8) -> tuple[int, int]:
    """(hits, samples with a pattern) of ``method``'s maxima on ``model_name``."""
    model = load_model({s.name: s for s in specs_from_file(MODELS)}[model_name])
    keep = [i for i in range(len(samples.y)) if int(samples.y[i]) != 2]
    hits = 0
    for s in range(0, len(keep), batch):
        idx = keep[s:s + batch]
        x = model.preprocessing.batch([samples.x[i] for i in idx])
        res = get_method(method).attribute(model, x, ClassTargets(indices=tuple((int(samples.y[i]),) for i in idx)),
                                           **params)
        for j, i in enumerate(idx):
            m = resample(res.maps[j][0][None, None].float(), tuple(x.shape[2:]))[0, 0]
            hits += samples.inside(i, peak_centre(m))
    return hits, len(keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=200)
    parser.add_argument("--volumes", type=int, default=60)
    parser.add_argument("--readme", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    rows = ["| model | method | parameters | maxima inside the pattern |", "|---|---|---|---|"]
    for name, samples in (("ecg-demo", nd_demo.signals(args.signals, SEED)),
                          ("ct-demo", nd_demo.volumes(args.volumes, SEED))):
        for method, params in SETTINGS[name].items():
            hits, total = hit_rate(name, samples, method, params)
            shown = ", ".join(f"{k} {v}" for k, v in params.items()) or "default layer"
            rows.append(f"| {name} | {method} | {shown} | {hits} / {total} ({100 * hits / total:.1f} %) |")
            log.info(rows[-1])
    text = "\n".join(rows)
    if args.readme:
        write_block("nd-localization", text)


if __name__ == "__main__":
    main()
