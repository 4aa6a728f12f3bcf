"""The pieces the speed targets rest on, each beside the plain way, in fresh processes.

What docs/benchmarks.md says each piece buys, measured here rather than typed (the compiled
forward and the compiled road of Grad-CAM are rows of bench_speed.py): the input gradient of
four images on the folded copy against the served module, an eager Grad-CAM batch of eight
against four (images per second), and cnnviz's PNG writer against PIL's on a 224 px overlay.
EfficientNet-Lite0 at 224 px on ``chelsea``; each group runs in a fresh process, ``--runs`` times,
groups interleaved; inside a process the two sides of a row run warmed and round-robin.

    .venv/bin/python bench/bench_components.py [--runs 5] [--quick] [--readme]

``--readme`` rewrites the ``components`` block of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_speed import chelsea_jpeg, lite0  # noqa: E402
from bench.harness import interleaved, table  # noqa: E402
from bench.readme import write_block  # noqa: E402
from bench.stats import HEADER, Run, Spec, emit, fresh_runs, row_cells  # noqa: E402
from cnnviz.attribution import ClassTargets, get_method  # noqa: E402

log = logging.getLogger("bench")


def group_folded(args: argparse.Namespace) -> Run:
    """The input gradient of four images on the folded copy and on the served module."""
    from cnnviz.attribution.fast.folded import folded_module

    model, x, target = lite0(chelsea_jpeg())
    x4 = x.repeat(4, 1, 1, 1)
    folded = folded_module(model)

    def grad(module: torch.nn.Module) -> torch.Tensor:
        xi = x4.clone().requires_grad_(True)
        module(xi)[:, target].sum().backward()
        return xi.grad

    fns = {"served": lambda: grad(model.module), "folded": lambda: grad(folded)}
    return {f"grad4_{k}": v * 1000 for k, v in interleaved(fns, repeats=args.repeats, warmup=2).items()}


def group_batch(args: argparse.Namespace) -> Run:
    """An eager Grad-CAM engine call on a batch of eight against four, per image."""
    model, x, target = lite0(chelsea_jpeg())
    gradcam = get_method("gradcam")
    calls = {}
    for n in (4, 8):
        xn = x.repeat(n, 1, 1, 1)
        t = ClassTargets(indices=tuple((target,) for _ in range(n)))
        calls[f"batch{n}"] = lambda xn=xn, t=t: gradcam.attribute(model, xn, t, None)
    times = interleaved(calls, repeats=args.repeats, warmup=2)
    return {"ips4": 4 / times["batch4"], "ips8": 8 / times["batch8"]}


def group_png(args: argparse.Namespace) -> Run:
    """cnnviz's PNG writer against PIL's at the same deflate level (1) on a 224 px RGB picture."""
    import numpy as np
    import skimage.data
    from PIL import Image

    from cnnviz.render.png import png_from_array

    arr = np.asarray(Image.fromarray(skimage.data.chelsea()).resize((224, 224), Image.BILINEAR))

    def pil() -> bytes:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG", compress_level=1)  # the deflate level cnnviz writes at
        return buf.getvalue()

    fns = {"png_ours": lambda: png_from_array(arr), "png_pil": pil}
    out = {k: v * 1000 for k, v in interleaved(fns, repeats=args.repeats * 5, warmup=3).items()}
    out["png_ours_kb"], out["png_pil_kb"] = len(png_from_array(arr)) / 1024, len(pil()) / 1024
    return out


GROUPS = {"folded": group_folded, "batch": group_batch, "png": group_png}


def _r(a: str, b: str):
    return lambda r: r[a] / r[b]


def _k(a: str):
    return lambda r: r[a]


SPECS = [
    Spec("input gradient of four images: folded copy vs served module", "advantage", _k("grad4_folded"),
         _k("grad4_served"), _r("grad4_served", "grad4_folded"), "x",
         note="batch norms folded into the convolutions; maps within rounding (tests)", needs=("grad4_folded",)),
    Spec("eager Grad-CAM, images per second: batch of eight vs four", "context", _k("ips8"), _k("ips4"),
         _r("ips8", "ips4"), "x", cells="images/s", note="below 1x: eight is slower per image",
         needs=("ips8",)),
    Spec("PNG of a 224 px picture: cnnviz's writer vs PIL, both deflate level 1", "like-for-like",
         _k("png_ours"), _k("png_pil"),
         _r("png_pil", "png_ours"), "x",
         note=lambda runs: f"{runs[0]['png_ours_kb']:.0f} KB vs {runs[0]['png_pil_kb']:.0f} KB",
         needs=("png_ours",)),
]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=min(4, len(os.sched_getaffinity(0))))
    ap.add_argument("--only", default=",".join(GROUPS))
    ap.add_argument("--quick", action="store_true", help="2 runs, 3 repeats: checks the script, not the figures")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--readme", action="store_true", help="rewrite the components block of docs/benchmarks.md")
    args = ap.parse_args()
    if args.child:
        torch.set_num_threads(args.threads)
        emit(GROUPS[args.child](args))
        return
    if args.quick:
        args.runs, args.repeats = 2, 3
    t0 = time.time()
    runs = fresh_runs(__file__, args.only.split(","), args.runs,
                      ["--repeats", str(args.repeats), "--threads", str(args.threads)])
    rows = [c for c in (row_cells(s, runs) for s in SPECS) if c]
    text = (f"torch {torch.__version__}, {args.threads} threads, {len(os.sched_getaffinity(0))} cores, "
            f"EfficientNet-Lite0 @224, `chelsea`; {args.runs} fresh processes per group, interleaved; "
            f"`python bench/bench_components.py{' --quick' if args.quick else ''}` ({(time.time() - t0) / 60:.0f} min)"
            "\n\n" + table(rows, HEADER))
    sys.stdout.write(text + "\n")
    if args.readme:
        write_block("components", text)


if __name__ == "__main__":
    main()
