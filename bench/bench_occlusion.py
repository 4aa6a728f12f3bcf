"""Occlusion speed: full forwards, incremental (Krypton-style) patches and captum, one run.

Same model (EfficientNet-Lite0 at 224 px), image (chelsea), target (top-1), window, stride and
fill (``mean``: zeros after normalization, captum's baseline 0) for all; every callable returns the
finished ``[H,W]`` map and all of them run round-robin after a warm-up (bench/harness.py). Ratios
are peer time / incremental time: above 1 means the incremental path is faster.

    .venv/bin/python bench/bench_occlusion.py [--repeats 3] [--geometry 32x16,16x8] [--threads 2] [--clock cpu]
        [--readme]

``--clock cpu`` times with the process's CPU time instead of the wall clock: on a machine other
jobs share, with ``--threads 1``, that still measures the work each path does (with more threads
it also counts the time the threads spin waiting for each other).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import correlation, interleaved, table  # noqa: E402
from bench.readme import write_block  # noqa: E402
from cnnviz.attribution import ClassTargets, get_method  # noqa: E402
from cnnviz.attribution.fast.incremental import occlusion_plan  # noqa: E402
from cnnviz.attribution.perturbation import window_starts  # noqa: E402
from cnnviz.models import Catalog  # noqa: E402

log = logging.getLogger("bench")


PPE = (1, 4, 8, 12, 16)  # captum's perturbations_per_eval, swept: its best is the peer


def callables(model, x: torch.Tensor, target: int, window: int, stride: int,
              ppe: tuple[int, ...] = PPE) -> dict[str, Callable[[], torch.Tensor]]:
    import captum.attr as ca

    method = get_method("occlusion")

    def full() -> torch.Tensor:
        return method.attribute(model, x, ClassTargets(indices=((target,),)), None, window=window, stride=stride,
                                fill="mean", engine="full").maps[0][0]

    def incremental() -> torch.Tensor:
        # The method as the API runs it (engine auto): the answer must say it took the patch engine.
        e = method.attribute(model, x, ClassTargets(indices=((target,),)), None, window=window, stride=stride,
                             fill="mean")
        assert e.extras["engine"] == "incremental"
        return e.maps[0][0]


    # captum runs the very module the engines run (frozen, channels-last), at each perturbations_per_eval.
    occ = {"sliding_window_shapes": (3, window, window), "strides": (3, stride, stride),
           "baselines": torch.zeros_like(x), "target": target}
    fns = {"ours full forwards": full, "ours incremental": incremental}
    for p in ppe:
        fns[f"captum ({p} per eval)"] = (lambda p=p: ca.Occlusion(model.module).attribute(
            x, perturbations_per_eval=p, **occ)[0].sum(0))
    return fns


def cpu_interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """harness.interleaved, timed by process CPU time (one warm-up, then round-robin repeats)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.process_time()
            fn()
            times[name].append(time.process_time() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--geometry", default="32x16,16x8", help="window x stride pairs, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--ppe", type=lambda s: tuple(int(v) for v in s.split(",")), default=PPE,
                        help="captum perturbations_per_eval to sweep")
    parser.add_argument("--readme", action="store_true", help="rewrite the occlusion block of docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import skimage.data

    model = Catalog.open(models_file=None, device="cpu", default=None).get("efficientnet-lite0")
    img = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1).float() / 255
    x = model.preprocessing.batch([img], device=model.device)
    with torch.no_grad():
        target = int(model.module(x).argmax())
    rows = []
    for geo in args.geometry.split(","):
        window, stride = (int(v) for v in geo.split("x"))
        fns = callables(model, x, target, window, stride, args.ppe)
        log.info("window %d stride %d: %d windows", window, stride,
                 len(window_starts(224, window, stride)) ** 2)
        times = (interleaved(fns, repeats=args.repeats) if args.clock == "wall"
                 else cpu_interleaved(fns, args.repeats))
        plan = occlusion_plan(model.module, (224, 224), window, stride)
        assert plan is not None
        log.info("  %s", plan.describe())
        maps = {k: fn() for k, fn in fns.items()}
        mine = maps["ours incremental"]
        err = float((mine - maps["ours full forwards"]).abs().max() / maps["ours full forwards"].abs().max())
        ms = {k: f"{v * 1000:.0f}" for k, v in times.items()}
        inc, full = times["ours incremental"], times["ours full forwards"]
        best = min((k for k in times if k.startswith("captum")), key=times.__getitem__)
        rows.append([f"{window}/{stride}", str(plan.n_windows), ms["ours full forwards"], ms["ours incremental"],
                     f"{ms[best]} ({best.split('(')[1].split(' ')[0]} per eval)",
                     f"{times[best] / full:.2f}x", f"{full / inc:.2f}x", f"{times[best] / inc:.2f}x", f"{err:.1e}",
                     f"{correlation(mine, maps[best]):.4f}"])
    header = ["window/stride", "windows", "full ms", "incremental ms", "captum best ms",
              "captum best/full (like for like)", "full/incr", "captum best/incr (advantage)",
              "max |incr-full| / max |full|", "corr captum"]
    out = [f"torch {torch.__version__}, {torch.get_num_threads()} threads, EfficientNet-Lite0 @224, chelsea, "
           f"fill=mean, median of {args.repeats} interleaved runs ({args.clock} clock) after a warm-up; captum on the "
           f"same frozen channels-last module at its best perturbations_per_eval of {', '.join(map(str, args.ppe))}; "
           f"ours full: 4 windows per batch", "", table(rows, header)]
    sys.stdout.write("\n".join(out) + "\n")
    if args.readme:
        write_block("occlusion", "\n".join(out))


if __name__ == "__main__":
    main()
