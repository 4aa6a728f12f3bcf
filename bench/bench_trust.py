"""The evaluate job's metrics beside Quantus: same model, images, maps and metric settings, one run.

Two rows, each the same work on both sides, timed interleaved in one process, repeated in
``--processes`` fresh processes (median and min-max of the per-process ratios):

* **deletion**: Quantus ``PixelFlipping`` (black baseline, ``features_in_step`` = pixels / steps,
  softmax probability of the class, AUC per sample) called once per method with that method's
  maps, against :func:`cnnviz.trust.deletion_insertion_many` on the same maps, which computes the
  deletion *and* the insertion curve of every method in shared batches (twice the forwards:
  the ratio understates the gap).
* **randomization**: Quantus ``MPRT`` (cascading, ``top_down``, Spearman of |maps|) once per method,
  its explanations produced by our engine (the same method on the network Quantus randomized),
  against the cascading half of :func:`cnnviz.trust.evaluate` with one stage per module Quantus
  resets, in the same order (so both build the same randomized networks and explain them as
  often); ours also computes the signed Spearman and SSIM.

    .venv/bin/python bench/bench_trust.py [--images 4] [--size 64] [--steps 16] [--processes 5] [--readme]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.readme import write_block  # noqa: E402
from cnnviz.attribution import METHODS, ClassTargets  # noqa: E402
from cnnviz.models import Catalog  # noqa: E402
from cnnviz.trust import (  # noqa: E402
    MethodSpec,
    deletion_insertion_many,
    evaluate,
    named_stages,
    with_module,
)

log = logging.getLogger("bench")
# Not Grad-CAM: Quantus refuses an all-zero map, which Grad-CAM gives on random weights.
METHOD_NAMES = ("saliency", "guided_backprop")
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "camera", "hubble_deep_field", "retina", "immunohistochemistry")


def _photos(n: int, size: int) -> torch.Tensor:
    import skimage.data

    out = []
    for name in PHOTOS[:n]:
        a = np.asarray(getattr(skimage.data, name)())
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        t = torch.from_numpy(a[..., :3].copy()).permute(2, 0, 1).float()[None] / 255
        out.append(torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", antialias=True)[0])
    return torch.stack(out)


def one_process(args: argparse.Namespace) -> dict[str, float]:
    """Both rows in this process, sides interleaved ``--repeats`` times; median seconds per side."""
    if not hasattr(np, "trapz"):  # Quantus 0.6 calls np.trapz, which NumPy 2 renamed np.trapezoid
        np.trapz = np.trapezoid  # type: ignore[attr-defined]
    import quantus

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    model = Catalog.open(models_file=None, device="cpu", default=None).get("efficientnet-lite0")
    pixels = _photos(args.images, args.size)
    x = model.preprocessing.normalize(pixels)
    with torch.no_grad():
        classes = model.module(x).argmax(1).tolist()
    targets = ClassTargets(indices=tuple((c,) for c in classes))
    maps = {m: [r[0] for r in METHODS[m].attribute(model, x, targets).maps] for m in METHOD_NAMES}
    size, steps = args.size, args.steps
    x_np, y_np = x.numpy(), np.array(classes)

    def a_batch(method: str) -> np.ndarray:
        up = [torch.nn.functional.interpolate(m[None, None], size=(size, size), mode="bilinear",
                                              align_corners=False)[0] for m in maps[method]]
        return torch.stack(up).numpy()

    a_batches = {m: a_batch(m) for m in METHOD_NAMES}

    def quantus_deletion() -> None:
        for m in METHOD_NAMES:
            metric = quantus.PixelFlipping(features_in_step=size * size // steps, perturb_baseline="black",
                                           normalise=False, abs=False, return_auc_per_sample=True,
                                           disable_warnings=True, display_progressbar=False)
            metric(model=model.module, x_batch=x_np, y_batch=y_np, a_batch=a_batches[m], device="cpu",
                   softmax=True, channel_first=True, batch_size=len(classes))

    def score(batch: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        return model.probabilities(model.module(model.preprocessing.normalize(batch))).gather(1, cls[:, None])[:, 0]

    def ours_deletion() -> None:
        deletion_insertion_many(score, pixels, classes, [[maps[m][i] for m in METHOD_NAMES]
                                                         for i in range(len(classes))], steps=steps, batch_size=32)

    # Quantus resets every module with reset_parameters, from the last to the first; ours takes those as stages.
    resettable = [n for n, mod in model.module.named_modules() if hasattr(mod, "reset_parameters") and n]
    stages = named_stages(model, resettable)
    order = [s.modules[0] for s in stages]
    assert order == resettable, "the layer table's execution order differs from Quantus' module order"

    def explain(method: str):
        def fn(model: torch.nn.Module, inputs: np.ndarray, targets: np.ndarray, **_kw) -> np.ndarray:
            wrapped = with_module(loaded, model)
            res = METHODS[method].attribute(wrapped, torch.from_numpy(inputs),
                                            ClassTargets(indices=tuple((int(t),) for t in targets)))
            maps = torch.stack([r[0] for r in res.maps])[:, None]  # Quantus wants maps at the input's size
            return torch.nn.functional.interpolate(maps, size=inputs.shape[-2:], mode="bilinear",
                                                   align_corners=False).numpy()
        return fn

    loaded = model

    def quantus_mprt() -> None:
        for m in METHOD_NAMES:
            metric = quantus.MPRT(similarity_func=quantus.similarity_func.correlation_spearman, layer_order="top_down",
                                  abs=True, normalise=False, return_last_correlation=True, disable_warnings=True,
                                  display_progressbar=False)
            metric(model=model.module, x_batch=x_np, y_batch=y_np, a_batch=a_batches[m], explain_func=explain(m),
                   device="cpu", softmax=False, channel_first=True, batch_size=len(classes))

    def ours_mprt() -> None:
        evaluate(model, pixels, classes, [MethodSpec(m, m) for m in METHOD_NAMES], steps=2, randomization="cascading",
                 stages=stages, image_batch=len(classes))

    sides = {"deletion": (quantus_deletion, ours_deletion), "randomization": (quantus_mprt, ours_mprt)}
    times: dict[str, list[float]] = {f"{row}/{side}": [] for row in sides for side in ("quantus", "ours")}
    for q, o in sides.values():  # warm both sides once
        q()
        o()
    for _ in range(args.repeats):
        for row, (q, o) in sides.items():
            for side, fn in (("quantus", q), ("ours", o)):
                t0 = time.perf_counter()
                fn()
                times[f"{row}/{side}"].append(time.perf_counter() - t0)
    out = {k: statistics.median(v) for k, v in times.items()}
    out["stages"] = float(len(stages))
    return out


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="interleaved timings per process")
    p.add_argument("--processes", type=int, default=5, help="fresh processes (0: this one, once)")
    p.add_argument("--readme", action="store_true", help="write the table into docs/benchmarks.md")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child or args.processes == 0:
        print(json.dumps(one_process(args)))  # noqa: T201 - the parent reads it
        return
    runs = []
    for k in range(args.processes):
        cmd = [sys.executable, __file__, "--child", *[f"--{n}={getattr(args, n)}" for n in
                                                        ("images", "size", "steps", "threads", "repeats")]]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
        log.warning("process %d/%d: %s", k + 1, args.processes, runs[-1])
    lines = [f"Lite0 at {args.size} px, {args.images} bundled photos, methods {', '.join(METHOD_NAMES)}, "
             f"{args.steps} steps, {int(runs[0]['stages'])} randomized networks (one per module Quantus resets), "
             f"{args.threads} threads; {args.processes} fresh processes x {args.repeats} interleaved repeats. "
             f"Ratio = Quantus time / ours (above 1: ours is faster); median (min-max) over processes.", "",
             "| metric | Quantus 0.6 (s) | cnnviz (s) | ratio |", "|---|---|---|---|"]
    for row, what in (("deletion", "deletion (ours: deletion + insertion)"), ("randomization", "MPRT, cascading")):
        ratios = [r[f"{row}/quantus"] / r[f"{row}/ours"] for r in runs]
        q = statistics.median(r[f"{row}/quantus"] for r in runs)
        o = statistics.median(r[f"{row}/ours"] for r in runs)
        lines.append(f"| {what} | {q:.2f} | {o:.2f} | {statistics.median(ratios):.2f}x "
                     f"({min(ratios):.2f}-{max(ratios):.2f}) |")
    text = "\n".join(lines)
    print(text)  # noqa: T201 - the bench's output
    if args.readme:
        write_block("trust", text)


if __name__ == "__main__":
    main()
