"""Layer sweeps: what a Grad-CAM of every stage of Lite0 costs, against one layer and against a request per layer.

A sweep takes one forward and, per target, one backward down to its earliest layer, so its cost is
that of the single layer whose backward is longest (the earliest), plus the cheap per-layer channel
weighting. Each fresh process (``--processes``, default 5) times, interleaved, on the same model
copy, input, dtype and thread count:

- ``lone default``: Grad-CAM at the default layer (the last stage: the backward through the head only),
- ``lone earliest``: Grad-CAM at the sweep's earliest layer (the stem: the longest backward),
- ``sweep``: Grad-CAM at every block (``layers: "blocks"``: 9 layers), one call,
- ``one per layer``: the same 9 maps as 9 separate calls.

The table reports each process's ratios to the sweep and their median and min-max over processes.
``--readme`` writes the block ``sweep`` of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys

import torch

from bench.harness import interleaved, table
from bench.readme import write_block

log = logging.getLogger("bench.sweep")


def child(repeats: int, threads: int, size: int) -> dict[str, float]:
    """One process's interleaved medians (seconds) of the four ways."""
    import skimage.data

    from cnnviz.attribution import ClassTargets, get_method
    from cnnviz.models import Catalog
    from cnnviz.models.blocks import main_blocks

    torch.set_num_threads(threads)
    model = Catalog.open(models_file=None, device="cpu", default=None).get("efficientnet-lite0")
    img = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1).float() / 255
    x = model.preprocessing.batch([img], size, device=model.device)
    m, t = get_method("gradcam"), ClassTargets(top_k=1)
    blocks = main_blocks(model)
    first = blocks[0]
    fns = {
        "lone default": lambda: m.attribute(model, x, t, layer=model.default_layer),
        "lone earliest": lambda: m.attribute(model, x, t, layer=first),
        "sweep": lambda: m.attribute(model, x, t, layers=blocks),
        "one per layer": lambda: [m.attribute(model, x, t, layer=n) for n in blocks],
    }
    out = interleaved(fns, repeats=repeats, warmup=2)
    out["layers"] = float(len(blocks))
    return out


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--readme", action="store_true", help="rewrite the sweep block of docs/benchmarks.md")
    args = parser.parse_args()
    if args.child:
        sys.stdout.write(json.dumps(child(args.repeats, args.threads, args.size)) + "\n")
        return
    runs = []
    for p in range(args.processes):  # fresh processes: no warm caches carried from one to the next
        cmd = [sys.executable, "-m", "bench.bench_sweep", "--child", "--repeats", str(args.repeats),
               "--threads", str(args.threads), "--size", str(args.size)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ})
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
        log.info("process %d: %s", p + 1, {k: round(v * 1000, 1) for k, v in runs[-1].items() if k != "layers"})
    n = int(runs[0]["layers"])
    rows = []
    for name in ("lone default", "lone earliest", "one per layer"):
        ratios = [r["sweep"] / r[name] for r in runs]
        ms = statistics.median(r[name] for r in runs) * 1000
        rows.append([name, f"{ms:.0f}", f"{statistics.median(ratios):.2f}x",
                     f"{min(ratios):.2f}x - {max(ratios):.2f}x"])
    sweep_ms = statistics.median(r["sweep"] for r in runs) * 1000
    rows.insert(0, [f"sweep ({n} layers, one call)", f"{sweep_ms:.0f}", "1.00x", ""])
    header = ["Grad-CAM", "median ms", "sweep / this (median)", "sweep / this (min - max)"]
    out = [f"torch {torch.__version__}, {args.threads} thread(s), EfficientNet-Lite0 @{args.size}, chelsea, top-1; "
           f"{args.processes} fresh processes, each the median of {args.repeats} interleaved runs", "",
           table(rows, header)]
    sys.stdout.write("\n".join(out) + "\n")
    if args.readme:
        write_block("sweep", "\n".join(out))


if __name__ == "__main__":
    main()
